/* bench_pipeline: one run of the pipeline benchmark (bench/pipeline.sh), end to end.
 *
 *   bench_pipeline SCENARIO [--turns N] [--rate R] [--llm-delay MS] [--concurrency C]
 *                  [--db-pool N] [--sidekiq] [--warmup N]
 *
 * --concurrency is the worker's (TIERONE_CONCURRENCY, or Sidekiq's -c), --db-pool its
 * PostgreSQL connections (TIERONE_DATABASE_POOL, read by both; default 8).
 *
 * Builds the whole product with tests/support/test_stack: the fake Chatwoot, LLM, Slack and
 * Linear in this process, a fresh migrated PostgreSQL database with the test knowledge
 * base, a Redis database, the real tierone-ingest and, as the worker, tierone-worker (or,
 * with --sidekiq, Ruby Sidekiq running bench/ruby_pipeline.rb: the same chain in Ruby).
 * Every turn is one customer question in its own pending conversation, posted to the shim
 * as a signed webhook; the fake model (fake_llm_support_model) answers it citing the best
 * passage, so every turn ends in one reply. Debounce is 0 (the debounce is a deliberate
 * wait, not work).
 *
 * A turn's latency runs from the shim's 202 (the webhook is accepted) to the moment the
 * fake Chatwoot has read the reply's POST. Scenarios:
 *   burst     N turns posted as fast as one client can (curl, one connection each), then
 *             waits for N replies: turns/s = N / (last reply - first post), and the
 *             latencies, which include the wait in the queue.
 *   paced     N turns at R per second (open loop): latencies at a load the worker keeps up
 *             with.
 *   inflight  the model answers after --llm-delay ms (default 2000); N turns posted as
 *             fast as possible: the most model calls open at once, the time to the last
 *             reply, and the worker's peak RSS.
 * Before the measured turns, --warmup turns (default 50) run and are waited for, so the
 * worker's start-up, connection set-up and Ruby's boot are not measured. Before the warm-up,
 * --history turns (default 20,000) of other conversations, answered two days ago with their
 * reply effects and conversations, are inserted and the database is ANALYZEd: the plans
 * (prepared once per connection, then kept) are those of a database in service, not of
 * tables created a second earlier, whose plans (sequential scans of tables that then grow
 * by thousands of rows during the run) would make the figures depend on when a plan was
 * made.
 *
 * Prints one line: "result scenario=... worker=... turns=N ok=N turns_per_s=... p50_ms=...
 * p99_ms=... max_ms=... llm_open_max=... rss_kb=... cpu_s=... wall_s=..." where rss_kb is
 * the worker's VmHWM and cpu_s its CPU time (user + system) at the end, then where the
 * machine's CPU went while the measured turns ran (from the first post to the last reply
 * seen, warm-up and set-up left out), in seconds: run_worker_s, run_pg_s (every process
 * named postgres), run_shim_s (tierone-ingest), run_redis_s (redis-server) and run_bench_s
 * (this process: the fake services and the client posting the webhooks). Exits 0 when every
 * turn got exactly one reply within the time limit, 1 if not, 2 on a usage error.
 *
 * Needs what test_stack needs: TIERONE_BIN_DIR, TIERONE_SOURCE_DIR, TIERONE_TEST_REDIS_URL,
 * TIERONE_TEST_DATABASE_URL (bench/pipeline.sh sets them). */
#include "fake_chatwoot.h"
#include "fake_llm.h"
#include "test_stack.h"

#include <dirent.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define BP_QUESTION  "How do I reset my password? The reset link never arrives"
#define BP_HOOK      "/webhooks/agent-bot"
#define BP_FIRST_MSG 100000L

struct bp_opts {
    const char *scenario;
    long turns, warmup, history, concurrency, db_pool;
    double rate;
    unsigned llm_delay_ms;
    int sidekiq;
};

/* One measured turn: its conversation and the times of its 202 and of its reply. */
struct bp_turn {
    unsigned long long accepted_ns, replied_ns;
    int replies;
};

struct bp_run {
    struct test_stack st;
    struct bp_turn *turns; /* by conversation id - 1 (warm-up turns included) */
    long nturns;
    size_t scanned; /* fake Chatwoot requests already looked at */
    unsigned llm_open_max;
};

