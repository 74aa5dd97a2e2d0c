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

/* The fail-safe: decide_store of decide_prompt_failsafe(message) ("assistant unavailable:
 * <message>"), logged at warn. Same contract as decide_store. */
int decide_failsafe(struct pipeline *p, const char *jid, const char *klass, long long turn_id,
                    const char *message, pipeline_enqueue_cb cb, void *arg);

/* 1 when a step that failed with err should take the fail-safe now instead of failing:
 * err is retryable (retry or retry-at) and this run is the job's last attempt
 * (pipeline_last_attempt). Rate-limit reschedules and permanent errors: 0. */
int decide_failsafe_due(const struct pipeline *p, const struct job *j, const struct job_error *err);

#endif
