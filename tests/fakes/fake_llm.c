/* fake_llm: OpenAI-compatible chat completions and embeddings on fake_http. */
#include "fake_llm.h"

#include "buf.h"
#include "xalloc.h"

#include <ctype.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define FAKE_LLM_MAX_INPUTS 2048

struct fake_llm_item {
    struct fake_llm_item *next;
    struct fake_llm_reply r; /* strings owned */
};

struct fake_llm {
    struct fake_http *http;
    struct fake_faults *faults;
    char *api_key;
    char **models; /* NULL-terminated or NULL */
    int reasoning;
    size_t dim;
    int ordered;
    pthread_mutex_t mu; /* guards everything below */
    struct fake_llm_item *head, *tail;
    fake_llm_handler handler;
    void *handler_arg;
    size_t chats, embeddings;
    unsigned long next_id;
};

/* --- answers --------------------------------------------------------------------------- */

static void fake_llm_json_answer(struct fake_http_response *resp, int status, json_t *body)
{
    char *s = json_dumps(body, JSON_COMPACT);
    resp->status = status;
    fake_http_response_header(resp, "Content-Type", "application/json");
    fake_http_response_body(resp, s);
    free(s);
    json_decref(body);
}

/* OpenAI's error envelope. param and code may be NULL (JSON null). */
static void fake_llm_error(struct fake_http_response *resp, int status, const char *type,
                           const char *param, const char *code, const char *message)
{
    json_t *err = json_pack("{s:s, s:s, s:o, s:o}", "message", message, "type", type, "param",
                            param ? json_string(param) : json_null(), "code",
                            code ? json_string(code) : json_null());
    fake_llm_json_answer(resp, status, json_pack("{s:o}", "error", err));
}

static void fake_llm_invalid(struct fake_http_response *resp, const char *param, const char *code,
                             const char *message)
{
    fake_llm_error(resp, 400, "invalid_request_error", param, code, message);
}

/* --- the checks every endpoint makes --------------------------------------------------- */

static int fake_llm_auth_ok(struct fake_llm *f, const struct fake_http_request *req,
                            struct fake_http_response *resp)
{
    if (!f->api_key)
        return 1;
    const char *h = fake_http_request_header(req, "Authorization");
    if (!h) {
        fake_llm_error(resp, 401, "invalid_request_error", NULL, NULL,
                       "You didn't provide an API key. You need to provide your API key in an "
                       "Authorization header using Bearer auth (i.e. Authorization: Bearer "
                       "YOUR_KEY).");
        return 0;
    }
    if (strncmp(h, "Bearer ", 7) != 0 || strcmp(h + 7, f->api_key) != 0) {
        fake_llm_error(resp, 401, "invalid_request_error", NULL, "invalid_api_key",
                       "Incorrect API key provided: sk-****. You can find your API key at "
                       "https://platform.openai.com/account/api-keys.");
        return 0;
    }
    return 1;
}

/* The request's JSON object body with a known model, or NULL with resp filled. */
static json_t *fake_llm_body(struct fake_llm *f, const struct fake_http_request *req,
                             struct fake_http_response *resp)
{
    if (!fake_llm_auth_ok(f, req, resp))
        return NULL;
    const char *ct = fake_http_request_header(req, "Content-Type");
    json_t *body = json_loadb(req->body, req->body_len, 0, NULL);
    if (!ct || strncasecmp(ct, "application/json", 16) != 0 || !json_is_object(body)) {
        json_decref(body);
        fake_llm_invalid(resp, NULL, NULL,
                         "We could not parse the JSON body of your request. (HINT: This likely "
                         "means you aren't using your HTTP library correctly. The OpenAI API "
                         "expects a JSON payload, but what was sent was not valid JSON.");
        return NULL;
    }
    const char *model = json_string_value(json_object_get(body, "model"));
    if (!model) {
        fake_llm_invalid(resp, "model", NULL, "you must provide a model parameter");
        json_decref(body);
        return NULL;
    }
    int known = !f->models;
    for (size_t i = 0; f->models && f->models[i]; i++)
        known |= !strcmp(f->models[i], model);
    if (!known) {
        char *m =
            xasprintf("The model `%s` does not exist or you do not have access to it.", model);
        fake_llm_error(resp, 404, "invalid_request_error", NULL, "model_not_found", m);
        free(m);
        json_decref(body);
        return NULL;
    }
    return body;
}

