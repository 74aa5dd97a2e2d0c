/* llm: OpenAI-compatible chat completions and embeddings over service_call (APIS.md §5).
 *
 * A chat call: validate -> build the JSON body -> service_call -> refine the generic
 * verdict (quota, context length, 409, error envelopes in a 2xx) -> read choices[0] ->
 * decide whether the answer is usable -> callback.
 * An embeddings call: the same per batch, one batch after the other, each batch's vectors
 * written into one array at (batch start + item index). */
#include "llm.h"

#include "buf.h"
#include "clock.h"
#include "log.h"
#include "service.h"
#include "utf8.h"
#include "xalloc.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define LLM_SERVICE "LLM"

struct llm {
    struct service svc;
    char *chat_url, *embed_url;
    char *chat_what, *embed_what; /* "POST /v1/chat/completions" */
    char *auth;                   /* "Authorization: Bearer ..." or NULL */
    char *model, *embedding_model;
    enum llm_format format;
    enum llm_token_param token_param;
    unsigned max_tokens;
    double temperature;
    size_t embedding_batch;
    unsigned dimensions;
};

/* --- URLs and the client --------------------------------------------------------------- */

/* Length of "http://" / "https://" at the start of u, or 0. */
static size_t llm_scheme_len(const char *u)
{
    if (strncasecmp(u, "http://", 7) == 0)
        return 7;
    if (strncasecmp(u, "https://", 8) == 0)
        return 8;
    return 0;
}

char *llm_url(const char *base_url, const char *path)
{
    size_t skip = base_url ? llm_scheme_len(base_url) : 0;
    if (!skip || !base_url[skip] || base_url[skip] == '/')
        return NULL;
    size_t len = strlen(base_url);
    while (len > skip && base_url[len - 1] == '/')
        len--;
    size_t host_end = skip + strcspn(base_url + skip, "/?#");
    const char *v1 = host_end >= len ? "/v1" : "";
    return xasprintf("%.*s%s%s", (int)len, base_url, v1, path);
}

/* "POST <path of url>" for messages. */
static char *llm_what(const char *url)
{
    const char *p = url + llm_scheme_len(url);
    p += strcspn(p, "/");
    return xasprintf("POST %s", *p ? p : "/");
}

struct llm *llm_new(const struct llm_opts *o, char **err)
{
    const char *why = NULL;
    if (!o->http)
        why = "no http client";
    else if (!o->base_url || !*o->base_url)
        why = "no base URL";
    else if (isnan(o->temperature) || o->temperature > 2.0)
        why = "temperature must be between 0 and 2";
    char *chat_url = why ? NULL : llm_url(o->base_url, "/chat/completions");
    if (!why && !chat_url)
        why = "base URL must be an http:// or https:// URL with a host";
    if (why) {
        if (err)
            *err = xasprintf("llm: %s", why);
        return NULL;
    }
    struct llm *c = xcalloc(1, sizeof *c);
    c->svc.http = o->http;
    c->svc.limit = o->limit;
    c->svc.policy.service = LLM_SERVICE;
    c->svc.timeout_ms = o->timeout_ms;
    c->svc.max_body = o->max_body;
    c->chat_url = chat_url;
    c->embed_url = llm_url(o->base_url, "/embeddings");
    c->chat_what = llm_what(c->chat_url);
    c->embed_what = llm_what(c->embed_url);
    if (o->api_key && *o->api_key)
        c->auth = xasprintf("Authorization: Bearer %s", o->api_key);
    c->model = o->model && *o->model ? xstrdup(o->model) : NULL;
    c->embedding_model =
        o->embedding_model && *o->embedding_model ? xstrdup(o->embedding_model) : NULL;
    c->format = o->format;
    c->token_param = o->token_param;
    c->max_tokens = o->max_tokens;
    c->temperature = o->temperature < 0 ? LLM_TEMPERATURE_UNSET : o->temperature;
    c->embedding_batch = o->embedding_batch ? o->embedding_batch : LLM_DEFAULT_EMBEDDING_BATCH;
    if (c->embedding_batch > LLM_MAX_EMBEDDING_BATCH)
        c->embedding_batch = LLM_MAX_EMBEDDING_BATCH;
    c->dimensions = o->dimensions;
    return c;
}

