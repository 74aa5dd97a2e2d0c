/* lib/slack against tests/fakes/fake_slack: the payload it builds (blocks, limits,
 * escaping), every outcome class (success, permanent with Slack's text, 429 at the
 * Retry-After time, 5xx and transport failures retried), the secret URL kept out of
 * errors, and the fleet rate limit (real Redis, database 13) rescheduling without a
 * request. Every test closes its loop and asserts uv_loop_close() == 0. */
#include "clock.h"
#include "fake_slack.h"
#include "http_client.h"
#include "log.h"
#include "rate_limit.h"
#include "redis.h"
#include "slack.h"
#include "buf.h"
#include "test_loop.h"
#include "test_redis.h"
#include "xalloc.h"

#include <criterion/criterion.h>
#include <curl/curl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define REDIS_DB 13

struct seen {
    int calls;
    struct job_error *err;
    json_t *result;
};

struct t {
    uv_loop_t loop;
    struct http_client *http;
    struct fake_slack *fake;
    struct slack *c;
    struct redis *redis;
    struct rate_limit *limit;
    int closed;
};

static struct t T;

static void suite_fini(void)
{
    http_client_global_cleanup();
}

TestSuite(slack, .fini = suite_fini);

static void t_start_with(struct rate_limit *(*make_limit)(void), uint64_t timeout_ms)
{
    log_init("test", LOG_OFF);
    cr_assert_eq(uv_loop_init(&T.loop), 0);
    char *err = NULL;
    T.http = http_client_new(&T.loop, NULL, &err);
    cr_assert_not_null(T.http, "%s", err);
    T.fake = fake_slack_start(NULL);
    cr_assert_not_null(T.fake);
    T.limit = make_limit ? make_limit() : NULL;
    struct slack_opts o = {.http = T.http,
                           .limit = T.limit,
                           .webhook_url = fake_slack_webhook_url(T.fake),
                           .timeout_ms = timeout_ms};
    T.c = slack_new(&o, &err);
    cr_assert_not_null(T.c, "%s", err);
}

static void t_start(void)
{
    memset(&T, 0, sizeof T);
    t_start_with(NULL, 0);
}

static void on_closed(void *arg)
{
    (*(int *)arg)++;
}

static void t_finish(void)
{
    slack_free(T.c);
    rate_limit_free(T.limit);
    if (T.redis)
        redis_close(T.redis, NULL, NULL);
    http_client_close(T.http, on_closed, &T.closed);
    cr_assert_eq(uv_run(&T.loop, UV_RUN_DEFAULT), 0);
    cr_assert_eq(T.closed, 1);
    cr_assert_eq(uv_loop_close(&T.loop), 0);
    fake_slack_free(T.fake);
}

static void on_done(struct job_error *err, json_t *result, void *arg)
{
    struct seen *s = arg;
    s->calls++;
    s->err = err;
    s->result = json_incref(result);
}

static void seen_free(struct seen *s)
{
    job_error_free(s->err);
    json_decref(s->result);
    memset(s, 0, sizeof *s);
}

/* Post m and run the loop until the callback ran. */
static void post(const char *jid, const struct slack_message *m, struct seen *s)
{
    cr_assert_eq(slack_post(T.c, jid, m, on_done, s), 0);
    cr_assert(test_loop_until_flag(&T.loop, &s->calls, 15000), "the callback never ran");
    cr_assert_eq(s->calls, 1);
}

static const struct slack_message simple = {.text = "A customer needs a human"};

/* The error must never carry the secret part of the webhook URL. */
static void assert_no_secret(const struct job_error *e)
{
    cr_assert_null(strstr(e->error_message, "/services/"), "%s", e->error_message);
    cr_assert_null(strstr(e->error_message, "XXXX"), "%s", e->error_message);
}

