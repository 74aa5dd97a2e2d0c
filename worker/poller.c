/* poller: moves due jobs from the `retry` and `schedule` sets to their queues.
 *
 * Every process on a Redis runs a poller (Ruby's and ours), so the interval follows
 * Sidekiq's formula (scheduled.rb): with P processes in `processes` and an average of 5 s,
 * wait P*5*rand + P*5/2 seconds (P < 10) or P*5*rand (P >= 10); a configured interval
 * replaces P*5. The first poll waits 10 + 5*rand seconds unless an interval is configured.
 *
 * Each round reads up to BATCH due members (ZRANGEBYSCORE -inf now), rewrites only
 * "enqueued_at" in each (job.h keeps every other byte), and one Lua call moves them: for
 * each member, ZREM and, only if that removed it, SADD queues + LPUSH. Two pollers racing
 * for a job therefore move it once. A member that is not a JSON object cannot be queued
 * (it has no queue); it goes to the dead set as it is rather than being dropped. */
#include "engine.h"
#include "clock.h"
#include "log.h"
#include "xalloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#define POLL_BATCH 100

static const char *const poll_sets[] = {"retry", "schedule"};

/* KEYS[1] the set; ARGV: triples (member, queue or "", new payload). */
static struct redis_script move_script =
    REDIS_SCRIPT("local moved = 0\n"
                 "for i = 1, #ARGV, 3 do\n"
                 "  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then\n"
                 "    if ARGV[i + 1] == '' then\n"
                 "      redis.call('ZADD', 'dead', ARGV[i + 2], ARGV[i])\n"
                 "    else\n"
                 "      redis.call('SADD', 'queues', ARGV[i + 1])\n"
                 "      redis.call('LPUSH', 'queue:' .. ARGV[i + 1], ARGV[i + 2])\n"
                 "    end\n"
                 "    moved = moved + 1\n"
                 "  end\n"
                 "end\n"
                 "return moved\n");

struct poll_round {
    struct worker *w;
    size_t set; /* index into poll_sets */
    size_t asked;
};

static void poller_read(struct worker *w, size_t set);

static double poller_rand(void)
{
    uint32_t r;
    if (getrandom(&r, sizeof r, 0) != sizeof r)
        r = (uint32_t)random();
    return (double)r / 4294967296.0;
}

static void poller_on_timer(uv_timer_t *t)
{
    struct worker *w = t->data;
    if (w->stopping || w->poll_in_flight || !redis_is_up(w->redis)) {
        uv_timer_start(&w->poll_timer, poller_on_timer, 1000, 0);
        return;
    }
    w->poll_in_flight = 1;
    poller_read(w, 0);
}

/* Sidekiq's random_poll_interval, in ms. */
static uint64_t poller_interval_ms(struct worker *w)
{
    double avg = w->cfg->poll_interval_ms > 0 ? (double)w->cfg->poll_interval_ms
                                              : (double)w->process_count * 5000.0;
    double ms = w->process_count < 10 ? avg * poller_rand() + avg / 2 : avg * poller_rand();
    return ms < 1 ? 1 : (uint64_t)ms;
}

static void poller_on_scard(struct redis *r, redisReply *reply, void *data)
{
    struct worker *w = data;
    (void)r;
    if (reply && reply->type == REDIS_REPLY_INTEGER)
        w->process_count = reply->integer > 0 ? reply->integer : 1;
    w->poll_in_flight = 0;
    if (!w->stopping && !w->closing)
        uv_timer_start(&w->poll_timer, poller_on_timer, poller_interval_ms(w), 0);
}

/* The round is over: count processes, then wait. */
static void poller_finish(struct worker *w)
{
    if (redis_command(w->redis, poller_on_scard, w, "SCARD processes") != 0)
        poller_on_scard(w->redis, NULL, w);
}

