/* chatwoot_event: Tierone::ChatwootEvent (queue events), the first step of the support
 * pipeline (issue 6, DESIGN.md §2). It reads one raw Chatwoot webhook and either records
 * what it says about a conversation, opens a turn and schedules Retrieve, or ignores it.
 *
 * Argument: the object tierone-ingest builds (ingest/shim.h):
 *   [{"body": "<raw webhook>", "delivery": ..., "timestamp": ..., "path": "chatwoot" |
 *     "agent-bot", "received_at": <float seconds>}]
 * Anything else is a permanent ArgumentError. The body is classified by
 * lib/chatwoot_webhook.h (pure); a body it cannot read is a permanent Tierone::BadWebhook.
 *
 * States (one SQL statement each, then at most one enqueue):
 *   STATUS_CHANGE      upsert conversations.status; human_active cleared when the new
 *                      status is pending (the documented "back to the bot") or resolved
 *                      (the cycle ended), set when the same update assigned a user.
 *   HUMAN_REPLY,       upsert conversations with human_active = true and a reason ("human
 *   ASSIGNED_TO_HUMAN  replied", "assigned to Sam"), unless the message is our own post.
 *   INCOMING_MESSAGE   (bot on in the inbox, some text) one statement upserts the
 *                      conversation (inbox, status), reads human_active back, and when the
 *                      conversation is served inserts the turn (ON CONFLICT DO NOTHING);
 *                      then, for a new or an existing turn still 'open', schedules
 *                      Tierone::Retrieve [turn_id] after the inbox's debounce and finishes
 *                      in the enqueue's callback.
 *   anything else      done, with one debug line naming the reason.
 *
 * Idempotent: a status is a fact written the same way by each of its (up to three)
 * deliveries; human_active only moves with the events that move it; the turn is unique per
 * (account, conversation, message), so a repeat delivery finds the existing turn and at
 * most schedules Retrieve again, which Retrieve tolerates (it skips a finished or
 * superseded turn).
 *
 * Failures: PostgreSQL and Redis errors come back classified (pg_result_job_error,
 * pipeline_enqueue) and are passed on unchanged; a turn that a concurrent delivery of the
 * same message is still inserting is a retryable Tierone::ConcurrentDelivery. */
#include "pipeline.h"

#include "chatwoot_webhook.h"
#include "engine.h"
#include "log.h"
#include "pg.h"
#include "xalloc.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Upsert what a conversation event says. $5 is the new human_active (NULL: unchanged),
 * $6 its reason (kept only while human_active is set). */
static const char CHATWOOT_EVENT_CONVERSATION_SQL[] =
    "INSERT INTO conversations AS c"
    " (account_id, conversation_id, inbox_id, status, human_active, human_reason)"
    " VALUES ($1::bigint, $2::bigint, $3::bigint, $4::text, COALESCE($5::boolean, false),"
    "  CASE WHEN $5::boolean THEN $6::text END)"
    " ON CONFLICT (account_id, conversation_id) DO UPDATE SET"
    "  inbox_id = COALESCE(EXCLUDED.inbox_id, c.inbox_id),"
    "  status = COALESCE(EXCLUDED.status, c.status),"
    "  human_active = COALESCE($5::boolean, c.human_active),"
    "  human_reason = CASE WHEN $5::boolean IS NULL THEN c.human_reason"
    "   WHEN $5::boolean THEN $6::text END,"
    "  updated_at = now()";

/* Upsert the conversation of an incoming message and open its turn when the conversation
 * is served ($10: the statuses the inbox serves) and no human took over. The outer SELECT
 * sees turns as they were before the statement, so COALESCE picks the new turn or the one
 * a repeat delivery finds. Columns: human_active, status, turn id, turn state, created. */
