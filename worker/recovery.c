/* recovery: gives the jobs of crashed processes back to their queues.
 *
 * Every process refreshes its lease (tierone:lease:<identity>, EX lease_ttl) with each
 * heartbeat. Every recovery_interval_ms, one live process (whoever takes
 * tierone:recovery:lock first) looks at each identity in tierone:processes whose lease has
 * expired and, in one Lua call, pushes each job in its in-progress store back to the head of
 * its queue (RPUSH). Each job's recoveries are counted by the SHA-1 of its bytes
 * (tierone:recovered:<sha1>, kept 7 days): a job found orphaned max_recoveries times (3)
 * has probably been killing its process, so it is left for this file to send to the dead
 * set with error_class "Tierone::PoisonPill" instead of being run again. */
#include "engine.h"
#include "clock.h"
#include "log.h"
#include "xalloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RECOVERED_TTL_S (7 * 24 * 3600)

/* KEYS[1] registry; ARGV[1] own identity, ARGV[2] max recoveries, ARGV[3] counter ttl.
 * Returns {moved, {store, field, job, count, ...}} with the poison pills left in place. */
static struct redis_script recover_script = REDIS_SCRIPT(
    "local poison = {}\n"
    "local moved = 0\n"
    "for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do\n"
    "  if id ~= ARGV[1] and redis.call('EXISTS', 'tierone:lease:' .. id) == 0 then\n"
    "    local store = 'tierone:inprogress:' .. id\n"
    "    local all = redis.call('HGETALL', store)\n"
    "    for i = 1, #all, 2 do\n"
    "      local field, job = all[i], all[i + 1]\n"
    "      local ck = 'tierone:recovered:' .. redis.sha1hex(job)\n"
    "      local n = redis.call('INCR', ck)\n"
    "      redis.call('EXPIRE', ck, ARGV[3])\n"
    "      if n >= tonumber(ARGV[2]) then\n"
    "        poison[#poison + 1] = store\n"
    "        poison[#poison + 1] = field\n"
    "        poison[#poison + 1] = job\n"
    "        poison[#poison + 1] = tostring(n)\n"
    "      else\n"
    "        local q = string.match(field, '^[^:]*:(.*)$')\n"
    "        redis.call('RPUSH', 'queue:' .. q, job)\n"
    "        redis.call('HDEL', store, field)\n"
    "        moved = moved + 1\n"
    "      end\n"
    "    end\n"
    "    if redis.call('EXISTS', store) == 0 then redis.call('SREM', KEYS[1], id) end\n"
    "  end\n"
    "end\n"
    "return {moved, poison}\n");

static void recovery_on_done(struct redis *r, redisReply *reply, void *data)
{
    struct worker *w = data;
    (void)r;
    w->recovery_in_flight = 0;
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 2) {
        if (reply && reply->type == REDIS_REPLY_ERROR)
            log_error("recovery failed: %s", reply->str);
        return;
    }
    long long moved = reply->element[0]->integer;
    if (moved > 0) {
        log_warn("recovered %lld job(s) from crashed processes; they run again", moved);
        w->total_recovered += moved;
    }
    redisReply *poison = reply->element[1];
    for (size_t i = 0; i + 3 < poison->elements; i += 4) {
        redisReply *store = poison->element[i], *field = poison->element[i + 1],
                   *job = poison->element[i + 2], *count = poison->element[i + 3];
        char msg[200];
        snprintf(msg, sizeof msg,
                 "job was running in a process that died %.*s times; not retried again",
                 (int)count->len, count->str);
        size_t len = 0;
        char *payload =
            job_poison_payload(job->str, job->len, msg,
                               (enum job_ts_format)w->cfg->timestamp_format, clock_wall_s(), &len);
        char *skey = xstrndup(store->str, store->len);
        char *fkey = xstrndup(field->str, field->len);
        log_error("poison pill moved to the dead set: %s", msg);
        if (payload)
            runner_kill(w, skey, fkey, payload, len);
        else
            runner_kill(w, skey, fkey, job->str, job->len); /* not JSON: keep it as it is */
        free(payload);
        free(skey);
        free(fkey);
    }
}

static void recovery_on_lock(struct redis *r, redisReply *reply, void *data)
{
    struct worker *w = data;
    if (!reply || reply->type != REDIS_REPLY_STATUS || w->closing) {
        w->recovery_in_flight = 0; /* someone else holds the lock this round */
        return;
    }
    char maxr[32], ttl[32];
    snprintf(maxr, sizeof maxr, "%lld", w->cfg->max_recoveries);
    snprintf(ttl, sizeof ttl, "%d", RECOVERED_TTL_S);
    const char *argv[4] = {KEY_PROCESSES, w->identity, maxr, ttl};
    if (redis_eval(r, &recover_script, recovery_on_done, w, 1, 4, argv, NULL) != 0)
        w->recovery_in_flight = 0;
}

static void recovery_on_timer(uv_timer_t *t)
{
    struct worker *w = t->data;
    if (w->recovery_in_flight || w->stopping || !redis_is_up(w->redis))
        return;
    char px[32];
    snprintf(px, sizeof px, "%lld", w->cfg->recovery_interval_ms);
    const char *argv[6] = {"SET", KEY_RECOVERY_LOCK, w->identity, "NX", "PX", px};
    if (redis_command_argv(w->redis, recovery_on_lock, w, 6, argv, NULL) == 0)
        w->recovery_in_flight = 1;
}

int recovery_init(struct worker *w)
{
    uv_timer_init(w->loop, &w->recovery_timer);
    w->recovery_timer.data = w;
    uint64_t every = (uint64_t)w->cfg->recovery_interval_ms;
    uv_timer_start(&w->recovery_timer, recovery_on_timer, every, every);
    return 0;
}

void recovery_close(struct worker *w)
{
    uv_timer_stop(&w->recovery_timer);
    uv_close((uv_handle_t *)&w->recovery_timer, NULL);
}
