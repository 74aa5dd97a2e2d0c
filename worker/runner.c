/* runner: the life of one job inside the process, from fetched bytes to its outcome.
 *
 *   fetched --parse--> running --job_done--> outcome queued --flushed--> slot free
 *
 * Outcomes (ack, retry, dead, reschedule) are written to Redis in batches once per loop
 * iteration (a uv_check handle): every ack of the iteration is one HDEL on our in-progress
 * store; a retry, a death or a reschedule (a rate limit said "not now") is one Lua call
 * that removes the job from the store and adds it to the `retry`, `dead` or `schedule` set
 * in the same atomic step. While Redis is unreachable, outcomes wait
 * in memory (never more than one per fetched job) and are sent when it is back; until then
 * the job is still in the store, so a crash meanwhile means "run again", never "lost". */
#include "engine.h"
#include "clock.h"
#include "log.h"
#include "xalloc.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum outcome_kind { OUT_ACK, OUT_RETRY, OUT_DEAD, OUT_SCHEDULE };

struct outcome {
    struct outcome *next;
    enum outcome_kind kind;
    char *store_key; /* in-progress hash the job leaves; NULL = ours (w->store_key) */
    char *field;
    char *payload; /* retry/dead member */
    size_t len;
    double score;
};

/* KEYS[1] store, KEYS[2] retry or dead; ARGV: field, score, payload, [cutoff, max_jobs]. */
static struct redis_script fail_script =
    REDIS_SCRIPT("redis.call('HDEL', KEYS[1], ARGV[1])\n"
                 "redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])\n"
                 "if ARGV[4] then\n"
                 "  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])\n"
                 "  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -tonumber(ARGV[5]))\n"
                 "end\n"
                 "return 1\n");

/* ---- accessors ----------------------------------------------------------------------- */

const struct job *job_ctx_job(const struct job_ctx *ctx)
{
    return &ctx->job;
}

uv_loop_t *job_ctx_loop(const struct job_ctx *ctx)
{
    return ctx->w->loop;
}

struct worker *job_ctx_worker(const struct job_ctx *ctx)
{
    return ctx->w;
}

void *job_ctx_get_state(const struct job_ctx *ctx)
{
    return ctx->state_ptr;
}

void job_ctx_set_state(struct job_ctx *ctx, void *state)
{
    ctx->state_ptr = state;
}

/* ---- outcomes ------------------------------------------------------------------------ */

static const char *outcome_store(const struct worker *w, const struct outcome *o)
{
    return o->store_key ? o->store_key : w->store_key;
}

static void outcome_push(struct worker *w, struct outcome *o)
{
    o->next = NULL;
    if (w->out_tail)
        w->out_tail->next = o;
    else
        w->out_head = o;
    w->out_tail = o;
    w->out_count++;
}

static void outcome_free(struct outcome *o)
{
    free(o->store_key);
    free(o->field);
    free(o->payload);
    free(o);
}

/* Put a list of outcomes that did not reach Redis back at the front of the queue. */
static void outcome_requeue(struct worker *w, struct outcome *list)
{
    struct outcome *last = list;
    size_t n = 1;
    while (last->next) {
        last = last->next;
        n++;
    }
    last->next = w->out_head;
    w->out_head = list;
    if (!w->out_tail)
        w->out_tail = last;
    w->out_count += n;
}

struct ack_batch {
    struct worker *w;
    struct outcome *list;
};

static void runner_on_batch_reply(struct redis *r, redisReply *reply, void *data)
{
    struct ack_batch *b = data;
    struct worker *w = b->w;
    (void)r;
    w->out_in_flight--;
    if (!reply || redis_reply_is_failover(reply)) {
        outcome_requeue(w, b->list); /* not written: send again when Redis is back */
    } else {
        if (reply->type == REDIS_REPLY_ERROR)
            log_error("writing job outcomes failed: %s", reply->str);
        while (b->list) {
            struct outcome *o = b->list;
            b->list = o->next;
            outcome_free(o);
        }
    }
    free(b);
    worker_job_finished(w);
}

