/* fake_chatwoot: an in-memory Chatwoot Application API for tests and demos (APIS.md §2),
 * on fake_http (its own thread; every function here is thread-safe).
 *
 * What it serves, under /api/v1/accounts/{a}/:
 *   GET  conversations/{display_id}                 show (bot token OK)
 *   GET  conversations/{id}/messages[?after=&before=] index (user token only): ascending;
 *        after: up to 100 newer; before: 20 older; both: up to 1000; none: the latest 20
 *   POST conversations/{id}/messages                create (bot OK): increasing ids, keeps
 *        content_attributes (object, or a JSON string that is parsed, invalid -> {}),
 *        echoes echo_id, renders outgoing content as Liquid like Chatwoot (below)
 *   GET/POST conversations/{id}/labels              index / create (bot OK); POST REPLACES
 *   POST conversations/{id}/toggle_status           (bot OK) status / snoozed_until, or a
 *        toggle without status; answers {"meta":{},"payload":{success,conversation_id,
 *        current_status,snoozed_until}}
 *   GET  contacts/search?q=&page=                   ILIKE %q% on name/email/phone, LIKE on
 *        identifier, 15 per page, {"meta":{count,current_page,has_more},"payload":[...]}
 *   POST contacts/filter?page=                      equal_to / not_equal_to / contains /
 *        does_not_contain on name, email, phone_number, identifier or a custom attribute
 *        key, chained by query_operator (and/or); 15 per page
 *   POST contacts                                   unique email (case-insensitive),
 *        identifier and phone; phone E.164; 422 {"message":..,"attributes":[..]}
 *   PATCH/PUT contacts/{id}                         shallow-merges custom_attributes and
 *        additional_attributes, assigns the rest; {"payload":{contact}}
 *
 * Auth as Chatwoot does it (§2.1): the `api_access_token` header (any case; also
 * Api-Access-Token) must equal the bot or the user token, else 401 {"error":"Invalid Access
 * Token"}; without that header (e.g. only `Authorization: Bearer`) Rails falls back to
 * devise and answers 401 {"errors":["You need to sign in or sign up before continuing."]};
 * the bot token on an endpoint not listed as bot-accessible gets 401 {"error":"Access to this
 * endpoint is not authorized for bots"}. Unknown account, conversation or contact: 404
 * {"error":"Resource could not be found"}. A JSON body counts only with Content-Type
 * application/json (as Rails parses it).
 *
 * Liquid: like app/models/concerns/liquidable.rb, outgoing (and template) messages with
 * content get content.gsub(/`(.*?)`/m, '{% raw %}`\1`{% endraw %}') and are rendered as Liquid
 * with drops contact / agent / conversation / inbox / account; a Liquid::Error leaves the
 * content as sent. The model (fake_chatwoot_liquid) follows Liquid 5.4's tokenizer, raw tag,
 * {{ }} variable syntax and error cases (unterminated tags, unknown tags, unclosed blocks);
 * simplified: a tag other than raw / comment renders to nothing and block bodies are kept
 * unevaluated, drops are plain values, filters other than url_decode / upcase / downcase /
 * strip pass the value through, whitespace control ("{{-") trims only text.
 *
 * Left out: the 200-messages-per-minute flood validation (§1.8), attachments, assignment,
 * webhooks, rack-attack (use fake_chatwoot_faults for 429s). */
#ifndef TIERONE_FAKE_CHATWOOT_H
#define TIERONE_FAKE_CHATWOOT_H

#include "fake_fault.h"
#include "fake_http.h"

#include <jansson.h>
#include <stddef.h>

struct fake_chatwoot;

struct fake_chatwoot_opts {
    const char *bot_token;  /* NULL: "bot-token" */
    const char *user_token; /* NULL: "user-token" */
    const char *bot_name;   /* the bot's name (sender, {{ agent.name }}); NULL: "Tierone Bot" */
};

/* Start the fake (opts may be NULL). NULL if it cannot listen. */
struct fake_chatwoot *fake_chatwoot_start(const struct fake_chatwoot_opts *opts);
/* Stop it and free everything (NULL is a no-op). */
void fake_chatwoot_free(struct fake_chatwoot *f);
/* "http://127.0.0.1:PORT" */
const char *fake_chatwoot_url(const struct fake_chatwoot *f);
/* The underlying server: recorded requests (fake_http_count, fake_http_request_at, ...). */
struct fake_http *fake_chatwoot_http(struct fake_chatwoot *f);
/* The fault queue every request consults first (429 / 5xx / garbage / slow / drop). */
struct fake_faults *fake_chatwoot_faults(struct fake_chatwoot *f);

/* ---- seeding (creates the account on first use) --------------------------------------- */

/* A conversation `display_id` in `account` with status ("open", "pending", "resolved",
 * "snoozed"; NULL: "pending"), inbox_id and contact_id (0: none; see add_contact).
 * Replaces one with the same ids. */
void fake_chatwoot_add_conversation(struct fake_chatwoot *f, long account, long display_id,
                                    const char *status, long inbox_id, long contact_id);
/* A contact from a JSON object text (name, email, phone_number, identifier,
 * custom_attributes, ...), stored as given (no validation). Returns its id, -1 if the text is
 * not an object. */
long fake_chatwoot_add_contact(struct fake_chatwoot *f, long account, const char *json);
/* A message stored as given (no Liquid): message_type 0 incoming, 1 outgoing, 2 activity.
 * Returns its id, or -1 for an unknown conversation. */
long fake_chatwoot_add_message(struct fake_chatwoot *f, long account, long display_id,
                               int message_type, const char *content, int private_note);
/* Set a conversation's labels. */
void fake_chatwoot_set_labels(struct fake_chatwoot *f, long account, long display_id,
                              const char *const *labels, size_t n);

/* ---- inspection (copies: caller json_decref / free; NULL when unknown) ---------------- */

/* The conversation's messages, oldest first, as the API shows them. */
json_t *fake_chatwoot_messages(struct fake_chatwoot *f, long account, long display_id);
/* Its labels (array of strings). */
json_t *fake_chatwoot_labels(struct fake_chatwoot *f, long account, long display_id);
/* Its status. */
char *fake_chatwoot_status(struct fake_chatwoot *f, long account, long display_id);
/* Its snoozed_until as unix seconds (0 when none, -1 when unknown). */
long long fake_chatwoot_snoozed_until(struct fake_chatwoot *f, long account, long display_id);
/* The account's contacts, in id order. */
json_t *fake_chatwoot_contacts(struct fake_chatwoot *f, long account);

/* ---- the Liquid model ----------------------------------------------------------------- */

/* What Chatwoot would store for outgoing `content` (new string): the backtick gsub, then
 * Liquid parse + render with `drops` ({"contact":{"name":..},...}; NULL: a contact named
 * "Alice Doe", agent "Tierone Bot", conversation 1, inbox "Support", account "Acme"), or
 * `content` unchanged on a Liquid syntax error. */
char *fake_chatwoot_liquid(const char *content, const json_t *drops);

#endif
