/* linear_issue: Tierone::LinearIssue (queue linear), args [turn_id] — file the escalated
 * turn as a Linear issue and link the conversation to it (DESIGN.md §2, issue 6).
 *
 * States:
 *   LOAD        turn_load (the turn is normally finished already: Escalate ends it).
 *   ISSUE       effect "linear_issue": issueCreate with the id
 *               linear_uuid_from_key("tierone:<account>:<conversation>:<message>"), team
 *               inbox->linear_team_id (else the client's), a title "<Category>: <first line
 *               of the customer's words, cut to 80 characters>", and a Markdown description
 *               (the customer, the symptom quoted, the inbox and channel, severity, the
 *               conversation link). The effect's result {id, identifier, url} is the turn's
 *               record of the issue (PrivateNote reads it).
 *   ATTACHMENT  effect "linear_attachment": attachmentCreate(issue, "Chatwoot conversation",
 *               conversation URL).
 *   NEXT        enqueue Tierone::PrivateNote, then done.
 * Idempotent: Linear refuses a second issue with the same id and the client then returns
 * the existing one (linear.h), so a NEW, PENDING or even BUSY claim (another run may be
 * sending) simply creates again; an attachment with the same (issue, url) updates the
 * existing one. SENT skips the call.
 * Shadow mode: both effects are recorded with the result {"identifier": "(shadow)"} and
 * PrivateNote is still enqueued (its note is recorded too).
 * Severity: the decision's "severity" (urgent, high, medium, low) when Decide gave one, else
 * medium; it sets the issue's priority (1..4).
 * Failures: the Linear client's classified errors (RATELIMITED -> retry at the reset, auth
 * -> permanent, ...) go to job_done unchanged; no Linear configured for a live inbox is a
 * permanent Tierone::Linear::NotConfigured. */
#include "buf.h"
#include "effect.h"
#include "linear.h"
#include "log.h"
#include "pg.h"
#include "pipeline.h"
#include "turn.h"
#include "xalloc.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Characters of the customer's first line kept in the title. */
#define LINEAR_TITLE_CHARS 80

struct linear_job {
    struct job_ctx *ctx;
    struct pipeline *p;
    const char *jid;
    struct turn *t;
    const struct inbox_settings *inbox;
    int shadow;
    const char *category; /* the decision's (borrowed from the turn), else "bug" */
    char key[96];         /* "<account>:<conversation>:<message>" */
    char uuid[37];        /* the issue id derived from the key */
    char *url;            /* the conversation in Chatwoot */
    char *title, *description;
};

struct linear_severity {
    const char *name;
    const char *label;
    int priority;
};

static const struct linear_severity linear_severities[] = {
    {"urgent", "Urgent", 1}, {"high", "High", 2}, {"medium", "Medium", 3}, {"low", "Low", 4}};

static void linear_job_done(struct linear_job *l, struct job_error *err)
{
    struct job_ctx *ctx = l->ctx;
    job_ctx_set_state(ctx, NULL);
    turn_free(l->t);
    free(l->url);
    free(l->title);
    free(l->description);
    free(l);
    job_done(ctx, err);
}

/* ---- the issue's text ------------------------------------------------------------------ */

static const char *linear_job_words(const struct turn *t)
{
    return t->question && *t->question ? t->question : t->content;
}

static const struct linear_severity *linear_job_severity(const struct turn *t)
{
    const char *s = json_string_value(json_object_get(t->decision, "severity"));
    for (size_t i = 0; s && i < sizeof linear_severities / sizeof *linear_severities; i++)
        if (strcasecmp(s, linear_severities[i].name) == 0)
            return &linear_severities[i];
    return &linear_severities[2];
}

/* "Bug: <first non-empty line, at most LINEAR_TITLE_CHARS characters>" (new string). */
static char *linear_job_title(const struct turn *t, const char *category)
{
    const char *w = linear_job_words(t);
    while (*w && isspace((unsigned char)*w))
        w++;
    size_t len = strcspn(w, "\r\n");
    size_t cut = 0, chars = 0;
    while (cut < len && chars < LINEAR_TITLE_CHARS) {
        cut++; /* past this character's lead byte, then its continuation bytes */
        while (cut < len && ((unsigned char)w[cut] & 0xC0) == 0x80)
            cut++;
        chars++;
    }
    struct buf b = BUF_INIT;
    buf_printf(&b, "%c%s: ", toupper((unsigned char)category[0]), category + 1);
    if (cut)
        buf_append(&b, w, cut);
    else
        buf_puts(&b, "customer report");
    if (cut < len)
        buf_puts(&b, "…");
    return buf_steal(&b);
}

static void linear_job_contact(struct buf *b, const json_t *contact)
{
    const char *fields[][2] = {{"name", "Name"},
                               {"email", "E-mail"},
                               {"identifier", "Identifier"},
                               {"phone_number", "Phone"}};
    int any = 0;
    for (size_t i = 0; i < sizeof fields / sizeof *fields; i++) {
        const char *v = json_string_value(json_object_get(contact, fields[i][0]));
        if (v && *v) {
            buf_printf(b, "- %s: %s\n", fields[i][1], v);
            any = 1;
        }
    }
    if (!any)
        buf_puts(b, "- unknown (the message carried no contact details)\n");
}

