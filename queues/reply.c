/* reply: Tierone::Reply (queue actions), args [turn_id] — post the turn's answer to the
 * customer, once, and only while the bot may still speak (DESIGN.md §2, issue 6).
 *
 * States, one callback each:
 *   LOAD      the turn, with its conversation's ledger (one statement). A finished turn:
 *             done (a re-run after the end). The decision must say "answer" (else a
 *             permanent ArgumentError), except a decision the reply cap rewrote (by
 *             "reply_cap"), which re-enqueues Escalate (CAPPED).
 *   LEDGER    read from the same result: the conversations row and the conversation's
 *             replies of the last hour. A status the inbox does not serve, or
 *             human_active, drops the turn ("dropped", reason). No row: nothing known,
 *             carry on.
 *             A turn that is no longer the newest of its conversation is "superseded"
 *             (the newer turn's question reads this message too).
 *   FRESH     (live inbox with Chatwoot) GET the conversation: an unserved status, or
 *             meta.assignee_type "User" (a human took it), drops the turn.
 *   CAP       the replies counted in LEDGER. At inbox->max_replies_per_hour: rewrite the
 *             decision to escalate ("reply cap reached (N in the last hour)", by
 *             "reply_cap") and enqueue Escalate instead (CAPPED).
 *   POST      chatwoot_post.h: effect "reply" with the marker
 *             content_attributes.tierone_turn = "<account>:<conversation>:<message>", with
 *             the bot token; a retry after an unknown outcome looks for the marker first.
 *   FINISH    the turn "answered", by chatwoot_post (finish_turn: in the statement that
 *             completes the reply effect, or alone when there was nothing to complete);
 *             then job_done.
 *
 * Idempotent: the effect row says whether the answer went out (SENT: skip), and the marker
 * finds a post whose outcome was lost (PENDING). The checks before the post run again on a
 * re-run, which is right: they guard the send, and a sent reply skips the send anyway.
 * Failures: PostgreSQL and Chatwoot errors come classified from their clients and are
 * passed to job_done unchanged (a 429 retries at the end of Chatwoot's minute). */
#include "chatwoot.h"
#include "chatwoot_post.h"
#include "log.h"
#include "pg.h"
#include "pipeline.h"
#include "turn.h"
#include "xalloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The turn (turn.h's columns) with its conversation's ledger row (NULLs when there is none)
 * and the conversation's replies of the last hour (effects 'reply' pending, sent or shadow,
 * of its other turns), in one round trip. The hour is written `created_at + interval >
 * now()` so that no plan can walk the effects of the last hour by the effects_created
 * index: the statistics of a database in service say few effects are that recent, but
 * during a burst there are thousands, and each reply counted all of them (2 ms a reply at
 * 2,000). Only the conversation's own turns are read, through the turns key and effects
 * (turn_id, kind). */
/* clang-format off */
static const char REPLY_LOAD_SQL[] =
    "SELECT" TURN_COLUMNS("NULL") ", c.status, c.human_active,"
    " (SELECT count(*) FROM effects e JOIN turns o ON o.id = e.turn_id"
    "   WHERE o.account_id = t.account_id AND o.conversation_id = t.conversation_id"
    "   AND e.turn_id <> t.id AND e.kind = 'reply'"
    "   AND e.state IN ('pending', 'sent', 'shadow')"
    "   AND e.created_at + interval '1 hour' > now())"
    " FROM turns t LEFT JOIN conversations c"
    " ON c.account_id = t.account_id AND c.conversation_id = t.conversation_id"
    " WHERE t.id = $1";
/* clang-format on */

static const char REPLY_CAP_DECISION_SQL[] =
    "UPDATE turns SET decision = coalesce(decision, '{}'::jsonb)"
    " || jsonb_build_object('action', 'escalate', 'reason', $2::text, 'by', 'reply_cap')"
    " WHERE id = $1 AND state = 'open'";

struct reply {
    struct job_ctx *ctx;
    struct pipeline *p;
    const char *jid;
    struct turn *t;
    const struct inbox_settings *inbox;
    int shadow;
    char key[96];             /* "<account>:<conversation>:<message>" */
    long long id;             /* the turn's, before it is loaded */
    char idtext[32];          /* the same as an SQL parameter */
    char reason[96];          /* the cap's reason */
    long long recent_replies; /* the conversation's replies of the last hour (LEDGER) */
};

