/* escalate: Tierone::Escalate (queue actions), args [turn_id] — hand the conversation to
 * humans, say why, and tell them (DESIGN.md §2, issue 6).
 *
 * The reason and category come from the turn's decision (Decide, the fail-safe, or Reply's
 * cap), else outcome_reason. Steps, in this order, each one effect (effect.h) done once:
 *   NOTE     "escalation_note": a private note, reason first so agents see why, marked
 *            content_attributes.tierone_note = "<key>:escalation" (chatwoot_post.h: a retry
 *            after an unknown outcome looks for the marker before posting again);
 *   LABELS   "labels": inbox->handoff_label merged into the conversation's labels
 *            (chatwoot_add_labels reads, then posts the union; a repeat is free, so a
 *            PENDING claim simply redoes it); skipped when the inbox has no label;
 *   HANDOFF  "handoff": toggle_status open with the bot token (the documented Agent Bot
 *            handoff; an agent-role token would self-assign); idempotent, PENDING redoes;
 *   SLACK    "slack": the inbox's Slack webhook (none: skipped) with the contact, the
 *            reason, the customer's words (slack_escape'd) and an "Open in Chatwoot" link.
 *            Slack has no idempotency key: a PENDING claim posts again (a duplicate notice
 *            beats a lost one);
 *   LINEAR   when the category routes to Linear in this inbox and Linear is configured (or
 *            the inbox is in shadow mode), enqueue Tierone::LinearIssue;
 *   FINISH   turn_finish("escalated", reason) (kept if the turn had ended already), done.
 * A turn that ended otherwise (answered, superseded, dropped) is left alone (done). An
 * escalated one is not skipped: every step above is idempotent, so a re-run just finds its
 * effects done (and a fail-safe that ended the turn first still gets its hand-off).
 * Shadow mode: every claim records instead of sending; Chatwoot may be unconfigured.
 * Failures: the clients' classified errors go to job_done unchanged; a live inbox without
 * Chatwoot is a permanent Tierone::Chatwoot::NotConfigured. */
#include "buf.h"
#include "chatwoot.h"
#include "chatwoot_post.h"
#include "effect.h"
#include "log.h"
#include "pg.h"
#include "pipeline.h"
#include "slack.h"
#include "turn.h"
#include "xalloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum escalate_step { ESC_NOTE, ESC_LABELS, ESC_HANDOFF, ESC_SLACK, ESC_LINEAR, ESC_FINISH };

static const char *const escalate_kinds[] = {"escalation_note", "labels", "handoff",
                                             "slack",           "linear", "finish"};

struct escalate {
    struct job_ctx *ctx;
    struct pipeline *p;
    const char *jid;
    struct turn *t;
    const struct inbox_settings *inbox;
    int shadow;
    enum escalate_step step;
    const char *reason;   /* borrowed from the turn */
    const char *category; /* borrowed from the turn, or "question" */
    char key[96];         /* "<account>:<conversation>:<message>" */
    char *url;            /* the conversation in Chatwoot */
};

static void escalate_run(struct escalate *e);

static void escalate_done(struct escalate *e, struct job_error *err)
{
    struct job_ctx *ctx = e->ctx;
    job_ctx_set_state(ctx, NULL);
    turn_free(e->t);
    free(e->url);
    free(e);
    job_done(ctx, err);
}

static void escalate_next(struct escalate *e)
{
    e->step++;
    escalate_run(e);
}

/* The customer's words: the burst's messages joined when Retrieve stored them. */
static const char *escalate_words(const struct turn *t)
{
    return t->question && *t->question ? t->question : t->content;
}

/* ---- generic effect: claim, send, complete --------------------------------------------- */

static void escalate_send(struct escalate *e);

static void escalate_on_completed(struct job_error *err, void *arg)
{
    struct escalate *e = arg;
    if (err)
        escalate_done(e, err);
    else
        escalate_next(e);
}

