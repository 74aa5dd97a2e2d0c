/* fake_chatwoot: Chatwoot's Application API in memory. State is one jansson tree guarded by
 * a mutex (handlers run on the fake_http thread, inspection on the test's):
 *
 *   accounts: {"<a>": {"conversations": {"<display_id>": conv}, "contacts": [contact]}}
 *   conv:     the show fields plus "_contact_id" and "_messages" (stripped when shown) */
#include "fake_chatwoot.h"

#include "buf.h"
#include "xalloc.h"

#include <ctype.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define PER_PAGE 15

struct fake_chatwoot {
    struct fake_http *http;
    struct fake_faults *faults;
    char *bot_token, *user_token, *bot_name;
    pthread_mutex_t mu;
    json_t *accounts;
    long next_message_id, next_contact_id;
};

/* ==== Liquid (Liquid 5.4 as Chatwoot uses it) =========================================== */

struct liquid {
    const char *src;
    size_t len, pos; /* tokenizer position */
    const json_t *drops;
    int error;           /* a Liquid::SyntaxError happened */
    int trim_next;       /* "-}}" / "-%}": strip the next text's leading whitespace */
    char blocks[16][16]; /* open block tags (if, for, ...), innermost last */
    int nblocks;
    struct buf out;
};

/* The next token (start, length) or 0 at the end: text, "{%...%}", "{{...}" / "{{...}}", or
 * a lone "{%" / "{{" (Liquid's TemplateParser alternatives, leftmost first). */
static int liquid_next(struct liquid *l, const char **tok, size_t *n)
{
    const char *s = l->src + l->pos, *end = l->src + l->len;
    if (s >= end)
        return 0;
    const char *p = s;
    while (p + 1 < end && !(p[0] == '{' && (p[1] == '%' || p[1] == '{')))
        p++;
    if (p + 1 >= end)
        p = end;
    if (p > s) { /* text up to the next tag start */
        *tok = s;
        *n = (size_t)(p - s);
        l->pos += *n;
        return 1;
    }
    const char *q = NULL;
    if (p[1] == '%') {
        for (q = p + 2; q + 1 < end && !(q[0] == '%' && q[1] == '}'); q++)
            ;
        q = q + 1 < end ? q + 2 : NULL;
    } else {
        q = memchr(p + 2, '}', (size_t)(end - (p + 2)));
        if (q)
            q += (q + 1 < end && q[1] == '}') ? 2 : 1;
    }
    *tok = p;
    *n = q ? (size_t)(q - p) : 2;
    l->pos += *n;
    return 1;
}

static int is_word(char c)
{
    return isalnum((unsigned char)c) || c == '_';
}

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* FullToken: "{%-? name markup -?%}". Fills the name; 0 when malformed. */
static int liquid_tag_name(const char *t, size_t n, char *name, size_t cap, const char **markup,
                           size_t *mlen)
{
    if (n < 4 || t[n - 2] != '%' || t[n - 1] != '}')
        return 0;
    size_t i = 2, e = n - 2;
    if (i < e && t[i] == '-')
        i++;
    while (i < e && is_space(t[i]))
        i++;
    size_t w = i;
    while (i < e && is_word(t[i]))
        i++;
    if (i == w || i - w >= cap)
        return 0;
    memcpy(name, t + w, i - w);
    name[i - w] = '\0';
    if (e > i && t[e - 1] == '-')
        e--;
    *markup = t + i;
    *mlen = e - i;
    return 1;
}

/* Raw's FullTokenPossiblyInvalid /\A(.*){%-?\s*(\w+)\s*(.*)?-?%}\z/m with a greedy prefix:
 * the prefix length and the word, or 0 when the token does not match. */
static int liquid_possibly_tag(const char *t, size_t n, size_t *prefix, char *word, size_t cap)
{
    if (n < 4 || t[n - 2] != '%' || t[n - 1] != '}')
        return 0;
    for (size_t p = n - 2; p-- > 0;) {
        if (t[p] != '{' || t[p + 1] != '%')
            continue;
        size_t k = p + 2;
        if (k < n - 2 && t[k] == '-')
            k++;
        while (k < n - 2 && is_space(t[k]))
            k++;
        size_t w = k;
        while (k < n - 2 && is_word(t[k]))
            k++;
        if (k == w)
            continue;
        *prefix = p;
        snprintf(word, cap, "%.*s", (int)(k - w), t + w);
        return 1;
    }
    return 0;
}

static void liquid_text(struct liquid *l, const char *t, size_t n)
{
    if (l->trim_next)
        while (n > 0 && is_space(*t))
            t++, n--;
    l->trim_next = 0;
    buf_append(&l->out, t, n);
}

static void liquid_rstrip(struct liquid *l)
{
    while (l->out.len > 0 && is_space(l->out.data[l->out.len - 1]))
        l->out.data[--l->out.len] = '\0';
}

/* {% raw %}: tokens verbatim until one ends in an endraw tag (Liquid's Raw#parse). */
static void liquid_raw(struct liquid *l)
{
    const char *t;
    size_t n;
    while (liquid_next(l, &t, &n)) {
        size_t prefix;
        char word[64];
        if (liquid_possibly_tag(t, n, &prefix, word, sizeof word)) {
            buf_append(&l->out, t, prefix);
            if (strcmp(word, "endraw") == 0) {
                l->trim_next = t[n - 3] == '-';
                return;
            }
        }
        buf_append(&l->out, t, n);
    }
    l->error = 1; /* "raw tag was never closed" */
}

/* Skip to the matching {% endcomment %}. */
static void liquid_comment(struct liquid *l)
{
    const char *t, *m;
    size_t n, mlen;
    char name[64];
    while (liquid_next(l, &t, &n))
        if (t[0] == '{' && t[1] == '%' && liquid_tag_name(t, n, name, sizeof name, &m, &mlen) &&
            strcmp(name, "endcomment") == 0)
            return;
    l->error = 1;
}

/* Simplified tags: blocks must nest and close ("'if' tag was never closed", "Unknown tag
 * 'endif'"), else / elsif / when only inside a block; none renders anything itself. */