static void reply_done(struct reply *r, struct job_error *err)
{
    struct job_ctx *ctx = r->ctx;
    job_ctx_set_state(ctx, NULL);
    turn_free(r->t);
    free(r);
    job_done(ctx, err);
}

static void reply_on_finished(struct job_error *err, void *arg)
{
    reply_done(arg, err);
}

/* End the turn with state and reason, then the job. */
static void reply_finish_turn(struct reply *r, const char *state, const char *reason)
{
    if (reason)
        log_job(LOG_INFO, r->jid, PIPELINE_REPLY, "turn %lld %s: %s", r->t->id, state, reason);
    if (turn_finish(r->p->pg, r->t->id, state, reason, reply_on_finished, r) != 0)
        reply_done(r, pg_pool_closing_error("finish turn"));
}

/* ---- POST ------------------------------------------------------------------------------ */

static void reply_on_posted(struct job_error *err, enum chatwoot_post_outcome outcome,
                            long long message_id, void *arg)
{
    struct reply *r = arg;
    if (err) {
        reply_done(r, err);
        return;
    }
    log_job(LOG_INFO, r->jid, PIPELINE_REPLY, "turn %lld answered (%s, message %lld)", r->t->id,
            chatwoot_post_outcome_name(outcome), message_id);
    reply_done(r, NULL); /* finish_turn: the turn ended with the post */
}

static void reply_post(struct reply *r)
{
    const char *answer = json_string_value(json_object_get(r->t->decision, "answer"));
    struct chatwoot_post m = {
        .turn_id = r->t->id,
        .kind = "reply",
        .account = r->t->account,
        .conversation = r->t->conversation,
        .after_message = r->t->message,
        .content = answer,
        .private_note = 0,
        .marker_key = "tierone_turn",
        .marker_value = r->key,
        .shadow = r->shadow,
        .finish_turn = "answered",
        .jid = r->jid,
        .klass = PIPELINE_REPLY,
    };
    if (chatwoot_post_send(r->p, &m, reply_on_posted, r) != 0)
        reply_done(r, pg_pool_closing_error("claim reply"));
}

/* ---- CAP ------------------------------------------------------------------------------- */

static void reply_on_escalate_enqueued(struct job_error *err, void *arg)
{
    reply_done(arg, err);
}

static void reply_enqueue_escalate(struct reply *r)
{
    if (pipeline_enqueue(r->p, PIPELINE_ESCALATE, r->t->id, 0, reply_on_escalate_enqueued, r) != 0)
        reply_done(r, job_error_new(JOB_ERR_PERMANENT, "Tierone::Pipeline", "cannot enqueue %s",
                                    PIPELINE_ESCALATE));
}

static void reply_on_cap_decision(const struct pg_result *res, void *arg)
{
    struct reply *r = arg;
    struct job_error *err = pg_result_job_error(res, "rewrite decision (reply cap)");
    if (err) {
        reply_done(r, err);
        return;
    }
    log_job(LOG_WARN, r->jid, PIPELINE_REPLY, "turn %lld: %s; escalating", r->t->id, r->reason);
    reply_enqueue_escalate(r);
}

/* The cap: post, or at max_replies_per_hour escalate instead. */
static void reply_cap(struct reply *r)
{
    long long n = r->recent_replies;
    if (n < r->inbox->max_replies_per_hour) {
        reply_post(r);
        return;
    }
    snprintf(r->reason, sizeof r->reason, "reply cap reached (%lld in the last hour)", n);
    const char *params[] = {r->idtext, r->reason};
    if (pg_query(r->p->pg, REPLY_CAP_DECISION_SQL, 2, params, reply_on_cap_decision, r) != 0)
        reply_done(r, pg_pool_closing_error("rewrite decision"));
}

/* ---- FRESH ----------------------------------------------------------------------------- */

static void reply_on_conversation(struct job_error *err, json_t *conv, void *arg)
{
    struct reply *r = arg;
    if (err) {
        reply_done(r, err);
        return;
    }
    const char *status = json_string_value(json_object_get(conv, "status"));
    const char *assignee_type =
        json_string_value(json_object_get(json_object_get(conv, "meta"), "assignee_type"));
    char reason[128];
    if (!status || !inbox_serves_status(r->inbox, status)) {
        snprintf(reason, sizeof reason, "conversation is %s", status ? status : "(no status)");
        reply_finish_turn(r, "dropped", reason);
    } else if (assignee_type && strcmp(assignee_type, "User") == 0) {
        reply_finish_turn(r, "dropped", "a human took over (assigned to an agent)");
    } else {
        reply_cap(r);
    }
}