static unsigned long long bp_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}

static void bp_sleep_until(unsigned long long ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)};
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
}

/* Post turn i's webhook (conversation i + 1); records its 202. Returns 0 or -1. */
static int bp_post(struct bp_run *r, long i)
{
    long conv = i + 1, msg = BP_FIRST_MSG + i;
    char *body =
        test_stack_message(conv, msg, "pending", "incoming", "contact", BP_QUESTION, 0, NULL);
    char delivery[48];
    snprintf(delivery, sizeof delivery, "bench-%ld", msg);
    int status = test_stack_post(&r->st, BP_HOOK, delivery, body);
    r->turns[i].accepted_ns = bp_now_ns();
    free(body);
    if (status != 202) {
        fprintf(stderr, "bench_pipeline: the shim answered %d to turn %ld\n", status, i);
        return -1;
    }
    return 0;
}

/* Look at the fake Chatwoot's new requests: a POST of a message carrying the reply marker
 * is turn (conversation - 1)'s reply. */
static void bp_scan(struct bp_run *r)
{
    struct fake_http *h = fake_chatwoot_http(r->st.cw);
    size_t n = fake_http_count(h);
    for (; r->scanned < n; r->scanned++) {
        const struct fake_http_request *q = fake_http_request_at(h, r->scanned);
        if (!q)
            break; /* counted, not yet recorded */
        long conv = 0;
        if (strcmp(q->method, "POST") != 0 ||
            sscanf(q->path, "/api/v1/accounts/1/conversations/%ld/messages", &conv) != 1 ||
            !strstr(q->body, "tierone_turn") || conv < 1 || conv > r->nturns)
            continue;
        struct bp_turn *t = &r->turns[conv - 1];
        if (t->replies++ == 0)
            t->replied_ns = q->at_ns;
    }
}

/* Wait until turns [from, to) have a reply each, or timeout_ms. Returns the replied count. */
static long bp_wait(struct bp_run *r, long from, long to, unsigned timeout_ms)
{
    unsigned long long deadline = bp_now_ns() + (unsigned long long)timeout_ms * 1000000ull;
    long done = 0;
    for (;;) {
        bp_scan(r);
        unsigned open = fake_http_open_connections(fake_llm_http(r->st.llm));
        if (open > r->llm_open_max)
            r->llm_open_max = open;
        done = 0;
        for (long i = from; i < to; i++)
            done += r->turns[i].replies > 0;
        if (done == to - from || bp_now_ns() > deadline)
            return done;
        bp_sleep_until(bp_now_ns() + 2000000ull); /* poll every 2 ms */
    }
}

static int bp_cmp_ull(const void *a, const void *b)
{
    unsigned long long x = *(const unsigned long long *)a, y = *(const unsigned long long *)b;
    return x < y ? -1 : x > y;
}

/* CPU seconds (user + system) of process pid from /proc/<pid>/stat; 0 when it is gone. */
static double bp_pid_cpu(pid_t pid)
{
    char path[64], line[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    double s = 0;
    if (f && fgets(line, sizeof line, f)) {
        const char *p = strrchr(line, ')');
        unsigned long utime = 0, stime = 0;
        if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime,
                        &stime) == 2)
            s = (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
    }
    if (f)
        fclose(f);
    return s;
}

/* CPU seconds of every process whose name (/proc/<pid>/comm) is comm. */
static double bp_comm_cpu(const char *comm)
{
    DIR *d = opendir("/proc");
    double s = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        char path[300], name[64] = "";
        if (e->d_name[0] < '1' || e->d_name[0] > '9')
            continue;
        snprintf(path, sizeof path, "/proc/%s/comm", e->d_name);
        FILE *f = fopen(path, "r");
        if (f && fgets(name, sizeof name, f)) {
            name[strcspn(name, "\n")] = 0;
            if (!strcmp(name, comm))
                s += bp_pid_cpu((pid_t)atol(e->d_name));
        }
        if (f)
            fclose(f);
    }
    if (d)
        closedir(d);
    return s;
}

/* Where the machine's CPU goes, by part (seconds so far). */
struct bp_cpu {
    double worker, pg, shim, redis, bench;
};

