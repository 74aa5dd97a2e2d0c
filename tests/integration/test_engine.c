/* Engine tests: a real worker on a loop in this process, against the real redis-server
 * (database 2). Each test pushes jobs with the sync client, runs the loop until a condition
 * holds in Redis (polled, with a deadline), then stops the worker and checks that the loop
 * closes cleanly. */
#include "diagnostic.h"
#include "engine.h"
#include "clock.h"
#include "log.h"
#include "test_redis.h"
#include "xalloc.h"

#include <criterion/criterion.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define DB 2

struct harness {
    uv_loop_t loop;
    struct worker w;
    struct worker_settings cfg;
    redisContext *rc;
    int started;
};

/* ---- job types used by the tests ----------------------------------------------------- */

static char order_seen[64][16];
static int order_count;

static void order_perform(struct job_ctx *ctx)
{
    json_t *id = json_array_get(job_ctx_job(ctx)->args, 0);
    if (order_count < 64)
        snprintf(order_seen[order_count++], 16, "%s", json_string_value(id));
    job_done(ctx, NULL);
}

static void permanent_perform(struct job_ctx *ctx)
{
    job_done(ctx, job_error_new(JOB_ERR_PERMANENT, "Tierone::Unauthorized", "401 from upstream"));
}

static double retry_at_value;
static void retry_at_perform(struct job_ctx *ctx)
{
    job_done(ctx, job_error_retry_at(retry_at_value, "Tierone::RateLimited", "429"));
}

static void reschedule_perform(struct job_ctx *ctx)
{
    job_done(ctx, job_error_reschedule(retry_at_value, "Tierone::RateLimit", "no token"));
}

struct hang {
    uv_timer_t t;
    struct job_ctx *ctx;
};
static void hang_closed(uv_handle_t *h)
{
    struct hang *s = h->data;
    job_done(s->ctx, NULL);
    free(s);
}
static void hang_fire(uv_timer_t *t)
{
    uv_close((uv_handle_t *)t, hang_closed);
}
static void hang_perform(struct job_ctx *ctx)
{
    struct hang *s = xcalloc(1, sizeof *s);
    s->ctx = ctx;
    uv_timer_init(job_ctx_loop(ctx), &s->t);
    s->t.data = s;
    job_ctx_set_state(ctx, s);
    uv_timer_start(&s->t, hang_fire, 3600 * 1000, 0);
}
static void hang_cancel(struct job_ctx *ctx)
{
    struct hang *s = job_ctx_get_state(ctx);
    uv_close((uv_handle_t *)&s->t, hang_closed);
}

static const struct job_type order_type = {"Test::Order", order_perform, NULL};
static const struct job_type permanent_type = {"Test::Permanent", permanent_perform, NULL};
static const struct job_type retry_at_type = {"Test::RetryAt", retry_at_perform, NULL};
static const struct job_type hang_type = {"Test::Hang", hang_perform, hang_cancel};
static const struct job_type reschedule_type = {"Test::Reschedule", reschedule_perform, NULL};

/* ---- harness ------------------------------------------------------------------------- */

static void h_init(struct harness *h, const char *queues, long long concurrency)
{
    memset(h, 0, sizeof *h);
    log_init("test", LOG_WARN);
    h->rc = test_redis_connect(DB);
    h->cfg.redis_url = xstrdup(test_redis_url(DB));
    h->cfg.queues = xstrdup(queues);
    h->cfg.concurrency = concurrency;
    h->cfg.shutdown_timeout_ms = 500;
    h->cfg.timestamp_format = JOB_TS_FLOAT_SECONDS;
    h->cfg.max_retries = 25;
    h->cfg.dead_max_jobs = 10000;
    h->cfg.dead_timeout_s = 180 * 24 * 3600;
    h->cfg.poll_interval_ms = 100;
    h->cfg.beat_interval_ms = 100;
    h->cfg.lease_ttl_s = 1;
    h->cfg.recovery_interval_ms = 200;
    h->cfg.max_recoveries = 3;
    h->cfg.fetch_idle_max_ms = 10;
    h->cfg.tag = xstrdup("test");
    order_count = 0;
}

