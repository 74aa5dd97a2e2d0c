/* sidekiq_client against the real Redis in TIERONE_TEST_REDIS_URL (database 15, flushed
 * before each test) and against Ruby Sidekiq 6.4.1 itself:
 *
 *  - payload: the exact bytes the client builds (no Redis needed);
 *  - sync/async: push, bulk push and scheduled push, asserting the exact Redis state
 *    (SMEMBERS queues, LRANGE, ZRANGE WITHSCORES), error replies, a down connection;
 *  - interop: C pushes and Ruby's Sidekiq::Queue / ScheduledSet read the jobs (a `ruby`
 *    child prints what the API sees as JSON); Ruby's Sidekiq::Client pushes and C reads the
 *    jobs with job_parse, and the bytes Ruby wrote equal the bytes C writes for the same job
 *    (times aside).
 *
 * The `peer` suite is the C side of tests/ruby/test_client_interop.rb: it runs only when
 * that script sets TIERONE_PEER_ACTION (and skips otherwise). */
#include "clock.h"
#include "job.h"
#include "json_edit.h"
#include "redis.h"
#include "sidekiq_client.h"

#include <criterion/criterion.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#define TEST_DB 15

/* ---- helpers ------------------------------------------------------------------------- */

/* TIERONE_TEST_REDIS_URL with database db (new string). */
static char *test_url(int db)
{
    const char *base = getenv("TIERONE_TEST_REDIS_URL");
    cr_assert(base && *base, "TIERONE_TEST_REDIS_URL is not set: run through scripts/test.sh "
                             "(bash scripts/test.sh --services-only -- ctest ...)");
    struct redis_url u;
    const char *why = NULL;
    cr_assert_eq(redis_url_parse(base, &u, &why), 0, "bad TIERONE_TEST_REDIS_URL: %s", why);
    char *url;
    if (u.password)
        cr_assert(asprintf(&url, "redis://%s:%s@%s:%d/%d", u.user ? u.user : "", u.password, u.host,
                           u.port, db) > 0);
    else
        cr_assert(asprintf(&url, "redis://%s:%d/%d", u.host, u.port, db) > 0);
    redis_url_free(&u);
    return url;
}

static redisReply *cmd(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    cr_assert_not_null(r, "redis: %s", c->errstr);
    return r;
}

static void cmd_ok(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    cr_assert_not_null(r, "redis: %s", c->errstr);
    cr_assert_neq(r->type, REDIS_REPLY_ERROR, "redis: %s", r->str);
    freeReplyObject(r);
}

/* A blocking connection to database db (-1: the one in the URL), flushed if flush. */
static redisContext *connect_db(int db, int flush)
{
    const char *base = getenv("TIERONE_TEST_REDIS_URL");
    cr_assert(base && *base, "TIERONE_TEST_REDIS_URL is not set: run through scripts/test.sh");
    struct redis_url u;
    const char *why = NULL;
    cr_assert_eq(redis_url_parse(base, &u, &why), 0, "bad TIERONE_TEST_REDIS_URL: %s", why);
    struct timeval tv = {5, 0};
    redisContext *c = redisConnectWithTimeout(u.host, u.port, tv);
    cr_assert(c && !c->err, "connect to %s: %s", base, c ? c->errstr : "?");
    if (u.password && u.user)
        cmd_ok(c, "AUTH %s %s", u.user, u.password);
    else if (u.password)
        cmd_ok(c, "AUTH %s", u.password);
    cmd_ok(c, "SELECT %d", db < 0 ? u.db : db);
    redis_url_free(&u);
    if (flush)
        cmd_ok(c, "FLUSHDB");
    return c;
}

/* A blocking connection to database TEST_DB, flushed. */
static redisContext *db_connect(void)
{
    return connect_db(TEST_DB, 1);
}

/* Elements of an array reply as strings, e.g. LRANGE. */
static size_t reply_strings(redisReply *r, const char ***out)
{
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
    *out = calloc(r->elements + 1, sizeof **out);
    for (size_t i = 0; i < r->elements; i++)
        (*out)[i] = r->element[i]->str;
    return r->elements;
}

/* What sidekiq_payload writes for spec with the given jid at now, as a string. */
static char *payload(const struct sidekiq_job_spec *spec, const struct sidekiq_opts *o, double now)
{
    size_t len;
    char err[160] = "";
    char *p = sidekiq_payload(spec, o, now, NULL, &len, err, sizeof err);
    cr_assert_not_null(p, "sidekiq_payload: %s", err);
    cr_assert_eq(strlen(p), len);
    return p;
}

/* The payload with created_at / enqueued_at (where present) replaced by 0. */
static char *without_times(const char *p)
{
    struct json_span sp;
    struct json_edit_field f[2];
    size_t n = 0, len;
    if (json_edit_find(p, strlen(p), "created_at", &sp, NULL, 0) == 1)
        f[n++] = (struct json_edit_field){"created_at", "0", 1};
    if (json_edit_find(p, strlen(p), "enqueued_at", &sp, NULL, 0) == 1)
        f[n++] = (struct json_edit_field){"enqueued_at", "0", 1};
    char *out = json_edit_set(p, strlen(p), f, n, &len, NULL, 0);
    cr_assert_not_null(out, "not a JSON object: %s", p);
    return out;
}

static int is_jid(const char *s)
{
    if (strlen(s) != SIDEKIQ_JID_LEN)
        return 0;
    for (const char *p = s; *p; p++) {
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return 0;
    }
    return 1;
}

static const char ruby_preamble[] =
    "require 'json'\n"
    "require 'logger'\n"
    "require 'sidekiq'\n"
    "require 'sidekiq/api'\n"
    "Sidekiq.logger.level = Logger::WARN\n"
    "Redis.silence_deprecations = true if Redis.respond_to?(:silence_deprecations=)\n"
    "Sidekiq.configure_client { |c| c.redis = { url: ENV.fetch('TIERONE_INTEROP_URL'), size: 1 } "
    "}\n";

/* Run a Ruby script (after the preamble) against database TEST_DB; returns its stdout,
 * parsed as JSON (the script prints one JSON document). */
