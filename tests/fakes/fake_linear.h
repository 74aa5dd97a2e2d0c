/* fake_linear: Linear's GraphQL endpoint for tests and the demo (APIS.md §3), enough of
 * it for the three operations tierone sends.
 *
 * POST /graphql with Content-Type application/json and {query, variables, operationName}.
 * In order:
 *   1. faults (fake_fault.h) replace the answer;
 *   2. rate-limit mode (fake_linear_ratelimit): HTTP 400, errors[0].extensions.code
 *      RATELIMITED, X-RateLimit-Requests-Remaining 0 and -Reset = the given epoch ms
 *      (Linear answers 400, not 429: APIS.md §3 "Rate limiting");
 *   3. authentication: Authorization must be exactly the personal key, or "Bearer <token>"
 *      for an OAuth token (APIS.md §3 "Auth"). Anything else (a personal key sent with
 *      "Bearer ", an OAuth token sent bare, a wrong or missing header) is treated as no
 *      credentials: HTTP 401 with errors[{message "Authentication required, not
 *      authenticated", extensions {type "authentication error", code
 *      "AUTHENTICATION_ERROR", userPresentableMessage ...}}]. Linear documents no status
 *      for this; 401 with that payload is what integrators record from the live API
 *      (third-party test fixtures), and the SDK maps such errors by extensions.type;
 *   4. the operation: the root field of the query's selection (issueCreate, issue,
 *      attachmentCreate; anything else -> 400 GRAPHQL_VALIDATION_FAILED), its arguments
 *      taken from `variables` only (the query must pass $input / $id);
 *   5. the answer, with X-RateLimit-Requests-{Limit,Remaining,Reset}, X-Complexity and
 *      X-RateLimit-Complexity-{Limit,Remaining,Reset} on every non-fault response.
 *
 * State: issues {id, identifier "<TEAM>-n", url, title, description, priority, teamId,
 * labelIds}; issueCreate without teamId -> 400 validation error, an unknown team -> 400
 * INPUT_ERROR "Entity not found: Team", an id that is not a UUID -> 400 INPUT_ERROR, an
 * id already used -> HTTP 400 INPUT_ERROR "conflict on insert of Issue ..." (the behaviour
 * APIS.md §3 reports from the live API). issue(id:) takes the UUID or the identifier;
 * a missing one -> HTTP 400 INPUT_ERROR "Entity not found: Issue" with data.issue null.
 * Attachments are keyed by (issue, url): a second attachmentCreate with the same pair
 * updates title/subtitle and keeps the id (schema.graphql, AttachmentCreateInput.url).
 *
 * Thread-safe: the fake answers on its own thread, the functions below lock. */
#ifndef TIERONE_FAKE_LINEAR_H
#define TIERONE_FAKE_LINEAR_H

#include "fake_fault.h"
#include "fake_http.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

struct fake_linear;

struct fake_linear_opts {
    const char *api_key;   /* NULL: "lin_api_fake"; "lin_oauth_..." keys expect Bearer */
    int oauth;             /* 1: api_key is an OAuth token whatever its prefix */
    const char *team_id;   /* NULL: "team-fake" (the only team that exists) */
    const char *team_key;  /* identifier prefix; NULL: "ENG" */
    const char *workspace; /* url slug; NULL: "tierone" */
};

/* Start the fake (opts may be NULL). NULL if it cannot listen. */
struct fake_linear *fake_linear_start(const struct fake_linear_opts *opts);
/* Stop it and free everything (NULL is a no-op). */
void fake_linear_free(struct fake_linear *f);

/* Base URL "http://127.0.0.1:PORT" and the endpoint (base + "/graphql"). */
const char *fake_linear_url(struct fake_linear *f);
const char *fake_linear_api_url(struct fake_linear *f);
/* The fault queue and the underlying HTTP fake (every request is recorded there). */
struct fake_faults *fake_linear_faults(struct fake_linear *f);
struct fake_http *fake_linear_http(struct fake_linear *f);

/* Answer the next n requests with RATELIMITED (see above); reset_ms is the
 * X-RateLimit-Requests-Reset value sent (epoch milliseconds, or anything for tests). */
void fake_linear_ratelimit(struct fake_linear *f, unsigned n, int64_t reset_ms);

/* Issues created so far; a copy of the i-th one, or of the one with this UUID or
 * identifier (new reference, or NULL). */
size_t fake_linear_issue_count(struct fake_linear *f);
json_t *fake_linear_issue(struct fake_linear *f, size_t i);
json_t *fake_linear_find_issue(struct fake_linear *f, const char *id);
/* Attachments so far ({id, issueId, url, title, subtitle}); a copy of the i-th one. */
size_t fake_linear_attachment_count(struct fake_linear *f);
json_t *fake_linear_attachment(struct fake_linear *f, size_t i);
/* The i-th request's body parsed as JSON (new reference, or NULL). */
json_t *fake_linear_request_json(struct fake_linear *f, size_t i);

#endif
