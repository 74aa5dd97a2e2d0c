/* chatwoot: the Chatwoot Application API calls the pipeline makes (APIS.md §2).
 *
 * Auth (§2.1): every request carries `api_access_token: <token>`. Two tokens are configured
 * separately and each call picks the one it needs:
 *   - the AgentBot token may call only conversations show / toggle_status / ..., messages
 *     create (NOT index) and conversation labels index / create. Those calls use the bot
 *     token, or the user token when no bot token is configured. Posting with the bot token
 *     makes the bot the sender, and toggling pending -> open with it is the documented
 *     handoff (§1.9); an agent-role user token self-assigns on "open" (§2.1).
 *   - listing messages and every contacts call need the user (administrator) token.
 * When the token a call needs is not configured the call returns -1 and cb never runs; the
 * reason is logged and kept in chatwoot_last_error(). Tokens never appear in logs or errors;
 * a 401 names which token was used ("bot token" / "user token").
 * A reverse proxy in front of Chatwoot must pass header names with underscores (nginx:
 * `underscores_in_headers on`), or every call gets 401.
 *
 * Paths use the conversation's display id (the number agents see), as the API does.
 *
 * Failures (http_failure.h with policy {"Chatwoot", 60}):
 *   - 429 from rack-attack is plain text "Retry later" WITHOUT Retry-After (§2.9); its
 *     counters are fixed one-minute windows, so it becomes JOB_ERR_RETRY_AT at the end of the
 *     current minute. A Retry-After, if a proxy adds one, wins.
 *   - 5xx, timeouts, dropped connections -> JOB_ERR_RETRY; a 2xx whose body is not the
 *     expected JSON -> JOB_ERR_RETRY, class "Tierone::Chatwoot::BadResponse".
 *   - 401 (bad token, bot on a user-only endpoint, §2.8) -> JOB_ERR_PERMANENT, message ends in
 *     "(bot token)" or "(user token)"; 404 -> permanent; 422 -> permanent with Chatwoot's text:
 *     {"error": ...} or {"message": ..., "attributes": [...]} (the attributes are appended:
 *     "Email has already been taken [email]").
 *
 * Liquid (§1.8): Chatwoot renders the content of every outgoing message (private notes too) as
 * a Liquid template before saving it (app/models/concerns/liquidable.rb):
 *     content.gsub(/`(.*?)`/m, '{% raw %}`\1`{% endraw %}')   then Liquid::Template.parse/render
 * (a Liquid::Error leaves the content as sent). So "{{ contact.name }}" in an LLM answer would
 * become the customer's name. chatwoot_create_message() therefore always sends
 * chatwoot_escape_liquid(content); see there for the scheme.
 *
 * Not thread-safe: use a client from its loop's thread only. */
#ifndef TIERONE_CHATWOOT_H
#define TIERONE_CHATWOOT_H

#include "http_client.h"
#include "job_error.h"
#include "rate_limit.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

struct chatwoot;

/* Client settings. http and limit are borrowed (must outlive the client); strings copied. */
struct chatwoot_opts {
    struct http_client *http; /* required */
    struct rate_limit *limit; /* fleet-wide bucket (3000/min per IP, §2.9); NULL: none */
    const char *base_url;     /* required, "https://chat.example.com" (a trailing / is fine) */
    const char *bot_token;    /* AgentBot access token; NULL or "": none */
    const char *user_token;   /* administrator's access token; NULL or "": none */
    uint64_t timeout_ms;      /* per request; 0: 30000 */
};

/* err: NULL on success, else a new error the callback owns (pass it to job_done).
 * result: on success the JSON named by each call below, borrowed (valid during the callback;
 * json_incref to keep it); NULL on error. */
typedef void (*chatwoot_cb)(struct job_error *err, json_t *result, void *arg);

/* Create a client. Returns NULL with a reason in *err (caller frees) when http or base_url is
 * missing, base_url is not http(s)://host..., or neither token is configured. */
struct chatwoot *chatwoot_new(const struct chatwoot_opts *opts, char **err);
/* Free the client (NULL is a no-op). Calls in flight must have finished. */
void chatwoot_free(struct chatwoot *c);

/* Why the last call returned -1 ("" if none did yet). Valid until the next call. */
const char *chatwoot_last_error(const struct chatwoot *c);

/* Every call below: jid names the calling job (logs, rate-limit reservation; may be NULL);
 * account and conversation (display id) must be > 0. Returns 0 and cb(err, result, arg) runs
 * exactly once later, never from inside the call; or -1 for invalid inputs or a token that
 * is not configured (cb never runs; chatwoot_last_error() says why). */

/* GET .../conversations/{conversation} (bot token). result: the conversation object (§2.5):
 * status, labels, meta.assignee, messages[last], ... */
int chatwoot_get_conversation(struct chatwoot *c, const char *jid, long account, long conversation,
                              chatwoot_cb cb, void *arg);

/* GET .../conversations/{conversation}/messages[?after=after_id] (user token only).
 * after_id > 0: the messages with a greater id, oldest first, AT MOST 100 per call (ask again
 * after the last id for more); after_id 0: the latest 20. result: the "payload" array. */
int chatwoot_list_messages(struct chatwoot *c, const char *jid, long account, long conversation,
                           long after_id, chatwoot_cb cb, void *arg);

