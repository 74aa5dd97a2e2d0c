/* diagnostic: job types for benchmarks, smoke tests and operators (--diagnostic-jobs).
 *
 *   Tierone::Noop               does nothing, succeeds at once
 *   Tierone::Sleep   [ms]       waits ms on a timer, then succeeds
 *   Tierone::Fail    [message]  fails retryably with RuntimeError: message
 *   Tierone::Record  [key, id]  SADD key id, then succeeds (counts executions in tests)
 *   Tierone::HttpGet [url]      one GET through the worker's HTTP client; 2xx succeeds,
 *                               anything else fails retryably (http_get.c) */
#include "diagnostic.h"
#include "engine.h"
#include "xalloc.h"

#include <stdlib.h>

static struct job_error *diag_bad_args(const struct job *j, const char *want)
{
    return job_error_new(JOB_ERR_PERMANENT, "ArgumentError", "%s expects args %s",
                         j->klass ? j->klass : "job", want);
}

/* ---- Noop ---------------------------------------------------------------------------- */

static void noop_perform(struct job_ctx *ctx)
{
    job_done(ctx, NULL);
}

/* ---- Sleep --------------------------------------------------------------------------- */

struct sleep_state {
    uv_timer_t timer;
    struct job_ctx *ctx;
};

static void sleep_on_closed(uv_handle_t *h)
{
    struct sleep_state *s = h->data;
    struct job_ctx *ctx = s->ctx;
    free(s);
    job_done(ctx, NULL);
}

static void sleep_on_timer(uv_timer_t *t)
{
    uv_close((uv_handle_t *)t, sleep_on_closed);
}

static void sleep_perform(struct job_ctx *ctx)
{
    const struct job *j = job_ctx_job(ctx);
    json_t *ms = j->args ? json_array_get(j->args, 0) : NULL;
    if (!json_is_number(ms) || json_number_value(ms) < 0) {
        job_done(ctx, diag_bad_args(j, "[milliseconds]"));
        return;
    }
    struct sleep_state *s = xcalloc(1, sizeof *s);
    s->ctx = ctx;
    uv_timer_init(job_ctx_loop(ctx), &s->timer);
    s->timer.data = s;
    job_ctx_set_state(ctx, s);
    uv_timer_start(&s->timer, sleep_on_timer, (uint64_t)json_number_value(ms), 0);
}

static void sleep_cancel(struct job_ctx *ctx)
{
    struct sleep_state *s = job_ctx_get_state(ctx);
    if (s && !uv_is_closing((uv_handle_t *)&s->timer))
        uv_close((uv_handle_t *)&s->timer, sleep_on_closed);
}

/* ---- Fail ---------------------------------------------------------------------------- */

static void fail_perform(struct job_ctx *ctx)
{
    const struct job *j = job_ctx_job(ctx);
    json_t *msg = j->args ? json_array_get(j->args, 0) : NULL;
    job_done(ctx,
             job_error_new(JOB_ERR_RETRY, "RuntimeError", "%s",
                           json_is_string(msg) ? json_string_value(msg) : "failed on purpose"));
}

/* ---- Record -------------------------------------------------------------------------- */

static void record_on_reply(struct redis *r, redisReply *reply, void *data)
{
    struct job_ctx *ctx = data;
    (void)r;
    if (!reply)
        job_done(ctx, job_error_new(JOB_ERR_RETRY, "Redis::CannotConnectError",
                                    "redis connection lost during SADD"));
    else if (reply->type == REDIS_REPLY_ERROR)
        job_done(ctx, job_error_new(JOB_ERR_RETRY, "Redis::CommandError", "%s", reply->str));
    else
        job_done(ctx, NULL);
}

static void record_perform(struct job_ctx *ctx)
{
    const struct job *j = job_ctx_job(ctx);
    json_t *key = j->args ? json_array_get(j->args, 0) : NULL;
    json_t *id = j->args ? json_array_get(j->args, 1) : NULL;
    if (!json_is_string(key) || !id) {
        job_done(ctx, diag_bad_args(j, "[key, id]"));
        return;
    }
    char *idtext = json_is_string(id) ? xstrdup(json_string_value(id))
                                      : json_dumps(id, JSON_ENCODE_ANY | JSON_COMPACT);
    const char *argv[3] = {"SADD", json_string_value(key), idtext};
    struct worker *w = job_ctx_worker(ctx);
    int rc = redis_command_argv(w->redis, record_on_reply, ctx, 3, argv, NULL);
    free(idtext);
    if (rc != 0)
        job_done(ctx, job_error_new(JOB_ERR_RETRY, "Redis::CannotConnectError", "redis is down"));
}

static const struct job_type noop_type = {"Tierone::Noop", noop_perform, NULL};
static const struct job_type sleep_type = {"Tierone::Sleep", sleep_perform, sleep_cancel};
static const struct job_type fail_type = {"Tierone::Fail", fail_perform, NULL};
static const struct job_type record_type = {"Tierone::Record", record_perform, NULL};

void diagnostic_register(struct worker *w)
{
    worker_register(w, &noop_type);
    worker_register(w, &sleep_type);
    worker_register(w, &fail_type);
    worker_register(w, &record_type);
    worker_register(w, &http_get_type);
}
