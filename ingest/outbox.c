/* outbox: Redis push with dedupe, spool fallback and in-order drain (see outbox.h).
 *
 * Reading order: the push script, job records, the direct path (submit -> script ->
 * reply), the spool path (append -> durable), the drain (peek -> script -> pop), Redis
 * state changes, metrics, life cycle. */
#include "outbox.h"
#include "clock.h"
#include "log.h"
#include "redis.h"
#include "spool.h"
#include "xalloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* KEYS: queues set, queue list[, dedupe key]; ARGV: payload, queue name, dedupe TTL (s). */
static struct redis_script outbox_push_script =
    REDIS_SCRIPT("if #KEYS == 3 and not redis.call('SET', KEYS[3], '1', 'NX', 'EX', ARGV[3]) then\n"
                 "  return 0\n"
                 "end\n"
                 "redis.call('SADD', KEYS[1], ARGV[2])\n"
                 "redis.call('LPUSH', KEYS[2], ARGV[1])\n"
                 "return 1\n");

enum outbox_stat {
    OS_QUEUED,
    OS_DUPLICATE,
    OS_SPOOLED,
    OS_FAILED,
    OS_DRAINED,
    OS_DRAINED_DUPLICATE,
    OS_COUNT
};

static const char *const outbox_stat_names[OS_COUNT] = {
    "queued", "duplicate", "spooled", "failed", "drained", "drained_duplicate",
};

struct outbox {
    uv_loop_t *loop;
    struct redis *redis;
    struct spool *spool;
    char *queue;
    char *queues_key;
    char *queue_key;
    char ttl[24];
    uint32_t drain_interval_ms;
    uv_timer_t drain_timer;
    int drain_busy;     /* a drain push is in flight */
    int drain_warned;   /* a "draining paused" line was written since the last success */
    int redis_warned;   /* a "falling back to the spool" line was written for this outage */
    uint64_t in_flight; /* submitted jobs whose callback has not run */
    int closing;
    int closes_left; /* timer close + redis/spool chain */
    outbox_closed_cb closed_cb;
    void *closed_data;
    /* metrics (NULL without a registry) */
    struct metrics_series *stat[OS_COUNT];
    struct metrics_series *push_redis;
    struct metrics_series *push_spool;
    struct metrics_series *redis_up;
};

/* One submitted job, alive until its callback ran. rec is its spool record. */
struct outbox_job {
    struct outbox *ob;
    outbox_cb cb;
    void *data;
    char *rec;
    size_t rec_len;
    uint64_t t0_ns;
};

static void outbox_drain(struct outbox *ob);
static int outbox_spool_job(struct outbox *ob, struct outbox_job *job, char *err, size_t errcap);

static void outbox_count(struct outbox *ob, enum outbox_stat s)
{
    if (ob->stat[s])
        metrics_inc(ob->stat[s]);
}

/* ---- records ------------------------------------------------------------------------------ */

/* u16 delivery length | delivery | payload */
static char *outbox_record(const char *delivery, const char *payload, size_t len, size_t *out_len)
{
    size_t dlen = delivery ? strlen(delivery) : 0;
    char *rec = xmalloc(2 + dlen + len);
    rec[0] = (char)(dlen & 0xff);
    rec[1] = (char)(dlen >> 8);
    if (dlen)
        memcpy(rec + 2, delivery, dlen);
    memcpy(rec + 2 + dlen, payload, len);
    *out_len = 2 + dlen + len;
    return rec;
}

/* Split a record back; -1 if it is too short to be one. */
static int outbox_record_split(const char *rec, size_t len, const char **delivery, size_t *dlen,
                               const char **payload, size_t *plen)
{
    if (len < 2)
        return -1;
    size_t d = (size_t)(unsigned char)rec[0] | (size_t)(unsigned char)rec[1] << 8;
    if (len - 2 < d || len - 2 - d == 0)
        return -1;
    *delivery = rec + 2;
    *dlen = d;
    *payload = rec + 2 + d;
    *plen = len - 2 - d;
    return 0;
}

