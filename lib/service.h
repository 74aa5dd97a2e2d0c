/* service: one call to an outside HTTP service, the way every tierone client makes it:
 *
 *   take a rate-limit token (optional) -> send the request with a deadline and a size cap
 *   -> classify the outcome (http_failure.h) -> hand the client the response and the
 *   generic verdict, which the client may replace with what only it knows.
 *
 * The four service clients (chatwoot, llm, slack, linear) are thin layers over this: they
 * build paths, headers and JSON bodies, read the JSON that comes back, and apply their own
 * failure rules. They all hand their results to jobs the same way:
 *
 *   typedef void (*X_cb)(struct job_error *err, json_t *result, void *arg);
 *     err:    NULL on success; otherwise a new error the callback owns (a job usually
 *             passes it straight to job_done);
 *     result: on success, the parsed answer (borrowed: valid during the callback; json_incref
 *             to keep it); NULL on error. */
#ifndef TIERONE_SERVICE_H
#define TIERONE_SERVICE_H

#include "http_client.h"
#include "http_failure.h"
#include "job_error.h"
#include "rate_limit.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* What a client holds: all borrowed except policy's strings (static). */
struct service {
    struct http_client *http;          /* required */
    struct rate_limit *limit;          /* NULL: no fleet-wide limit */
    struct http_failure_policy policy; /* service name, fixed window */
    uint64_t timeout_ms;               /* per request; 0: 30000 */
    size_t max_body;                   /* response cap; 0: 8 MiB */
};

/* One call. Everything is copied by service_call(). */
struct service_request {
    const char *method; /* NULL: GET */
    const char *url;    /* absolute */
    const char *const *headers;
    size_t nheaders;
    const void *body;
    size_t body_len;
    const char *what; /* names the call in errors and logs: "POST /api/v1/.../messages" */
    const char *jid;  /* the calling job (log lines, rate-limit reservation); may be NULL */
};

/* resp: the response (NULL when the request never went out: no rate-limit token, or the
 * client refused it); valid only during the callback. err: the generic verdict, owned by
 * the callback (NULL for a 2xx). */
typedef void (*service_cb)(struct job_error *err, struct http_response *resp, void *arg);

/* Make the call. Returns 0 and cb runs exactly once later (never from inside this call);
 * never fails otherwise (a Redis that is down for the rate limit becomes a JOB_ERR_RETRY,
 * a request the HTTP client refuses becomes a JOB_ERR_PERMANENT, both via cb). */
int service_call(struct service *s, const struct service_request *req, service_cb cb, void *arg);

/* Parse a response body as JSON; on failure a JOB_ERR_RETRY "Tierone::<Service>::BadResponse"
 * error naming the call (garbage from a proxy is usually transient). New reference or NULL
 * with *err set (caller owns it). */
json_t *service_parse_json(const struct service *s, const struct http_response *resp,
                           const char *what, struct job_error **err);

#endif