static void liquid_other_tag(struct liquid *l, const char *name)
{
    static const char *const blocks[] = {"if",      "unless",   "for",      "case",
                                         "capture", "tablerow", "ifchanged"};
    static const char *const simple[] = {"assign", "cycle",     "break",     "continue", "include",
                                         "render", "increment", "decrement", "echo",     "liquid"};
    for (size_t i = 0; i < sizeof blocks / sizeof *blocks; i++) {
        if (strcmp(name, blocks[i]) == 0) {
            if (l->nblocks == 16) {
                l->error = 1;
                return;
            }
            snprintf(l->blocks[l->nblocks++], sizeof l->blocks[0], "%s", blocks[i]);
            return;
        }
    }
    for (size_t i = 0; i < sizeof simple / sizeof *simple; i++)
        if (strcmp(name, simple[i]) == 0)
            return;
    if (l->nblocks > 0 && strncmp(name, "end", 3) == 0 &&
        strcmp(name + 3, l->blocks[l->nblocks - 1]) == 0) {
        l->nblocks--;
        return;
    }
    if (l->nblocks > 0 &&
        (strcmp(name, "else") == 0 || strcmp(name, "elsif") == 0 || strcmp(name, "when") == 0))
        return;
    l->error = 1; /* "Unknown tag" */
}

static void liquid_tag(struct liquid *l, const char *t, size_t n)
{
    char name[64];
    const char *markup;
    size_t mlen;
    if (!liquid_tag_name(t, n, name, sizeof name, &markup, &mlen)) {
        l->error = 1; /* "Tag '{%' was not properly terminated" */
        return;
    }
    if (t[2] == '-')
        liquid_rstrip(l);
    l->trim_next = t[n - 3] == '-';
    if (strcmp(name, "raw") == 0) {
        for (size_t i = 0; i < mlen; i++)
            if (!is_space(markup[i]))
                l->error = 1; /* raw takes no arguments */
        if (!l->error)
            liquid_raw(l);
        return;
    }
    if (strcmp(name, "comment") == 0) {
        liquid_comment(l);
        return;
    }
    liquid_other_tag(l, name);
}

static char *url_decode(const char *s)
{
    struct buf b = BUF_INIT;
    for (size_t i = 0; s[i]; i++) {
        if (s[i] == '+') {
            buf_append(&b, " ", 1);
        } else if (s[i] == '%' && isxdigit((unsigned char)s[i + 1]) &&
                   isxdigit((unsigned char)s[i + 2])) {
            char hex[3] = {s[i + 1], s[i + 2], 0};
            char c = (char)strtol(hex, NULL, 16);
            buf_append(&b, &c, 1);
            i += 2;
        } else {
            buf_append(&b, s + i, 1);
        }
    }
    return buf_steal(&b);
}

/* The value of a drop path ("contact.name") as text ("" when missing). */
static char *liquid_lookup(const json_t *drops, const char *path, size_t n)
{
    const json_t *v = drops;
    size_t i = 0;
    while (i < n && v) {
        size_t k = i;
        while (k < n && path[k] != '.')
            k++;
        char key[64];
        snprintf(key, sizeof key, "%.*s", (int)(k - i), path + i);
        v = json_object_get(v, key);
        i = k + 1;
    }
    if (json_is_string(v))
        return xstrdup(json_string_value(v));
    if (json_is_integer(v))
        return xasprintf("%lld", (long long)json_integer_value(v));
    return xstrdup("");
}

/* {{ markup }}: a quoted string, a number or a drop path, then filters (lax mode). */
static void liquid_variable(struct liquid *l, const char *t, size_t n)
{
    if (n < 4 || t[n - 2] != '}' || t[n - 1] != '}') {
        l->error = 1; /* "Variable '{{' was not properly terminated" */
        return;
    }
    size_t i = 2, e = n - 2;
    if (i < e && t[i] == '-') {
        i++;
        liquid_rstrip(l);
    }
    if (e > i && t[e - 1] == '-') {
        e--;
        l->trim_next = 1;
    } else {
        l->trim_next = 0;
    }
    while (i < e && is_space(t[i]))
        i++;
    char *val;
    if (i < e && (t[i] == '"' || t[i] == '\'')) {
        const char *close = memchr(t + i + 1, t[i], e - i - 1);
        size_t k = close ? (size_t)(close - t) : e;
        val = xstrndup(t + i + 1, k - i - 1);
        i = close ? k + 1 : e;
    } else {
        size_t k = i;
        while (k < e && (is_word(t[k]) || t[k] == '.' || t[k] == '-' || t[k] == '?'))
            k++;
        int number = k > i && (isdigit((unsigned char)t[i]) || t[i] == '-');
        val = number ? xstrndup(t + i, k - i) : liquid_lookup(l->drops, t + i, k - i);
        i = k;
    }
    /* filters: "| name" (arguments ignored) */
    while (i < e) {
        if (t[i] != '|') {
            i++;
            continue;
        }
        i++;
        while (i < e && is_space(t[i]))
            i++;
        size_t w = i;
        while (i < e && is_word(t[i]))
            i++;
        char *nv = NULL;
        if (i - w == 10 && strncmp(t + w, "url_decode", 10) == 0)
            nv = url_decode(val);
        else if ((i - w == 6 && strncmp(t + w, "upcase", 6) == 0) ||
                 (i - w == 8 && strncmp(t + w, "downcase", 8) == 0)) {
            nv = xstrdup(val);
            for (char *p = nv; *p; p++)
                *p = (char)(t[w] == 'u' ? toupper((unsigned char)*p) : tolower((unsigned char)*p));
        } else if (i - w == 5 && strncmp(t + w, "strip", 5) == 0) {
            char *p = val;
            while (is_space(*p))
                p++;
            nv = xstrdup(p);
            for (size_t k = strlen(nv); k > 0 && is_space(nv[k - 1]); k--)
                nv[k - 1] = '\0';
        }
        if (nv) {
            free(val);
            val = nv;
        }
    }
    buf_puts(&l->out, val);
    free(val);
}

