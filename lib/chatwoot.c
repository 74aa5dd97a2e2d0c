/* chatwoot: paths, tokens and bodies of the Chatwoot calls; one struct cw_call per call,
 * alive from chatwoot_<verb>() until its callback has run (two requests for add_labels). */
#include "chatwoot.h"

#include "buf.h"
#include "log.h"
#include "service.h"
#include "xalloc.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct http_failure_policy chatwoot_policy = {"Chatwoot", 60};

struct chatwoot {
    struct service svc;
    char *base;     /* base URL without a trailing '/' */
    char *bot_hdr;  /* "api_access_token: ..." or NULL */
    char *user_hdr; /* same for the user token */
    char last_error[256];
};

/* Which token a call may use (§2.1). */
enum cw_auth { CW_BOT_OR_USER, CW_USER_ONLY };

/* What a successful answer must hold and what the caller gets. */
enum cw_shape {
    CW_OBJECT,          /* the answer itself, an object */
    CW_PAYLOAD_ARRAY,   /* answer.payload, an array */
    CW_PAYLOAD_OBJECT,  /* answer.payload, an object */
    CW_PAYLOAD_CONTACT, /* answer.payload.contact, an object */
    CW_LIST,            /* the answer, an object whose payload is an array */
};

struct cw_call {
    struct chatwoot *c;
    chatwoot_cb cb;
    void *arg;
    enum cw_shape shape;
    const char *token_name; /* "bot token" / "user token", for 401 messages */
    const char *token_hdr;
    char *jid;
    char *path; /* "/api/v1/accounts/1/conversations/7/labels" (no query) */
    char *what; /* "POST /api/v1/..." */
    /* add_labels: the labels to add (NULL for other calls) */
    json_t *add;
};

/* ---- client --------------------------------------------------------------------------- */

static char *token_header(const char *token)
{
    return token && *token ? xasprintf("api_access_token: %s", token) : NULL;
}

struct chatwoot *chatwoot_new(const struct chatwoot_opts *o, char **err)
{
    const char *why = NULL;
    char *host = NULL;
    if (!o || !o->http)
        why = "chatwoot: no HTTP client";
    else if (!(host = http_url_part(o->base_url, HTTP_URL_HOST)))
        why = "chatwoot: base_url must be an absolute http(s):// URL with a host";
    else if (!(o->bot_token && *o->bot_token) && !(o->user_token && *o->user_token))
        why = "chatwoot: neither bot_token nor user_token is configured";
    free(host); /* only checked */
    if (why) {
        if (err)
            *err = xstrdup(why);
        return NULL;
    }
    struct chatwoot *c = xcalloc(1, sizeof *c);
    c->svc.http = o->http;
    c->svc.limit = o->limit;
    c->svc.policy = chatwoot_policy;
    c->svc.timeout_ms = o->timeout_ms;
    c->base = xstrdup(o->base_url);
    size_t n = strlen(c->base);
    while (n > 0 && c->base[n - 1] == '/')
        c->base[--n] = '\0';
    c->bot_hdr = token_header(o->bot_token);
    c->user_hdr = token_header(o->user_token);
    return c;
}

void chatwoot_free(struct chatwoot *c)
{
    if (!c)
        return;
    free(c->base);
    free(c->bot_hdr);
    free(c->user_hdr);
    free(c);
}

const char *chatwoot_last_error(const struct chatwoot *c)
{
    return c->last_error;
}

/* Record why a call was refused; returns -1. */
static int cw_refuse(struct chatwoot *c, const char *jid, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int cw_refuse(struct chatwoot *c, const char *jid, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->last_error, sizeof c->last_error, fmt, ap);
    va_end(ap);
    log_job(LOG_WARN, jid, NULL, "%s", c->last_error);
    return -1;
}

/* ---- one call ------------------------------------------------------------------------- */

static void call_free(struct cw_call *k)
{
    free(k->jid);
    free(k->path);
    free(k->what);
    json_decref(k->add);
    free(k);
}

static void call_finish(struct cw_call *k, struct job_error *err, json_t *result)
{
    k->cb(err, err ? NULL : result, k->arg);
    call_free(k);
}