/* Run the push script for a record; 0 if sent (cb runs once), -1 if Redis is not up. */
static int outbox_eval(struct outbox *ob, const char *rec, size_t rec_len, redis_reply_cb cb,
                       void *data)
{
    const char *delivery, *payload;
    size_t dlen, plen;
    if (outbox_record_split(rec, rec_len, &delivery, &dlen, &payload, &plen) != 0)
        return -1;
    char *dkey = NULL;
    const char *argv[6] = {ob->queues_key, ob->queue_key, NULL, payload, ob->queue, ob->ttl};
    size_t lens[6] = {strlen(ob->queues_key), strlen(ob->queue_key), 0, plen,
                      strlen(ob->queue),      strlen(ob->ttl)};
    int nkeys = 2;
    if (dlen) {
        size_t plen_prefix = strlen(OUTBOX_DEDUPE_PREFIX);
        dkey = xmalloc(plen_prefix + dlen + 1);
        memcpy(dkey, OUTBOX_DEDUPE_PREFIX, plen_prefix);
        memcpy(dkey + plen_prefix, delivery, dlen);
        dkey[plen_prefix + dlen] = '\0';
        argv[2] = dkey;
        lens[2] = plen_prefix + dlen;
        nkeys = 3;
    }
    const char *args[6];
    size_t alens[6];
    int n = 0;
    for (int i = 0; i < 6; i++) {
        if (!argv[i])
            continue;
        args[n] = argv[i];
        alens[n++] = lens[i];
    }
    int rc = redis_eval(ob->redis, &outbox_push_script, cb, data, nkeys, n, args, alens);
    free(dkey);
    return rc;
}

/* 1 queued, 0 duplicate, -1 failed (reason in why). */
static int outbox_reply_result(const redisReply *reply, const char **why)
{
    if (!reply) {
        *why = "connection lost";
        return -1;
    }
    if (reply->type == REDIS_REPLY_INTEGER)
        return reply->integer ? 1 : 0;
    *why = reply->type == REDIS_REPLY_ERROR && reply->str ? reply->str : "unexpected reply";
    return -1;
}

/* ---- jobs --------------------------------------------------------------------------------- */

static void outbox_job_finish(struct outbox_job *job, enum outbox_result res, const char *error)
{
    struct outbox *ob = job->ob;
    ob->in_flight--;
    double secs = (double)(clock_mono_ns() - job->t0_ns) / 1e9;
    if (res == OUTBOX_QUEUED || res == OUTBOX_DUPLICATE) {
        if (ob->push_redis)
            metrics_observe(ob->push_redis, secs);
        outbox_count(ob, res == OUTBOX_QUEUED ? OS_QUEUED : OS_DUPLICATE);
    } else if (res == OUTBOX_SPOOLED) {
        if (ob->push_spool)
            metrics_observe(ob->push_spool, secs);
        outbox_count(ob, OS_SPOOLED);
    } else {
        outbox_count(ob, OS_FAILED);
    }
    job->cb(res, error, job->data);
    free(job->rec);
    free(job);
}

static void outbox_on_direct_reply(struct redis *r, redisReply *reply, void *data)
{
    struct outbox_job *job = data;
    struct outbox *ob = job->ob;
    const char *why = NULL;
    int res = outbox_reply_result(reply, &why);
    if (res >= 0) {
        outbox_job_finish(job, res ? OUTBOX_QUEUED : OUTBOX_DUPLICATE, NULL);
        return;
    }
    if (!ob->redis_warned) {
        log_warn("outbox: push to Redis failed (%s); spooling to %s until Redis is back", why,
                 spool_path(ob->spool));
        ob->redis_warned = 1;
    }
    char err[256];
    if (outbox_spool_job(ob, job, err, sizeof err) != 0)
        outbox_job_finish(job, OUTBOX_FAILED, err);
}

/* ---- spool path ----------------------------------------------------------------------------- */

static void outbox_on_spooled(int status, void *data)
{
    struct outbox_job *job = data;
    struct outbox *ob = job->ob;
    if (status == 0)
        outbox_job_finish(job, OUTBOX_SPOOLED, NULL);
    else
        outbox_job_finish(job, OUTBOX_FAILED, uv_strerror(status));
    outbox_drain(ob);
}

static int outbox_spool_job(struct outbox *ob, struct outbox_job *job, char *err, size_t errcap)
{
    return spool_append(ob->spool, job->rec, job->rec_len, outbox_on_spooled, job, err, errcap);
}