static void h_start(struct harness *h)
{
    uv_loop_init(&h->loop);
    char err[256];
    cr_assert_eq(worker_init(&h->w, &h->loop, &h->cfg, err, sizeof err), 0, "%s", err);
    diagnostic_register(&h->w);
    worker_register(&h->w, &order_type);
    worker_register(&h->w, &permanent_type);
    worker_register(&h->w, &retry_at_type);
    worker_register(&h->w, &hang_type);
    worker_register(&h->w, &reschedule_type);
    worker_start(&h->w);
    h->started = 1;
}

/* Run the loop until cond(h) is true or timeout_ms passes; returns cond's last value. */
static int h_run_until(struct harness *h, int (*cond)(struct harness *), int timeout_ms)
{
    uint64_t end = clock_mono_ms() + (uint64_t)timeout_ms;
    while (clock_mono_ms() < end) {
        uv_run(&h->loop, UV_RUN_ONCE);
        if (cond(h))
            return 1;
    }
    return cond(h);
}

/* Stop gracefully and check that every handle closes. */
static void h_stop(struct harness *h)
{
    worker_stop(&h->w);
    uv_run(&h->loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&h->loop), 0, "handles left open after the worker stopped");
    worker_free(&h->w);
    h->started = 0;
}

static void h_free(struct harness *h)
{
    free(h->cfg.redis_url);
    free(h->cfg.queues);
    free(h->cfg.tag);
    redisFree(h->rc);
}

static void push_raw(struct harness *h, const char *queue, const char *json)
{
    freeReplyObject(test_redis_cmd(h->rc, "SADD queues %s", queue));
    freeReplyObject(test_redis_cmd(h->rc, "LPUSH queue:%s %s", queue, json));
}

static void push(struct harness *h, const char *queue, const char *klass, const char *args,
                 const char *extra)
{
    char json[2048];
    static int n;
    snprintf(json, sizeof json,
             "{\"retry\":true,\"queue\":\"%s\",\"class\":\"%s\",\"args\":%s,\"jid\":"
             "\"%024d\",\"created_at\":1712345678.5,\"enqueued_at\":1712345678.5%s%s}",
             queue, klass, args, ++n, extra ? "," : "", extra ? extra : "");
    push_raw(h, queue, json);
}

static json_t *zset_first(struct harness *h, const char *key)
{
    redisReply *r = test_redis_cmd(h->rc, "ZRANGE %s 0 0", key);
    json_t *j = NULL;
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 1) {
        /* jansson cannot hold integers beyond 64 bits: blank the one the tests use. */
        char *text = xstrndup(r->element[0]->str, r->element[0]->len);
        char *big = strstr(text, "123456789012345678901234567890");
        if (big)
            memset(big, '1', 1), memset(big + 1, ' ', 29);
        j = json_loads(text, 0, NULL);
        free(text);
    }
    freeReplyObject(r);
    return j;
}

static int cond_processed_all(struct harness *h)
{
    return h->w.total_processed >= 3 && h->w.out_count == 0 && h->w.out_in_flight == 0;
}
static int cond_retry_1(struct harness *h)
{
    return test_redis_int(h->rc, "ZCARD retry") >= 1;
}
static int cond_dead_1(struct harness *h)
{
    return test_redis_int(h->rc, "ZCARD dead") >= 1;
}
static int cond_idle(struct harness *h)
{
    return h->w.busy == 0 && h->w.out_count == 0 && h->w.out_in_flight == 0 &&
           !h->w.fetch_in_flight && test_redis_int(h->rc, "LLEN queue:default") == 0 &&
           test_redis_int(h->rc, "HLEN tierone:inprogress:%s", h->w.identity) == 0;
}

/* ---- tests --------------------------------------------------------------------------- */

Test(engine, strict_order_runs_earlier_queues_first)
{
    struct harness h;
    h_init(&h, "high,low", 1);
    push(&h, "low", "Test::Order", "[\"l1\"]", NULL);
    push(&h, "high", "Test::Order", "[\"h1\"]", NULL);
    push(&h, "high", "Test::Order", "[\"h2\"]", NULL);
    h_start(&h);
    cr_assert(h_run_until(&h, cond_processed_all, 5000));
    cr_assert_str_eq(order_seen[0], "h1");
    cr_assert_str_eq(order_seen[1], "h2");
    cr_assert_str_eq(order_seen[2], "l1");
    h_stop(&h);
    cr_assert_eq(test_redis_int(h.rc, "EXISTS tierone:inprogress:%s", h.w.identity), 0);
    cr_assert_eq(test_redis_int(h.rc, "GET stat:processed"), 3, "stats flushed at exit");
    h_free(&h);
}

