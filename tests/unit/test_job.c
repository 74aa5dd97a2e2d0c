/* job: parsing Sidekiq 6.x/8.x payloads, Ruby truthiness, failure and enqueue rewrites.
 * Expected failure payloads were produced by Ruby (JSON.parse, the assignments of
 * Sidekiq 6.4.1's JobRetry#attempt_retry, JSON.generate) and pasted here. */
#include "job.h"

#include <criterion/criterion.h>
#include <stdint.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JOB6                                                                                       \
    "{\"retry\":true,\"queue\":\"default\",\"class\":\"HardJob\",\"args\":[1,\"x\"],"              \
    "\"jid\":\"b4a577edbccf1d805744efa9\",\"created_at\":1712345678.123456,"                       \
    "\"enqueued_at\":1712345678.1237}"
#define JOB8                                                                                       \
    "{\"retry\":true,\"queue\":\"default\",\"class\":\"HardJob\",\"args\":[1,\"x\"],"              \
    "\"jid\":\"b4a577edbccf1d805744efa9\",\"created_at\":1712345678123,"                           \
    "\"enqueued_at\":1712345678124}"

static void parse_ok(const char *raw, struct job *j)
{
    char err[160] = "";
    int rc = job_parse(raw, strlen(raw), j, err, sizeof err);
    cr_assert_eq(rc, 0, "job_parse(%s): %s", raw, err);
}

Test(job, parse_6x_float_seconds)
{
    struct job j;
    parse_ok(JOB6, &j);
    cr_expect_str_eq(j.klass, "HardJob");
    cr_expect_str_eq(j.jid, "b4a577edbccf1d805744efa9");
    cr_expect_str_eq(j.queue, "default");
    cr_expect_null(j.retry_queue);
    cr_expect_eq(j.retry_mode, JOB_RETRY_DEFAULT);
    cr_expect_eq(j.has_retry_count, 0);
    cr_expect_eq(j.dead, 1);
    cr_expect_float_eq(j.created_at, 1712345678.123456, 1e-6);
    cr_expect_float_eq(j.enqueued_at, 1712345678.1237, 1e-6);
    cr_assert(json_is_array(j.args));
    cr_expect_eq(json_array_size(j.args), 2);
    cr_expect_eq(json_integer_value(json_array_get(j.args, 0)), 1);
    cr_expect_str_eq(json_string_value(json_array_get(j.args, 1)), "x");
    cr_expect_eq(j.raw_len, strlen(JOB6));
    cr_expect_str_eq(j.raw, JOB6);
    job_free(&j);
    job_free(&j); /* safe on a zeroed struct */
}

Test(job, parse_8x_int_millis)
{
    struct job j;
    parse_ok(JOB8, &j);
    cr_expect_float_eq(j.created_at, 1712345678.123, 1e-6);
    cr_expect_float_eq(j.enqueued_at, 1712345678.124, 1e-6);
    job_free(&j);
}

struct time_case {
    const char *value;
    double seconds;
};

static const struct time_case time_cases[] = {
    {"1712345678.5", 1712345678.5},
    {"1712345678", 1712345678.0},
    {"1712345678123", 1712345678.123},
    {"1.712345678123e12", 1712345678.123},
    {"1712345678.0", 1712345678.0},
    {"\"1712345678.25\"", 1712345678.25},
    {"\"1712345678123\"", 1712345678.123},
    {"\"soon\"", 0},
    {"\"\"", 0},
    {"null", 0},
    {"true", 0},
    {"[1712345678]", 0},
};

Test(job, parse_times_magnitude_rule)
{
    for (size_t i = 0; i < sizeof time_cases / sizeof time_cases[0]; i++) {
        char raw[128];
        snprintf(raw, sizeof raw, "{\"class\":\"K\",\"enqueued_at\":%s,\"created_at\":%s}",
                 time_cases[i].value, time_cases[i].value);
        struct job j;
        parse_ok(raw, &j);
        cr_expect_float_eq(j.enqueued_at, time_cases[i].seconds, 1e-6, "%s", raw);
        cr_expect_float_eq(j.created_at, time_cases[i].seconds, 1e-6, "%s", raw);
        job_free(&j);
    }
}