int outbox_submit(struct outbox *ob, const char *delivery, const char *payload, size_t len,
                  outbox_cb cb, void *data, char *err, size_t errcap)
{
    if (delivery && strlen(delivery) > OUTBOX_MAX_DELIVERY) {
        snprintf(err, errcap, "delivery id longer than %d bytes", OUTBOX_MAX_DELIVERY);
        return -1;
    }
    if (len == 0) {
        snprintf(err, errcap, "empty payload");
        return -1;
    }
    struct outbox_job *job = xcalloc(1, sizeof *job);
    job->ob = ob;
    job->cb = cb;
    job->data = data;
    job->t0_ns = clock_mono_ns();
    job->rec = outbox_record(delivery, payload, len, &job->rec_len);
    if (!ob->closing && spool_empty(ob->spool) && redis_is_up(ob->redis) &&
        outbox_eval(ob, job->rec, job->rec_len, outbox_on_direct_reply, job) == 0) {
        ob->in_flight++;
        return 0;
    }
    if (outbox_spool_job(ob, job, err, errcap) != 0) {
        outbox_count(ob, OS_FAILED);
        free(job->rec);
        free(job);
        return -1;
    }
    ob->in_flight++;
    return 0;
}

/* ---- drain ---------------------------------------------------------------------------------- */

static void outbox_on_drain_reply(struct redis *r, redisReply *reply, void *data)
{
    struct outbox *ob = data;
    ob->drain_busy = 0;
    const char *why = NULL;
    int res = outbox_reply_result(reply, &why);
    if (res < 0) {
        if (!ob->closing && !ob->drain_warned)
            log_warn("outbox: draining the spool paused (%s); %llu record(s) left; retrying "
                     "every %u ms",
                     why, (unsigned long long)spool_depth(ob->spool), ob->drain_interval_ms);
        ob->drain_warned = 1;
        return; /* the timer retries */
    }
    char err[256];
    if (spool_pop(ob->spool, err, sizeof err) != 0) {
        log_error("outbox: %s", err);
        return;
    }
    ob->drain_warned = 0;
    outbox_count(ob, res ? OS_DRAINED : OS_DRAINED_DUPLICATE);
    if (spool_empty(ob->spool)) {
        log_info("outbox: spool drained; pushing to Redis directly again");
        ob->redis_warned = 0;
    }
    outbox_drain(ob);
}

/* Push the oldest spooled record, if Redis is up and no drain push is in flight. */
static void outbox_drain(struct outbox *ob)
{
    if (ob->drain_busy || ob->closing || !redis_is_up(ob->redis))
        return;
    const char *rec;
    size_t len;
    char err[256];
    int rc = spool_peek(ob->spool, &rec, &len, err, sizeof err);
    if (rc < 0)
        log_error("outbox: %s", err);
    if (rc <= 0)
        return;
    if (outbox_eval(ob, rec, len, outbox_on_drain_reply, ob) == 0) {
        ob->drain_busy = 1;
        return;
    }
    const char *d, *p;
    size_t dl, pl;
    if (outbox_record_split(rec, len, &d, &dl, &p, &pl) != 0) {
        log_error("outbox: spool record of %zu bytes is not a job; dropping it", len);
        if (spool_pop(ob->spool, err, sizeof err) == 0)
            outbox_drain(ob);
    }
}

static void outbox_on_drain_timer(uv_timer_t *t)
{
    outbox_drain(t->data);
}

/* ---- Redis state ---------------------------------------------------------------------------- */

static void outbox_on_redis_state(struct redis *r, int up, void *data)
{
    struct outbox *ob = data;
    if (ob->redis_up)
        metrics_set(ob->redis_up, up);
    if (up) {
        uint64_t depth = spool_depth(ob->spool);
        if (depth)
            log_info("outbox: Redis is up; draining %llu spooled record(s)",
                     (unsigned long long)depth);
        outbox_drain(ob);
    }
}

/* ---- metrics -------------------------------------------------------------------------------- */

static double outbox_depth_fn(void *arg)
{
    return (double)spool_depth(((struct outbox *)arg)->spool);
}

static double outbox_bytes_fn(void *arg)
{
    return (double)spool_bytes(((struct outbox *)arg)->spool);
}

