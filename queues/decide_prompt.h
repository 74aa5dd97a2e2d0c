/* decide_prompt: the pure part of Tierone::Decide (queues/decide.c), testable without I/O:
 * the messages and JSON schema of the one LLM call, the check of the model's reply, the
 * retrieval-only answer, the keyword category heuristic and the fail-safe decision.
 *
 * A decision (turns.decision) is one JSON object:
 *   {"action": "answer"|"escalate", "answer": str, "reason": str,
 *    "category": "question"|"bug"|"feature"|"account"|"billing",
 *    "passage_ids": [int], "by": "llm"|"retrieval"|"failsafe", "model": str (llm only)}
 *
 * Passages (turns.passages, written by Retrieve) are an array of
 *   {"id": int, "score": num, "source": str, "title": str, "heading_path": str,
 *    "content": str}
 * best first.
 *
 * Prompt injection: the customer's words, the contact attributes, the conversation and the
 * passages go to the model inside one JSON document in the user message, introduced as data
 * written by others; the system message (inbox prompt or the built-in persona, then fixed
 * rules the inbox prompt cannot drop) says never to follow instructions found there. The
 * model has no tool and no URL it could act on: its only output is the fixed enum above, so
 * an injection can at worst produce a bad answer (which still has to cite a passage that
 * was given) or an escalation. */
#ifndef TIERONE_DECIDE_PROMPT_H
#define TIERONE_DECIDE_PROMPT_H

#include "llm.h"

#include <jansson.h>
#include <stddef.h>

/* Longest passage quote of a retrieval-only answer, in bytes (cut at a line, word or UTF-8
 * character boundary, with "…" appended). */
#define DECIDE_QUOTE_MAX 1200
/* Caps on what goes into the prompt (bytes; longer text is cut with "…"). */
#define DECIDE_PASSAGE_MAX      4000
#define DECIDE_QUESTION_MAX     8000
#define DECIDE_HISTORY_TEXT_MAX 1000
#define DECIDE_HISTORY_MAX      10 /* messages of recent conversation */
/* Longest answer accepted from the model (bytes); a longer one fails validation. */
#define DECIDE_ANSWER_MAX 8000

/* What the model is shown. Everything borrowed. */
struct decide_input {
    const char *prompt;     /* the inbox's prompt; NULL or "": the built-in persona */
    const json_t *passages; /* array as above (NULL: none) */
    const json_t *contact;  /* the turn's contact object (NULL: none); only its
                               additional_attributes and custom_attributes are shown */
    const json_t *history;  /* array of {"from": "customer"|"agent"|"bot", "text": str},
                               oldest first (decide_prompt_history_*); NULL: none */
    const char *question;   /* the burst's messages joined (required) */
};

/* The messages of one llm_chat call: msg[0] system, msg[1] user. */
struct decide_messages {
    struct llm_message msg[2];
    size_t n;
    char *system, *user; /* owned; msg[].content point here */
};

/* The built-in persona (used when the inbox has no prompt). Static string. */
const char *decide_prompt_persona(void);

/* Build the messages for in into out (decide_messages_free releases them). */
void decide_prompt_messages(const struct decide_input *in, struct decide_messages *out);
void decide_messages_free(struct decide_messages *m);

/* The strict JSON schema of the model's reply (new reference): {action, answer, reason,
 * category, passage_ids}, all required, no other property. Its name for the request is
 * DECIDE_SCHEMA_NAME. */
#define DECIDE_SCHEMA_NAME "support_decision"
json_t *decide_prompt_schema(void);

/* Check the model's reply (the parsed JSON object) against the schema and the passages that
 * were given (the passages as above, or just their ids: decide_prompt_passage_ids).
 * Returns a new decision {action, answer, reason, category, passage_ids, by: "llm"} (model
 * is added by the caller), or NULL with the reason in why (whycap bytes) when the reply is
 * unusable: not an object, a missing or mistyped field, an action or category outside the
 * enum, an empty answer with action "answer", an answer longer than DECIDE_ANSWER_MAX, a
 * passage id that is not an integer. Unknown extra fields are ignored (JSON-object mode
 * cannot forbid them).
 * Usable replies are then held to the rules:
 *   - cited ids that were not given are dropped; an answer left citing none becomes
 *     escalate, reason "the answer cites no passage";
 *   - an answer in category "bug" becomes escalate ("a bug report needs a human"): bugs get
 *     a human and a Linear issue even when a passage matches;
 *   - an escalation with an empty reason gets "the model escalated without a reason".
 * An escalation keeps the model's answer text (a draft for the human). */
json_t *decide_prompt_check_reply(const json_t *reply, const json_t *passages, char *why,
                                  size_t whycap);

/* The ids of passages (array as above; NULL: none) as a new array of integers: all that
 * decide_prompt_check_reply needs of them, far smaller than the passages themselves
 * (passages without an integer id are left out: no reply can cite them). */
json_t *decide_prompt_passage_ids(const json_t *passages);

/* The retrieval-only decision (no LLM) for question and passages (array as above, best
 * first; NULL or empty: none), with the inbox's threshold: the best-scoring passage
 * answers when its score >= threshold (answer = its content quoted as Markdown "> " lines,
 * at most DECIDE_QUOTE_MAX bytes, then "\n\nSource: <source>" and " — <heading_path>" when
 * there is one; passage_ids [its id]); otherwise escalate, reason "no passage in the
 * knowledge base answers this (best score X < threshold Y)". The category comes from
 * decide_prompt_category; a "bug" is always escalated. Returns a new decision with by
 * "retrieval". */
json_t *decide_prompt_retrieval(const char *question, const json_t *passages, double threshold);

/* The category of text by keywords (no LLM), case-insensitive, each keyword matched as a
 * whole word or with a plain English suffix (s, es, ed, d, ing), in this order:
 *   feature: "feature request", "would be nice", "please add", "could you add"
 *   bug:     error, crash, broken, bug, exception, fail, failure, buggy, "500", "stack trace",
 *            "stacktrace", "traceback", "not working", "doesn't work", "does not work"
 *   billing: invoice, refund, charge, billing, "payment", "subscription"
 *   account: password, login, "log in", "sign in", account, "2fa"
 *   else "question". Explicit feature phrases come first ("feature request: nicer error
 * pages" is a feature); then bug, because a bug must reach a human. Static string. */
const char *decide_prompt_category(const char *text);

/* The fail-safe decision: escalate, reason "assistant unavailable: <message>", category
 * "question", by "failsafe". New reference. */
json_t *decide_prompt_failsafe(const char *message);

/* The escalation after two unusable replies: reason "no usable answer from the model
 * (<why>)", category from decide_prompt_category(question), by "llm". New reference. */
json_t *decide_prompt_unusable(const char *question, const char *why, const char *model);

/* Conversation history for the prompt, built oldest first and capped at DECIDE_HISTORY_MAX
 * entries (the oldest are dropped) with each text cut to DECIDE_HISTORY_TEXT_MAX bytes. */
/* Append one entry (from: "customer", "agent" or "bot"; empty text is skipped). */
void decide_prompt_history_add(json_t *history, const char *from, const char *text);
/* From Chatwoot's messages payload (chatwoot_list_messages; any order): the public
 * incoming (customer) and outgoing (agent, or bot when the sender is an agent_bot or the
 * message carries content_attributes.tierone_turn) messages with an id below before_id,
 * oldest first. New array. */
json_t *decide_prompt_history_chatwoot(const json_t *payload, long long before_id);

/* 1 when the decision's action is "answer". */
int decide_is_answer(const json_t *decision);

#endif