static void runner_send_acks(struct worker *w, struct outcome *acks, size_t n)
{
    const char **argv = xmalloc(sizeof *argv * (n + 2));
    argv[0] = "HDEL";
    argv[1] = outcome_store(w, acks);
    size_t i = 2;
    for (struct outcome *o = acks; o; o = o->next)
        argv[i++] = o->field;
    struct ack_batch *b = xmalloc(sizeof *b);
    b->w = w;
    b->list = acks;
    if (redis_command_argv(w->redis, runner_on_batch_reply, b, (int)(n + 2), argv, NULL) == 0)
        w->out_in_flight++;
    else {
        outcome_requeue(w, acks);
        free(b);
    }
    free(argv);
}

static void runner_send_fail(struct worker *w, struct outcome *o)
{
    char score[64], cutoff[64], maxjobs[32];
    snprintf(score, sizeof score, "%.6f", o->score);
    const char *argv[7];
    size_t lens[7];
    int argc = 0;
    argv[argc] = outcome_store(w, o);
    lens[argc] = strlen(argv[argc]);
    argc++;
    argv[argc] = o->kind == OUT_RETRY ? "retry" : o->kind == OUT_DEAD ? "dead" : "schedule";
    lens[argc++] = strlen(argv[1]);
    argv[argc] = o->field;
    lens[argc++] = strlen(o->field);
    argv[argc] = score;
    lens[argc++] = strlen(score);
    argv[argc] = o->payload;
    lens[argc++] = o->len;
    if (o->kind == OUT_DEAD) {
        snprintf(cutoff, sizeof cutoff, "%.6f", o->score - (double)w->cfg->dead_timeout_s);
        snprintf(maxjobs, sizeof maxjobs, "%lld", w->cfg->dead_max_jobs);
        argv[argc] = cutoff;
        lens[argc++] = strlen(cutoff);
        argv[argc] = maxjobs;
        lens[argc++] = strlen(maxjobs);
    }
    struct ack_batch *b = xmalloc(sizeof *b);
    b->w = w;
    b->list = o;
    o->next = NULL;
    if (redis_eval(w->redis, &fail_script, runner_on_batch_reply, b, 2, argc, argv, lens) == 0)
        w->out_in_flight++;
    else {
        outcome_requeue(w, o);
        free(b);
    }
}

void runner_flush(struct worker *w)
{
    if (!w->out_head || !w->redis || !redis_is_up(w->redis))
        return;
    struct outcome *list = w->out_head;
    w->out_head = w->out_tail = NULL;
    w->out_count = 0;
    /* Acks to the same store go out as one HDEL; everything else one call each. */
    struct outcome *acks = NULL, **acks_tail = &acks;
    size_t nacks = 0;
    while (list) {
        struct outcome *o = list;
        list = o->next;
        o->next = NULL;
        if (o->kind == OUT_ACK &&
            (!acks || strcmp(outcome_store(w, acks), outcome_store(w, o)) == 0)) {
            *acks_tail = o;
            acks_tail = &o->next;
            nacks++;
        } else if (o->kind == OUT_ACK) {
            outcome_push(w, o); /* another store: next round */
        } else {
            runner_send_fail(w, o);
        }
    }
    if (acks)
        runner_send_acks(w, acks, nacks);
}

static void runner_on_check(uv_check_t *h)
{
    runner_flush(h->data);
}

void runner_kill(struct worker *w, const char *store_key, const char *field, const char *payload,
                 size_t len)
{
    struct outcome *o = xcalloc(1, sizeof *o);
    o->kind = OUT_DEAD;
    o->store_key = xstrdup(store_key); /* NULL stays NULL: our own store */
    o->field = xstrdup(field);
    o->payload = xstrndup(payload, len);
    o->len = len;
    o->score = clock_wall_s();
    outcome_push(w, o);
    w->total_dead++;
}

/* ---- slots --------------------------------------------------------------------------- */

