/* slack: Block Kit payloads within Slack's limits, posted through service_call. */
#include "slack.h"

#include "buf.h"
#include "log.h"
#include "service.h"
#include "xalloc.h"

#include <stdlib.h>
#include <string.h>

#define SLACK_TEXT_MAX    4000
#define SLACK_HEADER_MAX  150
#define SLACK_SECTION_MAX 3000
#define SLACK_LABEL_MAX   75
#define SLACK_ELLIPSIS    "\xe2\x80\xa6" /* U+2026 */

struct slack {
    struct service svc;
    char *url;
    char *host;
    char *what; /* "POST <host> webhook": names calls without the secret path */
};

/* One call in flight. */
struct slack_call {
    struct slack *c;
    slack_cb cb;
    void *arg;
};

static const struct http_failure_policy slack_policy = {.service = "Slack", .fixed_window_s = 0};

/* Length of the valid UTF-8 sequence at s[0..len), or 0 (RFC 3629: no overlongs, no
 * surrogates, nothing above U+10FFFF), so jansson accepts every string we build. */
static size_t slack_utf8_len(const unsigned char *s, size_t len)
{
    unsigned char c = s[0];
    size_t n;
    unsigned char lo = 0x80, hi = 0xbf;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        n = 2;
    else if (c >= 0xe0 && c <= 0xef)
        n = 3;
    else if (c >= 0xf0 && c <= 0xf4)
        n = 4;
    else
        return 0;
    if (c == 0xe0)
        lo = 0xa0;
    else if (c == 0xed)
        hi = 0x9f;
    else if (c == 0xf0)
        lo = 0x90;
    else if (c == 0xf4)
        hi = 0x8f;
    if (n > len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    return n;
}

/* s as valid UTF-8 of at most max characters: invalid bytes become '?', and a longer text
 * keeps max - 1 characters plus an ellipsis. New string. */
static char *slack_cut(const char *s, size_t max)
{
    struct buf b = BUF_INIT;
    size_t len = strlen(s), chars = 0, keep_bytes = 0;
    for (size_t i = 0; i < len;) {
        size_t n = slack_utf8_len((const unsigned char *)s + i, len - i);
        if (chars == max - 1)
            keep_bytes = b.len;
        if (chars == max) { /* one character too many: cut back and add the ellipsis */
            b.len = keep_bytes;
            buf_puts(&b, SLACK_ELLIPSIS);
            break;
        }
        buf_append(&b, n ? s + i : "?", n ? n : 1);
        i += n ? n : 1;
        chars++;
    }
    return buf_steal(&b);
}

char *slack_escape(const char *s)
{
    struct buf b = BUF_INIT;
    for (; s && *s; s++) {
        if (*s == '&')
            buf_puts(&b, "&amp;");
        else if (*s == '<')
            buf_puts(&b, "&lt;");
        else if (*s == '>')
            buf_puts(&b, "&gt;");
        else
            buf_append(&b, s, 1);
    }
    return buf_steal(&b);
}

/* A text object {"type": type, "text": s cut to max}. */
static json_t *slack_text_obj(const char *type, const char *s, size_t max)
{
    char *t = slack_cut(s, max);
    json_t *o = json_pack("{s:s, s:s}", "type", type, "text", t);
    free(t);
    return o;
}

/* "<url|label>" for one link; the URL's characters that would end the link are
 * percent-encoded, the label is escaped. New string. */
static char *slack_link_mrkdwn(const struct slack_link *l)
{
    struct buf b = BUF_INIT;
    char *url = slack_cut(l->url, SIZE_MAX);
    buf_puts(&b, "<");
    for (const char *p = url; *p; p++) {
        if (*p == '|' || *p == '>' || *p == '<' || *p == ' ')
            buf_printf(&b, "%%%02X", (unsigned char)*p);
        else
            buf_append(&b, p, 1);
    }
    free(url);
    const char *label = l->text && *l->text ? l->text : l->url;
    char *cut = slack_cut(label, SLACK_LABEL_MAX);
    char *esc = slack_escape(cut);
    buf_printf(&b, "|%s>", esc);
    free(cut);
    free(esc);
    return buf_steal(&b);
}

/* The links as one mrkdwn line, "<u1|l1>  |  <u2|l2>", leaving out links that do not fit
 * in a section. NULL when there is none. */
static char *slack_links_text(const struct slack_message *m)
{
    struct buf b = BUF_INIT;
    size_t chars = 0;
    for (size_t i = 0; i < m->nlinks; i++) {
        const struct slack_link *l = &m->links[i];
        if (!l->url || !*l->url)
            continue;
        char *one = slack_link_mrkdwn(l);
        size_t n = 0; /* characters */
        for (const char *p = one; *p; p++)
            n += ((unsigned char)*p & 0xc0) != 0x80;
        size_t sep = b.len ? 5 : 0;
        if (chars + sep + n <= SLACK_SECTION_MAX) {
            if (sep)
                buf_puts(&b, "  |  ");
            buf_puts(&b, one);
            chars += sep + n;
        }
        free(one);
    }
    return b.len ? buf_steal(&b) : (buf_free(&b), NULL);
}

json_t *slack_message_payload(const struct slack_message *m)
{
    if (!m || !m->text || !*m->text)
        return NULL;
    json_t *blocks = json_array();
    if (m->header && *m->header)
        json_array_append_new(blocks,
                              json_pack("{s:s, s:o}", "type", "header", "text",
                                        slack_text_obj("plain_text", m->header, SLACK_HEADER_MAX)));
    if (m->summary && *m->summary)
        json_array_append_new(blocks,
                              json_pack("{s:s, s:o}", "type", "section", "text",
                                        slack_text_obj("mrkdwn", m->summary, SLACK_SECTION_MAX)));
    char *links = slack_links_text(m);
    if (links)
        json_array_append_new(blocks,
                              json_pack("{s:s, s:o}", "type", "section", "text",
                                        slack_text_obj("mrkdwn", links, SLACK_SECTION_MAX)));
    free(links);
    if (m->context && *m->context)
        json_array_append_new(blocks,
                              json_pack("{s:s, s:[o]}", "type", "context", "elements",
                                        slack_text_obj("mrkdwn", m->context, SLACK_SECTION_MAX)));
    char *text = slack_cut(m->text, SLACK_TEXT_MAX);
    json_t *payload = json_pack("{s:s}", "text", text);
    free(text);
    if (json_array_size(blocks))
        json_object_set(payload, "blocks", blocks);
    json_decref(blocks);
    return payload;
}

struct slack *slack_new(const struct slack_opts *opts, char **err)
{
    if (!opts || !opts->http) {
        *err = xstrdup("slack: no HTTP client");
        return NULL;
    }
    if (!opts->webhook_url || !*opts->webhook_url) {
        *err = xstrdup("slack: no webhook URL");
        return NULL;
    }
    char *host = http_url_part(opts->webhook_url, HTTP_URL_HOST);
    if (!host) {
        *err = xstrdup("slack: the webhook URL is not an absolute http(s) URL with a host");
        return NULL;
    }
    struct slack *c = xcalloc(1, sizeof *c);
    c->svc.http = opts->http;
    c->svc.limit = opts->limit;
    c->svc.policy = slack_policy;
    c->svc.timeout_ms = opts->timeout_ms;
    c->svc.max_body = 64 * 1024; /* the answer is a short string */
    c->url = xstrdup(opts->webhook_url);
    c->host = host;
    c->what = xasprintf("POST %s webhook", host);
    return c;
}

void slack_free(struct slack *c)
{
    if (!c)
        return;
    free(c->url);
    free(c->host);
    free(c->what);
    free(c);
}

const char *slack_host(const struct slack *c)
{
    return c->host;
}

static void slack_on_response(struct job_error *err, struct http_response *resp, void *arg)
{
    struct slack_call *call = arg;
    json_t *result = NULL;
    if (!err) {
        char *body = slack_cut(resp->body, SIZE_MAX);
        result = json_string(body);
        free(body);
    }
    call->cb(err, result, call->arg);
    json_decref(result);
    free(call);
}

int slack_post(struct slack *c, const char *jid, const struct slack_message *m, slack_cb cb,
               void *arg)
{
    if (m && m->nlinks > SLACK_MAX_LINKS) {
        log_job(LOG_ERROR, jid, NULL, "slack: %zu links, at most %d", m->nlinks, SLACK_MAX_LINKS);
        return -1;
    }
    json_t *payload = slack_message_payload(m);
    if (!payload) {
        log_job(LOG_ERROR, jid, NULL, "slack: a message needs a text");
        return -1;
    }
    char *body = json_dumps(payload, JSON_COMPACT);
    json_decref(payload);
    static const char *const headers[] = {"Content-Type: application/json",
                                          "Accept: text/plain, */*"};
    struct service_request req = {
        .method = "POST",
        .url = c->url,
        .headers = headers,
        .nheaders = 2,
        .body = body,
        .body_len = strlen(body),
        .what = c->what,
        .jid = jid,
    };
    struct slack_call *call = xcalloc(1, sizeof *call);
    call->c = c;
    call->cb = cb;
    call->arg = arg;
    service_call(&c->svc, &req, slack_on_response, call);
    free(body);
    return 0;
}