static json_t *run_ruby(const char *script)
{
    char path[] = "/tmp/tierone-interop-XXXXXX.rb";
    int fd = mkstemps(path, 3);
    cr_assert_geq(fd, 0);
    FILE *f = fdopen(fd, "w");
    fputs(ruby_preamble, f);
    fputs(script, f);
    fclose(f);
    char *url = test_url(TEST_DB);
    setenv("TIERONE_INTEROP_URL", url, 1);
    free(url);
    char *command;
    cr_assert(asprintf(&command, "ruby %s", path) > 0);
    FILE *p = popen(command, "r");
    cr_assert_not_null(p);
    char *out = NULL;
    size_t cap = 0, len = 0;
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, p)) > 0) {
        out = realloc(out, cap = len + n + 1);
        memcpy(out + len, chunk, n);
        len += n;
        out[len] = '\0';
    }
    int status = pclose(p);
    unlink(path);
    free(command);
    cr_assert_eq(status, 0, "ruby failed (status %d), output: %s", status, out ? out : "");
    json_error_t jerr;
    json_t *doc = json_loadb(out, len, 0, &jerr);
    cr_assert_not_null(doc, "ruby printed no JSON (%s): %s", jerr.text, out ? out : "");
    free(out);
    (void)cap;
    return doc;
}

/* ---- payload bytes ------------------------------------------------------------------- */

Test(payload, ruby_key_order_and_values)
{
    struct sidekiq_job_spec s = {.klass = "Tierone::Retrieve",
                                 .queue = "ai",
                                 .args = "[1,\"x\",{\"k\":123456789012345678901234567890}]",
                                 .jid = "0123456789abcdef01234567"};
    char *p = payload(&s, NULL, 1712345678.5);
    cr_expect_str_eq(p,
                     "{\"retry\":true,\"queue\":\"ai\",\"class\":\"Tierone::Retrieve\",\"args\":[1,"
                     "\"x\",{\"k\":123456789012345678901234567890}],\"jid\":"
                     "\"0123456789abcdef01234567\",\"created_at\":1712345678.5,\"enqueued_at\":"
                     "1712345678.5}");
    free(p);
}

struct payload_case {
    const char *name;
    struct sidekiq_job_spec spec;
    enum job_ts_format fmt;
    const char *out;
};

#define JID "0123456789abcdef01234567"

static const struct payload_case payload_cases[] = {
    {"defaults",
     {.klass = "K", .jid = JID},
     JOB_TS_FLOAT_SECONDS,
     "{\"retry\":true,\"queue\":\"default\",\"class\":\"K\",\"args\":[],\"jid\":\"" JID
     "\",\"created_at\":1712345678.25,\"enqueued_at\":1712345678.25}"},
    {"retry false, millis",
     {.klass = "K", .retry = SIDEKIQ_RETRY_FALSE, .jid = JID},
     JOB_TS_INT_MILLIS,
     "{\"retry\":false,\"queue\":\"default\",\"class\":\"K\",\"args\":[],\"jid\":\"" JID
     "\",\"created_at\":1712345678250,\"enqueued_at\":1712345678250}"},
    {"retry 0",
     {.klass = "K", .retry = SIDEKIQ_RETRY_MAX, .retry_max = 0, .jid = JID},
     JOB_TS_FLOAT_SECONDS,
     "{\"retry\":0,\"queue\":\"default\",\"class\":\"K\",\"args\":[],\"jid\":\"" JID
     "\",\"created_at\":1712345678.25,\"enqueued_at\":1712345678.25}"},
    {"args verbatim, extra fields",
     {.klass = "K",
      .queue = "q\"x",
      .args = " [ 1.0, 1.5e3 ,\"\\u00e9\"] \n",
      .retry = SIDEKIQ_RETRY_MAX,
      .retry_max = 5,
      .extra = "{\"retry_queue\":\"low\", \"tags\" : [\"a\",\"b\"]}",
      .jid = JID},
     JOB_TS_FLOAT_SECONDS,
     "{\"retry\":5,\"queue\":\"q\\\"x\",\"class\":\"K\",\"args\":[ 1.0, 1.5e3 ,\"\\u00e9\"],"
     "\"retry_queue\":\"low\",\"tags\":[\"a\",\"b\"],\"jid\":\"" JID
     "\",\"created_at\":1712345678.25,\"enqueued_at\":1712345678.25}"},
    {"args length given",
     {.klass = "K", .args = "[7]garbage", .args_len = 3, .jid = JID},
     JOB_TS_FLOAT_SECONDS,
     "{\"retry\":true,\"queue\":\"default\",\"class\":\"K\",\"args\":[7],\"jid\":\"" JID
     "\",\"created_at\":1712345678.25,\"enqueued_at\":1712345678.25}"},
    {"scheduled: no enqueued_at, no at",
     {.klass = "K", .jid = JID, .at = 1712349999.5},
     JOB_TS_FLOAT_SECONDS,
     "{\"retry\":true,\"queue\":\"default\",\"class\":\"K\",\"args\":[],\"jid\":\"" JID
     "\",\"created_at\":1712345678.25}"},
};

Test(payload, fixtures)
{
    for (size_t i = 0; i < sizeof payload_cases / sizeof payload_cases[0]; i++) {
        const struct payload_case *c = &payload_cases[i];
        struct sidekiq_opts o = {c->fmt, NULL};
        char *p = payload(&c->spec, &o, 1712345678.25);
        cr_expect_str_eq(p, c->out, "%s", c->name);
        cr_expect_eq(json_edit_validate(p, strlen(p), NULL, 0), 0, "%s", c->name);
        free(p);
    }
}

struct bad_spec {
    struct sidekiq_job_spec spec;
    const char *err;
};

static const struct bad_spec bad_specs[] = {
    {{.klass = NULL}, "job has no class"},
    {{.klass = ""}, "job has no class"},
    {{.klass = "K", .queue = ""}, "job must include a valid queue name"},
    {{.klass = "K", .args = "{\"a\":1}"}, "args must be a JSON array"},
    {{.klass = "K", .args = "[1,"}, "args: invalid JSON at byte 3: unexpected end of input"},
    {{.klass = "K", .extra = "[1]"}, "extra fields: JSON value is an array, not an object"},
    {{.klass = "K", .extra = "{\"tags\":[],\"queue\":\"x\"}"},
     "extra fields may not set \"queue\""},
    {{.klass = "K", .extra = "{\"\\u0061t\":1}"}, "extra fields may not set \"at\""},
    {{.klass = "K", .jid = "0123456789abcdef012345678"}, "jid must have 1 to 24 characters"},
};

Test(payload, invalid_specs)
{
    for (size_t i = 0; i < sizeof bad_specs / sizeof bad_specs[0]; i++) {
        char err[160] = "";
        size_t len;
        cr_expect_null(sidekiq_payload(&bad_specs[i].spec, NULL, 1, NULL, &len, err, sizeof err));
        cr_expect_str_eq(err, bad_specs[i].err);
    }
}

