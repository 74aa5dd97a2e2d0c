/* llm: a client for OpenAI-compatible chat completions and embeddings (OpenAI itself, a
 * LiteLLM gateway, vLLM, Ollama; facts in APIS.md §5).
 *
 * Endpoint rule (llm_url): trailing slashes are removed from base_url; a base with no path
 * ("http://litellm:4000", "http://localhost:11434") gets "/v1"; a base with a path
 * ("https://api.openai.com/v1", "https://openrouter.ai/api/v1", a gateway's
 * ".../openai") is used as given. Then "/chat/completions" or "/embeddings" is appended.
 * OpenAI, LiteLLM, vLLM and Ollama all serve /v1/chat/completions and /v1/embeddings, so
 * both spellings of their base work.
 *
 * Chat: one POST per call with model, messages, optional temperature, the token cap under
 * the configured name (max_completion_tokens, which reasoning models require, or the
 * older max_tokens some servers still want) and, when the caller wants JSON, a
 * response_format in the configured mode:
 *   LLM_FORMAT_JSON_SCHEMA  {"type":"json_schema","json_schema":{name, schema, strict:true}}
 *                           (structured outputs; JSON mode when the call has no schema);
 *   LLM_FORMAT_JSON_OBJECT  {"type":"json_object"} (JSON mode; the schema is not sent, so
 *                           the prompt must describe it and say "JSON");
 *   LLM_FORMAT_NONE         nothing (servers that reject response_format); the answer is
 *                           still parsed as JSON, tolerating a ```json fence around it.
 *
 * Result contract: a call that got a well-formed completion back SUCCEEDS (err NULL) even
 * when the answer cannot be used; the result then says usable = 0 and why:
 *   finish_reason "length" (token cap hit) or "content_filter", a refusal
 *   (message.refusal), empty content, content that is not a JSON object when JSON was
 *   asked for. The Decide job escalates on that instead of retrying, since a retry would
 *   most likely get the same answer and cost the same tokens.
 *
 * Failures (err != NULL) start from http_failure_classify (http_failure.h) and add:
 *   429 with error.code/type "insufficient_quota" (or LiteLLM's "exceeded your current
 *       quota" text) or type "budget_exceeded"   -> PERMANENT ..::InsufficientQuota (billing)
 *   other 429                                     -> RETRY_AT from retry-after-ms /
 *                                                    Retry-After / llm_provider-retry-after,
 *                                                    else from OpenAI's
 *                                                    x-ratelimit-reset-{requests,tokens}
 *                                                    ("6m0s") of the exhausted limit
 *                                                    (x-ratelimit-remaining-* "0"), else RETRY
 *   408, 409, 5xx                                 -> RETRY (RETRY_AT with a header)
 *   400 context_length_exceeded (OpenAI's code, LiteLLM's ContextWindowExceededError)
 *                                                 -> PERMANENT ..::ContextLengthExceeded
 *   401, 403, 404, other 4xx                      -> PERMANENT, message = error.message
 *   2xx whose body is an error envelope (some gateways): classified as if the status were
 *       error.code when that is an HTTP status (LiteLLM sends "429", "400", ...), else
 *       RETRY ..::BadResponse; 2xx that is not JSON or has no choices -> RETRY BadResponse.
 * LiteLLM's error.code is usually the HTTP status as a string, so the code is never trusted
 * alone: type and message are checked too. Messages read "POST /v1/chat/completions -> HTTP
 * 429: <the service's error.message>". Every answer is logged (debug; info for failures
 * and unusable answers) with the job's jid and the x-litellm-call-id when present.
 *
 * Embeddings: inputs are sent in batches of embedding_batch texts, one batch after the
 * other (each takes its own rate-limit token); vectors are mapped back by each item's
 * "index", never by position. A failed batch fails the whole call with that batch's error
 * (the job retries all of it; embeddings are cheap and idempotent).
 *
 * Not thread-safe: use from the loop thread of the http_client. Free the client only when
 * no call is in flight (after every callback ran; closing the http_client cancels them). */
