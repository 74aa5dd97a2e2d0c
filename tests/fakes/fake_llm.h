/* fake_llm: a fake OpenAI-compatible server (OpenAI / LiteLLM, APIS.md §5) for tests, the
 * demo and pipeline tests, built on fake_http.
 *
 * Serves POST /v1/chat/completions and POST /v1/embeddings, and the same without /v1
 * (LiteLLM's bare paths). Checks what the real API checks, answering with OpenAI's error
 * envelope {"error":{"message","type","param","code"}}:
 *   - Authorization "Bearer <key>" exactly when a key is configured (401 invalid_api_key);
 *   - Content-Type application/json and a JSON object body (400);
 *   - model (a string; with opts.models set, one of them, else 404 model_not_found);
 *   - chat: messages non-empty, each {role: system|developer|user|assistant|tool, content:
 *     string|array|null (null only for assistant)}; temperature 0..2; max_tokens /
 *     max_completion_tokens positive integers; response_format {type: text | json_object |
 *     json_schema with json_schema {name [a-zA-Z0-9_-]{1,64}, schema object, strict bool}};
 *     json_object needs the word "json" in the messages (OpenAI's rule);
 *   - with opts.reasoning: max_tokens is rejected ("Unsupported parameter: 'max_tokens' is
 *     not supported with this model. Use 'max_completion_tokens' instead.") and a
 *     temperature other than 1 too (unsupported_value), as o-series / gpt-5 models do;
 *   - embeddings: input a non-empty string or a non-empty array (<= 2048) of non-empty
 *     strings; encoding_format absent or "float"; dimensions a positive integer.
 *
 * Chat answers come from a queue of scripted replies (fake_llm_push_reply), else the
 * handler (fake_llm_set_handler), else a default: content "{}" when JSON was asked for,
 * "OK" otherwise. Embeddings are deterministic (fake_llm_embedding) with dimensions (or
 * opts.dim) floats, returned in reversed index order so clients must map by index.
 * Faults (fake_llm_faults) take precedence over everything, before the auth check.
 *
 * Thread-safe: the server runs on fake_http's thread; every function here may be called
 * from the test thread. */
#ifndef TIERONE_FAKE_LLM_H
#define TIERONE_FAKE_LLM_H

#include "fake_fault.h"
#include "fake_http.h"

#include <jansson.h>
#include <stddef.h>

struct fake_llm;

struct fake_llm_opts {
    const char *api_key;       /* NULL: no Authorization check */
    const char *const *models; /* NULL-terminated list of known models; NULL: any */
    int reasoning;             /* behave like a reasoning model (see above) */
    size_t dim;                /* embedding length without "dimensions"; 0: 8 */
    int ordered;               /* 1: embeddings in index order (default reversed) */
};

/* One scripted chat answer. Strings are copied by push; a handler's strings must stay
 * valid until it returns (set free_content to have the fake free() content afterwards). */
struct fake_llm_reply {
    const char *content;       /* NULL: JSON null */
    const char *finish_reason; /* NULL: "stop" */
    const char *refusal;       /* NULL: JSON null */
    const char *model;         /* NULL: the requested model */
    long prompt_tokens;        /* 0: a count derived from the request */
    long completion_tokens;    /* 0: a count derived from the content */
    const char *call_id;       /* x-litellm-call-id header; NULL: none */
    const char *header;        /* one extra "Name: value" header; NULL: none */
    int no_usage;              /* 1: leave usage out */
    int free_content;          /* handler only: the fake free()s content after use */
};

/* Answer a chat request (body borrowed, already validated) by filling reply. Runs on the
 * fake's thread. */
typedef void (*fake_llm_handler)(const json_t *request, struct fake_llm_reply *reply, void *arg);

/* Start a fake (opts may be NULL). Returns NULL if it cannot listen. */
struct fake_llm *fake_llm_start(const struct fake_llm_opts *opts);
/* Stop and free everything (NULL is a no-op). */
void fake_llm_free(struct fake_llm *f);
/* "http://127.0.0.1:PORT" (no /v1): valid until fake_llm_free. */
const char *fake_llm_url(struct fake_llm *f);
/* The underlying server (request records, fake_http_wait, connections). */
struct fake_http *fake_llm_http(struct fake_llm *f);
/* The fault queue. */
struct fake_faults *fake_llm_faults(struct fake_llm *f);

/* Queue a chat answer (copied) for the next chat request that passes validation. */
void fake_llm_push_reply(struct fake_llm *f, const struct fake_llm_reply *r);
/* Use handler for chat requests when the queue is empty (NULL: the default answer). */
void fake_llm_set_handler(struct fake_llm *f, fake_llm_handler handler, void *arg);

/* A handler that plays a support model for tierone's Decide step: it reads the JSON
 * document after the first '{' of the last user message ({"question", "passages": [{"id",
 * ...}]}) and escalates a question that mentions a crash (category bug, reason "the
 * customer reports a crash") or comes with no passage; it answers the rest citing the first
 * passage. arg is unused. For fake_llm_set_handler. */
void fake_llm_support_model(const json_t *request, struct fake_llm_reply *reply, void *arg);

/* Requests received so far (all paths, rejected ones and faults included). */
size_t fake_llm_count(struct fake_llm *f);
/* Chat / embeddings requests answered with 200. */
size_t fake_llm_chat_count(struct fake_llm *f);
size_t fake_llm_embedding_count(struct fake_llm *f);
/* The i-th request's body parsed as JSON (new reference), or NULL when there is no such
 * request or its body is not JSON. */
json_t *fake_llm_request_json(struct fake_llm *f, size_t i);
/* The i-th request as received (path, headers, raw body), or NULL. */
const struct fake_http_request *fake_llm_request(struct fake_llm *f, size_t i);

/* The fake's embedding of text: dim floats from a hash of the text, unit length. */
void fake_llm_embedding(const char *text, size_t dim, float *out);

#endif