/* --- chat ------------------------------------------------------------------------------ */

static int fake_llm_role_ok(const char *role)
{
    static const char *const roles[] = {"system", "developer", "user", "assistant", "tool", NULL};
    for (size_t i = 0; role && roles[i]; i++)
        if (!strcmp(role, roles[i]))
            return 1;
    return 0;
}

/* 1 when some message's text contains "json" in any case. */
static int fake_llm_mentions_json(json_t *msgs)
{
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m)
    {
        const char *s = json_string_value(json_object_get(m, "content"));
        if (s && strcasestr(s, "json"))
            return 1;
    }
    return 0;
}

/* NULL when messages are valid, else the error message (static); *param names the field. */
static const char *fake_llm_check_messages(json_t *msgs, char *param, size_t plen)
{
    snprintf(param, plen, "messages");
    if (!json_is_array(msgs))
        return "Missing required parameter: 'messages'.";
    if (json_array_size(msgs) == 0)
        return "Invalid 'messages': empty array. Expected an array with minimum length 1, but "
               "got an empty array instead.";
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m)
    {
        const char *role = json_string_value(json_object_get(m, "role"));
        json_t *content = json_object_get(m, "content");
        snprintf(param, plen, "messages[%zu].role", i);
        if (!json_is_object(m) || !fake_llm_role_ok(role))
            return "Invalid value for 'role': expected one of 'system', 'developer', 'user', "
                   "'assistant' or 'tool'.";
        snprintf(param, plen, "messages[%zu].content", i);
        int null_ok = !strcmp(role, "assistant") && json_is_null(content);
        if (!json_is_string(content) && !json_is_array(content) && !null_ok)
            return "Invalid type for 'content': expected a string or an array of content parts.";
    }
    return NULL;
}

static const char *fake_llm_check_format(json_t *rf, json_t *msgs, const char **param)
{
    *param = "response_format";
    const char *type = json_string_value(json_object_get(rf, "type"));
    if (!json_is_object(rf) || !type)
        return "Invalid type for 'response_format': expected an object with a 'type'.";
    if (!strcmp(type, "text"))
        return NULL;
    if (!strcmp(type, "json_object"))
        return fake_llm_mentions_json(msgs) ? NULL
                                            : "'messages' must contain the word 'json' in some "
                                              "form, to use 'response_format' of type "
                                              "'json_object'.";
    if (strcmp(type, "json_schema") != 0)
        return "Invalid value for 'response_format.type': expected one of 'text', "
               "'json_object' or 'json_schema'.";
    json_t *js = json_object_get(rf, "json_schema");
    *param = "response_format.json_schema";
    if (!json_is_object(js))
        return "Missing required parameter: 'response_format.json_schema'.";
    const char *name = json_string_value(json_object_get(js, "name"));
    size_t n = name ? strlen(name) : 0;
    int name_ok = n >= 1 && n <= 64;
    for (size_t i = 0; name_ok && i < n; i++)
        name_ok = isalnum((unsigned char)name[i]) || name[i] == '_' || name[i] == '-';
    if (!name_ok)
        return "Invalid 'response_format.json_schema.name': string does not match pattern. "
               "Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'.";
    if (!json_is_object(json_object_get(js, "schema")))
        return "Invalid type for 'response_format.json_schema.schema': expected an object.";
    json_t *strict = json_object_get(js, "strict");
    if (strict && !json_is_boolean(strict) && !json_is_null(strict))
        return "Invalid type for 'response_format.json_schema.strict': expected a boolean.";
    return NULL;
}