int runner_init(struct worker *w)
{
    size_t n = (size_t)w->cfg->concurrency;
    w->slots = xcalloc(n, sizeof *w->slots);
    for (size_t i = n; i-- > 0;) {
        w->slots[i].w = w;
        snprintf(w->slots[i].tid, sizeof w->slots[i].tid, "t%zx", i);
        w->slots[i].next_free = w->free_slots;
        w->free_slots = &w->slots[i];
    }
    uv_check_init(w->loop, &w->flush_check);
    w->flush_check.data = w;
    uv_check_start(&w->flush_check, runner_on_check);
    uv_unref((uv_handle_t *)&w->flush_check);
    return 0;
}

size_t runner_free_slots(const struct worker *w)
{
    return (size_t)w->cfg->concurrency - w->busy;
}

static void runner_release(struct worker *w, struct job_ctx *ctx)
{
    job_free(&ctx->job);
    free(ctx->field);
    free(ctx->queue);
    ctx->field = ctx->queue = NULL;
    ctx->state_ptr = NULL;
    ctx->type = NULL;
    ctx->state = CTX_FREE;
    ctx->next_free = w->free_slots;
    w->free_slots = ctx;
    w->busy--;
    worker_job_finished(w);
}

static void runner_queue_ack(struct worker *w, struct job_ctx *ctx)
{
    struct outcome *o = xcalloc(1, sizeof *o);
    o->kind = OUT_ACK;
    o->field = ctx->field;
    ctx->field = NULL;
    outcome_push(w, o);
}

/* A rate limit said "not now": the job goes back to `schedule`, byte for byte, to run at
 * err->retry_at. Not a failure: no retry_count, no error fields, no failed counter. */
static void runner_reschedule(struct worker *w, struct job_ctx *ctx, const struct job_error *err)
{
    const struct job *j = &ctx->job;
    double now = clock_wall_s();
    struct outcome *o = xcalloc(1, sizeof *o);
    o->kind = OUT_SCHEDULE;
    o->field = ctx->field;
    ctx->field = NULL;
    o->payload = xmalloc(j->raw_len + 1);
    memcpy(o->payload, j->raw, j->raw_len + 1);
    o->len = j->raw_len;
    o->score = err->retry_at > now ? err->retry_at : now;
    w->total_rescheduled++;
    log_job(LOG_INFO, j->jid, j->klass, "rescheduled in %.1f s: %s: %s", o->score - now,
            err->error_class, err->error_message);
    outcome_push(w, o);
}

/* Decide what a failure means (Sidekiq's job_retry.rb) and queue the outcome. */
static void runner_fail(struct worker *w, struct job_ctx *ctx, struct job_error *err)
{
    const struct job *j = &ctx->job;
    double now = clock_wall_s();
    w->stat_failed++;
    w->total_failed++;
    if (j->retry_mode == JOB_RETRY_DISCARD) {
        log_job(LOG_WARN, j->jid, j->klass, "failed, discarded (retry: false): %s: %s",
                err->error_class, err->error_message);
        runner_queue_ack(w, ctx);
        return;
    }
    struct job_failure f = {err->error_class, err->error_message, ctx->queue};
    long long count = 0;
    size_t len = 0;
    char *payload =
        job_failed_payload(j, &f, (enum job_ts_format)w->cfg->timestamp_format, now, &len, &count);
    struct outcome *o = xcalloc(1, sizeof *o);
    o->field = ctx->field;
    ctx->field = NULL;
    o->payload = payload;
    o->len = len;
    if (err->kind != JOB_ERR_PERMANENT && job_may_retry(j, count, w->cfg->max_retries)) {
        o->kind = OUT_RETRY;
        o->score = err->kind == JOB_ERR_RETRY_AT && err->retry_at > now
                       ? err->retry_at
                       : now + job_retry_delay(count);
        w->total_retried++;
        log_job(LOG_WARN, j->jid, j->klass, "failed (retry %lld in %.0f s): %s: %s", count,
                o->score - now, err->error_class, err->error_message);
    } else if (j->dead) {
        o->kind = OUT_DEAD;
        o->score = now;
        w->total_dead++;
        log_job(LOG_ERROR, j->jid, j->klass, "failed, moved to the dead set%s: %s: %s",
                err->kind == JOB_ERR_PERMANENT ? " (permanent error)" : " (retries exhausted)",
                err->error_class, err->error_message);
    } else {
        log_job(LOG_ERROR, j->jid, j->klass, "failed, retries exhausted, discarded (dead: false)");
        o->kind = OUT_ACK;
        free(o->payload);
        o->payload = NULL;
    }
    outcome_push(w, o);
}

