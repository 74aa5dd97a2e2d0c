/* migrate and `tierone migrate` against the real PostgreSQL in TIERONE_TEST_DATABASE_URL.
 *
 * Each test creates its own scratch database (the test role has CREATEDB) and drops it at
 * the end, and copies the fixture migrations (tests/fixtures/migrations*) into a temp dir
 * it may change: apply then apply again (nothing), a new file (only it), an edited applied
 * file (refused, nothing applied), malformed and duplicate names, a failing file (only it
 * rolled back, the error names file and line), concurrent migrators (each migration once),
 * and the `tierone` binary itself ($TIERONE_BIN_DIR/tierone). */
#include "migrate.h"
#include "test_pg.h"

#include <criterion/criterion.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static char dbname[64];
static char *scratch; /* URL of the scratch database */
static char tmpdir[] = "/tmp/tierone-migtest.XXXXXX";

/* ---- helpers ------------------------------------------------------------------------------ */

static const char *env_or_fail(const char *name)
{
    const char *v = getenv(name);
    cr_assert(v && *v,
              "%s is not set: run through ctest and scripts/test.sh "
              "(bash scripts/test.sh --services-only -- ctest ...)",
              name);
    return v;
}

static PGconn *db_connect(const char *conninfo)
{
    PGconn *c = PQconnectdb(conninfo);
    cr_assert_eq(PQstatus(c), CONNECTION_OK, "connect: %s", PQerrorMessage(c));
    PQclear(PQexec(c, "SET client_min_messages = warning"));
    return c;
}

/* First value of sql in the scratch database (new string; NULL for SQL NULL). */
static char *scratch_value(const char *sql)
{
    PGconn *c = db_connect(scratch);
    PGresult *r = PQexec(c, sql);
    cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s: %s", sql, PQresultErrorMessage(r));
    cr_assert_gt(PQntuples(r), 0, "%s: no rows", sql);
    char *v = PQgetisnull(r, 0, 0) ? NULL : strdup(PQgetvalue(r, 0, 0));
    PQclear(r);
    PQfinish(c);
    return v;
}

static void expect_value(const char *sql, const char *want)
{
    char *v = scratch_value(sql);
    if (want)
        cr_expect(v && strcmp(v, want) == 0, "%s: got %s, want %s", sql, v ? v : "NULL", want);
    else
        cr_expect_null(v, "%s: got %s, want NULL", sql, v);
    free(v);
}

static void write_file(const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f, "%s", path);
    fputs(text, f);
    fclose(f);
}

static void append_file(const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "a");
    cr_assert_not_null(f, "%s", path);
    fputs(text, f);
    fclose(f);
}

/* Copy tests/fixtures/<fixture>/ into the temp dir. */
static void use_fixture(const char *fixture)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "cp -p '%s/tests/fixtures/%s/'* '%s/'",
             env_or_fail("TIERONE_SOURCE_DIR"), fixture, tmpdir);
    cr_assert_eq(system(cmd), 0, "%s", cmd);
}

static void setup(void)
{
    snprintf(dbname, sizeof dbname, "tierone_migtest_%d", (int)getpid());
    scratch = strdup(test_pg_create(dbname)); /* empty: the tests migrate it */
    cr_assert_not_null(mkdtemp(tmpdir));
}

static void teardown(void)
{
    test_pg_drop(dbname);
    free(scratch);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    cr_expect_eq(system(cmd), 0);
}

TestSuite(migrate, .init = setup, .fini = teardown, .timeout = 120);

/* migrate_apply, asserting success; returns how many were applied. */
static size_t apply_ok(struct migration_list *applied)
{
    char *err = NULL;
    int rc = migrate_apply(scratch, tmpdir, applied, &err);
    cr_assert_eq(rc, 0, "migrate_apply: %s", err ? err : "?");
    cr_assert_null(err);
    return applied->n;
}

/* ---- the library ---------------------------------------------------------------------------- */