Test(payload, jids)
{
    enum { N = 1000 };
    static char jids[N][SIDEKIQ_JID_SIZE];
    for (int i = 0; i < N; i++) {
        sidekiq_jid_new(jids[i]);
        cr_assert(is_jid(jids[i]), "%s", jids[i]);
        for (int k = 0; k < i; k++)
            cr_assert_str_neq(jids[i], jids[k]);
    }
}

/* jids come from a pool of random bytes: a forked child must not repeat its parent's. */
Test(payload, jids_differ_across_fork)
{
    char warm[SIDEKIQ_JID_SIZE], parent[SIDEKIQ_JID_SIZE], child[SIDEKIQ_JID_SIZE] = "";
    sidekiq_jid_new(warm); /* the pool is filled before the fork */
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        char jid[SIDEKIQ_JID_SIZE];
        sidekiq_jid_new(jid);
        _exit(write(fds[1], jid, SIDEKIQ_JID_SIZE) == SIDEKIQ_JID_SIZE ? 0 : 1);
    }
    sidekiq_jid_new(parent);
    cr_assert_eq(read(fds[0], child, SIDEKIQ_JID_SIZE), SIDEKIQ_JID_SIZE);
    int status = 0;
    waitpid(pid, &status, 0);
    close(fds[0]);
    close(fds[1]);
    cr_assert(is_jid(child), "%s", child);
    cr_assert_str_neq(parent, child, "parent and child drew the same jid");
}

/* ---- blocking client ------------------------------------------------------------------ */

Test(sync, push_now)
{
    redisContext *c = db_connect();
    struct sidekiq_job_spec s = {.klass = "Tierone::Noop", .queue = "ai", .args = "[1,\"x\"]"};
    char jid[SIDEKIQ_JID_SIZE], err[160] = "";
    double before = clock_wall_s();
    cr_assert_eq(sidekiq_push_sync(c, NULL, &s, jid, err, sizeof err), 0, "%s", err);
    double after = clock_wall_s();
    cr_expect(is_jid(jid));

    redisReply *r = cmd(c, "SMEMBERS queues");
    const char **v;
    cr_assert_eq(reply_strings(r, &v), 1);
    cr_expect_str_eq(v[0], "ai");
    free(v);
    freeReplyObject(r);

    r = cmd(c, "LRANGE queue:ai 0 -1");
    cr_assert_eq(reply_strings(r, &v), 1);
    struct job j;
    cr_assert_eq(job_parse(v[0], strlen(v[0]), &j, err, sizeof err), 0, "%s", err);
    cr_expect_str_eq(j.jid, jid);
    cr_expect_str_eq(j.klass, "Tierone::Noop");
    cr_expect_str_eq(j.queue, "ai");
    cr_expect(j.enqueued_at >= before - 0.001 && j.enqueued_at <= after + 0.001);
    cr_expect_eq(j.created_at, j.enqueued_at);
    /* byte-exact: the same spec with this jid and time */
    struct sidekiq_job_spec again = s;
    again.jid = jid;
    char *expect = payload(&again, NULL, j.created_at);
    cr_expect_str_eq(v[0], expect);
    free(expect);
    job_free(&j);
    free(v);
    freeReplyObject(r);
    redisFree(c);
}

Test(sync, push_bulk_one_lpush)
{
    redisContext *c = db_connect();
    struct sidekiq_job_spec s = {.klass = "K", .queue = "bulk", .jid = "ignored"};
    const char *args[] = {"[1]", "[2]", "[3]"};
    char jids[3][SIDEKIQ_JID_SIZE], err[160] = "";
    cmd_ok(c, "CONFIG RESETSTAT");
    cr_assert_eq(sidekiq_push_bulk_sync(c, NULL, &s, args, 3, jids, err, sizeof err), 0, "%s", err);
    /* one SADD and one LPUSH (INFO commandstats counts calls) */
    redisReply *info = cmd(c, "INFO commandstats");
    cr_expect(strstr(info->str, "cmdstat_lpush:calls=1,") != NULL, "%s", info->str);
    cr_expect(strstr(info->str, "cmdstat_sadd:calls=1,") != NULL, "%s", info->str);
    cr_expect(strstr(info->str, "cmdstat_multi") == NULL, "no MULTI");
    freeReplyObject(info);

    redisReply *r = cmd(c, "LRANGE queue:bulk 0 -1");
    const char **v;
    cr_assert_eq(reply_strings(r, &v), 3);
    double created = 0;
    for (int i = 0; i < 3; i++) {
        /* LPUSH a b c leaves c b a */
        struct job j;
        cr_assert_eq(job_parse(v[i], strlen(v[i]), &j, err, sizeof err), 0, "%s", err);
        cr_expect_str_eq(j.jid, jids[2 - i]);
        cr_expect_eq(json_integer_value(json_array_get(j.args, 0)), 3 - i);
        if (i == 0)
            created = j.created_at;
        cr_expect_eq(j.created_at, created, "one created_at for the batch");
        job_free(&j);
    }
    cr_expect_str_neq(jids[0], jids[1]);
    cr_expect_str_neq(jids[1], jids[2]);
    free(v);
    freeReplyObject(r);

    cr_expect_eq(sidekiq_push_bulk_sync(c, NULL, &s, args, 0, NULL, err, sizeof err), 0);
    const char *bad[] = {"[1]", "{}"};
    cr_expect_eq(sidekiq_push_bulk_sync(c, NULL, &s, bad, 2, NULL, err, sizeof err), -1);
    cr_expect_str_eq(err, "args must be a JSON array");
    r = cmd(c, "LLEN queue:bulk");
    cr_expect_eq(r->integer, 3, "nothing pushed from an invalid batch");
    freeReplyObject(r);
    redisFree(c);
}

