/* pg: a real PostgreSQL restart in the middle of a query.
 *
 * The test starts its own throwaway cluster (initdb + pg_ctl from TIERONE_TEST_PG_BINDIR,
 * as the `postgres` user through runuser when run as root, like scripts/lib/services.sh)
 * on a free loopback port, runs `SELECT pg_sleep(3)` through the pool, restarts the server
 * with `pg_ctl restart -m fast` while the statement runs (seen in pg_stat_activity), and
 * asserts that the statement fails retryably and that the pool serves queries again once
 * the server is back (polled, no fixed sleeps). The cluster is stopped and removed at the
 * end, also when an assertion fails. */
#include "clock.h"
#include "pg.h"

#include <criterion/criterion.h>
#include <fcntl.h>
#include <pwd.h>
#include <netinet/in.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

extern char **environ;

static char dir[] = "/tmp/tierone-pgrestart.XXXXXX";
static char datadir[128], sockdir[128], logfile[128], serverlog[128], conninfo[256], pgopts[256];
static const char *bindir;
static int port;
static int cluster_started;
static uv_loop_t loop;
static uv_timer_t guard;

/* ---- the cluster ---------------------------------------------------------------------------- */

/* argv to run bindir/prog as the cluster's owner: through runuser when root. */
static int as_pg_argv(const char **argv, const char *prog, char *path, size_t size)
{
    int n = 0;
    snprintf(path, size, "%s/%s", bindir, prog);
    if (geteuid() == 0) {
        argv[n++] = "runuser";
        argv[n++] = "-u";
        argv[n++] = "postgres";
        argv[n++] = "--";
    }
    argv[n++] = path;
    return n;
}

/* Run bindir/prog args... as the owner, output appended to the log; returns exit status. */
static int run_pg(const char *prog, const char *const *args)
{
    const char *argv[32];
    char path[256];
    int n = as_pg_argv(argv, prog, path, sizeof path);
    for (; *args; args++)
        argv[n++] = *args;
    argv[n] = NULL;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, logfile, O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    posix_spawn_file_actions_addchdir_np(&fa, dir);
    pid_t pid;
    int rc = posix_spawnp(&pid, argv[0], &fa, NULL, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0)
        return -1;
    int st;
    if (waitpid(pid, &st, 0) != pid)
        return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* A port in 20000-29999 that nothing listens on now. */
static int free_port(void)
{
    for (int i = 0; i < 200; i++) {
        int p = 20000 + rand() % 10000;
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)p)};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        int ok = bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
        close(fd);
        if (ok)
            return p;
    }
    return -1;
}

