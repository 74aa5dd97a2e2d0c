/* http_failure: the shared table of what an HTTP outcome means for a job. */
#include "http_failure.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const struct http_failure_policy chatwoot = {"Chatwoot", 60};
static const struct http_failure_policy plain = {"Slack", 0};
#define NOW 1800000000.25 /* 2027-01-15T08:00:00.25Z */

/* A response with status, one optional header and a body. */
static struct http_response resp(long status, const char *hname, const char *hvalue,
                                 const char *body, struct http_header *hbuf)
{
    struct http_response r = {.result = HTTP_OK, .error = "", .status = status};
    if (hname) {
        hbuf->name = (char *)hname;
        hbuf->value = (char *)hvalue;
        r.headers = hbuf;
        r.nheaders = 1;
    }
    r.body = (char *)(body ? body : "");
    r.body_len = strlen(r.body);
    return r;
}

Test(http_failure, success_is_null)
{
    struct http_header h;
    struct http_response r = resp(201, NULL, NULL, "{}", &h);
    cr_assert_null(http_failure_classify(&r, &plain, "POST /x", NOW));
}

Test(http_failure, transport_failures_retry_except_too_large)
{
    struct http_response r = {
        .result = HTTP_ERR_TIMEOUT, .error = "Operation timed out", .body = ""};
    struct job_error *e = http_failure_classify(&r, &chatwoot, "GET /a", NOW);
    cr_assert_eq(e->kind, JOB_ERR_RETRY);
    cr_assert_str_eq(e->error_class, "Tierone::Chatwoot::Timeout");
    cr_assert_str_eq(e->error_message, "GET /a -> Operation timed out");
    job_error_free(e);
    r.result = HTTP_ERR_CONNECT;
    e = http_failure_classify(&r, &chatwoot, "GET /a", NOW);
    cr_assert_eq(e->kind, JOB_ERR_RETRY);
    cr_assert_str_eq(e->error_class, "Tierone::Chatwoot::ConnectionFailed");
    job_error_free(e);
    r.result = HTTP_ERR_OTHER;
    e = http_failure_classify(&r, &chatwoot, "GET /a", NOW);
    cr_assert_eq(e->kind, JOB_ERR_RETRY);
    job_error_free(e);
    r.result = HTTP_ERR_TOO_LARGE;
    e = http_failure_classify(&r, &chatwoot, "GET /a", NOW);
    cr_assert_eq(e->kind, JOB_ERR_PERMANENT);
    cr_assert_str_eq(e->error_class, "Tierone::Chatwoot::ResponseTooLarge");
    job_error_free(e);
}

Test(http_failure, chatwoot_429_without_header_waits_for_the_minute_window)
{
    struct http_header h;
    struct http_response r = resp(429, NULL, NULL, "Retry later\n", &h);
    struct job_error *e = http_failure_classify(&r, &chatwoot, "POST /m", NOW);
    cr_assert_eq(e->kind, JOB_ERR_RETRY_AT);
    cr_assert_float_eq(e->retry_at, 1800000060.0, 1e-6); /* NOW is 0.25 s into a minute */
    cr_assert_str_eq(e->error_class, "Tierone::Chatwoot::RateLimited");
    cr_assert_str_eq(e->error_message, "POST /m -> HTTP 429: Retry later");
    job_error_free(e);
    /* Without a fixed window: plain backoff. */
    e = http_failure_classify(&r, &plain, "POST /m", NOW);
    cr_assert_eq(e->kind, JOB_ERR_RETRY);
    job_error_free(e);
}