Test(sync, push_at_schedule)
{
    redisContext *c = db_connect();
    struct sidekiq_job_spec s = {.klass = "K", .queue = "later", .args = "[\"a\"]"};
    char jid[SIDEKIQ_JID_SIZE], err[160] = "";
    cr_assert_eq(sidekiq_push_at_sync(c, NULL, &s, 1712349999.5, jid, err, sizeof err), 0, "%s",
                 err);
    redisReply *r = cmd(c, "EXISTS queues queue:later");
    cr_expect_eq(r->integer, 0, "a scheduled push touches neither queues nor the queue");
    freeReplyObject(r);
    r = cmd(c, "ZRANGE schedule 0 -1 WITHSCORES");
    const char **v;
    cr_assert_eq(reply_strings(r, &v), 2);
    cr_expect_str_eq(v[1], "1712349999.5");
    struct json_span sp;
    cr_expect_eq(json_edit_find(v[0], strlen(v[0]), "enqueued_at", &sp, NULL, 0), 0);
    cr_expect_eq(json_edit_find(v[0], strlen(v[0]), "at", &sp, NULL, 0), 0);
    struct job j;
    cr_assert_eq(job_parse(v[0], strlen(v[0]), &j, err, sizeof err), 0, "%s", err);
    cr_expect_str_eq(j.jid, jid);
    cr_expect_str_eq(j.queue, "later");
    job_free(&j);
    free(v);
    freeReplyObject(r);

    /* bulk scheduled: one ZADD with every member at the same score */
    const char *args[] = {"[1]", "[2]"};
    s.at = 1712349999.25;
    cr_assert_eq(sidekiq_push_bulk_sync(c, NULL, &s, args, 2, NULL, err, sizeof err), 0, "%s", err);
    r = cmd(c, "ZRANGEBYSCORE schedule 1712349999.25 1712349999.25");
    cr_expect_eq(r->elements, 2);
    freeReplyObject(r);
    redisFree(c);
}

Test(sync, key_prefix_and_millis)
{
    redisContext *c = db_connect();
    struct sidekiq_opts o = {JOB_TS_INT_MILLIS, "ns:"};
    struct sidekiq_job_spec s = {.klass = "K", .queue = "x"};
    char err[160] = "";
    cr_assert_eq(sidekiq_push_sync(c, &o, &s, NULL, err, sizeof err), 0, "%s", err);
    cr_assert_eq(sidekiq_push_at_sync(c, &o, &s, 1712349999.5, NULL, err, sizeof err), 0, "%s",
                 err);
    redisReply *r = cmd(c, "KEYS *");
    const char **v;
    size_t n = reply_strings(r, &v);
    cr_expect_eq(n, 3);
    int seen = 0;
    for (size_t i = 0; i < n; i++)
        seen |= (strcmp(v[i], "ns:queues") == 0) | (strcmp(v[i], "ns:queue:x") == 0) << 1 |
                (strcmp(v[i], "ns:schedule") == 0) << 2;
    cr_expect_eq(seen, 7);
    free(v);
    freeReplyObject(r);
    r = cmd(c, "LINDEX ns:queue:x 0");
    struct json_span sp;
    cr_assert_eq(json_edit_find(r->str, r->len, "enqueued_at", &sp, NULL, 0), 1);
    cr_expect_eq(sp.len, 13, "integer milliseconds: %s", r->str);
    cr_expect_null(memchr(r->str + sp.off, '.', sp.len));
    freeReplyObject(r);
    redisFree(c);
}

Test(sync, error_reply)
{
    redisContext *c = db_connect();
    cmd_ok(c, "SET queue:bad x");
    struct sidekiq_job_spec s = {.klass = "K", .queue = "bad"};
    char err[160] = "";
    cr_expect_eq(sidekiq_push_sync(c, NULL, &s, NULL, err, sizeof err), -1);
    cr_expect(strncmp(err, "Redis: WRONGTYPE", 16) == 0, "%s", err);
    /* the connection is still in step: the next push works */
    s.queue = "good";
    cr_expect_eq(sidekiq_push_sync(c, NULL, &s, NULL, err, sizeof err), 0, "%s", err);
    redisFree(c);
}

/* ---- asynchronous client ------------------------------------------------------------- */

struct async_env {
    uv_loop_t loop;
    uv_timer_t tick; /* keeps UV_RUN_ONCE from blocking while we poll */
    struct redis *redis;
    int closed;
};

struct push_result {
    int calls;
    char error[160];
};

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

static void on_push(const char *error, void *data)
{
    struct push_result *res = data;
    res->calls++;
    snprintf(res->error, sizeof res->error, "%s", error ? error : "");
}

static void run_until(struct async_env *e, const int *flag, const char *what)
{
    uint64_t deadline = clock_mono_ms() + 10000;
    while (!*flag) {
        cr_assert_lt(clock_mono_ms(), deadline, "timed out waiting for %s", what);
        uv_run(&e->loop, UV_RUN_ONCE);
    }
}

static void async_start(struct async_env *e)
{
    memset(e, 0, sizeof *e);
    cr_assert_eq(uv_loop_init(&e->loop), 0);
    uv_timer_init(&e->loop, &e->tick);
    uv_timer_start(&e->tick, on_tick, 5, 5);
    char *url = test_url(TEST_DB);
    struct redis_opts o = {.url = url, .name = "test-sidekiq-client"};
    const char *why = NULL;
    e->redis = redis_new(&e->loop, &o, &why);
    free(url);
    cr_assert_not_null(e->redis, "redis_new: %s", why);
    uint64_t deadline = clock_mono_ms() + 10000;
    while (!redis_is_up(e->redis)) {
        cr_assert_lt(clock_mono_ms(), deadline, "Redis did not come up");
        uv_run(&e->loop, UV_RUN_ONCE);
    }
}

static void on_redis_closed(void *data)
{
    *(int *)data = 1;
}

static void async_stop(struct async_env *e)
{
    redis_close(e->redis, on_redis_closed, &e->closed);
    run_until(e, &e->closed, "redis_close");
    uv_close((uv_handle_t *)&e->tick, NULL);
    uv_run(&e->loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&e->loop), 0);
}