/* Completion of a Chatwoot or Slack call (same signature): record the result. */
static void escalate_on_sent(struct job_error *err, json_t *result, void *arg)
{
    struct escalate *e = arg;
    if (err) {
        escalate_done(e, err);
        return;
    }
    json_t *rec = json_pack("{s:O?}", "response", result);
    int rc = effect_complete(e->p->pg, e->t->id, escalate_kinds[e->step], rec, NULL, NULL,
                             escalate_on_completed, e);
    json_decref(rec);
    if (rc != 0)
        escalate_done(e, pg_pool_closing_error("complete effect"));
}

static void escalate_on_claim(struct job_error *err, const struct effect_claim *c, void *arg)
{
    struct escalate *e = arg;
    if (err) {
        escalate_done(e, err);
        return;
    }
    if (c->status == EFFECT_SENT || c->status == EFFECT_SHADOW) {
        escalate_next(e);
        return;
    }
    if (c->status == EFFECT_BUSY) { /* another run may be sending it right now */
        escalate_done(e, effect_busy_error(c, escalate_kinds[e->step]));
        return;
    }
    if (c->status == EFFECT_PENDING)
        log_job(LOG_INFO, e->jid, PIPELINE_ESCALATE,
                "turn %lld: %s had an unknown outcome; doing it again", e->t->id,
                escalate_kinds[e->step]);
    escalate_send(e);
}

/* Claim the current step's effect with payload (a new reference, consumed). */
static void escalate_claim(struct escalate *e, json_t *payload)
{
    int rc = effect_claim(e->p->pg, e->t->id, escalate_kinds[e->step], payload, e->shadow,
                          escalate_on_claim, e);
    json_decref(payload);
    if (rc != 0)
        escalate_done(e, pg_pool_closing_error("claim effect"));
}

/* ---- NOTE ------------------------------------------------------------------------------ */

static void escalate_on_note(struct job_error *err, enum chatwoot_post_outcome outcome,
                             long long message_id, void *arg)
{
    struct escalate *e = arg;
    if (err)
        escalate_done(e, err);
    else
        escalate_next(e);
}

static void escalate_note(struct escalate *e)
{
    char marker[128];
    snprintf(marker, sizeof marker, "%s:escalation", e->key);
    char *content = xasprintf("🤖 Handing over to a human.\nReason: %s\nCategory: %s", e->reason,
                              e->category);
    struct chatwoot_post m = {
        .turn_id = e->t->id,
        .kind = "escalation_note",
        .account = e->t->account,
        .conversation = e->t->conversation,
        .after_message = e->t->message,
        .content = content,
        .private_note = 1,
        .marker_key = "tierone_note",
        .marker_value = marker,
        .shadow = e->shadow,
        .jid = e->jid,
        .klass = PIPELINE_ESCALATE,
    };
    int rc = chatwoot_post_send(e->p, &m, escalate_on_note, e);
    free(content);
    if (rc != 0)
        escalate_done(e, pg_pool_closing_error("claim escalation note"));
}

/* ---- LABELS, HANDOFF, SLACK ------------------------------------------------------------ */

static char *escalate_contact_text(const struct turn *t, int escape)
{
    const char *name = json_string_value(json_object_get(t->contact, "name"));
    const char *email = json_string_value(json_object_get(t->contact, "email"));
    const char *ident = json_string_value(json_object_get(t->contact, "identifier"));
    struct buf b = BUF_INIT;
    if (name && *name)
        buf_puts(&b, name);
    if (email && *email)
        buf_printf(&b, "%s<%s>", b.len ? " " : "", email);
    if (ident && *ident)
        buf_printf(&b, "%s(identifier %s)", b.len ? " " : "", ident);
    if (!b.len)
        buf_puts(&b, "unknown contact");
    char *text = buf_steal(&b);
    if (!escape)
        return text;
    char *esc = slack_escape(text);
    free(text);
    return esc;
}