/* Replace e's message with "<old><suffix>". */
static void error_append(struct job_error *e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void error_append(struct job_error *e, const char *fmt, ...)
{
    struct buf b = BUF_INIT;
    buf_puts(&b, e->error_message ? e->error_message : "");
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    if (s)
        buf_puts(&b, s);
    free(s);
    free(e->error_message);
    e->error_message = buf_steal(&b);
}

/* Chatwoot's own rules on top of the generic verdict. */
static void call_refine_error(struct cw_call *k, struct job_error *err,
                              const struct http_response *resp)
{
    if (!resp || resp->result != HTTP_OK)
        return;
    if (resp->status == 401) {
        error_append(err, " (%s)", k->token_name);
        return;
    }
    if (resp->status != 422)
        return;
    /* RecordInvalid: {"message": "...", "attributes": ["email", ...]} (§2.8) */
    json_t *j = json_loadb(resp->body, resp->body_len, 0, NULL);
    json_t *attrs = json_object_get(j, "attributes");
    if (json_is_array(attrs) && json_array_size(attrs) > 0) {
        struct buf b = BUF_INIT;
        size_t i;
        json_t *v;
        json_array_foreach(attrs, i, v)
        {
            if (!json_is_string(v))
                continue;
            if (b.len)
                buf_puts(&b, ", ");
            buf_puts(&b, json_string_value(v));
        }
        if (b.len)
            error_append(err, " [%s]", b.data);
        buf_free(&b);
    }
    json_decref(j);
}

/* The part of answer j the caller gets (borrowed from j), or NULL if j has another shape. */
static json_t *call_extract(enum cw_shape shape, json_t *j)
{
    json_t *p = json_object_get(j, "payload");
    switch (shape) {
    case CW_OBJECT:
        return json_is_object(j) ? j : NULL;
    case CW_PAYLOAD_ARRAY:
        return json_is_array(p) ? p : NULL;
    case CW_PAYLOAD_OBJECT:
        return json_is_object(p) ? p : NULL;
    case CW_PAYLOAD_CONTACT:
        p = json_object_get(p, "contact");
        return json_is_object(p) ? p : NULL;
    case CW_LIST:
        return json_is_array(p) ? j : NULL;
    }
    return NULL;
}

static void labels_on_current(struct cw_call *k, json_t *current);

static void call_on_response(struct job_error *err, struct http_response *resp, void *arg)
{
    struct cw_call *k = arg;
    if (err) {
        call_refine_error(k, err, resp);
        call_finish(k, err, NULL);
        return;
    }
    json_t *j = service_parse_json(&k->c->svc, resp, k->what, &err);
    if (!j) {
        call_finish(k, err, NULL);
        return;
    }
    json_t *result = call_extract(k->shape, j);
    if (!result) {
        err =
            job_error_new(JOB_ERR_RETRY, "Tierone::Chatwoot::BadResponse",
                          "%s -> HTTP %ld with JSON of an unexpected shape", k->what, resp->status);
        call_finish(k, err, NULL);
    } else if (k->add) {
        labels_on_current(k, result);
    } else {
        call_finish(k, NULL, result);
    }
    json_decref(j);
}

/* Send method path[?query] with body (may be NULL) for call k. */
static void call_send(struct cw_call *k, const char *method, const char *query, const json_t *body)
{
    char *url = xasprintf("%s%s%s%s", k->c->base, k->path, query ? "?" : "", query ? query : "");
    free(k->what);
    k->what = xasprintf("%s %s", method, k->path);
    const char *headers[3] = {k->token_hdr, "Accept: application/json"};
    size_t nheaders = 2;
    char *text = NULL;
    if (body) {
        headers[nheaders++] = "Content-Type: application/json";
        text = json_dumps(body, JSON_COMPACT);
    }
    struct service_request rq = {
        .method = method,
        .url = url,
        .headers = headers,
        .nheaders = nheaders,
        .body = text,
        .body_len = text ? strlen(text) : 0,
        .what = k->what,
        .jid = k->jid,
    };
    service_call(&k->c->svc, &rq, call_on_response, k);
    free(text);
    free(url);
}

/* A new call on path (printf-formatted), or NULL (after cw_refuse) when the needed token is
 * missing. `doing` names the call for that message. */
static struct cw_call *call_new(struct chatwoot *c, const char *jid, enum cw_auth auth,
                                const char *doing, enum cw_shape shape, chatwoot_cb cb, void *arg,
                                const char *fmt, ...) __attribute__((format(printf, 8, 9)));
static struct cw_call *call_new(struct chatwoot *c, const char *jid, enum cw_auth auth,
                                const char *doing, enum cw_shape shape, chatwoot_cb cb, void *arg,
                                const char *fmt, ...)
{
    const char *hdr = NULL, *name = NULL;
    if (auth == CW_BOT_OR_USER && c->bot_hdr) {
        hdr = c->bot_hdr;
        name = "bot token";
    } else if (c->user_hdr) {
        hdr = c->user_hdr;
        name = "user token";
    }
    if (!hdr) {
        cw_refuse(c, jid,
                  "chatwoot: %s needs the user token (Chatwoot refuses the bot token there)"
                  " and user_token is not configured",
                  doing);
        return NULL;
    }
    if (!cb) {
        cw_refuse(c, jid, "chatwoot: %s: no callback", doing);
        return NULL;
    }
    struct cw_call *k = xcalloc(1, sizeof *k);
    k->c = c;
    k->cb = cb;
    k->arg = arg;
    k->shape = shape;
    k->token_hdr = hdr;
    k->token_name = name;
    k->jid = xstrdup(jid);
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&k->path, fmt, ap) < 0)
        abort();
    va_end(ap);
    c->last_error[0] = '\0';
    return k;
}