Test(engine, failure_goes_to_retry_with_sidekiq_fields)
{
    struct harness h;
    h_init(&h, "default", 5);
    push(&h, "default", "Tierone::Fail", "[\"boom\"]",
         "\"big\":123456789012345678901234567890,\"retry_queue\":\"later\"");
    h_start(&h);
    double before = clock_wall_s();
    cr_assert(h_run_until(&h, cond_retry_1, 5000));
    json_t *j = zset_first(&h, "retry");
    cr_assert_not_null(j, "retry member is JSON");
    cr_assert_str_eq(json_string_value(json_object_get(j, "error_class")), "RuntimeError");
    cr_assert_str_eq(json_string_value(json_object_get(j, "error_message")), "boom");
    cr_assert_eq(json_integer_value(json_object_get(j, "retry_count")), 0);
    cr_assert(json_is_real(json_object_get(j, "failed_at")), "failed_at is float seconds");
    cr_assert_str_eq(json_string_value(json_object_get(j, "queue")), "later", "retry_queue wins");
    json_decref(j);
    /* the big integer survives byte for byte */
    redisReply *r = test_redis_cmd(h.rc, "ZRANGE retry 0 0 WITHSCORES");
    cr_assert(strstr(r->element[0]->str, "\"big\":123456789012345678901234567890") != NULL);
    double score = atof(r->element[1]->str);
    cr_assert(score >= before + 15 && score <= clock_wall_s() + 15 + 9 + 1,
              "first retry after 15..24 s (got %.1f s)", score - before);
    freeReplyObject(r);
    h_stop(&h);
    cr_assert_eq(test_redis_int(h.rc, "GET stat:failed"), 1);
    h_free(&h);
}

Test(engine, retry_zero_goes_to_dead_and_false_is_discarded)
{
    struct harness h;
    h_init(&h, "default", 5);
    push(&h, "default", "Tierone::Fail", "[\"zero\"]", "\"retry\":0");
    h_start(&h);
    cr_assert(h_run_until(&h, cond_dead_1, 5000));
    json_t *j = zset_first(&h, "dead");
    cr_assert_str_eq(json_string_value(json_object_get(j, "error_message")), "zero");
    json_decref(j);
    cr_assert_eq(test_redis_int(h.rc, "ZCARD retry"), 0);
    /* retry: false -> neither retry nor dead */
    push(&h, "default", "Tierone::Fail", "[\"nope\"]", "\"retry\":false");
    cr_assert(h_run_until(&h, cond_idle, 5000));
    cr_assert_eq(test_redis_int(h.rc, "ZCARD retry"), 0);
    cr_assert_eq(test_redis_int(h.rc, "ZCARD dead"), 1);
    h_stop(&h);
    h_free(&h);
}

Test(engine, json_retry_key_appears_once)
{
    /* "retry":0 given twice in the pushed text: Ruby keeps the last one; so do we. */
    struct harness h;
    h_init(&h, "default", 1);
    push_raw(&h, "default",
             "{\"retry\":true,\"class\":\"Tierone::Fail\",\"args\":[\"x\"],\"jid\":\"abc\","
             "\"queue\":\"default\",\"retry\":0}");
    h_start(&h);
    cr_assert(h_run_until(&h, cond_dead_1, 5000));
    h_stop(&h);
    h_free(&h);
}

Test(engine, exhausted_retries_go_to_dead_unless_dead_false)
{
    struct harness h;
    h_init(&h, "default", 5);
    push(&h, "default", "Tierone::Fail", "[\"last\"]", "\"retry\":2,\"retry_count\":1");
    push(&h, "default", "Tierone::Fail", "[\"gone\"]",
         "\"retry\":2,\"retry_count\":1,\"dead\":false");
    h_start(&h);
    cr_assert(h_run_until(&h, cond_idle, 5000));
    cr_assert_eq(test_redis_int(h.rc, "ZCARD dead"), 1);
    json_t *j = zset_first(&h, "dead");
    cr_assert_eq(json_integer_value(json_object_get(j, "retry_count")), 2);
    cr_assert(json_is_real(json_object_get(j, "retried_at")));
    cr_assert_str_eq(json_string_value(json_object_get(j, "error_message")), "last");
    json_decref(j);
    h_stop(&h);
    h_free(&h);
}