/* 100 copies of s (one per line) joined: n characters of s repeated. */
static char *repeat(const char *s, size_t times)
{
    size_t len = strlen(s);
    char *out = xmalloc(len * times + 1);
    for (size_t i = 0; i < times; i++)
        memcpy(out + i * len, s, len);
    out[len * times] = '\0';
    return out;
}

static size_t utf8_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xc0) != 0x80;
    return n;
}

static const char *block_text(json_t *payload, size_t i)
{
    json_t *b = json_array_get(json_object_get(payload, "blocks"), i);
    json_t *t = json_object_get(b, "text");
    if (!t)
        t = json_array_get(json_object_get(b, "elements"), 0);
    return json_string_value(json_object_get(t, "text"));
}

static const char *block_type(json_t *payload, size_t i)
{
    json_t *b = json_array_get(json_object_get(payload, "blocks"), i);
    return json_string_value(json_object_get(b, "type"));
}

Test(slack, post_with_blocks_succeeds_and_is_recorded)
{
    t_start();
    struct slack_link links[] = {
        {"Open in Chatwoot", "https://chat.example.com/app/accounts/1/conversations/42"},
        {"ENG-7", "https://linear.app/acme/issue/ENG-7/refund"},
    };
    struct slack_message m = {
        .text = "Escalation: conversation 42",
        .header = "Customer needs a human",
        .summary = "*Refund request* for order 1234",
        .context = "Inbox: Support | Priority: high",
        .links = links,
        .nlinks = 2,
    };
    struct seen s = {0};
    post("jid-1", &m, &s);
    cr_assert_null(s.err, "%s", s.err ? s.err->error_message : "");
    cr_assert_str_eq(json_string_value(s.result), "ok");
    cr_assert_eq(fake_slack_count(T.fake), 1);

    const struct fake_http_request *req = fake_http_request_at(fake_slack_http(T.fake), 0);
    cr_assert_str_eq(req->method, "POST");
    cr_assert_str_eq(req->path, "/services/T000/B000/XXXX");
    cr_assert_str_eq(fake_http_request_header(req, "Content-Type"), "application/json");

    json_t *p = fake_slack_message(T.fake, 0);
    cr_assert_str_eq(json_string_value(json_object_get(p, "text")), "Escalation: conversation 42");
    cr_assert_eq(json_array_size(json_object_get(p, "blocks")), 4);
    cr_assert_str_eq(block_type(p, 0), "header");
    cr_assert_str_eq(block_text(p, 0), "Customer needs a human");
    cr_assert_str_eq(block_type(p, 1), "section");
    cr_assert_str_eq(block_text(p, 1), "*Refund request* for order 1234");
    cr_assert_str_eq(block_type(p, 2), "section");
    cr_assert_str_eq(block_text(p, 2),
                     "<https://chat.example.com/app/accounts/1/conversations/42|Open in Chatwoot>"
                     "  |  <https://linear.app/acme/issue/ENG-7/refund|ENG-7>");
    cr_assert_str_eq(block_type(p, 3), "context");
    cr_assert_str_eq(block_text(p, 3), "Inbox: Support | Priority: high");
    json_decref(p);
    seen_free(&s);

    /* Text only: no blocks at all. */
    post(NULL, &simple, &s);
    cr_assert_null(s.err);
    p = fake_slack_message(T.fake, 1);
    cr_assert_null(json_object_get(p, "blocks"));
    json_decref(p);
    seen_free(&s);
    cr_assert_str_eq(slack_host(T.c), strstr(fake_slack_url(T.fake), "127.0.0.1"));
    t_finish();
}