static const char CHATWOOT_EVENT_TURN_SQL[] =
    "WITH conv AS ("
    " INSERT INTO conversations AS c (account_id, conversation_id, inbox_id, status)"
    " VALUES ($1::bigint, $2::bigint, $3::bigint, $4::text)"
    " ON CONFLICT (account_id, conversation_id) DO UPDATE SET"
    "  inbox_id = EXCLUDED.inbox_id, status = COALESCE(EXCLUDED.status, c.status),"
    "  updated_at = now()"
    " RETURNING c.human_active, c.status),"
    " opened AS ("
    " INSERT INTO turns"
    "  (account_id, conversation_id, message_id, inbox_id, channel, contact, content,"
    "   received_at, opened_by)"
    " SELECT $1::bigint, $2::bigint, $5::bigint, $3::bigint, $6::text, $7::jsonb, $8::text,"
    "  COALESCE(to_timestamp($9::float8), now()), $11::text"
    " FROM conv WHERE NOT conv.human_active AND conv.status = ANY ($10::text[])"
    " ON CONFLICT (account_id, conversation_id, message_id) DO NOTHING"
    " RETURNING id, state)"
    " SELECT conv.human_active, conv.status, COALESCE(o.id, t.id), COALESCE(o.state, t.state),"
    "  o.id IS NOT NULL OR t.opened_by IS NOT DISTINCT FROM $11::text"
    " FROM conv LEFT JOIN opened o ON true"
    " LEFT JOIN turns t ON t.account_id = $1::bigint AND t.conversation_id = $2::bigint"
    "  AND t.message_id = $5::bigint";

/* One running job. */
struct chatwoot_event {
    struct job_ctx *ctx;
    struct pipeline *p;
    struct chatwoot_webhook hook;
    const struct inbox_settings *inbox; /* INCOMING_MESSAGE */
    double received_at;                 /* args' received_at, 0 when absent */
    long long turn_id;
};

static void chatwoot_event_finish(struct chatwoot_event *ev, struct job_error *err)
{
    struct job_ctx *ctx = ev->ctx;
    chatwoot_webhook_free(&ev->hook);
    free(ev);
    job_ctx_set_state(ctx, NULL);
    job_done(ctx, err);
}

/* Done without acting: one debug line naming why. */
static void chatwoot_event_ignore(struct chatwoot_event *ev, const char *why)
{
    const struct job *j = job_ctx_job(ev->ctx);
    log_job(LOG_DEBUG, j->jid, j->klass, "ignored: %s (%s, account %lld, conversation %lld)", why,
            ev->hook.event ? ev->hook.event : "?", ev->hook.account, ev->hook.conversation);
    chatwoot_event_finish(ev, NULL);
}

static void chatwoot_event_fail_submit(struct chatwoot_event *ev, const char *what)
{
    chatwoot_event_finish(ev, pg_pool_closing_error(what));
}

/* ---- conversation facts ---------------------------------------------------------------- */

static void chatwoot_event_on_recorded(const struct pg_result *r, void *arg)
{
    struct chatwoot_event *ev = arg;
    struct job_error *err = pg_result_job_error(r, "record conversation");
    if (!err) {
        const struct job *j = job_ctx_job(ev->ctx);
        log_job(LOG_DEBUG, j->jid, j->klass, "conversation %lld/%lld: %s (%s)", ev->hook.account,
                ev->hook.conversation, ev->hook.reason,
                ev->hook.status ? ev->hook.status : "status unchanged");
    }
    chatwoot_event_finish(ev, err);
}

/* Upsert the conversation with status (may be NULL) and human ("true", "false" or NULL
 * for unchanged) with reason. */
static void chatwoot_event_record(struct chatwoot_event *ev, const char *status, const char *human,
                                  const char *reason)
{
    char account[24], conversation[24], inbox[24];
    snprintf(account, sizeof account, "%lld", ev->hook.account);
    snprintf(conversation, sizeof conversation, "%lld", ev->hook.conversation);
    snprintf(inbox, sizeof inbox, "%lld", ev->hook.inbox);
    const char *params[] = {account, conversation, ev->hook.inbox ? inbox : NULL,
                            status,  human,        reason};
    if (pg_query(ev->p->pg, CHATWOOT_EVENT_CONVERSATION_SQL, 6, params, chatwoot_event_on_recorded,
                 ev) != 0)
        chatwoot_event_fail_submit(ev, "record conversation");
}