Test(http_failure, retry_after_seconds_date_ms_and_litellm)
{
    struct http_header h;
    struct http_response r = resp(429, "Retry-After", "7", NULL, &h);
    struct job_error *e = http_failure_classify(&r, &plain, NULL, NOW);
    cr_assert_eq(e->kind, JOB_ERR_RETRY_AT);
    cr_assert_float_eq(e->retry_at, NOW + 7, 1e-6);
    job_error_free(e);

    r = resp(503, "retry-after", "Fri, 15 Jan 2027 08:00:30 GMT", NULL, &h);
    e = http_failure_classify(&r, &plain, NULL, NOW);
    cr_assert_eq(e->kind, JOB_ERR_RETRY_AT);
    cr_assert_float_eq(e->retry_at, 1800000030.0, 1e-6);
    job_error_free(e);

    r = resp(429, "retry-after-ms", "1500", NULL, &h);
    cr_assert_float_eq(http_failure_retry_after(&r, NOW), NOW + 1.5, 1e-6);
    r = resp(429, "llm_provider-retry-after", "12", NULL, &h);
    cr_assert_float_eq(http_failure_retry_after(&r, NOW), NOW + 12, 1e-6);
    /* A date in the past means now; an absurd wait is clamped to a day. */
    r = resp(429, "Retry-After", "Thu, 01 Jan 2015 00:00:00 GMT", NULL, &h);
    cr_assert_float_eq(http_failure_retry_after(&r, NOW), NOW, 1e-6);
    r = resp(429, "Retry-After", "99999999", NULL, &h);
    cr_assert_float_eq(http_failure_retry_after(&r, NOW), NOW + HTTP_FAILURE_MAX_WAIT_S, 1e-6);
    /* Garbage is no header at all. */
    r = resp(429, "Retry-After", "soon", NULL, &h);
    cr_assert_eq(http_failure_retry_after(&r, NOW), 0);
    r = resp(429, "Retry-After", "-3", NULL, &h);
    cr_assert_eq(http_failure_retry_after(&r, NOW), 0);
}

Test(http_failure, server_errors_retry_and_client_errors_are_permanent)
{
    struct http_header h;
    struct http_response r = resp(502, NULL, NULL, "<html>bad gateway</html>", &h);
    struct job_error *e = http_failure_classify(&r, &plain, "POST /hook", NOW);
    cr_assert_eq(e->kind, JOB_ERR_RETRY);
    cr_assert_str_eq(e->error_class, "Tierone::Slack::ServerError");
    job_error_free(e);

    r = resp(408, NULL, NULL, "", &h);
    e = http_failure_classify(&r, &plain, "POST /hook", NOW);
    cr_assert_eq(e->kind, JOB_ERR_RETRY);
    cr_assert_str_eq(e->error_message, "POST /hook -> HTTP 408");
    job_error_free(e);

    const struct {
        long status;
        const char *body, *cls, *msg;
    } cases[] = {
        {401, "{\"error\":\"Invalid Access Token\"}", "Tierone::Chatwoot::Unauthorized",
         "GET /c -> HTTP 401: Invalid Access Token"},
        {403, "action_prohibited", "Tierone::Chatwoot::Forbidden",
         "GET /c -> HTTP 403: action_prohibited"},
        {404, "{\"error\":\"Resource could not be found\"}", "Tierone::Chatwoot::NotFound",
         "GET /c -> HTTP 404: Resource could not be found"},
        {422, "{\"message\":\"Email has already been taken\",\"attributes\":[\"email\"]}",
         "Tierone::Chatwoot::ClientError", "GET /c -> HTTP 422: Email has already been taken"},
        {400, "{\"error\":{\"message\":\"context too long\",\"code\":\"400\"}}",
         "Tierone::Chatwoot::ClientError", "GET /c -> HTTP 400: context too long"},
        {302, "", "Tierone::Chatwoot::UnexpectedStatus", "GET /c -> HTTP 302"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        r = resp(cases[i].status, NULL, NULL, cases[i].body, &h);
        e = http_failure_classify(&r, &chatwoot, "GET /c", NOW);
        cr_assert_eq(e->kind, JOB_ERR_PERMANENT, "status %ld", cases[i].status);
        cr_assert_str_eq(e->error_class, cases[i].cls);
        cr_assert_str_eq(e->error_message, cases[i].msg);
        job_error_free(e);
    }
}

Test(http_failure, error_text_is_short_clean_and_prefers_json_fields)
{
    char *t = http_failure_error_text("{\"errors\":[{\"message\":\"Entity not found\"}]}", 43);
    cr_assert_str_eq(t, "Entity not found");
    free(t);
    t = http_failure_error_text("  line one\n\n  line\ttwo \n", 24);
    cr_assert_str_eq(t, "line one line two");
    free(t);
    t = http_failure_error_text("bad \xff\xfe byte", 11);
    cr_assert_str_eq(t, "bad ?? byte");
    free(t);
    char big[1000];
    memset(big, 'x', sizeof big);
    t = http_failure_error_text(big, sizeof big);
    cr_assert_eq(strlen(t), 300);
    free(t);
    t = http_failure_error_text("", 0);
    cr_assert_str_eq(t, "");
    free(t);
}

Test(http_failure, window_end)
{
    cr_assert_float_eq(http_failure_window_end(60, 120.0), 180.0, 1e-9);
    cr_assert_float_eq(http_failure_window_end(60, 179.9), 180.0, 1e-9);
    cr_assert_float_eq(http_failure_window_end(0, 179.9), 179.9, 1e-9);
}
