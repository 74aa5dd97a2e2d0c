/* job: Sidekiq job payloads, parsed from raw bytes and rewritten by splicing (job.h). */
#include "job.h"
#include "buf.h"
#include "json_edit.h"
#include "xalloc.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#define JOB_ERROR_MESSAGE_MAX 10000
#define JOB_MILLIS_THRESHOLD  1e11

/* The members of a scanned job. */
struct job_fields {
    const char *raw;
    struct json_member *m;
    size_t n;
};

/* The value span of the last member named key, or NULL. */
static const struct json_span *job_field(const struct job_fields *f, const char *key)
{
    size_t keylen = strlen(key);
    for (size_t i = f->n; i-- > 0;) {
        if (json_edit_key_eq(f->raw, f->m[i].key, key, keylen))
            return &f->m[i].value;
    }
    return NULL;
}

static int job_span_is(const char *raw, const struct json_span *sp, const char *text)
{
    size_t n = strlen(text);
    return sp && sp->len == n && memcmp(raw + sp->off, text, n) == 0;
}

static char *job_field_string(const struct job_fields *f, const char *key)
{
    const struct json_span *sp = job_field(f, key);
    return sp ? json_edit_string_decode(f->raw, *sp, NULL) : NULL;
}

/* Parse a span that the scanner accepted as a number (or a string holding one). */
static int job_number(const char *s, size_t len, double *out)
{
    char small[64];
    char *copy = len < sizeof small ? small : xmalloc(len + 1);
    memcpy(copy, s, len);
    copy[len] = '\0';
    char *end;
    errno = 0;
    double v = strtod(copy, &end);
    while (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r')
        end++;
    int ok = end != copy && *end == '\0' && isfinite(v);
    if (copy != small)
        free(copy);
    if (!ok)
        return -1;
    *out = v;
    return 0;
}

static double job_magnitude(double v)
{
    return v >= JOB_MILLIS_THRESHOLD ? v / 1000.0 : v;
}

/* A time field: a number, or a string holding one; 0 when missing or not a time. */
static double job_field_time(const struct job_fields *f, const char *key)
{
    const struct json_span *sp = job_field(f, key);
    if (!sp)
        return 0;
    const char *s = f->raw + sp->off;
    double v = 0;
    if (*s == '-' || (*s >= '0' && *s <= '9')) {
        if (job_number(s, sp->len, &v))
            return 0;
    } else if (*s == '"') {
        size_t n;
        char *str = json_edit_string_decode(f->raw, *sp, &n);
        int rc = n > 0 ? job_number(str, n, &v) : -1;
        free(str);
        if (rc)
            return 0;
    }
    return job_magnitude(v);
}

/* 1 if the span is a JSON integer literal (no fraction, no exponent). */
static int job_span_is_integer(const char *raw, const struct json_span *sp)
{
    const char *s = raw + sp->off;
    if (!(*s == '-' || (*s >= '0' && *s <= '9')))
        return 0;
    return memchr(s, '.', sp->len) == NULL && memchr(s, 'e', sp->len) == NULL &&
           memchr(s, 'E', sp->len) == NULL;
}

/* An integer literal as long long, clamped (Ruby integers have no limit). */
static long long job_integer(const char *raw, const struct json_span *sp)
{
    char small[32];
    if (sp->len >= sizeof small) /* beyond 20 digits: certainly out of range */
        return raw[sp->off] == '-' ? LLONG_MIN : LLONG_MAX;
    memcpy(small, raw + sp->off, sp->len);
    small[sp->len] = '\0';
    return strtoll(small, NULL, 10); /* clamps to LLONG_MIN/MAX on overflow */
}

static void job_parse_retry(const struct job_fields *f, struct job *j)
{
    const struct json_span *sp = job_field(f, "retry");
    j->retry_mode = JOB_RETRY_DEFAULT;
    if (job_span_is(f->raw, sp, "false")) {
        j->retry_mode = JOB_RETRY_DISCARD;
    } else if (sp && job_span_is_integer(f->raw, sp)) {
        j->retry_mode = JOB_RETRY_MAX;
        j->retry_max = job_integer(f->raw, sp);
    }
}

/* Ruby: `if msg["retry_count"]` then `+= 1`; only a number carries a count. */
static void job_parse_retry_count(const struct job_fields *f, struct job *j)
{
    const struct json_span *sp = job_field(f, "retry_count");
    if (!sp)
        return;
    const char *s = f->raw + sp->off;
    if (job_span_is_integer(f->raw, sp)) {
        j->has_retry_count = 1;
        j->retry_count = job_integer(f->raw, sp);
    } else if (*s == '-' || (*s >= '0' && *s <= '9')) {
        double v = 0;
        job_number(s, sp->len, &v);
        j->has_retry_count = 1;
        j->retry_count = v >= 9.2e18 ? LLONG_MAX : v <= -9.2e18 ? LLONG_MIN : (long long)v;
    }
}

static int job_parse_args(const struct job_fields *f, struct job *j, char *err, size_t errcap)
{
    const struct json_span *sp = job_field(f, "args");
    if (!sp)
        return 0;
    json_error_t jerr;
    const char *s = f->raw + sp->off;
    j->args = json_loadb(s, sp->len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    if (!j->args) /* integers beyond 64 bits: read every integer as a real */
        j->args = json_loadb(s, sp->len, JSON_DECODE_ANY | JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL,
                             &jerr);
    if (!j->args) {
        if (err && errcap)
            snprintf(err, errcap, "cannot read args: %s", jerr.text);
        return -1;
    }
    return 0;
}

int job_parse(const char *raw, size_t len, struct job *out, char *err, size_t errcap)
{
    struct job_fields f = {raw, NULL, 0};
    memset(out, 0, sizeof *out);
    if (json_edit_members(raw, len, &f.m, &f.n, err, errcap))
        return -1;
    out->raw = xmalloc(len + 1);
    memcpy(out->raw, raw, len);
    out->raw[len] = '\0';
    out->raw_len = len;
    f.raw = out->raw;
    int rc = job_parse_args(&f, out, err, errcap);
    if (rc)
        goto out;
    out->klass = job_field_string(&f, "class");
    out->jid = job_field_string(&f, "jid");
    out->queue = job_field_string(&f, "queue");
    out->retry_queue = job_field_string(&f, "retry_queue");
    job_parse_retry(&f, out);
    job_parse_retry_count(&f, out);
    out->dead = !job_span_is(f.raw, job_field(&f, "dead"), "false");
    out->created_at = job_field_time(&f, "created_at");
    out->enqueued_at = job_field_time(&f, "enqueued_at");
out:
    free(f.m);
    if (rc)
        job_free(out);
    return rc;
}

void job_free(struct job *j)
{
    free(j->raw);
    free(j->klass);
    free(j->jid);
    free(j->queue);
    free(j->retry_queue);
    if (j->args)
        json_decref(j->args);
    memset(j, 0, sizeof *j);
}

/* Ruby's Float#to_s for an epoch time: the shortest digits that read back as the same
 * double, in fixed notation, always with a decimal point. */
static void job_format_float(char *out, size_t cap, double v)
{
    /* Fast path for epoch seconds of this century with microsecond resolution (what
     * clock_wall_s gives): between 1e9 and 4.2e9 a double's spacing is under 5e-7, so
     * distinct 6-decimal values are distinct doubles and the trimmed %.6f form, when it
     * reads back as v, is the shortest one. */
    if (v >= 1e9 && v < 4.2e9) {
        char fast[40];
        int n = snprintf(fast, sizeof fast, "%.6f", v);
        if (n > 0 && strtod(fast, NULL) == v) {
            while (n > 2 && fast[n - 1] == '0' && fast[n - 2] != '.')
                fast[--n] = '\0';
            snprintf(out, cap, "%s", fast);
            return;
        }
    }
    char tmp[40];
    int prec = 1;
    for (; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*e", prec - 1, v);
        if (strtod(tmp, NULL) == v)
            break;
    }
    const char *e = strchr(tmp, 'e');
    int exp10 = e ? atoi(e + 1) : 0;
    int decimals = prec - 1 - exp10;
    if (decimals < 1)
        decimals = 1;
    snprintf(out, cap, "%.*f", decimals, v);
}

void job_format_time(char *out, size_t cap, enum job_ts_format fmt, double wall_s)
{
    if (!isfinite(wall_s) || fabs(wall_s) >= 1e15)
        wall_s = 0;
    if (fmt == JOB_TS_INT_MILLIS)
        snprintf(out, cap, "%lld", (long long)llround(wall_s * 1000.0));
    else
        job_format_float(out, cap, wall_s);
}

double job_time_seconds(const json_t *v)
{
    double d = 0;
    if (json_is_integer(v)) {
        d = (double)json_integer_value(v);
    } else if (json_is_real(v)) {
        d = json_real_value(v);
    } else if (json_is_string(v)) {
        if (json_string_length(v) == 0 ||
            job_number(json_string_value(v), json_string_length(v), &d))
            return 0;
    } else {
        return 0;
    }
    return job_magnitude(d);
}

/* Length of the maximal prefix of s[0..n) that starts a well-formed UTF-8 sequence, and
 * whether it is complete (*whole). Unicode's "maximal subpart" rule, as Ruby's scrub. */
static size_t job_utf8_prefix(const unsigned char *s, size_t n, int *whole)
{
    unsigned char c = s[0];
    unsigned char lo = 0x80, hi = 0xbf;
    size_t need;
    *whole = 0;
    if (c < 0x80) {
        *whole = 1;
        return 1;
    } else if (c >= 0xc2 && c <= 0xdf) {
        need = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
        need = 3;
        lo = c == 0xe0 ? 0xa0 : 0x80;
        hi = c == 0xed ? 0x9f : 0xbf;
    } else if (c >= 0xf0 && c <= 0xf4) {
        need = 4;
        lo = c == 0xf0 ? 0x90 : 0x80;
        hi = c == 0xf4 ? 0x8f : 0xbf;
    } else {
        return 1;
    }
    size_t i = 1;
    for (; i < need && i < n; i++) {
        unsigned char b = s[i];
        if (b < (i == 1 ? lo : 0x80) || b > (i == 1 ? hi : 0xbf))
            return i;
    }
    *whole = i == need;
    return i;
}

/* s as valid UTF-8 (each invalid sequence becomes U+FFFD), cut at a character boundary so
 * that it takes at most max bytes. */
static void job_scrub(struct buf *out, const char *s, size_t n, size_t max)
{
    static const char fffd[] = "\xef\xbf\xbd";
    size_t i = 0;
    while (i < n) {
        int whole;
        size_t k = job_utf8_prefix((const unsigned char *)s + i, n - i, &whole);
        const char *piece = whole ? s + i : fffd;
        size_t plen = whole ? k : 3;
        if (out->len + plen > max)
            break;
        buf_append(out, piece, plen);
        i += k;
    }
}

/* The JSON string text of s (len bytes): scrubbed and truncated. */
static char *job_json_message(const char *s, size_t len, size_t *out_len)
{
    struct buf text = BUF_INIT, json = BUF_INIT;
    buf_reserve(&text, len < JOB_ERROR_MESSAGE_MAX ? len : JOB_ERROR_MESSAGE_MAX);
    job_scrub(&text, s, len, JOB_ERROR_MESSAGE_MAX);
    buf_json_string(&json, text.data ? text.data : "", text.len);
    buf_free(&text);
    *out_len = json.len;
    return buf_steal(&json);
}

static char *job_json_string(const char *s, size_t *out_len)
{
    struct buf b = BUF_INIT;
    buf_json_string(&b, s, strlen(s));
    *out_len = b.len;
    return buf_steal(&b);
}

/* The unit a job already uses: its own created_at decides (an integer >= 1e11 is Sidekiq 8's
 * milliseconds, a float is seconds), so a job written by another Sidekiq generation keeps
 * one unit in every time field. Without created_at, the configured format applies. */
static enum job_ts_format job_own_format(const char *raw, size_t len, enum job_ts_format fallback)
{
    struct json_span sp;
    if (json_edit_find(raw, len, "created_at", &sp, NULL, 0) != 1 || sp.len == 0 || sp.len > 40)
        return fallback;
    char num[48];
    memcpy(num, raw + sp.off, sp.len);
    num[sp.len] = '\0';
    char *end;
    double v = strtod(num, &end);
    if (end == num || *end)
        return fallback; /* a string or something odd: keep the configured format */
    if (strpbrk(num, ".eE"))
        return v >= 1e11 ? fallback : JOB_TS_FLOAT_SECONDS;
    return v >= 1e11 ? JOB_TS_INT_MILLIS : fallback;
}

char *job_failed_payload(const struct job *j, const struct job_failure *f, enum job_ts_format fmt,
                         double now_s, size_t *out_len, long long *new_count)
{
    const char *queue = j->retry_queue     ? j->retry_queue
                        : f->fetched_queue ? f->fetched_queue
                        : j->queue         ? j->queue
                                           : "default";
    const char *msg = f->error_message ? f->error_message : "";
    size_t qlen, mlen, clen;
    char *qjson = job_json_string(queue, &qlen);
    char *mjson = job_json_message(msg, strlen(msg), &mlen);
    char *cjson = job_json_string(f->error_class ? f->error_class : "StandardError", &clen);
    char now[40], count[32];
    job_format_time(now, sizeof now, job_own_format(j->raw, j->raw_len, fmt), now_s);
    long long c = 0;
    if (j->has_retry_count)
        c = j->retry_count == LLONG_MAX ? LLONG_MAX : j->retry_count + 1;
    snprintf(count, sizeof count, "%lld", c);
    /* The order Ruby's attempt_retry assigns them in, so new keys land in Ruby's order. */
    struct json_edit_field fields[] = {
        {"queue", qjson, qlen},
        {"error_message", mjson, mlen},
        {"error_class", cjson, clen},
        {j->has_retry_count ? "retried_at" : "failed_at", now, strlen(now)},
        {"retry_count", count, strlen(count)},
    };
    char *out = json_edit_set(j->raw, j->raw_len, fields, sizeof fields / sizeof fields[0], out_len,
                              NULL, 0);
    free(qjson);
    free(mjson);
    free(cjson);
    if (out && new_count)
        *new_count = c;
    return out;
}

int job_may_retry(const struct job *j, long long new_count, long long default_max)
{
    if (j->retry_mode == JOB_RETRY_DISCARD)
        return 0;
    long long max = j->retry_mode == JOB_RETRY_MAX ? j->retry_max : default_max;
    return new_count < max;
}

/* A uniform integer in [0, n) from the kernel's random source. */
static uint32_t job_random_below(uint32_t n)
{
    uint32_t limit = UINT32_MAX - UINT32_MAX % n, v;
    do {
        if (getrandom(&v, sizeof v, 0) != (ssize_t)sizeof v)
            v = (uint32_t)random(); /* cannot happen for 4 bytes once the pool is ready */
    } while (v >= limit);
    return v % n;
}

double job_retry_delay(long long count)
{
    double c = (double)count;
    return c * c * c * c + 15.0 + (double)job_random_below(10) * (c + 1.0);
}

char *job_enqueue_payload(const char *raw, size_t len, enum job_ts_format fmt, double now_s,
                          size_t *out_len, char **queue, char *err, size_t errcap)
{
    char now[40];
    job_format_time(now, sizeof now, job_own_format(raw, len, fmt), now_s);
    struct json_edit_field field = {"enqueued_at", now, strlen(now)};
    char *out = json_edit_set(raw, len, &field, 1, out_len, err, errcap);
    if (!out)
        return NULL;
    struct json_span sp;
    char *q = NULL;
    if (json_edit_find(out, *out_len, "queue", &sp, NULL, 0) == 1)
        q = json_edit_string_decode(out, sp, NULL);
    *queue = q ? q : xstrdup("default");
    return out;
}

char *job_poison_payload(const char *raw, size_t len, const char *message, enum job_ts_format fmt,
                         double now_s, size_t *out_len)
{
    struct job j;
    if (job_parse(raw, len, &j, NULL, 0))
        return NULL;
    struct job_failure f = {"Tierone::PoisonPill", message, j.queue};
    char *out = job_failed_payload(&j, &f, fmt, now_s, out_len, NULL);
    job_free(&j);
    return out;
}
