/* ops: `tierone stats|queues|dead|retries|scheduled|retry|kill|quiet|stop` (see ops.h). */
#include "ops.h"

#include "clock.h"
#include "redis.h"
#include "sidekiq_api.h"
#include "xalloc.h"

#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DEAD_MAX_JOBS  10000
#define DEAD_TIMEOUT_S (180LL * 24 * 3600)

/* Options every command shares. */
struct ops_opts {
    const char *redis_url;
    int json;
    const char *klass;
    size_t limit;
    int all_dead, all_retries;
    enum job_ts_format ts_format;
    const char *arg; /* the positional argument (JID, IDENTITY), if any */
};

static int ops_usage(const char *cmd, const char *what)
{
    fprintf(stderr, "usage: tierone %s %s\n(see `tierone help`)\n", cmd, what);
    return 2;
}

/* Parse the shared options; returns 0, or 2 after printing usage. want_arg: 1 when one
 * positional argument is required. */
static int ops_parse(int argc, char **argv, struct ops_opts *o, int want_arg, const char *usage)
{
    static const struct option longopts[] = {
        {"redis-url", required_argument, NULL, 'r'},
        {"json", no_argument, NULL, 'j'},
        {"class", required_argument, NULL, 'c'},
        {"limit", required_argument, NULL, 'l'},
        {"all-dead", no_argument, NULL, 'D'},
        {"all-retries", no_argument, NULL, 'R'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    memset(o, 0, sizeof *o);
    o->redis_url = getenv("TIERONE_REDIS_URL");
    if (!o->redis_url || !*o->redis_url)
        o->redis_url = "redis://127.0.0.1:6379/0";
    const char *ts = getenv("TIERONE_TIMESTAMP_FORMAT");
    o->ts_format = ts && strcmp(ts, "int_millis") == 0 ? JOB_TS_INT_MILLIS : JOB_TS_FLOAT_SECONDS;
    optind = 1;
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'r':
            o->redis_url = optarg;
            break;
        case 'j':
            o->json = 1;
            break;
        case 'c':
            o->klass = optarg;
            break;
        case 'l': {
            char *end;
            o->limit = (size_t)strtoull(optarg, &end, 10);
            if (end == optarg || *end || optarg[0] == '-')
                return ops_usage(argv[0], usage);
            break;
        }
        case 'D':
            o->all_dead = 1;
            break;
        case 'R':
            o->all_retries = 1;
            break;
        default:
            return ops_usage(argv[0], usage);
        }
    }
    if (optind < argc)
        o->arg = argv[optind++];
    if (optind < argc || (want_arg && !o->arg && !o->all_dead && !o->all_retries) ||
        (!want_arg && o->arg))
        return ops_usage(argv[0], usage);
    return 0;
}

/* A blocking connection with AUTH and SELECT from the URL; NULL after printing why. */
static redisContext *ops_connect(const char *url)
{
    struct redis_url u;
    const char *why = NULL;
    if (redis_url_parse(url, &u, &why) != 0) {
        fprintf(stderr, "tierone: bad Redis URL: %s\n", why);
        return NULL;
    }
    struct timeval tv = {5, 0};
    redisContext *c = redisConnectWithTimeout(u.host, u.port, tv);
    if (!c || c->err) {
        fprintf(stderr, "tierone: cannot connect to Redis at %s:%d: %s\n", u.host, u.port,
                c ? c->errstr : "out of memory");
        redisFree(c);
        redis_url_free(&u);
        return NULL;
    }
    redisSetTimeout(c, tv);
    redisReply *r = NULL;
    if (u.password)
        r = u.user ? redisCommand(c, "AUTH %s %s", u.user, u.password)
                   : redisCommand(c, "AUTH %s", u.password);
    int bad = u.password && (!r || r->type == REDIS_REPLY_ERROR);
    freeReplyObject(r);
    r = NULL;
    if (!bad && u.db) {
        r = redisCommand(c, "SELECT %d", u.db);
        bad = !r || r->type == REDIS_REPLY_ERROR;
        freeReplyObject(r);
    }
    redis_url_free(&u);
    if (bad) {
        fprintf(stderr, "tierone: Redis refused AUTH or SELECT\n");
        redisFree(c);
        return NULL;
    }
    return c;
}