Test(engine, unknown_class_is_a_normal_failure)
{
    struct harness h;
    h_init(&h, "default", 5);
    push(&h, "default", "Nobody::Home", "[]", NULL);
    h_start(&h);
    cr_assert(h_run_until(&h, cond_retry_1, 5000));
    json_t *j = zset_first(&h, "retry");
    cr_assert_str_eq(json_string_value(json_object_get(j, "error_class")), "NameError");
    cr_assert(strstr(json_string_value(json_object_get(j, "error_message")), "Nobody::Home"));
    json_decref(j);
    h_stop(&h);
    h_free(&h);
}

Test(engine, invalid_json_goes_to_dead_untouched)
{
    struct harness h;
    h_init(&h, "default", 5);
    push_raw(&h, "default", "{\"class\":\"Tierone::Noop\",");
    h_start(&h);
    cr_assert(h_run_until(&h, cond_dead_1, 5000));
    redisReply *r = test_redis_cmd(h.rc, "ZRANGE dead 0 0");
    cr_assert_str_eq(r->element[0]->str, "{\"class\":\"Tierone::Noop\",");
    freeReplyObject(r);
    h_stop(&h);
    h_free(&h);
}

Test(engine, permanent_error_skips_retries)
{
    struct harness h;
    h_init(&h, "default", 5);
    push(&h, "default", "Test::Permanent", "[]", NULL);
    h_start(&h);
    cr_assert(h_run_until(&h, cond_dead_1, 5000));
    cr_assert_eq(test_redis_int(h.rc, "ZCARD retry"), 0);
    json_t *j = zset_first(&h, "dead");
    cr_assert_str_eq(json_string_value(json_object_get(j, "error_class")), "Tierone::Unauthorized");
    json_decref(j);
    h_stop(&h);
    h_free(&h);
}

Test(engine, retry_at_sets_the_score)
{
    struct harness h;
    h_init(&h, "default", 5);
    retry_at_value = (double)(long long)clock_wall_s() + 1000.25;
    push(&h, "default", "Test::RetryAt", "[]", NULL);
    h_start(&h);
    cr_assert(h_run_until(&h, cond_retry_1, 5000));
    redisReply *r = test_redis_cmd(h.rc, "ZRANGE retry 0 0 WITHSCORES");
    cr_assert_float_eq(atof(r->element[1]->str), retry_at_value, 0.001);
    freeReplyObject(r);
    h_stop(&h);
    h_free(&h);
}

static int cond_scheduled_1(struct harness *h)
{
    return test_redis_int(h->rc, "ZCARD schedule") >= 1 && h->w.out_in_flight == 0 &&
           h->w.out_count == 0;
}

Test(engine, reschedule_puts_the_job_back_unchanged_and_is_no_failure)
{
    struct harness h;
    h_init(&h, "default", 5);
    retry_at_value = (double)(long long)clock_wall_s() + 1000.5;
    const char *job = "{\"retry\":3,\"queue\":\"default\",\"class\":\"Test::Reschedule\","
                      "\"args\":[1],\"jid\":\"r1\",\"enqueued_at\":1712345678.5}";
    push_raw(&h, "default", job);
    /* GET of a missing key reads as -1; the stats flush may create it as 0. */
    long long failed_before = test_redis_int(h.rc, "GET stat:failed");
    failed_before = failed_before < 0 ? 0 : failed_before;
    h_start(&h);
    cr_assert(h_run_until(&h, cond_scheduled_1, 5000));
    redisReply *r = test_redis_cmd(h.rc, "ZRANGE schedule 0 0 WITHSCORES");
    cr_assert_str_eq(r->element[0]->str, job, "the payload must be byte-identical");
    cr_assert_float_eq(atof(r->element[1]->str), retry_at_value, 0.001);
    freeReplyObject(r);
    cr_assert_eq(test_redis_int(h.rc, "ZCARD retry"), 0);
    cr_assert_eq(test_redis_int(h.rc, "HLEN tierone:inprogress:%s", h.w.identity), 0);
    cr_assert_eq(h.w.total_rescheduled, 1);
    cr_assert_eq(h.w.total_failed, 0);
    h_stop(&h);
    long long failed_after = test_redis_int(h.rc, "GET stat:failed");
    cr_assert_eq(failed_after < 0 ? 0 : failed_after, failed_before);
    h_free(&h);
}

