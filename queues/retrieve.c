/* retrieve: Tierone::Retrieve (queue ai), args [turn_id] — the knowledge base passages for
 * the turn's question (DESIGN.md §2, issue 6).
 *
 * States, one callback each:
 *   LOAD     the turn, and BURST with it (one statement). A finished turn: done. A turn
 *            that is no longer the newest of its conversation: turn_finish "superseded" ("a
 *            newer message of the burst is answered instead"; the newer turn's question
 *            reads this one), then done; the statement applied no burst to either.
 *   BURST    the question is the burst's messages joined with newlines,
 *            oldest first (this conversation's turns up to this one, after the newest turn
 *            that ended answered, escalated or dropped, that are open or were superseded),
 *            and the older open turns of the burst become "superseded" ("answered with turn
 *            <id>"). Superseded turns count because nobody answered them: they were
 *            superseded by this turn earlier (a retry), by their own Retrieve (not the
 *            newest), or by a turn that was itself superseded before it answered.
 *   SEARCH   kb_search on the inbox's knowledge base, k = the inbox's passages (skipped for
 *            an empty question: no passages).
 *   STORE    question and passages ([{id, score, source, title, heading_path, content}],
 *            best first) on the turn.
 *   ENQUEUE  Tierone::Decide; job_done in its callback.
 *
 * Idempotent: a re-run recomputes and overwrites its own columns; the burst statement counts
 * the turns this turn superseded earlier as part of its burst, so a retry asks the same
 * question. Enqueueing Decide twice is harmless (Decide stores one decision).
 * Failures: PostgreSQL and Redis errors come classified and go to job_done unchanged; a
 * failed search is retryable (Tierone::KB::SearchFailed). On the job's last attempt a
 * retryable failure takes the fail-safe instead (decide.h): the turn is escalated with
 * "assistant unavailable: <error>". */
#include "buf.h"
#include "decide.h"
#include "kb_search.h"
#include "log.h"
#include "pg.h"
#include "pipeline.h"
#include "turn.h"
#include "xalloc.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Longest question sent to the search, in bytes (a long e-mail adds nothing but cost). */
#define RETRIEVE_SEARCH_MAX 4000

/* LOAD and BURST in one round trip. $1 the turn id, $2 "answered with turn <id>". The turn
 * (turn.h's columns, read once as `cur`), then the burst's question and how many older
 * turns it superseded. The burst is only read and applied when the turn is open and still
 * the newest of its conversation (`go`); otherwise the last two columns are NULL and 0 and
 * nothing changed. Every sub-statement sees the same snapshot, so `burst` reads the states
 * from before `older` changes them. */
/* clang-format off */
static const char RETRIEVE_LOAD_SQL[] =
    "WITH cur AS (SELECT" TURN_COLUMNS("NULL") " FROM turns t WHERE t.id = $1),"
    " go AS (SELECT account_id, conversation_id, message_id FROM cur"
    "   WHERE state = 'open' AND message_id >= newest_message),"
    " last_end AS (SELECT coalesce(max(t.message_id), 0) AS m FROM turns t, go"
    "   WHERE t.account_id = go.account_id AND t.conversation_id = go.conversation_id"
    "   AND t.state IN ('answered', 'escalated', 'dropped')),"
    " burst AS (SELECT t.id, t.message_id, t.content FROM turns t, go, last_end"
    "   WHERE t.account_id = go.account_id AND t.conversation_id = go.conversation_id"
    "   AND t.message_id <= go.message_id AND t.message_id > last_end.m"
    "   AND t.state IN ('open', 'superseded')),"
    " older AS (UPDATE turns SET state = 'superseded', outcome_reason = $2, finished_at = now()"
    "   WHERE id IN (SELECT id FROM burst) AND id <> $1 AND state = 'open' RETURNING id)"
    " SELECT cur.*,"
    " (SELECT string_agg(content, E'\\n' ORDER BY message_id) FROM burst),"
    " (SELECT count(*) FROM older)"
    " FROM cur";