static int ids_ok(struct chatwoot *c, const char *jid, long account, long conversation)
{
    if (account > 0 && conversation > 0)
        return 1;
    cw_refuse(c, jid, "chatwoot: account (%ld) and conversation (%ld) must be > 0", account,
              conversation);
    return 0;
}

/* ---- conversations -------------------------------------------------------------------- */

int chatwoot_get_conversation(struct chatwoot *c, const char *jid, long account, long conversation,
                              chatwoot_cb cb, void *arg)
{
    if (!ids_ok(c, jid, account, conversation))
        return -1;
    struct cw_call *k =
        call_new(c, jid, CW_BOT_OR_USER, "getting a conversation", CW_OBJECT, cb, arg,
                 "/api/v1/accounts/%ld/conversations/%ld", account, conversation);
    if (!k)
        return -1;
    call_send(k, "GET", NULL, NULL);
    return 0;
}

int chatwoot_list_messages(struct chatwoot *c, const char *jid, long account, long conversation,
                           long after_id, chatwoot_cb cb, void *arg)
{
    if (!ids_ok(c, jid, account, conversation))
        return -1;
    if (after_id < 0)
        return cw_refuse(c, jid, "chatwoot: after_id must be >= 0");
    struct cw_call *k =
        call_new(c, jid, CW_USER_ONLY, "listing messages", CW_PAYLOAD_ARRAY, cb, arg,
                 "/api/v1/accounts/%ld/conversations/%ld/messages", account, conversation);
    if (!k)
        return -1;
    char query[32];
    snprintf(query, sizeof query, "after=%ld", after_id);
    call_send(k, "GET", after_id > 0 ? query : NULL, NULL);
    return 0;
}

int chatwoot_create_message(struct chatwoot *c, const char *jid, long account, long conversation,
                            const struct chatwoot_message *m, chatwoot_cb cb, void *arg)
{
    if (!ids_ok(c, jid, account, conversation))
        return -1;
    if (!m || !m->content || !*m->content)
        return cw_refuse(c, jid, "chatwoot: a message needs content");
    if (m->content_attributes && !json_is_object(m->content_attributes))
        return cw_refuse(c, jid, "chatwoot: content_attributes must be a JSON object");
    struct cw_call *k =
        call_new(c, jid, CW_BOT_OR_USER, "creating a message", CW_OBJECT, cb, arg,
                 "/api/v1/accounts/%ld/conversations/%ld/messages", account, conversation);
    if (!k)
        return -1;
    char *content = chatwoot_escape_liquid(m->content);
    json_t *body = json_pack("{s:s, s:s, s:s, s:b}", "content", content, "message_type", "outgoing",
                             "content_type", "text", "private", m->private_note != 0);
    free(content);
    if (!body) { /* invalid UTF-8 */
        call_free(k);
        return cw_refuse(c, jid, "chatwoot: message content is not valid UTF-8");
    }
    if (m->content_attributes)
        json_object_set(body, "content_attributes", m->content_attributes);
    if (m->echo_id)
        json_object_set_new(body, "echo_id", json_string(m->echo_id));
    call_send(k, "POST", NULL, body);
    json_decref(body);
    return 0;
}

int chatwoot_get_labels(struct chatwoot *c, const char *jid, long account, long conversation,
                        chatwoot_cb cb, void *arg)
{
    if (!ids_ok(c, jid, account, conversation))
        return -1;
    struct cw_call *k =
        call_new(c, jid, CW_BOT_OR_USER, "getting labels", CW_PAYLOAD_ARRAY, cb, arg,
                 "/api/v1/accounts/%ld/conversations/%ld/labels", account, conversation);
    if (!k)
        return -1;
    call_send(k, "GET", NULL, NULL);
    return 0;
}