/* One message to create. */
struct chatwoot_message {
    const char *content;        /* required, non-empty UTF-8; Liquid-escaped on the way */
    int private_note;           /* 1: private note (agents only); 0: reply to the customer */
    json_t *content_attributes; /* borrowed object or NULL, e.g. {"tierone_reply_to": 4211}:
                                   a marker that is stored and returned by list messages and
                                   webhooks (§2.2), to find an earlier send before resending */
    const char *echo_id;        /* NULL: none; echoed in the response only, not stored */
};

/* POST .../conversations/{conversation}/messages (bot token) as an outgoing text message.
 * Chatwoot has no idempotency (§2.2): look for the content_attributes marker with
 * chatwoot_list_messages() before a resend. result: the message object (id, content,
 * content_attributes, created_at, ...). -1 when content is empty or content_attributes is
 * not an object. */
int chatwoot_create_message(struct chatwoot *c, const char *jid, long account, long conversation,
                            const struct chatwoot_message *m, chatwoot_cb cb, void *arg);

/* GET .../conversations/{conversation}/labels (bot token). result: the "payload" array of
 * label names. */
int chatwoot_get_labels(struct chatwoot *c, const char *jid, long account, long conversation,
                        chatwoot_cb cb, void *arg);

/* Add labels without dropping existing ones. The API REPLACES the list (§2.3), so this reads
 * the labels (GET), and when some of `labels` are missing POSTs the union (existing order
 * first, then the new ones); when all are present it posts nothing (a repeat is free and
 * cannot undo an agent's concurrent edit). Still racy against an agent editing labels
 * between the two requests. result: the final "payload" array. -1 when n is 0 or a label is
 * empty. */
int chatwoot_add_labels(struct chatwoot *c, const char *jid, long account, long conversation,
                        const char *const *labels, size_t n, chatwoot_cb cb, void *arg);

/* POST .../conversations/{conversation}/toggle_status (bot token) with status "open",
 * "resolved", "pending" or "snoozed"; snoozed_until (unix seconds) only with "snoozed", 0:
 * until the next customer reply (§2.4). result: the "payload" object {success,
 * conversation_id, current_status, snoozed_until}. -1 for another status or a snoozed_until
 * without "snoozed". */
int chatwoot_toggle_status(struct chatwoot *c, const char *jid, long account, long conversation,
                           const char *status, int64_t snoozed_until, chatwoot_cb cb, void *arg);

/* GET .../contacts/search?q=..&page=.. (user token; page 0 means 1). Chatwoot matches q as a
 * SUBSTRING (ILIKE %q% on name, email and phone, case-sensitive LIKE on identifier; §2.7), 15
 * per page: "ann@x.io" also finds "joann@x.io", so confirm an exact match on the result. Has
 * its own rack-attack limit, 100/min per account (§2.9). result: the whole answer
 * {"meta":{count,current_page,has_more},"payload":[contacts]}. */
int chatwoot_search_contacts(struct chatwoot *c, const char *jid, long account, const char *q,
                             int page, chatwoot_cb cb, void *arg);

/* POST .../contacts/filter?page=1 (user token) with one condition `attribute` equal_to
 * `value` (attribute: "email", "phone_number", "identifier", "name", or a custom attribute
 * key). result: the whole answer {"meta":{count,current_page},"payload":[contacts]}. */
int chatwoot_filter_contacts(struct chatwoot *c, const char *jid, long account,
                             const char *attribute, const char *value, chatwoot_cb cb, void *arg);

/* POST .../contacts (user token) with `contact` (borrowed object: name, email, phone_number
 * (E.164), identifier, additional_attributes, custom_attributes, ...). Email, identifier
 * and phone are unique per account: a duplicate is a permanent 422 "Email has already been
 * taken [email]". result: the created contact (the answer's payload.contact). */
int chatwoot_create_contact(struct chatwoot *c, const char *jid, long account,
                            const json_t *contact, chatwoot_cb cb, void *arg);

/* PATCH .../contacts/{contact_id} (user token) with `fields` (borrowed object).
 * custom_attributes and additional_attributes are SHALLOW-merged into the stored ones
 * (top-level keys overwrite, nested objects are replaced), other fields assigned (§2.7).
 * result: the updated contact (the answer's payload). */
int chatwoot_update_contact(struct chatwoot *c, const char *jid, long account, long contact_id,
                            const json_t *fields, chatwoot_cb cb, void *arg);

/* The content to send so that Chatwoot's Liquid pass stores exactly `text` (new string;
 * caller frees). Liquid has no escape character, so:
 *   - text without '{' is returned as is (no tag can start; code spans become raw blocks
 *     holding plain text);
 *   - otherwise, outside code spans, each '{' followed by '{', '%' or '`' becomes {{ "{" }}
 *     (so no tag starts, and none is formed with the "{% raw %}" Chatwoot inserts before a
 *     code span); code spans are left alone: Chatwoot wraps them in {% raw %} and they come
 *     back verbatim;
 *   - but if a code span (backticks paired left to right as /`(.*?)`/m pairs them) itself
 *     contains "{{" or "{%", a raw block would not be verbatim (an "{% endraw %}" inside ends
 *     it early), so then every backtick also becomes {{ "%60" | url_decode }}: the sent text
 *     holds no backtick, Chatwoot wraps nothing, and Liquid prints the backticks back.
 * The result is always valid Liquid that renders to `text`. (If Liquid is ever not applied,
 * e.g. a Chatwoot older than 3.x, the escapes show.) */
char *chatwoot_escape_liquid(const char *text);

#endif
