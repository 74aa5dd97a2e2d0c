/* chatwoot_post: one turn message to Chatwoot, at most once (see chatwoot_post.h).
 *
 * States: CLAIM (effect_claim) -> [LIST (look for the marker, page by page)] -> [CREATE
 * (post)] -> COMPLETE (effect_complete, ending the turn too with m->finish_turn; an effect
 * sent before or a shadow needs no completion, and only turn_finish runs) -> the caller's
 * callback. */
#include "chatwoot_post.h"
#include "chatwoot.h"
#include "effect.h"
#include "log.h"
#include "pg.h"
#include "pipeline.h"
#include "turn.h"
#include "xalloc.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

/* Pages of 100 messages read while looking for a marker; Chatwoot refuses more than 200
 * messages a minute in a conversation, so 1000 covers any realistic retry window. */
#define POST_MAX_PAGES 10

struct post {
    struct pipeline *p;
    long long turn_id, account, conversation, after;
    char *kind, *content, *marker_key, *marker_value, *jid, *klass;
    char *finish_turn; /* NULL or the turn's end state (chatwoot_post.h) */
    int private_note;
    int pages;
    enum chatwoot_post_outcome outcome;
    long long message_id;
    chatwoot_post_cb cb;
    void *arg;
};

static void post_create(struct post *s);

static void post_free(struct post *s)
{
    free(s->kind);
    free(s->content);
    free(s->marker_key);
    free(s->marker_value);
    free(s->jid);
    free(s->klass);
    free(s->finish_turn);
    free(s);
}

/* Run the caller's callback once and free the state. */
static void post_finish(struct post *s, struct job_error *err)
{
    chatwoot_post_cb cb = s->cb;
    void *arg = s->arg;
    enum chatwoot_post_outcome outcome = s->outcome;
    long long id = s->message_id;
    post_free(s);
    cb(err, outcome, id, arg);
}

static struct job_error *post_not_configured(void)
{
    return job_error_new(JOB_ERR_PERMANENT, "Tierone::Chatwoot::NotConfigured",
                         "Chatwoot is not configured (CHATWOOT_BASE_URL) and the inbox is live");
}

static struct job_error *post_client_refused(struct post *s, const char *what)
{
    return job_error_new(JOB_ERR_PERMANENT, "Tierone::Chatwoot::Refused", "%s: %s", what,
                         chatwoot_last_error(s->p->chatwoot));
}

static void post_on_completed(struct job_error *err, void *arg)
{
    post_finish(arg, err);
}

/* Nothing to complete (the effect was sent before, or is a shadow): end the turn when asked,
 * then the caller's callback. */
static void post_settled(struct post *s)
{
    if (!s->finish_turn) {
        post_finish(s, NULL);
        return;
    }
    if (turn_finish(s->p->pg, s->turn_id, s->finish_turn, NULL, post_on_completed, s) != 0)
        post_finish(s, pg_pool_closing_error("finish turn"));
}

/* Record the outcome on the effect (result: what the step knows of the message). */
static void post_complete(struct post *s, json_t *result)
{
    if (effect_complete(s->p->pg, s->turn_id, s->kind, result, s->finish_turn, NULL,
                        post_on_completed, s) != 0)
        post_finish(s, pg_pool_closing_error("complete effect"));
    json_decref(result);
}

static json_t *post_attrs(const struct post *s)
{
    return json_pack("{s:s}", s->marker_key, s->marker_value);
}

/* 1 when message m carries this post's marker (content_attributes an object, or the JSON
 * text of one). */
static int post_has_marker(const struct post *s, json_t *m)
{
    json_t *attrs = json_object_get(m, "content_attributes");
    json_t *parsed = NULL;
    if (json_is_string(attrs))
        attrs = parsed = json_loads(json_string_value(attrs), 0, NULL);
    json_t *v = json_object_get(attrs, s->marker_key);
    int found = json_is_string(v) && strcmp(json_string_value(v), s->marker_value) == 0;
    json_decref(parsed);
    return found;
}

static void post_list(struct post *s);

static void post_on_list(struct job_error *err, json_t *result, void *arg)
{
    struct post *s = arg;
    if (err) {
        post_finish(s, err);
        return;
    }
    size_t i;
    json_t *m;
    json_array_foreach(result, i, m)
    {
        if (post_has_marker(s, m)) {
            s->outcome = CHATWOOT_POST_FOUND;
            s->message_id = json_integer_value(json_object_get(m, "id"));
            log_job(LOG_INFO, s->jid, s->klass,
                    "%s: found message %lld from an earlier attempt, not posting again", s->kind,
                    s->message_id);
            post_complete(
                s, json_pack("{s:I, s:b}", "message_id", (json_int_t)s->message_id, "found", 1));
            return;
        }
    }
    size_t n = json_array_size(result);
    if (n >= 100 && s->pages < POST_MAX_PAGES) {
        json_int_t last = json_integer_value(json_object_get(json_array_get(result, n - 1), "id"));
        if (last > s->after) {
            s->after = last;
            post_list(s);
            return;
        }
    }
    post_create(s);
}