Test(slack, long_texts_are_cut_within_limits_and_still_accepted)
{
    t_start();
    char *summary = repeat("é", 5000); /* 5000 characters, 10000 bytes */
    char *header = repeat("h", 200);
    char *text = repeat("t", 5000);
    char *label = repeat("L", 100);
    char *context = repeat("c", 2999);
    struct slack_link links[] = {{label, "https://x.example/a|b>c d"}, {"no url", NULL}};
    struct slack_message m = {.text = text,
                              .header = header,
                              .summary = summary,
                              .context = context,
                              .links = links,
                              .nlinks = 2};
    struct seen s = {0};
    post("jid-long", &m, &s);
    cr_assert_null(s.err, "%s", s.err ? s.err->error_message : "");
    json_t *p = fake_slack_message(T.fake, 0);
    const char *t = json_string_value(json_object_get(p, "text"));
    cr_assert_eq(utf8_chars(t), 4000);
    cr_assert_str_eq(t + strlen(t) - 3, "\xe2\x80\xa6");
    cr_assert_eq(utf8_chars(block_text(p, 0)), 150);
    const char *sum = block_text(p, 1);
    cr_assert_eq(utf8_chars(sum), 3000);
    cr_assert_eq(strncmp(sum, "éé", 4), 0);
    cr_assert_str_eq(sum + strlen(sum) - 3, "\xe2\x80\xa6");
    cr_assert_eq(strlen(sum), 2999 * 2 + 3, "no character split");
    char *want_label = repeat("L", 74);
    char *want = xasprintf("<https://x.example/a%%7Cb%%3Ec%%20d|%s\xe2\x80\xa6>", want_label);
    cr_assert_str_eq(block_text(p, 2), want);
    cr_assert_str_eq(block_text(p, 3), context, "2999 characters are not cut");
    json_decref(p);
    free(want);
    free(want_label);
    seen_free(&s);
    free(summary);
    free(header);
    free(text);
    free(label);
    free(context);
    t_finish();
}

Test(slack, payload_escaping_and_invalid_utf8)
{
    char *e = slack_escape("<!channel> & <https://evil|click>");
    cr_assert_str_eq(e, "&lt;!channel&gt; &amp; &lt;https://evil|click&gt;");
    free(e);
    struct slack_link l = {"a <b> & c", "https://ok.example/"};
    struct slack_message m = {.text = "bad \xff\xfe utf8 \xc0\x80 end", .links = &l, .nlinks = 1};
    json_t *p = slack_message_payload(&m);
    cr_assert_not_null(p);
    cr_assert_str_eq(json_string_value(json_object_get(p, "text")), "bad ?? utf8 ?? end");
    cr_assert_str_eq(block_text(p, 0), "<https://ok.example/|a &lt;b&gt; &amp; c>");
    json_decref(p);
    struct slack_message none = {.text = ""};
    cr_assert_null(slack_message_payload(&none));
    cr_assert_null(slack_message_payload(NULL));
}

Test(slack, invalid_inputs_are_refused_without_a_callback)
{
    t_start();
    struct seen s = {0};
    struct slack_message no_text = {.summary = "only a summary"};
    cr_assert_eq(slack_post(T.c, "j", &no_text, on_done, &s), -1);
    struct slack_link links[SLACK_MAX_LINKS + 1] = {{"a", "https://a"}};
    struct slack_message many = {.text = "x", .links = links, .nlinks = SLACK_MAX_LINKS + 1};
    cr_assert_eq(slack_post(T.c, "j", &many, on_done, &s), -1);
    uv_run(&T.loop, UV_RUN_NOWAIT);
    cr_assert_eq(s.calls, 0);
    cr_assert_eq(fake_http_count(fake_slack_http(T.fake)), 0);

    char *err = NULL;
    struct slack_opts o = {.http = T.http, .webhook_url = "hooks.slack.com/services/T/B/X"};
    cr_assert_null(slack_new(&o, &err));
    cr_assert_not_null(err);
    cr_assert_null(strstr(err, "services"), "the reason must not echo the secret URL");
    free(err);
    err = NULL;
    o.webhook_url = "ftp://hooks.slack.com/services/T/B/X";
    cr_assert_null(slack_new(&o, &err));
    free(err);
    err = NULL;
    o.webhook_url = NULL;
    cr_assert_null(slack_new(&o, &err));
    free(err);
    err = NULL;
    struct slack_opts no_http = {.webhook_url = "https://hooks.slack.com/services/T/B/X"};
    cr_assert_null(slack_new(&no_http, &err));
    free(err);
    t_finish();
}