Test(job, time_seconds_from_json)
{
    json_t *v = json_integer(1712345678123);
    cr_expect_float_eq(job_time_seconds(v), 1712345678.123, 1e-6);
    json_decref(v);
    v = json_real(1712345678.5);
    cr_expect_float_eq(job_time_seconds(v), 1712345678.5, 1e-6);
    json_decref(v);
    v = json_string("1712345678123");
    cr_expect_float_eq(job_time_seconds(v), 1712345678.123, 1e-6);
    json_decref(v);
    v = json_string("x");
    cr_expect_eq(job_time_seconds(v), 0);
    json_decref(v);
    cr_expect_eq(job_time_seconds(json_null()), 0);
    cr_expect_eq(job_time_seconds(NULL), 0);
}

Test(job, parse_big_integers)
{
    const char *raw = "{\"class\":\"K\",\"big\":123456789012345678901234567890,"
                      "\"args\":[123456789012345678901234567890,1.5e3,\"s\"],\"jid\":\"j\"}";
    struct job j;
    parse_ok(raw, &j);
    cr_expect_str_eq(j.jid, "j");
    cr_assert_eq(json_array_size(j.args), 3);
    cr_expect(json_is_real(json_array_get(j.args, 0)));
    cr_expect_float_eq(json_real_value(json_array_get(j.args, 0)), 1.2345678901234568e29, 1e15);
    cr_expect_float_eq(json_real_value(json_array_get(j.args, 1)), 1500.0, 1e-9);
    job_free(&j);

    /* Big integers outside args do not touch args' types. */
    raw = "{\"class\":\"K\",\"big\":123456789012345678901234567890,\"args\":[7]}";
    parse_ok(raw, &j);
    cr_expect(json_is_integer(json_array_get(j.args, 0)));
    job_free(&j);
}

Test(job, parse_escapes_and_types)
{
    const char *raw = "{\"\\u0063lass\":\"Foo::Bar\\u00e9\",\"jid\":5,\"queue\":\"q\\\"1\","
                      "\"args\":[\"a\\u0000b\"],\"retry_queue\":\"low\"}";
    struct job j;
    parse_ok(raw, &j);
    cr_expect_str_eq(j.klass, "Foo::Bar\xc3\xa9");
    cr_expect_null(j.jid); /* not a string */
    cr_expect_str_eq(j.queue, "q\"1");
    cr_expect_str_eq(j.retry_queue, "low");
    cr_expect_eq(json_string_length(json_array_get(j.args, 0)), 3);
    job_free(&j);

    parse_ok("{}", &j);
    cr_expect_null(j.klass);
    cr_expect_null(j.args);
    cr_expect_eq(j.created_at, 0);
    job_free(&j);
}

struct bad_case {
    const char *raw;
    const char *err;
};

static const struct bad_case bad_cases[] = {
    {"{\"class\":\"Foo\",\"args\":[1,}", "invalid JSON at byte 25: unexpected '}'"},
    {"{\"class\":\"Foo\",\"args\":[1]", "invalid JSON at byte 25: unexpected end of input"},
    {"[1,2]", "JSON value is an array, not an object"},
    {"\"job\"", "JSON value is a string, not an object"},
    {"", "invalid JSON at byte 0: unexpected end of input"},
    {"{\"class\":\"Foo\"} trailing", "invalid JSON at byte 16: unexpected 't'"},
};

Test(job, parse_rejects)
{
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        struct job j;
        char err[160] = "";
        cr_expect_eq(job_parse(bad_cases[i].raw, strlen(bad_cases[i].raw), &j, err, sizeof err), -1,
                     "%s", bad_cases[i].raw);
        cr_expect_str_eq(err, bad_cases[i].err, "%s", bad_cases[i].raw);
        cr_expect_null(j.raw);
    }
    /* args that jansson cannot represent even as reals (1e400 overflows a double) */
    const char *raw = "{\"class\":\"K\",\"args\":[1e400]}";
    struct job j;
    char err[160] = "";
    cr_expect_eq(job_parse(raw, strlen(raw), &j, err, sizeof err), -1);
    cr_expect_str_eq(err, "cannot read args: real number overflow near '1e400'");
    cr_expect_null(j.raw);
}

