/* decide: Tierone::Decide (queue ai), args [turn_id] — answer the turn's question or hand it
 * to a human (DESIGN.md §2, issue 6). The pure part (prompt, schema, reply check, the
 * retrieval-only answer, the category heuristic) is decide_prompt.c.
 *
 * States, one callback each:
 *   LOAD       turn_load. A finished turn: done. A stored decision (a re-run): STORE again,
 *              which keeps it and enqueues its next step again.
 *              No LLM configured: the retrieval-only decision (decide_prompt_retrieval),
 *              then STORE.
 *   HISTORY    the recent public messages of the conversation: chatwoot_list_messages when
 *              Chatwoot and a user token are configured (a failure there falls back to the
 *              ledger: the history is context, not worth failing the answer for), else the
 *              ledger's earlier turns of the conversation (the customer's words and the
 *              bot's answers), leaving out the turns this one's question already reads.
 *              (Chatwoot's list shows the messages before this turn's, which may repeat
 *              the older messages of the burst; the question says which are new.)
 *   CHAT       one llm_chat call with the inbox's model and temperature and the strict
 *              schema. An unusable reply (usable == 0, or decide_prompt_check_reply
 *              refuses it) asks once more in the same job (llm_chat_again: the same
 *              request); a second one decides escalate "no usable answer from the model
 *              (<why>)".
 *              While the model thinks (seconds; thousands of turns may wait at once) the
 *              job keeps only what reading the reply needs: the question and the ids of
 *              the passages given. The turn, its passages, the history and the prompt are
 *              freed as soon as the request is made (the HTTP client holds its body), and
 *              the JSON schema is built once per process.
 *   STORE      decide_store: the decision is written once (a stored one wins), then
 *              Tierone::Reply (answer) or Tierone::Escalate is enqueued, then job_done.
 *
 * Idempotent: the decision is stored once and a re-run reuses it, so a retry never asks the
 * model again after a decision exists and never changes its mind; enqueueing the next step
 * twice is tolerated by that step (it finds its own effects).
 * Failures: PostgreSQL, Redis and retryable LLM errors go to job_done unchanged (Sidekiq's
 * retry), except on the job's last attempt, when the fail-safe escalates the turn
 * ("assistant unavailable: <error>") instead. A permanent LLM error (bad key, quota, context
 * length, a request the client refuses) takes the fail-safe at once: retrying cannot help
 * and the customer must not wait. */
#include "decide.h"

#include "chatwoot.h"
#include "decide_prompt.h"
#include "llm.h"
#include "log.h"
#include "pg.h"
#include "pipeline.h"
#include "turn.h"
#include "xalloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The stored decision wins: coalesce keeps it, and under a concurrent store the row lock
 * makes the second UPDATE re-read the first one's decision. */
static const char DECIDE_STORE_SQL[] =
    "UPDATE turns SET decision = coalesce(decision, $2::jsonb) WHERE id = $1"
    " RETURNING decision::text";

/* The conversation's earlier turns, newest first, up to the last one that ended (answered,
 * escalated, dropped): the later ones are this turn's burst, which its question reads. */
static const char DECIDE_LEDGER_SQL[] =
    "SELECT content, decision->>'action', decision->>'answer', state FROM turns"
    " WHERE account_id = $1 AND conversation_id = $2"
    " AND message_id <= (SELECT coalesce(max(message_id), 0) FROM turns"
    "   WHERE account_id = $1 AND conversation_id = $2 AND message_id < $3"
    "   AND state IN ('answered', 'escalated', 'dropped'))"
    " ORDER BY message_id DESC LIMIT 10";

/* ---- decide_store / the fail-safe (shared with retrieve.c) --------------------------------- */

struct decide_store_call {
    struct pipeline *p;
    const char *jid, *klass;
    long long turn_id;
    json_t *wanted;
    pipeline_enqueue_cb cb;
    void *arg;
};

