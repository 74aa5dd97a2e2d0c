/* turn: see turn.h. One statement per call; the turn comes back with the conversation's
 * newest message id so a step can tell "still the newest" without a second round trip. */
#include "turn.h"

#include "pg.h"
#include "xalloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The same statement with and without the passages (column 10): they are the bulk of a
 * turn (a few KB of passage text), and only Decide reads them, so the other steps neither
 * have the server write them out nor parse them. */
static const char TURN_LOAD_BASE_SQL[] =
    "SELECT " TURN_COLUMNS("NULL") " FROM turns t WHERE t.id = $1";
static const char TURN_LOAD_PASSAGES_SQL[] =
    "SELECT " TURN_COLUMNS("t.passages::text") " FROM turns t WHERE t.id = $1";

static const char TURN_FINISH_SQL[] = TURN_FINISH_UPDATE("$1", "$2", "$3");

struct turn_call {
    turn_cb cb;
    turn_done_cb done;
    void *arg;
    long long id;
};

static json_t *turn_json(const char *text)
{
    return text ? json_loads(text, JSON_DECODE_ANY, NULL) : NULL;
}

static long long turn_ll(const struct pg_result *r, int col)
{
    const char *v = pg_result_value(r, 0, col);
    return v ? strtoll(v, NULL, 10) : 0;
}

struct turn *turn_from_result(const struct pg_result *r, long long id, struct job_error **err)
{
    *err = pg_result_job_error(r, "load turn");
    if (*err)
        return NULL;
    if (pg_result_nrows(r) == 0) {
        *err =
            job_error_new(JOB_ERR_PERMANENT, "Tierone::TurnNotFound", "no turn with id %lld", id);
        return NULL;
    }
    struct turn *t = xcalloc(1, sizeof *t);
    t->id = turn_ll(r, 0);
    t->account = turn_ll(r, 1);
    t->conversation = turn_ll(r, 2);
    t->message = turn_ll(r, 3);
    t->inbox = turn_ll(r, 4);
    t->channel = xstrdup(pg_result_value(r, 0, 5));
    t->contact = turn_json(pg_result_value(r, 0, 6));
    if (!t->contact)
        t->contact = json_object();
    t->content = xstrdup(pg_result_value(r, 0, 7));
    t->state = xstrdup(pg_result_value(r, 0, 8));
    t->question = xstrdup(pg_result_value(r, 0, 9));
    t->passages = turn_json(pg_result_value(r, 0, 10));
    t->decision = turn_json(pg_result_value(r, 0, 11));
    t->outcome_reason = xstrdup(pg_result_value(r, 0, 12));
    const char *at = pg_result_value(r, 0, 13);
    t->received_at = at ? strtod(at, NULL) : 0;
    t->newest_message = turn_ll(r, 14);
    return t;
}

static void turn_on_load(const struct pg_result *r, void *arg)
{
    struct turn_call *call = arg;
    struct job_error *err;
    struct turn *t = turn_from_result(r, call->id, &err);
    call->cb(err, t, call->arg);
    free(call);
}

int turn_load(struct pg_pool *pg, long long id, enum turn_columns cols, turn_cb cb, void *arg)
{
    char idtext[32];
    snprintf(idtext, sizeof idtext, "%lld", id);
    const char *params[] = {idtext};
    struct turn_call *call = xcalloc(1, sizeof *call);
    call->cb = cb;
    call->arg = arg;
    call->id = id;
    const char *sql = cols == TURN_WITH_PASSAGES ? TURN_LOAD_PASSAGES_SQL : TURN_LOAD_BASE_SQL;
    if (pg_query(pg, sql, 1, params, turn_on_load, call) != 0) {
        free(call);
        return -1;
    }
    return 0;
}

int turn_is_newest(const struct turn *t)
{
    return t->message >= t->newest_message;
}

int turn_is_finished(const struct turn *t)
{
    return !t->state || strcmp(t->state, "open") != 0;
}

static void turn_on_finish(const struct pg_result *r, void *arg)
{
    struct turn_call *call = arg;
    call->done(pg_result_job_error(r, "finish turn"), call->arg);
    free(call);
}

int turn_finish(struct pg_pool *pg, long long id, const char *state, const char *reason,
                turn_done_cb cb, void *arg)
{
    char idtext[32];
    snprintf(idtext, sizeof idtext, "%lld", id);
    const char *params[] = {idtext, state, reason};
    struct turn_call *call = xcalloc(1, sizeof *call);
    call->done = cb;
    call->arg = arg;
    call->id = id;
    if (pg_query(pg, TURN_FINISH_SQL, 3, params, turn_on_finish, call) != 0) {
        free(call);
        return -1;
    }
    return 0;
}

void turn_key(const struct turn *t, char *out, size_t cap)
{
    snprintf(out, cap, "%lld:%lld:%lld", t->account, t->conversation, t->message);
}

void turn_free(struct turn *t)
{
    if (!t)
        return;
    free(t->channel);
    json_decref(t->contact);
    free(t->content);
    free(t->state);
    free(t->question);
    json_decref(t->passages);
    json_decref(t->decision);
    free(t->outcome_reason);
    free(t);
}