/* Parse the options and connect: 0 with *c set, or the exit status (usage 2, no Redis 1). */
static int ops_open(int argc, char **argv, struct ops_opts *o, int want_arg, const char *usage,
                    redisContext **c)
{
    int rc = ops_parse(argc, argv, o, want_arg, usage);
    if (rc)
        return rc;
    *c = ops_connect(o->redis_url);
    return *c ? 0 : 1;
}

/* A failed read: say why, release, exit status 1. */
static int ops_fail(redisContext *c, const char *cmd, char *err)
{
    fprintf(stderr, "tierone %s: %s\n", cmd, err ? err : "failed");
    free(err);
    redisFree(c);
    return 1;
}

static json_t *ops_queue_json(const struct sidekiq_queue_info *q)
{
    return json_pack("{s:s,s:I,s:f}", "name", q->name, "size", (json_int_t)q->size, "latency",
                     q->latency);
}

static void ops_print_json(json_t *j)
{
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    puts(s);
    free(s);
    json_decref(j);
}

static void ops_time(char *out, size_t cap, double t)
{
    time_t secs = (time_t)t;
    struct tm tm;
    gmtime_r(&secs, &tm);
    strftime(out, cap, "%Y-%m-%d %H:%M:%S UTC", &tm);
}

/* ---- stats / queues ------------------------------------------------------------------ */

int cli_stats(int argc, char **argv)
{
    struct ops_opts o;
    redisContext *c = NULL;
    int rc = ops_open(argc, argv, &o, 0, "[--json] [--redis-url URL]", &c);
    if (rc)
        return rc;
    struct sidekiq_stats st;
    char *err = NULL;
    if (sidekiq_api_stats(c, &st, &err) != 0)
        return ops_fail(c, "stats", err);
    const struct sidekiq_queue_info *q = st.queues;
    const struct sidekiq_process_info *p = st.process_list;
    if (o.json) {
        json_t *qs = json_array(), *ps = json_array();
        for (size_t i = 0; i < st.nqueues; i++)
            json_array_append_new(qs, ops_queue_json(&q[i]));
        for (size_t i = 0; i < st.nprocesses; i++)
            json_array_append_new(
                ps, json_pack("{s:s,s:s?,s:I,s:s?,s:s,s:I,s:I,s:b,s:I,s:f}", "identity",
                              p[i].identity, "hostname", p[i].hostname, "pid", (json_int_t)p[i].pid,
                              "tag", p[i].tag, "queues", p[i].queues, "busy", (json_int_t)p[i].busy,
                              "concurrency", (json_int_t)p[i].concurrency, "quiet", p[i].quiet,
                              "rss_kib", (json_int_t)p[i].rss_kib, "beat", p[i].beat));
        ops_print_json(json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:f,s:o,s:o}", "processed",
                                 (json_int_t)st.processed, "failed", (json_int_t)st.failed,
                                 "enqueued", (json_int_t)st.enqueued, "scheduled",
                                 (json_int_t)st.scheduled, "retries", (json_int_t)st.retries,
                                 "dead", (json_int_t)st.dead, "processes", (json_int_t)st.processes,
                                 "busy", (json_int_t)st.busy, "concurrency",
                                 (json_int_t)st.concurrency, "default_queue_latency",
                                 st.default_queue_latency, "queues", qs, "process_list", ps));
    } else {
        printf("processed %lld  failed %lld  enqueued %lld  scheduled %lld  retries %lld  "
               "dead %lld\n",
               st.processed, st.failed, st.enqueued, st.scheduled, st.retries, st.dead);
        printf("processes %lld  busy %lld / %lld\n", st.processes, st.busy, st.concurrency);
        for (size_t i = 0; i < st.nqueues; i++)
            printf("queue %-20s size %-8lld latency %.1f s\n", q[i].name, q[i].size, q[i].latency);
        for (size_t i = 0; i < st.nprocesses; i++)
            printf("process %s  busy %lld/%lld  %s  rss %lld KiB  queues %s\n", p[i].identity,
                   p[i].busy, p[i].concurrency, p[i].quiet ? "quiet" : "running", p[i].rss_kib,
                   p[i].queues);
    }
    sidekiq_api_stats_free(&st);
    redisFree(c);
    return 0;
}

