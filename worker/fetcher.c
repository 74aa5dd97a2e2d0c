/* fetcher: reliable, batched fetch.
 *
 * One Lua call pops up to N jobs (N = free slots, at most FETCH_MAX) from the queues in
 * priority order and, in the same atomic step, stores each in this process's in-progress
 * hash (tierone:inprogress:<identity>, field "<fetch>.<i>:<queue>"). A job is therefore
 * always in exactly one place in Redis: its queue, our store, or (after its outcome) the
 * retry/dead set or nowhere. Acknowledging is an O(1) HDEL (runner.c).
 *
 * Queue order follows Sidekiq: strict (the configured order, earlier queues first) or,
 * when any queue has a weight, weighted random (each queue listed `weight` times, shuffled
 * on every fetch, duplicates dropped).
 *
 * Lua scripts cannot block, so when every queue is empty the fetcher waits before asking
 * again, doubling the pause from 1 ms up to fetch_idle_max_ms (default 50 ms): an idle
 * process costs Redis a few cheap calls a second and picks a new job up within that pause.
 * The first fetch after a burst is immediate, and so is the one after this process pushed
 * a job itself (worker_fetch_wake: the next step of a chain) or moved a scheduled one onto
 * a queue, or after another producer (the ingest shim) left a wake token (waker.c). */
#include "engine.h"
#include "log.h"
#include "xalloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#define FETCH_MAX 500

/* KEYS[1] store, KEYS[2] lease, KEYS[3] process registry.
 * ARGV[1] field prefix, ARGV[2] how many, ARGV[3] identity, ARGV[4] lease ttl,
 * ARGV[5..] queue names in priority order. Returns {field1, job1, field2, job2, ...}. */
static struct redis_script fetch_script =
    REDIS_SCRIPT("if redis.call('EXISTS', KEYS[2]) == 0 then\n"
                 "  redis.call('SET', KEYS[2], '1', 'EX', ARGV[4])\n"
                 "  redis.call('SADD', KEYS[3], ARGV[3])\n"
                 "end\n"
                 "local want = tonumber(ARGV[2])\n"
                 "local out = {}\n"
                 "local n = 0\n"
                 "for i = 5, #ARGV do\n"
                 "  local q = ARGV[i]\n"
                 "  while want > 0 do\n"
                 "    local job = redis.call('RPOP', 'queue:' .. q)\n"
                 "    if not job then break end\n"
                 "    n = n + 1\n"
                 "    local f = ARGV[1] .. '.' .. n .. ':' .. q\n"
                 "    redis.call('HSET', KEYS[1], f, job)\n"
                 "    out[#out + 1] = f\n"
                 "    out[#out + 1] = job\n"
                 "    want = want - 1\n"
                 "  end\n"
                 "  if want == 0 then break end\n"
                 "end\n"
                 "return out\n");

/* KEYS[1] store, KEYS[2] process registry; ARGV[1] identity. Puts every stored job back at
 * the head of its queue (RPUSH: it runs next), deletes the store. Returns the count. */
static struct redis_script requeue_script =
    REDIS_SCRIPT("local all = redis.call('HGETALL', KEYS[1])\n"
                 "for i = 1, #all, 2 do\n"
                 "  local q = string.match(all[i], '^[^:]*:(.*)$')\n"
                 "  redis.call('RPUSH', 'queue:' .. q, all[i + 1])\n"
                 "end\n"
                 "redis.call('DEL', KEYS[1])\n"
                 "redis.call('SREM', KEYS[2], ARGV[1])\n"
                 "return #all / 2\n");

int fetcher_parse_queues(struct worker *w, const char *spec, char *err, size_t errcap)
{
    char *copy = xstrdup(spec), *save = NULL;
    size_t cap = 8;
    w->queues = xcalloc(cap, sizeof *w->queues);
    w->nqueues = 0;
    w->weighted = 0;
    int rc = -1;
    for (char *tok = strtok_r(copy, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save)) {
        int weight = 0;
        char *colon = strrchr(tok, ':');
        if (colon) {
            char *end;
            long v = strtol(colon + 1, &end, 10);
            if (end == colon + 1 || *end || v < 1 || v > 1000) {
                snprintf(err, errcap, "queue '%s': weight must be a number from 1 to 1000", tok);
                goto out;
            }
            weight = (int)v;
            *colon = '\0';
            w->weighted = 1;
        }
        if (!*tok || strspn(tok, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                 "0123456789_:.-") != strlen(tok)) {
            snprintf(err, errcap, "queue name '%s': use only letters, digits, _ : . -", tok);
            goto out;
        }
        for (size_t i = 0; i < w->nqueues; i++) {
            if (strcmp(w->queues[i].name, tok) == 0) {
                snprintf(err, errcap, "queue '%s' is listed twice", tok);
                goto out;
            }
        }
        if (w->nqueues == cap) {
            cap *= 2;
            w->queues = xrealloc(w->queues, cap * sizeof *w->queues);
        }
        w->queues[w->nqueues].name = xstrdup(tok);
        w->queues[w->nqueues].weight = weight;
        w->nqueues++;
    }
    if (w->nqueues == 0) {
        snprintf(err, errcap, "no queues configured");
        goto out;
    }
    for (size_t i = 0; i < w->nqueues; i++)
        if (w->queues[i].weight == 0)
            w->queues[i].weight = 1;
    rc = 0;
out:
    free(copy);
    return rc;
}