/* clang-format on */

static const char RETRIEVE_STORE_SQL[] =
    "UPDATE turns SET question = $2, passages = $3::jsonb WHERE id = $1";

struct retrieve {
    struct job_ctx *ctx;
    struct pipeline *p;
    const char *jid;
    long long id;
    char idtext[32];
    char superseded_by[48]; /* "answered with turn <id>" */
    struct turn *t;
    const struct inbox_settings *inbox;
    char *question;
    struct buf passages; /* the JSON array STORE writes, built straight from the hits */
};

static void retrieve_done(struct retrieve *r, struct job_error *err)
{
    struct job_ctx *ctx = r->ctx;
    job_ctx_set_state(ctx, NULL);
    turn_free(r->t);
    free(r->question);
    buf_free(&r->passages);
    free(r);
    job_done(ctx, err);
}

static void retrieve_on_failed(struct job_error *err, void *arg)
{
    retrieve_done(arg, err);
}

/* A step failed with err: the fail-safe on the last attempt, else the error as it is. */
static void retrieve_fail(struct retrieve *r, struct job_error *err)
{
    err = decide_fail(r->p, job_ctx_job(r->ctx), r->id, err, 0, retrieve_on_failed, r);
    if (err)
        retrieve_done(r, err);
}

/* ---- ENQUEUE ---------------------------------------------------------------------------- */

static void retrieve_on_enqueued(struct job_error *err, void *arg)
{
    struct retrieve *r = arg;
    if (err)
        retrieve_fail(r, err);
    else
        retrieve_done(r, NULL);
}

/* ---- STORE ------------------------------------------------------------------------------ */

static void retrieve_on_stored(const struct pg_result *res, void *arg)
{
    struct retrieve *r = arg;
    struct job_error *err = pg_result_job_error(res, "store passages");
    if (err) {
        retrieve_fail(r, err);
        return;
    }
    if (pipeline_enqueue(r->p, PIPELINE_DECIDE, r->id, 0, retrieve_on_enqueued, r) != 0)
        retrieve_done(r, job_error_new(JOB_ERR_PERMANENT, "Tierone::Pipeline", "cannot enqueue %s",
                                       PIPELINE_DECIDE));
}

static void retrieve_store(struct retrieve *r)
{
    const char *params[] = {r->idtext, r->question, r->passages.len ? r->passages.data : "[]"};
    if (pg_query(r->p->pg, RETRIEVE_STORE_SQL, 3, params, retrieve_on_stored, r) != 0)
        retrieve_done(r, pg_pool_closing_error("store passages"));
}

/* ---- SEARCH ----------------------------------------------------------------------------- */

static void retrieve_on_search(const char *error, const struct kb_hit *hits, size_t n, void *arg)
{
    struct retrieve *r = arg;
    if (error) {
        retrieve_fail(r, job_error_new(JOB_ERR_RETRY, "Tierone::KB::SearchFailed",
                                       "kb search in %s: %s", r->inbox->knowledge_base, error));
        return;
    }
    /* Written here rather than built as jansson objects and dumped: the same text, at a
     * fraction of the worker's CPU (the passages are a few kB a turn). */
    struct buf *b = &r->passages;
    buf_puts(b, "[");
    for (size_t i = 0; i < n; i++) {
        buf_printf(b, "%s{\"id\":%lld,\"score\":", i ? "," : "", hits[i].chunk_id);
        buf_json_real(b, hits[i].score, 17);
        const char *keys[] = {",\"source\":", ",\"title\":", ",\"heading_path\":", ",\"content\":"};
        const char *vals[] = {hits[i].source, hits[i].title, hits[i].heading_path, hits[i].content};
        for (size_t k = 0; k < 4; k++) {
            buf_puts(b, keys[k]);
            buf_json_string(b, vals[k] ? vals[k] : "", vals[k] ? strlen(vals[k]) : 0);
        }
        buf_puts(b, "}");
    }
    buf_puts(b, "]");
    log_job(LOG_DEBUG, r->jid, PIPELINE_RETRIEVE, "turn %lld: %zu passages from %s (best %.2f)",
            r->id, n, r->inbox->knowledge_base, n ? hits[0].score : 0.0);
    retrieve_store(r);
}