/* 1 when the body is a valid chat request, else 0 with resp filled. */
static int fake_llm_chat_valid(struct fake_llm *f, json_t *body, struct fake_http_response *resp)
{
    char param[64];
    const char *why =
        fake_llm_check_messages(json_object_get(body, "messages"), param, sizeof param);
    if (why) {
        fake_llm_invalid(resp, param, NULL, why);
        return 0;
    }
    json_t *mt = json_object_get(body, "max_tokens");
    if (mt && f->reasoning) {
        fake_llm_invalid(resp, "max_tokens", "unsupported_parameter",
                         "Unsupported parameter: 'max_tokens' is not supported with this model. "
                         "Use 'max_completion_tokens' instead.");
        return 0;
    }
    const char *names[] = {"max_tokens", "max_completion_tokens"};
    for (size_t i = 0; i < 2; i++) {
        json_t *v = json_object_get(body, names[i]);
        if (v && !json_is_null(v) && (!json_is_integer(v) || json_integer_value(v) < 1)) {
            fake_llm_invalid(resp, names[i], "integer_below_min_value",
                             "Invalid token limit: expected an integer of at least 1.");
            return 0;
        }
    }
    json_t *t = json_object_get(body, "temperature");
    if (t && !json_is_null(t)) {
        double tv = json_number_value(t);
        if (!json_is_number(t) || tv < 0 || tv > 2) {
            fake_llm_invalid(resp, "temperature", "decimal_above_max_value",
                             "Invalid 'temperature': expected a number between 0 and 2.");
            return 0;
        }
        if (f->reasoning && tv != 1.0) {
            fake_llm_invalid(resp, "temperature", "unsupported_value",
                             "Unsupported value: 'temperature' does not support this value with "
                             "this model. Only the default (1) value is supported.");
            return 0;
        }
    }
    json_t *rf = json_object_get(body, "response_format");
    if (rf && !json_is_null(rf)) {
        const char *p;
        why = fake_llm_check_format(rf, json_object_get(body, "messages"), &p);
        if (why) {
            fake_llm_invalid(resp, p, NULL, why);
            return 0;
        }
    }
    return 1;
}

static void fake_llm_item_free(struct fake_llm_item *it)
{
    free((char *)it->r.content);
    free((char *)it->r.finish_reason);
    free((char *)it->r.refusal);
    free((char *)it->r.model);
    free((char *)it->r.call_id);
    free((char *)it->r.header);
    free(it);
}

/* Whether the request asked for JSON. */
static int fake_llm_wants_json(json_t *body)
{
    const char *type =
        json_string_value(json_object_get(json_object_get(body, "response_format"), "type"));
    return type && strcmp(type, "text") != 0;
}

static long fake_llm_tokens(const char *s)
{
    return s ? (long)strlen(s) / 4 + 1 : 0;
}

static long fake_llm_prompt_tokens(json_t *body)
{
    long n = 0;
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(body, "messages"), i, m) n +=
        4 + fake_llm_tokens(json_string_value(json_object_get(m, "content")));
    return n;
}

static json_t *fake_llm_str_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

static void fake_llm_chat_answer(struct fake_llm *f, json_t *body, const struct fake_llm_reply *r,
                                 struct fake_http_response *resp)
{
    pthread_mutex_lock(&f->mu);
    unsigned long id = ++f->next_id;
    f->chats++;
    pthread_mutex_unlock(&f->mu);
    char *idstr = xasprintf("chatcmpl-fake%lu", id);
    json_t *msg =
        json_pack("{s:s, s:o, s:o}", "role", "assistant", "content",
                  fake_llm_str_or_null(r->content), "refusal", fake_llm_str_or_null(r->refusal));
    json_t *choice = json_pack("{s:i, s:o, s:s, s:n}", "index", 0, "message", msg, "finish_reason",
                               r->finish_reason ? r->finish_reason : "stop", "logprobs");
    const char *model = r->model ? r->model : json_string_value(json_object_get(body, "model"));
    json_t *out = json_pack("{s:s, s:s, s:I, s:s, s:[o], s:s}", "id", idstr, "object",
                            "chat.completion", "created", (json_int_t)time(NULL), "model", model,
                            "choices", choice, "system_fingerprint", "fp_fake");
    if (!r->no_usage) {
        long pt = r->prompt_tokens ? r->prompt_tokens : fake_llm_prompt_tokens(body);
        long ct = r->completion_tokens ? r->completion_tokens : fake_llm_tokens(r->content);
        json_object_set_new(out, "usage",
                            json_pack("{s:I, s:I, s:I}", "prompt_tokens", (json_int_t)pt,
                                      "completion_tokens", (json_int_t)ct, "total_tokens",
                                      (json_int_t)(pt + ct)));
    }
    free(idstr);
    if (r->call_id)
        fake_http_response_header(resp, "x-litellm-call-id", "%s", r->call_id);
    if (r->header) {
        buf_append(&resp->headers, r->header, strlen(r->header));
        buf_append(&resp->headers, "\r\n", 2);
    }
    fake_llm_json_answer(resp, 200, out);
}