Test(migrate, apply_then_apply_again_changes_nothing)
{
    use_fixture("migrations");
    struct migration_list l;
    cr_assert_eq(apply_ok(&l), 2);
    cr_expect_str_eq(l.v[0].name, "0001_create_items.sql");
    cr_expect_eq(l.v[0].version, 1);
    cr_expect_str_eq(l.v[1].name, "0002_add_note.sql");
    cr_expect_eq(strlen(l.v[0].checksum), 64);
    char *sum = strdup(l.v[0].checksum);
    migration_list_free(&l);

    expect_value("SELECT string_agg(version || ':' || name, ',' ORDER BY version) "
                 "FROM schema_migrations",
                 "1:0001_create_items.sql,2:0002_add_note.sql");
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT checksum = '%s' FROM schema_migrations WHERE version = 1",
             sum);
    expect_value(sql, "t");
    free(sum);
    expect_value("SELECT name || '/' || note FROM items", "first/from 0002");

    cr_expect_eq(apply_ok(&l), 0, "idempotent");
    migration_list_free(&l);
    expect_value("SELECT count(*) FROM schema_migrations", "2");
    expect_value("SELECT count(*) FROM items", "1");

    char *err = NULL;
    cr_assert_eq(migrate_status(scratch, tmpdir, &l, &err), 0, "%s", err);
    cr_assert_eq(l.n, 2);
    for (size_t i = 0; i < l.n; i++) {
        cr_expect(l.v[i].applied);
        cr_expect_not(l.v[i].changed);
        cr_expect_not_null(l.v[i].applied_at);
    }
    migration_list_free(&l);
}

Test(migrate, status_of_a_fresh_database_creates_nothing)
{
    use_fixture("migrations");
    struct migration_list l;
    char *err = NULL;
    cr_assert_eq(migrate_status(scratch, tmpdir, &l, &err), 0, "%s", err);
    cr_assert_eq(l.n, 2);
    cr_expect_not(l.v[0].applied);
    cr_expect_not(l.v[1].applied);
    migration_list_free(&l);
    expect_value("SELECT to_regclass('schema_migrations')::text", NULL);
}

Test(migrate, a_new_file_is_the_only_one_applied)
{
    use_fixture("migrations");
    struct migration_list l;
    cr_assert_eq(apply_ok(&l), 2);
    migration_list_free(&l);
    write_file("0010_more.sql", "CREATE TABLE more_items (id int);\n");
    cr_assert_eq(apply_ok(&l), 1);
    cr_expect_str_eq(l.v[0].name, "0010_more.sql");
    cr_expect_eq(l.v[0].version, 10);
    migration_list_free(&l);
    expect_value("SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_migrations",
                 "1,2,10");
    expect_value("SELECT to_regclass('more_items')::text", "more_items");
}

Test(migrate, an_edited_applied_file_is_refused)
{
    use_fixture("migrations");
    struct migration_list l;
    cr_assert_eq(apply_ok(&l), 2);
    migration_list_free(&l);
    append_file("0001_create_items.sql", "-- edited later\n");
    write_file("0003_more.sql", "CREATE TABLE more_items (id int);\n");
    char *err = NULL;
    cr_assert_eq(migrate_apply(scratch, tmpdir, &l, &err), -1);
    cr_expect_eq(l.n, 0);
    cr_assert_not_null(err);
    cr_expect(strstr(err, "0001_create_items.sql changed after it was applied"), "%s", err);
    cr_expect(strstr(err, "nothing applied"), "%s", err);
    free(err);
    migration_list_free(&l);
    expect_value("SELECT count(*) FROM schema_migrations", "2");
    expect_value("SELECT to_regclass('more_items')::text", NULL);

    cr_assert_eq(migrate_status(scratch, tmpdir, &l, &err), 0, "%s", err);
    cr_assert_eq(l.n, 3);
    cr_expect(l.v[0].changed);
    cr_expect_not(l.v[1].changed);
    cr_expect_not(l.v[2].applied);
    migration_list_free(&l);
}

