/* job_error: how a job failed, in the terms the engine acts on (Sidekiq's retry rules).
 *
 * It lives in lib/ because the clients of outside services (HTTP, PostgreSQL, Chatwoot,
 * the LLM, Slack, Linear) classify their own failures: a job passes the error it got from
 * a client straight to job_done() (worker/job_type.h).
 *
 * Kinds:
 *   JOB_ERR_RETRY      - retryable: Sidekiq's backoff (count^4 + 15 + jitter), then dead;
 *   JOB_ERR_PERMANENT  - retrying cannot help (401, 404, bad arguments): straight to dead;
 *   JOB_ERR_RETRY_AT   - retryable at a given wall time (a Retry-After); counts as a retry;
 *   JOB_ERR_RESCHEDULE - not a failure: the job found no rate-limit token, so it goes back
 *                        to the `schedule` set unchanged (no retry_count, no error fields)
 *                        to run at retry_at; it never reaches the dead set this way. */
#ifndef TIERONE_JOB_ERROR_H
#define TIERONE_JOB_ERROR_H

enum job_err_kind { JOB_ERR_RETRY = 0, JOB_ERR_PERMANENT, JOB_ERR_RETRY_AT, JOB_ERR_RESCHEDULE };

/* A job failure. Owned by whoever holds it; job_done takes ownership. */
struct job_error {
    enum job_err_kind kind;
    char *error_class;   /* e.g. "Tierone::Chatwoot::Timeout" (Sidekiq's error_class) */
    char *error_message; /* human-readable reason (Sidekiq's error_message) */
    double retry_at;     /* wall seconds, with JOB_ERR_RETRY_AT and JOB_ERR_RESCHEDULE */
};

/* New error with a printf message. error_class NULL means "RuntimeError". */
struct job_error *job_error_new(enum job_err_kind kind, const char *error_class, const char *fmt,
                                ...) __attribute__((format(printf, 3, 4)));
/* New JOB_ERR_RETRY_AT error for wall time at_s. */
struct job_error *job_error_retry_at(double at_s, const char *error_class, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* New JOB_ERR_RESCHEDULE "error": run the job again, unchanged, at wall time at_s. */
struct job_error *job_error_reschedule(double at_s, const char *error_class, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Name of a kind: "retry", "permanent", "retry_at", "reschedule". */
const char *job_error_kind_name(enum job_err_kind kind);
/* Free e (NULL is a no-op). */
void job_error_free(struct job_error *e);

#endif