Test(job, parse_without_nul_terminator)
{
    char raw[] = "{\"class\":\"K\",\"args\":[]}XXXX";
    struct job j;
    char err[64];
    cr_assert_eq(job_parse(raw, 23, &j, err, sizeof err), 0, "%s", err);
    cr_expect_str_eq(j.raw, "{\"class\":\"K\",\"args\":[]}");
    job_free(&j);
}

struct retry_case {
    const char *value; /* NULL = field missing */
    enum job_retry_mode mode;
    long long max;
};

static const struct retry_case retry_cases[] = {
    {NULL, JOB_RETRY_DEFAULT, 0},
    {"true", JOB_RETRY_DEFAULT, 0},
    {"null", JOB_RETRY_DEFAULT, 0},
    {"false", JOB_RETRY_DISCARD, 0},
    {"0", JOB_RETRY_MAX, 0},
    {"5", JOB_RETRY_MAX, 5},
    {"-1", JOB_RETRY_MAX, -1},
    {"\"5\"", JOB_RETRY_DEFAULT, 0},
    {"\"false\"", JOB_RETRY_DEFAULT, 0},
    {"5.0", JOB_RETRY_DEFAULT, 0},
    {"[]", JOB_RETRY_DEFAULT, 0},
    {"{}", JOB_RETRY_DEFAULT, 0},
    {"123456789012345678901234567890", JOB_RETRY_MAX, LLONG_MAX},
    {"-123456789012345678901234567890", JOB_RETRY_MAX, LLONG_MIN},
};

Test(job, retry_truthiness)
{
    for (size_t i = 0; i < sizeof retry_cases / sizeof retry_cases[0]; i++) {
        const struct retry_case *c = &retry_cases[i];
        char raw[128];
        if (c->value)
            snprintf(raw, sizeof raw, "{\"class\":\"K\",\"retry\":%s}", c->value);
        else
            snprintf(raw, sizeof raw, "{\"class\":\"K\"}");
        struct job j;
        parse_ok(raw, &j);
        cr_expect_eq(j.retry_mode, c->mode, "%s", raw);
        if (c->mode == JOB_RETRY_MAX)
            cr_expect_eq(j.retry_max, c->max, "%s", raw);
        job_free(&j);
    }
}

struct count_case {
    const char *value;
    int has;
    long long count;
};

static const struct count_case count_cases[] = {
    {"null", 0, 0}, {"false", 0, 0}, {"0", 1, 0}, {"3", 1, 3}, {"2.0", 1, 2}, {"\"3\"", 0, 0},
};

Test(job, retry_count_and_dead)
{
    for (size_t i = 0; i < sizeof count_cases / sizeof count_cases[0]; i++) {
        char raw[128];
        snprintf(raw, sizeof raw, "{\"class\":\"K\",\"retry_count\":%s}", count_cases[i].value);
        struct job j;
        parse_ok(raw, &j);
        cr_expect_eq(j.has_retry_count, count_cases[i].has, "%s", raw);
        cr_expect_eq(j.retry_count, count_cases[i].count, "%s", raw);
        job_free(&j);
    }
    struct job j;
    parse_ok("{\"dead\":false}", &j);
    cr_expect_eq(j.dead, 0);
    job_free(&j);
    parse_ok("{\"dead\":true}", &j);
    cr_expect_eq(j.dead, 1);
    job_free(&j);
    parse_ok("{\"dead\":null}", &j);
    cr_expect_eq(j.dead, 1);
    job_free(&j);
}

struct fail_case {
    const char *name;
    const char *in;
    const char *fetched_queue;
    const char *error_class;
    const char *error_message;
    enum job_ts_format fmt;
    double now;
    const char *out;
    long long count;
};