/* migrate_scan refuses dir with the given file names, with an error containing want. */
static void expect_scan_refused(const char *const *names, const char *want)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -f '%s'/*", tmpdir);
    cr_assert_eq(system(cmd), 0);
    for (const char *const *n = names; *n; n++)
        write_file(*n, "SELECT 1;\n");
    struct migration_list l;
    char *err = NULL;
    cr_expect_eq(migrate_scan(tmpdir, &l, &err), -1, "accepted %s", names[0]);
    cr_expect_eq(l.n, 0);
    cr_expect(err && strstr(err, want), "error %s, want %s", err ? err : "(none)", want);
    free(err);
    err = NULL;
    cr_expect_eq(migrate_apply(scratch, tmpdir, &l, &err), -1);
    cr_expect(err && strstr(err, want), "error %s, want %s", err ? err : "(none)", want);
    free(err);
    migration_list_free(&l);
}

Test(migrate, malformed_and_duplicate_names_are_refused)
{
    const char *bad1[] = {"0001_ok.sql", "abc.sql", NULL};
    expect_scan_refused(bad1, "malformed migration file name abc.sql");
    const char *bad2[] = {"0001_.sql", NULL};
    expect_scan_refused(bad2, "malformed migration file name 0001_.sql");
    const char *bad3[] = {"0001-dash.sql", NULL};
    expect_scan_refused(bad3, "malformed");
    const char *bad4[] = {"0001_has space.sql", NULL};
    expect_scan_refused(bad4, "malformed");
    const char *dup[] = {"0001_a.sql", "01_b.sql", "0002_c.sql", NULL};
    expect_scan_refused(dup, "same version 1");
    /* Nothing was ever applied, not even the table created. */
    expect_value("SELECT to_regclass('schema_migrations')::text", NULL);

    /* Other files are ignored; the order is numeric, not by name. */
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -f '%s'/*", tmpdir);
    cr_assert_eq(system(cmd), 0);
    write_file("10_ten.sql", "");
    write_file("9_nine.sql", "");
    write_file("README.md", "");
    write_file(".hidden.sql", "");
    write_file("notes.sql~", "");
    struct migration_list l;
    char *err = NULL;
    cr_assert_eq(migrate_scan(tmpdir, &l, &err), 0, "%s", err);
    cr_assert_eq(l.n, 2);
    cr_expect_str_eq(l.v[0].name, "9_nine.sql");
    cr_expect_str_eq(l.v[1].name, "10_ten.sql");
    /* sha256 of the empty file */
    cr_expect_str_eq(l.v[0].checksum,
                     "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    migration_list_free(&l);
}

Test(migrate, a_failing_file_is_rolled_back_alone)
{
    use_fixture("migrations_bad");
    struct migration_list l;
    char *err = NULL;
    cr_assert_eq(migrate_apply(scratch, tmpdir, &l, &err), -1);
    cr_assert_eq(l.n, 1, "the first file stays applied");
    cr_expect_str_eq(l.v[0].name, "0001_create_things.sql");
    migration_list_free(&l);
    cr_assert_not_null(err);
    cr_expect(strstr(err, "0002_fails.sql line 3: "), "%s", err);
    cr_expect(strstr(err, "no_such_table"), "%s", err);
    cr_expect(strstr(err, "(SQLSTATE 42P01)"), "%s", err);
    free(err);
    expect_value("SELECT string_agg(version::text, ',') FROM schema_migrations", "1");
    expect_value("SELECT to_regclass('things')::text", "things");
    expect_value("SELECT count(*) FROM things", "0");
    expect_value("SELECT to_regclass('half_done')::text", NULL);
    expect_value("SELECT to_regclass('never_applied')::text", NULL);

    /* Again: the same failure, nothing more applied. */
    err = NULL;
    cr_assert_eq(migrate_apply(scratch, tmpdir, &l, &err), -1);
    cr_expect_eq(l.n, 0);
    cr_expect(err && strstr(err, "0002_fails.sql"), "%s", err);
    free(err);
    migration_list_free(&l);
}

struct migrator {
    pthread_t thread;
    int rc;
    char *err;
    struct migration_list applied;
};

static void *migrator_run(void *arg)
{
    struct migrator *m = arg;
    m->rc = migrate_apply(scratch, tmpdir, &m->applied, &m->err);
    return NULL;
}

Test(migrate, concurrent_migrators_apply_each_migration_once)
{
    use_fixture("migrations");
    struct migrator m[4];
    memset(m, 0, sizeof m);
    for (int i = 0; i < 4; i++)
        cr_assert_eq(pthread_create(&m[i].thread, NULL, migrator_run, &m[i]), 0);
    for (int i = 0; i < 4; i++)
        pthread_join(m[i].thread, NULL);
    int seen[3] = {0};
    for (int i = 0; i < 4; i++) {
        cr_expect_eq(m[i].rc, 0, "migrator %d: %s", i, m[i].err ? m[i].err : "");
        for (size_t j = 0; j < m[i].applied.n; j++)
            seen[m[i].applied.v[j].version]++;
        free(m[i].err);
        migration_list_free(&m[i].applied);
    }
    cr_expect_eq(seen[1], 1);
    cr_expect_eq(seen[2], 1);
    expect_value("SELECT count(*) FROM schema_migrations", "2");
    expect_value("SELECT count(*) FROM items", "1");
}

