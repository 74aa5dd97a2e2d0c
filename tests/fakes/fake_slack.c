/* fake_slack: one incoming webhook on fake_http, validating payloads the way Slack does. */
#include "fake_slack.h"

#include "xalloc.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define FAKE_SLACK_DEFAULT_PATH "/services/T000/B000/XXXX"

struct fake_slack {
    struct fake_http *http;
    struct fake_faults *faults;
    char *path;
    char *webhook_url;
    pthread_mutex_t mu;
    int archived, revoked;
    json_t *messages; /* array of accepted payloads */
};

/* Unicode code points in a UTF-8 string. */
static size_t fake_slack_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xc0) != 0x80;
    return n;
}

/* A text object {type: plain_text|mrkdwn, text: non-empty <= max}; plain_only for headers. */
static int fake_slack_text_ok(json_t *t, size_t max, int plain_only)
{
    const char *type = json_string_value(json_object_get(t, "type"));
    const char *text = json_string_value(json_object_get(t, "text"));
    if (!type || !text || !*text || fake_slack_chars(text) > max)
        return 0;
    if (strcmp(type, "plain_text") == 0)
        return 1;
    return !plain_only && strcmp(type, "mrkdwn") == 0;
}

static int fake_slack_block_ok(json_t *b)
{
    const char *type = json_string_value(json_object_get(b, "type"));
    if (!type)
        return 0;
    if (strcmp(type, "divider") == 0)
        return 1;
    if (strcmp(type, "header") == 0)
        return fake_slack_text_ok(json_object_get(b, "text"), 150, 1);
    if (strcmp(type, "section") == 0) {
        json_t *text = json_object_get(b, "text"), *fields = json_object_get(b, "fields");
        if (!text && !fields)
            return 0;
        if (text && !fake_slack_text_ok(text, 3000, 0))
            return 0;
        if (fields && (!json_is_array(fields) || json_array_size(fields) > 10))
            return 0;
        size_t i;
        json_t *f;
        json_array_foreach(fields, i, f) if (!fake_slack_text_ok(f, 2000, 0)) return 0;
        return 1;
    }
    if (strcmp(type, "context") == 0) {
        json_t *els = json_object_get(b, "elements");
        if (!json_is_array(els) || json_array_size(els) == 0 || json_array_size(els) > 10)
            return 0;
        size_t i;
        json_t *e;
        json_array_foreach(els, i, e) if (!fake_slack_text_ok(e, 3000, 0)) return 0;
        return 1;
    }
    if (strcmp(type, "actions") == 0) {
        json_t *els = json_object_get(b, "elements");
        if (!json_is_array(els) || json_array_size(els) == 0 || json_array_size(els) > 25)
            return 0;
        size_t i;
        json_t *e;
        json_array_foreach(els, i, e)
        {
            const char *et = json_string_value(json_object_get(e, "type"));
            if (!et || strcmp(et, "button") != 0 ||
                !fake_slack_text_ok(json_object_get(e, "text"), 75, 1))
                return 0;
        }
        return 1;
    }
    return 0;
}

/* NULL when the payload is acceptable, else Slack's error string. */
static const char *fake_slack_check(const struct fake_http_request *req, json_t **out)
{
    const char *ct = fake_http_request_header(req, "Content-Type");
    if (!ct || strncasecmp(ct, "application/json", 16) != 0 || (ct[16] != '\0' && ct[16] != ';'))
        return "invalid_payload";
    json_t *j = json_loadb(req->body, req->body_len, 0, NULL);
    if (!json_is_object(j)) {
        json_decref(j);
        return "invalid_payload";
    }
    *out = j;
    json_t *text = json_object_get(j, "text"), *blocks = json_object_get(j, "blocks");
    int has_text = json_is_string(text) && json_string_length(text) > 0;
    if (text && !json_is_string(text))
        return "invalid_payload";
    if (!has_text && !blocks)
        return "missing_text_or_fallback_or_attachments";
    if (blocks) {
        if (!json_is_array(blocks) || json_array_size(blocks) > 50)
            return "invalid_blocks";
        size_t i;
        json_t *b;
        json_array_foreach(blocks, i, b) if (!fake_slack_block_ok(b)) return "invalid_blocks";
        if (!has_text && json_array_size(blocks) == 0)
            return "missing_text_or_fallback_or_attachments";
    }
    return NULL;
}