static void decide_on_store(const struct pg_result *r, void *arg)
{
    struct decide_store_call *s = arg;
    struct job_error *err = pg_result_job_error(r, "store decision");
    if (!err && pg_result_nrows(r) == 0)
        err = job_error_new(JOB_ERR_PERMANENT, "Tierone::TurnNotFound", "no turn with id %lld",
                            s->turn_id);
    json_t *stored = NULL;
    if (!err) {
        stored = json_loads(pg_result_value(r, 0, 0), 0, NULL);
        if (!json_is_object(stored))
            err = job_error_new(JOB_ERR_PERMANENT, "Tierone::BadDecision",
                                "turn %lld: the stored decision is not a JSON object", s->turn_id);
    }
    if (err) {
        s->cb(err, s->arg);
        goto out;
    }
    if (!json_equal(stored, s->wanted))
        log_job(LOG_INFO, s->jid, s->klass,
                "turn %lld: a decision was stored before (%s); using it", s->turn_id,
                json_string_value(json_object_get(stored, "reason")));
    const char *next = decide_is_answer(stored) ? PIPELINE_REPLY : PIPELINE_ESCALATE;
    if (pipeline_enqueue(s->p, next, s->turn_id, 0, s->cb, s->arg) != 0)
        s->cb(job_error_new(JOB_ERR_PERMANENT, "Tierone::Pipeline", "cannot enqueue %s", next),
              s->arg);
out:
    json_decref(stored);
    json_decref(s->wanted);
    free(s);
}

int decide_store(struct pipeline *p, const char *jid, const char *klass, long long turn_id,
                 const json_t *decision, pipeline_enqueue_cb cb, void *arg)
{
    char idtext[32];
    snprintf(idtext, sizeof idtext, "%lld", turn_id);
    char *text = json_dumps(decision, JSON_COMPACT | JSON_PRESERVE_ORDER);
    const char *params[] = {idtext, text};
    struct decide_store_call *s = xcalloc(1, sizeof *s);
    *s = (struct decide_store_call){p, jid, klass, turn_id, json_deep_copy(decision), cb, arg};
    int rc = pg_query(p->pg, DECIDE_STORE_SQL, 2, params, decide_on_store, s);
    free(text);
    if (rc != 0) {
        json_decref(s->wanted);
        free(s);
    }
    return rc;
}

/* One fail-safe in flight: the error it stands for, kept in case it cannot be stored. */
struct decide_failsafe_call {
    struct job_error *err;
    const char *jid, *klass;
    long long turn_id;
    pipeline_enqueue_cb cb;
    void *arg;
};

static void decide_on_failsafe(struct job_error *err, void *arg)
{
    struct decide_failsafe_call *f = arg;
    struct job_error *result = NULL;
    if (err) { /* the fail-safe could not run either: the job fails with its own error */
        log_job(LOG_WARN, f->jid, f->klass, "turn %lld: fail-safe failed: %s", f->turn_id,
                err->error_message);
        job_error_free(err);
        result = f->err;
    } else {
        job_error_free(f->err);
    }
    f->cb(result, f->arg);
    free(f);
}

struct job_error *decide_fail(struct pipeline *p, const struct job *j, long long turn_id,
                              struct job_error *err, int force, pipeline_enqueue_cb cb, void *arg)
{
    int due = (err->kind == JOB_ERR_RETRY || err->kind == JOB_ERR_RETRY_AT) &&
              pipeline_last_attempt(p, j);
    if (!force && !due)
        return err;
    json_t *d = decide_prompt_failsafe(err->error_message);
    log_job(LOG_WARN, j->jid, j->klass, "turn %lld: fail-safe escalation: %s", turn_id,
            json_string_value(json_object_get(d, "reason")));
    struct decide_failsafe_call *f = xcalloc(1, sizeof *f);
    *f = (struct decide_failsafe_call){err, j->jid, j->klass, turn_id, cb, arg};
    int rc = decide_store(p, j->jid, j->klass, turn_id, d, decide_on_failsafe, f);
    json_decref(d);
    if (rc != 0) {
        free(f);
        return err;
    }
    return NULL;
}

/* ---- the job ---------------------------------------------------------------------------- */

#define DECIDE_ATTEMPTS 2 /* LLM calls per job: one more after an unusable reply */

struct decide {
    struct job_ctx *ctx;
    struct pipeline *p;
    const char *jid;
    long long id;
    char ids[3][32]; /* account, conversation, message as SQL parameters */
    struct turn *t;  /* until the prompt is built (NULL after) */
    const struct inbox_settings *inbox;
    char *question;   /* the turn's question (or content), own copy */
    json_t *passages; /* new reference (the turn's, or an empty array); once the prompt is
                         built, only their ids (decide_prompt_passage_ids) */
    json_t *history;  /* until the prompt is built */
    int attempts;
};

/* The schema of every Decide call: built on first use (decide_prompt_schema), kept for the
 * process's life. The worker's loop is one thread. */
static json_t *decide_schema_shared;

static json_t *decide_schema(void)
{
    if (!decide_schema_shared)
        decide_schema_shared = decide_prompt_schema();
    return decide_schema_shared;
}

