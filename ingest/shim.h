/* shim: what tierone-ingest does with one HTTP request (an http_server handler).
 *
 * Routes:
 *   POST /webhooks/chatwoot          account webhooks and API inboxes (signed)
 *   POST /webhooks/agent-bot         Agent Bot outgoing_url (signed)
 *   POST /webhooks/<either>/<token>  the same, unsigned, only when an unsigned token is
 *                                    configured and <token> equals it (Chatwoot before
 *                                    4.11.2 / 4.13.0 signs nothing); a wrong token is a 404
 *   GET|HEAD /healthz, /readyz (and /metrics when serve_metrics is set)
 * Other paths: 404; other methods on these paths: 405 with Allow.
 *
 * A webhook is checked in this order: signature and timestamp (401, reason in the body),
 * body is one JSON object (400, reason in the body), X-Chatwoot-Delivery is printable ASCII
 * of at most OUTBOX_MAX_DELIVERY bytes (400). It is then wrapped, not interpreted, as one
 * Sidekiq job and submitted; the answer is 202 once the job is in Redis, recognised as a
 * repeat delivery, or durable in the spool, and 500 when none of these worked (so Chatwoot
 * retries Agent Bot deliveries).
 *
 * The job (Sidekiq's convention of one hash argument for named fields):
 *
 *   {"retry":true,"queue":"events","class":"Tierone::ChatwootEvent",
 *    "args":[{"body":"<raw request body as a JSON string, byte for byte>",
 *             "delivery":"<X-Chatwoot-Delivery>"|null,
 *             "timestamp":<X-Chatwoot-Timestamp as an integer>|null,
 *             "path":"chatwoot"|"agent-bot",
 *             "received_at":<wall clock at receipt, float seconds>}],
 *    "jid":"<24 hex>","created_at":<t>,"enqueued_at":<t>}
 *
 * created_at / enqueued_at use the configured timestamp format and are the acceptance time
 * (also for jobs that reach Redis later from the spool). The body string keeps every byte:
 * Rails' \u003c escapes in the original body are just bytes of that body and are escaped
 * again, so JSON-decoding args[0]["body"] gives exactly the bytes Chatwoot signed.
 *
 * The shim does not own the queueing: it hands each job to a submit function (the outbox
 * in the daemon, a fake in the fuzzer). */
#ifndef TIERONE_INGEST_SHIM_H
#define TIERONE_INGEST_SHIM_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "http_server.h"
#include "job.h"
#include "metrics.h"
#include "outbox.h"
#include "signature.h"

#define SHIM_JOB_CLASS "Tierone::ChatwootEvent"
#define SHIM_JOB_QUEUE "events"

/* Same contract as outbox_submit (ud is submit_ud): payload is a malloc'ed buffer of len
 * bytes that the submit function takes over in every case (it frees it, also on -1). */
typedef int (*shim_submit_fn)(void *ud, const char *delivery, char *payload, size_t len,
                              outbox_cb cb, void *data, char *err, size_t errcap);
/* NULL when ready, else a short reason for /readyz's 503. */
typedef const char *(*shim_ready_fn)(void *ud);

struct shim_opts {
    const struct signature_keys *keys; /* borrowed; must outlive the shim */
    const char *unsigned_token;        /* copied; NULL or "" = unsigned deliveries refused */
    int64_t tolerance_s;               /* timestamp window either way; 0 = 300 */
    enum job_ts_format ts_format;      /* created_at / enqueued_at */
    struct metrics_registry *metrics;  /* optional; families are registered here */
    int serve_metrics;                 /* also answer GET /metrics on this server */
    shim_submit_fn submit;             /* required */
    void *submit_ud;
    shim_ready_fn ready; /* optional */
    void *ready_ud;
    double (*now)(void); /* wall clock in seconds; NULL = clock_wall_s */
};

struct shim;

/* A shim with these options (copied). Never fails. */
struct shim *shim_new(const struct shim_opts *opts);
/* Free it. No request may be in flight (the http server must be done). */
void shim_free(struct shim *s);

/* The http_handler_fn: ud is the shim. */
void shim_handle(struct http_request *req, void *ud);

/* The http_error_fn (http_server_opts.on_error, error_ud = the shim): counts the error
 * answers the HTTP layer sends itself (400, 408, 411, 413, 431, 503) in
 * tierone_ingest_requests_total, under the path they were for ("other" when unknown). */
void shim_count_error(int status, const char *path, void *ud);

/* While set, /readyz answers 503 "shutting down" (webhooks are still accepted). */
void shim_set_stopping(struct shim *s, int stopping);

/* Requests the shim holds (waiting for the submit callback). */
uint64_t shim_in_flight(const struct shim *s);

/* Append the job's single argument object (see above) to out. delivery / ts may be NULL
 * (JSON null); path is "chatwoot" or "agent-bot". */
void shim_job_arg(struct buf *out, const char *body, size_t body_len, const char *delivery,
                  const int64_t *ts, const char *path, double received_at);

#endif