int cli_queues(int argc, char **argv)
{
    struct ops_opts o;
    redisContext *c = NULL;
    int rc = ops_open(argc, argv, &o, 0, "[--json] [--redis-url URL]", &c);
    if (rc)
        return rc;
    struct sidekiq_queue_info *q = NULL;
    size_t nq = 0;
    char *err = NULL;
    if (sidekiq_api_queues(c, &q, &nq, &err) != 0)
        return ops_fail(c, "queues", err);
    json_t *arr = o.json ? json_array() : NULL;
    for (size_t i = 0; i < nq; i++) {
        if (arr)
            json_array_append_new(arr, ops_queue_json(&q[i]));
        else
            printf("%-20s %-8lld %.1f s\n", q[i].name, q[i].size, q[i].latency);
    }
    if (arr)
        ops_print_json(arr);
    sidekiq_api_queues_free(q, nq);
    redisFree(c);
    return 0;
}

/* ---- sorted sets --------------------------------------------------------------------- */

static int ops_list_set(int argc, char **argv, const char *set, int ascending)
{
    struct ops_opts o;
    redisContext *c = NULL;
    int rc = ops_open(argc, argv, &o, 0, "[--class C] [--limit N] [--json] [--redis-url URL]", &c);
    if (rc)
        return rc;
    struct sidekiq_entry *e = NULL;
    size_t n = 0;
    char *err = NULL;
    if (sidekiq_api_entries(c, set, o.klass, o.limit, ascending, &e, &n, &err) != 0)
        return ops_fail(c, argv[0], err);
    json_t *arr = o.json ? json_array() : NULL;
    for (size_t i = 0; i < n; i++) {
        if (arr) {
            json_t *job = json_loadb(e[i].raw, e[i].len, 0, NULL);
            json_array_append_new(
                arr, json_pack("{s:f,s:s?,s:s?,s:s?,s:s?,s:s?,s:o?}", "score", e[i].score, "jid",
                               e[i].jid, "class", e[i].klass, "queue", e[i].queue, "error_class",
                               e[i].error_class, "error_message", e[i].error_message, "job", job));
            continue;
        }
        char when[64];
        ops_time(when, sizeof when, e[i].score);
        printf("%s  %s  %s  %s", when, e[i].jid ? e[i].jid : "-", e[i].klass ? e[i].klass : "-",
               e[i].queue ? e[i].queue : "-");
        if (e[i].error_class)
            printf("  %s: %s", e[i].error_class, e[i].error_message ? e[i].error_message : "");
        putchar('\n');
    }
    if (arr)
        ops_print_json(arr);
    sidekiq_api_entries_free(e, n);
    redisFree(c);
    return 0;
}

int cli_dead(int argc, char **argv)
{
    return ops_list_set(argc, argv, "dead", 0);
}

int cli_retries(int argc, char **argv)
{
    return ops_list_set(argc, argv, "retry", 1);
}

int cli_scheduled(int argc, char **argv)
{
    return ops_list_set(argc, argv, "schedule", 1);
}

/* Print the outcome of an action. */
static int ops_report(const struct ops_opts *o, const char *action, const char *target,
                      long long count, const char *err)
{
    if (o->json) {
        ops_print_json(json_pack("{s:s,s:s,s:I,s:b,s:s?}", "action", action, "target", target,
                                 "count", (json_int_t)count, "ok", err == NULL && count > 0,
                                 "error", err));
    } else if (err) {
        fprintf(stderr, "tierone %s: %s\n", action, err);
    } else if (count == 0) {
        fprintf(stderr, "tierone %s: %s not found\n", action, target);
    } else {
        printf("%s: %s (%lld)\n", action, target, count);
    }
    return err || count == 0 ? 1 : 0;
}