Test(engine, dead_set_is_trimmed_like_sidekiq)
{
    struct harness h;
    h_init(&h, "default", 5);
    h.cfg.dead_max_jobs = 3;
    for (int i = 0; i < 5; i++)
        push(&h, "default", "Tierone::Fail", "[\"x\"]", "\"retry\":0");
    h_start(&h);
    cr_assert(h_run_until(&h, cond_idle, 5000));
    /* ZREMRANGEBYRANK dead 0 -max keeps max-1, as Sidekiq's -10000 keeps 9,999. */
    cr_assert_eq(test_redis_int(h.rc, "ZCARD dead"), 2);
    h_stop(&h);
    h_free(&h);
}

static int cond_sched_moved(struct harness *h)
{
    return test_redis_int(h->rc, "ZCARD schedule") == 0 &&
           test_redis_int(h->rc, "LLEN queue:other") == 1;
}

Test(engine, poller_changes_nothing_but_enqueued_at)
{
    struct harness h;
    h_init(&h, "default", 5); /* not fetching "other": the moved job stays there */
    const char *job = "{\"retry\":true,\"queue\":\"other\",\"class\":\"Chatwoot::Job\","
                      "\"args\":[12345678901234567890123,1.0,\"\\u00e9\\\"\"],"
                      "\"jid\":\"0123456789abcdef01234567\",\"created_at\":1712345678.0,"
                      "\"zeta\":{\"enqueued_at\":1},\"alpha\":null}";
    freeReplyObject(test_redis_cmd(h.rc, "ZADD schedule 1000.5 %s", job));
    h_start(&h);
    cr_assert(h_run_until(&h, cond_sched_moved, 5000));
    char *moved = test_redis_str(h.rc, "LINDEX queue:other 0");
    /* Everything up to the closing brace is the original; enqueued_at is appended. */
    cr_assert(strncmp(moved, job, strlen(job) - 1) == 0, "prefix kept: %s", moved);
    cr_assert(strstr(moved + strlen(job) - 1, ",\"enqueued_at\":") != NULL, "%s", moved);
    cr_assert_eq(test_redis_int(h.rc, "SISMEMBER queues other"), 1);
    free(moved);
    h_stop(&h);
    h_free(&h);
}

static int cond_retry_due_ran(struct harness *h)
{
    return test_redis_int(h->rc, "ZCARD retry") == 1 && h->w.total_failed >= 2;
}

Test(engine, due_retry_runs_again_and_counts_up)
{
    struct harness h;
    h_init(&h, "default", 5);
    const char *job = "{\"retry\":true,\"queue\":\"default\",\"class\":\"Tierone::Fail\","
                      "\"args\":[\"again\"],\"jid\":\"aaaaaaaaaaaaaaaaaaaaaaaa\","
                      "\"error_message\":\"again\",\"error_class\":\"RuntimeError\","
                      "\"failed_at\":1712345678.0,\"retry_count\":0}";
    freeReplyObject(test_redis_cmd(h.rc, "ZADD retry 1000 %s", job));
    h_start(&h);
    h.w.total_failed = 1; /* the failure that put it in the retry set */
    cr_assert(h_run_until(&h, cond_retry_due_ran, 5000));
    json_t *j = zset_first(&h, "retry");
    cr_assert_eq(json_integer_value(json_object_get(j, "retry_count")), 1);
    cr_assert(json_is_real(json_object_get(j, "retried_at")));
    cr_assert_float_eq(json_real_value(json_object_get(j, "failed_at")), 1712345678.0, 1e-9,
                       "kept");
    json_decref(j);
    h_stop(&h);
    h_free(&h);
}

static int cond_busy_2(struct harness *h)
{
    return h->w.busy == 2 && test_redis_int(h->rc, "HLEN %s:work", h->w.identity) == 2;
}