static const struct fail_case fail_cases[] = {
    {"first failure (6.x)", JOB6, "critical", "RuntimeError", "boom", JOB_TS_FLOAT_SECONDS,
     1712345700.5,
     "{\"retry\":true,\"queue\":\"critical\",\"class\":\"HardJob\",\"args\":[1,\"x\"],"
     "\"jid\":\"b4a577edbccf1d805744efa9\",\"created_at\":1712345678.123456,"
     "\"enqueued_at\":1712345678.1237,\"error_message\":\"boom\",\"error_class\":"
     "\"RuntimeError\",\"failed_at\":1712345700.5,\"retry_count\":0}",
     0},
    {"second failure (6.x)",
     "{\"retry\":true,\"queue\":\"critical\",\"class\":\"HardJob\",\"args\":[1,\"x\"],"
     "\"jid\":\"b4a577edbccf1d805744efa9\",\"created_at\":1712345678.123456,"
     "\"enqueued_at\":1712345678.1237,\"error_message\":\"boom\",\"error_class\":"
     "\"RuntimeError\",\"failed_at\":1712345700.5,\"retry_count\":0}",
     "default", "E", "boom2", JOB_TS_FLOAT_SECONDS, 1712345800.25,
     "{\"retry\":true,\"queue\":\"default\",\"class\":\"HardJob\",\"args\":[1,\"x\"],"
     "\"jid\":\"b4a577edbccf1d805744efa9\",\"created_at\":1712345678.123456,"
     "\"enqueued_at\":1712345678.1237,\"error_message\":\"boom2\",\"error_class\":\"E\","
     "\"failed_at\":1712345700.5,\"retry_count\":1,\"retried_at\":1712345800.25}",
     1},
    {"first failure (8.x millis)", JOB8, "default", "Tierone::HttpError", "HTTP 503",
     JOB_TS_INT_MILLIS, 1712345700.5,
     "{\"retry\":true,\"queue\":\"default\",\"class\":\"HardJob\",\"args\":[1,\"x\"],"
     "\"jid\":\"b4a577edbccf1d805744efa9\",\"created_at\":1712345678123,"
     "\"enqueued_at\":1712345678124,\"error_message\":\"HTTP 503\",\"error_class\":"
     "\"Tierone::HttpError\",\"failed_at\":1712345700500,\"retry_count\":0}",
     0},
    {"retry_queue wins, unknown fields kept",
     "{\"class\":\"K\",\"queue\":\"a\",\"retry_queue\":\"low\",\"x\":1.0e2,"
     "\"big\":123456789012345678901234567890,\"retry_count\":4}",
     "a", "K::Err", "line1\n\"q\"", JOB_TS_FLOAT_SECONDS, 1712345678.0,
     "{\"class\":\"K\",\"queue\":\"low\",\"retry_queue\":\"low\",\"x\":1.0e2,"
     "\"big\":123456789012345678901234567890,\"retry_count\":5,\"error_message\":"
     "\"line1\\n\\\"q\\\"\",\"error_class\":\"K::Err\",\"retried_at\":1712345678.0}",
     5},
    {"job without queue", "{\"class\":\"K\"}", "events", "E", "", JOB_TS_FLOAT_SECONDS, 1.5,
     "{\"class\":\"K\",\"queue\":\"events\",\"error_message\":\"\",\"error_class\":\"E\","
     "\"failed_at\":1.5,\"retry_count\":0}",
     0},
};

Test(job, failed_payload_fixtures)
{
    for (size_t i = 0; i < sizeof fail_cases / sizeof fail_cases[0]; i++) {
        const struct fail_case *c = &fail_cases[i];
        struct job j;
        parse_ok(c->in, &j);
        struct job_failure f = {c->error_class, c->error_message, c->fetched_queue};
        size_t len = 0;
        long long count = -1;
        char *out = job_failed_payload(&j, &f, c->fmt, c->now, &len, &count);
        cr_assert_not_null(out, "%s", c->name);
        cr_expect_str_eq(out, c->out, "%s", c->name);
        cr_expect_eq(len, strlen(c->out), "%s", c->name);
        cr_expect_eq(count, c->count, "%s", c->name);
        free(out);
        job_free(&j);
    }
}