/* ---- the binary ----------------------------------------------------------------------------- */

struct run {
    int status; /* exit status, or 128 + signal */
    char out[8192];
    char err[8192];
};

static void slurp(const char *path, char *buf, size_t size)
{
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(buf, 1, size - 1, f) : 0;
    buf[n] = 0;
    if (f)
        fclose(f);
}

/* Run $TIERONE_BIN_DIR/tierone with args (NULL-terminated), the environment without
 * TIERONE_DATABASE_URL and TIERONE_MIGRATIONS_DIR plus env (NULL-terminated "K=V"). */
static void run_tierone(struct run *r, const char *const *args, const char *const *env)
{
    char bin[512], outp[600], errp[600];
    snprintf(bin, sizeof bin, "%s/tierone", env_or_fail("TIERONE_BIN_DIR"));
    snprintf(outp, sizeof outp, "%s/.stdout", tmpdir);
    snprintf(errp, sizeof errp, "%s/.stderr", tmpdir);
    const char *argv[16] = {bin};
    int argc = 1;
    for (; args[argc - 1]; argc++)
        argv[argc] = args[argc - 1];
    argv[argc] = NULL;
    const char *envp[256];
    int n = 0;
    for (char **e = environ; *e && n < 240; e++)
        if (strncmp(*e, "TIERONE_DATABASE_URL=", 21) != 0 &&
            strncmp(*e, "TIERONE_MIGRATIONS_DIR=", 23) != 0)
            envp[n++] = *e;
    for (; env && *env; env++)
        envp[n++] = *env;
    envp[n] = NULL;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, outp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_addopen(&fa, 2, errp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    pid_t pid;
    int rc = posix_spawn(&pid, bin, &fa, NULL, (char *const *)argv, (char *const *)envp);
    posix_spawn_file_actions_destroy(&fa);
    cr_assert_eq(rc, 0, "spawn %s: %s", bin, strerror(rc));
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    r->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    slurp(outp, r->out, sizeof r->out);
    slurp(errp, r->err, sizeof r->err);
    unlink(outp);
    unlink(errp);
}

#define expect_run(r, want_status, stream, needle)                                                 \
    cr_expect((r).status == (want_status) && strstr((r).stream, (needle)),                         \
              "exit %d (want %d), " #stream " lacks '%s'\nstdout:\n%s\nstderr:\n%s", (r).status,   \
              (want_status), (needle), (r).out, (r).err)

/* The project's own migrations: a turn's passages are compressed with lz4 wherever the
 * server has it (0005), and a large value stored there comes back whole. */
Test(migrate, the_project_migrations_compress_passages_with_lz4)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "cp -p '%s/migrations/'*.sql '%s/'",
             env_or_fail("TIERONE_SOURCE_DIR"), tmpdir);
    cr_assert_eq(system(cmd), 0, "%s", cmd);
    struct migration_list l;
    cr_assert_geq(apply_ok(&l), 5);
    migration_list_free(&l);
    char *lz4 = scratch_value("SELECT 'lz4' = ANY (enumvals) FROM pg_settings "
                              "WHERE name = 'default_toast_compression'");
    cr_assert_not_null(lz4);
    bool has_lz4 = strcmp(lz4, "t") == 0;
    free(lz4);
    expect_value("SELECT attcompression FROM pg_attribute "
                 "WHERE attrelid = 'turns'::regclass AND attname = 'passages'",
                 has_lz4 ? "l" : "");
    expect_value("WITH t AS (INSERT INTO turns (account_id, conversation_id, message_id, "
                 "inbox_id, channel, content, passages) SELECT 1, 1, 1, 1, 'api', 'q', "
                 "jsonb_agg(jsonb_build_object('id', i, 'content', repeat('passage ', 200))) "
                 "FROM generate_series(1, 5) i RETURNING id) "
                 "SELECT 'stored'",
                 "stored");
    expect_value("SELECT pg_column_compression(passages) || ' ' || "
                 "jsonb_array_length(passages) || ' ' || length(passages->4->>'content') "
                 "FROM turns",
                 has_lz4 ? "lz4 5 1600" : "pglz 5 1600");
}