/* The customer's words as a mrkdwn quote, escaped. */
static char *escalate_quote(const char *words)
{
    char *esc = slack_escape(words ? words : "");
    struct buf b = BUF_INIT;
    buf_puts(&b, "> ");
    for (const char *s = esc; *s; s++) {
        buf_append(&b, s, 1);
        if (*s == '\n' && s[1])
            buf_puts(&b, "> ");
    }
    free(esc);
    return buf_steal(&b);
}

/* The Slack message of the escalation: its texts, built once per use. */
struct escalate_slack {
    char *contact, *reason, *quote, *header, *text, *summary, *context;
    struct slack_link link;
    struct slack_message m;
};

static void escalate_slack_build(struct escalate *e, struct escalate_slack *s)
{
    s->contact = escalate_contact_text(e->t, 1);
    s->reason = slack_escape(e->reason);
    s->quote = escalate_quote(escalate_words(e->t));
    s->header = xasprintf("Conversation %lld needs a human", e->t->conversation);
    s->text = xasprintf("Conversation %lld needs a human: %s", e->t->conversation, s->reason);
    s->summary = xasprintf("*Customer:* %s\n*Reason:* %s\n*Category:* %s\n%s", s->contact,
                           s->reason, e->category, s->quote);
    s->context = xasprintf("tierone · inbox %lld%s%s · turn %s", e->t->inbox,
                           *e->t->channel ? " " : "", e->t->channel, e->key);
    s->link = (struct slack_link){"Open in Chatwoot", e->url};
    s->m = (struct slack_message){.text = s->text,
                                  .header = s->header,
                                  .summary = s->summary,
                                  .context = s->context,
                                  .links = &s->link,
                                  .nlinks = 1};
}

static void escalate_slack_free(struct escalate_slack *s)
{
    free(s->contact);
    free(s->reason);
    free(s->quote);
    free(s->header);
    free(s->text);
    free(s->summary);
    free(s->context);
}

static json_t *escalate_slack_payload(struct escalate *e)
{
    struct escalate_slack s;
    escalate_slack_build(e, &s);
    json_t *payload = slack_message_payload(&s.m);
    escalate_slack_free(&s);
    return payload;
}

static struct job_error *escalate_refused(struct escalate *e, const char *what)
{
    if (!e->p->chatwoot)
        return job_error_new(
            JOB_ERR_PERMANENT, "Tierone::Chatwoot::NotConfigured",
            "Chatwoot is not configured (CHATWOOT_BASE_URL) and the inbox is live");
    return job_error_new(JOB_ERR_PERMANENT, "Tierone::Chatwoot::Refused", "%s: %s", what,
                         chatwoot_last_error(e->p->chatwoot));
}

/* Send the current step's effect (after a NEW or PENDING claim). */
static void escalate_send(struct escalate *e)
{
    long a = (long)e->t->account, c = (long)e->t->conversation;
    int rc;
    switch (e->step) {
    case ESC_LABELS: {
        const char *labels[] = {e->inbox->handoff_label};
        rc = e->p->chatwoot
                 ? chatwoot_add_labels(e->p->chatwoot, e->jid, a, c, labels, 1, escalate_on_sent, e)
                 : -1;
        if (rc != 0)
            escalate_done(e, escalate_refused(e, "add labels"));
        return;
    }
    case ESC_HANDOFF:
        rc = e->p->chatwoot ? chatwoot_toggle_status(e->p->chatwoot, e->jid, a, c, "open", 0,
                                                     escalate_on_sent, e)
                            : -1;
        if (rc != 0)
            escalate_done(e, escalate_refused(e, "toggle status"));
        return;
    case ESC_SLACK: {
        struct slack *client = pipeline_slack(e->p, e->inbox);
        struct escalate_slack s;
        escalate_slack_build(e, &s);
        rc = client ? slack_post(client, e->jid, &s.m, escalate_on_sent, e) : -1;
        escalate_slack_free(&s);
        if (rc != 0)
            escalate_done(e, job_error_new(JOB_ERR_PERMANENT, "Tierone::Slack::Refused",
                                           "the Slack message was refused (see the log)"));
        return;
    }
    default:
        abort();
    }
}