static void fake_llm_on_chat(const struct fake_http_request *req, struct fake_http_response *resp,
                             void *arg)
{
    struct fake_llm *f = arg;
    if (fake_faults_apply(f->faults, resp))
        return;
    json_t *body = fake_llm_body(f, req, resp);
    if (!body)
        return;
    if (!fake_llm_chat_valid(f, body, resp)) {
        json_decref(body);
        return;
    }
    pthread_mutex_lock(&f->mu);
    struct fake_llm_item *it = f->head;
    if (it) {
        f->head = it->next;
        if (!f->head)
            f->tail = NULL;
    }
    fake_llm_handler h = f->handler;
    void *harg = f->handler_arg;
    pthread_mutex_unlock(&f->mu);
    struct fake_llm_reply r = {0};
    if (it) {
        r = it->r;
    } else if (h) {
        h(body, &r, harg);
    } else {
        r.content = fake_llm_wants_json(body) ? "{}" : "OK";
    }
    fake_llm_chat_answer(f, body, &r, resp);
    if (it)
        fake_llm_item_free(it);
    else if (r.free_content)
        free((char *)r.content);
    json_decref(body);
}

/* --- embeddings ------------------------------------------------------------------------ */

static uint64_t fake_llm_mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

void fake_llm_embedding(const char *text, size_t dim, float *out)
{
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)text; *p; p++)
        h = (h ^ *p) * 0x100000001b3ULL;
    double norm = 0;
    for (size_t j = 0; j < dim; j++) {
        double x = (double)(fake_llm_mix(h + j) >> 11) / 9007199254740992.0 * 2.0 - 1.0;
        out[j] = (float)x;
        norm += x * x;
    }
    norm = sqrt(norm);
    for (size_t j = 0; norm > 0 && j < dim; j++)
        out[j] = (float)(out[j] / norm);
}

/* The inputs as an array (new reference), or NULL with resp filled. */
static json_t *fake_llm_inputs(json_t *body, struct fake_http_response *resp)
{
    json_t *in = json_object_get(body, "input");
    if (json_is_string(in))
        in = json_pack("[O]", in);
    else if (json_is_array(in))
        json_incref(in);
    else
        in = NULL;
    const char *why = in ? NULL : "Missing required parameter: 'input'.";
    if (in && (json_array_size(in) == 0 || json_array_size(in) > FAKE_LLM_MAX_INPUTS))
        why = "'$.input' is invalid. Please check the API reference: "
              "https://platform.openai.com/docs/api-reference.";
    size_t i;
    json_t *t;
    json_array_foreach(in, i, t)
    {
        if (!why && (!json_is_string(t) || !*json_string_value(t)))
            why = "'$.input' is invalid. Please check the API reference: "
                  "https://platform.openai.com/docs/api-reference.";
    }
    if (why) {
        fake_llm_invalid(resp, "input", NULL, why);
        json_decref(in);
        return NULL;
    }
    return in;
}