static json_t *default_drops(void)
{
    return json_pack("{s:{s:s,s:s,s:s,s:s}, s:{s:s,s:s}, s:{s:i,s:i}, s:{s:s}, s:{s:s}}", "contact",
                     "name", "Alice Doe", "first_name", "Alice", "last_name", "Doe", "email",
                     "alice@example.com", "agent", "name", "Tierone Bot", "first_name", "Tierone",
                     "conversation", "display_id", 1, "id", 1, "inbox", "name", "Support",
                     "account", "name", "Acme");
}

char *fake_chatwoot_liquid(const char *content, const json_t *drops)
{
    json_t *own = drops ? NULL : default_drops();
    /* content.gsub(/`(.*?)`/m, '{% raw %}`\1`{% endraw %}') */
    struct buf mod = BUF_INIT;
    for (const char *p = content; *p;) {
        const char *close = p[0] == '`' ? strchr(p + 1, '`') : NULL;
        if (close) {
            buf_puts(&mod, "{% raw %}");
            buf_append(&mod, p, (size_t)(close - p) + 1);
            buf_puts(&mod, "{% endraw %}");
            p = close + 1;
        } else {
            buf_append(&mod, p, 1);
            p++;
        }
    }
    struct liquid l = {
        .src = mod.data ? mod.data : "", .len = mod.len, .drops = drops ? drops : own};
    const char *t;
    size_t n;
    while (!l.error && liquid_next(&l, &t, &n)) {
        if (n >= 2 && t[0] == '{' && t[1] == '%')
            liquid_tag(&l, t, n);
        else if (n >= 2 && t[0] == '{' && t[1] == '{')
            liquid_variable(&l, t, n);
        else
            liquid_text(&l, t, n);
    }
    if (l.nblocks > 0)
        l.error = 1; /* "'if' tag was never closed" */
    char *res = l.error ? xstrdup(content) : xstrndup(l.out.data ? l.out.data : "", l.out.len);
    buf_free(&l.out);
    buf_free(&mod);
    json_decref(own);
    return res;
}

/* ==== state helpers (call with f->mu held) ============================================== */

static json_t *account_get(struct fake_chatwoot *f, long account, int create)
{
    char key[32];
    snprintf(key, sizeof key, "%ld", account);
    json_t *a = json_object_get(f->accounts, key);
    if (!a && create) {
        a = json_pack("{s:{}, s:[], s:{}, s:s}", "conversations", "contacts", "_contacts_by_id",
                      "name", "Acme");
        json_object_set_new(f->accounts, key, a);
    }
    return a;
}

static json_t *conv_get(struct fake_chatwoot *f, long account, long display_id)
{
    char key[32];
    snprintf(key, sizeof key, "%ld", display_id);
    return json_object_get(json_object_get(account_get(f, account, 0), "conversations"), key);
}

/* The account's contact with this id (borrowed), through the id index: a benchmark's
 * thousands of contacts made a scan of the array the fake's main cost. */
static json_t *contact_get(json_t *acc, long id)
{
    char key[32];
    snprintf(key, sizeof key, "%ld", id);
    return json_object_get(json_object_get(acc, "_contacts_by_id"), key);
}

/* Append contact c (reference taken) to the account's contacts and its id index. */
static void contact_add(json_t *acc, json_t *c)
{
    char key[32];
    snprintf(key, sizeof key, "%lld", (long long)json_integer_value(json_object_get(c, "id")));
    json_object_set(json_object_get(acc, "_contacts_by_id"), key, c);
    json_array_append(json_object_get(acc, "contacts"), c);
}

static long long jint(const json_t *o, const char *key)
{
    return (long long)json_integer_value(json_object_get(o, key));
}

static const char *jstr(const json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "";
}

/* Rails' ISO 8601 rendering of unix seconds. */
static json_t *iso_time(long long t)
{
    if (t <= 0)
        return json_null();
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    char s[40];
    strftime(s, sizeof s, "%Y-%m-%dT%H:%M:%S.000Z", &tm);
    return json_string(s);
}

/* The conversation as GET show renders it. */
static json_t *conv_view(struct fake_chatwoot *f, long account, json_t *conv)
{
    json_t *v = json_deep_copy(conv);
    json_t *msgs = json_object_get(conv, "_messages");
    json_t *contact = contact_get(account_get(f, account, 0), jint(conv, "_contact_id"));
    json_object_del(v, "_messages");
    json_object_del(v, "_contact_id");
    json_object_del(v, "_snoozed_until");
    size_t n = json_array_size(msgs);
    json_object_set_new(v, "messages",
                        n ? json_pack("[O]", json_array_get(msgs, n - 1)) : json_array());
    json_object_set_new(v, "snoozed_until", iso_time(jint(conv, "_snoozed_until")));
    json_object_set_new(v, "meta",
                        json_pack("{s:O, s:n, s:n, s:n, s:s}", "sender",
                                  contact ? contact : json_object(), "assignee", "assignee_type",
                                  "team", "channel", "Channel::Api"));
    if (!contact)
        json_decref(json_object_get(json_object_get(v, "meta"), "sender"));
    return v;
}

void fake_chatwoot_add_conversation(struct fake_chatwoot *f, long account, long display_id,
                                    const char *status, long inbox_id, long contact_id)
{
    pthread_mutex_lock(&f->mu);
    json_t *convs = json_object_get(account_get(f, account, 1), "conversations");
    char key[32];
    snprintf(key, sizeof key, "%ld", display_id);
    json_t *c = json_pack("{s:I, s:I, s:I, s:s, s:[], s:{}, s:{}, s:b, s:n, s:n, s:n, s:s?, "
                          "s:I, s:I, s:i, s:[]}",
                          "id", (json_int_t)display_id, "account_id", (json_int_t)account,
                          "inbox_id", (json_int_t)inbox_id, "status", status ? status : "pending",
                          "labels", "custom_attributes", "additional_attributes", "can_reply", 1,
                          "priority", "waiting_since", "agent_last_seen_at", "uuid", NULL,
                          "timestamp", (json_int_t)time(NULL), "_contact_id",
                          (json_int_t)contact_id, "unread_count", 0, "_messages");
    json_object_set_new(c, "uuid", json_sprintf("00000000-0000-4000-8000-%012ld", display_id));
    json_object_set_new(convs, key, c);
    pthread_mutex_unlock(&f->mu);
}