void llm_free(struct llm *c)
{
    if (!c)
        return;
    free(c->chat_url);
    free(c->embed_url);
    free(c->chat_what);
    free(c->embed_what);
    if (c->auth) {
        memset(c->auth, 0, strlen(c->auth));
        free(c->auth);
    }
    free(c->model);
    free(c->embedding_model);
    free(c);
}

/* POST body to url through service_call. */
static void llm_post(struct llm *c, const char *url, const char *what, const char *jid,
                     const char *body, service_cb cb, void *arg)
{
    const char *headers[4] = {"Content-Type: application/json", "Accept: application/json",
                              "Expect:", NULL};
    size_t nh = 3;
    if (c->auth)
        headers[nh++] = c->auth;
    struct service_request req = {
        .method = "POST",
        .url = url,
        .headers = headers,
        .nheaders = nh,
        .body = body,
        .body_len = strlen(body),
        .what = what,
        .jid = jid,
    };
    service_call(&c->svc, &req, cb, arg);
}

/* --- failures -------------------------------------------------------------------------- */

/* The parts of an OpenAI error envelope {"error":{message,type,code,param}} (borrowed;
 * "" when absent). code may be a string or, from some gateways, a number. */
struct llm_api_error {
    const char *message, *type, *code;
    char code_buf[32];
};

static const char *llm_json_str(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "";
}

/* 1 when body holds an error envelope (fills e), else 0. */
static int llm_api_error_read(json_t *body, struct llm_api_error *e)
{
    memset(e, 0, sizeof *e);
    e->message = e->type = e->code = "";
    json_t *err = json_object_get(body, "error");
    if (!json_is_object(err))
        return 0;
    e->message = llm_json_str(err, "message");
    e->type = llm_json_str(err, "type");
    json_t *code = json_object_get(err, "code");
    if (json_is_string(code)) {
        e->code = json_string_value(code);
    } else if (json_is_integer(code)) {
        snprintf(e->code_buf, sizeof e->code_buf, "%lld", (long long)json_integer_value(code));
        e->code = e->code_buf;
    }
    return 1;
}

/* LiteLLM passes the provider's message on inside its own ("litellm.RateLimitError: ...
 * OpenAIException - You exceeded your current quota ..."), with code "429". */
static int llm_is_quota(const struct llm_api_error *e)
{
    return !strcmp(e->code, "insufficient_quota") || !strcmp(e->type, "insufficient_quota") ||
           !strcmp(e->type, "budget_exceeded") || strstr(e->message, "insufficient_quota") ||
           strstr(e->message, "exceeded your current quota");
}

static int llm_is_context_length(const struct llm_api_error *e)
{
    return !strcmp(e->code, "context_length_exceeded") ||
           strstr(e->message, "context_length_exceeded") ||
           strstr(e->message, "ContextWindowExceededError") ||
           strstr(e->message, "maximum context length");
}

static void llm_error_recast(struct job_error *err, enum job_err_kind kind, const char *kind_name)
{
    err->kind = kind;
    err->retry_at = 0;
    free(err->error_class);
    err->error_class = xasprintf("Tierone::" LLM_SERVICE "::%s", kind_name);
}

/* An OpenAI reset duration ("20ms", "1s", "6m0s", "1h2m3.5s") in seconds, or -1. */
static double llm_duration_s(const char *s)
{
    double total = 0;
    if (!s || !*s)
        return -1;
    while (*s) {
        char *end;
        double v = strtod(s, &end);
        if (end == s || !isfinite(v) || v < 0)
            return -1;
        if (!strncmp(end, "ms", 2)) {
            total += v / 1000.0;
            end += 2;
        } else if (*end == 'h' || *end == 'm' || *end == 's') {
            total += v * (*end == 'h' ? 3600.0 : *end == 'm' ? 60.0 : 1.0);
            end++;
        } else {
            return -1;
        }
        s = end;
    }
    return total;
}

/* For a 429 without Retry-After: when OpenAI's x-ratelimit-remaining-requests or -tokens
 * is 0, the wall time its x-ratelimit-reset-* says the window refills; else 0. */
static double llm_ratelimit_reset(const struct http_response *resp, double now_s)
{
    static const char *const kinds[] = {"requests", "tokens"};
    double wait = -1;
    for (size_t i = 0; i < 2; i++) {
        char name[64];
        snprintf(name, sizeof name, "x-ratelimit-remaining-%s", kinds[i]);
        const char *rem = http_response_header(resp, name);
        if (!rem || strcmp(rem, "0") != 0)
            continue;
        snprintf(name, sizeof name, "x-ratelimit-reset-%s", kinds[i]);
        double d = llm_duration_s(http_response_header(resp, name));
        if (d > wait)
            wait = d;
    }
    if (wait < 0)
        return 0;
    return now_s + (wait > HTTP_FAILURE_MAX_WAIT_S ? HTTP_FAILURE_MAX_WAIT_S : wait);
}