Test(async, push_bulk_and_at)
{
    redisContext *c = db_connect();
    struct async_env e;
    async_start(&e);
    char err[160] = "", jid[SIDEKIQ_JID_SIZE], jids[2][SIDEKIQ_JID_SIZE], at_jid[SIDEKIQ_JID_SIZE];
    struct push_result one = {0}, bulk = {0}, at = {0};
    struct sidekiq_job_spec s = {.klass = "K", .queue = "events", .args = "[\"e1\"]"};
    cr_assert_eq(sidekiq_push(e.redis, NULL, &s, jid, on_push, &one, err, sizeof err), 0, "%s",
                 err);
    const char *args[] = {"[\"e2\"]", "[\"e3\"]"};
    cr_assert_eq(
        sidekiq_push_bulk(e.redis, NULL, &s, args, 2, jids, on_push, &bulk, err, sizeof err), 0,
        "%s", err);
    struct sidekiq_job_spec later = s;
    later.at = 1712349999.5;
    cr_assert_eq(sidekiq_push(e.redis, NULL, &later, at_jid, on_push, &at, err, sizeof err), 0,
                 "%s", err);
    cr_expect_eq(one.calls + bulk.calls + at.calls, 0, "callbacks run later, from the loop");
    run_until(&e, &one.calls, "push");
    run_until(&e, &bulk.calls, "bulk push");
    run_until(&e, &at.calls, "push at");
    cr_expect_str_eq(one.error, "");
    cr_expect_str_eq(bulk.error, "");
    cr_expect_str_eq(at.error, "");

    redisReply *r = cmd(c, "LRANGE queue:events 0 -1");
    const char **v;
    cr_assert_eq(reply_strings(r, &v), 3);
    const char *expect_jid[] = {jids[1], jids[0], jid};
    for (int i = 0; i < 3; i++) {
        struct job j;
        cr_assert_eq(job_parse(v[i], strlen(v[i]), &j, err, sizeof err), 0, "%s", err);
        cr_expect_str_eq(j.jid, expect_jid[i]);
        job_free(&j);
    }
    free(v);
    freeReplyObject(r);
    r = cmd(c, "SMEMBERS queues");
    cr_expect_eq(r->elements, 1);
    freeReplyObject(r);
    r = cmd(c, "ZRANGE schedule 0 -1 WITHSCORES");
    cr_assert_eq(r->elements, 2);
    cr_expect(strstr(r->element[0]->str, at_jid) != NULL);
    cr_expect_str_eq(r->element[1]->str, "1712349999.5");
    freeReplyObject(r);

    cr_expect_eq(one.calls, 1);
    cr_expect_eq(bulk.calls, 1);
    cr_expect_eq(at.calls, 1);
    async_stop(&e);
    redisFree(c);
}

Test(async, error_reply_and_not_connected)
{
    redisContext *c = db_connect();
    cmd_ok(c, "SET queue:bad x");
    struct async_env e;
    async_start(&e);
    char err[160] = "";
    struct push_result res = {0};
    struct sidekiq_job_spec s = {.klass = "K", .queue = "bad"};
    cr_assert_eq(sidekiq_push(e.redis, NULL, &s, NULL, on_push, &res, err, sizeof err), 0);
    run_until(&e, &res.calls, "push");
    cr_expect(strncmp(res.error, "WRONGTYPE", 9) == 0, "%s", res.error);

    /* invalid spec: -1 at once, no callback */
    struct push_result none = {0};
    struct sidekiq_job_spec bad = {.klass = "K", .args = "nope"};
    cr_expect_eq(sidekiq_push(e.redis, NULL, &bad, NULL, on_push, &none, err, sizeof err), -1);
    cr_expect_eq(
        sidekiq_push_bulk(e.redis, NULL, &s, NULL, 0, NULL, on_push, &none, err, sizeof err), -1);
    cr_expect_str_eq(err, "no jobs to push");

    /* closed connection: -1, no callback */
    redis_close(e.redis, on_redis_closed, &e.closed);
    s.queue = "good";
    cr_expect_eq(sidekiq_push(e.redis, NULL, &s, NULL, on_push, &none, err, sizeof err), -1);
    cr_expect_str_eq(err, "Redis is not connected");
    run_until(&e, &e.closed, "redis_close");
    uv_close((uv_handle_t *)&e.tick, NULL);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    cr_expect_eq(none.calls, 0);
    cr_expect_eq(res.calls, 1);
    cr_assert_eq(uv_loop_close(&e.loop), 0);
    redisFree(c);
}

/* ---- the connection's deferred writes (lib/redis.c's event adapter) ------------------- */

struct reply_log {
    int calls;
    long long integer;
    size_t len;
    char error[160];
};

static void on_reply(struct redis *r, redisReply *reply, void *data)
{
    (void)r;
    struct reply_log *l = data;
    l->calls++;
    if (!reply)
        snprintf(l->error, sizeof l->error, "no reply");
    else if (reply->type == REDIS_REPLY_ERROR)
        snprintf(l->error, sizeof l->error, "%s", reply->str);
    else if (reply->type == REDIS_REPLY_INTEGER)
        l->integer = reply->integer;
    else if (reply->type == REDIS_REPLY_STRING)
        l->len = reply->len;
}

struct timer_push {
    struct redis *redis;
    struct reply_log log;
    int watchdog_fired;
};

static void on_submit_timer(uv_timer_t *t)
{
    struct timer_push *tp = t->data;
    cr_assert_eq(redis_command(tp->redis, on_reply, &tp->log, "INCR tierone:test:deferred"), 0);
}

static void on_watchdog(uv_timer_t *t)
{
    ((struct timer_push *)t->data)->watchdog_fired = 1;
}

/* Commands are written by a deferred flush, not when the socket polls writable. One
 * submitted from a timer, on a loop with nothing else to do, is still sent and answered.
 * (That it goes out before the loop blocks, rather than at the connection's next 100 ms
 * watchdog tick, is latency: bench/pipeline.sh's paced run measures it.) */
Test(async, a_command_from_a_timer_is_sent)
{
    redisContext *c = db_connect();
    cmd_ok(c, "SET tierone:test:deferred 41");
    struct async_env e;
    async_start(&e);
    uv_timer_stop(&e.tick); /* nothing but Redis and the two timers below */
    struct timer_push tp = {.redis = e.redis};
    uv_timer_t submit, watchdog;
    uv_timer_init(&e.loop, &submit);
    uv_timer_init(&e.loop, &watchdog);
    submit.data = watchdog.data = &tp;
    uv_timer_start(&submit, on_submit_timer, 1, 0);
    uv_timer_start(&watchdog, on_watchdog, 3000, 0);
    while (!tp.log.calls && !tp.watchdog_fired)
        uv_run(&e.loop, UV_RUN_ONCE);
    cr_expect_eq(tp.log.calls, 1, "the INCR was not answered within 3 s");
    cr_expect_str_eq(tp.log.error, "");
    cr_expect_eq(tp.log.integer, 42);
    uv_close((uv_handle_t *)&submit, NULL);
    uv_close((uv_handle_t *)&watchdog, NULL);
    uv_timer_start(&e.tick, on_tick, 5, 5);
    async_stop(&e);
    redisFree(c);
}

/* A write larger than the socket takes at once finishes through POLLOUT, and commands
 * submitted while it is in progress follow it in order. */