static void cluster_start(void)
{
    bindir = getenv("TIERONE_TEST_PG_BINDIR");
    cr_assert(bindir && *bindir, "TIERONE_TEST_PG_BINDIR is not set: run through "
                                 "scripts/test.sh (bash scripts/test.sh --services-only -- "
                                 "ctest ...)");
    cr_assert_not_null(mkdtemp(dir));
    chmod(dir, 0711);
    snprintf(datadir, sizeof datadir, "%s/data", dir);
    snprintf(sockdir, sizeof sockdir, "%s/sock", dir);
    snprintf(logfile, sizeof logfile, "%s/commands.log", dir);   /* ours */
    snprintf(serverlog, sizeof serverlog, "%s/server.log", dir); /* the server's */
    cr_assert_eq(mkdir(sockdir, 0700), 0);
    if (geteuid() == 0) {
        struct passwd *pw = getpwnam("postgres");
        cr_assert_not_null(pw, "no `postgres` user (scripts/test.sh creates it)");
        cr_assert_eq(chown(sockdir, pw->pw_uid, pw->pw_gid), 0);
        cr_assert_eq(chown(dir, pw->pw_uid, pw->pw_gid), 0);
    }
    const char *initdb[] = {"-D", datadir, "-U",         "postgres",  "--auth=trust",
                            "-E", "UTF8",  "--locale=C", "--no-sync", NULL};
    cr_assert_eq(run_pg("initdb", initdb), 0, "initdb failed (see %s)", logfile);
    srand((unsigned)getpid() ^ (unsigned)clock_mono_ns());
    for (int attempt = 0; attempt < 5 && !cluster_started; attempt++) {
        port = free_port();
        cr_assert_gt(port, 0);
        snprintf(pgopts, sizeof pgopts,
                 "-c listen_addresses=127.0.0.1 -p %d -c unix_socket_directories=%s "
                 "-c fsync=off -c synchronous_commit=off",
                 port, sockdir);
        const char *start[] = {"-D", datadir, "-l", serverlog, "-w",    "-t",
                               "60", "-s",    "-o", pgopts,    "start", NULL};
        cluster_started = 1; /* stop it even if start half-worked */
        if (run_pg("pg_ctl", start) != 0) {
            const char *stop[] = {"-D", datadir, "-m", "immediate", "-w", "-s", "stop", NULL};
            run_pg("pg_ctl", stop);
            cluster_started = 0;
        }
    }
    cr_assert(cluster_started, "the cluster did not start (see %s)", serverlog);
    snprintf(conninfo, sizeof conninfo, "host=127.0.0.1 port=%d user=postgres dbname=postgres",
             port);
}

static void cluster_stop(void)
{
    if (cluster_started) {
        const char *stop[] = {"-D", datadir, "-m", "immediate", "-w", "-s", "stop", NULL};
        run_pg("pg_ctl", stop);
        cluster_started = 0;
    }
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
}

/* ---- the loop ------------------------------------------------------------------------------- */

struct qres {
    int done;
    enum pg_error err;
    int retryable;
    char sqlstate[6];
    char msg[256];
    char value[64];
};

static void on_result(const struct pg_result *r, void *arg)
{
    struct qres *q = arg;
    q->done = 1;
    q->err = pg_result_error(r);
    q->retryable = pg_result_retryable(r);
    snprintf(q->sqlstate, sizeof q->sqlstate, "%s", pg_result_sqlstate(r));
    snprintf(q->msg, sizeof q->msg, "%s", pg_result_message(r));
    const char *v = pg_result_value(r, 0, 0);
    snprintf(q->value, sizeof q->value, "%s", v ? v : "");
}

static void on_guard(uv_timer_t *t)
{
    (void)t;
}

static void run_until(const int *flag, int seconds)
{
    uint64_t deadline = clock_mono_ms() + (uint64_t)seconds * 1000;
    uv_timer_start(&guard, on_guard, 20, 20);
    while (!*flag) {
        cr_assert(clock_mono_ms() < deadline, "timed out");
        uv_run(&loop, UV_RUN_ONCE);
    }
    uv_timer_stop(&guard);
}

static void query(struct pg_pool *p, struct qres *q, const char *sql)
{
    memset(q, 0, sizeof *q);
    cr_assert_eq(pg_query(p, sql, 0, NULL, on_result, q), 0);
    run_until(&q->done, 30);
}

struct restart {
    uv_process_t proc;
    int done;
    int64_t status;
};

static void on_restart_exit(uv_process_t *proc, int64_t status, int signal)
{
    struct restart *r = proc->data;
    r->done = 1;
    r->status = signal ? 128 + signal : status;
    uv_close((uv_handle_t *)proc, NULL);
}