Test(migrate, the_tierone_binary)
{
    use_fixture("migrations");
    struct run r;
    const char *apply[] = {"migrate", "--database-url", scratch, "--dir", tmpdir, NULL};
    run_tierone(&r, apply, NULL);
    expect_run(r, 0, out, "applied 0001_create_items.sql\napplied 0002_add_note.sql\n");
    expect_run(r, 0, out, "2 migrations applied");
    cr_expect_str_eq(r.err, "");

    run_tierone(&r, apply, NULL);
    expect_run(r, 0, out, "database is up to date");

    const char *status[] = {"migrate", "--status", "-d", scratch, "--dir", tmpdir, NULL};
    run_tierone(&r, status, NULL);
    expect_run(r, 0, out, "applied  0001_create_items.sql");
    expect_run(r, 0, out, "2 applied, 0 pending");

    /* The URL and the directory from the environment. */
    write_file("0003_more.sql", "CREATE TABLE more_items (id int);\n");
    char url_env[1024], dir_env[600];
    snprintf(url_env, sizeof url_env, "TIERONE_DATABASE_URL=%s", scratch);
    snprintf(dir_env, sizeof dir_env, "TIERONE_MIGRATIONS_DIR=%s", tmpdir);
    const char *env[] = {url_env, dir_env, NULL};
    const char *plain[] = {"migrate", NULL};
    run_tierone(&r, plain, env);
    expect_run(r, 0, out, "applied 0003_more.sql\n1 migration applied");
    expect_value("SELECT count(*) FROM schema_migrations", "3");

    /* Failures: exit 1 with the reason on stderr. */
    append_file("0003_more.sql", "-- edited\n");
    run_tierone(&r, plain, env);
    expect_run(r, 1, err, "0003_more.sql changed after it was applied");
    const char *no_url[] = {"migrate", "--dir", tmpdir, NULL};
    run_tierone(&r, no_url, NULL);
    expect_run(r, 1, err, "TIERONE_DATABASE_URL");
    const char *bad_dir[] = {"migrate", "-d", scratch, "--dir", "/nonexistent/dir", NULL};
    run_tierone(&r, bad_dir, NULL);
    expect_run(r, 1, err, "cannot read migrations directory /nonexistent/dir");
    const char *bad_db[] = {"migrate", "-d",   "postgresql://nobody@127.0.0.1:1/none",
                            "--dir",   tmpdir, NULL};
    run_tierone(&r, bad_db, NULL);
    expect_run(r, 1, err, "cannot connect to PostgreSQL");
    const char *bad_opt[] = {"migrate", "--bogus", NULL};
    run_tierone(&r, bad_opt, NULL);
    expect_run(r, 1, err, "usage: tierone migrate");

    /* Dispatch and help. */
    const char *help[] = {"help", NULL};
    run_tierone(&r, help, NULL);
    expect_run(r, 0, out, "migrate");
    const char *help_migrate[] = {"help", "migrate", NULL};
    run_tierone(&r, help_migrate, NULL);
    expect_run(r, 0, out, "--database-url");
    const char *unknown[] = {"no-such-command", NULL};
    run_tierone(&r, unknown, NULL);
    expect_run(r, 1, err, "unknown command 'no-such-command'");
    const char *none[] = {NULL};
    run_tierone(&r, none, NULL);
    expect_run(r, 1, err, "usage: tierone <command>");
}

Test(migrate, the_binary_reports_a_failing_file)
{
    use_fixture("migrations_bad");
    struct run r;
    const char *apply[] = {"migrate", "--database-url", scratch, "--dir", tmpdir, NULL};
    run_tierone(&r, apply, NULL);
    expect_run(r, 1, out, "applied 0001_create_things.sql");
    expect_run(r, 1, err, "0002_fails.sql line 3");
    const char *status[] = {"migrate", "--status", "-d", scratch, "--dir", tmpdir, NULL};
    run_tierone(&r, status, NULL);
    expect_run(r, 0, out, "pending  0002_fails.sql");
    expect_run(r, 0, out, "1 applied, 2 pending");
}