Test(async, a_write_the_socket_cannot_take_whole_completes_in_order)
{
    redisContext *c = db_connect();
    cmd_ok(c, "DEL tierone:test:big tierone:test:after");
    struct async_env e;
    async_start(&e);
    size_t big = 24u << 20;
    char *value = malloc(big);
    cr_assert_not_null(value);
    memset(value, 'x', big);
    struct reply_log set = {0}, append = {0}, len = {0};
    const char *argv[] = {"SET", "tierone:test:big", value};
    const size_t lens[] = {3, 16, big};
    cr_assert_eq(redis_command_argv(e.redis, on_reply, &set, 3, argv, lens), 0);
    free(value); /* hiredis copied it into its output buffer */
    /* let part of it go out, then queue more behind it */
    for (int i = 0; i < 3 && !set.calls; i++)
        uv_run(&e.loop, UV_RUN_ONCE);
    cr_assert_eq(redis_command(e.redis, on_reply, &append, "APPEND tierone:test:big y"), 0);
    cr_assert_eq(redis_command(e.redis, on_reply, &len, "STRLEN tierone:test:big"), 0);
    run_until(&e, &len.calls, "STRLEN");
    cr_expect_eq(set.calls, 1);
    cr_expect_str_eq(set.error, "");
    cr_expect_eq(append.calls, 1);
    cr_expect_eq(append.integer, (long long)big + 1, "APPEND ran after the whole SET");
    cr_expect_eq(len.integer, (long long)big + 1);
    async_stop(&e);
    cmd_ok(c, "DEL tierone:test:big");
    redisFree(c);
}

/* ---- interop with Ruby Sidekiq -------------------------------------------------------- */

Test(interop, c_pushes_ruby_reads)
{
    redisContext *c = db_connect();
    char err[160] = "", jid1[SIDEKIQ_JID_SIZE], jid2[SIDEKIQ_JID_SIZE], jid3[SIDEKIQ_JID_SIZE];
    struct sidekiq_job_spec s = {.klass = "Tierone::ChatwootEvent",
                                 .queue = "interop",
                                 .args = "[1,\"two\",{\"three\":3},null,true,1.5]",
                                 .extra = "{\"tags\":[\"c\"],\"retry_queue\":\"low\"}"};
    cr_assert_eq(sidekiq_push_sync(c, NULL, &s, jid1, err, sizeof err), 0, "%s", err);
    struct sidekiq_job_spec s2 = {.klass = "K2",
                                  .queue = "interop",
                                  .args = "[\"caf\\u00e9\"]",
                                  .retry = SIDEKIQ_RETRY_MAX,
                                  .retry_max = 0};
    cr_assert_eq(sidekiq_push_sync(c, NULL, &s2, jid2, err, sizeof err), 0, "%s", err);
    struct sidekiq_job_spec s3 = {.klass = "Later", .queue = "interop", .args = "[3]"};
    double at = clock_wall_s() + 3600.5;
    cr_assert_eq(sidekiq_push_at_sync(c, NULL, &s3, at, jid3, err, sizeof err), 0, "%s", err);

    json_t *doc = run_ruby(
        "q = Sidekiq::Queue.new('interop')\n"
        "out = { 'queues' => Sidekiq::Queue.all.map(&:name), 'size' => q.size,\n"
        "  'latency' => q.latency,\n"
        "  'jobs' => q.map { |j| { 'jid' => j.jid, 'klass' => j.klass, 'args' => j.args,\n"
        "    'queue' => j.item['queue'], 'retry' => j.item['retry'], 'tags' => j.tags,\n"
        "    'display_class' => j.display_class, 'enqueued_at' => j.enqueued_at.to_f,\n"
        "    'created_at' => j.created_at.to_f, 'latency' => j.latency } },\n"
        "  'scheduled' => Sidekiq::ScheduledSet.new.map { |e| { 'jid' => e.jid,\n"
        "    'at' => e.at.to_f, 'klass' => e.klass, 'args' => e.args,\n"
        "    'enqueued_at' => e.item.key?('enqueued_at'), 'at_key' => e.item.key?('at') } },\n"
        "  'stats_enqueued' => Sidekiq::Stats.new.enqueued }\n"
        "puts JSON.generate(out)\n");
    char *dump = json_dumps(doc, JSON_COMPACT);
    cr_log_info("ruby sees: %s", dump);
    free(dump);
    cr_expect_eq(json_integer_value(json_object_get(doc, "size")), 2);
    cr_expect_eq(json_integer_value(json_object_get(doc, "stats_enqueued")), 2);
    json_t *queues = json_object_get(doc, "queues");
    cr_assert_eq(json_array_size(queues), 1);
    cr_expect_str_eq(json_string_value(json_array_get(queues, 0)), "interop");
    double latency = json_number_value(json_object_get(doc, "latency"));
    cr_expect(latency >= 0 && latency < 600, "latency %f", latency);

    json_t *jobs = json_object_get(doc, "jobs");
    cr_assert_eq(json_array_size(jobs), 2);
    json_t *j2 = json_array_get(jobs, 0), *j1 = json_array_get(jobs, 1); /* newest first */
    cr_expect_str_eq(json_string_value(json_object_get(j1, "jid")), jid1);
    cr_expect_str_eq(json_string_value(json_object_get(j1, "klass")), "Tierone::ChatwootEvent");
    cr_expect_str_eq(json_string_value(json_object_get(j1, "queue")), "interop");
    cr_expect(json_is_true(json_object_get(j1, "retry")));
    json_t *expect_args = json_loads("[1,\"two\",{\"three\":3},null,true,1.5]", 0, NULL);
    cr_expect(json_equal(json_object_get(j1, "args"), expect_args), "args as Ruby reads them");
    json_decref(expect_args);
    cr_expect_str_eq(json_string_value(json_array_get(json_object_get(j1, "tags"), 0)), "c");
    double enq = json_number_value(json_object_get(j1, "enqueued_at"));
    double now = clock_wall_s();
    cr_expect(enq > now - 600 && enq <= now, "Ruby reads enqueued_at as a time: %f", enq);
    cr_expect_float_eq(json_number_value(json_object_get(j1, "created_at")), enq, 1e-6);

    cr_expect_str_eq(json_string_value(json_object_get(j2, "jid")), jid2);
    cr_expect_eq(json_integer_value(json_object_get(j2, "retry")), 0);
    cr_expect(json_is_integer(json_object_get(j2, "retry")), "retry 0 stays an Integer");
    cr_expect_str_eq(json_string_value(json_array_get(json_object_get(j2, "args"), 0)),
                     "caf\xc3\xa9");

    json_t *sched = json_object_get(doc, "scheduled");
    cr_assert_eq(json_array_size(sched), 1);
    json_t *e3 = json_array_get(sched, 0);
    cr_expect_str_eq(json_string_value(json_object_get(e3, "jid")), jid3);
    cr_expect_float_eq(json_number_value(json_object_get(e3, "at")), at, 1e-3);
    cr_expect(json_is_false(json_object_get(e3, "enqueued_at")));
    cr_expect(json_is_false(json_object_get(e3, "at_key")));
    json_decref(doc);
    redisFree(c);
}

