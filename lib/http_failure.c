/* http_failure: one table of what an HTTP outcome means, shared by every service client. */
#include "http_failure.h"

#include "buf.h"
#include "xalloc.h"

#include <ctype.h>
#include <curl/curl.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define ERROR_TEXT_MAX 300

/* A non-negative decimal number (integer or fraction) filling all of s, or -1. */
static double parse_number(const char *s)
{
    if (!s || !*s)
        return -1;
    char *end;
    double v = strtod(s, &end);
    while (*end == ' ' || *end == '\t')
        end++;
    if (*end || !isfinite(v) || v < 0)
        return -1;
    return v;
}

static double clamp_wait(double wait_s)
{
    if (wait_s < 0)
        return 0;
    return wait_s > HTTP_FAILURE_MAX_WAIT_S ? HTTP_FAILURE_MAX_WAIT_S : wait_s;
}

double http_failure_retry_after(const struct http_response *r, double now_s)
{
    double v = parse_number(http_response_header(r, "retry-after-ms"));
    if (v >= 0)
        return now_s + clamp_wait(v / 1000.0);
    const char *ra = http_response_header(r, "retry-after");
    v = parse_number(ra);
    if (v >= 0)
        return now_s + clamp_wait(v);
    if (ra && *ra) {
        time_t t = curl_getdate(ra, NULL); /* RFC 1123 / 850 / asctime dates */
        if (t != -1)
            return now_s + clamp_wait((double)t - now_s);
    }
    v = parse_number(http_response_header(r, "llm_provider-retry-after"));
    if (v >= 0)
        return now_s + clamp_wait(v);
    return 0;
}

double http_failure_window_end(int window_s, double now_s)
{
    if (window_s <= 0)
        return now_s;
    return (floor(now_s / window_s) + 1.0) * window_s;
}

/* Append s[0..len) with blanks collapsed and invalid UTF-8 replaced by '?'. */
static void text_append_clean(struct buf *b, const char *s, size_t len)
{
    int blank = 0;
    for (size_t i = 0; i < len && b->len < ERROR_TEXT_MAX;) {
        unsigned char c = (unsigned char)s[i];
        if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
            blank = b->len > 0;
            i++;
            continue;
        }
        if (blank)
            buf_append(b, " ", 1);
        blank = 0;
        size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        int ok = n > 0 && i + n <= len;
        for (size_t k = 1; ok && k < n; k++)
            ok = ((unsigned char)s[i + k] >> 6) == 2;
        if (!ok || (n == 1 && c < 0x20)) {
            buf_append(b, "?", 1);
            i++;
            continue;
        }
        if (b->len + n > ERROR_TEXT_MAX)
            break;
        buf_append(b, s + i, n);
        i += n;
    }
}

/* The first error string a JSON body carries, or NULL (borrowed from j). */
static const char *json_error_string(json_t *j)
{
    json_t *e = json_object_get(j, "error");
    if (json_is_string(e))
        return json_string_value(e);
    if (json_is_object(e) && json_is_string(json_object_get(e, "message")))
        return json_string_value(json_object_get(e, "message"));
    json_t *m = json_object_get(j, "message");
    if (json_is_string(m))
        return json_string_value(m);
    json_t *first = json_array_get(json_object_get(j, "errors"), 0);
    if (json_is_string(json_object_get(first, "message")))
        return json_string_value(json_object_get(first, "message"));
    return NULL;
}

char *http_failure_error_text(const char *body, size_t len)
{
    struct buf b = {0};
    json_t *j = len ? json_loadb(body, len, JSON_DECODE_ANY, NULL) : NULL;
    const char *s = json_is_object(j) ? json_error_string(j) : NULL;
    if (s)
        text_append_clean(&b, s, strlen(s));
    else
        text_append_clean(&b, body ? body : "", len);
    json_decref(j);
    char *out = xstrndup(b.data ? b.data : "", b.len);
    buf_free(&b);
    return out;
}

/* The transport failures: class kind and whether a retry can help. */
static struct job_error *transport_error(const struct http_response *r,
                                         const struct http_failure_policy *p, const char *what)
{
    const char *kind = "TransportError";
    enum job_err_kind ek = JOB_ERR_RETRY;
    switch (r->result) {
    case HTTP_ERR_TIMEOUT:
        kind = "Timeout";
        break;
    case HTTP_ERR_CONNECT:
        kind = "ConnectionFailed";
        break;
    case HTTP_ERR_TOO_LARGE:
        kind = "ResponseTooLarge";
        ek = JOB_ERR_PERMANENT;
        break;
    case HTTP_ERR_CANCELLED:
        kind = "Cancelled";
        break;
    case HTTP_OK:
    case HTTP_ERR_OTHER:
        break;
    }
    char *cls = xasprintf("Tierone::%s::%s", p->service, kind);
    struct job_error *e = job_error_new(ek, cls, "%s%s%s", what ? what : "", what ? " -> " : "",
                                        r->error && *r->error ? r->error : kind);
    free(cls);
    return e;
}

static const char *status_kind(long status)
{
    if (status == 429)
        return "RateLimited";
    if (status == 408)
        return "Timeout";
    if (status >= 500)
        return "ServerError";
    if (status == 401)
        return "Unauthorized";
    if (status == 403)
        return "Forbidden";
    if (status == 404)
        return "NotFound";
    if (status >= 400)
        return "ClientError";
    return "UnexpectedStatus";
}

struct job_error *http_failure_classify(const struct http_response *r,
                                        const struct http_failure_policy *p, const char *what,
                                        double now_s)
{
    if (r->result != HTTP_OK)
        return transport_error(r, p, what);
    long st = r->status;
    if (st >= 200 && st < 300)
        return NULL;
    enum job_err_kind ek = JOB_ERR_PERMANENT;
    double at = 0;
    if (st == 429 || st >= 500) {
        ek = JOB_ERR_RETRY;
        at = http_failure_retry_after(r, now_s);
        if (!at && st == 429 && p->fixed_window_s > 0)
            at = http_failure_window_end(p->fixed_window_s, now_s);
        if (at)
            ek = JOB_ERR_RETRY_AT;
    } else if (st == 408) {
        ek = JOB_ERR_RETRY;
    }
    char *text = http_failure_error_text(r->body, r->body_len);
    char *cls = xasprintf("Tierone::%s::%s", p->service, status_kind(st));
    struct job_error *e = job_error_new(ek, cls, "%s%sHTTP %ld%s%s", what ? what : "",
                                        what ? " -> " : "", st, *text ? ": " : "", text);
    e->retry_at = at;
    free(cls);
    free(text);
    return e;
}