/* The vector length asked for, or 0 with resp filled. */
static size_t fake_llm_dim(struct fake_llm *f, json_t *body, struct fake_http_response *resp)
{
    json_t *enc = json_object_get(body, "encoding_format");
    if (enc && !json_is_null(enc) &&
        (!json_is_string(enc) || strcmp(json_string_value(enc), "float") != 0)) {
        fake_llm_invalid(resp, "encoding_format", NULL,
                         "fake_llm supports only encoding_format \"float\".");
        return 0;
    }
    json_t *d = json_object_get(body, "dimensions");
    if (!d || json_is_null(d))
        return f->dim;
    if (!json_is_integer(d) || json_integer_value(d) < 1 || json_integer_value(d) > 4096) {
        fake_llm_invalid(resp, "dimensions", "integer_below_min_value",
                         "Invalid 'dimensions': expected an integer between 1 and 4096.");
        return 0;
    }
    return (size_t)json_integer_value(d);
}

static void fake_llm_on_embeddings(const struct fake_http_request *req,
                                   struct fake_http_response *resp, void *arg)
{
    struct fake_llm *f = arg;
    if (fake_faults_apply(f->faults, resp))
        return;
    json_t *body = fake_llm_body(f, req, resp);
    if (!body)
        return;
    json_t *in = fake_llm_inputs(body, resp);
    size_t dim = in ? fake_llm_dim(f, body, resp) : 0;
    if (!dim) {
        json_decref(in);
        json_decref(body);
        return;
    }
    size_t n = json_array_size(in);
    float *v = xcalloc(dim, sizeof *v);
    json_t *data = json_array();
    long tokens = 0;
    for (size_t k = 0; k < n; k++) {
        size_t i = f->ordered ? k : n - 1 - k;
        const char *text = json_string_value(json_array_get(in, i));
        tokens += fake_llm_tokens(text);
        fake_llm_embedding(text, dim, v);
        json_t *vec = json_array();
        for (size_t j = 0; j < dim; j++)
            json_array_append_new(vec, json_real(v[j]));
        json_array_append_new(data, json_pack("{s:s, s:I, s:o}", "object", "embedding", "index",
                                              (json_int_t)i, "embedding", vec));
    }
    free(v);
    json_t *out = json_pack("{s:s, s:o, s:O, s:{s:I, s:I}}", "object", "list", "data", data,
                            "model", json_object_get(body, "model"), "usage", "prompt_tokens",
                            (json_int_t)tokens, "total_tokens", (json_int_t)tokens);
    pthread_mutex_lock(&f->mu);
    f->embeddings++;
    pthread_mutex_unlock(&f->mu);
    fake_llm_json_answer(resp, 200, out);
    json_decref(in);
    json_decref(body);
}

/* --- lifecycle and inspection ---------------------------------------------------------- */

struct fake_llm *fake_llm_start(const struct fake_llm_opts *opts)
{
    struct fake_llm_opts none = {0};
    const struct fake_llm_opts *o = opts ? opts : &none;
    struct fake_http *http = fake_http_start(NULL);
    if (!http)
        return NULL;
    struct fake_llm *f = xcalloc(1, sizeof *f);
    f->http = http;
    f->faults = fake_faults_new();
    f->api_key = xstrdup(o->api_key);
    if (o->models) {
        size_t n = 0;
        while (o->models[n])
            n++;
        f->models = xcalloc(n + 1, sizeof *f->models);
        for (size_t i = 0; i < n; i++)
            f->models[i] = xstrdup(o->models[i]);
    }
    f->reasoning = o->reasoning;
    f->dim = o->dim ? o->dim : 8;
    f->ordered = o->ordered;
    pthread_mutex_init(&f->mu, NULL);
    fake_http_route(http, "POST", "/v1/chat/completions", fake_llm_on_chat, f);
    fake_http_route(http, "POST", "/chat/completions", fake_llm_on_chat, f);
    fake_http_route(http, "POST", "/v1/embeddings", fake_llm_on_embeddings, f);
    fake_http_route(http, "POST", "/embeddings", fake_llm_on_embeddings, f);
    return f;
}

