/* sidekiq_client: enqueue jobs the way Ruby's Sidekiq::Client does (SIDEKIQ.md §2.2).
 *
 *  - jid: 24 lowercase hex characters from 12 random bytes (SecureRandom.hex(12)).
 *  - payload keys in Ruby's order: {"retry":…,"queue":…,"class":…,"args":…,<extra>,
 *    "jid":…,"created_at":…,"enqueued_at":…}; args and extra fields are used verbatim.
 *  - push now: `SADD queues NAME` + `LPUSH queue:NAME payload…` pipelined (not MULTI);
 *    a bulk push sends every payload in one LPUSH.
 *  - push at a time (spec.at > 0): `ZADD schedule <at> payload…`, with no "enqueued_at"
 *    and no "at" in the payload, and no SADD.
 *
 * Two transports: asynchronous on a struct redis (libuv; for the daemons) and blocking on
 * hiredis's redisContext (for the CLI and tests). */
#ifndef TIERONE_SIDEKIQ_CLIENT_H
#define TIERONE_SIDEKIQ_CLIENT_H

#include "job.h"
#include "redis.h"

#include <hiredis/hiredis.h>
#include <stddef.h>

#define SIDEKIQ_JID_LEN  24
#define SIDEKIQ_JID_SIZE (SIDEKIQ_JID_LEN + 1)

/* The job's "retry" value. The zero value is Sidekiq's default, true. */
enum sidekiq_retry {
    SIDEKIQ_RETRY_TRUE = 0, /* "retry":true (up to the server's maximum, 25) */
    SIDEKIQ_RETRY_FALSE,    /* "retry":false (never retried, not kept in dead) */
    SIDEKIQ_RETRY_MAX,      /* "retry":N with N = retry_max (0 = dead at the first failure) */
};

/* What to enqueue. Only klass is required; a zeroed struct plus klass is a valid job. */
struct sidekiq_job_spec {
    const char *klass;        /* "class", e.g. "Tierone::ChatwootEvent"; required */
    const char *queue;        /* NULL = "default"; must not be empty */
    const char *args;         /* raw JSON array text, used verbatim; NULL = "[]" */
    size_t args_len;          /* 0 = strlen(args) */
    enum sidekiq_retry retry; /* default true */
    long long retry_max;      /* with SIDEKIQ_RETRY_MAX */
    const char *extra;        /* optional raw JSON object whose members are copied verbatim
                               * after "args", e.g. {"retry_queue":"low","tags":["a"]}; it may
                               * not set class, queue, args, retry, jid, created_at,
                               * enqueued_at or at */
    const char *jid;          /* optional: this jid (1-24 characters) instead of a new one */
    double at;                /* > 0: schedule for this epoch time (seconds) */
};

/* How this site's Sidekiq looks. A NULL opts means float seconds and no key prefix. */
struct sidekiq_opts {
    enum job_ts_format ts_format; /* created_at / enqueued_at format (SIDEKIQ.md §1.2) */
    const char *key_prefix;       /* redis-namespace prefix such as "myapp:" (6.x); NULL = none */
};

/* A new jid (24 lowercase hex characters and a NUL) from getrandom(2), drawn in blocks. */
void sidekiq_jid_new(char out[SIDEKIQ_JID_SIZE]);

/* Build one job payload for spec at wall time now_s (created_at, and enqueued_at unless
 * spec->at > 0). The jid used goes to jid_out (may be NULL). Returns a new NUL-terminated
 * string (caller frees) with its length in *out_len, or NULL with a reason in err when the
 * spec is invalid (no class, empty queue, args not a JSON array, extra not a JSON object or
 * setting a reserved key). */
char *sidekiq_payload(const struct sidekiq_job_spec *spec, const struct sidekiq_opts *opts,
                      double now_s, char jid_out[SIDEKIQ_JID_SIZE], size_t *out_len, char *err,
                      size_t errcap);

/* Completion of an asynchronous push: error is NULL on success, else a reason (a Redis
 * error reply, or the connection was lost before the reply: the push may or may not have
 * happened). error is valid only during the call. */
typedef void (*sidekiq_push_cb)(const char *error, void *data);

/* Push one job on r (now, or at spec->at). The jid goes to jid_out (may be NULL) at once.
 * Returns 0 and cb runs exactly once later from the loop; or -1 with a reason in err (invalid
 * spec, or Redis not connected) and cb never runs. */
int sidekiq_push(struct redis *r, const struct sidekiq_opts *opts,
                 const struct sidekiq_job_spec *spec, char jid_out[SIDEKIQ_JID_SIZE],
                 sidekiq_push_cb cb, void *data, char *err, size_t errcap);

/* Push n jobs that share spec (spec->args and spec->jid are ignored) with args[i] (raw JSON
 * array text each) in one LPUSH (or one ZADD when spec->at > 0), like push_bulk. Each job
 * gets its own jid, written to jids_out[i] when jids_out is not NULL. Same callback contract
 * as sidekiq_push; n == 0 is an error here (there would be no callback to run). */
int sidekiq_push_bulk(struct redis *r, const struct sidekiq_opts *opts,
                      const struct sidekiq_job_spec *spec, const char *const *args, size_t n,
                      char (*jids_out)[SIDEKIQ_JID_SIZE], sidekiq_push_cb cb, void *data, char *err,
                      size_t errcap);

/* Blocking versions on a connected redisContext (db already selected). Return 0 when Redis
 * confirmed every command, or -1 with a reason in err. sidekiq_push_bulk_sync with n == 0
 * does nothing and returns 0, as Ruby's push_bulk does. */
int sidekiq_push_sync(redisContext *c, const struct sidekiq_opts *opts,
                      const struct sidekiq_job_spec *spec, char jid_out[SIDEKIQ_JID_SIZE],
                      char *err, size_t errcap);
int sidekiq_push_bulk_sync(redisContext *c, const struct sidekiq_opts *opts,
                           const struct sidekiq_job_spec *spec, const char *const *args, size_t n,
                           char (*jids_out)[SIDEKIQ_JID_SIZE], char *err, size_t errcap);
/* Convenience: sidekiq_push_sync with spec->at replaced by at_s. */
int sidekiq_push_at_sync(redisContext *c, const struct sidekiq_opts *opts,
                         const struct sidekiq_job_spec *spec, double at_s,
                         char jid_out[SIDEKIQ_JID_SIZE], char *err, size_t errcap);

#endif