/* A stored contact from fields (defaults filled in). */
static json_t *contact_new(struct fake_chatwoot *f, long account, const json_t *fields)
{
    json_t *c = json_pack("{s:I, s:n, s:n, s:n, s:n, s:s, s:b, s:{}, s:{}, s:s, s:I, s:n}", "id",
                          (json_int_t)f->next_contact_id++, "name", "email", "phone_number",
                          "identifier", "thumbnail", "", "blocked", 0, "additional_attributes",
                          "custom_attributes", "availability_status", "offline", "created_at",
                          (json_int_t)time(NULL), "last_activity_at");
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)fields, k, v)
    {
        if (strcmp(k, "id") != 0)
            json_object_set(c, k, v);
    }
    json_object_set_new(c, "account_id", json_integer(account));
    return c;
}

long fake_chatwoot_add_contact(struct fake_chatwoot *f, long account, const char *text)
{
    json_t *fields = json_loads(text, 0, NULL);
    if (!json_is_object(fields)) {
        json_decref(fields);
        return -1;
    }
    pthread_mutex_lock(&f->mu);
    json_t *c = contact_new(f, account, fields);
    long id = (long)jint(c, "id");
    contact_add(account_get(f, account, 1), c);
    json_decref(c);
    pthread_mutex_unlock(&f->mu);
    json_decref(fields);
    return id;
}

/* Store a message in conv (state lock held); returns it (borrowed). */
static json_t *message_store(struct fake_chatwoot *f, long account, json_t *conv, int type,
                             const char *content, int private_note, json_t *attrs, json_t *sender)
{
    json_t *m =
        json_pack("{s:I, s:s?, s:I, s:I, s:I, s:i, s:s, s:s, s:O, s:I, s:b, s:n, s:O}", "id",
                  (json_int_t)f->next_message_id++, "content", content, "account_id",
                  (json_int_t)account, "inbox_id", (json_int_t)jint(conv, "inbox_id"),
                  "conversation_id", (json_int_t)jint(conv, "id"), "message_type", type,
                  "content_type", "text", "status", "sent", "content_attributes",
                  attrs ? attrs : json_object(), "created_at", (json_int_t)time(NULL), "private",
                  private_note, "source_id", "sender", sender ? sender : json_null());
    if (!attrs)
        json_decref(json_object_get(m, "content_attributes"));
    json_array_append_new(json_object_get(conv, "_messages"), m);
    return m;
}

long fake_chatwoot_add_message(struct fake_chatwoot *f, long account, long display_id,
                               int message_type, const char *content, int private_note)
{
    pthread_mutex_lock(&f->mu);
    json_t *conv = conv_get(f, account, display_id);
    long id = -1;
    if (conv) {
        json_t *m =
            message_store(f, account, conv, message_type, content, private_note, NULL, NULL);
        id = (long)jint(m, "id");
    }
    pthread_mutex_unlock(&f->mu);
    return id;
}

void fake_chatwoot_set_labels(struct fake_chatwoot *f, long account, long display_id,
                              const char *const *labels, size_t n)
{
    pthread_mutex_lock(&f->mu);
    json_t *conv = conv_get(f, account, display_id);
    if (conv) {
        json_t *a = json_array();
        for (size_t i = 0; i < n; i++)
            json_array_append_new(a, json_string(labels[i]));
        json_object_set_new(conv, "labels", a);
    }
    pthread_mutex_unlock(&f->mu);
}

json_t *fake_chatwoot_messages(struct fake_chatwoot *f, long account, long display_id)
{
    pthread_mutex_lock(&f->mu);
    json_t *conv = conv_get(f, account, display_id);
    json_t *r = conv ? json_deep_copy(json_object_get(conv, "_messages")) : NULL;
    pthread_mutex_unlock(&f->mu);
    return r;
}

json_t *fake_chatwoot_labels(struct fake_chatwoot *f, long account, long display_id)
{
    pthread_mutex_lock(&f->mu);
    json_t *conv = conv_get(f, account, display_id);
    json_t *r = conv ? json_deep_copy(json_object_get(conv, "labels")) : NULL;
    pthread_mutex_unlock(&f->mu);
    return r;
}

char *fake_chatwoot_status(struct fake_chatwoot *f, long account, long display_id)
{
    pthread_mutex_lock(&f->mu);
    json_t *conv = conv_get(f, account, display_id);
    char *r = conv ? xstrdup(jstr(conv, "status")) : NULL;
    pthread_mutex_unlock(&f->mu);
    return r;
}

long long fake_chatwoot_snoozed_until(struct fake_chatwoot *f, long account, long display_id)
{
    pthread_mutex_lock(&f->mu);
    json_t *conv = conv_get(f, account, display_id);
    long long r = conv ? jint(conv, "_snoozed_until") : -1;
    pthread_mutex_unlock(&f->mu);
    return r;
}

json_t *fake_chatwoot_contacts(struct fake_chatwoot *f, long account)
{
    pthread_mutex_lock(&f->mu);
    json_t *acc = account_get(f, account, 0);
    json_t *r = acc ? json_deep_copy(json_object_get(acc, "contacts")) : NULL;
    pthread_mutex_unlock(&f->mu);
    return r;
}

/* ==== HTTP =============================================================================== */

/* One request being handled (state lock held). */
struct req {
    struct fake_chatwoot *f;
    const struct fake_http_request *hr;
    struct fake_http_response *resp;
    int bot;      /* authenticated with the bot token */
    json_t *acc;  /* the account */
    json_t *body; /* JSON params ({} when none) */
    long account;
};

static void reply_json(struct fake_http_response *r, int status, json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
    r->status = status;
    fake_http_response_header(r, "Content-Type", "application/json; charset=utf-8");
    fake_http_response_body(r, s);
    free(s);
    json_decref(j);
}

static void reply_error(struct fake_http_response *r, int status, const char *msg)
{
    reply_json(r, status, json_pack("{s:s}", "error", msg));
}

static void reply_not_found(struct fake_http_response *r)
{
    reply_error(r, 404, "Resource could not be found");
}