/* Post `simple` and check a permanent failure with status and Slack's text. */
static void expect_permanent(const char *cls, const char *needle)
{
    struct seen s = {0};
    post("jid-perm", &simple, &s);
    cr_assert_not_null(s.err);
    cr_assert_eq(s.err->kind, JOB_ERR_PERMANENT, "%s", job_error_kind_name(s.err->kind));
    cr_assert_str_eq(s.err->error_class, cls);
    cr_assert_not_null(strstr(s.err->error_message, needle), "%s", s.err->error_message);
    cr_assert_not_null(strstr(s.err->error_message, slack_host(T.c)), "%s", s.err->error_message);
    assert_no_secret(s.err);
    cr_assert_null(s.result);
    seen_free(&s);
}

Test(slack, archived_revoked_and_invalid_payload_are_permanent)
{
    t_start();
    fake_slack_set_archived(T.fake, 1);
    expect_permanent("Tierone::Slack::ClientError", "HTTP 410: channel_is_archived");
    fake_slack_set_archived(T.fake, 0);
    fake_slack_set_revoked(T.fake, 1);
    expect_permanent("Tierone::Slack::NotFound", "HTTP 404: no_service");
    fake_slack_set_revoked(T.fake, 0);
    struct fake_fault f400 = {.status = 400, .body = "invalid_payload"};
    fake_faults_push(fake_slack_faults(T.fake), &f400, 1);
    expect_permanent("Tierone::Slack::ClientError", "HTTP 400: invalid_payload");
    struct fake_fault f403 = {.status = 403, .body = "action_prohibited"};
    fake_faults_push(fake_slack_faults(T.fake), &f403, 1);
    expect_permanent("Tierone::Slack::Forbidden", "HTTP 403: action_prohibited");
    struct fake_fault f404 = {.status = 404, .body = "channel_not_found"};
    fake_faults_push(fake_slack_faults(T.fake), &f404, 1);
    expect_permanent("Tierone::Slack::NotFound", "HTTP 404: channel_not_found");
    cr_assert_eq(fake_slack_count(T.fake), 0);
    /* And it works again once the channel is back. */
    struct seen s = {0};
    post("jid-ok", &simple, &s);
    cr_assert_null(s.err);
    seen_free(&s);
    cr_assert_eq(fake_slack_count(T.fake), 1);
    t_finish();
}

Test(slack, rate_limited_retries_at_retry_after)
{
    t_start();
    struct fake_fault f = {.status = 429, .retry_after = "30", .body = "rate_limited"};
    fake_faults_push(fake_slack_faults(T.fake), &f, 1);
    struct seen s = {0};
    double before = clock_wall_s();
    post("jid-429", &simple, &s);
    double after = clock_wall_s();
    cr_assert_not_null(s.err);
    cr_assert_eq(s.err->kind, JOB_ERR_RETRY_AT);
    cr_assert_str_eq(s.err->error_class, "Tierone::Slack::RateLimited");
    cr_assert(s.err->retry_at >= before + 30 && s.err->retry_at <= after + 30, "retry_at %f",
              s.err->retry_at - before);
    assert_no_secret(s.err);
    seen_free(&s);

    /* An HTTP-date names the instant exactly. */
    time_t at = time(NULL) + 120;
    char date[64];
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", gmtime(&at));
    struct fake_fault fd = {.status = 429, .retry_after = date, .body = "rate_limited"};
    fake_faults_push(fake_slack_faults(T.fake), &fd, 1);
    post("jid-429d", &simple, &s);
    cr_assert_eq(s.err->kind, JOB_ERR_RETRY_AT);
    cr_assert_float_eq(s.err->retry_at, (double)at, 1e-6);
    seen_free(&s);

    /* Without Retry-After: plain retry with backoff. */
    struct fake_fault fn = {.status = 429, .body = "rate_limited"};
    fake_faults_push(fake_slack_faults(T.fake), &fn, 1);
    post("jid-429n", &simple, &s);
    cr_assert_eq(s.err->kind, JOB_ERR_RETRY);
    seen_free(&s);
    t_finish();
}