/* Apply the LLM rules to the generic verdict for a complete non-2xx response. */
static void llm_error_refine(struct job_error *err, const struct http_response *resp)
{
    if (resp->result != HTTP_OK)
        return;
    json_t *body = json_loadb(resp->body, resp->body_len, JSON_DECODE_ANY, NULL);
    struct llm_api_error e;
    llm_api_error_read(body, &e);
    double at;
    if (resp->status == 429 && llm_is_quota(&e))
        llm_error_recast(err, JOB_ERR_PERMANENT, "InsufficientQuota");
    else if (resp->status == 400 && llm_is_context_length(&e))
        llm_error_recast(err, JOB_ERR_PERMANENT, "ContextLengthExceeded");
    else if (resp->status == 429 && err->kind == JOB_ERR_RETRY &&
             (at = llm_ratelimit_reset(resp, clock_wall_s())) > 0) {
        err->kind = JOB_ERR_RETRY_AT;
        err->retry_at = at;
    } else if (resp->status == 409 && err->kind == JOB_ERR_PERMANENT)
        llm_error_recast(err, JOB_ERR_RETRY, "Conflict"); /* the OpenAI SDKs retry 409 */
    json_decref(body);
}

static struct job_error *llm_bad_response(const char *what, const char *reason, const char *detail)
{
    return job_error_new(JOB_ERR_RETRY, "Tierone::" LLM_SERVICE "::BadResponse", "%s -> %s%s", what,
                         reason, detail ? detail : "");
}

/* A 2xx whose body is an error envelope: classify it as the status error.code names when
 * it names one (LiteLLM: "429"), else as a bad response. New error. */
static struct job_error *llm_envelope_error(const struct http_response *resp, json_t *body,
                                            const char *what, double now_s)
{
    struct llm_api_error e;
    llm_api_error_read(body, &e);
    char *end = NULL;
    long code = strtol(e.code, &end, 10);
    if (*e.code && end && !*end && code >= 400 && code <= 599) {
        struct http_response r = *resp;
        r.status = code;
        struct http_failure_policy p = {.service = LLM_SERVICE};
        struct job_error *err = http_failure_classify(&r, &p, what, now_s);
        llm_error_refine(err, &r);
        return err;
    }
    char *text = http_failure_error_text(resp->body, resp->body_len);
    struct job_error *err = llm_bad_response(what, "HTTP 2xx with an error: ", text);
    free(text);
    return err;
}

/* Turn a finished request into the response body or an error (exactly one is non-NULL). */
static json_t *llm_response_body(struct llm *c, struct job_error **errp, struct http_response *resp,
                                 const char *what)
{
    if (*errp) {
        if (resp)
            llm_error_refine(*errp, resp);
        return NULL;
    }
    json_t *body = service_parse_json(&c->svc, resp, what, errp);
    if (!body)
        return NULL;
    if (json_is_object(json_object_get(body, "error")) && !json_object_get(body, "choices") &&
        !json_object_get(body, "data")) {
        *errp = llm_envelope_error(resp, body, what, clock_wall_s());
        json_decref(body);
        return NULL;
    }
    if (!json_is_object(body)) {
        *errp = llm_bad_response(what, "the answer is not a JSON object", NULL);
        json_decref(body);
        return NULL;
    }
    return body;
}

/* --- chat ------------------------------------------------------------------------------ */

struct llm_chat_call {
    struct llm *c;
    char *jid;
    int want_json;
    llm_chat_cb cb;
    void *arg;
    const char *sent; /* during the callback: the request body as sent (the HTTP client's) */
};

static const char *const llm_roles[] = {"system", "developer", "user", "assistant", NULL};

static int llm_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 64)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '-')
            return 0;
    return 1;
}