Test(interop, ruby_pushes_c_reads)
{
    redisContext *c = db_connect();
    json_t *doc = run_ruby(
        "big = 123456789012345678901234567890\n"
        "out = {}\n"
        "out['push'] = Sidekiq::Client.push('class' => 'Tierone::Echo', 'queue' => 'interop',\n"
        "  'args' => [1, 'two', { 'three' => 3 }, big, 1.5])\n"
        "out['noretry'] = Sidekiq::Client.push('class' => 'Tierone::Echo', 'queue' => 'interop',\n"
        "  'args' => ['x'], 'retry' => false, 'tags' => ['a'])\n"
        "out['bulk'] = Sidekiq::Client.push_bulk('class' => 'Tierone::Bulk', 'queue' => 'bulk',\n"
        "  'args' => [[1], [2], [3]])\n"
        "out['at'] = Sidekiq::Client.push('class' => 'Tierone::Later', 'queue' => 'interop',\n"
        "  'args' => [], 'at' => 1712349999.5, 'retry' => 3)\n"
        "puts JSON.generate(out)\n");
    const char *jid_push = json_string_value(json_object_get(doc, "push"));
    const char *jid_noretry = json_string_value(json_object_get(doc, "noretry"));
    const char *jid_at = json_string_value(json_object_get(doc, "at"));
    json_t *bulk = json_object_get(doc, "bulk");
    cr_assert(jid_push && jid_noretry && jid_at && json_array_size(bulk) == 3);
    char err[160] = "";

    redisReply *r = cmd(c, "LRANGE queue:interop 0 -1");
    const char **v;
    cr_assert_eq(reply_strings(r, &v), 2);
    struct job j;
    cr_assert_eq(job_parse(v[1], strlen(v[1]), &j, err, sizeof err), 0, "%s", err);
    cr_expect_str_eq(j.jid, jid_push);
    cr_expect_str_eq(j.klass, "Tierone::Echo");
    cr_expect_str_eq(j.queue, "interop");
    cr_expect_eq(j.retry_mode, JOB_RETRY_DEFAULT);
    cr_assert_eq(json_array_size(j.args), 5);
    cr_expect_str_eq(json_string_value(json_array_get(j.args, 1)), "two");
    cr_expect_float_eq(json_number_value(json_array_get(j.args, 3)), 1.2345678901234568e29, 1e15);
    cr_expect(strstr(v[1], "123456789012345678901234567890") != NULL);
    double now = clock_wall_s();
    cr_expect(j.enqueued_at > now - 600 && j.enqueued_at <= now, "%f", j.enqueued_at);
    cr_expect(j.created_at > now - 600 && j.created_at <= j.enqueued_at);
    job_free(&j);

    /* Byte compatibility: C writes what Ruby wrote for the same job (times aside). */
    cr_assert_eq(job_parse(v[0], strlen(v[0]), &j, err, sizeof err), 0, "%s", err);
    cr_expect_str_eq(j.jid, jid_noretry);
    cr_expect_eq(j.retry_mode, JOB_RETRY_DISCARD);
    struct sidekiq_job_spec s = {.klass = "Tierone::Echo",
                                 .queue = "interop",
                                 .args = "[\"x\"]",
                                 .retry = SIDEKIQ_RETRY_FALSE,
                                 .extra = "{\"tags\":[\"a\"]}",
                                 .jid = jid_noretry};
    char *mine = payload(&s, NULL, j.created_at);
    char *a = without_times(v[0]), *b = without_times(mine);
    cr_expect_str_eq(a, b, "Ruby wrote %s", v[0]);
    free(a);
    free(b);
    free(mine);
    job_free(&j);
    free(v);
    freeReplyObject(r);

    r = cmd(c, "LRANGE queue:bulk 0 -1");
    cr_assert_eq(reply_strings(r, &v), 3);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(job_parse(v[i], strlen(v[i]), &j, err, sizeof err), 0, "%s", err);
        cr_expect_str_eq(j.jid, json_string_value(json_array_get(bulk, 2 - (size_t)i)));
        cr_expect_eq(json_integer_value(json_array_get(j.args, 0)), 3 - i);
        job_free(&j);
    }
    free(v);
    freeReplyObject(r);

    r = cmd(c, "ZRANGE schedule 0 -1 WITHSCORES");
    cr_assert_eq(reply_strings(r, &v), 2);
    cr_expect_str_eq(v[1], "1712349999.5", "Ruby's score format matches ours");
    cr_assert_eq(job_parse(v[0], strlen(v[0]), &j, err, sizeof err), 0, "%s", err);
    cr_expect_str_eq(j.jid, jid_at);
    cr_expect_eq(j.retry_mode, JOB_RETRY_MAX);
    cr_expect_eq(j.retry_max, 3);
    cr_expect_eq(j.enqueued_at, 0);
    struct sidekiq_job_spec s2 = {.klass = "Tierone::Later",
                                  .queue = "interop",
                                  .retry = SIDEKIQ_RETRY_MAX,
                                  .retry_max = 3,
                                  .jid = jid_at,
                                  .at = 1712349999.5};
    mine = payload(&s2, NULL, j.created_at);
    a = without_times(v[0]);
    b = without_times(mine);
    cr_expect_str_eq(a, b, "Ruby wrote %s", v[0]);
    free(a);
    free(b);
    free(mine);
    job_free(&j);
    free(v);
    freeReplyObject(r);

    r = cmd(c, "SMEMBERS queues");
    cr_expect_eq(r->elements, 2);
    freeReplyObject(r);
    json_decref(doc);
    redisFree(c);
}

/* ---- peer: the C side of tests/ruby/test_client_interop.rb ------------------------------
 *
 * TIERONE_PEER_ACTION=push: push a fixed set of jobs into the database of
 * TIERONE_TEST_REDIS_URL and write their jids as JSON to TIERONE_PEER_OUT.
 * TIERONE_PEER_ACTION=parse: read every element of queue:peer (LRANGE order) with job_parse
 * and write, per job, what C makes of it (fields, job_failed_payload with RuntimeError /
 * TIERONE_PEER_MESSAGE / fetched queue "peer" at TIERONE_PEER_NOW, job_enqueue_payload) as
 * JSON to TIERONE_PEER_OUT. */

