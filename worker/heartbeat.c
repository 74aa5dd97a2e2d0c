/* heartbeat: what makes a tierone process visible to Sidekiq's API and Web UI, and alive
 * to other tierone processes.
 *
 * Every beat (launcher.rb's heartbeat, SIDEKIQ.md §2.5 and §7.7):
 *  1. PING, timed, for rtt_us;
 *  2. MULTI: INCRBY stat:processed/failed (+ daily keys, 5-year TTL); rewrite the work
 *     hashes <identity>:work (6.4.2+) and <identity>:workers (6.4.1) with one entry per
 *     running job {"queue","payload","run_at"}, EXPIRE 60; EXEC;
 *  3. MULTI: SADD processes; HMSET <identity> info busy beat rtt_us quiet rss concurrency;
 *     EXPIRE 60; RPOP <identity>-signals; refresh our lease (tierone:lease:<identity>,
 *     EX lease_ttl) and registry membership; EXEC. A signal TSTP/USR1 quiets the
 *     process, TERM stops it, TTIN logs the running jobs.
 * A beat that fails keeps its stat deltas for the next one. The beat runs every
 * beat_interval_ms, or more often when the lease is short (lease_ttl/3), so a live
 * process never loses its lease. */
#include "engine.h"
#include "buf.h"
#include "clock.h"
#include "log.h"
#include "metrics.h"
#include "xalloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define STATS_TTL (5 * 365 * 24 * 60 * 60)

struct beat {
    struct worker *w;
    uint64_t ping_ns;
    long long processed, failed;
};

static void heartbeat_on_timer(uv_timer_t *t)
{
    heartbeat_beat(t->data);
}

static void heartbeat_info_json(struct worker *w, struct buf *b)
{
    buf_puts(b, "{\"hostname\":");
    buf_json_string(b, w->hostname, strlen(w->hostname));
    buf_printf(b, ",\"started_at\":%.6f,\"pid\":%d,\"tag\":", w->started_at, (int)getpid());
    buf_json_string(b, w->cfg->tag, strlen(w->cfg->tag));
    buf_printf(b, ",\"concurrency\":%lld,\"queues\":[", w->cfg->concurrency);
    for (size_t i = 0; i < w->nqueues; i++) {
        if (i)
            buf_puts(b, ",");
        buf_json_string(b, w->queues[i].name, strlen(w->queues[i].name));
    }
    buf_puts(b, "],\"weights\":[{");
    for (size_t i = 0; i < w->nqueues; i++) {
        if (i)
            buf_puts(b, ",");
        buf_json_string(b, w->queues[i].name, strlen(w->queues[i].name));
        buf_printf(b, ":%d", w->weighted ? w->queues[i].weight : 0);
    }
    buf_puts(b, "}],\"labels\":[\"tierone\"],\"identity\":");
    buf_json_string(b, w->identity, strlen(w->identity));
    buf_puts(b, ",\"version\":\"tierone-" TIERONE_VERSION "\",\"embedded\":false}");
}

static void heartbeat_handle_signal(struct worker *w, const char *sig)
{
    log_info("signal %s received through Redis (%s-signals)", sig, w->identity);
    if (strcmp(sig, "TSTP") == 0 || strcmp(sig, "USR1") == 0) {
        worker_quiet(w);
    } else if (strcmp(sig, "TERM") == 0 || strcmp(sig, "INT") == 0) {
        worker_stop(w);
    } else if (strcmp(sig, "TTIN") == 0) {
        for (size_t i = 0; i < (size_t)w->cfg->concurrency; i++)
            if (w->slots[i].state == CTX_RUNNING)
                log_job(LOG_INFO, w->slots[i].job.jid, w->slots[i].job.klass,
                        "running for %.1f s on queue %s",
                        (double)(clock_mono_ns() - w->slots[i].started_ns) / 1e9,
                        w->slots[i].queue);
    }
}

