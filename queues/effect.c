/* effect: see effect.h. The claim is one INSERT ... ON CONFLICT DO UPDATE: the update
 * (attempts + 1) locks the row, so concurrent claims of one effect serialise, and
 * (xmax = 0) tells a fresh insert from an existing row. */
#include "effect.h"

#include "log.h"
#include "pg.h"
#include "turn.h"
#include "xalloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A pending row whose claim is older than the in-flight window is taken over by this
 * claim (claimed_at = now(), the statement's time); a younger one is left alone (busy). */
static const char EFFECT_CLAIM_SQL[] =
    "INSERT INTO effects (turn_id, kind, state, payload) VALUES ($1, $2, $3, $4::jsonb)"
    " ON CONFLICT (turn_id, kind) DO UPDATE SET attempts = effects.attempts + 1,"
    " claimed_at = CASE WHEN effects.state = 'pending'"
    "   AND effects.claimed_at < now() - make_interval(secs => $5::int)"
    "   THEN now() ELSE effects.claimed_at END"
    " RETURNING state, result::text, attempts, (xmax = 0) AS inserted,"
    " claimed_at = now() AS mine,"
    " extract(epoch FROM claimed_at + make_interval(secs => $5::int))::float8";

#define EFFECT_COMPLETE_UPDATE                                                                     \
    "UPDATE effects SET state = CASE WHEN state = 'shadow' THEN 'shadow' ELSE 'sent' END,"         \
    " result = $3::jsonb, done_at = now()"                                                         \
    " WHERE turn_id = $1 AND kind = $2 AND state IN ('pending', 'shadow')"
static const char EFFECT_COMPLETE_SQL[] = EFFECT_COMPLETE_UPDATE;
/* The same, and the turn ended ($4 state, $5 reason) in the same transaction: the UPDATE in
 * the WITH runs whether or not the outer one finds the turn still open. */
static const char EFFECT_COMPLETE_FINISH_SQL[] =
    "WITH e AS (" EFFECT_COMPLETE_UPDATE ") " TURN_FINISH_UPDATE("$1", "$4", "$5");

struct effect_call {
    effect_claim_cb claim_cb;
    effect_done_cb done_cb;
    void *arg;
    long long turn_id;
    char kind[32];
    char *payload; /* shadow claims: the payload, for the log line */
};

const char *effect_status_name(enum effect_status s)
{
    switch (s) {
    case EFFECT_NEW:
        return "new";
    case EFFECT_PENDING:
        return "pending";
    case EFFECT_SENT:
        return "sent";
    case EFFECT_SHADOW:
        return "shadow";
    case EFFECT_BUSY:
        return "busy";
    }
    return "?";
}

static void effect_on_claim(const struct pg_result *r, void *arg)
{
    struct effect_call *call = arg;
    struct job_error *err = pg_result_job_error(r, "claim effect");
    if (!err && pg_result_nrows(r) != 1)
        err = job_error_new(JOB_ERR_RETRY, "Tierone::EffectClaim",
                            "claim of effect %s of turn %lld returned no row", call->kind,
                            call->turn_id);
    if (err) {
        call->claim_cb(err, NULL, call->arg);
        free(call->payload);
        free(call);
        return;
    }
    const char *state = pg_result_value(r, 0, 0);
    const char *result = pg_result_value(r, 0, 1);
    const char *attempts = pg_result_value(r, 0, 2);
    const char *inserted = pg_result_value(r, 0, 3);
    const char *mine = pg_result_value(r, 0, 4);
    const char *until = pg_result_value(r, 0, 5);
    struct effect_claim c = {0};
    c.attempts = attempts ? atoi(attempts) : 1;
    c.result = result ? json_loads(result, JSON_DECODE_ANY, NULL) : NULL;
    int fresh = inserted && !strcmp(inserted, "t");
    if (!strcmp(state, "shadow"))
        c.status = EFFECT_SHADOW;
    else if (!strcmp(state, "sent"))
        c.status = EFFECT_SENT;
    else
        c.status = fresh ? EFFECT_NEW : mine && !strcmp(mine, "t") ? EFFECT_PENDING : EFFECT_BUSY;
    if (c.status == EFFECT_BUSY)
        c.busy_until = until ? strtod(until, NULL) : 0;
    if (c.status == EFFECT_SHADOW && fresh)
        log_info("shadow: turn %lld would %s: %.300s", call->turn_id, call->kind,
                 call->payload ? call->payload : "");
    call->claim_cb(NULL, &c, call->arg);
    json_decref(c.result);
    free(call->payload);
    free(call);
}

int effect_claim(struct pg_pool *pg, long long turn_id, const char *kind, const json_t *payload,
                 int shadow, effect_claim_cb cb, void *arg)
{
    if (!kind || strlen(kind) >= sizeof((struct effect_call *)0)->kind)
        return -1;
    char idtext[32];
    snprintf(idtext, sizeof idtext, "%lld", turn_id);
    char *json = payload ? json_dumps(payload, JSON_COMPACT | JSON_ENCODE_ANY) : xstrdup("{}");
    if (!json)
        return -1;
    char window[16];
    snprintf(window, sizeof window, "%d", EFFECT_INFLIGHT_S);
    const char *params[] = {idtext, kind, shadow ? "shadow" : "pending", json, window};
    struct effect_call *call = xcalloc(1, sizeof *call);
    call->claim_cb = cb;
    call->arg = arg;
    call->turn_id = turn_id;
    snprintf(call->kind, sizeof call->kind, "%s", kind);
    int rc = pg_query(pg, EFFECT_CLAIM_SQL, 5, params, effect_on_claim, call);
    if (rc == 0 && shadow)
        call->payload = json;
    else
        free(json);
    if (rc != 0)
        free(call);
    return rc;
}

struct job_error *effect_busy_error(const struct effect_claim *c, const char *kind)
{
    return job_error_reschedule(c->busy_until, "Tierone::EffectInFlight",
                                "%s may still be in flight in another run; looking again at %.0f",
                                kind, c->busy_until);
}

static void effect_on_complete(const struct pg_result *r, void *arg)
{
    struct effect_call *call = arg;
    call->done_cb(pg_result_job_error(r, "complete effect"), call->arg);
    free(call);
}

int effect_complete(struct pg_pool *pg, long long turn_id, const char *kind, const json_t *result,
                    const char *finish_state, const char *finish_reason, effect_done_cb cb,
                    void *arg)
{
    char idtext[32];
    snprintf(idtext, sizeof idtext, "%lld", turn_id);
    char *json = result ? json_dumps(result, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    const char *params[] = {idtext, kind, json, finish_state, finish_reason};
    struct effect_call *call = xcalloc(1, sizeof *call);
    call->done_cb = cb;
    call->arg = arg;
    call->turn_id = turn_id;
    int rc = finish_state
                 ? pg_query(pg, EFFECT_COMPLETE_FINISH_SQL, 5, params, effect_on_complete, call)
                 : pg_query(pg, EFFECT_COMPLETE_SQL, 3, params, effect_on_complete, call);
    free(json);
    if (rc != 0)
        free(call);
    return rc;
}