static const char *peer_action(const char *want)
{
    const char *a = getenv("TIERONE_PEER_ACTION");
    if (!a || strcmp(a, want) != 0)
        cr_skip_test("run by tests/ruby/test_client_interop.rb only");
    const char *out = getenv("TIERONE_PEER_OUT");
    cr_assert(out && *out, "TIERONE_PEER_OUT is not set");
    return out;
}

static void peer_write(json_t *doc, const char *path)
{
    cr_assert_eq(json_dump_file(doc, path, JSON_COMPACT), 0, "cannot write %s", path);
    json_decref(doc);
}

Test(peer, push)
{
    const char *out = peer_action("push");
    redisContext *c = connect_db(-1, 0);
    char err[160] = "", one[SIDEKIQ_JID_SIZE], two[SIDEKIQ_JID_SIZE], at[SIDEKIQ_JID_SIZE];
    char bulk[3][SIDEKIQ_JID_SIZE];
    struct sidekiq_job_spec s = {.klass = "Tierone::ChatwootEvent",
                                 .queue = "events",
                                 .args =
                                     "[{\"event\":\"message_created\",\"id\":42},\"caf\\u00e9\","
                                     "123456789012345678901234567890,1.5e3]",
                                 .extra = "{\"tags\":[\"chatwoot\"],\"retry_queue\":\"low\"}"};
    cr_assert_eq(sidekiq_push_sync(c, NULL, &s, one, err, sizeof err), 0, "%s", err);
    struct sidekiq_job_spec s2 = {.klass = "Tierone::Reply",
                                  .queue = "actions",
                                  .args = "[7]",
                                  .retry = SIDEKIQ_RETRY_MAX,
                                  .retry_max = 0};
    cr_assert_eq(sidekiq_push_sync(c, NULL, &s2, two, err, sizeof err), 0, "%s", err);
    struct sidekiq_job_spec s3 = {.klass = "Tierone::Bulk", .queue = "bulk"};
    const char *args[] = {"[1]", "[2]", "[3]"};
    cr_assert_eq(sidekiq_push_bulk_sync(c, NULL, &s3, args, 3, bulk, err, sizeof err), 0, "%s",
                 err);
    struct sidekiq_job_spec s4 = {.klass = "Tierone::Retrieve",
                                  .queue = "ai",
                                  .args = "[\"later\"]",
                                  .retry = SIDEKIQ_RETRY_FALSE};
    cr_assert_eq(sidekiq_push_at_sync(c, NULL, &s4, 1712349999.5, at, err, sizeof err), 0, "%s",
                 err);
    json_t *doc = json_pack("{s:s, s:s, s:[s,s,s], s:s, s:f}", "one", one, "two", two, "bulk",
                            bulk[0], bulk[1], bulk[2], "at", at, "at_time", 1712349999.5);
    peer_write(doc, out);
    redisFree(c);
}

static const char *peer_retry_mode(enum job_retry_mode m)
{
    return m == JOB_RETRY_MAX ? "max" : m == JOB_RETRY_DISCARD ? "discard" : "default";
}

static json_t *peer_str(const char *s)
{
    return s ? json_string(s) : json_null();
}

static json_t *peer_job(const char *raw, size_t len, double now, const char *message)
{
    struct job j;
    char err[160] = "";
    json_t *o = json_object();
    json_object_set_new(o, "raw", json_stringn(raw, len));
    if (job_parse(raw, len, &j, err, sizeof err)) {
        json_object_set_new(o, "ok", json_false());
        json_object_set_new(o, "error", json_string(err));
        return o;
    }
    json_object_set_new(o, "ok", json_true());
    json_object_set_new(o, "jid", peer_str(j.jid));
    json_object_set_new(o, "class", peer_str(j.klass));
    json_object_set_new(o, "queue", peer_str(j.queue));
    json_object_set_new(o, "retry_queue", peer_str(j.retry_queue));
    json_object_set_new(o, "retry_mode", json_string(peer_retry_mode(j.retry_mode)));
    json_object_set_new(o, "retry_max", json_integer(j.retry_max));
    json_object_set_new(o, "has_retry_count", json_boolean(j.has_retry_count));
    json_object_set_new(o, "retry_count", json_integer(j.retry_count));
    json_object_set_new(o, "dead", json_boolean(j.dead));
    json_object_set_new(o, "created_at", json_real(j.created_at));
    json_object_set_new(o, "enqueued_at", json_real(j.enqueued_at));
    json_object_set_new(o, "args", j.args ? json_incref(j.args) : json_null());
    struct job_failure f = {"RuntimeError", message, "peer"};
    size_t n;
    long long count = -1;
    char *failed = job_failed_payload(&j, &f, JOB_TS_FLOAT_SECONDS, now, &n, &count);
    cr_assert_not_null(failed);
    json_object_set_new(o, "failed", json_stringn(failed, n));
    json_object_set_new(o, "new_count", json_integer(count));
    json_object_set_new(o, "may_retry", json_boolean(job_may_retry(&j, count, 25)));
    free(failed);
    char *queue = NULL;
    char *enq =
        job_enqueue_payload(raw, len, JOB_TS_FLOAT_SECONDS, now, &n, &queue, err, sizeof err);
    cr_assert_not_null(enq, "%s", err);
    json_object_set_new(o, "enqueue", json_stringn(enq, n));
    json_object_set_new(o, "enqueue_queue", json_string(queue));
    free(enq);
    free(queue);
    job_free(&j);
    return o;
}

Test(peer, parse)
{
    const char *out = peer_action("parse");
    const char *now_s = getenv("TIERONE_PEER_NOW");
    const char *message = getenv("TIERONE_PEER_MESSAGE");
    double now = now_s ? strtod(now_s, NULL) : clock_wall_s();
    redisContext *c = connect_db(-1, 0);
    redisReply *r = cmd(c, "LRANGE queue:peer 0 -1");
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
    json_t *doc = json_array();
    for (size_t i = 0; i < r->elements; i++)
        json_array_append_new(
            doc, peer_job(r->element[i]->str, r->element[i]->len, now, message ? message : "boom"));
    freeReplyObject(r);
    peer_write(doc, out);
    redisFree(c);
}