/* `pg_ctl restart -m fast` in the background, so the loop keeps running meanwhile. */
static void restart_start(struct restart *r, int logfd)
{
    const char *argv[32];
    char path[256];
    int n = as_pg_argv(argv, "pg_ctl", path, sizeof path);
    const char *rest[] = {"-D", datadir, "-l", serverlog, "-m",   "fast",    "-w",
                          "-t", "60",    "-s", "-o",      pgopts, "restart", NULL};
    for (const char *const *a = rest; *a; a++)
        argv[n++] = *a;
    argv[n] = NULL;
    uv_stdio_container_t stdio[3] = {{.flags = UV_IGNORE},
                                     {.flags = UV_INHERIT_FD, .data.fd = logfd},
                                     {.flags = UV_INHERIT_FD, .data.fd = logfd}};
    uv_process_options_t o = {.file = argv[0],
                              .args = (char **)argv,
                              .cwd = dir,
                              .exit_cb = on_restart_exit,
                              .stdio_count = 3,
                              .stdio = stdio};
    r->proc.data = r;
    int rc = uv_spawn(&loop, &r->proc, &o);
    cr_assert_eq(rc, 0, "spawn pg_ctl restart: %s", uv_strerror(rc));
}

static void on_closed(void *arg)
{
    *(int *)arg = 1;
}

static void setup(void)
{
    cluster_start();
    cr_assert_eq(uv_loop_init(&loop), 0);
    uv_timer_init(&loop, &guard);
}

static void teardown(void)
{
    cluster_stop();
}

Test(pg_restart, query_fails_retryably_and_the_pool_recovers, .init = setup, .fini = teardown,
     .timeout = 90)
{
    struct pg_pool_opts o = {
        .conninfo = conninfo, .size = 2, .connect_timeout_ms = 2000, .wait_timeout_ms = 20000};
    char *err = NULL;
    struct pg_pool *p = pg_pool_new(&loop, &o, &err);
    cr_assert_not_null(p, "%s", err);
    struct qres q, sleeper, probe;
    query(p, &q, "SELECT 1");
    cr_assert_eq(q.err, PG_OK, "%s", q.msg);

    memset(&sleeper, 0, sizeof sleeper);
    cr_assert_eq(pg_query(p, "SELECT pg_sleep(3)", 0, NULL, on_result, &sleeper), 0);
    /* Wait until the server runs it (on the pool's other connection). */
    for (;;) {
        query(p, &probe,
              "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(3)' AND "
              "state = 'active'");
        cr_assert_eq(probe.err, PG_OK, "%s", probe.msg);
        if (strcmp(probe.value, "1") == 0)
            break;
        cr_assert_not(sleeper.done, "the sleep ended before the restart: %s", sleeper.msg);
    }

    int logfd = open(logfile, O_WRONLY | O_APPEND | O_CREAT, 0644);
    cr_assert_geq(logfd, 0);
    struct restart rs = {0};
    restart_start(&rs, logfd);
    close(logfd);
    run_until(&sleeper.done, 30);
    cr_expect_neq(sleeper.err, PG_OK, "the statement cannot have finished");
    cr_expect(sleeper.retryable, "err %d sqlstate '%s': %s", sleeper.err, sleeper.sqlstate,
              sleeper.msg);

    /* Poll: each query waits (up to wait_timeout_ms) for the pool to reconnect. */
    uint64_t deadline = clock_mono_ms() + 60000;
    int attempts = 0;
    for (;;) {
        query(p, &q, "SELECT 'back'");
        attempts++;
        if (q.err == PG_OK)
            break;
        cr_assert(q.retryable, "not retryable: %s", q.msg);
        cr_assert(clock_mono_ms() < deadline, "the pool did not recover: %s", q.msg);
    }
    cr_expect_str_eq(q.value, "back");
    run_until(&rs.done, 60);
    cr_expect_eq(rs.status, 0, "pg_ctl restart failed (see %s)", logfile);
    struct pg_pool_stats st;
    pg_pool_stats(p, &st);
    cr_expect_geq(st.open, 1);
    cr_expect_geq(st.errors_total, 1);

    int closed = 0;
    pg_pool_close(p, on_closed, &closed);
    run_until(&closed, 10);
    uv_close((uv_handle_t *)&guard, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_expect_eq(uv_loop_close(&loop), 0);
}