int cli_retry(int argc, char **argv)
{
    struct ops_opts o;
    redisContext *c = NULL;
    int rc = ops_open(argc, argv, &o, 1, "JID|--all-dead|--all-retries [--json]", &c);
    if (rc)
        return rc;
    char *err = NULL;
    if (o.all_dead || o.all_retries) {
        const char *set = o.all_dead ? "dead" : "retry";
        long long count = 0;
        rc = sidekiq_api_retry_all(c, set, o.ts_format, &count, &err) == 0 ? 0 : 1;
        if (o.json)
            ops_print_json(json_pack("{s:s,s:s,s:I,s:b,s:s?}", "action", "retry", "target", set,
                                     "count", (json_int_t)count, "ok", rc == 0, "error", err));
        else if (rc)
            fprintf(stderr, "tierone retry: %s\n", err);
        else
            printf("retry: %lld jobs from %s\n", count, set);
    } else {
        /* The Retries page first, then the Dead page. */
        int done = sidekiq_api_retry(c, "retry", o.arg, o.ts_format, &err);
        if (done == 0)
            done = sidekiq_api_retry(c, "dead", o.arg, o.ts_format, &err);
        rc = ops_report(&o, "retry", o.arg, done > 0 ? 1 : 0, err);
    }
    free(err);
    redisFree(c);
    return rc;
}

int cli_kill(int argc, char **argv)
{
    struct ops_opts o;
    redisContext *c = NULL;
    int rc = ops_open(argc, argv, &o, 1, "JID [--json]", &c);
    if (rc)
        return rc;
    char *err = NULL;
    int done = sidekiq_api_kill(c, "retry", o.arg, DEAD_MAX_JOBS, DEAD_TIMEOUT_S, &err);
    if (done == 0)
        done = sidekiq_api_kill(c, "schedule", o.arg, DEAD_MAX_JOBS, DEAD_TIMEOUT_S, &err);
    rc = ops_report(&o, "kill", o.arg, done > 0 ? 1 : 0, err);
    free(err);
    redisFree(c);
    return rc;
}

static int ops_signal(int argc, char **argv, const char *sig, const char *action)
{
    struct ops_opts o;
    redisContext *c = NULL;
    int rc = ops_open(argc, argv, &o, 1, "IDENTITY [--json]", &c);
    if (rc)
        return rc;
    char *err = NULL;
    int done = sidekiq_api_signal(c, o.arg, sig, &err);
    rc = ops_report(&o, action, o.arg, done > 0 ? 1 : 0, err);
    free(err);
    redisFree(c);
    return rc;
}

int cli_quiet(int argc, char **argv)
{
    return ops_signal(argc, argv, "TSTP", "quiet");
}

int cli_stop(int argc, char **argv)
{
    return ops_signal(argc, argv, "TERM", "stop");
}

/* ---- usage --------------------------------------------------------------------------- */

static const char ops_common[] =
    "  --redis-url URL  Redis (default: TIERONE_REDIS_URL, else redis://127.0.0.1:6379/0)\n"
    "  --json           machine-readable output\n";

void cli_stats_usage(FILE *out)
{
    fprintf(out,
            "usage: tierone stats [--json]\nprocessed, failed, queue sizes and latency, "
            "retry/scheduled/dead counts, processes\n%s",
            ops_common);
}

void cli_queues_usage(FILE *out)
{
    fprintf(out, "usage: tierone queues [--json]\nevery queue with its size and latency\n%s",
            ops_common);
}

void cli_set_usage(FILE *out)
{
    fprintf(out,
            "usage: tierone dead|retries|scheduled [--class C] [--limit N] [--json]\n"
            "  --class C        only jobs of class C\n  --limit N        at most N jobs\n%s",
            ops_common);
}

void cli_retry_usage(FILE *out)
{
    fprintf(out,
            "usage: tierone retry JID | --all-dead | --all-retries [--json]\n"
            "\"Retry now\" as in Sidekiq's Web UI: retry_count - 1, pushed onto its queue\n%s",
            ops_common);
}

void cli_kill_usage(FILE *out)
{
    fprintf(out,
            "usage: tierone kill JID [--json]\nmove a retry or scheduled job to the dead set\n%s",
            ops_common);
}

void cli_signal_usage(FILE *out)
{
    fprintf(out,
            "usage: tierone quiet|stop IDENTITY [--json]\nquiet (TSTP) or stop (TERM) a "
            "process through Redis, as the Web UI's buttons do\n%s",
            ops_common);
}