static void decide_done(struct decide *d, struct job_error *err)
{
    struct job_ctx *ctx = d->ctx;
    job_ctx_set_state(ctx, NULL);
    turn_free(d->t);
    free(d->question);
    json_decref(d->passages);
    json_decref(d->history);
    free(d);
    job_done(ctx, err);
}

static void decide_on_failed(struct job_error *err, void *arg)
{
    decide_done(arg, err);
}

/* A step failed with err: the fail-safe when it is due (or at once with force), else the
 * error as it is. */
static void decide_step_failed(struct decide *d, int force, struct job_error *err)
{
    err = decide_fail(d->p, job_ctx_job(d->ctx), d->id, err, force, decide_on_failed, d);
    if (err)
        decide_done(d, err);
}

/* ---- STORE ------------------------------------------------------------------------------ */

static void decide_on_stored(struct job_error *err, void *arg)
{
    struct decide *d = arg;
    if (err)
        decide_step_failed(d, 0, err);
    else
        decide_done(d, NULL);
}

static void decide_store_decision(struct decide *d, json_t *decision)
{
    log_job(LOG_INFO, d->jid, PIPELINE_DECIDE, "turn %lld: %s (by %s, category %s): %s", d->id,
            json_string_value(json_object_get(decision, "action")),
            json_string_value(json_object_get(decision, "by")),
            json_string_value(json_object_get(decision, "category")),
            json_string_value(json_object_get(decision, "reason")));
    int rc = decide_store(d->p, d->jid, PIPELINE_DECIDE, d->id, decision, decide_on_stored, d);
    json_decref(decision);
    if (rc != 0)
        decide_done(d, pg_pool_closing_error("store decision"));
}

/* ---- CHAT ------------------------------------------------------------------------------- */

static void decide_on_chat(struct job_error *err, const struct llm_chat_result *res, void *arg);

/* The LLM request could not be made: a permanent failure (the fail-safe at once). */
static void decide_refused(struct decide *d)
{
    decide_step_failed(d, 1,
                       job_error_new(JOB_ERR_PERMANENT, "Tierone::LLM::Refused",
                                     "the LLM request could not be made (no model?)"));
}

/* The reply res could not be used (why): ask again (the same request), or give up and
 * escalate. */
static void decide_unusable(struct decide *d, const struct llm_chat_result *res, const char *why,
                            const char *model)
{
    if (d->attempts < DECIDE_ATTEMPTS) {
        log_job(LOG_INFO, d->jid, PIPELINE_DECIDE, "turn %lld: unusable reply (%s); asking again",
                d->id, why);
        d->attempts++;
        if (llm_chat_again(res, d->jid, decide_on_chat, d) != 0)
            decide_refused(d);
        return;
    }
    decide_store_decision(d, decide_prompt_unusable(d->question, why, model));
}

static void decide_on_chat(struct job_error *err, const struct llm_chat_result *res, void *arg)
{
    struct decide *d = arg;
    if (err) { /* a permanent LLM error (bad key, quota) will not mend: hand off now */
        decide_step_failed(d, err->kind == JOB_ERR_PERMANENT, err);
        return;
    }
    const char *model = res->model ? res->model : d->inbox->model;
    if (!res->usable) {
        char why[256];
        snprintf(why, sizeof why, "%s",
                 res->why_text && *res->why_text ? res->why_text : llm_unusable_name(res->why));
        decide_unusable(d, res, why, model);
        return;
    }
    char why[256] = "";
    json_t *decision = decide_prompt_check_reply(res->json, d->passages, why, sizeof why);
    if (!decision) {
        decide_unusable(d, res, why, model);
        return;
    }
    if (model)
        json_object_set_new(decision, "model", json_string(model));
    decide_store_decision(d, decision);
}

/* Build the prompt, let go of everything only it needed, ask the model. */
static void decide_ask(struct decide *d)
{
    struct decide_input in = {.prompt = d->inbox->prompt,
                              .passages = d->passages,
                              .contact = d->t->contact,
                              .history = d->history,
                              .question = d->question};
    struct decide_messages msgs;
    decide_prompt_messages(&in, &msgs);
    json_t *ids = decide_prompt_passage_ids(d->passages);
    json_decref(d->passages);
    d->passages = ids;
    json_decref(d->history);
    d->history = NULL;
    turn_free(d->t);
    d->t = NULL;

    d->attempts++;
    struct llm_chat_request req = {.messages = msgs.msg,
                                   .nmessages = msgs.n,
                                   .schema = decide_schema(),
                                   .schema_name = DECIDE_SCHEMA_NAME,
                                   .want_json = 1,
                                   .model = d->inbox->model,
                                   .has_temperature = 1,
                                   .temperature = d->inbox->temperature};
    int rc = llm_chat(d->p->llm, d->jid, &req, decide_on_chat, d);
    decide_messages_free(&msgs); /* llm_chat copied them into the request */
    if (rc != 0)
        decide_refused(d);
}