/* error_message as it lands in the payload, decoded back with jansson. */
static char *failed_message(const char *msg, size_t *len)
{
    struct job j;
    parse_ok("{\"class\":\"K\"}", &j);
    struct job_failure f = {"E", msg, "q"};
    size_t n;
    char *out = job_failed_payload(&j, &f, JOB_TS_FLOAT_SECONDS, 1.0, &n, NULL);
    json_error_t jerr;
    json_t *o = json_loadb(out, n, 0, &jerr);
    cr_assert_not_null(o, "payload is valid JSON for jansson: %s", jerr.text);
    json_t *m = json_object_get(o, "error_message");
    *len = json_string_length(m);
    char *copy = malloc(*len + 1);
    memcpy(copy, json_string_value(m), *len + 1);
    json_decref(o);
    free(out);
    job_free(&j);
    return copy;
}

struct scrub_case {
    const char *in;
    const char *out;
};

/* Ruby's String#scrub output for each input (checked with ruby 3.1). */
static const struct scrub_case scrub_cases[] = {
    {"a\xe3\x81x", "a\xef\xbf\xbdx"},
    {"\xf0\x80\x80z", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbdz"},
    {"\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
    {"\xf4\x90\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
    {"\xc0\xaf", "\xef\xbf\xbd\xef\xbf\xbd"},
    {"ok\xe2\x82", "ok\xef\xbf\xbd"},
    {"\xf0\x9f\x98\x80\xff", "\xf0\x9f\x98\x80\xef\xbf\xbd"},
    {"caf\xc3\xa9 \xe2\x82\xac", "caf\xc3\xa9 \xe2\x82\xac"},
};

Test(job, error_message_scrub)
{
    for (size_t i = 0; i < sizeof scrub_cases / sizeof scrub_cases[0]; i++) {
        size_t n;
        char *m = failed_message(scrub_cases[i].in, &n);
        cr_expect_eq(n, strlen(scrub_cases[i].out), "case %zu", i);
        cr_expect(memcmp(m, scrub_cases[i].out, n) == 0, "case %zu", i);
        free(m);
    }
}

Test(job, error_message_truncation)
{
    char *big = malloc(20001);
    memset(big, 'a', 20000);
    big[20000] = '\0';
    size_t n;
    char *m = failed_message(big, &n);
    cr_expect_eq(n, 10000);
    free(m);

    /* 9,999 ASCII bytes then a 2-byte character: it does not fit and is not cut. */
    memcpy(big + 9999, "\xc3\xa9zzz", 6);
    m = failed_message(big, &n);
    cr_expect_eq(n, 9999);
    cr_expect_eq(m[9998], 'a');
    free(m);

    /* 9,998 + the 2-byte character fits exactly. */
    memcpy(big + 9998, "\xc3\xa9zzz", 6);
    m = failed_message(big, &n);
    cr_expect_eq(n, 10000);
    cr_expect(memcmp(m + 9998, "\xc3\xa9", 2) == 0);
    free(m);
    free(big);
}

Test(job, poison_payload)
{
    size_t n;
    char *out = job_poison_payload(JOB6, strlen(JOB6), "recovered 3 times", JOB_TS_FLOAT_SECONDS,
                                   1712345700.5, &n);
    cr_assert_not_null(out);
    cr_expect_str_eq(out, "{\"retry\":true,\"queue\":\"default\",\"class\":\"HardJob\",\"args\":[1,"
                          "\"x\"],\"jid\":\"b4a577edbccf1d805744efa9\",\"created_at\":1712345678."
                          "123456,\"enqueued_at\":1712345678.1237,\"error_message\":\"recovered 3 "
                          "times\",\"error_class\":\"Tierone::PoisonPill\",\"failed_at\":"
                          "1712345700.5,\"retry_count\":0}");
    free(out);
    cr_expect_null(job_poison_payload("nope", 4, "x", JOB_TS_FLOAT_SECONDS, 1, &n));
}

struct enqueue_case {
    const char *in;
    enum job_ts_format fmt;
    const char *out;
    const char *queue;
};

static const struct enqueue_case enqueue_cases[] = {
    {JOB6, JOB_TS_FLOAT_SECONDS,
     "{\"retry\":true,\"queue\":\"default\",\"class\":\"HardJob\",\"args\":[1,\"x\"],"
     "\"jid\":\"b4a577edbccf1d805744efa9\",\"created_at\":1712345678.123456,"
     "\"enqueued_at\":1712349999.25}",
     "default"},
    {"{\"queue\":\"ai\",\"args\":[123456789012345678901234567890],\"f\":1712345678.0,"
     "\"e\":1.5e3 , \"retry_count\":2}",
     JOB_TS_INT_MILLIS,
     "{\"queue\":\"ai\",\"args\":[123456789012345678901234567890],\"f\":1712345678.0,"
     "\"e\":1.5e3 , \"retry_count\":2,\"enqueued_at\":1712349999250}",
     "ai"},
    {"{\"class\":\"K\",\"queue\":\"\\u0061i\"}", JOB_TS_FLOAT_SECONDS,
     "{\"class\":\"K\",\"queue\":\"\\u0061i\",\"enqueued_at\":1712349999.25}", "ai"},
    {"{\"class\":\"K\"}", JOB_TS_FLOAT_SECONDS, "{\"class\":\"K\",\"enqueued_at\":1712349999.25}",
     "default"},
};

Test(job, enqueue_payload)
{
    for (size_t i = 0; i < sizeof enqueue_cases / sizeof enqueue_cases[0]; i++) {
        const struct enqueue_case *c = &enqueue_cases[i];
        size_t n;
        char *queue = NULL, err[128];
        char *out = job_enqueue_payload(c->in, strlen(c->in), c->fmt, 1712349999.25, &n, &queue,
                                        err, sizeof err);
        cr_assert_not_null(out, "%s: %s", c->in, err);
        cr_expect_str_eq(out, c->out);
        cr_expect_eq(n, strlen(c->out));
        cr_expect_str_eq(queue, c->queue);
        free(out);
        free(queue);
    }
    char *queue = NULL, err[128];
    size_t n;
    cr_expect_null(
        job_enqueue_payload("[1]", 3, JOB_TS_FLOAT_SECONDS, 1, &n, &queue, err, sizeof err));
    cr_expect_str_eq(err, "JSON value is an array, not an object");
    cr_expect_null(queue);
}

struct may_case {
    const char *retry; /* value of "retry", NULL = missing */
    long long new_count;
    int may;
};

static const struct may_case may_cases[] = {
    {NULL, 0, 1},    {NULL, 24, 1},    {NULL, 25, 0}, {"true", 24, 1}, {"true", 25, 0},
    {"0", 0, 0},     {"1", 0, 1},      {"1", 1, 0},   {"3", 2, 1},     {"3", 3, 0},
    {"false", 0, 0}, {"\"5\"", 24, 1}, {"-1", 0, 0},  {"null", 5, 1},
};

Test(job, may_retry)
{
    for (size_t i = 0; i < sizeof may_cases / sizeof may_cases[0]; i++) {
        const struct may_case *c = &may_cases[i];
        char raw[96];
        if (c->retry)
            snprintf(raw, sizeof raw, "{\"retry\":%s}", c->retry);
        else
            snprintf(raw, sizeof raw, "{}");
        struct job j;
        parse_ok(raw, &j);
        cr_expect_eq(job_may_retry(&j, c->new_count, 25), c->may, "%s count %lld", raw,
                     c->new_count);
        job_free(&j);
    }
}

Test(job, retry_delay_range)
{
    for (long long count = 0; count <= 25; count++) {
        double base = (double)(count * count * count * count) + 15;
        int seen[10] = {0};
        for (int k = 0; k < 200; k++) {
            double d = job_retry_delay(count);
            double jitter = d - base;
            cr_assert(jitter >= 0 && jitter <= 9.0 * (double)(count + 1), "count %lld: %f", count,
                      d);
            double steps = jitter / (double)(count + 1);
            cr_assert_eq(steps, floor(steps), "jitter is a multiple of count+1");
            seen[(int)steps] = 1;
        }
        int distinct = 0;
        for (int k = 0; k < 10; k++)
            distinct += seen[k];
        cr_expect_gt(distinct, 1, "jitter varies");
    }
}

struct fmt_case {
    enum job_ts_format fmt;
    double t;
    const char *out;
};

static const struct fmt_case fmt_cases[] = {
    {JOB_TS_FLOAT_SECONDS, 1712345678.123456, "1712345678.123456"},
    {JOB_TS_FLOAT_SECONDS, 1712345678.0, "1712345678.0"},
    {JOB_TS_FLOAT_SECONDS, 1712345678.5, "1712345678.5"},
    {JOB_TS_FLOAT_SECONDS, 1712345678.000001, "1712345678.000001"},
    {JOB_TS_FLOAT_SECONDS, 0.1, "0.1"},
    {JOB_TS_FLOAT_SECONDS, 100.0, "100.0"},
    {JOB_TS_INT_MILLIS, 1712345678.123, "1712345678123"},
    {JOB_TS_INT_MILLIS, 1712345678.1239, "1712345678124"},
    {JOB_TS_INT_MILLIS, 1712345678.0, "1712345678000"},
};

Test(job, format_time)
{
    for (size_t i = 0; i < sizeof fmt_cases / sizeof fmt_cases[0]; i++) {
        char out[40];
        job_format_time(out, sizeof out, fmt_cases[i].fmt, fmt_cases[i].t);
        cr_expect_str_eq(out, fmt_cases[i].out);
    }
}

/* A job keeps the time unit of its own created_at, whatever the configured format. */
Test(job_format, jobs_keep_their_own_time_unit)
{
    const char *ms_job = "{\"class\":\"X\",\"queue\":\"q\",\"created_at\":1712345678123}";
    const char *s_job = "{\"class\":\"X\",\"queue\":\"q\",\"created_at\":1712345678.5}";
    size_t len;
    char *q = NULL, err[100];
    char *out = job_enqueue_payload(ms_job, strlen(ms_job), JOB_TS_FLOAT_SECONDS, 1712345679.25,
                                    &len, &q, err, sizeof err);
    cr_assert_str_eq(out, "{\"class\":\"X\",\"queue\":\"q\",\"created_at\":1712345678123,"
                          "\"enqueued_at\":1712345679250}");
    free(out);
    free(q);
    out = job_enqueue_payload(s_job, strlen(s_job), JOB_TS_INT_MILLIS, 1712345679.25, &len, &q, err,
                              sizeof err);
    cr_assert_str_eq(out, "{\"class\":\"X\",\"queue\":\"q\",\"created_at\":1712345678.5,"
                          "\"enqueued_at\":1712345679.25}");
    free(out);
    free(q);
    struct job j;
    cr_assert_eq(job_parse(ms_job, strlen(ms_job), &j, err, sizeof err), 0);
    struct job_failure f = {"RuntimeError", "boom", "q"};
    out = job_failed_payload(&j, &f, JOB_TS_FLOAT_SECONDS, 1712345679.25, &len, NULL);
    cr_assert(strstr(out, "\"failed_at\":1712345679250") != NULL, "%s", out);
    free(out);
    job_free(&j);
}

/* The fast path of job_format_time agrees with the shortest round-trip form (checked by
 * brute force: the fewest decimals whose value reads back as the same double). */
Test(job_format, float_fast_path_is_the_shortest_round_trip)
{
    uint64_t x = 88172645463325252ull;
    for (int i = 0; i < 20000; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        double v = 1.0e9 + (double)(x % 3000000000000000ull) / 1e6;
        if (i % 3 == 0)
            v = (double)(long long)v + 0.5; /* short fractions too */
        char got[40], want[40];
        job_format_time(got, sizeof got, JOB_TS_FLOAT_SECONDS, v);
        for (int d = 1; d <= 17; d++) {
            snprintf(want, sizeof want, "%.*f", d, v);
            if (strtod(want, NULL) == v)
                break;
        }
        cr_assert_str_eq(got, want, "v=%.17g", v);
    }
}