/* ---- LINEAR, FINISH -------------------------------------------------------------------- */

static void escalate_on_enqueued(struct job_error *err, void *arg)
{
    struct escalate *e = arg;
    if (err)
        escalate_done(e, err);
    else
        escalate_next(e);
}

static void escalate_on_finished(struct job_error *err, void *arg)
{
    escalate_done(arg, err);
}

static void escalate_run(struct escalate *e)
{
    switch (e->step) {
    case ESC_NOTE:
        escalate_note(e);
        return;
    case ESC_LABELS:
        if (!e->inbox->handoff_label || !*e->inbox->handoff_label) {
            escalate_next(e);
            return;
        }
        escalate_claim(e, json_pack("{s:[s]}", "labels", e->inbox->handoff_label));
        return;
    case ESC_HANDOFF:
        escalate_claim(e, json_pack("{s:s}", "status", "open"));
        return;
    case ESC_SLACK:
        if (!pipeline_slack(e->p, e->inbox)) {
            escalate_next(e);
            return;
        }
        escalate_claim(e, escalate_slack_payload(e));
        return;
    case ESC_LINEAR:
        if (!inbox_routes_to_linear(e->inbox, e->category) || (!e->p->linear && !e->shadow)) {
            escalate_next(e);
            return;
        }
        if (pipeline_enqueue(e->p, PIPELINE_LINEAR_ISSUE, e->t->id, 0, escalate_on_enqueued, e) !=
            0)
            escalate_done(e, job_error_new(JOB_ERR_PERMANENT, "Tierone::Pipeline",
                                           "cannot enqueue %s", PIPELINE_LINEAR_ISSUE));
        return;
    case ESC_FINISH:
        log_job(LOG_INFO, e->jid, PIPELINE_ESCALATE, "turn %lld escalated: %s", e->t->id,
                e->reason);
        if (turn_finish(e->p->pg, e->t->id, "escalated", e->reason, escalate_on_finished, e) != 0)
            escalate_done(e, pg_pool_closing_error("finish turn"));
        return;
    }
    abort();
}

/* ---- LOAD ------------------------------------------------------------------------------ */

static void escalate_on_turn(struct job_error *err, struct turn *t, void *arg)
{
    struct escalate *e = arg;
    if (err) {
        escalate_done(e, err);
        return;
    }
    e->t = t;
    if (turn_is_finished(t) && strcmp(t->state, "escalated") != 0) {
        escalate_done(e, NULL);
        return;
    }
    turn_key(t, e->key, sizeof e->key);
    e->inbox = inbox_config_get(e->p->inboxes, t->inbox);
    e->shadow = pipeline_shadow(e->p, e->inbox);
    e->reason = json_string_value(json_object_get(t->decision, "reason"));
    if (!e->reason || !*e->reason)
        e->reason = t->outcome_reason && *t->outcome_reason ? t->outcome_reason : "no reason given";
    e->category = json_string_value(json_object_get(t->decision, "category"));
    if (!e->category || !inbox_category_valid(e->category))
        e->category = "question";
    e->url = pipeline_conversation_url(e->p, t->account, t->conversation);
    e->step = ESC_NOTE;
    escalate_run(e);
}

static void escalate_perform(struct job_ctx *ctx)
{
    long long id = pipeline_turn_arg(ctx, PIPELINE_ESCALATE);
    if (id < 0)
        return;
    struct escalate *e = xcalloc(1, sizeof *e);
    e->ctx = ctx;
    e->p = pipeline_of(ctx);
    e->jid = job_ctx_job(ctx)->jid;
    job_ctx_set_state(ctx, e);
    if (turn_load(e->p->pg, id, TURN_BASE, escalate_on_turn, e) != 0)
        escalate_done(e, pg_pool_closing_error("load turn"));
}

const struct job_type escalate_type = {PIPELINE_ESCALATE, escalate_perform, NULL};