/* Fill order[] with queue indexes for this fetch; returns how many. */
static size_t fetcher_order(struct worker *w, size_t *order)
{
    if (!w->weighted) {
        for (size_t i = 0; i < w->nqueues; i++)
            order[i] = i;
        return w->nqueues;
    }
    size_t total = 0;
    for (size_t i = 0; i < w->nqueues; i++)
        total += (size_t)w->queues[i].weight;
    size_t *bag = xmalloc(total * sizeof *bag);
    size_t k = 0;
    for (size_t i = 0; i < w->nqueues; i++)
        for (int j = 0; j < w->queues[i].weight; j++)
            bag[k++] = i;
    for (size_t i = total; i > 1; i--) {
        unsigned int r;
        if (getrandom(&r, sizeof r, 0) != sizeof r)
            r = (unsigned int)random();
        size_t j = r % i;
        size_t t = bag[i - 1];
        bag[i - 1] = bag[j];
        bag[j] = t;
    }
    size_t n = 0;
    char *seen = xcalloc(w->nqueues, 1);
    for (size_t i = 0; i < total; i++) {
        if (!seen[bag[i]]) {
            seen[bag[i]] = 1;
            order[n++] = bag[i];
        }
    }
    free(seen);
    free(bag);
    return n;
}

static void fetcher_on_timer(uv_timer_t *t)
{
    struct worker *w = t->data;
    fetcher_kick(w);
}

static void fetcher_on_reply(struct redis *r, redisReply *reply, void *data)
{
    struct worker *w = data;
    (void)r;
    w->fetch_in_flight = 0;
    size_t got = 0;
    if (!reply) {
        /* Connection lost: the script may have run and stored jobs that we will never see.
         * Remember its prefix; fetcher_reclaim puts them back once Redis is reachable. */
        if (w->nlost < sizeof w->lost_fetches / sizeof *w->lost_fetches)
            w->lost_fetches[w->nlost++] = (unsigned long long)w->seq;
        else
            log_error("too many lost fetches to track; their jobs wait for the shutdown requeue");
        if (w->stopping)
            worker_job_finished(w);
        return;
    }
    if (redis_reply_is_failover(reply)) {
        /* redis.c logs it and reconnects; fetching resumes when it is back. */
    } else if (reply->type == REDIS_REPLY_ERROR) {
        log_error("fetch failed: %s", reply->str);
    } else if (reply->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i + 1 < reply->elements; i += 2) {
            redisReply *f = reply->element[i], *j = reply->element[i + 1];
            const char *colon = memchr(f->str, ':', f->len);
            char *field = xstrndup(f->str, f->len);
            char *queue = xstrdup(colon ? colon + 1 : "default");
            runner_start(w, field, queue, j->str, j->len);
            free(queue);
            got++;
        }
    }
    if (w->stopping) {
        worker_job_finished(w); /* this fetch may have been the last thing the stop waited for */
        return;
    }
    if (got > 0 || w->fetch_again) {
        w->idle_ms = 0;
        w->fetch_again = 0;
        fetcher_kick(w);
        return;
    }
    /* Nothing to do: wait a little longer each time, up to the configured maximum. */
    w->idle_ms = w->idle_ms ? w->idle_ms * 2 : 1;
    if (w->idle_ms > (uint32_t)w->cfg->fetch_idle_max_ms)
        w->idle_ms = (uint32_t)w->cfg->fetch_idle_max_ms;
    uv_timer_start(&w->fetch_timer, fetcher_on_timer, w->idle_ms, 0);
    waker_arm(w); /* a producer's wake token ends the pause early */
}

void worker_fetch_wake(struct worker *w)
{
    if (w->fetch_in_flight) {
        w->fetch_again = 1;
        return;
    }
    if (!uv_is_active((uv_handle_t *)&w->fetch_timer))
        return; /* not pausing: fetching, or nothing to fetch for (full, quiet, stopping) */
    uv_timer_stop(&w->fetch_timer);
    w->idle_ms = 0;
    fetcher_kick(w);
}