/* ---- HISTORY ---------------------------------------------------------------------------- */

static void decide_on_ledger(const struct pg_result *r, void *arg)
{
    struct decide *d = arg;
    struct job_error *err = pg_result_job_error(r, "read earlier turns");
    if (err) {
        decide_step_failed(d, 0, err);
        return;
    }
    d->history = json_array();
    for (int i = pg_result_nrows(r) - 1; i >= 0; i--) {
        decide_prompt_history_add(d->history, "customer", pg_result_value(r, i, 0));
        const char *action = pg_result_value(r, i, 1);
        const char *state = pg_result_value(r, i, 3);
        if (action && !strcmp(action, "answer") && state && !strcmp(state, "answered"))
            decide_prompt_history_add(d->history, "bot", pg_result_value(r, i, 2));
    }
    decide_ask(d);
}

static void decide_ledger(struct decide *d)
{
    const char *params[] = {d->ids[0], d->ids[1], d->ids[2]};
    if (pg_query(d->p->pg, DECIDE_LEDGER_SQL, 3, params, decide_on_ledger, d) != 0)
        decide_done(d, pg_pool_closing_error("read earlier turns"));
}

static void decide_on_messages(struct job_error *err, json_t *payload, void *arg)
{
    struct decide *d = arg;
    if (err) {
        log_job(LOG_INFO, d->jid, PIPELINE_DECIDE,
                "turn %lld: recent messages unavailable (%s); using the ledger", d->id,
                err->error_message);
        job_error_free(err);
        decide_ledger(d);
        return;
    }
    d->history = decide_prompt_history_chatwoot(payload, d->t->message);
    decide_ask(d);
}

static void decide_history(struct decide *d)
{
    const char *user_token = d->p->cfg->chatwoot_user_token;
    if (d->p->chatwoot && user_token && *user_token &&
        chatwoot_list_messages(d->p->chatwoot, d->jid, (long)d->t->account,
                               (long)d->t->conversation, 0, decide_on_messages, d) == 0)
        return;
    decide_ledger(d);
}

/* ---- LOAD ------------------------------------------------------------------------------- */

static void decide_on_turn(struct job_error *err, struct turn *t, void *arg)
{
    struct decide *d = arg;
    if (err) {
        decide_step_failed(d, 0, err);
        return;
    }
    d->t = t;
    if (turn_is_finished(t)) {
        decide_done(d, NULL);
        return;
    }
    if (t->decision) { /* a re-run: keep the decision, enqueue its step again */
        if (decide_store(d->p, d->jid, PIPELINE_DECIDE, d->id, t->decision, decide_on_stored, d) !=
            0)
            decide_done(d, pg_pool_closing_error("store decision"));
        return;
    }
    d->inbox = inbox_config_get(d->p->inboxes, t->inbox);
    d->question = xstrdup(t->question ? t->question : t->content);
    d->passages = json_is_array(t->passages) ? json_incref(t->passages) : json_array();
    if (!d->p->llm) {
        decide_store_decision(
            d, decide_prompt_retrieval(d->question, d->passages, d->inbox->score_threshold));
        return;
    }
    snprintf(d->ids[0], sizeof d->ids[0], "%lld", t->account);
    snprintf(d->ids[1], sizeof d->ids[1], "%lld", t->conversation);
    snprintf(d->ids[2], sizeof d->ids[2], "%lld", t->message);
    decide_history(d);
}

static void decide_perform(struct job_ctx *ctx)
{
    long long id = pipeline_turn_arg(ctx, PIPELINE_DECIDE);
    if (id < 0)
        return;
    struct decide *d = xcalloc(1, sizeof *d);
    d->ctx = ctx;
    d->p = pipeline_of(ctx);
    d->jid = job_ctx_job(ctx)->jid;
    d->id = id;
    job_ctx_set_state(ctx, d);
    if (turn_load(d->p->pg, id, TURN_WITH_PASSAGES, decide_on_turn, d) != 0)
        decide_done(d, pg_pool_closing_error("load turn"));
}

const struct job_type decide_type = {PIPELINE_DECIDE, decide_perform, NULL};
