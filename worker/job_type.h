/* job_type: the contract between the engine and one job type in queues/.
 *
 * A job type is a class name and a perform function. The engine parses the job, finds the
 * type by class, and calls perform(ctx). perform starts whatever asynchronous work the job
 * needs and returns; the job finishes when that work calls job_done(ctx, err) exactly once,
 * from any callback on the loop (or from perform itself). After job_done, ctx is gone.
 *
 * Errors (lib/job_error.h) say what the engine does next: retry with Sidekiq's backoff,
 * retry at a given time, the dead set at once, or (a rate limit) run again later unchanged.
 * A type that holds handles of its own (timers) sets cancel: at a hard shutdown the engine
 * puts the job back on its queue and calls cancel(ctx), which must stop the work and call
 * job_done soon (its outcome is then ignored). */
#ifndef TIERONE_JOB_TYPE_H
#define TIERONE_JOB_TYPE_H

#include "job.h"
#include "job_error.h"

#include <uv.h>

struct job_ctx;
struct worker;

struct job_type {
    const char *klass;                    /* Sidekiq class name, e.g. "Tierone::Noop" */
    void (*perform)(struct job_ctx *ctx); /* start the job */
    void (*cancel)(struct job_ctx *ctx);  /* optional: stop it (hard shutdown) */
};

/* Finish the job: err NULL = success; otherwise the engine takes ownership of err. */
void job_done(struct job_ctx *ctx, struct job_error *err);

/* The parsed job (class, jid, args...). Valid until job_done. */
const struct job *job_ctx_job(const struct job_ctx *ctx);
/* The loop the job runs on. */
uv_loop_t *job_ctx_loop(const struct job_ctx *ctx);
/* The worker (for shared clients: Redis, HTTP, PostgreSQL). */
struct worker *job_ctx_worker(const struct job_ctx *ctx);
/* A pointer the job type may use for its own state (NULL at start; the type frees it). */
void *job_ctx_get_state(const struct job_ctx *ctx);
void job_ctx_set_state(struct job_ctx *ctx, void *state);

#endif