Test(engine, heartbeat_shows_process_and_busy_jobs)
{
    struct harness h;
    h_init(&h, "default", 7);
    push(&h, "default", "Test::Hang", "[]", NULL);
    push(&h, "default", "Test::Hang", "[]", NULL);
    h_start(&h);
    cr_assert(h_run_until(&h, cond_busy_2, 5000));
    const char *id = h.w.identity;
    cr_assert_eq(test_redis_int(h.rc, "SISMEMBER processes %s", id), 1);
    cr_assert_eq(test_redis_int(h.rc, "HLEN %s:workers", id), 2, "6.4.1's key too");
    char *busy = test_redis_str(h.rc, "HGET %s busy", id);
    char *quiet = test_redis_str(h.rc, "HGET %s quiet", id);
    char *conc = test_redis_str(h.rc, "HGET %s concurrency", id);
    char *info = test_redis_str(h.rc, "HGET %s info", id);
    cr_assert_str_eq(busy, "2");
    cr_assert_str_eq(quiet, "false");
    cr_assert_str_eq(conc, "7");
    json_t *ij = json_loads(info, 0, NULL);
    cr_assert_str_eq(json_string_value(json_object_get(ij, "identity")), id);
    cr_assert_eq(json_integer_value(json_object_get(ij, "concurrency")), 7);
    cr_assert(json_is_real(json_object_get(ij, "started_at")));
    cr_assert_gt(test_redis_int(h.rc, "TTL %s", id), 0);
    /* A work entry: {"queue","payload" (the job as a string),"run_at" (integer)}. */
    redisReply *r = test_redis_cmd(h.rc, "HVALS %s:work", id);
    json_t *we = json_loadb(r->element[0]->str, r->element[0]->len, 0, NULL);
    cr_assert_str_eq(json_string_value(json_object_get(we, "queue")), "default");
    cr_assert(json_is_string(json_object_get(we, "payload")));
    cr_assert(json_is_integer(json_object_get(we, "run_at")));
    json_decref(we);
    freeReplyObject(r);
    json_decref(ij);
    free(busy);
    free(quiet);
    free(conc);
    free(info);
    /* Hard stop: the two hanging jobs go back to the head of the queue. */
    h_stop(&h);
    cr_assert_eq(test_redis_int(h.rc, "LLEN queue:default"), 2);
    cr_assert_eq(test_redis_int(h.rc, "SISMEMBER processes %s", id), 0);
    cr_assert_eq(test_redis_int(h.rc, "EXISTS %s:work", id), 0);
    h_free(&h);
}

static int cond_quiet(struct harness *h)
{
    char *q = test_redis_str(h->rc, "HGET %s quiet", h->w.identity);
    int yes = q && strcmp(q, "true") == 0;
    free(q);
    return yes;
}
static int cond_beat_after_quiet(struct harness *h)
{
    return h->w.quiet && cond_quiet(h);
}

Test(engine, tstp_signal_from_redis_quiets_the_process)
{
    struct harness h;
    h_init(&h, "default", 5);
    h_start(&h);
    cr_assert(h_run_until(&h, cond_idle, 5000));
    freeReplyObject(test_redis_cmd(h.rc, "LPUSH %s-signals TSTP", h.w.identity));
    cr_assert(h_run_until(&h, cond_beat_after_quiet, 5000));
    push(&h, "default", "Tierone::Noop", "[]", NULL);
    /* Quiet: the job stays queued while the loop keeps running (beats, polls). */
    uint64_t end = clock_mono_ms() + 300;
    while (clock_mono_ms() < end)
        uv_run(&h.loop, UV_RUN_ONCE);
    cr_assert_eq(test_redis_int(h.rc, "LLEN queue:default"), 1);
    h_stop(&h);
    h_free(&h);
}

static int cond_recovered(struct harness *h)
{
    return test_redis_int(h->rc, "SISMEMBER rec done") == 1 &&
           test_redis_int(h->rc, "EXISTS tierone:inprogress:ghost") == 0;
}

Test(engine, jobs_of_a_crashed_process_are_recovered)
{
    struct harness h;
    h_init(&h, "default", 5);
    /* A process that died: registered, a job in its store, no lease. */
    freeReplyObject(test_redis_cmd(h.rc, "SADD tierone:processes ghost"));
    freeReplyObject(
        test_redis_cmd(h.rc, "HSET tierone:inprogress:ghost 7.1:default %s",
                       "{\"class\":\"Tierone::Record\",\"args\":[\"rec\",\"done\"],\"jid\":\"g1\","
                       "\"queue\":\"default\",\"retry\":true}"));
    h_start(&h);
    cr_assert(h_run_until(&h, cond_recovered, 5000));
    cr_assert_eq(test_redis_int(h.rc, "SISMEMBER tierone:processes ghost"), 0);
    h_stop(&h);
    h_free(&h);
}