/* The value of query parameter `name` (decoded, new string) or NULL. */
static char *query_param(const char *query, const char *name)
{
    size_t nl = strlen(name);
    for (const char *p = query; p && *p;) {
        const char *amp = strchr(p, '&');
        size_t len = amp ? (size_t)(amp - p) : strlen(p);
        if (len > nl && strncmp(p, name, nl) == 0 && p[nl] == '=') {
            char *raw = xstrndup(p + nl + 1, len - nl - 1);
            char *v = url_decode(raw);
            free(raw);
            return v;
        }
        p = amp ? amp + 1 : NULL;
    }
    return NULL;
}

static long query_long(const char *query, const char *name, long dflt)
{
    char *v = query_param(query, name);
    long r = v && *v ? strtol(v, NULL, 10) : dflt;
    free(v);
    return r;
}

/* ---- messages ---- */

static json_t *sender_of(struct req *q)
{
    if (q->bot)
        return json_pack("{s:i, s:s, s:s, s:s}", "id", 1, "name", q->f->bot_name, "avatar_url", "",
                         "type", "agent_bot");
    return json_pack("{s:i, s:s, s:s, s:s, s:s}", "id", 1, "name", "Admin", "available_name",
                     "Admin", "email", "admin@example.com", "type", "user");
}

static int message_type_of(const json_t *v)
{
    static const char *const names[] = {"incoming", "outgoing", "activity", "template"};
    if (!v || json_is_null(v))
        return 1;
    if (json_is_integer(v) && json_integer_value(v) >= 0 && json_integer_value(v) <= 3)
        return (int)json_integer_value(v);
    for (int i = 0; i < 4; i++)
        if (json_is_string(v) && strcmp(json_string_value(v), names[i]) == 0)
            return i;
    return -1;
}

static int truthy(const json_t *v)
{
    if (json_is_string(v))
        return strcmp(json_string_value(v), "true") == 0 || strcmp(json_string_value(v), "1") == 0;
    return json_is_true(v) || (json_is_integer(v) && json_integer_value(v) == 1);
}

static void messages_create(struct req *q, json_t *conv)
{
    int type = message_type_of(json_object_get(q->body, "message_type"));
    if (type < 0) {
        reply_error(q->resp, 422, "'message_type' is not a valid message_type");
        return;
    }
    json_t *attrs = json_object_get(q->body, "content_attributes");
    if (json_is_string(attrs)) {
        json_t *parsed = json_loads(json_string_value(attrs), 0, NULL);
        attrs = json_is_object(parsed) ? parsed : json_object();
        if (!json_is_object(parsed))
            json_decref(parsed);
    } else if (json_is_object(attrs)) {
        json_incref(attrs);
    } else {
        attrs = json_object();
    }
    const char *content = json_string_value(json_object_get(q->body, "content"));
    char *stored = NULL;
    if (content && *content && (type == 1 || type == 3)) {
        json_t *contact = contact_get(q->acc, jint(conv, "_contact_id"));
        json_t *drops =
            json_pack("{s:{s:s,s:s,s:s}, s:{s:s}, s:{s:I,s:I}, s:{s:s,s:I}, s:{s:s,s:I}}",
                      "contact", "name", jstr(contact, "name"), "email", jstr(contact, "email"),
                      "phone_number", jstr(contact, "phone_number"), "agent", "name",
                      q->bot ? q->f->bot_name : "Admin", "conversation", "display_id",
                      (json_int_t)jint(conv, "id"), "id", (json_int_t)jint(conv, "id"), "inbox",
                      "name", "Support", "id", (json_int_t)jint(conv, "inbox_id"), "account",
                      "name", jstr(q->acc, "name"), "id", (json_int_t)q->account);
        stored = fake_chatwoot_liquid(content, drops);
        json_decref(drops);
    }
    json_t *m = message_store(q->f, q->account, conv, type, stored ? stored : content,
                              truthy(json_object_get(q->body, "private")), attrs, sender_of(q));
    json_decref(attrs);
    json_decref(json_object_get(m, "sender"));
    free(stored);
    json_t *out = json_deep_copy(m);
    json_t *echo = json_object_get(q->body, "echo_id");
    if (echo)
        json_object_set(out, "echo_id", echo);
    reply_json(q->resp, 200, out);
}

static void messages_index(struct req *q, json_t *conv)
{
    long after = query_long(q->hr->query, "after", 0);
    long before = query_long(q->hr->query, "before", 0);
    json_t *all = json_object_get(conv, "_messages");
    json_t *sel = json_array();
    size_t i;
    json_t *m;
    json_array_foreach(all, i, m)
    {
        long id = (long)jint(m, "id");
        if ((after && id <= after) || (before && id >= before))
            continue;
        json_array_append(sel, m);
    }
    size_t n = json_array_size(sel), keep = after && before ? 1000 : after ? 100 : 20;
    json_t *page = json_array();
    /* after alone: the oldest 100 newer ones; otherwise the newest `keep` */
    size_t from = (after && !before) || n <= keep ? 0 : n - keep;
    for (size_t k = from; k < n && k - from < keep; k++)
        json_array_append(page, json_array_get(sel, k));
    json_decref(sel);
    json_t *contact = contact_get(q->acc, jint(conv, "_contact_id"));
    reply_json(q->resp, 200,
               json_pack("{s:{s:O, s:O, s:O, s:n}, s:o}", "meta", "labels",
                         json_object_get(conv, "labels"), "additional_attributes",
                         json_object_get(conv, "additional_attributes"), "contact",
                         contact ? contact : json_null(), "assignee", "payload", page));
}

/* ---- labels, status ---- */

static void labels_create(struct req *q, json_t *conv)
{
    json_t *in = json_object_get(q->body, "labels");
    json_t *labels = json_array();
    if (json_is_string(in)) { /* acts_as_taggable parses "a,b" */
        char *dup = xstrdup(json_string_value(in)), *save = NULL;
        for (char *t = strtok_r(dup, ",", &save); t; t = strtok_r(NULL, ",", &save))
            json_array_append_new(labels, json_string(t));
        free(dup);
    } else if (json_is_array(in)) {
        size_t i;
        json_t *v;
        json_array_foreach(in, i, v)
        {
            int seen = 0;
            size_t k;
            json_t *w;
            json_array_foreach(labels, k, w) seen |= json_equal(v, w);
            if (json_is_string(v) && !seen)
                json_array_append(labels, v);
        }
    }
    json_object_set_new(conv, "labels", labels);
    reply_json(q->resp, 200, json_pack("{s:O}", "payload", labels));
}

