/* fake_slack: a Slack incoming webhook for tests and the demo (APIS.md §4).
 *
 * One webhook at POST <url>/services/T000/B000/XXXX (the path is configurable). It checks
 * what Slack checks and answers in Slack's words (plain text, not JSON):
 *   - another path under /services/ -> 404 no_service (unknown or revoked webhook);
 *   - revoked (fake_slack_set_revoked) -> 404 no_service; archived -> 410 channel_is_archived;
 *   - Content-Type other than application/json, or a body that is not a JSON object
 *     -> 400 invalid_payload;
 *   - neither non-empty "text" nor "blocks" -> 400 missing_text_or_fallback_or_attachments;
 *   - invalid blocks (not an array, more than 50, an unknown type, a text object that is
 *     not {type: plain_text|mrkdwn, text}, a header over 150 characters or not plain_text,
 *     a section text or context element over 3000, a section with neither text nor
 *     fields, a context with 0 or more than 10 elements) -> 400 invalid_blocks;
 *   - otherwise 200 "ok" and the payload is recorded.
 * Characters are counted as Unicode code points. Faults (fake_fault.h) come first.
 * Thread-safe: the fake answers on its own thread, the functions below lock. */
#ifndef TIERONE_FAKE_SLACK_H
#define TIERONE_FAKE_SLACK_H

#include "fake_fault.h"
#include "fake_http.h"

#include <jansson.h>
#include <stddef.h>

struct fake_slack;

struct fake_slack_opts {
    const char *path; /* NULL: "/services/T000/B000/XXXX" */
};

/* Start the fake (opts may be NULL). NULL if it cannot listen. */
struct fake_slack *fake_slack_start(const struct fake_slack_opts *opts);
/* Stop it and free everything (NULL is a no-op). */
void fake_slack_free(struct fake_slack *f);

/* Base URL "http://127.0.0.1:PORT", and the full webhook URL (base + path). */
const char *fake_slack_url(struct fake_slack *f);
const char *fake_slack_webhook_url(struct fake_slack *f);
/* The fault queue and the underlying HTTP fake (every request is recorded there). */
struct fake_faults *fake_slack_faults(struct fake_slack *f);
struct fake_http *fake_slack_http(struct fake_slack *f);

/* Channel archived (410 channel_is_archived) / webhook revoked (404 no_service). */
void fake_slack_set_archived(struct fake_slack *f, int on);
void fake_slack_set_revoked(struct fake_slack *f, int on);

/* Accepted messages so far, and a copy of the i-th one's payload (new
 * reference, or NULL). */
size_t fake_slack_count(struct fake_slack *f);
json_t *fake_slack_message(struct fake_slack *f, size_t i);

#endif
