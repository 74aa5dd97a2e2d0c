/* fake_fault: misbehaviour a test can queue on any fake service (fake_chatwoot, fake_llm,
 * fake_slack, fake_linear): the next N requests get a 429 with or without Retry-After, a
 * 5xx, garbage, a slow answer, or a dropped connection instead of the real handling.
 *
 * A fake's route handler calls fake_faults_apply() first; when it returns 1 the response
 * is already filled in and the handler returns without touching its state (the request
 * is still recorded by fake_http). Thread-safe: tests push from their thread, handlers
 * apply on the fake's thread. */
#ifndef TIERONE_FAKE_FAULT_H
#define TIERONE_FAKE_FAULT_H

#include "fake_http.h"

struct fake_fault {
    int status;               /* answer with this status (0: 200 when only delaying) */
    const char *retry_after;  /* Retry-After header value (NULL: none) */
    const char *header;       /* one extra "Name: value" header (NULL: none) */
    const char *content_type; /* NULL: "application/json" when body looks like JSON, else text */
    const char *body;         /* NULL: empty */
    unsigned delay_ms;        /* wait before acting */
    enum fake_http_action action; /* ANSWER, DROP (close, no answer), GARBAGE (non-HTTP bytes) */
    int pass_through;             /* 1: only delay, then handle the request normally */
};

struct fake_faults;

struct fake_faults *fake_faults_new(void);
void fake_faults_free(struct fake_faults *q);
/* Queue fault f (copied) for the next `times` requests (after any queued before). */
void fake_faults_push(struct fake_faults *q, const struct fake_fault *f, unsigned times);
/* Pop the next fault into resp. Returns 1 when the handler must stop (the response is the
 * fault), 0 when there was none or it only delays (pass_through: resp->delay_ms is set and
 * the handler carries on). */
int fake_faults_apply(struct fake_faults *q, struct fake_http_response *resp);
/* Faults still queued. */
unsigned fake_faults_pending(struct fake_faults *q);

#endif
