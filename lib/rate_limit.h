/* rate_limit: fleet-wide token buckets kept in Redis, so every worker process together
 * stays under an outside service's limit (Chatwoot's 3000 requests/min per IP, Slack's
 * 1 message/s per webhook, Linear's hourly quota).
 *
 * One bucket is one Redis hash `tierone:ratelimit:<name>` {tokens, ts}, refilled at `rate`
 * tokens per second up to `burst`, read and written by one Lua call per take, timed by
 * Redis's own clock (TIME), so worker clocks do not matter.
 *
 * A caller that finds no token gets a *reservation*: the bucket goes into debt by one
 * token and the caller is told when that token will exist. With a key (the job's jid) the
 * reservation is remembered (`tierone:ratelimit:<name>:r:<key>`), and when the same key
 * comes back at or after that time it is granted without taking another token. So waiting
 * jobs line up in arrival order, each is rescheduled once (JOB_ERR_RESCHEDULE), and none
 * spins. Without a key (NULL) a denial takes nothing and just says how long to wait. */
#ifndef TIERONE_RATE_LIMIT_H
#define TIERONE_RATE_LIMIT_H

#include "job_error.h"
#include "redis.h"

struct rate_limit;

/* granted: 1 = go ahead now; 0 = no token: come back at wall time at_s (a reservation if a
 * key was given); -1 = Redis could not answer (at_s 0). */
typedef void (*rate_limit_cb)(int granted, double at_s, void *arg);

/* A bucket `name` on connection r (borrowed; must outlive the limiter): rate tokens per
 * second (> 0), burst = bucket size (>= 1). Returns NULL with a reason in *err (static
 * string) for bad numbers or an empty name. */
struct rate_limit *rate_limit_new(struct redis *r, const char *name, double rate, double burst,
                                  const char **err);
/* Free the limiter (NULL is a no-op). Takes in flight still call back (with -1 if Redis
 * closes), so free only after they are done or after redis_close. */
void rate_limit_free(struct rate_limit *rl);

/* Take one token for `key` (a job's jid; NULL: no reservation). Returns 0 and calls
 * cb(granted, at_s, arg) exactly once later; or -1 when Redis is not connected (cb never
 * runs). */
int rate_limit_take(struct rate_limit *rl, const char *key, rate_limit_cb cb, void *arg);

/* The bucket's name (as given) and settings. */
const char *rate_limit_name(const struct rate_limit *rl);
double rate_limit_rate(const struct rate_limit *rl);
double rate_limit_burst(const struct rate_limit *rl);

/* The error a job finishes with when it got no token: JOB_ERR_RESCHEDULE at at_s, class
 * "Tierone::RateLimit", message naming the bucket. New error; caller owns it. */
struct job_error *rate_limit_job_error(const struct rate_limit *rl, double at_s);

#endif
