/* effect: the record of every outward effect of a turn (table `effects`,
 * migrations/0002_pipeline.sql), which makes each send idempotent and shadow mode possible.
 *
 * A step that sends something (a reply, a note, a label, the hand-off, a Slack message, a
 * Linear issue) first claims the effect (turn, kind) with the payload it is about to send:
 *   - EFFECT_NEW: nobody tried before; the row is now 'pending'. Send, then effect_complete.
 *   - EFFECT_PENDING: an earlier attempt claimed it more than EFFECT_INFLIGHT_S ago and its
 *     outcome is unknown (a crash, a timeout after the request left). This claim takes it
 *     over. Look for the earlier send before sending again (Chatwoot: the
 *     content_attributes marker; Linear: the derived issue id), then send or just complete.
 *   - EFFECT_BUSY: another run claimed it less than EFFECT_INFLIGHT_S ago and may still be
 *     sending (a re-run of the previous step enqueued this step twice). Do not look or
 *     send: finish the job with effect_busy_error(c), which runs it again when the window
 *     ends, and it then finds the effect sent, or pending and abandoned.
 *   - EFFECT_SENT: done before; result holds what came back. Skip the send.
 *   - EFFECT_SHADOW: shadow mode; the row records what would have been sent. Skip the
 *     send and carry on as if it had succeeded (the claim that recorded it logs one info
 *     line "shadow: would <kind> ...").
 * One statement (INSERT ... ON CONFLICT DO UPDATE ... RETURNING, row-locked), so two
 * workers running the same job concurrently cannot both get EFFECT_NEW.
 *
 * Kinds used: reply, escalation_note, labels, handoff, slack, linear_issue,
 * linear_attachment, linear_note. */
#ifndef TIERONE_EFFECT_H
#define TIERONE_EFFECT_H

#include "job_error.h"

#include <jansson.h>

struct pg_pool;

enum effect_status { EFFECT_NEW, EFFECT_PENDING, EFFECT_SENT, EFFECT_SHADOW, EFFECT_BUSY };

/* How long a claimed send may still be in flight (longer than any client's request
 * deadline): within it a second claim gets EFFECT_BUSY, after it EFFECT_PENDING. */
#define EFFECT_INFLIGHT_S 45

struct effect_claim {
    enum effect_status status;
    json_t *result;    /* EFFECT_SENT: what effect_complete stored (borrowed; NULL otherwise) */
    int attempts;      /* claims so far, this one included */
    double busy_until; /* EFFECT_BUSY: wall seconds when the other claim's window ends */
};

/* err NULL: c set (valid during the callback). err set: c NULL; the callback owns err. */
typedef void (*effect_claim_cb)(struct job_error *err, const struct effect_claim *c, void *arg);
typedef void (*effect_done_cb)(struct job_error *err, void *arg);

/* Claim (turn_id, kind) with payload (borrowed, serialised at once); shadow: record it as a
 * shadow effect instead of a pending one. Returns 0 (cb runs once later) or -1. */
int effect_claim(struct pg_pool *pg, long long turn_id, const char *kind, const json_t *payload,
                 int shadow, effect_claim_cb cb, void *arg);

/* Mark (turn_id, kind) sent with result (borrowed; may be NULL); on a shadow row, store the
 * result and keep the state (what the step would have got back). Idempotent. With
 * finish_state (else NULL), the same statement also ends the turn as turn_finish does
 * (state, finish_reason which may be NULL; only if the turn is still open): the step's
 * last effect and the end of its turn commit together, in one round trip. Returns 0 or
 * -1. */
int effect_complete(struct pg_pool *pg, long long turn_id, const char *kind, const json_t *result,
                    const char *finish_state, const char *finish_reason, effect_done_cb cb,
                    void *arg);

/* The job error for an EFFECT_BUSY claim: JOB_ERR_RESCHEDULE at c->busy_until (not a
 * failure; no retry is used up). New; the caller passes it to job_done. */
struct job_error *effect_busy_error(const struct effect_claim *c, const char *kind);

/* "new", "pending", "sent", "shadow", "busy". */
const char *effect_status_name(enum effect_status s);

#endif