static int cond_poison_dead(struct harness *h)
{
    return test_redis_int(h->rc, "ZCARD dead") == 1 &&
           test_redis_int(h->rc, "EXISTS tierone:inprogress:ghost") == 0;
}

Test(engine, a_job_orphaned_three_times_is_a_poison_pill)
{
    struct harness h;
    h_init(&h, "default", 5);
    const char *job = "{\"class\":\"Tierone::Noop\",\"args\":[],\"jid\":\"p1\","
                      "\"queue\":\"default\",\"retry\":true}";
    redisReply *sha = test_redis_cmd(h.rc, "EVAL %s 0 %s", "return redis.sha1hex(ARGV[1])", job);
    freeReplyObject(test_redis_cmd(h.rc, "SET tierone:recovered:%s 2", sha->str));
    freeReplyObject(sha);
    freeReplyObject(test_redis_cmd(h.rc, "SADD tierone:processes ghost"));
    freeReplyObject(test_redis_cmd(h.rc, "HSET tierone:inprogress:ghost 1.1:default %s", job));
    h_start(&h);
    cr_assert(h_run_until(&h, cond_poison_dead, 5000));
    json_t *j = zset_first(&h, "dead");
    cr_assert_str_eq(json_string_value(json_object_get(j, "error_class")), "Tierone::PoisonPill");
    json_decref(j);
    cr_assert_eq(test_redis_int(h.rc, "LLEN queue:default"), 0, "not run again");
    h_stop(&h);
    h_free(&h);
}

static int cond_store_capped(struct harness *h)
{
    return h->w.busy == 3;
}

Test(engine, never_fetches_more_than_free_slots)
{
    struct harness h;
    h_init(&h, "default", 3);
    for (int i = 0; i < 10; i++)
        push(&h, "default", "Test::Hang", "[]", NULL);
    h_start(&h);
    cr_assert(h_run_until(&h, cond_store_capped, 5000));
    /* Keep running a little: nothing more may be fetched while all slots are busy. */
    uint64_t end = clock_mono_ms() + 200;
    while (clock_mono_ms() < end)
        uv_run(&h.loop, UV_RUN_ONCE);
    cr_assert_eq(test_redis_int(h.rc, "HLEN tierone:inprogress:%s", h.w.identity), 3);
    cr_assert_eq(test_redis_int(h.rc, "LLEN queue:default"), 7);
    h_stop(&h);
    cr_assert_eq(test_redis_int(h.rc, "LLEN queue:default"), 10, "all back after the stop");
    h_free(&h);
}

static int cond_ran_50(struct harness *h)
{
    return test_redis_int(h->rc, "SCARD ran") == 50;
}

Test(engine, weighted_queues_drain_every_queue)
{
    struct harness h;
    h_init(&h, "a:3,b:1", 10);
    char args[64];
    for (int i = 0; i < 25; i++) {
        snprintf(args, sizeof args, "[\"ran\",\"a%d\"]", i);
        push(&h, "a", "Tierone::Record", args, NULL);
        snprintf(args, sizeof args, "[\"ran\",\"b%d\"]", i);
        push(&h, "b", "Tierone::Record", args, NULL);
    }
    h_start(&h);
    cr_assert(h.w.weighted);
    cr_assert(h_run_until(&h, cond_ran_50, 10000));
    h_stop(&h);
    h_free(&h);
}

static int cond_pausing_a_minute(struct harness *h)
{
    return uv_is_active((uv_handle_t *)&h->w.fetch_timer) && h->w.idle_ms == 60000 &&
           !h->w.fetch_in_flight;
}
static int cond_ordered_1(struct harness *h)
{
    return order_count == 1;
}

/* Start the worker and wait until its fetcher sits in a one-minute idle pause, as after a
 * long idle spell (the next pause is the longest): a job then runs within a test's timeout
 * only if something ends the pause. */
static void h_start_pausing_a_minute(struct harness *h)
{
    h->cfg.fetch_idle_max_ms = 60000;
    h_start(h);
    h->w.idle_ms = 60000;
    cr_assert(h_run_until(h, cond_pausing_a_minute, 5000), "the fetcher did not pause");
}