static int labels_has(json_t *list, const char *label)
{
    size_t i;
    json_t *v;
    json_array_foreach(list, i, v)
    {
        if (json_is_string(v) && strcmp(json_string_value(v), label) == 0)
            return 1;
    }
    return 0;
}

/* add_labels, after the GET: post the union, or finish when nothing is new. */
static void labels_on_current(struct cw_call *k, json_t *current)
{
    json_t *want = json_copy(current);
    size_t i;
    json_t *v;
    json_array_foreach(k->add, i, v)
    {
        if (!labels_has(want, json_string_value(v)))
            json_array_append(want, v);
    }
    if (json_array_size(want) == json_array_size(current)) {
        call_finish(k, NULL, current);
        json_decref(want);
        return;
    }
    json_decref(k->add);
    k->add = NULL; /* the POST's answer goes straight to the caller */
    json_t *body = json_pack("{s:o}", "labels", want);
    call_send(k, "POST", NULL, body);
    json_decref(body);
}

int chatwoot_add_labels(struct chatwoot *c, const char *jid, long account, long conversation,
                        const char *const *labels, size_t n, chatwoot_cb cb, void *arg)
{
    if (!ids_ok(c, jid, account, conversation))
        return -1;
    if (n == 0 || !labels)
        return cw_refuse(c, jid, "chatwoot: no labels to add");
    json_t *add = json_array();
    for (size_t i = 0; i < n; i++) {
        json_t *s = labels[i] && *labels[i] ? json_string(labels[i]) : NULL;
        if (!s) {
            json_decref(add);
            return cw_refuse(c, jid, "chatwoot: label %zu is empty or not UTF-8", i);
        }
        json_array_append_new(add, s);
    }
    struct cw_call *k =
        call_new(c, jid, CW_BOT_OR_USER, "adding labels", CW_PAYLOAD_ARRAY, cb, arg,
                 "/api/v1/accounts/%ld/conversations/%ld/labels", account, conversation);
    if (!k) {
        json_decref(add);
        return -1;
    }
    k->add = add;
    call_send(k, "GET", NULL, NULL);
    return 0;
}

int chatwoot_toggle_status(struct chatwoot *c, const char *jid, long account, long conversation,
                           const char *status, int64_t snoozed_until, chatwoot_cb cb, void *arg)
{
    if (!ids_ok(c, jid, account, conversation))
        return -1;
    static const char *const statuses[] = {"open", "resolved", "pending", "snoozed"};
    int known = 0;
    for (size_t i = 0; status && i < sizeof statuses / sizeof *statuses; i++)
        known |= strcmp(status, statuses[i]) == 0;
    if (!known)
        return cw_refuse(c, jid, "chatwoot: status must be open, resolved, pending or snoozed");
    if (snoozed_until < 0 || (snoozed_until > 0 && strcmp(status, "snoozed") != 0))
        return cw_refuse(c, jid, "chatwoot: snoozed_until goes only with status snoozed");
    struct cw_call *k =
        call_new(c, jid, CW_BOT_OR_USER, "changing the status", CW_PAYLOAD_OBJECT, cb, arg,
                 "/api/v1/accounts/%ld/conversations/%ld/toggle_status", account, conversation);
    if (!k)
        return -1;
    json_t *body = json_pack("{s:s}", "status", status);
    if (snoozed_until > 0)
        json_object_set_new(body, "snoozed_until", json_integer(snoozed_until));
    call_send(k, "POST", NULL, body);
    json_decref(body);
    return 0;
}

/* ---- contacts ------------------------------------------------------------------------- */

/* Append s percent-encoded for a query value (RFC 3986 unreserved kept). */
static void query_escape(struct buf *b, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
            *p == '-' || *p == '_' || *p == '.' || *p == '~') {
            buf_append(b, p, 1);
        } else {
            char e[3] = {'%', hex[*p >> 4], hex[*p & 15]};
            buf_append(b, e, 3);
        }
    }
}

int chatwoot_search_contacts(struct chatwoot *c, const char *jid, long account, const char *q,
                             int page, chatwoot_cb cb, void *arg)
{
    if (account <= 0 || !q || !*q || page < 0)
        return cw_refuse(c, jid, "chatwoot: contact search needs account > 0, q and page >= 0");
    struct cw_call *k = call_new(c, jid, CW_USER_ONLY, "searching contacts", CW_LIST, cb, arg,
                                 "/api/v1/accounts/%ld/contacts/search", account);
    if (!k)
        return -1;
    struct buf query = BUF_INIT;
    buf_puts(&query, "q=");
    query_escape(&query, q);
    buf_printf(&query, "&page=%d", page ? page : 1);
    call_send(k, "GET", query.data, NULL);
    buf_free(&query);
    return 0;
}

