/* slack: post escalation notices to a Slack incoming webhook (APIS.md §4).
 *
 * One webhook URL per client. A message is a fallback `text` (mrkdwn; what the
 * notification shows) plus a few Block Kit blocks the client builds from simple fields:
 * a header, a summary section, a section of links (the Chatwoot conversation, the Linear
 * issue) and a context line: at most 4 of the 50 blocks a message may carry.
 *
 * Links are mrkdwn links ("<url|label>") rather than buttons: a button sends an
 * interaction payload to the app even when it only opens a URL, and a webhook-only app
 * has nowhere to receive it.
 *
 * Every text is cut to a limit with an ellipsis ("…"), counted in characters, never
 * splitting a UTF-8 sequence (invalid UTF-8 becomes "?"): text 4000 (Slack truncates at
 * 40,000 and recommends <= 4,000), header 150 (the header block's limit), summary and
 * context 3000 (a longer section text is rejected with 400, APIS.md §4), link label 75.
 * A link that does not fit in the 3000 characters of its section is left out rather than
 * cut (a cut URL points nowhere).
 *
 * text, summary and context are mrkdwn as given: wrap untrusted parts (customer words)
 * in slack_escape() so "<!channel>" or "<https://evil|x>" cannot ping or disguise links.
 *
 * Outcome (APIS.md §4, "Treat 200 as success. Everything else except 429/5xx is
 * permanent"): 2xx -> success; 429 -> JOB_ERR_RETRY_AT at Retry-After (JOB_ERR_RETRY
 * without one); 5xx (500 rollup_error) and transport failures -> JOB_ERR_RETRY; any
 * other status (400 invalid_payload / invalid_blocks, 403 action_prohibited /
 * invalid_token, 404 channel_not_found / no_service, 410 channel_is_archived, ...) ->
 * JOB_ERR_PERMANENT, class "Tierone::Slack::<Kind>" (http_failure.h) and a message
 * carrying Slack's plain-text error string: "POST hooks.slack.com webhook -> HTTP 410:
 * channel_is_archived".
 *
 * The webhook URL is a secret (its path is the credential): it never appears in logs or
 * error messages; only its host does. */
#ifndef TIERONE_SLACK_H
#define TIERONE_SLACK_H

#include "http_client.h"
#include "job_error.h"
#include "rate_limit.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

struct slack;

/* Client settings. http and limit are borrowed (must outlive the client); strings copied. */
struct slack_opts {
    struct http_client *http; /* required */
    struct rate_limit *limit; /* fleet-wide bucket, e.g. 1/s burst 3 per webhook; NULL: none */
    const char *webhook_url;  /* required, http(s)://host/...; a secret */
    uint64_t timeout_ms;      /* per request; 0: 30000 */
};

/* One link: a label and a URL (e.g. "Open in Chatwoot" -> the conversation). */
struct slack_link {
    const char *text; /* label (plain text) */
    const char *url;  /* http(s) URL */
};

#define SLACK_MAX_LINKS 5

/* One message. Only text is required; NULL or "" fields add no block. */
struct slack_message {
    const char *text;               /* fallback / notification text, mrkdwn */
    const char *header;             /* header block (plain text) */
    const char *summary;            /* section block (mrkdwn) */
    const char *context;            /* context block: one small mrkdwn line */
    const struct slack_link *links; /* section of links; ones with no url are skipped */
    size_t nlinks;                  /* <= SLACK_MAX_LINKS */
};

/* err: NULL on success, else a new error the callback owns. result: on success the JSON
 * string Slack answered with (normally "ok"), borrowed; NULL on error. */
typedef void (*slack_cb)(struct job_error *err, json_t *result, void *arg);

/* Create a client. Returns NULL with a reason in *err (caller frees) when http or the
 * webhook URL is missing or the URL is not an absolute http(s) URL with a host. */
struct slack *slack_new(const struct slack_opts *opts, char **err);
/* Free the client (NULL is a no-op). Calls in flight must have finished. */
void slack_free(struct slack *c);

/* The webhook's host (what logs may show), e.g. "hooks.slack.com". */
const char *slack_host(const struct slack *c);

/* s with Slack's three control characters escaped (& < > -> &amp; &lt; &gt;), for
 * untrusted text inside mrkdwn. New string; caller frees. */
char *slack_escape(const char *s);

/* The JSON payload for m ({"text": ..., "blocks": [...]}), limits applied. New reference,
 * or NULL when m has no text. */
json_t *slack_message_payload(const struct slack_message *m);

/* Post m for job jid (may be NULL; used for logs and the rate-limit reservation).
 * Returns 0 and cb(err, result, arg) runs exactly once later; or -1 when m has no text
 * or more than SLACK_MAX_LINKS links (cb never runs; the reason is logged). */
int slack_post(struct slack *c, const char *jid, const struct slack_message *m, slack_cb cb,
               void *arg);

#endif
