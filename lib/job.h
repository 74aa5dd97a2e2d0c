/* job: the Sidekiq job payload, read and rewritten with byte fidelity.
 *
 * A job is one JSON object (SIDEKIQ.md §1). Redis identifies ZSET members and list
 * elements by their exact bytes, and Ruby, Sidekiq 8 and Chatwoot's own jobs may sit in
 * the same sets, so tierone never re-encodes a job through a JSON library: it keeps the
 * raw bytes and splices changed top-level fields in place (json_edit.h). Unknown keys,
 * key order, big integers, float-vs-integer timestamps and string escapes survive.
 *
 * Times: read with the magnitude rule (a number >= 1e11 is milliseconds, else seconds;
 * numeric strings accepted); written in the configured format (float seconds with a
 * decimal point, or integer milliseconds). */
#ifndef TIERONE_JOB_H
#define TIERONE_JOB_H

#include <jansson.h>
#include <stddef.h>

enum job_ts_format {
    JOB_TS_FLOAT_SECONDS = 0, /* Sidekiq 6.x/7.x: 1712345678.123456 */
    JOB_TS_INT_MILLIS = 1,    /* Sidekiq 8.x: 1712345678123 */
};

/* How the job's "retry" field reads, with Ruby's truthiness. */
enum job_retry_mode {
    JOB_RETRY_DEFAULT = 0, /* true, null, missing, or any non-integer truthy value: max = default */
    JOB_RETRY_MAX,         /* an integer N: at most N retries; 0 = dead at the first failure */
    JOB_RETRY_DISCARD,     /* false: on failure the job is dropped (death handlers only) */
};

/* A parsed job. Owns every pointer in it (job_free). */
struct job {
    char *raw; /* exact bytes as read from Redis, NUL-terminated */
    size_t raw_len;
    char *klass;       /* "class"; NULL if missing or not a string */
    char *jid;         /* "jid"; NULL if missing or not a string */
    char *queue;       /* "queue" field; NULL if missing */
    char *retry_queue; /* "retry_queue"; NULL if missing */
    json_t *args;      /* "args" (a new reference), NULL if missing */
    enum job_retry_mode retry_mode;
    long long retry_max; /* with JOB_RETRY_MAX */
    int has_retry_count; /* the job failed before */
    long long retry_count;
    int dead;           /* 0 when "dead": false (do not keep it in the morgue) */
    double created_at;  /* seconds, 0 if missing */
    double enqueued_at; /* seconds, 0 if missing */
};

/* Parse raw (len bytes; need not be NUL-terminated) into out. Accepts what Ruby's JSON
 * accepts in practice (json_edit.h): integers beyond 64 bits anywhere (in "args" they make
 * jansson read every integer of args as a real), invalid UTF-8 in strings, "\u0063lass"
 * style keys, duplicate keys (the last wins). Returns 0, or -1 with a human-readable reason
 * in err (errcap bytes; err may be NULL), e.g. "invalid JSON at byte 17: unexpected '}'",
 * "JSON value is an array, not an object", or "cannot read args: ..." when jansson cannot
 * represent args (1e400, invalid UTF-8). On failure out holds nothing that needs freeing. */
int job_parse(const char *raw, size_t len, struct job *out, char *err, size_t errcap);
/* Free everything the job owns (safe on a zeroed struct). */
void job_free(struct job *j);

/* Write a wall time as JSON number text in the given format into out (cap >= 32): float
 * seconds as Ruby's Float#to_s writes them (shortest round-trip digits, always a decimal
 * point: "1712345678.123456", "1712345678.0"), or integer milliseconds ("1712345678123"). */
void job_format_time(char *out, size_t cap, enum job_ts_format fmt, double wall_s);
/* Read a JSON number or numeric string as epoch seconds with the magnitude rule;
 * returns 0 when v is not a time. */
double job_time_seconds(const json_t *v);

/* A failure, as Sidekiq records it. */
struct job_failure {
    const char *error_class;   /* e.g. "Tierone::HttpError" */
    const char *error_message; /* made valid UTF-8 (each invalid sequence becomes U+FFFD,
                                * as Ruby's scrub), then cut to at most 10,000 bytes at a
                                * character boundary */
    const char *fetched_queue; /* queue the job was fetched from */
};

/* The payload Sidekiq's retry handler would write after this failure: "queue" set to
 * retry_queue or the fetched queue, error_message, error_class, and either failed_at +
 * retry_count 0 (first failure) or retried_at + retry_count+1. Existing keys change in
 * place, new ones are appended in Ruby's order, so for a job Ruby wrote the result equals
 * Sidekiq 6.4's JobRetry output byte for byte (tests/ruby/test_client_interop.rb). Returns a
 * new string (caller frees) and its length in *out_len; *new_count (may be NULL) receives
 * the new retry_count. */
char *job_failed_payload(const struct job *j, const struct job_failure *f, enum job_ts_format fmt,
                         double now_s, size_t *out_len, long long *new_count);

/* 1 if a job with this retry_count (after the failure) may be retried, given the default
 * maximum (25 in Sidekiq). 0 = retries exhausted (dead set, unless dead: false). */
int job_may_retry(const struct job *j, long long new_count, long long default_max);

/* Sidekiq's backoff in seconds for retry_count `count`: count^4 + 15 + rand(10)*(count+1)
 * (6.4 jitter; rand from getrandom(2), unbiased). */
double job_retry_delay(long long count);

/* The payload the poller pushes: raw with only "enqueued_at" set to now (added at the end
 * if absent). Also returns the job's queue name (new string, "default" if the job has
 * none) in *queue. Returns NULL (and a reason in err) if raw is not a JSON object. */
char *job_enqueue_payload(const char *raw, size_t len, enum job_ts_format fmt, double now_s,
                          size_t *out_len, char **queue, char *err, size_t errcap);

/* The payload the recovery code sends to the dead set for a poison pill: like
 * job_failed_payload with error_class "Tierone::PoisonPill", the given message and the
 * job's own queue as the fetched queue. Returns NULL when job_parse rejects raw (the caller
 * then keeps raw as it is). */
char *job_poison_payload(const char *raw, size_t len, const char *message, enum job_ts_format fmt,
                         double now_s, size_t *out_len);

#endif