static void toggle_status(struct req *q, json_t *conv)
{
    const char *status = json_string_value(json_object_get(q->body, "status"));
    const char *cur = jstr(conv, "status");
    if (!status)
        status = strcmp(cur, "open") == 0 ? "resolved" : "open";
    if (strcmp(status, "open") && strcmp(status, "resolved") && strcmp(status, "pending") &&
        strcmp(status, "snoozed")) {
        char msg[128];
        snprintf(msg, sizeof msg, "'%.60s' is not a valid status", status);
        reply_error(q->resp, 422, msg);
        return;
    }
    long long until = 0;
    json_t *su = json_object_get(q->body, "snoozed_until");
    if (strcmp(status, "snoozed") == 0 && su)
        until = json_is_integer(su)
                    ? json_integer_value(su)
                    : strtoll(json_string_value(su) ? json_string_value(su) : "", NULL, 10);
    json_object_set_new(conv, "status", json_string(status));
    json_object_set_new(conv, "_snoozed_until", json_integer(until));
    reply_json(q->resp, 200,
               json_pack("{s:{}, s:{s:b, s:I, s:s, s:o}}", "meta", "payload", "success", 1,
                         "conversation_id", (json_int_t)jint(conv, "id"), "current_status", status,
                         "snoozed_until", iso_time(until)));
}

/* ---- contacts ---- */

static int icontains(const char *hay, const char *needle)
{
    return hay && strcasestr(hay, needle) != NULL;
}

static int e164(const char *p)
{
    if (p[0] != '+' || p[1] < '1' || p[1] > '9')
        return 0;
    size_t n = 0;
    for (p += 2; *p; p++, n++)
        if (!isdigit((unsigned char)*p))
            return 0;
    return n >= 1 && n <= 14;
}

/* Contact validations (contact.rb): 422 {"message","attributes"} into resp; 0 when valid. */
static int contact_invalid(struct req *q, const json_t *c)
{
    struct buf msg = BUF_INIT;
    json_t *attrs = json_array();
    const char *email = json_string_value(json_object_get(c, "email"));
    const char *phone = json_string_value(json_object_get(c, "phone_number"));
    const char *ident = json_string_value(json_object_get(c, "identifier"));
    long long id = jint(c, "id");
    int taken_email = 0, taken_phone = 0, taken_ident = 0;
    size_t i;
    json_t *o;
    json_array_foreach(json_object_get(q->acc, "contacts"), i, o)
    {
        if (jint(o, "id") == id)
            continue;
        taken_email |= email && *email && strcasecmp(jstr(o, "email"), email) == 0;
        taken_phone |= phone && *phone && strcmp(jstr(o, "phone_number"), phone) == 0;
        taken_ident |= ident && *ident && strcmp(jstr(o, "identifier"), ident) == 0;
    }
#define INVALID(attr, text)                                                                        \
    do {                                                                                           \
        if (msg.len)                                                                               \
            buf_puts(&msg, ", ");                                                                  \
        buf_puts(&msg, text);                                                                      \
        json_array_append_new(attrs, json_string(attr));                                           \
    } while (0)
    if (email && *email && !strchr(email, '@'))
        INVALID("email", "Email Invalid email");
    if (taken_email)
        INVALID("email", "Email has already been taken");
    if (phone && *phone && !e164(phone))
        INVALID("phone_number", "Phone number should be in e164 format");
    if (taken_phone)
        INVALID("phone_number", "Phone number has already been taken");
    if (taken_ident)
        INVALID("identifier", "Identifier has already been taken");
#undef INVALID
    int bad = msg.len > 0;
    if (bad)
        reply_json(q->resp, 422, json_pack("{s:s, s:O}", "message", msg.data, "attributes", attrs));
    json_decref(attrs);
    buf_free(&msg);
    return bad;
}

static void contacts_create(struct req *q)
{
    static const char *const fields[] = {
        "name",       "email",   "phone_number",          "identifier",
        "avatar_url", "blocked", "additional_attributes", "custom_attributes"};
    json_t *given = json_object();
    for (size_t i = 0; i < sizeof fields / sizeof *fields; i++) {
        json_t *v = json_object_get(q->body, fields[i]);
        if (v)
            json_object_set(given, fields[i], v);
    }
    const char *email = json_string_value(json_object_get(given, "email"));
    if (email) { /* before_validation: downcased */
        char *low = xstrdup(email);
        for (char *p = low; *p; p++)
            *p = (char)tolower((unsigned char)*p);
        json_object_set_new(given, "email", json_string(low));
        free(low);
    }
    json_t *c = contact_new(q->f, q->account, given);
    json_decref(given);
    if (contact_invalid(q, c)) {
        q->f->next_contact_id--;
        json_decref(c);
        return;
    }
    contact_add(q->acc, c);
    reply_json(q->resp, 200,
               json_pack("{s:{s:o, s:{s:n, s:n}}}", "payload", "contact", c, "contact_inbox",
                         "inbox", "source_id"));
}

static void contacts_update(struct req *q, long id)
{
    json_t *c = contact_get(q->acc, id);
    if (!c) {
        reply_not_found(q->resp);
        return;
    }
    json_t *next = json_deep_copy(c);
    const char *k;
    json_t *v;
    json_object_foreach(q->body, k, v)
    {
        if (strcmp(k, "id") == 0 || strcmp(k, "account_id") == 0 || strcmp(k, "contact") == 0)
            continue;
        int merge = strcmp(k, "custom_attributes") == 0 || strcmp(k, "additional_attributes") == 0;
        if (merge && json_is_object(v))
            json_object_update(json_object_get(next, k), v); /* shallow merge */
        else if (!merge)
            json_object_set(next, k, v);
    }
    if (contact_invalid(q, next)) {
        json_decref(next);
        return;
    }
    json_object_update(c, next);
    json_decref(next);
    reply_json(q->resp, 200, json_pack("{s:O}", "payload", c));
}