static void heartbeat_on_exec(struct redis *r, redisReply *reply, void *data)
{
    struct beat *bt = data;
    struct worker *w = bt->w;
    (void)r;
    w->beat_in_flight = 0;
    if (!reply || reply->type != REDIS_REPLY_ARRAY) {
        /* Keep the counts for the next beat. */
        w->stat_processed += bt->processed;
        w->stat_failed += bt->failed;
        if (reply && reply->type == REDIS_REPLY_ERROR)
            log_error("heartbeat failed: %s", reply->str);
        free(bt);
        return;
    }
    /* The RPOP of the signals list is the last command of the transaction. */
    redisReply *sig = reply->elements ? reply->element[reply->elements - 1] : NULL;
    char signame[32] = "";
    if (sig && sig->type == REDIS_REPLY_STRING)
        snprintf(signame, sizeof signame, "%.*s", (int)sig->len, sig->str);
    free(bt);
    if (signame[0])
        heartbeat_handle_signal(w, signame);
}

/* Queue (inside an open MULTI) the stat counters of launcher.rb: totals and the UTC day's
 * keys with a 5-year TTL. */
static void heartbeat_queue_stats(struct worker *w, long long processed, long long failed)
{
    char day[16];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(day, sizeof day, "%Y-%m-%d", &tm);
    redis_command(w->redis, NULL, NULL, "INCRBY stat:processed %lld", processed);
    redis_command(w->redis, NULL, NULL, "INCRBY stat:processed:%s %lld", day, processed);
    redis_command(w->redis, NULL, NULL, "EXPIRE stat:processed:%s %d", day, STATS_TTL);
    redis_command(w->redis, NULL, NULL, "INCRBY stat:failed %lld", failed);
    redis_command(w->redis, NULL, NULL, "INCRBY stat:failed:%s %lld", day, failed);
    redis_command(w->redis, NULL, NULL, "EXPIRE stat:failed:%s %d", day, STATS_TTL);
}

/* Queue the work-hash rewrite for one key inside the open MULTI. */
static void heartbeat_work_hash(struct worker *w, const char *key)
{
    redis_command(w->redis, NULL, NULL, "UNLINK %s", key);
    struct buf entry = BUF_INIT;
    for (size_t i = 0; i < (size_t)w->cfg->concurrency; i++) {
        struct job_ctx *c = &w->slots[i];
        if (c->state != CTX_RUNNING)
            continue;
        buf_reset(&entry);
        buf_puts(&entry, "{\"queue\":");
        buf_json_string(&entry, c->queue, strlen(c->queue));
        buf_puts(&entry, ",\"payload\":");
        buf_json_string(&entry, c->job.raw, c->job.raw_len);
        buf_printf(&entry, ",\"run_at\":%lld}", c->run_at);
        const char *argv[4] = {"HSET", key, c->tid, entry.data};
        size_t lens[4] = {4, strlen(key), strlen(c->tid), entry.len};
        redis_command_argv(w->redis, NULL, NULL, 4, argv, lens);
    }
    buf_free(&entry);
    redis_command(w->redis, NULL, NULL, "EXPIRE %s 60", key);
}

static void heartbeat_send(struct worker *w, struct beat *bt)
{
    char key[400];
    bt->processed = w->stat_processed;
    bt->failed = w->stat_failed;
    w->stat_processed = w->stat_failed = 0;

    /* Transaction 1: stats and the work hashes. */
    redis_command(w->redis, NULL, NULL, "MULTI");
    heartbeat_queue_stats(w, bt->processed, bt->failed);
    snprintf(key, sizeof key, "%s:work", w->identity);
    heartbeat_work_hash(w, key);
    snprintf(key, sizeof key, "%s:workers", w->identity);
    heartbeat_work_hash(w, key);
    redis_command(w->redis, NULL, NULL, "EXEC");

    /* Transaction 2: the process entry, our lease, and the signals list. */
    struct buf info = BUF_INIT;
    heartbeat_info_json(w, &info);
    char busy[32], beat[64], rtt[32], rss[32], conc[32], ttl[32];
    snprintf(busy, sizeof busy, "%zu", w->busy);
    snprintf(beat, sizeof beat, "%.6f", clock_wall_s());
    snprintf(rtt, sizeof rtt, "%llu", (unsigned long long)w->rtt_us);
    snprintf(rss, sizeof rss, "%lld", metrics_rss_kib());
    snprintf(conc, sizeof conc, "%lld", w->cfg->concurrency);
    snprintf(ttl, sizeof ttl, "%lld", w->cfg->lease_ttl_s);
    redis_command(w->redis, NULL, NULL, "MULTI");
    redis_command(w->redis, NULL, NULL, "SADD processes %s", w->identity);
    const char *hm[] = {
        "HMSET",  w->identity, "info",        info.data,
        "busy",   busy,        "beat",        beat,
        "rtt_us", rtt,         "quiet",       w->quiet || w->stopping ? "true" : "false",
        "rss",    rss,         "concurrency", conc};
    redis_command_argv(w->redis, NULL, NULL, (int)(sizeof hm / sizeof *hm), hm, NULL);
    redis_command(w->redis, NULL, NULL, "EXPIRE %s 60", w->identity);
    redis_command(w->redis, NULL, NULL, "SET %s 1 EX %s", w->lease_key, ttl);
    redis_command(w->redis, NULL, NULL, "SADD %s %s", KEY_PROCESSES, w->identity);
    snprintf(key, sizeof key, "%s-signals", w->identity);
    redis_command(w->redis, NULL, NULL, "RPOP %s", key);
    if (redis_command(w->redis, heartbeat_on_exec, bt, "EXEC") != 0)
        heartbeat_on_exec(w->redis, NULL, bt);
    buf_free(&info);
}