static char *linear_job_description(struct linear_job *l, const char *category)
{
    const struct turn *t = l->t;
    struct buf b = BUF_INIT;
    buf_puts(&b, "### Customer\n");
    linear_job_contact(&b, t->contact);
    buf_puts(&b, "\n### Symptom\n> ");
    for (const char *s = linear_job_words(t); *s; s++) {
        buf_append(&b, s, 1);
        if (*s == '\n' && s[1])
            buf_puts(&b, "> ");
    }
    buf_puts(&b, "\n\n### Details\n");
    buf_printf(&b, "- Category: %s\n", category);
    buf_printf(&b, "- Severity: %s\n", linear_job_severity(t)->label);
    buf_printf(&b, "- Inbox: %lld (%s)\n", t->inbox, *t->channel ? t->channel : "channel unknown");
    const char *reason = json_string_value(json_object_get(t->decision, "reason"));
    if (reason && *reason)
        buf_printf(&b, "- Escalated because: %s\n", reason);
    buf_printf(&b, "- Conversation: [Open in Chatwoot](%s)\n", l->url);
    buf_printf(&b, "\n_Filed by tierone for turn %s._\n", l->key);
    return buf_steal(&b);
}

/* ---- NEXT ------------------------------------------------------------------------------ */

static void linear_job_on_enqueued(struct job_error *err, void *arg)
{
    linear_job_done(arg, err);
}

static void linear_job_next(struct linear_job *l)
{
    if (pipeline_enqueue(l->p, PIPELINE_PRIVATE_NOTE, l->t->id, 0, linear_job_on_enqueued, l) != 0)
        linear_job_done(l, job_error_new(JOB_ERR_PERMANENT, "Tierone::Pipeline",
                                         "cannot enqueue %s", PIPELINE_PRIVATE_NOTE));
}

/* ---- ATTACHMENT ------------------------------------------------------------------------ */

static void linear_job_on_attachment_completed(struct job_error *err, void *arg)
{
    struct linear_job *l = arg;
    if (err)
        linear_job_done(l, err);
    else
        linear_job_next(l);
}

static void linear_job_attachment_complete(struct linear_job *l, json_t *result)
{
    int rc = effect_complete(l->p->pg, l->t->id, "linear_attachment", result, NULL, NULL,
                             linear_job_on_attachment_completed, l);
    json_decref(result);
    if (rc != 0)
        linear_job_done(l, pg_pool_closing_error("complete linear_attachment"));
}

static void linear_job_on_attached(struct job_error *err, json_t *result, void *arg)
{
    struct linear_job *l = arg;
    if (err) {
        linear_job_done(l, err);
        return;
    }
    linear_job_attachment_complete(l, json_pack("{s:O?, s:O?}", "id", json_object_get(result, "id"),
                                                "url", json_object_get(result, "url")));
}

static void linear_job_on_attachment_claim(struct job_error *err, const struct effect_claim *c,
                                           void *arg)
{
    struct linear_job *l = arg;
    if (err) {
        linear_job_done(l, err);
        return;
    }
    if (c->status == EFFECT_SENT) {
        linear_job_next(l);
        return;
    }
    if (c->status == EFFECT_SHADOW) {
        linear_job_attachment_complete(l, json_pack("{s:s}", "identifier", "(shadow)"));
        return;
    }
    /* NEW, PENDING or BUSY: attachmentCreate with the same (issue, url) updates the one
     * there is, so running it concurrently or again is harmless. */
    char subtitle[64];
    snprintf(subtitle, sizeof subtitle, "Conversation %lld", l->t->conversation);
    if (linear_attachment_create(l->p->linear, l->jid, l->uuid, "Chatwoot conversation", l->url,
                                 subtitle, linear_job_on_attached, l) != 0)
        linear_job_done(l, job_error_new(JOB_ERR_PERMANENT, "Tierone::Linear::Refused",
                                         "attachmentCreate refused its input (see the log)"));
}

static void linear_job_attachment(struct linear_job *l)
{
    json_t *payload = json_pack("{s:s, s:s, s:s}", "issue_id", l->uuid, "title",
                                "Chatwoot conversation", "url", l->url);
    int rc = effect_claim(l->p->pg, l->t->id, "linear_attachment", payload, l->shadow,
                          linear_job_on_attachment_claim, l);
    json_decref(payload);
    if (rc != 0)
        linear_job_done(l, pg_pool_closing_error("claim linear_attachment"));
}

/* ---- ISSUE ----------------------------------------------------------------------------- */

static void linear_job_on_issue_completed(struct job_error *err, void *arg)
{
    struct linear_job *l = arg;
    if (err)
        linear_job_done(l, err);
    else
        linear_job_attachment(l);
}