/* One page of `matches` with meta. */
static void contacts_page(struct req *q, json_t *matches, int has_more_meta)
{
    long page = query_long(q->hr->query, "page", 1);
    if (page < 1)
        page = 1;
    size_t n = json_array_size(matches), from = (size_t)(page - 1) * PER_PAGE;
    json_t *out = json_array();
    for (size_t i = from; i < n && i < from + PER_PAGE; i++)
        json_array_append(out, json_array_get(matches, i));
    json_t *meta =
        json_pack("{s:I, s:I}", "count", (json_int_t)n, "current_page", (json_int_t)page);
    if (has_more_meta)
        json_object_set_new(meta, "has_more", json_boolean(from + PER_PAGE < n));
    reply_json(q->resp, 200, json_pack("{s:o, s:o}", "meta", meta, "payload", out));
    json_decref(matches);
}

static void contacts_search(struct req *q)
{
    char *term = query_param(q->hr->query, "q");
    if (!term || !*term) {
        free(term);
        reply_error(q->resp, 422, "Specify search string with parameter q");
        return;
    }
    json_t *matches = json_array();
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(q->acc, "contacts"), i, c)
    {
        const char *ident = json_string_value(json_object_get(c, "identifier"));
        if (icontains(json_string_value(json_object_get(c, "name")), term) ||
            icontains(json_string_value(json_object_get(c, "email")), term) ||
            icontains(json_string_value(json_object_get(c, "phone_number")), term) ||
            (ident && strstr(ident, term)))
            json_array_append(matches, c);
    }
    free(term);
    contacts_page(q, matches, 1);
}

/* The text a filter compares for attribute key in contact c. */
static const char *filter_value(const json_t *c, const char *key)
{
    if (!strcmp(key, "name") || !strcmp(key, "email") || !strcmp(key, "phone_number") ||
        !strcmp(key, "identifier"))
        return json_string_value(json_object_get(c, key));
    return json_string_value(json_object_get(json_object_get(c, "custom_attributes"), key));
}

static int filter_one(const json_t *c, const json_t *cond, const char **bad)
{
    const char *key = jstr(cond, "attribute_key"), *op = jstr(cond, "filter_operator");
    const char *have = filter_value(c, key);
    int any = 0;
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(cond, "values"), i, v)
    {
        const char *want = json_string_value(v);
        if (!want)
            continue;
        if (!strcmp(op, "equal_to") || !strcmp(op, "not_equal_to"))
            any |=
                have && (strcmp(key, "email") ? strcmp(have, want) : strcasecmp(have, want)) == 0;
        else
            any |= icontains(have, want);
    }
    if (!strcmp(op, "equal_to") || !strcmp(op, "contains"))
        return any;
    if (!strcmp(op, "not_equal_to") || !strcmp(op, "does_not_contain"))
        return !any;
    *bad = op;
    return 0;
}

static void contacts_filter(struct req *q)
{
    json_t *conds = json_object_get(q->body, "payload");
    if (!json_is_array(conds) || json_array_size(conds) == 0) {
        reply_error(q->resp, 422, "param is missing or the value is empty: payload");
        return;
    }
    json_t *matches = json_array();
    const char *bad = NULL;
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(q->acc, "contacts"), i, c)
    {
        int acc = 0;
        const char *op = NULL; /* the previous condition's query_operator */
        size_t k;
        json_t *cond;
        json_array_foreach(conds, k, cond)
        {
            int r = filter_one(c, cond, &bad);
            acc = k == 0 ? r : (op && !strcasecmp(op, "or")) ? (acc || r) : (acc && r);
            op = json_string_value(json_object_get(cond, "query_operator"));
        }
        if (acc)
            json_array_append(matches, c);
    }
    if (bad) {
        char msg[160];
        snprintf(msg, sizeof msg,
                 "Invalid operator. The allowed operators are [equal_to, "
                 "not_equal_to, contains, does_not_contain]");
        json_decref(matches);
        reply_error(q->resp, 422, msg);
        return;
    }
    contacts_page(q, matches, 0);
}

/* ---- routing ---- */

/* Route: path segments after /api/v1/accounts/{a}/ and the method. Sets *bot_ok. */
enum route {
    R_NONE,
    R_CONV_SHOW,
    R_MSG_INDEX,
    R_MSG_CREATE,
    R_LABELS_INDEX,
    R_LABELS_CREATE,
    R_TOGGLE,
    R_CONTACT_SEARCH,
    R_CONTACT_FILTER,
    R_CONTACT_CREATE,
    R_CONTACT_UPDATE,
};

static enum route route_of(const char *method, char **seg, int nseg, int *bot_ok)
{
    int get = !strcmp(method, "GET"), post = !strcmp(method, "POST");
    *bot_ok = 0;
    if (nseg >= 2 && !strcmp(seg[0], "conversations")) {
        *bot_ok = 1;
        if (nseg == 2 && get)
            return R_CONV_SHOW;
        if (nseg == 3 && !strcmp(seg[2], "messages")) {
            *bot_ok = post;
            return get ? R_MSG_INDEX : post ? R_MSG_CREATE : R_NONE;
        }
        if (nseg == 3 && !strcmp(seg[2], "labels"))
            return get ? R_LABELS_INDEX : post ? R_LABELS_CREATE : R_NONE;
        if (nseg == 3 && !strcmp(seg[2], "toggle_status") && post)
            return R_TOGGLE;
        return R_NONE;
    }
    if (nseg >= 1 && !strcmp(seg[0], "contacts")) {
        if (nseg == 1 && post)
            return R_CONTACT_CREATE;
        if (nseg == 2 && !strcmp(seg[1], "search") && get)
            return R_CONTACT_SEARCH;
        if (nseg == 2 && !strcmp(seg[1], "filter") && post)
            return R_CONTACT_FILTER;
        if (nseg == 2 && (!strcmp(method, "PATCH") || !strcmp(method, "PUT")))
            return R_CONTACT_UPDATE;
    }
    return R_NONE;
}