static void post_list(struct post *s)
{
    s->pages++;
    if (chatwoot_list_messages(s->p->chatwoot, s->jid, (long)s->account, (long)s->conversation,
                               (long)s->after, post_on_list, s) != 0)
        post_finish(s, post_client_refused(s, "list messages"));
}

/* PENDING: an earlier attempt may have posted. Look for its marker when we can. */
static void post_reconcile(struct post *s)
{
    if (!s->p->chatwoot) {
        post_finish(s, post_not_configured());
        return;
    }
    const char *user = s->p->cfg ? s->p->cfg->chatwoot_user_token : NULL;
    if (!user || !*user) {
        log_job(LOG_WARN, s->jid, s->klass,
                "%s: an earlier attempt's outcome is unknown and without CHATWOOT_USER_TOKEN "
                "its marker cannot be looked for; not posting again (the turn ledger guards)",
                s->kind);
        s->outcome = CHATWOOT_POST_UNKNOWN;
        post_complete(s, json_pack("{s:b}", "unknown", 1));
        return;
    }
    post_list(s);
}

static void post_on_created(struct job_error *err, json_t *result, void *arg)
{
    struct post *s = arg;
    if (err) {
        post_finish(s, err);
        return;
    }
    s->outcome = CHATWOOT_POST_SENT;
    s->message_id = json_integer_value(json_object_get(result, "id"));
    post_complete(s, json_pack("{s:I}", "message_id", (json_int_t)s->message_id));
}

static void post_create(struct post *s)
{
    if (!s->p->chatwoot) {
        post_finish(s, post_not_configured());
        return;
    }
    json_t *attrs = post_attrs(s);
    struct chatwoot_message m = {
        .content = s->content, .private_note = s->private_note, .content_attributes = attrs};
    int rc = chatwoot_create_message(s->p->chatwoot, s->jid, (long)s->account,
                                     (long)s->conversation, &m, post_on_created, s);
    json_decref(attrs);
    if (rc != 0)
        post_finish(s, post_client_refused(s, "create message"));
}

static void post_on_claim(struct job_error *err, const struct effect_claim *c, void *arg)
{
    struct post *s = arg;
    if (err) {
        post_finish(s, err);
        return;
    }
    switch (c->status) {
    case EFFECT_NEW:
        post_create(s);
        return;
    case EFFECT_PENDING:
        post_reconcile(s);
        return;
    case EFFECT_SENT:
        s->outcome = CHATWOOT_POST_DONE;
        s->message_id = json_integer_value(json_object_get(c->result, "message_id"));
        post_settled(s);
        return;
    case EFFECT_SHADOW:
        s->outcome = CHATWOOT_POST_SHADOW;
        post_settled(s);
        return;
    case EFFECT_BUSY: /* another run may be posting it right now: look again later */
        post_finish(s, effect_busy_error(c, s->kind));
        return;
    }
    abort();
}

int chatwoot_post_send(struct pipeline *p, const struct chatwoot_post *m, chatwoot_post_cb cb,
                       void *arg)
{
    struct post *s = xcalloc(1, sizeof *s);
    s->p = p;
    s->turn_id = m->turn_id;
    s->account = m->account;
    s->conversation = m->conversation;
    s->after = m->after_message;
    s->kind = xstrdup(m->kind);
    s->content = xstrdup(m->content);
    s->marker_key = xstrdup(m->marker_key);
    s->marker_value = xstrdup(m->marker_value);
    s->jid = m->jid ? xstrdup(m->jid) : NULL;
    s->klass = m->klass ? xstrdup(m->klass) : NULL;
    s->finish_turn = m->finish_turn ? xstrdup(m->finish_turn) : NULL;
    s->private_note = m->private_note;
    s->cb = cb;
    s->arg = arg;
    json_t *payload = json_pack("{s:s, s:b, s:o}", "content", s->content, "private",
                                s->private_note, "content_attributes", post_attrs(s));
    int rc = effect_claim(p->pg, s->turn_id, s->kind, payload, m->shadow, post_on_claim, s);
    json_decref(payload);
    if (rc != 0) {
        post_free(s);
        return -1;
    }
    return 0;
}

const char *chatwoot_post_outcome_name(enum chatwoot_post_outcome o)
{
    switch (o) {
    case CHATWOOT_POST_SENT:
        return "sent";
    case CHATWOOT_POST_FOUND:
        return "found";
    case CHATWOOT_POST_UNKNOWN:
        return "unknown";
    case CHATWOOT_POST_DONE:
        return "done";
    case CHATWOOT_POST_SHADOW:
        return "shadow";
    }
    return "?";
}
