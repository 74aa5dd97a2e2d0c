/* chatwoot_webhook: classify one Chatwoot webhook body (see chatwoot_webhook.h for the
 * rules and APIS.md §1.4-1.9, §9 for the payload facts behind them). */
#include "chatwoot_webhook.h"
#include "xalloc.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The parse in progress: the decoded body and the error buffer. */
struct cwh {
    json_t *root;
    struct chatwoot_webhook *out;
    char *err;
    size_t errcap;
};

static int cwh_fail(struct cwh *h, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int cwh_fail(struct cwh *h, const char *fmt, ...)
{
    if (h->err && h->errcap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(h->err, h->errcap, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* ---- small JSON readers ------------------------------------------------------------------ */

/* A positive id: an integer, an integral real (bodies read with big-integer fallback) or a
 * string of digits; 0 otherwise. */
static long long cwh_id(const json_t *v)
{
    if (json_is_integer(v))
        return json_integer_value(v) > 0 ? json_integer_value(v) : 0;
    if (json_is_real(v)) {
        double d = json_real_value(v);
        return d >= 1 && d < 9.2e18 && d == (double)(long long)d ? (long long)d : 0;
    }
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        char *end;
        if (*s < '0' || *s > '9')
            return 0;
        long long n = strtoll(s, &end, 10);
        return *end == '\0' && n > 0 ? n : 0;
    }
    return 0;
}

/* obj[key] when obj is an object and the value is an object; else NULL. */
static json_t *cwh_obj(const json_t *obj, const char *key)
{
    json_t *v = json_is_object(obj) ? json_object_get(obj, key) : NULL;
    return json_is_object(v) ? v : NULL;
}

/* obj[key] as a string (borrowed), NULL when missing or not a string. */
static const char *cwh_str(const json_t *obj, const char *key)
{
    json_t *v = json_is_object(obj) ? json_object_get(obj, key) : NULL;
    return json_is_string(v) ? json_string_value(v) : NULL;
}

/* Ruby's truthiness for a flag: anything but missing, null and false. */
static int cwh_truthy(const json_t *obj, const char *key)
{
    json_t *v = json_is_object(obj) ? json_object_get(obj, key) : NULL;
    return v && !json_is_null(v) && !json_is_false(v);
}

/* messages[0] of a conversation object, or NULL. */
static json_t *cwh_first_message(const json_t *conv)
{
    json_t *msgs = json_is_object(conv) ? json_object_get(conv, "messages") : NULL;
    json_t *m = json_is_array(msgs) ? json_array_get(msgs, 0) : NULL;
    return json_is_object(m) ? m : NULL;
}

/* ---- the fields both families share --------------------------------------------------------- */

/* Fill what comes from the conversation object conv (nested in message events, the
 * payload itself in conversation_* events): display id, account and inbox fallbacks,
 * channel, status, assignee. */
static void cwh_read_conversation(struct chatwoot_webhook *w, const json_t *conv)
{
    if (!w->conversation)
        w->conversation = cwh_id(json_object_get(conv, "id"));
    if (!w->account)
        w->account = cwh_id(json_object_get(cwh_obj(conv, "account"), "id"));
    if (!w->account)
        w->account = cwh_id(json_object_get(cwh_first_message(conv), "account_id"));
    if (!w->inbox)
        w->inbox = cwh_id(json_object_get(conv, "inbox_id"));
    w->channel = xstrdup(cwh_str(conv, "channel"));
    w->status = xstrdup(cwh_str(conv, "status"));
    json_t *meta = cwh_obj(conv, "meta");
    w->assignee_type = xstrdup(cwh_str(meta, "assignee_type"));
    w->assignee_name = xstrdup(cwh_str(cwh_obj(meta, "assignee"), "name"));
    if (w->channel && strcmp(w->channel, "Channel::Email") == 0)
        w->is_email = 1;
}

/* ---- message events ------------------------------------------------------------------------ */

enum cwh_mtype { MT_UNKNOWN, MT_INCOMING, MT_OUTGOING, MT_ACTIVITY, MT_TEMPLATE };

/* message_type: the string enum name (webhooks) or the integer (nested, API). */
static enum cwh_mtype cwh_message_type(const json_t *v)
{
    static const char *const names[] = {"incoming", "outgoing", "activity", "template"};
    for (int i = 0; i < 4; i++) {
        if ((json_is_string(v) && strcmp(json_string_value(v), names[i]) == 0) ||
            (json_is_integer(v) && json_integer_value(v) == i))
            return (enum cwh_mtype)(MT_INCOMING + i);
    }
    return MT_UNKNOWN;
}

/* Our own marker in content_attributes (tierone_turn / tierone_note). */
static void cwh_read_marker(struct chatwoot_webhook *w, const json_t *ca)
{
    static const char *const keys[] = {"tierone_turn", "tierone_note"};
    for (int i = 0; i < 2; i++) {
        json_t *v = json_object_get(ca, keys[i]);
        if (v && !json_is_null(v) && !json_is_false(v)) {
            w->marker = keys[i];
            w->marker_turn = cwh_id(v);
            return;
        }
    }
}

/* The customer's words: the new part of an e-mail, else the top-level content. */
static void cwh_read_content(struct chatwoot_webhook *w, const json_t *root, const json_t *ca)
{
    json_t *email = cwh_obj(ca, "email");
    const char *quoted = cwh_str(cwh_obj(email, "text_content"), "quoted");
    const char *content_type = cwh_str(root, "content_type");
    if (email || (content_type && strcmp(content_type, "incoming_email") == 0))
        w->is_email = 1;
    if (w->is_email && quoted && *quoted)
        w->content = xstrdup(quoted);
    else
        w->content = xstrdup(cwh_str(root, "content"));
}

static void cwh_read_sender(struct chatwoot_webhook *w, const json_t *root)
{
    json_t *sender = cwh_obj(root, "sender");
    if (!sender)
        return;
    w->sender = json_deep_copy(sender);
    w->sender_type = xstrdup(cwh_str(sender, "type"));
}

/* Set kind and reason of a message event; 0, or -1 when the message type is unusable. */
static int cwh_classify_message(struct cwh *h, const json_t *ca)
{
    struct chatwoot_webhook *w = h->out;
    enum cwh_mtype mt = cwh_message_type(json_object_get(h->root, "message_type"));
    const char *st = w->sender_type ? w->sender_type : "";
    if (cwh_truthy(h->root, "private")) {
        w->kind = CW_HOOK_PRIVATE_NOTE, w->reason = "private note";
        return 0;
    }
    switch (mt) {
    case MT_UNKNOWN:
        return cwh_fail(h, "message_created without a known message_type");
    case MT_ACTIVITY:
        w->reason = "activity message";
        return 0;
    case MT_TEMPLATE:
        w->reason = "template message";
        return 0;
    case MT_INCOMING:
        if (cwh_truthy(cwh_obj(ca, "email"), "auto_reply"))
            w->reason = "e-mail auto-reply";
        else
            w->kind = CW_HOOK_INCOMING_MESSAGE, w->reason = "incoming message";
        return 0;
    case MT_OUTGOING:
        break;
    }
    if (w->marker)
        w->kind = CW_HOOK_BOT_ECHO, w->reason = "our own post (tierone marker)";
    else if (cwh_truthy(ca, "external_echo"))
        w->kind = CW_HOOK_HUMAN_REPLY, w->reason = "human replied from the native app";
    else if (strcmp(st, "user") == 0)
        w->kind = CW_HOOK_HUMAN_REPLY, w->reason = "human replied";
    else if (strcmp(st, "agent_bot") == 0)
        w->kind = CW_HOOK_BOT_ECHO, w->reason = "outgoing message from the bot";
    else if (strcmp(st, "captain_assistant") == 0)
        w->kind = CW_HOOK_BOT_ECHO, w->reason = "outgoing message from a Captain assistant";
    else
        w->reason = "outgoing message without a human sender";
    return 0;
}

/* The ids the kind needs; -1 naming the first one missing. */
static int cwh_require(struct cwh *h, int need_message)
{
    struct chatwoot_webhook *w = h->out;
    const char *missing = !w->account        ? "an account id"
                          : !w->conversation ? "a conversation id"
                          : !need_message    ? NULL
                          : !w->message      ? "a message id"
                          : !w->inbox        ? "an inbox id"
                                             : NULL;
    if (missing)
        return cwh_fail(h, "%s (%s) without %s", w->event, chatwoot_webhook_kind_name(w->kind),
                        missing);
    return 0;
}

static int cwh_message(struct cwh *h)
{
    struct chatwoot_webhook *w = h->out;
    json_t *conv = cwh_obj(h->root, "conversation");
    json_t *ca = cwh_obj(h->root, "content_attributes");
    w->message = cwh_id(json_object_get(h->root, "id"));
    w->account = cwh_id(json_object_get(cwh_obj(h->root, "account"), "id"));
    w->inbox = cwh_id(json_object_get(cwh_obj(h->root, "inbox"), "id"));
    if (conv)
        cwh_read_conversation(w, conv);
    cwh_read_marker(w, ca);
    cwh_read_sender(w, h->root);
    cwh_read_content(w, h->root, ca);
    if (cwh_classify_message(h, ca) != 0)
        return -1;
    if (w->kind == CW_HOOK_INCOMING_MESSAGE)
        return cwh_require(h, 1);
    if (w->kind == CW_HOOK_HUMAN_REPLY)
        return cwh_require(h, 0);
    return 0;
}

/* ---- conversation events ------------------------------------------------------------------ */

/* What changed_attributes says. */
struct cwh_changes {
    int present; /* changed_attributes was an array or object */
    int status;  /* "status" changed */
    const json_t *status_now, *status_before;
    int assignee; /* "assignee_id" changed */
    const json_t *assignee_now;
    int significant; /* something beyond the noise keys changed */
};

/* One changed attribute: value is {"previous_value": X, "current_value": Y} (webhooks) or
 * [X, Y] (Rails' previous_changes, as the bot specs feed it). */
static void cwh_change(struct cwh_changes *c, const char *key, const json_t *value)
{
    static const char *const noise[] = {"waiting_since", "first_reply_created_at", "updated_at"};
    const json_t *before = NULL, *now = NULL;
    if (json_is_object(value)) {
        before = json_object_get(value, "previous_value");
        now = json_object_get(value, "current_value");
    } else if (json_is_array(value)) {
        before = json_array_get(value, 0);
        now = json_array_get(value, 1);
    }
    if (strcmp(key, "status") == 0)
        c->status = 1, c->status_now = now, c->status_before = before;
    else if (strcmp(key, "assignee_id") == 0)
        c->assignee = 1, c->assignee_now = now;
    for (size_t i = 0; i < sizeof noise / sizeof *noise; i++)
        if (strcmp(key, noise[i]) == 0)
            return;
    c->significant = 1;
}

static void cwh_read_changes(const json_t *ca, struct cwh_changes *c)
{
    const char *key;
    json_t *value;
    memset(c, 0, sizeof *c);
    if (json_is_object(ca)) {
        c->present = 1;
        json_object_foreach((json_t *)ca, key, value) cwh_change(c, key, value);
    } else if (json_is_array(ca)) {
        size_t i;
        json_t *item;
        c->present = 1;
        json_array_foreach(ca, i, item)
        {
            json_object_foreach(item, key, value) cwh_change(c, key, value);
        }
    }
}

/* An assignment to a human: assignee_id changed to a value (when the change says), and the
 * conversation's meta names a User assignee. */
static int cwh_assigned_to_human(const struct chatwoot_webhook *w, const struct cwh_changes *c)
{
    if (!c->assignee || (c->assignee_now && json_is_null(c->assignee_now)))
        return 0;
    return w->assignee_type && strcmp(w->assignee_type, "User") == 0 && w->assignee_name;
}

/* STATUS_CHANGE with status taken from the change (when a string), else from the payload,
 * else from the event name (conversation_opened / _resolved). */
static int cwh_status_change(struct cwh *h, const struct cwh_changes *c, const char *fallback)
{
    struct chatwoot_webhook *w = h->out;
    w->kind = CW_HOOK_STATUS_CHANGE, w->reason = "status changed";
    if (c->status_now && json_is_string(c->status_now)) {
        free(w->status);
        w->status = xstrdup(json_string_value(c->status_now));
    }
    if (c->status_before && json_is_string(c->status_before))
        w->previous_status = xstrdup(json_string_value(c->status_before));
    if (!w->status && fallback)
        w->status = xstrdup(fallback);
    if (!w->status || !*w->status)
        return cwh_fail(h, "%s without a status", w->event);
    w->assigned_to_human = cwh_assigned_to_human(w, c);
    return cwh_require(h, 0);
}

static int cwh_conversation_updated(struct cwh *h, const struct cwh_changes *c)
{
    struct chatwoot_webhook *w = h->out;
    if (c->status)
        return cwh_status_change(h, c, NULL);
    if (c->assignee) {
        if (cwh_assigned_to_human(w, c)) {
            w->kind = CW_HOOK_ASSIGNED_TO_HUMAN, w->assigned_to_human = 1;
            w->reason = "assigned to a human";
            return cwh_require(h, 0);
        }
        w->reason = c->assignee_now && !json_is_null(c->assignee_now)
                        ? "conversation_updated: assigned to a bot"
                        : "conversation_updated: unassigned";
        return 0;
    }
    if (!c->present)
        w->reason = "conversation_updated without changed_attributes";
    else if (!c->significant)
        w->reason = "conversation_updated noise (waiting_since, first_reply_created_at)";
    else
        w->reason = "conversation_updated: no status or assignment change";
    return 0;
}

static int cwh_conversation(struct cwh *h)
{
    struct chatwoot_webhook *w = h->out;
    struct cwh_changes c;
    w->account = cwh_id(json_object_get(cwh_obj(h->root, "account"), "id"));
    cwh_read_conversation(w, h->root);
    cwh_read_changes(json_object_get(h->root, "changed_attributes"), &c);
    if (strcmp(w->event, "conversation_updated") == 0)
        return cwh_conversation_updated(h, &c);
    if (strcmp(w->event, "conversation_opened") == 0)
        return cwh_status_change(h, &c, "open");
    if (strcmp(w->event, "conversation_resolved") == 0)
        return cwh_status_change(h, &c, "resolved");
    return cwh_status_change(h, &c, NULL); /* conversation_status_changed */
}

/* ---- dispatch ------------------------------------------------------------------------------- */

/* Events the bot never acts on, with their reason. */
static const char *cwh_ignored_event(const char *event)
{
    static const struct {
        const char *prefix;
        const char *reason;
    } table[] = {
        {"message_updated", "message_updated"},
        {"conversation_created", "conversation_created"},
        {"conversation_typing_", "typing indicator"},
        {"contact_", "contact event"},
        {"inbox_", "inbox event"},
        {"webwidget_triggered", "webwidget_triggered"},
    };
    for (size_t i = 0; i < sizeof table / sizeof *table; i++)
        if (strncmp(event, table[i].prefix, strlen(table[i].prefix)) == 0)
            return table[i].reason;
    return NULL;
}

static int cwh_dispatch(struct cwh *h)
{
    struct chatwoot_webhook *w = h->out;
    const char *ignored = cwh_ignored_event(w->event);
    if (strcmp(w->event, "message_created") == 0)
        return cwh_message(h);
    if (strcmp(w->event, "conversation_status_changed") == 0 ||
        strcmp(w->event, "conversation_updated") == 0 ||
        strcmp(w->event, "conversation_opened") == 0 ||
        strcmp(w->event, "conversation_resolved") == 0)
        return cwh_conversation(h);
    w->reason = ignored ? ignored : "unknown event";
    return 0;
}

/* Decode body; an integer beyond 64 bits anywhere (a custom attribute) must not make the
 * whole webhook unreadable, so it is read again with every integer as a real. */
static json_t *cwh_load(const char *body, size_t len, json_error_t *je)
{
    json_t *root = json_loadb(body, len, JSON_ALLOW_NUL, je);
    if (!root && json_error_code(je) == json_error_numeric_overflow)
        root = json_loadb(body, len, JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL, je);
    return root;
}

int chatwoot_webhook_parse(const char *body, size_t len, const char *path,
                           struct chatwoot_webhook *out, char *err, size_t errcap)
{
    struct cwh h = {NULL, out, err, errcap};
    json_error_t je;
    int rc = -1;
    memset(out, 0, sizeof *out);
    out->reason = "";
    if (!body)
        return cwh_fail(&h, "no body");
    h.root = cwh_load(body, len, &je);
    if (!h.root)
        return cwh_fail(&h, "not JSON: %s at byte %d", je.text, je.position);
    if (!json_is_object(h.root)) {
        cwh_fail(&h, "not a JSON object");
        goto out;
    }
    if (!cwh_str(h.root, "event")) {
        cwh_fail(&h, "no \"event\" string");
        goto out;
    }
    out->event = xstrdup(cwh_str(h.root, "event"));
    out->from_agent_bot = path && strcmp(path, "agent-bot") == 0;
    rc = cwh_dispatch(&h);
out:
    json_decref(h.root);
    if (rc != 0)
        chatwoot_webhook_free(out);
    return rc;
}

void chatwoot_webhook_free(struct chatwoot_webhook *w)
{
    free(w->event);
    free(w->channel);
    free(w->content);
    json_decref(w->sender);
    free(w->sender_type);
    free(w->status);
    free(w->previous_status);
    free(w->assignee_type);
    free(w->assignee_name);
    memset(w, 0, sizeof *w);
    w->reason = "";
}

const char *chatwoot_webhook_kind_name(enum chatwoot_webhook_kind kind)
{
    switch (kind) {
    case CW_HOOK_IGNORED:
        return "ignored";
    case CW_HOOK_INCOMING_MESSAGE:
        return "incoming_message";
    case CW_HOOK_HUMAN_REPLY:
        return "human_reply";
    case CW_HOOK_BOT_ECHO:
        return "bot_echo";
    case CW_HOOK_PRIVATE_NOTE:
        return "private_note";
    case CW_HOOK_STATUS_CHANGE:
        return "status_change";
    case CW_HOOK_ASSIGNED_TO_HUMAN:
        return "assigned_to_human";
    }
    return "unknown";
}