/* 1 when the request may go on; otherwise the 401 is in resp. */
static int authenticate(struct req *q, int bot_ok)
{
    const char *tok = fake_http_request_header(q->hr, "api_access_token");
    if (!tok)
        tok = fake_http_request_header(q->hr, "api-access-token");
    if (!tok || !*tok) {
        reply_json(
            q->resp, 401,
            json_pack("{s:[s]}", "errors", "You need to sign in or sign up before continuing."));
        return 0;
    }
    if (strcmp(tok, q->f->user_token) == 0)
        return 1;
    if (strcmp(tok, q->f->bot_token) != 0) {
        reply_error(q->resp, 401, "Invalid Access Token");
        return 0;
    }
    q->bot = 1;
    if (!bot_ok) {
        reply_error(q->resp, 401, "Access to this endpoint is not authorized for bots");
        return 0;
    }
    return 1;
}

/* JSON params: the body when Content-Type is JSON, else {}. -1 (400 sent) for bad JSON. */
static int parse_body(struct req *q)
{
    const char *ct = fake_http_request_header(q->hr, "Content-Type");
    if (!ct || strncasecmp(ct, "application/json", 16) != 0 || q->hr->body_len == 0) {
        q->body = json_object();
        return 0;
    }
    q->body = json_loadb(q->hr->body, q->hr->body_len, 0, NULL);
    if (!json_is_object(q->body)) {
        json_decref(q->body);
        q->body = NULL;
        reply_error(q->resp, 400, "Error occurred while parsing request parameters");
        return -1;
    }
    return 0;
}

static void dispatch(struct req *q, enum route r, char **seg)
{
    json_t *conv = NULL;
    if (r <= R_TOGGLE) {
        conv = conv_get(q->f, q->account, strtol(seg[1], NULL, 10));
        if (!conv) {
            reply_not_found(q->resp);
            return;
        }
    }
    switch (r) {
    case R_CONV_SHOW:
        reply_json(q->resp, 200, conv_view(q->f, q->account, conv));
        break;
    case R_MSG_INDEX:
        messages_index(q, conv);
        break;
    case R_MSG_CREATE:
        messages_create(q, conv);
        break;
    case R_LABELS_INDEX:
        reply_json(q->resp, 200, json_pack("{s:O}", "payload", json_object_get(conv, "labels")));
        break;
    case R_LABELS_CREATE:
        labels_create(q, conv);
        break;
    case R_TOGGLE:
        toggle_status(q, conv);
        break;
    case R_CONTACT_SEARCH:
        contacts_search(q);
        break;
    case R_CONTACT_FILTER:
        contacts_filter(q);
        break;
    case R_CONTACT_CREATE:
        contacts_create(q);
        break;
    case R_CONTACT_UPDATE:
        contacts_update(q, strtol(seg[1], NULL, 10));
        break;
    case R_NONE:
        break;
    }
}

static void on_request(const struct fake_http_request *hr, struct fake_http_response *resp,
                       void *arg)
{
    struct fake_chatwoot *f = arg;
    if (fake_faults_apply(f->faults, resp))
        return;
    /* /api/v1/accounts/{a}/rest... */
    char *path = xstrdup(hr->path + strlen("/api/v1/accounts/"));
    char *seg[8], *save = NULL;
    int nseg = 0;
    for (char *t = strtok_r(path, "/", &save); t && nseg < 8; t = strtok_r(NULL, "/", &save))
        seg[nseg++] = t;
    int bot_ok = 0;
    enum route r = nseg >= 2 ? route_of(hr->method, seg + 1, nseg - 1, &bot_ok) : R_NONE;
    struct req q = {.f = f, .hr = hr, .resp = resp};
    if (r == R_NONE) {
        resp->status = 404;
        fake_http_response_header(resp, "Content-Type", "text/html");
        fake_http_response_body(resp, "<html><body>The page you were looking for doesn't exist."
                                      "</body></html>");
        goto out;
    }
    pthread_mutex_lock(&f->mu);
    if (!authenticate(&q, bot_ok))
        goto unlock;
    q.account = strtol(seg[0], NULL, 10);
    q.acc = account_get(f, q.account, 0);
    if (!q.acc) {
        reply_not_found(resp);
        goto unlock;
    }
    if (parse_body(&q) == 0)
        dispatch(&q, r, seg + 1);
unlock:
    pthread_mutex_unlock(&f->mu);
    json_decref(q.body);
out:
    free(path);
}

/* ==== lifecycle ========================================================================== */

struct fake_chatwoot *fake_chatwoot_start(const struct fake_chatwoot_opts *opts)
{
    struct fake_http *http = fake_http_start(NULL);
    if (!http)
        return NULL;
    struct fake_chatwoot *f = xcalloc(1, sizeof *f);
    f->http = http;
    f->faults = fake_faults_new();
    f->bot_token = xstrdup(opts && opts->bot_token ? opts->bot_token : "bot-token");
    f->user_token = xstrdup(opts && opts->user_token ? opts->user_token : "user-token");
    f->bot_name = xstrdup(opts && opts->bot_name ? opts->bot_name : "Tierone Bot");
    pthread_mutex_init(&f->mu, NULL);
    f->accounts = json_object();
    f->next_message_id = 1001;
    f->next_contact_id = 501;
    fake_http_route(http, "*", "/api/v1/accounts/*", on_request, f);
    return f;
}

void fake_chatwoot_free(struct fake_chatwoot *f)
{
    if (!f)
        return;
    fake_http_free(f->http); /* joins the thread: no handler runs after this */
    fake_faults_free(f->faults);
    json_decref(f->accounts);
    pthread_mutex_destroy(&f->mu);
    free(f->bot_token);
    free(f->user_token);
    free(f->bot_name);
    free(f);
}

const char *fake_chatwoot_url(const struct fake_chatwoot *f)
{
    return fake_http_url(f->http);
}

struct fake_http *fake_chatwoot_http(struct fake_chatwoot *f)
{
    return f->http;
}

struct fake_faults *fake_chatwoot_faults(struct fake_chatwoot *f)
{
    return f->faults;
}