/* NULL when req is valid for c, else the reason (static). */
static const char *llm_chat_check(const struct llm *c, const struct llm_chat_request *req)
{
    if (!c->model && !(req->model && *req->model))
        return "no chat model configured";
    const char *model = req->model && *req->model ? req->model : c->model;
    if (utf8_check(model, strlen(model), NULL) != 0)
        return "the model name is not valid UTF-8";
    if (req->has_temperature &&
        (isnan(req->temperature) || req->temperature < 0 || req->temperature > 2.0))
        return "temperature must be between 0 and 2";
    if (!req->messages || req->nmessages == 0)
        return "no messages";
    for (size_t i = 0; i < req->nmessages; i++) {
        const struct llm_message *m = &req->messages[i];
        if (!m->content)
            return "a message has no content";
        if (utf8_check(m->content, strlen(m->content), NULL) != 0)
            return "a message is not valid UTF-8";
        int known = 0;
        for (size_t k = 0; m->role && llm_roles[k]; k++)
            known |= !strcmp(m->role, llm_roles[k]);
        if (!known)
            return "a message has an unknown role";
    }
    if (req->schema && !json_is_object(req->schema))
        return "the schema is not a JSON object";
    if (req->schema_name && !llm_name_ok(req->schema_name))
        return "the schema name must match [a-zA-Z0-9_-]{1,64}";
    return NULL;
}

/* response_format for req under c's mode, or NULL for none. New reference. */
static json_t *llm_response_format(const struct llm *c, const struct llm_chat_request *req)
{
    if (c->format == LLM_FORMAT_NONE || (!req->schema && !req->want_json))
        return NULL;
    if (c->format == LLM_FORMAT_JSON_OBJECT || !req->schema)
        return json_pack("{s:s}", "type", "json_object");
    return json_pack("{s:s, s:{s:s, s:O, s:b}}", "type", "json_schema", "json_schema", "name",
                     req->schema_name ? req->schema_name : "answer", "schema", req->schema,
                     "strict", 1);
}

/* The request body (new string): {model, messages, temperature?, max_tokens?,
 * response_format?}. Written straight into a buffer rather than built as jansson objects
 * and dumped: the messages carry the prompt and its passages (a few kB a call), and
 * jansson's dump walks them a code point at a time (llm_chat_check made sure they are
 * UTF-8). */
static char *llm_chat_body(const struct llm *c, const struct llm_chat_request *req)
{
    struct buf b = BUF_INIT;
    const char *model = req->model && *req->model ? req->model : c->model;
    buf_puts(&b, "{\"model\":");
    buf_json_string(&b, model, strlen(model));
    buf_puts(&b, ",\"messages\":[");
    for (size_t i = 0; i < req->nmessages; i++) {
        const struct llm_message *m = &req->messages[i];
        buf_puts(&b, i ? ",{\"role\":" : "{\"role\":");
        buf_json_string(&b, m->role, strlen(m->role));
        buf_puts(&b, ",\"content\":");
        buf_json_string(&b, m->content, strlen(m->content));
        buf_puts(&b, "}");
    }
    buf_puts(&b, "]");
    if (req->has_temperature || c->temperature >= 0) {
        buf_puts(&b, ",\"temperature\":");
        buf_json_real(&b, req->has_temperature ? req->temperature : c->temperature, 10);
    }
    if (c->max_tokens)
        buf_printf(&b, ",\"%s\":%lld",
                   c->token_param == LLM_TOKENS_MAX_TOKENS ? "max_tokens" : "max_completion_tokens",
                   (long long)c->max_tokens);
    json_t *rf = llm_response_format(c, req);
    if (rf) {
        char *text = json_dumps(rf, JSON_COMPACT);
        buf_puts(&b, ",\"response_format\":");
        buf_puts(&b, text);
        free(text);
        json_decref(rf);
    }
    buf_puts(&b, "}");
    return buf_steal(&b);
}

static void llm_chat_on_response(struct job_error *err, struct http_response *resp, void *arg);

int llm_chat(struct llm *c, const char *jid, const struct llm_chat_request *req, llm_chat_cb cb,
             void *arg)
{
    const char *why = llm_chat_check(c, req);
    if (why) {
        log_job(LOG_WARN, jid, NULL, "llm chat not sent: %s", why);
        return -1;
    }
    char *body = llm_chat_body(c, req);
    struct llm_chat_call *call = xcalloc(1, sizeof *call);
    call->c = c;
    call->jid = xstrdup(jid);
    call->want_json = req->schema || req->want_json;
    call->cb = cb;
    call->arg = arg;
    llm_post(c, c->chat_url, c->chat_what, jid, body, llm_chat_on_response, call);
    free(body);
    return 0;
}