static void poller_on_moved(struct redis *r, redisReply *reply, void *data)
{
    struct poll_round *round = data;
    struct worker *w = round->w;
    (void)r;
    if (reply && reply->type == REDIS_REPLY_INTEGER && reply->integer > 0) {
        log_debug("poller moved %lld job(s) from %s", reply->integer, poll_sets[round->set]);
        worker_fetch_wake(w); /* they are due now: no idle pause before fetching them */
    } else if (reply && reply->type == REDIS_REPLY_ERROR)
        log_error("poller could not move jobs from %s: %s", poll_sets[round->set], reply->str);
    size_t set = round->set, asked = round->asked;
    free(round);
    if (!reply || reply->type == REDIS_REPLY_ERROR)
        poller_finish(w);
    else if (asked == POLL_BATCH)
        poller_read(w, set); /* a full batch: there may be more due */
    else if (set + 1 < sizeof poll_sets / sizeof *poll_sets)
        poller_read(w, set + 1);
    else
        poller_finish(w);
}

static void poller_on_due(struct redis *r, redisReply *reply, void *data)
{
    struct poll_round *round = data;
    struct worker *w = round->w;
    (void)r;
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements == 0) {
        if (reply && reply->type == REDIS_REPLY_ERROR)
            log_error("poller could not read %s: %s", poll_sets[round->set], reply->str);
        size_t next = round->set + 1;
        free(round);
        if (reply && reply->type == REDIS_REPLY_ARRAY && next < 2)
            poller_read(w, next);
        else
            poller_finish(w);
        return;
    }
    size_t n = reply->elements;
    round->asked = n;
    const char **argv = xcalloc(n * 3 + 1, sizeof *argv);
    size_t *lens = xcalloc(n * 3 + 1, sizeof *lens);
    char **owned = xcalloc(n * 2, sizeof *owned);
    double now = clock_wall_s();
    char nowbuf[64];
    snprintf(nowbuf, sizeof nowbuf, "%.6f", now);
    argv[0] = poll_sets[round->set];
    lens[0] = strlen(argv[0]);
    for (size_t i = 0; i < n; i++) {
        redisReply *m = reply->element[i];
        char *queue = NULL, err[200];
        size_t newlen = 0;
        char *fresh =
            job_enqueue_payload(m->str, m->len, (enum job_ts_format)w->cfg->timestamp_format, now,
                                &newlen, &queue, err, sizeof err);
        argv[1 + 3 * i] = m->str;
        lens[1 + 3 * i] = m->len;
        if (fresh) {
            argv[2 + 3 * i] = queue;
            lens[2 + 3 * i] = strlen(queue);
            argv[3 + 3 * i] = fresh;
            lens[3 + 3 * i] = newlen;
        } else {
            log_error("a member of %s is not a job (%s); moving it to the dead set as it is",
                      poll_sets[round->set], err);
            argv[2 + 3 * i] = "";
            lens[2 + 3 * i] = 0;
            argv[3 + 3 * i] = nowbuf;
            lens[3 + 3 * i] = strlen(nowbuf);
        }
        owned[2 * i] = queue;
        owned[2 * i + 1] = fresh;
    }
    if (redis_eval(w->redis, &move_script, poller_on_moved, round, 1, (int)(n * 3 + 1), argv,
                   lens) != 0) {
        free(round);
        poller_finish(w);
    }
    for (size_t i = 0; i < n * 2; i++)
        free(owned[i]);
    free(owned);
    free(argv);
    free(lens);
}

static void poller_read(struct worker *w, size_t set)
{
    struct poll_round *round = xcalloc(1, sizeof *round);
    round->w = w;
    round->set = set;
    char now[64];
    snprintf(now, sizeof now, "%.6f", clock_wall_s());
    if (redis_command(w->redis, poller_on_due, round, "ZRANGEBYSCORE %s -inf %s LIMIT 0 %d",
                      poll_sets[set], now, POLL_BATCH) != 0) {
        free(round);
        poller_finish(w);
    }
}

int poller_init(struct worker *w)
{
    uv_timer_init(w->loop, &w->poll_timer);
    w->poll_timer.data = w;
    w->process_count = 1;
    uint64_t first = w->cfg->poll_interval_ms > 0
                         ? (uint64_t)(poller_rand() * (double)w->cfg->poll_interval_ms)
                         : (uint64_t)(10000 + 5000 * poller_rand());
    uv_timer_start(&w->poll_timer, poller_on_timer, first, 0);
    return 0;
}

void poller_close(struct worker *w)
{
    uv_timer_stop(&w->poll_timer);
    uv_close((uv_handle_t *)&w->poll_timer, NULL);
}