#ifndef TIERONE_LLM_H
#define TIERONE_LLM_H

#include "http_client.h"
#include "job_error.h"
#include "rate_limit.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

struct llm;

enum llm_format {
    LLM_FORMAT_JSON_SCHEMA = 0, /* structured outputs (OpenAI, LiteLLM, vLLM, Ollama) */
    LLM_FORMAT_JSON_OBJECT,     /* JSON mode only */
    LLM_FORMAT_NONE,            /* no response_format at all */
};

enum llm_token_param {
    LLM_TOKENS_MAX_COMPLETION = 0, /* "max_completion_tokens" (current OpenAI name) */
    LLM_TOKENS_MAX_TOKENS,         /* "max_tokens" (deprecated; older servers) */
};

/* Sentinel for llm_opts.temperature: do not send one (reasoning models accept only their
 * default). */
#define LLM_TEMPERATURE_UNSET (-1.0)

#define LLM_DEFAULT_EMBEDDING_BATCH 64
#define LLM_MAX_EMBEDDING_BATCH     2048 /* OpenAI's cap on inputs per request */

/* Client settings. Strings are copied by llm_new. */
struct llm_opts {
    struct http_client *http;    /* required, borrowed */
    struct rate_limit *limit;    /* borrowed; NULL: no fleet-wide limit */
    const char *base_url;        /* required; see the endpoint rule above */
    const char *api_key;         /* "Authorization: Bearer <key>"; NULL/"": none (local servers) */
    const char *model;           /* chat model (a LiteLLM model group); required for llm_chat */
    const char *embedding_model; /* required for llm_embed */
    enum llm_format format;
    enum llm_token_param token_param;
    unsigned max_tokens;    /* token cap sent under token_param's name; 0: none sent */
    double temperature;     /* 0..2; LLM_TEMPERATURE_UNSET (any negative): not sent */
    uint64_t timeout_ms;    /* total deadline per HTTP request; 0: 30000 */
    size_t embedding_batch; /* texts per embeddings request; 0: 64; capped at 2048 */
    unsigned dimensions;    /* embeddings "dimensions" (text-embedding-3 only); 0: not sent */
    size_t max_body;        /* response size cap; 0: 8 MiB */
};

/* Create a client. Returns NULL with a reason in *err (caller frees; err may be NULL) when
 * http or base_url is missing, base_url is not http(s)://, or a number is out of range. */
struct llm *llm_new(const struct llm_opts *opts, char **err);
/* Free the client (NULL is a no-op). No call may be in flight. */
void llm_free(struct llm *c);

/* The endpoint URL for base_url and path ("/chat/completions"), per the rule above. New
 * string (caller frees), or NULL when base_url is not an http:// or https:// URL. */
char *llm_url(const char *base_url, const char *path);

/* --- chat completions ---------------------------------------------------------------- */

/* One message. role: "system", "developer", "user" or "assistant"; content: text. */
struct llm_message {
    const char *role;
    const char *content;
};

/* One chat call; everything is copied/serialised by llm_chat. */
struct llm_chat_request {
    const struct llm_message *messages; /* at least one */
    size_t nmessages;
    json_t *schema;          /* JSON schema of the answer (borrowed; an object); NULL: none */
    const char *schema_name; /* [a-zA-Z0-9_-]{1,64}; NULL: "answer" */
    int want_json;           /* without a schema: ask for a JSON object anyway (JSON mode) */
    const char *model;       /* NULL or "": the client's model (e.g. a per-inbox override) */
    int has_temperature;     /* 1: send `temperature` below instead of the client's */
    double temperature;      /* 0..2 with has_temperature */
};