static void chatwoot_event_status_change(struct chatwoot_event *ev)
{
    const char *status = ev->hook.status;
    char *reason = NULL;
    const char *human = NULL;
    if (strcmp(status, "pending") == 0 || strcmp(status, "resolved") == 0) {
        human = "false";
    } else if (ev->hook.assigned_to_human) {
        human = "true";
        reason = xasprintf("assigned to %s", ev->hook.assignee_name);
    }
    chatwoot_event_record(ev, status, human, reason);
    free(reason);
}

static void chatwoot_event_human(struct chatwoot_event *ev)
{
    if (ev->hook.marker) {
        chatwoot_event_ignore(ev, "our own post (tierone marker)");
        return;
    }
    char *reason = ev->hook.kind == CW_HOOK_ASSIGNED_TO_HUMAN
                       ? xasprintf("assigned to %s", ev->hook.assignee_name)
                       : xstrdup(ev->hook.reason);
    chatwoot_event_record(ev, ev->hook.status, "true", reason);
    free(reason);
}

/* ---- incoming message: open a turn ------------------------------------------------------- */

static void chatwoot_event_on_enqueued(struct job_error *err, void *arg)
{
    struct chatwoot_event *ev = arg;
    chatwoot_event_finish(ev, err);
}

static void chatwoot_event_on_turn(const struct pg_result *r, void *arg)
{
    struct chatwoot_event *ev = arg;
    struct job_error *err = pg_result_job_error(r, "open turn");
    if (err) {
        chatwoot_event_finish(ev, err);
        return;
    }
    const char *human = pg_result_value(r, 0, 0);
    const char *status = pg_result_value(r, 0, 1);
    const char *id = pg_result_value(r, 0, 2);
    const char *state = pg_result_value(r, 0, 3);
    const char *created = pg_result_value(r, 0, 4);
    if (human && strcmp(human, "t") == 0) {
        chatwoot_event_ignore(ev, "a human took over the conversation");
        return;
    }
    if (!status || !inbox_serves_status(ev->inbox, status)) {
        chatwoot_event_ignore(ev, "conversation status not served by the bot");
        return;
    }
    if (!id) {
        chatwoot_event_finish(ev, job_error_new(JOB_ERR_RETRY, "Tierone::ConcurrentDelivery",
                                                "message %lld: another delivery is opening its "
                                                "turn",
                                                ev->hook.message));
        return;
    }
    ev->turn_id = strtoll(id, NULL, 10);
    const struct job *j = job_ctx_job(ev->ctx);
    if (!state || strcmp(state, "open") != 0) {
        log_job(LOG_DEBUG, j->jid, j->klass, "turn %lld already %s (repeat delivery)", ev->turn_id,
                state ? state : "?");
        chatwoot_event_finish(ev, NULL);
        return;
    }
    /* "created" is also true when this job opened the turn on an earlier run (it crashed
     * before its Retrieve was queued). Another delivery of the message finds the turn in
     * the hands of the job that opened it: scheduling a second chain would only race it. */
    if (!created || strcmp(created, "t") != 0) {
        log_job(LOG_DEBUG, j->jid, j->klass, "turn %lld is open and scheduled (repeat delivery)",
                ev->turn_id);
        chatwoot_event_finish(ev, NULL);
        return;
    }
    log_job(LOG_DEBUG, j->jid, j->klass,
            "turn %lld %s for conversation %lld/%lld message %lld; Retrieve in %lld ms",
            ev->turn_id, "opened", ev->hook.account, ev->hook.conversation, ev->hook.message,
            ev->inbox->debounce_ms);
    if (pipeline_enqueue(ev->p, PIPELINE_RETRIEVE, ev->turn_id, ev->inbox->debounce_ms,
                         chatwoot_event_on_enqueued, ev) != 0)
        chatwoot_event_finish(ev, job_error_new(JOB_ERR_PERMANENT, "Tierone::EnqueueFailed",
                                                "cannot enqueue %s", PIPELINE_RETRIEVE));
}

/* 1 when s has something besides white space. */
static int chatwoot_event_has_text(const char *s)
{
    for (; s && *s; s++)
        if (!isspace((unsigned char)*s))
            return 1;
    return 0;
}