Test(slack, server_errors_and_transport_failures_are_retried)
{
    memset(&T, 0, sizeof T);
    t_start_with(NULL, 500);
    struct fake_faults *q = fake_slack_faults(T.fake);
    struct fake_fault f500 = {.status = 500, .body = "rollup_error"};
    struct fake_fault f503 = {.status = 503, .body = "<html>busy</html>"};
    struct fake_fault drop = {.action = FAKE_HTTP_DROP};
    struct fake_fault garbage = {.action = FAKE_HTTP_GARBAGE};
    struct fake_fault slow = {.delay_ms = 3000, .pass_through = 1};
    /* A dropped connection first: on a reused keep-alive connection curl would resend
     * the request once, which would consume the next fault. */
    fake_faults_push(q, &drop, 1);
    fake_faults_push(q, &garbage, 1);
    fake_faults_push(q, &f500, 1);
    fake_faults_push(q, &f503, 1);
    fake_faults_push(q, &slow, 1);
    const char *classes[] = {"Tierone::Slack::TransportError", "Tierone::Slack::TransportError",
                             "Tierone::Slack::ServerError", "Tierone::Slack::ServerError",
                             "Tierone::Slack::Timeout"};
    for (int i = 0; i < 5; i++) {
        struct seen s = {0};
        post("jid-retry", &simple, &s);
        cr_assert_not_null(s.err, "case %d", i);
        cr_assert_eq(s.err->kind, JOB_ERR_RETRY, "case %d: %s", i,
                     job_error_kind_name(s.err->kind));
        cr_assert_str_eq(s.err->error_class, classes[i], "case %d: %s %s", i, s.err->error_class,
                         s.err->error_message);
        assert_no_secret(s.err);
        if (i == 2)
            cr_assert_not_null(strstr(s.err->error_message, "HTTP 500: rollup_error"));
        seen_free(&s);
    }
    /* The slow one was posted: only its answer came too late (a timeout is not proof that
     * nothing was sent, which is why a retried notice can appear twice). */
    cr_assert_eq(fake_slack_count(T.fake), 1);
    t_finish();
}

/* ---- the fake's own checks, with raw requests ----------------------------------------- */

struct raw {
    int done;
    long status;
    char *body;
};

static void on_raw(struct http_response *r, void *arg)
{
    struct raw *x = arg;
    x->done = 1;
    x->status = r->status;
    x->body = xstrdup(r->body);
}

static void raw_post(const char *path, const char *ct, const char *body, long want_status,
                     const char *want_body)
{
    char *url = xasprintf("%s%s", fake_slack_url(T.fake), path);
    char *h = ct ? xasprintf("Content-Type: %s", ct) : xstrdup("Content-Type:");
    const char *headers[] = {h};
    struct http_request req = {.method = "POST",
                               .url = url,
                               .headers = headers,
                               .nheaders = 1,
                               .body = body,
                               .body_len = strlen(body)};
    struct raw x = {0};
    cr_assert_eq(http_client_request(T.http, &req, on_raw, &x, NULL), 0);
    cr_assert(test_loop_until_flag(&T.loop, &x.done, 15000), "no answer");
    cr_assert_eq(x.status, want_status, "%s: %ld %s", body, x.status, x.body);
    cr_assert_str_eq(x.body, want_body, "%s", body);
    free(x.body);
    free(url);
    free(h);
}

