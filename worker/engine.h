/* engine: what the worker's own files share and nothing else sees (job_type.h is the
 * public side). One section per file. Redis keys of our own live under "tierone:". */
#ifndef TIERONE_ENGINE_H
#define TIERONE_ENGINE_H

#include "worker.h"

/* Our keys (DESIGN.md §3). */
#define KEY_INPROGRESS_FMT "tierone:inprogress:%s" /* HASH "<seq>:<queue>" -> raw job */
#define KEY_LEASE_FMT      "tierone:lease:%s"      /* STRING, EX lease_ttl: we are alive */
#define KEY_PROCESSES      "tierone:processes"     /* SET of identities with a store */
#define KEY_RECOVERY_LOCK  "tierone:recovery:lock"

/* ---- runner.c: one running job ------------------------------------------------------- */

enum job_ctx_state { CTX_FREE = 0, CTX_RUNNING, CTX_ABANDONED };

struct job_ctx {
    struct worker *w;
    enum job_ctx_state state;
    struct job job; /* parsed job; job.raw is the exact fetched bytes */
    const struct job_type *type;
    char *field;      /* in-progress hash field "<seq>:<queue>" */
    char *queue;      /* queue it was fetched from */
    long long run_at; /* wall seconds, for the work hash */
    uint64_t started_ns;
    void *state_ptr; /* the job type's own state */
    char tid[24];    /* Sidekiq "tid" for the work hash */
    struct job_ctx *next_free;
};

/* Run the fetched job (field, raw) from queue: parse, find its type, perform. Takes
 * ownership of field; raw is borrowed (the parsed job keeps its own copy). Called by the
 * fetcher for each fetched job, straight from the Redis reply. */
void runner_start(struct worker *w, char *field, const char *queue, const char *raw, size_t len);
/* Number of free slots. */
size_t runner_free_slots(const struct worker *w);
/* Write outcomes waiting for Redis, if connected. */
void runner_flush(struct worker *w);
/* Hard shutdown: cancel every running job (after the store was requeued). */
void runner_abandon_all(struct worker *w);
/* Close runner handles. */
void runner_close(struct worker *w);
/* Send a payload to the dead set with Sidekiq's trim, removing field from the store.
 * Used by runner (exhausted retries) and recovery (poison pills). store_key may be NULL. */
void runner_kill(struct worker *w, const char *store_key, const char *field, const char *payload,
                 size_t len);
int runner_init(struct worker *w);

/* ---- fetcher.c ----------------------------------------------------------------------- */

int fetcher_init(struct worker *w);
/* Fetch if there is room and nothing stops us (called after a job ends, on Redis up...). */
void fetcher_kick(struct worker *w);
void fetcher_close(struct worker *w);
/* Parse the TIERONE_QUEUES list into w->queues. */
int fetcher_parse_queues(struct worker *w, const char *spec, char *err, size_t errcap);
/* After a reconnect: put back on their queues the jobs of fetches whose reply was lost
 * (the Lua call may have run and stored them, but nobody here runs them). */
void fetcher_reclaim(struct worker *w);
/* Put every job of our in-progress store back on its queue (RPUSH), then call done. */
void fetcher_requeue_all(struct worker *w, void (*done)(struct worker *w, int ok));

/* ---- waker.c ------------------------------------------------------------------------- */

/* Open the wake connection (on failure, logged, the worker only polls). */
void waker_init(struct worker *w);
/* The fetcher started an idle pause: block on the wake lists unless already waiting. */
void waker_arm(struct worker *w);
void waker_close(struct worker *w);

/* ---- poller.c ------------------------------------------------------------------------ */

int poller_init(struct worker *w);
void poller_close(struct worker *w);

/* ---- heartbeat.c --------------------------------------------------------------------- */

int heartbeat_init(struct worker *w);
/* Beat now (also used at start and on quiet). */
void heartbeat_beat(struct worker *w);
/* Flush stats and remove our process from Redis (clean exit), then call done. */
void heartbeat_clear(struct worker *w, void (*done)(struct worker *w));
void heartbeat_close(struct worker *w);

/* ---- recovery.c ---------------------------------------------------------------------- */

int recovery_init(struct worker *w);
void recovery_close(struct worker *w);

/* ---- monitor.c: /metrics, /healthz, /readyz ---------------------------------------- */

/* Start the admin server when admin_port > 0. Returns 0, or -1 with a reason in err. */
int monitor_start(struct worker *w, char *err, size_t errcap);
void monitor_close(struct worker *w);

/* ---- worker.c ------------------------------------------------------------------------ */

/* Find the type registered for klass, or NULL. */
const struct job_type *worker_find_type(const struct worker *w, const char *klass);
/* Called by the runner whenever a job finishes (drives shutdown completion). */
void worker_job_finished(struct worker *w);

#endif