static void chatwoot_event_incoming(struct chatwoot_event *ev)
{
    const struct chatwoot_webhook *h = &ev->hook;
    ev->inbox = inbox_config_get(ev->p->inboxes, h->inbox);
    if (!ev->inbox->enabled) {
        chatwoot_event_ignore(ev, "the bot is off in this inbox");
        return;
    }
    if (!chatwoot_event_has_text(h->content)) {
        chatwoot_event_ignore(ev, "no text");
        return;
    }
    char account[24], conversation[24], inbox[24], message[24], received[40];
    snprintf(account, sizeof account, "%lld", h->account);
    snprintf(conversation, sizeof conversation, "%lld", h->conversation);
    snprintf(inbox, sizeof inbox, "%lld", h->inbox);
    snprintf(message, sizeof message, "%lld", h->message);
    snprintf(received, sizeof received, "%.6f", ev->received_at);
    char served[32] = "{";
    if (inbox_serves_status(ev->inbox, "pending"))
        strcat(served, "pending");
    if (inbox_serves_status(ev->inbox, "open"))
        strcat(served, served[1] ? ",open" : "open");
    strcat(served, "}");
    char *contact = h->sender ? json_dumps(h->sender, JSON_COMPACT) : NULL;
    const char *params[] = {account,
                            conversation,
                            inbox,
                            h->status,
                            message,
                            h->channel ? h->channel : "",
                            contact ? contact : "{}",
                            h->content,
                            ev->received_at > 0 ? received : NULL,
                            served,
                            job_ctx_job(ev->ctx)->jid};
    int rc = pg_query(ev->p->pg, CHATWOOT_EVENT_TURN_SQL, 11, params, chatwoot_event_on_turn, ev);
    free(contact);
    if (rc != 0)
        chatwoot_event_fail_submit(ev, "open turn");
}

/* ---- perform ---------------------------------------------------------------------------- */

static void chatwoot_event_route(struct chatwoot_event *ev)
{
    switch (ev->hook.kind) {
    case CW_HOOK_INCOMING_MESSAGE:
        chatwoot_event_incoming(ev);
        return;
    case CW_HOOK_STATUS_CHANGE:
        chatwoot_event_status_change(ev);
        return;
    case CW_HOOK_HUMAN_REPLY:
    case CW_HOOK_ASSIGNED_TO_HUMAN:
        chatwoot_event_human(ev);
        return;
    case CW_HOOK_BOT_ECHO:
    case CW_HOOK_PRIVATE_NOTE:
    case CW_HOOK_IGNORED:
        chatwoot_event_ignore(ev, ev->hook.reason);
        return;
    }
    abort();
}

static void chatwoot_event_perform(struct job_ctx *ctx)
{
    const struct job *j = job_ctx_job(ctx);
    json_t *arg = json_array_size(j->args) == 1 ? json_array_get(j->args, 0) : NULL;
    json_t *body = json_object_get(arg, "body");
    json_t *path = json_object_get(arg, "path");
    if (!json_is_object(arg) || !json_is_string(body) || (path && !json_is_string(path))) {
        job_done(ctx, job_error_new(JOB_ERR_PERMANENT, "ArgumentError",
                                    "%s expects args [{\"body\": \"<raw webhook>\", \"path\": "
                                    "\"chatwoot\"|\"agent-bot\", ...}]",
                                    PIPELINE_EVENT));
        return;
    }
    struct chatwoot_event *ev = xcalloc(1, sizeof *ev);
    ev->ctx = ctx;
    ev->p = pipeline_of(ctx);
    ev->received_at = json_number_value(json_object_get(arg, "received_at"));
    job_ctx_set_state(ctx, ev);
    char err[256];
    if (chatwoot_webhook_parse(json_string_value(body), json_string_length(body),
                               json_string_value(path), &ev->hook, err, sizeof err) != 0) {
        const char *delivery = json_string_value(json_object_get(arg, "delivery"));
        chatwoot_event_finish(ev,
                              job_error_new(JOB_ERR_PERMANENT, "Tierone::BadWebhook",
                                            "%s (delivery %s)", err, delivery ? delivery : "none"));
        return;
    }
    chatwoot_event_route(ev);
}

const struct job_type chatwoot_event_type = {PIPELINE_EVENT, chatwoot_event_perform, NULL};