static void outbox_metrics_init(struct outbox *ob, struct metrics_registry *reg)
{
    static const double bounds[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                    0.05,   0.1,     0.25,   0.5,   1,      2.5,   5};
    if (!reg)
        return;
    struct metrics_family *jobs =
        metrics_counter_new(reg, "tierone_ingest_jobs_total",
                            "Jobs by outcome: queued, duplicate (dedupe hit), spooled, failed "
                            "(neither Redis nor spool), drained(_duplicate) from the spool.",
                            1, "result");
    for (int i = 0; i < OS_COUNT; i++)
        ob->stat[i] = metrics_series_get(jobs, outbox_stat_names[i]);
    struct metrics_family *push = metrics_histogram_new(
        reg, "tierone_ingest_push_seconds",
        "Time from acceptance to the job being in Redis (target=redis) or durable in the "
        "spool (target=spool).",
        bounds, sizeof bounds / sizeof bounds[0], 1, "target");
    ob->push_redis = metrics_series_get(push, "redis");
    ob->push_spool = metrics_series_get(push, "spool");
    struct metrics_family *up =
        metrics_gauge_new(reg, "tierone_ingest_redis_up", "1 while Redis is connected.", 0);
    ob->redis_up = metrics_series_get(up);
    metrics_gauge_fn_new(reg, "tierone_ingest_spool_depth", "Jobs waiting in the local spool.",
                         outbox_depth_fn, ob);
    metrics_gauge_fn_new(reg, "tierone_ingest_spool_bytes", "Size of the spool file in bytes.",
                         outbox_bytes_fn, ob);
}

/* ---- life cycle ----------------------------------------------------------------------------- */

struct outbox *outbox_new(uv_loop_t *loop, const struct outbox_opts *opts, char *err, size_t errcap)
{
    struct redis_url url;
    const char *why = NULL;
    if (redis_url_parse(opts->redis_url, &url, &why) != 0) {
        snprintf(err, errcap, "Redis URL %s", why);
        return NULL;
    }
    redis_url_free(&url);
    struct spool_open_info info;
    struct spool *sp =
        spool_open(loop, opts->spool_path, opts->spool_max_bytes, &info, err, errcap);
    if (!sp)
        return NULL;
    struct outbox *ob = xcalloc(1, sizeof *ob);
    ob->loop = loop;
    ob->spool = sp;
    ob->queue = xstrdup(opts->queue ? opts->queue : "events");
    ob->queues_key = xstrdup("queues");
    ob->queue_key = xasprintf("queue:%s", ob->queue);
    snprintf(ob->ttl, sizeof ob->ttl, "%u", opts->dedupe_ttl_s ? opts->dedupe_ttl_s : 86400);
    ob->drain_interval_ms = opts->drain_interval_ms ? opts->drain_interval_ms : 250;
    outbox_metrics_init(ob, opts->metrics);
    if (info.records)
        log_info("outbox: spool %s holds %llu job(s) from an earlier run; they drain first",
                 opts->spool_path, (unsigned long long)info.records);
    struct redis_opts ro = {
        .url = opts->redis_url,
        .name = "tierone-ingest",
        .command_timeout_ms = opts->redis_timeout_ms ? opts->redis_timeout_ms : 1000,
        .connect_timeout_ms = opts->redis_timeout_ms ? opts->redis_timeout_ms : 1000,
        .on_state = outbox_on_redis_state,
        .data = ob,
    };
    ob->redis = redis_new(loop, &ro, &why); /* cannot fail: the URL was checked above */
    uv_timer_init(loop, &ob->drain_timer);
    ob->drain_timer.data = ob;
    uv_timer_start(&ob->drain_timer, outbox_on_drain_timer, ob->drain_interval_ms,
                   ob->drain_interval_ms);
    return ob;
}

uint64_t outbox_spool_depth(const struct outbox *ob)
{
    return spool_depth(ob->spool);
}

int outbox_redis_up(const struct outbox *ob)
{
    return redis_is_up(ob->redis);
}

static void outbox_close_step(struct outbox *ob)
{
    if (--ob->closes_left > 0)
        return;
    outbox_closed_cb cb = ob->closed_cb;
    void *data = ob->closed_data;
    free(ob->queue);
    free(ob->queues_key);
    free(ob->queue_key);
    free(ob);
    if (cb)
        cb(data);
}

static void outbox_on_spool_closed(void *data)
{
    outbox_close_step(data);
}

static void outbox_on_redis_closed(void *data)
{
    struct outbox *ob = data;
    spool_close(ob->spool, outbox_on_spool_closed, ob);
}

static void outbox_on_timer_closed(uv_handle_t *h)
{
    outbox_close_step(h->data);
}

void outbox_close(struct outbox *ob, outbox_closed_cb cb, void *data)
{
    if (ob->closing)
        return;
    ob->closing = 1;
    ob->closed_cb = cb;
    ob->closed_data = data;
    ob->closes_left = 2;
    uv_timer_stop(&ob->drain_timer);
    uv_close((uv_handle_t *)&ob->drain_timer, outbox_on_timer_closed);
    /* Jobs still waiting on Redis get a NULL reply now and go to the spool, which stays
     * open until Redis is closed. */
    redis_close(ob->redis, outbox_on_redis_closed, ob);
}
