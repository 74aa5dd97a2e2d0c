/* linear: file and find issues in Linear through its GraphQL API (APIS.md §3).
 *
 * Three operations, each one POST of {"query", "operationName", "variables"} to the API
 * URL; caller text only ever travels in `variables`, never inside the query string:
 *   issueCreate(input: {id, teamId, title, description, priority, labelIds})
 *   issue(id:)                      (the UUID or the "ENG-123" identifier)
 *   attachmentCreate(input: {issueId, title, url, subtitle})
 *
 * Authentication (APIS.md §3 "Auth"; the wrong form is the classic failure):
 *   personal API key (lin_api_...)  -> "Authorization: <key>"          (no Bearer)
 *   OAuth access token (lin_oauth_...) -> "Authorization: Bearer <token>"
 * LINEAR_AUTH_AUTO picks by prefix: a key starting with "lin_oauth_" is sent as Bearer,
 * anything else bare. A "Bearer " an operator pasted in front of the key is dropped first
 * and the rule applied to the rest. LINEAR_AUTH_API_KEY / LINEAR_AUTH_OAUTH force a form.
 * When Linear refuses the credentials the error names the form that was sent.
 *
 * Idempotent issue creation: the caller supplies the issue id, a UUID derived from what
 * the issue is for (linear_uuid_from_key). A second issueCreate with the same id fails
 * with HTTP 400 and errors[].extensions.code INPUT_ERROR, message "conflict on insert of
 * Issue" (APIS.md §3, "Duplicate client id"); the client then asks issue(id:) and
 * returns that issue as a success with "existed": true. So a retried job never files
 * the same issue twice. attachmentCreate is idempotent on Linear's side: the same
 * (issueId, url) updates the existing attachment and keeps its id.
 *
 * Outcome. errors[] is read on every answer, HTTP 200 included (APIS.md §3 "Errors"):
 *   - an answer whose data holds the complete payload (a mutation's success: true with
 *     its object, a query's non-null object) is a success even if errors[] is not empty
 *     (the errors are logged): the write happened, and failing would only make a retry
 *     hit the duplicate path;
 *   - extensions.code RATELIMITED (HTTP 400, not 429) or HTTP 429 -> JOB_ERR_RETRY_AT,
 *     class Tierone::Linear::RateLimited, at the reset time: the latest
 *     X-RateLimit-{Requests,Complexity,Endpoint-Requests}-Reset of the buckets whose
 *     -Remaining is 0, else X-RateLimit-Requests-Reset, else Retry-After; without any,
 *     JOB_ERR_RETRY. Reset values are UTC epoch milliseconds (current docs); a value below
 *     1e11 is taken as epoch seconds (older docs), and one below 1e9 as seconds to wait.
 *     Clamped to [now, now + 24 h];
 *   - authentication errors (code AUTHENTICATION_ERROR, type "authentication error", or
 *     HTTP 401) -> JOB_ERR_PERMANENT Tierone::Linear::AuthenticationError naming the form;
 *   - forbidden (code FORBIDDEN, type "forbidden", HTTP 403) -> permanent ...::Forbidden;
 *   - "Entity not found" messages, or issue(id:) answering null -> permanent ...::NotFound;
 *   - HTTP 5xx, type "internal error" / "lock timeout" -> JOB_ERR_RETRY ...::ServerError;
 *   - any other GraphQL error -> permanent ...::InvalidInput (code INPUT_ERROR) or
 *     ...::GraphQLError, message carrying Linear's messages and codes;
 *   - no errors[] and a non-2xx status, or a transport failure -> http_failure.h's verdict.
 *
 * The key is a secret: it appears in no log line and no error message. */
#ifndef TIERONE_LINEAR_H
#define TIERONE_LINEAR_H

#include "http_client.h"
#include "job_error.h"
#include "rate_limit.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define LINEAR_DEFAULT_API_URL "https://api.linear.app/graphql"

struct linear;