Test(slack, fake_validates_like_slack)
{
    t_start();
    const char *hook = "/services/T000/B000/XXXX";
    raw_post("/services/T000/B000/WRONG", "application/json", "{\"text\":\"x\"}", 404,
             "no_service");
    raw_post(hook, NULL, "{\"text\":\"x\"}", 400, "invalid_payload");
    raw_post(hook, "application/x-www-form-urlencoded", "{\"text\":\"x\"}", 400, "invalid_payload");
    raw_post(hook, "application/json", "{not json", 400, "invalid_payload");
    raw_post(hook, "application/json", "{}", 400, "missing_text_or_fallback_or_attachments");
    raw_post(hook, "application/json", "{\"text\":\"x\",\"blocks\":{}}", 400, "invalid_blocks");
    raw_post(hook, "application/json", "{\"text\":\"x\",\"blocks\":[{\"type\":\"bogus\"}]}", 400,
             "invalid_blocks");
    raw_post(hook, "application/json",
             "{\"text\":\"x\",\"blocks\":[{\"type\":\"section\",\"text\":{\"type\":\"markdown\","
             "\"text\":\"y\"}}]}",
             400, "invalid_blocks");
    char *big = repeat("a", 3001);
    char *body = xasprintf("{\"text\":\"x\",\"blocks\":[{\"type\":\"section\",\"text\":{\"type\":"
                           "\"mrkdwn\",\"text\":\"%s\"}}]}",
                           big);
    raw_post(hook, "application/json", body, 400, "invalid_blocks");
    free(body);
    big[3000] = '\0';
    body = xasprintf("{\"text\":\"x\",\"blocks\":[{\"type\":\"section\",\"text\":{\"type\":"
                     "\"mrkdwn\",\"text\":\"%s\"}}]}",
                     big);
    raw_post(hook, "application/json; charset=utf-8", body, 200, "ok");
    free(body);
    free(big);
    /* 51 blocks */
    struct buf b = BUF_INIT;
    buf_puts(&b, "{\"text\":\"x\",\"blocks\":[");
    for (int i = 0; i < 51; i++)
        buf_printf(&b, "%s{\"type\":\"divider\"}", i ? "," : "");
    buf_puts(&b, "]}");
    raw_post(hook, "application/json", b.data, 400, "invalid_blocks");
    buf_free(&b);
    cr_assert_eq(fake_slack_count(T.fake), 1);
    t_finish();
}

/* ---- the fleet rate limit ------------------------------------------------------------- */

static struct rate_limit *make_limit(void)
{
    redisContext *rc = test_redis_connect(REDIS_DB); /* FLUSHDB */
    redisFree(rc);
    struct redis_opts o = {.url = test_redis_url(REDIS_DB), .name = "test-slack"};
    const char *err = NULL;
    T.redis = redis_new(&T.loop, &o, &err);
    cr_assert_not_null(T.redis, "%s", err);
    cr_assert(test_loop_until_redis_up(&T.loop, T.redis, 5000), "redis did not come up");
    struct rate_limit *rl = rate_limit_new(T.redis, "slack:test", 1.0 / 60, 1, &err);
    cr_assert_not_null(rl, "%s", err);
    return rl;
}

Test(slack, no_token_reschedules_without_a_request)
{
    memset(&T, 0, sizeof T);
    t_start_with(make_limit, 0);
    struct seen s = {0};
    post("jid-a", &simple, &s);
    cr_assert_null(s.err, "the first post takes the only token");
    seen_free(&s);
    double before = clock_wall_s();
    post("jid-b", &simple, &s);
    cr_assert_not_null(s.err);
    cr_assert_eq(s.err->kind, JOB_ERR_RESCHEDULE, "%s", job_error_kind_name(s.err->kind));
    cr_assert_str_eq(s.err->error_class, "Tierone::RateLimit");
    /* one token a minute: the reserved token is about 60 s away */
    cr_assert(s.err->retry_at > before + 50 && s.err->retry_at < before + 61, "at +%f",
              s.err->retry_at - before);
    seen_free(&s);
    cr_assert_eq(fake_http_count(fake_slack_http(T.fake)), 1, "no request without a token");
    t_finish();
}