static struct bp_cpu bp_cpu_now(const struct bp_run *r)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (struct bp_cpu){
        .worker = bp_pid_cpu(r->st.worker),
        .pg = bp_comm_cpu("postgres"),
        .shim = bp_comm_cpu("tierone-ingest"),
        .redis = bp_comm_cpu("redis-server"),
        .bench = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                 (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6,
    };
}

/* The worker's VmHWM (kB) and CPU seconds from /proc. */
static void bp_proc(pid_t pid, long *hwm_kb, double *cpu_s)
{
    char path[64], line[512];
    *hwm_kb = -1;
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmHWM:", 6))
            *hwm_kb = atol(line + 6);
    if (f)
        fclose(f);
    *cpu_s = bp_pid_cpu(pid);
}

static int bp_usage(void)
{
    fprintf(stderr, "usage: bench_pipeline burst|paced|inflight [--turns N] [--rate R] "
                    "[--llm-delay MS] [--concurrency C] [--db-pool N] [--warmup N] [--history N] "
                    "[--sidekiq]\n");
    return 2;
}

static int bp_parse(int argc, char **argv, struct bp_opts *o)
{
    if (argc < 2)
        return -1;
    *o = (struct bp_opts){.scenario = argv[1],
                          .turns = 2000,
                          .warmup = 50,
                          .history = 20000,
                          .concurrency = 1000,
                          .rate = 200,
                          .llm_delay_ms = 2000,
                          .db_pool = 8};
    if (strcmp(o->scenario, "burst") && strcmp(o->scenario, "paced") &&
        strcmp(o->scenario, "inflight"))
        return -1;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--sidekiq")) {
            o->sidekiq = 1;
            continue;
        }
        if (!v)
            return -1;
        i++;
        if (!strcmp(a, "--turns"))
            o->turns = atol(v);
        else if (!strcmp(a, "--warmup"))
            o->warmup = atol(v);
        else if (!strcmp(a, "--history"))
            o->history = atol(v);
        else if (!strcmp(a, "--rate"))
            o->rate = atof(v);
        else if (!strcmp(a, "--llm-delay"))
            o->llm_delay_ms = (unsigned)atol(v);
        else if (!strcmp(a, "--concurrency"))
            o->concurrency = atol(v);
        else if (!strcmp(a, "--db-pool"))
            o->db_pool = atol(v);
        else
            return -1;
    }
    return o->turns > 0 && o->warmup >= 0 && o->history >= 0 && o->rate > 0 && o->concurrency > 0 &&
                   o->db_pool > 0
               ? 0
               : -1;
}