int chatwoot_filter_contacts(struct chatwoot *c, const char *jid, long account,
                             const char *attribute, const char *value, chatwoot_cb cb, void *arg)
{
    if (account <= 0 || !attribute || !*attribute || !value)
        return cw_refuse(c, jid, "chatwoot: contact filter needs account > 0, attribute, value");
    json_t *body = json_pack("{s:[{s:s, s:s, s:[s], s:n}]}", "payload", "attribute_key", attribute,
                             "filter_operator", "equal_to", "values", value, "query_operator");
    if (!body)
        return cw_refuse(c, jid, "chatwoot: contact filter attribute or value is not UTF-8");
    struct cw_call *k = call_new(c, jid, CW_USER_ONLY, "filtering contacts", CW_LIST, cb, arg,
                                 "/api/v1/accounts/%ld/contacts/filter", account);
    if (!k) {
        json_decref(body);
        return -1;
    }
    call_send(k, "POST", "page=1", body);
    json_decref(body);
    return 0;
}

int chatwoot_create_contact(struct chatwoot *c, const char *jid, long account,
                            const json_t *contact, chatwoot_cb cb, void *arg)
{
    if (account <= 0 || !json_is_object(contact))
        return cw_refuse(c, jid, "chatwoot: creating a contact needs account > 0 and an object");
    struct cw_call *k = call_new(c, jid, CW_USER_ONLY, "creating a contact", CW_PAYLOAD_CONTACT, cb,
                                 arg, "/api/v1/accounts/%ld/contacts", account);
    if (!k)
        return -1;
    call_send(k, "POST", NULL, contact);
    return 0;
}

int chatwoot_update_contact(struct chatwoot *c, const char *jid, long account, long contact_id,
                            const json_t *fields, chatwoot_cb cb, void *arg)
{
    if (account <= 0 || contact_id <= 0 || !json_is_object(fields))
        return cw_refuse(c, jid, "chatwoot: updating a contact needs ids > 0 and an object");
    struct cw_call *k = call_new(c, jid, CW_USER_ONLY, "updating a contact", CW_PAYLOAD_OBJECT, cb,
                                 arg, "/api/v1/accounts/%ld/contacts/%ld", account, contact_id);
    if (!k)
        return -1;
    call_send(k, "PATCH", NULL, fields);
    return 0;
}

/* ---- Liquid --------------------------------------------------------------------------- */

#define ESC_BRACE "{{ \"{\" }}"
#define ESC_TICK  "{{ \"%60\" | url_decode }}"

/* Index of the backtick closing the code span opened at s[i] (Chatwoot's /`(.*?)`/m), or 0
 * when s[i] opens none. */
static size_t span_end(const char *s, size_t i)
{
    const char *e = strchr(s + i + 1, '`');
    return e ? (size_t)(e - s) : 0;
}

/* 1 when some code span holds "{{" or "{%" (a raw block would not return it verbatim). */
static int spans_unsafe(const char *s)
{
    for (size_t i = 0; s[i]; i++) {
        if (s[i] != '`')
            continue;
        size_t e = span_end(s, i);
        if (!e)
            return 0;
        for (size_t k = i + 1; k + 1 < e; k++)
            if (s[k] == '{' && (s[k + 1] == '{' || s[k + 1] == '%'))
                return 1;
        i = e;
    }
    return 0;
}

char *chatwoot_escape_liquid(const char *text)
{
    if (!strchr(text, '{'))
        return xstrdup(text);
    int no_ticks = spans_unsafe(text);
    struct buf b = BUF_INIT;
    for (size_t i = 0; text[i]; i++) {
        char ch = text[i], next = text[i + 1];
        size_t e;
        if (ch == '`' && !no_ticks && (e = span_end(text, i))) {
            buf_append(&b, text + i, e - i + 1); /* a code span: Chatwoot makes it raw */
            i = e;
        } else if (ch == '`' && no_ticks) {
            buf_puts(&b, ESC_TICK);
        } else if (ch == '{' && (next == '{' || next == '%' || next == '`')) {
            buf_puts(&b, ESC_BRACE);
        } else {
            buf_append(&b, &ch, 1);
        }
    }
    return buf_steal(&b);
}