static void reply_fresh(struct reply *r)
{
    if (!r->p->chatwoot || r->shadow) {
        reply_cap(r);
        return;
    }
    if (chatwoot_get_conversation(r->p->chatwoot, r->jid, (long)r->t->account,
                                  (long)r->t->conversation, reply_on_conversation, r) != 0)
        reply_done(r, job_error_new(JOB_ERR_PERMANENT, "Tierone::Chatwoot::Refused",
                                    "get conversation: %s", chatwoot_last_error(r->p->chatwoot)));
}

/* ---- LEDGER ---------------------------------------------------------------------------- */

/* The ledger columns of the LOAD statement's result. */
static void reply_ledger(struct reply *r, const struct pg_result *res)
{
    char reason[128];
    const char *status = pg_result_value(res, 0, TURN_NCOLUMNS); /* NULL: no ledger row yet */
    const char *human = pg_result_value(res, 0, TURN_NCOLUMNS + 1);
    const char *replies = pg_result_value(res, 0, TURN_NCOLUMNS + 2);
    r->recent_replies = replies ? strtoll(replies, NULL, 10) : 0;
    if (human && strcmp(human, "t") == 0) {
        reply_finish_turn(r, "dropped", "a human took over");
        return;
    }
    if (status && !inbox_serves_status(r->inbox, status)) {
        snprintf(reason, sizeof reason, "conversation is %s", status);
        reply_finish_turn(r, "dropped", reason);
        return;
    }
    if (!turn_is_newest(r->t)) {
        snprintf(reason, sizeof reason, "a newer message (%lld) arrived", r->t->newest_message);
        reply_finish_turn(r, "superseded", reason);
        return;
    }
    reply_fresh(r);
}

/* ---- LOAD ------------------------------------------------------------------------------ */

static void reply_on_load(const struct pg_result *res, void *arg)
{
    struct reply *r = arg;
    struct job_error *err;
    struct turn *t = turn_from_result(res, r->id, &err);
    if (err) {
        reply_done(r, err);
        return;
    }
    r->t = t;
    if (turn_is_finished(t)) {
        reply_done(r, NULL);
        return;
    }
    turn_key(t, r->key, sizeof r->key);
    r->inbox = inbox_config_get(r->p->inboxes, t->inbox);
    r->shadow = pipeline_shadow(r->p, r->inbox);
    const char *action = json_string_value(json_object_get(t->decision, "action"));
    const char *by = json_string_value(json_object_get(t->decision, "by"));
    const char *answer = json_string_value(json_object_get(t->decision, "answer"));
    if (action && by && !strcmp(action, "escalate") && !strcmp(by, "reply_cap")) {
        reply_enqueue_escalate(r); /* a re-run after the cap rewrote the decision */
        return;
    }
    if (!action || strcmp(action, "answer") != 0 || !answer || !*answer) {
        reply_done(r, job_error_new(JOB_ERR_PERMANENT, "ArgumentError",
                                    "turn %lld has no answer to post (decision action %s)", t->id,
                                    action ? action : "missing"));
        return;
    }
    reply_ledger(r, res);
}

static void reply_perform(struct job_ctx *ctx)
{
    long long id = pipeline_turn_arg(ctx, PIPELINE_REPLY);
    if (id < 0)
        return;
    struct reply *r = xcalloc(1, sizeof *r);
    r->ctx = ctx;
    r->p = pipeline_of(ctx);
    r->jid = job_ctx_job(ctx)->jid;
    r->id = id;
    snprintf(r->idtext, sizeof r->idtext, "%lld", id);
    job_ctx_set_state(ctx, r);
    const char *params[] = {r->idtext};
    if (pg_query(r->p->pg, REPLY_LOAD_SQL, 1, params, reply_on_load, r) != 0)
        reply_done(r, pg_pool_closing_error("load turn"));
}

const struct job_type reply_type = {PIPELINE_REPLY, reply_perform, NULL};