void fetcher_kick(struct worker *w)
{
    if (w->fetch_in_flight || w->quiet || w->stopping || w->closing || !redis_is_up(w->redis))
        return;
    if (uv_is_active((uv_handle_t *)&w->fetch_timer))
        return; /* idle pause in progress */
    size_t want = runner_free_slots(w);
    if (want == 0)
        return;
    if (want > FETCH_MAX)
        want = FETCH_MAX;
    size_t order[256];
    size_t nq = fetcher_order(w, order);
    char prefix[32], nbuf[16], ttl[16];
    snprintf(prefix, sizeof prefix, "%llu", (unsigned long long)++w->seq);
    snprintf(nbuf, sizeof nbuf, "%zu", want);
    snprintf(ttl, sizeof ttl, "%lld", w->cfg->lease_ttl_s);
    const char *argv[7 + 256];
    int argc = 0;
    argv[argc++] = w->store_key;
    argv[argc++] = w->lease_key;
    argv[argc++] = KEY_PROCESSES;
    argv[argc++] = prefix;
    argv[argc++] = nbuf;
    argv[argc++] = w->identity;
    argv[argc++] = ttl;
    for (size_t i = 0; i < nq; i++)
        argv[argc++] = w->queues[order[i]].name;
    if (redis_eval(w->redis, &fetch_script, fetcher_on_reply, w, 3, argc, argv, NULL) == 0)
        w->fetch_in_flight = 1;
}

/* KEYS[1] store; ARGV: prefixes of lost fetches. RPUSH back every field "<prefix>.<n>:q". */
static struct redis_script reclaim_script =
    REDIS_SCRIPT("local n = 0\n"
                 "for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do\n"
                 "  local p = string.match(f, '^(%d+)%.')\n"
                 "  for i = 1, #ARGV do\n"
                 "    if p == ARGV[i] then\n"
                 "      local q = string.match(f, '^[^:]*:(.*)$')\n"
                 "      redis.call('RPUSH', 'queue:' .. q, redis.call('HGET', KEYS[1], f))\n"
                 "      redis.call('HDEL', KEYS[1], f)\n"
                 "      n = n + 1\n"
                 "      break\n"
                 "    end\n"
                 "  end\n"
                 "end\n"
                 "return n\n");

static void fetcher_on_reclaimed(struct redis *r, redisReply *reply, void *data)
{
    struct worker *w = data;
    (void)r;
    if (!reply || reply->type != REDIS_REPLY_INTEGER)
        return; /* still unreachable: tried again on the next reconnect */
    if (reply->integer > 0)
        log_warn("put %lld job(s) back on their queues: their fetch reply was lost with the "
                 "connection",
                 reply->integer);
    w->nlost = 0;
}

void fetcher_reclaim(struct worker *w)
{
    if (w->nlost == 0)
        return;
    char prefixes[32][24];
    const char *argv[33];
    argv[0] = w->store_key;
    for (size_t i = 0; i < w->nlost; i++) {
        snprintf(prefixes[i], sizeof prefixes[i], "%llu", w->lost_fetches[i]);
        argv[i + 1] = prefixes[i];
    }
    redis_eval(w->redis, &reclaim_script, fetcher_on_reclaimed, w, 1, (int)w->nlost + 1, argv,
               NULL);
}

int fetcher_init(struct worker *w)
{
    if (w->nqueues > 256)
        return -1;
    uv_timer_init(w->loop, &w->fetch_timer);
    w->fetch_timer.data = w;
    return 0;
}

void fetcher_close(struct worker *w)
{
    uv_timer_stop(&w->fetch_timer);
    uv_close((uv_handle_t *)&w->fetch_timer, NULL);
}

struct requeue_req {
    struct worker *w;
    void (*done)(struct worker *w, int ok);
};

static void fetcher_on_requeued(struct redis *r, redisReply *reply, void *data)
{
    struct requeue_req *req = data;
    (void)r;
    int ok = reply && reply->type == REDIS_REPLY_INTEGER;
    if (ok && reply->integer > 0)
        log_info("put %lld unfinished job(s) back on their queues", reply->integer);
    else if (!ok)
        log_error("could not put unfinished jobs back (%s); another process will recover them "
                  "once this one's lease expires",
                  reply && reply->str ? reply->str : "redis unavailable");
    req->done(req->w, ok);
    free(req);
}

void fetcher_requeue_all(struct worker *w, void (*done)(struct worker *w, int ok))
{
    const char *argv[3] = {w->store_key, KEY_PROCESSES, w->identity};
    struct requeue_req *req = xmalloc(sizeof *req);
    req->w = w;
    req->done = done;
    runner_flush(w); /* acks first: same connection, so they land before the requeue */
    if (redis_eval(w->redis, &requeue_script, fetcher_on_requeued, req, 2, 3, argv, NULL) != 0)
        fetcher_on_requeued(w->redis, NULL, req);
}
