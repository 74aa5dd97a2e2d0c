/* http_failure: what a finished HTTP request means for the job that made it.
 *
 * Every service client (Chatwoot, the LLM, Slack, Linear) maps a response onto the
 * engine's error kinds (lib/job_error.h) the same way, then adds what only it knows
 * (Linear's RATELIMITED on HTTP 400, OpenAI's insufficient_quota on 429, ...):
 *
 *   transport timeout, connection failure, dropped connection  -> JOB_ERR_RETRY
 *   client closed under us (shutdown)                          -> JOB_ERR_RETRY
 *   response over the size cap                                 -> JOB_ERR_PERMANENT
 *   429 (and 503) with retry-after-ms / Retry-After (seconds or HTTP-date) /
 *       llm_provider-retry-after                               -> JOB_ERR_RETRY_AT
 *   429 without a header, service with a fixed window (Chatwoot's rack-attack counts
 *       per `epoch / 60`)                                      -> JOB_ERR_RETRY_AT window end
 *   429 without either, 408, 5xx                               -> JOB_ERR_RETRY
 *   other 4xx, 1xx, 3xx                                        -> JOB_ERR_PERMANENT
 *   2xx                                                        -> success (NULL)
 *
 * Error classes read "Tierone::<Service>::<Kind>" (Kind: Timeout, ConnectionFailed,
 * TransportError, Cancelled, ResponseTooLarge, RateLimited, ServerError, Unauthorized,
 * Forbidden, NotFound, ClientError, UnexpectedStatus), and the message names the call and
 * carries the service's own error text: "POST /api/v1/accounts/1/conversations/7/messages
 * -> HTTP 422: Validation failed: Too many messages". */
#ifndef TIERONE_HTTP_FAILURE_H
#define TIERONE_HTTP_FAILURE_H

#include "http_client.h"
#include "job_error.h"

#include <stddef.h>

/* Per-service policy (static data in each client). */
struct http_failure_policy {
    const char *service; /* "Chatwoot", "LLM", "Slack", "Linear": the error class's middle */
    int fixed_window_s;  /* 429 without a header: retry when this fixed window ends (0: none) */
};

/* Longest wait a response header may ask for; longer values are clamped to it. */
#define HTTP_FAILURE_MAX_WAIT_S (24.0 * 3600.0)

/* The wall time (seconds) a response asks the caller to wait until, from the first usable
 * header of: retry-after-ms (milliseconds), Retry-After (delta seconds or an HTTP-date),
 * llm_provider-retry-after (LiteLLM passing on the provider's value, seconds). Waits are
 * clamped to [0, HTTP_FAILURE_MAX_WAIT_S]. Returns 0 when no header is usable. */
double http_failure_retry_after(const struct http_response *r, double now_s);

/* End of the current fixed window of window_s seconds (rack-attack's epoch / period). */
double http_failure_window_end(int window_s, double now_s);

/* Classify a finished request. `what` names the call for the message (e.g. "GET
 * /api/v1/accounts/1/conversations/7"; NULL: none). Returns NULL for a 2xx response,
 * otherwise a new error (caller owns it). */
struct job_error *http_failure_classify(const struct http_response *r,
                                        const struct http_failure_policy *p, const char *what,
                                        double now_s);

/* The service's own error text in a response body, for messages: JSON "error" (string, or
 * an object's "message"), "message", "errors[0].message", else the body as text; blanks
 * collapsed, cut to 300 bytes, invalid UTF-8 replaced. Returns a new string ("" for an
 * empty body); caller frees. */
char *http_failure_error_text(const char *body, size_t len);

#endif
