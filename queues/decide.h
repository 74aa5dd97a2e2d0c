/* decide: what Tierone::Decide (decide.c) shares with Tierone::Retrieve (retrieve.c): storing
 * a turn's decision once and enqueueing the step it calls for, and the fail-safe escalation
 * both steps fall back to (pipeline.h). */
#ifndef TIERONE_DECIDE_H
#define TIERONE_DECIDE_H

#include "job_error.h"
#include "pipeline.h"

#include <jansson.h>

/* Store decision (borrowed; decide_prompt.h's shape) on turn turn_id unless the turn already
 * has one (a concurrent or earlier run stored it first: that one wins), in one statement;
 * then enqueue Tierone::Reply when the stored decision's action is "answer", else
 * Tierone::Escalate. jid and klass name the calling job in the log. cb(err, arg) runs exactly
 * once later: err NULL, or a new error the callback owns (a PostgreSQL or Redis failure,
 * classified; a missing turn is a permanent Tierone::TurnNotFound). Returns 0, or -1 (cb
 * never runs) when the pool is closing. */
int decide_store(struct pipeline *p, const char *jid, const char *klass, long long turn_id,
                 const json_t *decision, pipeline_enqueue_cb cb, void *arg);

/* A step of job j on turn turn_id failed with err (taken). When force (a permanent LLM
 * failure: retrying cannot help) or when the fail-safe is due (err is retryable and this run
 * is the job's last attempt, pipeline_last_attempt), the turn is escalated with "assistant
 * unavailable: <err>" (decide_store of decide_prompt_failsafe, logged at warn): the function
 * returns NULL and cb(result, arg) runs exactly once later, with result NULL when the
 * fail-safe was stored and enqueued, or err itself when it could not be (that failure is
 * logged; the job then fails with its own error). Otherwise cb never runs and err is
 * returned for the caller to finish with (rate-limit reschedules, permanent errors, earlier
 * attempts, a closing pool). */
struct job_error *decide_fail(struct pipeline *p, const struct job *j, long long turn_id,
                              struct job_error *err, int force, pipeline_enqueue_cb cb, void *arg);

#endif