int llm_chat_again(const struct llm_chat_result *res, const char *jid, llm_chat_cb cb, void *arg)
{
    const struct llm_chat_call *old = res ? res->call : NULL;
    if (!old || !old->sent)
        return -1;
    struct llm *c = old->c;
    struct llm_chat_call *call = xcalloc(1, sizeof *call);
    call->c = c;
    call->jid = xstrdup(jid);
    call->want_json = old->want_json;
    call->cb = cb;
    call->arg = arg;
    llm_post(c, c->chat_url, c->chat_what, jid, old->sent, llm_chat_on_response, call);
    return 0;
}

const char *llm_unusable_name(enum llm_unusable why)
{
    switch (why) {
    case LLM_USABLE:
        return "usable";
    case LLM_UNUSABLE_LENGTH:
        return "length";
    case LLM_UNUSABLE_CONTENT_FILTER:
        return "content_filter";
    case LLM_UNUSABLE_REFUSAL:
        return "refusal";
    case LLM_UNUSABLE_EMPTY:
        return "empty";
    case LLM_UNUSABLE_INVALID_JSON:
        return "invalid_json";
    }
    return "unknown";
}

static int llm_blank(const char *s)
{
    while (s && *s && isspace((unsigned char)*s))
        s++;
    return !s || !*s;
}

/* content parsed as a JSON object, allowing blanks and one ```json fence around it; NULL
 * with the reason in why (new string). */
static json_t *llm_parse_content(const char *s, char **why)
{
    json_error_t je;
    json_t *j = json_loads(s, JSON_DECODE_ANY, &je);
    if (!j) {
        const char *p = s + strspn(s, " \t\r\n");
        const char *end = s + strlen(s);
        while (end > p && isspace((unsigned char)end[-1]))
            end--;
        if (end - p >= 6 && !strncmp(p, "```", 3) && !strncmp(end - 3, "```", 3)) {
            p += 3;
            p += strcspn(p, "\n"); /* the fence's info string ("json") */
            j = json_loadb(p, (size_t)(end - 3 - p), JSON_DECODE_ANY, NULL);
        }
    }
    if (j && !json_is_object(j)) {
        json_decref(j);
        *why = xstrdup("content is JSON but not an object");
        return NULL;
    }
    if (!j)
        *why = xasprintf("content is not valid JSON: %s", je.text);
    return j;
}

/* Fill in res from choices[0]; json (new reference) when parsed; *why_text new string. */
static void llm_chat_judge(const struct llm_chat_call *call, struct llm_chat_result *res,
                           json_t **json, char **why_text)
{
    const struct llm *c = call->c;
    *json = NULL;
    *why_text = NULL;
    if (res->refusal && *res->refusal) {
        res->why = LLM_UNUSABLE_REFUSAL;
        *why_text = xasprintf("the model refused: %s", res->refusal);
    } else if (res->finish_reason && !strcmp(res->finish_reason, "content_filter")) {
        res->why = LLM_UNUSABLE_CONTENT_FILTER;
        *why_text = xstrdup("finish_reason content_filter: the answer was filtered");
    } else if (res->finish_reason && !strcmp(res->finish_reason, "length")) {
        res->why = LLM_UNUSABLE_LENGTH;
        *why_text = xasprintf("finish_reason length: the answer was cut off at %s %u",
                              c->token_param == LLM_TOKENS_MAX_TOKENS ? "max_tokens"
                                                                      : "max_completion_tokens",
                              c->max_tokens);
    } else if (llm_blank(res->content)) {
        res->why = LLM_UNUSABLE_EMPTY;
        *why_text = xasprintf("empty content (finish_reason %s)",
                              res->finish_reason ? res->finish_reason : "none");
    } else if (call->want_json) {
        *json = llm_parse_content(res->content, why_text);
        if (!*json)
            res->why = LLM_UNUSABLE_INVALID_JSON;
    }
    res->json = *json;
    res->usable = res->why == LLM_USABLE;
    res->why_text = *why_text ? *why_text : "";
}

static long llm_usage(json_t *usage, const char *key)
{
    json_t *v = json_object_get(usage, key);
    return json_is_integer(v) ? (long)json_integer_value(v) : -1;
}