int main(int argc, char **argv)
{
    struct bp_opts o;
    if (bp_parse(argc, argv, &o) != 0)
        return bp_usage();
    prctl(PR_SET_PDEATHSIG, SIGTERM); /* never outlive bench/pipeline.sh */
    int inflight = !strcmp(o.scenario, "inflight");

    char concurrency[48], pool[48], rb[600], conc_arg[24];
    snprintf(concurrency, sizeof concurrency, "TIERONE_CONCURRENCY=%ld", o.concurrency);
    snprintf(pool, sizeof pool, "TIERONE_DATABASE_POOL=%ld", o.db_pool);
    snprintf(conc_arg, sizeof conc_arg, "%ld", o.concurrency);
    snprintf(rb, sizeof rb, "%s/bench/ruby_pipeline.rb",
             getenv("TIERONE_SOURCE_DIR") ? getenv("TIERONE_SOURCE_DIR") : ".");
    const char *env[] = {"TIERONE_DEBOUNCE=0", concurrency, "TIERONE_LOG_LEVEL=warn", pool, NULL};
    const char *sidekiq[] = {"/usr/bin/sidekiq", "-r", rb,   "-c", conc_arg,  "-q",
                             "events",           "-q", "ai", "-q", "actions", NULL};
    struct test_stack_opts so = {.redis_db = 0,
                                 .pg_name = "tierone_bench_pipeline",
                                 .llm = 1,
                                 .env = env,
                                 .worker_argv = o.sidekiq ? sidekiq : NULL};

    struct bp_run r = {.nturns = o.warmup + o.turns};
    r.turns = calloc((size_t)r.nturns, sizeof *r.turns);
    test_stack_start(&r.st, &so);
    fake_llm_set_handler(r.st.llm, fake_llm_support_model, NULL);
    for (long i = 0; i < r.nturns; i++)
        test_stack_conversation(&r.st, i + 1, "pending");

    int ok = test_stack_history(&r.st, o.history) == 0;
    /* Warm-up: started, connected, every code path touched once. */
    for (long i = 0; ok && i < o.warmup; i++)
        ok = bp_post(&r, i) == 0;
    if (ok && bp_wait(&r, 0, o.warmup, 120000) != o.warmup) {
        fprintf(stderr, "bench_pipeline: the warm-up turns did not all get a reply\n");
        ok = 0;
    }
    if (inflight) {
        struct fake_fault slow = {.delay_ms = o.llm_delay_ms, .pass_through = 1};
        fake_faults_push(fake_llm_faults(r.st.llm), &slow, (unsigned)o.turns);
    }
    r.llm_open_max = 0;
    struct bp_cpu c0 = bp_cpu_now(&r);
    unsigned long long t0 = bp_now_ns();
    double interval_ns = 1e9 / o.rate;
    for (long i = o.warmup; ok && i < r.nturns; i++) {
        if (!strcmp(o.scenario, "paced"))
            bp_sleep_until(t0 + (unsigned long long)((double)(i - o.warmup) * interval_ns));
        ok = bp_post(&r, i) == 0;
        if (inflight && (i & 63) == 0) {
            unsigned open = fake_http_open_connections(fake_llm_http(r.st.llm));
            r.llm_open_max = open > r.llm_open_max ? open : r.llm_open_max;
        }
    }
    long done = ok ? bp_wait(&r, o.warmup, r.nturns, 300000) : 0;
    struct bp_cpu c1 = bp_cpu_now(&r);
    unsigned long long t1 = 0;
    size_t n = 0;
    unsigned long long *lat = calloc((size_t)o.turns, sizeof *lat);
    int dup = 0;
    for (long i = o.warmup; i < r.nturns; i++) {
        const struct bp_turn *t = &r.turns[i];
        dup += t->replies > 1;
        if (!t->replies)
            continue;
        lat[n++] = t->replied_ns > t->accepted_ns ? t->replied_ns - t->accepted_ns : 0;
        t1 = t->replied_ns > t1 ? t->replied_ns : t1;
    }
    qsort(lat, n, sizeof *lat, bp_cmp_ull);
    long hwm_kb;
    double cpu_s;
    bp_proc(r.st.worker, &hwm_kb, &cpu_s);
    double wall_s = t1 > t0 ? (double)(t1 - t0) / 1e9 : 0;
    printf("result scenario=%s worker=%s turns=%ld ok=%ld dup=%d turns_per_s=%.0f p50_ms=%.1f "
           "p99_ms=%.1f max_ms=%.1f llm_open_max=%u rss_kb=%ld cpu_s=%.2f wall_s=%.2f "
           "run_worker_s=%.2f run_pg_s=%.2f run_shim_s=%.2f run_redis_s=%.2f run_bench_s=%.2f\n",
           o.scenario, o.sidekiq ? "sidekiq" : "tierone", o.turns, done, dup,
           wall_s > 0 ? (double)n / wall_s : 0, n ? (double)lat[n / 2] / 1e6 : 0,
           n ? (double)lat[(n * 99) / 100 < n ? (n * 99) / 100 : n - 1] / 1e6 : 0,
           n ? (double)lat[n - 1] / 1e6 : 0, r.llm_open_max, hwm_kb, cpu_s, wall_s,
           c1.worker - c0.worker, c1.pg - c0.pg, c1.shim - c0.shim, c1.redis - c0.redis,
           c1.bench - c0.bench);
    fflush(stdout);
    if (!ok || done != o.turns || dup) { /* show why before the stack's directory goes */
        char cmd[400];
        snprintf(cmd, sizeof cmd, "grep -v '^/usr/' '%s/worker.log' | tail -n 12 | cut -c1-400 >&2",
                 r.st.dir);
        if (system(cmd) != 0)
            fprintf(stderr, "bench_pipeline: no worker log\n");
    }
    free(lat);
    free(r.turns);
    test_stack_stop(&r.st);
    return ok && done == o.turns && !dup ? 0 : 1;
}