static void fake_slack_answer(struct fake_http_response *resp, int status, const char *text)
{
    resp->status = status;
    fake_http_response_header(resp, "Content-Type", "text/html");
    fake_http_response_body(resp, text);
}

static void fake_slack_handle(const struct fake_http_request *req, struct fake_http_response *resp,
                              void *arg)
{
    struct fake_slack *f = arg;
    if (fake_faults_apply(f->faults, resp))
        return;
    pthread_mutex_lock(&f->mu);
    int revoked = f->revoked, archived = f->archived;
    pthread_mutex_unlock(&f->mu);
    if (strcmp(req->path, f->path) != 0 || revoked) {
        fake_slack_answer(resp, 404, "no_service");
        return;
    }
    if (strcmp(req->method, "POST") != 0) {
        fake_slack_answer(resp, 400, "invalid_payload");
        return;
    }
    if (archived) {
        fake_slack_answer(resp, 410, "channel_is_archived");
        return;
    }
    json_t *payload = NULL;
    const char *bad = fake_slack_check(req, &payload);
    if (bad) {
        json_decref(payload);
        fake_slack_answer(resp, 400, bad);
        return;
    }
    pthread_mutex_lock(&f->mu);
    json_array_append_new(f->messages, payload);
    pthread_mutex_unlock(&f->mu);
    fake_slack_answer(resp, 200, "ok");
}

struct fake_slack *fake_slack_start(const struct fake_slack_opts *opts)
{
    struct fake_http *http = fake_http_start(NULL);
    if (!http)
        return NULL;
    struct fake_slack *f = xcalloc(1, sizeof *f);
    f->http = http;
    f->faults = fake_faults_new();
    f->path = xstrdup(opts && opts->path ? opts->path : FAKE_SLACK_DEFAULT_PATH);
    f->webhook_url = xasprintf("%s%s", fake_http_url(http), f->path);
    f->messages = json_array();
    pthread_mutex_init(&f->mu, NULL);
    fake_http_route(http, NULL, "/services/*", fake_slack_handle, f);
    return f;
}

void fake_slack_free(struct fake_slack *f)
{
    if (!f)
        return;
    fake_http_free(f->http); /* joins the thread: no handler runs after this */
    fake_faults_free(f->faults);
    json_decref(f->messages);
    pthread_mutex_destroy(&f->mu);
    free(f->path);
    free(f->webhook_url);
    free(f);
}

const char *fake_slack_url(struct fake_slack *f)
{
    return fake_http_url(f->http);
}

const char *fake_slack_webhook_url(struct fake_slack *f)
{
    return f->webhook_url;
}

struct fake_faults *fake_slack_faults(struct fake_slack *f)
{
    return f->faults;
}

struct fake_http *fake_slack_http(struct fake_slack *f)
{
    return f->http;
}

void fake_slack_set_archived(struct fake_slack *f, int on)
{
    pthread_mutex_lock(&f->mu);
    f->archived = on;
    pthread_mutex_unlock(&f->mu);
}

void fake_slack_set_revoked(struct fake_slack *f, int on)
{
    pthread_mutex_lock(&f->mu);
    f->revoked = on;
    pthread_mutex_unlock(&f->mu);
}

size_t fake_slack_count(struct fake_slack *f)
{
    pthread_mutex_lock(&f->mu);
    size_t n = json_array_size(f->messages);
    pthread_mutex_unlock(&f->mu);
    return n;
}

json_t *fake_slack_message(struct fake_slack *f, size_t i)
{
    pthread_mutex_lock(&f->mu);
    json_t *m = json_deep_copy(json_array_get(f->messages, i));
    pthread_mutex_unlock(&f->mu);
    return m;
}