/* Read a completion; NULL or an error. */
static struct job_error *llm_chat_read(json_t *body, struct llm_chat_result *res, const char *what)
{
    json_t *choice = json_array_get(json_object_get(body, "choices"), 0);
    json_t *msg = json_object_get(choice, "message");
    if (!json_is_object(msg))
        return llm_bad_response(what, "no choices[0].message in the answer", NULL);
    json_t *content = json_object_get(msg, "content");
    if (content && !json_is_string(content) && !json_is_null(content))
        return llm_bad_response(what, "choices[0].message.content is not a string", NULL);
    res->content = json_string_value(content);
    res->refusal = json_string_value(json_object_get(msg, "refusal"));
    res->finish_reason = json_string_value(json_object_get(choice, "finish_reason"));
    res->model = json_string_value(json_object_get(body, "model"));
    res->id = json_string_value(json_object_get(body, "id"));
    json_t *usage = json_object_get(body, "usage");
    res->prompt_tokens = llm_usage(usage, "prompt_tokens");
    res->completion_tokens = llm_usage(usage, "completion_tokens");
    res->total_tokens = llm_usage(usage, "total_tokens");
    res->response = body;
    return NULL;
}

static void llm_chat_on_response(struct job_error *err, struct http_response *resp, void *arg)
{
    struct llm_chat_call *call = arg;
    struct llm *c = call->c;
    const char *call_id = resp ? http_response_header(resp, "x-litellm-call-id") : NULL;
    json_t *body = llm_response_body(c, &err, resp, c->chat_what);
    struct llm_chat_result res = {.call_id = call_id, .call = call};
    call->sent = resp ? resp->request_body : NULL;
    if (body)
        err = llm_chat_read(body, &res, c->chat_what);
    if (err) {
        log_job(LOG_INFO, call->jid, NULL, "llm chat failed (%s, call_id %s): %s",
                job_error_kind_name(err->kind), call_id ? call_id : "-", err->error_message);
        call->cb(err, NULL, call->arg);
    } else {
        json_t *json;
        char *why_text;
        llm_chat_judge(call, &res, &json, &why_text);
        log_job(res.usable ? LOG_DEBUG : LOG_INFO, call->jid, NULL,
                "llm chat: model %s, finish_reason %s, tokens %ld/%ld, call_id %s%s%s",
                res.model ? res.model : "-", res.finish_reason ? res.finish_reason : "-",
                res.prompt_tokens, res.completion_tokens, call_id ? call_id : "-",
                res.usable ? "" : ", unusable: ", res.why_text);
        call->cb(NULL, &res, call->arg);
        json_decref(json);
        free(why_text);
    }
    json_decref(body);
    free(call->jid);
    free(call);
}

/* --- embeddings ------------------------------------------------------------------------ */

struct llm_embed_call {
    struct llm *c;
    char *jid;
    char **texts;
    size_t n;
    size_t start, count; /* the batch in flight */
    struct llm_embeddings res;
    char *model;
    unsigned char *seen; /* per item of the batch in flight */
    llm_embed_cb cb;
    void *arg;
};

static void llm_embed_on_response(struct job_error *err, struct http_response *resp, void *arg);

static void llm_embed_send(struct llm_embed_call *call)
{
    struct llm *c = call->c;
    call->count = call->n - call->start;
    if (call->count > c->embedding_batch)
        call->count = c->embedding_batch;
    json_t *input = json_array();
    for (size_t i = 0; i < call->count; i++)
        json_array_append_new(input, json_string(call->texts[call->start + i]));
    json_t *body = json_pack("{s:s, s:o, s:s}", "model", c->embedding_model, "input", input,
                             "encoding_format", "float");
    if (c->dimensions)
        json_object_set_new(body, "dimensions", json_integer(c->dimensions));
    char *s = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    llm_post(c, c->embed_url, c->embed_what, call->jid, s, llm_embed_on_response, call);
    free(s);
}

int llm_embed(struct llm *c, const char *jid, const char *const *texts, size_t n, llm_embed_cb cb,
              void *arg)
{
    const char *why = NULL;
    if (!c->embedding_model)
        why = "no embedding model configured";
    else if (n == 0 || !texts)
        why = "no input";
    for (size_t i = 0; !why && i < n; i++)
        if (!texts[i] || !*texts[i])
            why = "an input text is empty";
    if (why) {
        log_job(LOG_WARN, jid, NULL, "llm embeddings not sent: %s", why);
        return -1;
    }
    struct llm_embed_call *call = xcalloc(1, sizeof *call);
    call->c = c;
    call->jid = xstrdup(jid);
    call->texts = xcalloc(n, sizeof *call->texts);
    for (size_t i = 0; i < n; i++)
        call->texts[i] = xstrdup(texts[i]);
    call->n = n;
    call->res.n = n;
    call->res.prompt_tokens = -1;
    call->cb = cb;
    call->arg = arg;
    llm_embed_send(call);
    return 0;
}