/* Why an answer cannot be used. */
enum llm_unusable {
    LLM_USABLE = 0,
    LLM_UNUSABLE_LENGTH,         /* finish_reason "length": cut off at the token cap */
    LLM_UNUSABLE_CONTENT_FILTER, /* finish_reason "content_filter" */
    LLM_UNUSABLE_REFUSAL,        /* message.refusal set (structured outputs) */
    LLM_UNUSABLE_EMPTY,          /* no content (null, "" or blanks; tool calls only) */
    LLM_UNUSABLE_INVALID_JSON,   /* JSON was asked for; content is not a JSON object */
};

struct llm_chat_call; /* one llm_chat request (opaque; see llm_chat_again) */

/* A chat answer. Everything is borrowed and valid only during the callback (json_incref /
 * strdup what you keep). */
struct llm_chat_result {
    int usable;                /* 1: content (and json, when JSON was asked) can be used */
    enum llm_unusable why;     /* LLM_USABLE when usable */
    const char *why_text;      /* human-readable reason ("" when usable) */
    const char *content;       /* message.content, or NULL */
    json_t *json;              /* content parsed (a JSON object) when JSON was asked, or NULL */
    const char *refusal;       /* message.refusal, or NULL */
    const char *finish_reason; /* or NULL when the server sent none */
    const char *model;         /* model that answered (response "model"), or NULL */
    const char *id;            /* response "id", or NULL */
    const char *call_id;       /* x-litellm-call-id response header, or NULL */
    long prompt_tokens, completion_tokens, total_tokens; /* usage; -1 when absent */
    json_t *response;                                    /* the whole response body */
    const struct llm_chat_call *call; /* the request answered (for llm_chat_again) */
};

/* err: NULL on success (res set), else a new error the callback owns (res NULL). */
typedef void (*llm_chat_cb)(struct job_error *err, const struct llm_chat_result *res, void *arg);

/* Ask for a completion. jid names the calling job (logs, rate-limit reservation; may be
 * NULL). Returns 0 and cb runs exactly once later; or -1 (cb never runs, reason logged at
 * warn) when the client has no model or the request is invalid: no messages, an unknown
 * role, NULL content, a schema that is not an object, a bad schema_name. */
int llm_chat(struct llm *c, const char *jid, const struct llm_chat_request *req, llm_chat_cb cb,
             void *arg);

/* Ask the same again: send the request res answers once more, byte for byte (same
 * messages, schema, model and settings; a new rate-limit token), without the caller
 * having kept the messages while the first request was in flight. Only from inside the
 * llm_chat (or llm_chat_again) callback that got res. jid names the calling job. Returns
 * 0 and cb runs exactly once later, or -1 (cb never runs) when res holds no request. */
int llm_chat_again(const struct llm_chat_result *res, const char *jid, llm_chat_cb cb, void *arg);

/* Name of an unusable reason: "usable", "length", "content_filter", "refusal", "empty",
 * "invalid_json". */
const char *llm_unusable_name(enum llm_unusable why);

/* --- embeddings ---------------------------------------------------------------------- */

/* Embedding vectors in input order. */
struct llm_embeddings {
    size_t n;           /* number of inputs */
    size_t dim;         /* floats per vector (the same for all) */
    float *data;        /* n * dim floats; vector i at data + i * dim. The callback may take
                           it (set data to NULL, free() it later); otherwise freed after. */
    const char *model;  /* model the server named in its first answer, or NULL */
    long prompt_tokens; /* summed over batches (-1 when the server sent no usage) */
};

/* err: NULL on success (res set, mutable only to take data), else a new error the
 * callback owns (res NULL). */
typedef void (*llm_embed_cb)(struct job_error *err, struct llm_embeddings *res, void *arg);

/* Embed n texts (copied; each non-empty). Returns 0 and cb runs exactly once later; or
 * -1 (cb never runs, reason logged at warn) when the client has no embedding_model, n is
 * 0 or a text is NULL or empty. */
int llm_embed(struct llm *c, const char *jid, const char *const *texts, size_t n, llm_embed_cb cb,
              void *arg);

#endif