static void linear_job_issue_complete(struct linear_job *l, json_t *result)
{
    int rc = effect_complete(l->p->pg, l->t->id, "linear_issue", result, NULL, NULL,
                             linear_job_on_issue_completed, l);
    json_decref(result);
    if (rc != 0)
        linear_job_done(l, pg_pool_closing_error("complete linear_issue"));
}

static void linear_job_on_created(struct job_error *err, json_t *result, void *arg)
{
    struct linear_job *l = arg;
    if (err) {
        linear_job_done(l, err);
        return;
    }
    const char *identifier = json_string_value(json_object_get(result, "identifier"));
    log_job(LOG_INFO, l->jid, PIPELINE_LINEAR_ISSUE, "turn %lld: Linear issue %s%s", l->t->id,
            identifier ? identifier : "?",
            json_is_true(json_object_get(result, "existed")) ? " (filed before)" : "");
    linear_job_issue_complete(
        l, json_pack("{s:O?, s:O?, s:O?}", "id", json_object_get(result, "id"), "identifier",
                     json_object_get(result, "identifier"), "url", json_object_get(result, "url")));
}

static void linear_job_on_issue_claim(struct job_error *err, const struct effect_claim *c,
                                      void *arg)
{
    struct linear_job *l = arg;
    if (err) {
        linear_job_done(l, err);
        return;
    }
    if (c->status == EFFECT_SENT) {
        linear_job_attachment(l);
        return;
    }
    if (c->status == EFFECT_SHADOW) {
        linear_job_issue_complete(l,
                                  json_pack("{s:s, s:s}", "id", l->uuid, "identifier", "(shadow)"));
        return;
    }
    if (!l->p->linear) {
        linear_job_done(l, job_error_new(JOB_ERR_PERMANENT, "Tierone::Linear::NotConfigured",
                                         "Linear is not configured (LINEAR_API_KEY) and the "
                                         "inbox is live"));
        return;
    }
    /* NEW, PENDING, or BUSY (another run may be creating it right now): create anyway;
     * Linear refuses a second issue with the same id and the client returns the first. */
    const char *team =
        l->inbox->linear_team_id && *l->inbox->linear_team_id ? l->inbox->linear_team_id : NULL;
    struct linear_issue_input input = {.id = l->uuid,
                                       .team_id = team,
                                       .title = l->title,
                                       .description = l->description,
                                       .priority = linear_job_severity(l->t)->priority};
    if (linear_issue_create(l->p->linear, l->jid, &input, linear_job_on_created, l) != 0)
        linear_job_done(l, job_error_new(JOB_ERR_PERMANENT, "Tierone::Linear::Refused",
                                         "issueCreate refused its input (see the log)"));
}

static void linear_job_issue(struct linear_job *l)
{
    json_t *payload = json_pack("{s:s, s:s?, s:s, s:s, s:i}", "id", l->uuid, "team_id",
                                l->inbox->linear_team_id, "title", l->title, "description",
                                l->description, "priority", linear_job_severity(l->t)->priority);
    int rc = effect_claim(l->p->pg, l->t->id, "linear_issue", payload, l->shadow,
                          linear_job_on_issue_claim, l);
    json_decref(payload);
    if (rc != 0)
        linear_job_done(l, pg_pool_closing_error("claim linear_issue"));
}

/* ---- LOAD ------------------------------------------------------------------------------ */

static void linear_job_on_turn(struct job_error *err, struct turn *t, void *arg)
{
    struct linear_job *l = arg;
    if (err) {
        linear_job_done(l, err);
        return;
    }
    l->t = t;
    turn_key(t, l->key, sizeof l->key);
    char seed[112];
    snprintf(seed, sizeof seed, "tierone:%s", l->key);
    linear_uuid_from_key(seed, l->uuid);
    l->inbox = inbox_config_get(l->p->inboxes, t->inbox);
    l->shadow = pipeline_shadow(l->p, l->inbox);
    l->url = pipeline_conversation_url(l->p, t->account, t->conversation);
    l->category = json_string_value(json_object_get(t->decision, "category"));
    if (!l->category || !inbox_category_valid(l->category))
        l->category = "bug";
    l->title = linear_job_title(t, l->category);
    l->description = linear_job_description(l, l->category);
    linear_job_issue(l);
}

static void linear_job_perform(struct job_ctx *ctx)
{
    long long id = pipeline_turn_arg(ctx, PIPELINE_LINEAR_ISSUE);
    if (id < 0)
        return;
    struct linear_job *l = xcalloc(1, sizeof *l);
    l->ctx = ctx;
    l->p = pipeline_of(ctx);
    l->jid = job_ctx_job(ctx)->jid;
    job_ctx_set_state(ctx, l);
    if (turn_load(l->p->pg, id, TURN_BASE, linear_job_on_turn, l) != 0)
        linear_job_done(l, pg_pool_closing_error("load turn"));
}

const struct job_type linear_issue_type = {PIPELINE_LINEAR_ISSUE, linear_job_perform, NULL};