enum linear_auth {
    LINEAR_AUTH_AUTO = 0, /* by prefix: lin_oauth_ -> Bearer, else bare (see above) */
    LINEAR_AUTH_API_KEY,  /* "Authorization: <key>" */
    LINEAR_AUTH_OAUTH,    /* "Authorization: Bearer <token>" */
};

/* Client settings. http and limit are borrowed (must outlive the client); strings copied. */
struct linear_opts {
    struct http_client *http; /* required */
    struct rate_limit *limit; /* fleet-wide bucket under Linear's hourly quota; NULL: none */
    const char *api_url;      /* NULL: LINEAR_DEFAULT_API_URL */
    const char *api_key;      /* required; a secret */
    enum linear_auth auth;
    const char *team_id; /* default teamId for linear_issue_create (may be NULL) */
    uint64_t timeout_ms; /* per request; 0: 30000 */
};

/* An issue to file. Strings borrowed for the duration of the call. */
struct linear_issue_input {
    const char *id;          /* required: lowercase UUID, e.g. from linear_uuid_from_key */
    const char *team_id;     /* NULL: the client's team_id; one of them is required */
    const char *title;       /* required, non-empty */
    const char *description; /* markdown; NULL: none */
    int priority;            /* 1 Urgent, 2 High, 3 Medium, 4 Low; 0: not sent (none) */
    const char *const *label_ids;
    size_t nlabel_ids;
};

/* err: NULL on success, else a new error the callback owns. result (borrowed, valid
 * during the callback; NULL on error):
 *   linear_issue_create: {"id", "identifier", "url", "existed": bool}
 *   linear_issue_get:    {"id", "identifier", "url"}
 *   linear_attachment_create: {"id", "url"} */
typedef void (*linear_cb)(struct job_error *err, json_t *result, void *arg);

/* Create a client. Returns NULL with a reason in *err (caller frees) when http or the key
 * is missing or the API URL is not an absolute http(s) URL. */
struct linear *linear_new(const struct linear_opts *opts, char **err);
/* Free the client (NULL is a no-op). Calls in flight must have finished. */
void linear_free(struct linear *c);

/* The form the key is sent in: "personal API key (Authorization: <key>)" or "OAuth token
 * (Authorization: Bearer <token>)". Static string. */
const char *linear_auth_name(const struct linear *c);

/* File an issue (see "Idempotent issue creation"). jid may be NULL (logs, rate-limit
 * reservation). Returns 0 and cb runs exactly once later; or -1 (cb never runs, reason
 * logged) when the id is not a UUID, the title is empty, there is no team id or the
 * priority is outside 0..4. */
int linear_issue_create(struct linear *c, const char *jid, const struct linear_issue_input *in,
                        linear_cb cb, void *arg);

/* Look an issue up by UUID or identifier; a missing one is a permanent
 * Tierone::Linear::NotFound. Returns 0 (cb runs once later) or -1 for an empty id. */
int linear_issue_get(struct linear *c, const char *jid, const char *id, linear_cb cb, void *arg);

/* Attach url to an issue (create, or update the one with the same issue and url).
 * issue_id, title and url are required (else -1); subtitle may be NULL. */
int linear_attachment_create(struct linear *c, const char *jid, const char *issue_id,
                             const char *title, const char *url, const char *subtitle, linear_cb cb,
                             void *arg);

/* A deterministic issue id for `key` (e.g. "chatwoot:1:42:9001"): the first 16 bytes of
 * SHA-256(key) with the version nibble set to 4 and the RFC 4122 variant bits, written as
 * 36 lowercase characters plus NUL ("xxxxxxxx-xxxx-4xxx-[89ab]xxx-xxxxxxxxxxxx"). The
 * same key always gives the same id. */
void linear_uuid_from_key(const char *key, char out[37]);

/* 1 when s has the 8-4-4-4-12 hex shape of a UUID, else 0. */
int linear_uuid_valid(const char *s);

#endif