/* A job pushed during a long idle pause waits it out; worker_fetch_wake (called by the
 * pipeline after pushing a chain's next step) fetches at once. */
Test(engine, a_wake_ends_the_idle_pause)
{
    struct harness h;
    h_init(&h, "default", 5);
    h_start_pausing_a_minute(&h);
    push(&h, "default", "Test::Order", "[\"a\"]", NULL);
    uint64_t end = clock_mono_ms() + 200; /* the pause holds: the job stays queued */
    while (clock_mono_ms() < end)
        uv_run(&h.loop, UV_RUN_NOWAIT);
    cr_assert_eq(order_count, 0);
    cr_assert_eq(test_redis_int(h.rc, "LLEN queue:default"), 1);
    worker_fetch_wake(&h.w);
    cr_assert(h_run_until(&h, cond_ordered_1, 20000), "the woken fetcher did not run the job");
    h_stop(&h);
    h_free(&h);
}

static int cond_token_taken(struct harness *h)
{
    return h->w.wakeups == 1 && order_count == 1 &&
           test_redis_int(h->rc, "LLEN tierone:wake:default") == 0;
}

/* The ingest shim pushes a token onto tierone:wake:<queue> with every batch (lib/wake.h):
 * an idle worker blocked on the wake lists of its queues takes it and fetches at once,
 * where polling alone would wait out the pause (a minute here). A token of a queue it does
 * not serve is not its to take. */
Test(engine, a_wake_token_ends_the_idle_pause)
{
    struct harness h;
    h_init(&h, "default", 5);
    freeReplyObject(test_redis_cmd(h.rc, "DEL tierone:wake:default tierone:wake:other"));
    h_start_pausing_a_minute(&h);
    freeReplyObject(test_redis_cmd(h.rc, "LPUSH tierone:wake:other 1"));
    push(&h, "default", "Test::Order", "[\"a\"]", NULL);
    freeReplyObject(test_redis_cmd(h.rc, "LPUSH tierone:wake:default 1"));
    cr_assert(h_run_until(&h, cond_token_taken, 20000),
              "the token did not wake the fetcher (wake-ups %llu, jobs run %d)", h.w.wakeups,
              order_count);
    cr_assert_eq(test_redis_int(h.rc, "LLEN tierone:wake:other"), 1);
    cr_assert_eq(test_redis_int(h.rc, "LLEN queue:default"), 0);
    h_stop(&h);
    h_free(&h);
}

/* A scheduled job (a retry, a debounced step) that the poller moves onto a queue runs
 * without this process waiting out its idle pause first. */
Test(engine, a_job_the_poller_moves_is_fetched_without_the_pause)
{
    struct harness h;
    h_init(&h, "default", 5);
    h_start_pausing_a_minute(&h);
    char json[512];
    snprintf(json, sizeof json,
             "{\"retry\":true,\"queue\":\"default\",\"class\":\"Test::Order\",\"args\":[\"s\"],"
             "\"jid\":\"%024d\",\"created_at\":1712345678.5}",
             777);
    freeReplyObject(test_redis_cmd(h.rc, "ZADD schedule %f %s", clock_wall_s() - 1, json));
    cr_assert(h_run_until(&h, cond_ordered_1, 20000),
              "the moved job waited for the fetcher's pause");
    h_stop(&h);
    h_free(&h);
}

static int cond_wake_off(struct harness *h)
{
    return h->w.wake_off;
}

/* A wake key that is not a list (an operator's mistake) turns the wake-ups off, once and
 * for good; the polling still fetches every job. */
Test(engine, a_broken_wake_list_leaves_the_polling)
{
    struct harness h;
    h_init(&h, "default", 5);
    freeReplyObject(test_redis_cmd(h.rc, "SET tierone:wake:default not-a-list"));
    h_start(&h);
    cr_assert(h_run_until(&h, cond_wake_off, 10000), "the BRPOP error did not turn wake-ups off");
    push(&h, "default", "Test::Order", "[\"a\"]", NULL);
    cr_assert(h_run_until(&h, cond_ordered_1, 20000), "the polling did not run the job");
    cr_assert_eq(h.w.wakeups, 0);
    cr_assert(!h.w.wake_waiting, "no BRPOP is sent once the wake-ups are off");
    h_stop(&h);
    freeReplyObject(test_redis_cmd(h.rc, "DEL tierone:wake:default"));
    h_free(&h);
}
