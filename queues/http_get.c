/* http_get: Tierone::HttpGet [url] — one GET through the worker's shared HTTP client.
 * 2xx succeeds; 429 and 5xx fail retryably (honouring a Retry-After in seconds); any other
 * status fails permanently; transport errors (timeout, refused, dropped) are retryable. */
#include "diagnostic.h"
#include "engine.h"
#include "clock.h"
#include "http_client.h"

#include <stdlib.h>

static void http_get_on_done(struct http_response *resp, void *arg)
{
    struct job_ctx *ctx = arg;
    if (resp->result != HTTP_OK) {
        job_done(ctx, job_error_new(JOB_ERR_RETRY, "Tierone::HttpError", "GET failed (%s): %s",
                                    http_result_name(resp->result), resp->error));
    } else if (resp->status >= 200 && resp->status < 300) {
        job_done(ctx, NULL);
    } else if (resp->status == 429 || resp->status >= 500) {
        const char *ra = http_response_header(resp, "Retry-After");
        long secs = ra ? strtol(ra, NULL, 10) : 0;
        if (secs > 0)
            job_done(ctx, job_error_retry_at(clock_wall_s() + (double)secs, "Tierone::HttpError",
                                             "HTTP %ld (Retry-After %ld s)", resp->status, secs));
        else
            job_done(ctx,
                     job_error_new(JOB_ERR_RETRY, "Tierone::HttpError", "HTTP %ld", resp->status));
    } else {
        job_done(ctx,
                 job_error_new(JOB_ERR_PERMANENT, "Tierone::HttpError", "HTTP %ld", resp->status));
    }
}

static void http_get_perform(struct job_ctx *ctx)
{
    const struct job *j = job_ctx_job(ctx);
    json_t *url = j->args ? json_array_get(j->args, 0) : NULL;
    if (!json_is_string(url)) {
        job_done(ctx, job_error_new(JOB_ERR_PERMANENT, "ArgumentError",
                                    "Tierone::HttpGet expects args [url]"));
        return;
    }
    struct http_request req = {.method = "GET", .url = json_string_value(url), .timeout_ms = 30000};
    char *err = NULL;
    if (http_client_request(worker_http(job_ctx_worker(ctx)), &req, http_get_on_done, ctx, &err) !=
        0) {
        job_done(ctx, job_error_new(JOB_ERR_PERMANENT, "ArgumentError", "bad request: %s",
                                    err ? err : "?"));
        free(err);
    }
}

const struct job_type http_get_type = {"Tierone::HttpGet", http_get_perform, NULL};