static void llm_embed_call_free(struct llm_embed_call *call)
{
    for (size_t i = 0; i < call->n; i++)
        free(call->texts[i]);
    free(call->texts);
    free(call->res.data);
    free(call->model);
    free(call->seen);
    free(call->jid);
    free(call);
}

/* Store one data[] item of the batch; NULL or an error. */
static struct job_error *llm_embed_item(struct llm_embed_call *call, json_t *item)
{
    const char *what = call->c->embed_what;
    json_t *idx = json_object_get(item, "index");
    json_t *vec = json_object_get(item, "embedding");
    if (!json_is_integer(idx) || !json_is_array(vec) || json_array_size(vec) == 0)
        return llm_bad_response(what, "an item has no index or embedding", NULL);
    json_int_t i = json_integer_value(idx);
    if (i < 0 || (size_t)i >= call->count || call->seen[i])
        return llm_bad_response(what, "an item's index is out of range or repeated", NULL);
    call->seen[i] = 1;
    size_t dim = json_array_size(vec);
    if (!call->res.data) {
        if (call->c->dimensions && dim != call->c->dimensions) {
            struct job_error *e = llm_bad_response(what,
                                                   "vectors do not have the configured "
                                                   "dimensions (the model ignores them?)",
                                                   NULL);
            e->kind = JOB_ERR_PERMANENT;
            return e;
        }
        call->res.dim = dim;
        call->res.data = xcalloc(call->n * dim, sizeof(float));
    } else if (dim != call->res.dim) {
        return llm_bad_response(what, "vectors of different lengths", NULL);
    }
    float *out = call->res.data + (call->start + (size_t)i) * dim;
    for (size_t k = 0; k < dim; k++) {
        json_t *x = json_array_get(vec, k);
        if (!json_is_number(x))
            return llm_bad_response(what, "a vector holds a non-number", NULL);
        out[k] = (float)json_number_value(x);
    }
    return NULL;
}

/* Store a batch's answer; NULL or an error. */
static struct job_error *llm_embed_read(struct llm_embed_call *call, json_t *body)
{
    json_t *data = json_object_get(body, "data");
    if (!json_is_array(data) || json_array_size(data) != call->count)
        return llm_bad_response(call->c->embed_what, "data does not hold one item per input", NULL);
    free(call->seen);
    call->seen = xcalloc(call->count, 1);
    size_t k;
    json_t *item;
    json_array_foreach(data, k, item)
    {
        struct job_error *e = llm_embed_item(call, item);
        if (e)
            return e;
    }
    if (!call->model && json_is_string(json_object_get(body, "model")))
        call->model = xstrdup(json_string_value(json_object_get(body, "model")));
    long pt = llm_usage(json_object_get(body, "usage"), "prompt_tokens");
    if (pt >= 0)
        call->res.prompt_tokens = (call->res.prompt_tokens < 0 ? 0 : call->res.prompt_tokens) + pt;
    return NULL;
}

static void llm_embed_on_response(struct job_error *err, struct http_response *resp, void *arg)
{
    struct llm_embed_call *call = arg;
    const char *call_id = resp ? http_response_header(resp, "x-litellm-call-id") : NULL;
    json_t *body = llm_response_body(call->c, &err, resp, call->c->embed_what);
    if (body)
        err = llm_embed_read(call, body);
    json_decref(body);
    log_job(err ? LOG_INFO : LOG_DEBUG, call->jid, NULL,
            "llm embeddings: batch %zu-%zu of %zu, call_id %s%s%s", call->start,
            call->start + call->count, call->n, call_id ? call_id : "-", err ? ": " : "",
            err ? err->error_message : "");
    if (err) {
        call->cb(err, NULL, call->arg);
        llm_embed_call_free(call);
        return;
    }
    call->start += call->count;
    if (call->start < call->n) {
        llm_embed_send(call);
        return;
    }
    call->res.model = call->model;
    call->cb(NULL, &call->res, call->arg);
    llm_embed_call_free(call);
}
