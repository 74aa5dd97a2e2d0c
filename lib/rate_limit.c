/* rate_limit: a token bucket with reservations, one Lua call per take (see the header). */
#include "rate_limit.h"

#include "clock.h"
#include "xalloc.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* KEYS[1] bucket hash, KEYS[2] reservation key ("" : none); ARGV rate, burst.
 * Returns {granted (1/0), wall time of the answer, seconds to wait} as strings, all on
 * Redis's clock. Times are stored with microseconds: tostring's 14 digits would round away
 * up to 50 us per call, which at thousands of calls a second over-grants by a quarter. A key that
 * holds a due reservation is granted without a new token; one that is early is told to wait the
 * rest. A denial with a key puts the bucket one token into debt and records when that token exists.
 */
static struct redis_script take_script = REDIS_SCRIPT(
    "if redis.replicate_commands then pcall(redis.replicate_commands) end\n"
    "local function num(x) return string.format('%.6f', x) end\n"
    "local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])\n"
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) + tonumber(t[2]) / 1000000\n"
    "local keyed = KEYS[2] ~= ''\n"
    "if keyed then\n"
    "  local r = tonumber(redis.call('GET', KEYS[2]))\n"
    "  if r then\n"
    "    if r <= now + 0.001 then redis.call('DEL', KEYS[2]); return {'1', num(now), '0'} "
    "end\n"
    "    return {'0', num(now), num(r - now)}\n"
    "  end\n"
    "end\n"
    "local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')\n"
    "local tokens = tonumber(b[1]) or burst\n"
    "local ts = tonumber(b[2]) or now\n"
    "if now > ts then tokens = math.min(burst, tokens + (now - ts) * rate) end\n"
    "local granted, wait = '1', 0\n"
    "if tokens >= 1 then\n"
    "  tokens = tokens - 1\n"
    "elseif keyed then\n"
    "  tokens = tokens - 1\n"
    "  wait = -tokens / rate\n"
    "  granted = '0'\n"
    "  redis.call('SET', KEYS[2], num(now + wait), 'PX', math.ceil(wait * 1000) + 3600000)\n"
    "else\n"
    "  wait = (1 - tokens) / rate\n"
    "  granted = '0'\n"
    "end\n"
    "redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', num(now))\n"
    "redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 60000)\n"
    "return {granted, num(now), num(wait)}\n");

struct rate_limit {
    struct redis *redis;
    char *name;
    char *key; /* tierone:ratelimit:<name> */
    double rate, burst;
    char rate_arg[32], burst_arg[32]; /* the script's ARGV, formatted once */
};

struct take {
    rate_limit_cb cb;
    void *arg;
};

struct rate_limit *rate_limit_new(struct redis *r, const char *name, double rate, double burst,
                                  const char **err)
{
    if (!name || !*name) {
        *err = "rate limit needs a name";
        return NULL;
    }
    if (!(rate > 0) || !isfinite(rate) || !(burst >= 1) || !isfinite(burst)) {
        *err = "rate limit needs rate > 0 and burst >= 1";
        return NULL;
    }
    struct rate_limit *rl = xcalloc(1, sizeof *rl);
    rl->redis = r;
    rl->name = xstrdup(name);
    rl->key = xasprintf("tierone:ratelimit:%s", name);
    rl->rate = rate;
    rl->burst = burst;
    snprintf(rl->rate_arg, sizeof rl->rate_arg, "%.17g", rate);
    snprintf(rl->burst_arg, sizeof rl->burst_arg, "%.17g", burst);
    return rl;
}

void rate_limit_free(struct rate_limit *rl)
{
    if (!rl)
        return;
    free(rl->name);
    free(rl->key);
    free(rl);
}

static double reply_number(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_STRING ? atof(r->str) : -1;
}

/* Redis answers on its own clock; the caller's wall clock may differ, so the wait (not the
 * absolute time) is what crosses over: at = our now + wait. */
static void rate_limit_on_reply(struct redis *r, redisReply *reply, void *data)
{
    struct take *t = data;
    int granted = -1;
    double at = 0;
    if (reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == 3) {
        granted = reply_number(reply->element[0]) == 1 ? 1 : 0;
        double wait = reply_number(reply->element[2]);
        at = clock_wall_s() + (wait > 0 ? wait : 0);
    }
    t->cb(granted, granted == -1 ? 0 : at, t->arg);
    free(t);
}

int rate_limit_take(struct rate_limit *rl, const char *key, rate_limit_cb cb, void *arg)
{
    char *rkey = key && *key ? xasprintf("%s:r:%s", rl->key, key) : xstrdup("");
    const char *argv[4] = {rl->key, rkey, rl->rate_arg, rl->burst_arg};
    struct take *t = xmalloc(sizeof *t);
    t->cb = cb;
    t->arg = arg;
    int rc = redis_eval(rl->redis, &take_script, rate_limit_on_reply, t, 2, 4, argv, NULL);
    free(rkey);
    if (rc != 0)
        free(t);
    return rc;
}

const char *rate_limit_name(const struct rate_limit *rl)
{
    return rl->name;
}

double rate_limit_rate(const struct rate_limit *rl)
{
    return rl->rate;
}

double rate_limit_burst(const struct rate_limit *rl)
{
    return rl->burst;
}

struct job_error *rate_limit_job_error(const struct rate_limit *rl, double at_s)
{
    return job_error_reschedule(at_s, "Tierone::RateLimit",
                                "no token in rate limit %s (%.4g/s, burst %.4g)", rl->name,
                                rl->rate, rl->burst);
}