void fake_llm_free(struct fake_llm *f)
{
    if (!f)
        return;
    fake_http_free(f->http); /* joins the thread: no handler runs after this */
    fake_faults_free(f->faults);
    while (f->head) {
        struct fake_llm_item *it = f->head;
        f->head = it->next;
        fake_llm_item_free(it);
    }
    for (size_t i = 0; f->models && f->models[i]; i++)
        free(f->models[i]);
    free(f->models);
    free(f->api_key);
    pthread_mutex_destroy(&f->mu);
    free(f);
}

const char *fake_llm_url(struct fake_llm *f)
{
    return fake_http_url(f->http);
}

struct fake_http *fake_llm_http(struct fake_llm *f)
{
    return f->http;
}

struct fake_faults *fake_llm_faults(struct fake_llm *f)
{
    return f->faults;
}

void fake_llm_push_reply(struct fake_llm *f, const struct fake_llm_reply *r)
{
    struct fake_llm_item *it = xcalloc(1, sizeof *it);
    it->r = *r;
    it->r.content = xstrdup(r->content);
    it->r.finish_reason = xstrdup(r->finish_reason);
    it->r.refusal = xstrdup(r->refusal);
    it->r.model = xstrdup(r->model);
    it->r.call_id = xstrdup(r->call_id);
    it->r.header = xstrdup(r->header);
    it->r.free_content = 0;
    pthread_mutex_lock(&f->mu);
    if (f->tail)
        f->tail->next = it;
    else
        f->head = it;
    f->tail = it;
    pthread_mutex_unlock(&f->mu);
}

void fake_llm_set_handler(struct fake_llm *f, fake_llm_handler handler, void *arg)
{
    pthread_mutex_lock(&f->mu);
    f->handler = handler;
    f->handler_arg = arg;
    pthread_mutex_unlock(&f->mu);
}

size_t fake_llm_count(struct fake_llm *f)
{
    return fake_http_count(f->http);
}

size_t fake_llm_chat_count(struct fake_llm *f)
{
    pthread_mutex_lock(&f->mu);
    size_t n = f->chats;
    pthread_mutex_unlock(&f->mu);
    return n;
}

size_t fake_llm_embedding_count(struct fake_llm *f)
{
    pthread_mutex_lock(&f->mu);
    size_t n = f->embeddings;
    pthread_mutex_unlock(&f->mu);
    return n;
}

const struct fake_http_request *fake_llm_request(struct fake_llm *f, size_t i)
{
    return fake_http_request_at(f->http, i);
}

json_t *fake_llm_request_json(struct fake_llm *f, size_t i)
{
    const struct fake_http_request *r = fake_http_request_at(f->http, i);
    return r ? json_loadb(r->body, r->body_len, JSON_DECODE_ANY, NULL) : NULL;
}

void fake_llm_support_model(const json_t *request, struct fake_llm_reply *reply, void *arg)
{
    (void)arg;
    json_t *msgs = json_object_get(request, "messages");
    const char *user = json_string_value(
        json_object_get(json_array_get(msgs, json_array_size(msgs) - 1), "content"));
    const char *brace = user ? strchr(user, '{') : NULL; /* an intro line, then the JSON */
    json_t *doc = brace ? json_loads(brace, 0, NULL) : NULL;
    json_t *passage = json_array_get(json_object_get(doc, "passages"), 0);
    const char *question = json_string_value(json_object_get(doc, "question"));
    json_t *out;
    if (question && strstr(question, "crash"))
        out = json_pack("{s:s, s:s, s:s, s:s, s:[]}", "action", "escalate", "answer", "", "reason",
                        "the customer reports a crash", "category", "bug", "passage_ids");
    else if (!passage)
        out = json_pack("{s:s, s:s, s:s, s:s, s:[]}", "action", "escalate", "answer", "", "reason",
                        "no passage answers it", "category", "question", "passage_ids");
    else
        out = json_pack("{s:s, s:s, s:s, s:s, s:[O]}", "action", "answer", "answer",
                        "Use Forgot password? on the sign-in page; the link is valid 60 minutes.",
                        "reason", "documented", "category", "question", "passage_ids",
                        json_object_get(passage, "id"));
    reply->content = json_dumps(out, JSON_COMPACT);
    reply->free_content = 1;
    json_decref(out);
    json_decref(doc);
}