/* The question cut for the search at a character boundary. New string. */
static char *retrieve_search_text(const char *q)
{
    size_t len = strlen(q);
    if (len <= RETRIEVE_SEARCH_MAX)
        return xstrdup(q);
    len = RETRIEVE_SEARCH_MAX;
    while (len > 0 && ((unsigned char)q[len] & 0xC0) == 0x80)
        len--;
    return xstrndup(q, len);
}

static void retrieve_search(struct retrieve *r)
{
    buf_reset(&r->passages);
    const char *q = r->question;
    while (isspace((unsigned char)*q))
        q++;
    if (!*q) { /* nothing to search for (an attachment only): no passages */
        retrieve_store(r);
        return;
    }
    char *text = retrieve_search_text(r->question);
    struct kb_search_request req = {
        .kb = r->inbox->knowledge_base, .question = text, .k = (size_t)r->inbox->passages};
    int rc = kb_search(r->p->pg, &req, retrieve_on_search, r);
    free(text);
    if (rc != 0)
        retrieve_done(r, pg_pool_closing_error("kb search"));
}

/* ---- LOAD and BURST -------------------------------------------------------------------- */

static void retrieve_on_finished(struct job_error *err, void *arg)
{
    struct retrieve *r = arg;
    if (err)
        retrieve_fail(r, err);
    else
        retrieve_done(r, NULL);
}

static void retrieve_on_load(const struct pg_result *res, void *arg)
{
    struct retrieve *r = arg;
    struct job_error *err;
    struct turn *t = turn_from_result(res, r->id, &err);
    if (err) {
        retrieve_fail(r, err);
        return;
    }
    r->t = t;
    if (turn_is_finished(t)) {
        retrieve_done(r, NULL);
        return;
    }
    if (!turn_is_newest(t)) {
        log_job(LOG_INFO, r->jid, PIPELINE_RETRIEVE, "turn %lld superseded by message %lld", t->id,
                t->newest_message);
        if (turn_finish(r->p->pg, t->id, "superseded",
                        "a newer message of the burst is answered instead", retrieve_on_finished,
                        r) != 0)
            retrieve_done(r, pg_pool_closing_error("finish turn"));
        return;
    }
    r->inbox = inbox_config_get(r->p->inboxes, t->inbox);
    const char *q = pg_result_value(res, 0, TURN_NCOLUMNS);
    const char *older = pg_result_value(res, 0, TURN_NCOLUMNS + 1);
    r->question = xstrdup(q ? q : t->content);
    if (older && strcmp(older, "0") != 0)
        log_job(LOG_INFO, r->jid, PIPELINE_RETRIEVE, "turn %lld answers %s older message(s) too",
                r->id, older);
    retrieve_search(r);
}

static void retrieve_perform(struct job_ctx *ctx)
{
    long long id = pipeline_turn_arg(ctx, PIPELINE_RETRIEVE);
    if (id < 0)
        return;
    struct retrieve *r = xcalloc(1, sizeof *r);
    r->ctx = ctx;
    r->p = pipeline_of(ctx);
    r->jid = job_ctx_job(ctx)->jid;
    r->id = id;
    snprintf(r->idtext, sizeof r->idtext, "%lld", id);
    snprintf(r->superseded_by, sizeof r->superseded_by, "answered with turn %lld", id);
    job_ctx_set_state(ctx, r);
    const char *params[] = {r->idtext, r->superseded_by};
    if (pg_query(r->p->pg, RETRIEVE_LOAD_SQL, 2, params, retrieve_on_load, r) != 0)
        retrieve_done(r, pg_pool_closing_error("load turn"));
}

const struct job_type retrieve_type = {PIPELINE_RETRIEVE, retrieve_perform, NULL};
