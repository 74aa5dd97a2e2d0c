/* private_note: Tierone::PrivateNote (queue actions), args [turn_id] — link the turn's
 * Linear issue in the conversation with a private note (DESIGN.md §2, issue 6).
 *
 * States:
 *   LOAD    turn_load (the turn is finished already: Escalate ended it).
 *   ISSUE   the linear_issue effect's row (LinearIssue's record of the issue): result
 *           {id, identifier, url}. A shadow row without a result counts as identifier
 *           "(shadow)". No row, or a live row without an identifier, is a permanent
 *           Tierone::PrivateNote::NoIssue (LinearIssue enqueues this job only after
 *           recording the issue).
 *   NOTE    effect "linear_note" through chatwoot_post.h: the private note "Linear issue
 *           <identifier>: <url>" marked content_attributes.tierone_note = "<key>:linear";
 *           a retry after an unknown outcome looks for the marker before posting again.
 * Idempotent like Reply: the effect row (SENT skips) and the marker (PENDING).
 * Failures: PostgreSQL and Chatwoot errors are passed to job_done unchanged. */
#include "chatwoot_post.h"
#include "log.h"
#include "pg.h"
#include "pipeline.h"
#include "turn.h"
#include "xalloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char NOTE_ISSUE_SQL[] =
    "SELECT state, result::text FROM effects WHERE turn_id = $1 AND kind = 'linear_issue'";

struct private_note {
    struct job_ctx *ctx;
    struct pipeline *p;
    const char *jid;
    struct turn *t;
    int shadow;
    char id[32]; /* the turn id as an SQL parameter */
};

static void private_note_done(struct private_note *n, struct job_error *err)
{
    struct job_ctx *ctx = n->ctx;
    job_ctx_set_state(ctx, NULL);
    turn_free(n->t);
    free(n);
    job_done(ctx, err);
}

/* ---- NOTE ------------------------------------------------------------------------------ */

static void private_note_on_posted(struct job_error *err, enum chatwoot_post_outcome outcome,
                                   long long message_id, void *arg)
{
    struct private_note *n = arg;
    if (!err)
        log_job(LOG_INFO, n->jid, PIPELINE_PRIVATE_NOTE, "turn %lld: Linear note %s (message %lld)",
                n->t->id, chatwoot_post_outcome_name(outcome), message_id);
    private_note_done(n, err);
}

static void private_note_post(struct private_note *n, const char *identifier, const char *url)
{
    char marker[128];
    turn_key(n->t, marker, sizeof marker - 8);
    strcat(marker, ":linear");
    char *content = url && *url ? xasprintf("Linear issue %s: %s", identifier, url)
                                : xasprintf("Linear issue %s", identifier);
    struct chatwoot_post m = {
        .turn_id = n->t->id,
        .kind = "linear_note",
        .account = n->t->account,
        .conversation = n->t->conversation,
        .after_message = n->t->message,
        .content = content,
        .private_note = 1,
        .marker_key = "tierone_note",
        .marker_value = marker,
        .shadow = n->shadow,
        .jid = n->jid,
        .klass = PIPELINE_PRIVATE_NOTE,
    };
    int rc = chatwoot_post_send(n->p, &m, private_note_on_posted, n);
    free(content);
    if (rc != 0)
        private_note_done(n, pg_pool_closing_error("claim linear_note"));
}

/* ---- ISSUE ----------------------------------------------------------------------------- */

static void private_note_on_issue(const struct pg_result *res, void *arg)
{
    struct private_note *n = arg;
    struct job_error *err = pg_result_job_error(res, "read linear_issue effect");
    if (err) {
        private_note_done(n, err);
        return;
    }
    const char *state = pg_result_nrows(res) == 1 ? pg_result_value(res, 0, 0) : NULL;
    const char *text = pg_result_nrows(res) == 1 ? pg_result_value(res, 0, 1) : NULL;
    json_t *result = text ? json_loads(text, 0, NULL) : NULL;
    const char *identifier = json_string_value(json_object_get(result, "identifier"));
    const char *url = json_string_value(json_object_get(result, "url"));
    if (!identifier && state && strcmp(state, "shadow") == 0)
        identifier = "(shadow)";
    if (!identifier)
        private_note_done(n, job_error_new(JOB_ERR_PERMANENT, "Tierone::PrivateNote::NoIssue",
                                           "turn %lld has no recorded Linear issue (effect %s)",
                                           n->t->id, state ? state : "missing"));
    else
        private_note_post(n, identifier, url);
    json_decref(result);
}

/* ---- LOAD ------------------------------------------------------------------------------ */

static void private_note_on_turn(struct job_error *err, struct turn *t, void *arg)
{
    struct private_note *n = arg;
    if (err) {
        private_note_done(n, err);
        return;
    }
    n->t = t;
    n->shadow = pipeline_shadow(n->p, inbox_config_get(n->p->inboxes, t->inbox));
    const char *params[] = {n->id};
    if (pg_query(n->p->pg, NOTE_ISSUE_SQL, 1, params, private_note_on_issue, n) != 0)
        private_note_done(n, pg_pool_closing_error("read linear_issue effect"));
}

static void private_note_perform(struct job_ctx *ctx)
{
    long long id = pipeline_turn_arg(ctx, PIPELINE_PRIVATE_NOTE);
    if (id < 0)
        return;
    struct private_note *n = xcalloc(1, sizeof *n);
    n->ctx = ctx;
    n->p = pipeline_of(ctx);
    n->jid = job_ctx_job(ctx)->jid;
    snprintf(n->id, sizeof n->id, "%lld", id);
    job_ctx_set_state(ctx, n);
    if (turn_load(n->p->pg, id, TURN_BASE, private_note_on_turn, n) != 0)
        private_note_done(n, pg_pool_closing_error("load turn"));
}

const struct job_type private_note_type = {PIPELINE_PRIVATE_NOTE, private_note_perform, NULL};
