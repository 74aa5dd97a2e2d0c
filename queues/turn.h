/* turn: the turn ledger (table `turns`, migrations/0002_pipeline.sql), read and finished
 * the same way by every pipeline step. Each step's own columns (question and passages,
 * decision) are written by that step's file with its own SQL.
 *
 * Callback contract (pg.h's): 0 = the callback runs exactly once later; -1 = never. err
 * in a callback is NULL or a new job error the callback owns (pass it to job_done). */
#ifndef TIERONE_TURN_H
#define TIERONE_TURN_H

#include "job_error.h"

#include <jansson.h>
#include <stddef.h>

struct pg_pool;
struct pg_result;

/* One turn. Owned by whoever got it from turn_load (turn_free). */
struct turn {
    long long id;
    long long account, conversation, message, inbox;
    char *channel;    /* "Channel::WebWidget", ... ("" when unknown) */
    json_t *contact;  /* the sender object from the webhook ({} when none) */
    char *content;    /* the customer's words */
    char *state;      /* open, answered, escalated, superseded, dropped */
    char *question;   /* NULL until Retrieve */
    json_t *passages; /* NULL until Retrieve, or when not loaded (TURN_BASE): [{id, score,
                         source, title, heading_path, content}] */
    json_t *decision; /* NULL until Decide: {action, answer, reason, category,
                         passage_ids, by} */
    char *outcome_reason;
    double received_at;       /* epoch seconds */
    long long newest_message; /* the greatest message id among the conversation's turns */
};

/* t: the turn (the callback owns it; NULL on error). */
typedef void (*turn_cb)(struct job_error *err, struct turn *t, void *arg);
/* err: NULL on success. */
typedef void (*turn_done_cb)(struct job_error *err, void *arg);

/* What turn_load reads besides the turn's small columns. */
enum turn_columns {
    TURN_BASE,          /* passages stays NULL */
    TURN_WITH_PASSAGES, /* also the passages (only Decide needs them) */
};

/* The columns turn_from_result reads, over `turns t`, passages being "t.passages::text"
 * or "NULL". A step that needs more than the turn in the same round trip selects these
 * first and its own columns after them, from column TURN_NCOLUMNS on. The conversation's
 * newest message id is named newest_message, for a statement that selects these in a WITH
 * and tests "still the newest" on them (turn_is_newest's rule). */
#define TURN_COLUMNS(passages)                                                                     \
    " t.id, t.account_id, t.conversation_id, t.message_id, t.inbox_id, t.channel,"                 \
    " t.contact::text, t.content, t.state, t.question, " passages ", t.decision::text,"            \
    " t.outcome_reason, extract(epoch FROM t.received_at)::float8,"                                \
    " (SELECT max(n.message_id) FROM turns n"                                                      \
    "   WHERE n.account_id = t.account_id AND n.conversation_id = t.conversation_id)"              \
    " AS newest_message"
#define TURN_NCOLUMNS 15

/* The turn in row 0 of r, the result of a statement selecting TURN_COLUMNS first (the
 * caller owns it), or NULL with *err set: r's error, or for no row a permanent
 * Tierone::TurnNotFound naming id. */
struct turn *turn_from_result(const struct pg_result *r, long long id, struct job_error **err);

/* Load turn id with newest_message (one statement). A missing turn is a permanent
 * Tierone::TurnNotFound error. Returns 0 or -1. */
int turn_load(struct pg_pool *pg, long long id, enum turn_columns cols, turn_cb cb, void *arg);

/* 1 when t is still the newest turn of its conversation. */
int turn_is_newest(const struct turn *t);

/* 1 when t has ended (state other than open). */
int turn_is_finished(const struct turn *t);

/* The statement turn_finish runs, over its parameters' numbers ("$1"...): a step that ends
 * the turn together with a write of its own puts it in the same statement. */
#define TURN_FINISH_UPDATE(id, state, reason)                                                      \
    "UPDATE turns SET state = " state ", outcome_reason = " reason ", finished_at = now()"         \
    " WHERE id = " id " AND state = 'open'"

/* End turn id with state ("answered", "escalated", "superseded", "dropped") and a reason
 * (may be NULL), only if it is still open (a finished turn keeps its first ending).
 * Returns 0 or -1. */
int turn_finish(struct pg_pool *pg, long long id, const char *state, const char *reason,
                turn_done_cb cb, void *arg);

/* The turn's key "<account>:<conversation>:<message>" (the marker in content_attributes,
 * the seed of the Linear issue id) into out (cap >= 64 is always enough). */
void turn_key(const struct turn *t, char *out, size_t cap);

void turn_free(struct turn *t);

#endif