static void heartbeat_on_ping(struct redis *r, redisReply *reply, void *data)
{
    struct beat *bt = data;
    struct worker *w = bt->w;
    (void)r;
    /* Once closing, the stop sequence owns our Redis entries: a late beat would put the
     * process back in `processes` after the requeue took it out. */
    if (!reply || w->closing || !redis_is_up(w->redis)) {
        w->beat_in_flight = 0;
        free(bt);
        return;
    }
    w->rtt_us = (clock_mono_ns() - bt->ping_ns) / 1000;
    heartbeat_send(w, bt);
}

void heartbeat_beat(struct worker *w)
{
    if (w->beat_in_flight || w->closing || !redis_is_up(w->redis))
        return;
    struct beat *bt = xcalloc(1, sizeof *bt);
    bt->w = w;
    bt->ping_ns = clock_mono_ns();
    if (redis_command(w->redis, heartbeat_on_ping, bt, "PING") != 0) {
        free(bt);
        return;
    }
    w->beat_in_flight = 1;
}

int heartbeat_init(struct worker *w)
{
    uint64_t every = (uint64_t)w->cfg->beat_interval_ms;
    uint64_t lease_every = (uint64_t)w->cfg->lease_ttl_s * 1000 / 3;
    if (lease_every > 0 && lease_every < every)
        every = lease_every;
    uv_timer_init(w->loop, &w->beat_timer);
    w->beat_timer.data = w;
    uv_timer_start(&w->beat_timer, heartbeat_on_timer, every, every);
    return 0;
}

struct clear_req {
    struct worker *w;
    void (*done)(struct worker *w);
};

static void heartbeat_on_cleared(struct redis *r, redisReply *reply, void *data)
{
    struct clear_req *req = data;
    (void)r;
    if (!reply || reply->type == REDIS_REPLY_ERROR)
        log_warn("could not remove this process from Redis (%s); it expires in 60 s",
                 reply ? reply->str : "redis unavailable");
    req->done(req->w);
    free(req);
}

void heartbeat_clear(struct worker *w, void (*done)(struct worker *w))
{
    struct clear_req *req = xmalloc(sizeof *req);
    req->w = w;
    req->done = done;
    if (!redis_is_up(w->redis)) {
        heartbeat_on_cleared(w->redis, NULL, req);
        return;
    }
    long long p = w->stat_processed, f = w->stat_failed;
    w->stat_processed = w->stat_failed = 0;
    redis_command(w->redis, NULL, NULL, "MULTI");
    heartbeat_queue_stats(w, p, f);
    redis_command(w->redis, NULL, NULL, "SREM processes %s", w->identity);
    redis_command(w->redis, NULL, NULL, "SREM %s %s", KEY_PROCESSES, w->identity);
    redis_command(w->redis, NULL, NULL, "UNLINK %s %s:work %s:workers %s", w->identity, w->identity,
                  w->identity, w->lease_key);
    if (redis_command(w->redis, heartbeat_on_cleared, req, "EXEC") != 0)
        heartbeat_on_cleared(w->redis, NULL, req);
}

void heartbeat_close(struct worker *w)
{
    uv_timer_stop(&w->beat_timer);
    uv_close((uv_handle_t *)&w->beat_timer, NULL);
}