void job_done(struct job_ctx *ctx, struct job_error *err)
{
    struct worker *w = ctx->w;
    if (ctx->state == CTX_ABANDONED) {
        /* Already back on its queue (hard shutdown): the outcome no longer matters. */
        job_error_free(err);
        runner_release(w, ctx);
        return;
    }
    w->stat_processed++;
    w->total_processed++;
    if (!err) {
        if (log_min_level <= LOG_DEBUG)
            log_job(LOG_DEBUG, ctx->job.jid, ctx->job.klass, "done in %.3f ms",
                    (double)(clock_mono_ns() - ctx->started_ns) / 1e6);
        runner_queue_ack(w, ctx);
    } else if (err->kind == JOB_ERR_RESCHEDULE) {
        runner_reschedule(w, ctx, err);
        job_error_free(err);
    } else {
        runner_fail(w, ctx, err);
        job_error_free(err);
    }
    runner_release(w, ctx);
}

void runner_start(struct worker *w, char *field, const char *queue, const char *raw, size_t len)
{
    struct job_ctx *ctx = w->free_slots;
    if (!ctx) {
        /* Cannot happen: the fetcher never asks for more jobs than free slots. */
        log_error("fetched a job with no free slot; aborting");
        abort();
    }
    char err[256];
    if (job_parse(raw, len, &ctx->job, err, sizeof err) != 0) {
        log_error("job from queue %s is not valid JSON, moved to the dead set: %s", queue, err);
        runner_kill(w, NULL, field, raw, len);
        free(field);
        return;
    }
    w->free_slots = ctx->next_free;
    ctx->next_free = NULL;
    w->busy++;
    ctx->state = CTX_RUNNING;
    ctx->field = field;
    ctx->queue = xstrdup(queue);
    ctx->run_at = (long long)clock_wall_s();
    ctx->started_ns = clock_mono_ns();
    ctx->type = ctx->job.klass ? worker_find_type(w, ctx->job.klass) : NULL;
    if (log_min_level <= LOG_DEBUG)
        log_job(LOG_DEBUG, ctx->job.jid, ctx->job.klass, "start");
    if (!ctx->type) {
        job_done(ctx, job_error_new(JOB_ERR_RETRY, "NameError",
                                    "uninitialized constant %s (no tierone handler for this class)",
                                    ctx->job.klass ? ctx->job.klass : "(job has no class)"));
        return;
    }
    ctx->type->perform(ctx);
}

void runner_abandon_all(struct worker *w)
{
    for (size_t i = 0; i < (size_t)w->cfg->concurrency; i++) {
        struct job_ctx *ctx = &w->slots[i];
        if (ctx->state != CTX_RUNNING)
            continue;
        ctx->state = CTX_ABANDONED;
        log_job(LOG_WARN, ctx->job.jid, ctx->job.klass,
                "still running at the shutdown deadline; put back on queue %s", ctx->queue);
        if (ctx->type && ctx->type->cancel)
            ctx->type->cancel(ctx);
    }
}

void runner_close(struct worker *w)
{
    uv_close((uv_handle_t *)&w->flush_check, NULL);
    while (w->out_head) {
        struct outcome *o = w->out_head;
        w->out_head = o->next;
        outcome_free(o);
    }
    w->out_tail = NULL;
    w->out_count = 0;
}
