/* Tests for lib/llm (OpenAI-compatible chat completions and embeddings) against
 * tests/fakes/fake_llm, over a real http_client on a uv loop: request shapes per
 * response_format mode and token parameter, answer parsing, unusable answers, every failure
 * class (with exact retry-at times), embeddings batching mapped by index, and the
 * rate-limit path against the real Redis (database 12). Every test closes the loop. */
#include "clock.h"
#include "fake_llm.h"
#include "http_client.h"
#include "llm.h"
#include "log.h"
#include "rate_limit.h"
#include "redis.h"
#include "test_loop.h"
#include "test_redis.h"
#include "xalloc.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#define REDIS_DB 12
#define KEY      "sk-test-key"

static const char *const SCHEMA =
    "{\"type\":\"object\",\"properties\":{\"action\":{\"type\":\"string\",\"enum\":[\"answer\","
    "\"escalate\"]},\"answer\":{\"type\":\"string\"}},\"required\":[\"action\",\"answer\"],"
    "\"additionalProperties\":false}";

struct t {
    uv_loop_t loop;
    struct http_client *http;
    struct fake_llm *fake;
    struct llm *llm;
    json_t *schema;
    int closed;
};

static struct t T;

static void suite_fini(void)
{
    http_client_global_cleanup();
}

TestSuite(llm, .fini = suite_fini);

/* The settings most tests use; http and base_url are filled in by t_start. */
static struct llm_opts t_opts(void)
{
    struct llm_opts o = {
        .api_key = KEY,
        .model = "gpt-test",
        .embedding_model = "emb-test",
        .max_tokens = 500,
        .temperature = 0.2,
        .timeout_ms = 10000,
    };
    return o;
}

static void t_start(const struct fake_llm_opts *fo, struct llm_opts o)
{
    memset(&T, 0, sizeof T);
    cr_assert_eq(uv_loop_init(&T.loop), 0);
    char *err = NULL;
    T.http = http_client_new(&T.loop, NULL, &err);
    cr_assert_not_null(T.http, "http_client_new: %s", err ? err : "?");
    struct fake_llm_opts def = {.api_key = KEY};
    T.fake = fake_llm_start(fo ? fo : &def);
    cr_assert_not_null(T.fake);
    o.http = T.http;
    if (!o.base_url)
        o.base_url = fake_llm_url(T.fake);
    T.llm = llm_new(&o, &err);
    cr_assert_not_null(T.llm, "llm_new: %s", err ? err : "?");
    T.schema = json_loads(SCHEMA, 0, NULL);
    cr_assert_not_null(T.schema);
}

static void on_closed(void *arg)
{
    (*(int *)arg)++;
}

static void t_finish(void)
{
    llm_free(T.llm);
    http_client_close(T.http, on_closed, &T.closed);
    cr_assert_eq(uv_run(&T.loop, UV_RUN_DEFAULT), 0);
    cr_assert_eq(T.closed, 1);
    cr_assert_eq(uv_loop_close(&T.loop), 0);
    fake_llm_free(T.fake);
    json_decref(T.schema);
}

static void run_until(const int *flag)
{
    if (!test_loop_until_flag(&T.loop, flag, 15000)) {
        struct http_client_stats st;
        http_client_get_stats(T.http, &st);
        cr_assert_fail("timed out waiting for the callback: fake saw %zu requests, "
                       "http client: %llu in flight, %llu completed",
                       fake_llm_count(T.fake), (unsigned long long)st.in_flight,
                       (unsigned long long)st.completed);
    }
}

/* --- chat helpers ---------------------------------------------------------------------- */

/* What a chat callback saw, copied out. */
struct chat_seen {
    int calls;
    struct job_error *err;
    int usable;
    enum llm_unusable why;
    char *why_text, *content, *refusal, *finish_reason, *model, *id, *call_id;
    json_t *json;
    long pt, ct, tt;
    double before, after; /* wall time around the call */
};

static char *dup_or_null(const char *s)
{
    return s ? xstrdup(s) : NULL;
}

static void on_chat(struct job_error *err, const struct llm_chat_result *res, void *arg)
{
    struct chat_seen *s = arg;
    s->calls++;
    s->err = err;
    if (res) {
        s->usable = res->usable;
        s->why = res->why;
        s->why_text = xstrdup(res->why_text);
        s->content = dup_or_null(res->content);
        s->refusal = dup_or_null(res->refusal);
        s->finish_reason = dup_or_null(res->finish_reason);
        s->model = dup_or_null(res->model);
        s->id = dup_or_null(res->id);
        s->call_id = dup_or_null(res->call_id);
        s->json = json_incref(res->json);
        s->pt = res->prompt_tokens;
        s->ct = res->completion_tokens;
        s->tt = res->total_tokens;
    }
}

static void chat_seen_free(struct chat_seen *s)
{
    job_error_free(s->err);
    free(s->why_text);
    free(s->content);
    free(s->refusal);
    free(s->finish_reason);
    free(s->model);
    free(s->id);
    free(s->call_id);
    json_decref(s->json);
    memset(s, 0, sizeof *s);
}

static const struct llm_message MSGS[] = {
    {"system", "You are a support bot. Answer in JSON."},
    {"user", "How do I reset my password?"},
};

static struct llm_chat_request schema_req(void)
{
    struct llm_chat_request r = {
        .messages = MSGS, .nmessages = 2, .schema = T.schema, .schema_name = "decision"};
    return r;
}

/* Run one chat call to completion. */
static void chat(const struct llm_chat_request *req, struct chat_seen *s)
{
    memset(s, 0, sizeof *s);
    s->before = clock_wall_s();
    cr_assert_eq(llm_chat(T.llm, "jid-chat", req, on_chat, s), 0);
    run_until(&s->calls);
    s->after = clock_wall_s();
    cr_assert_eq(s->calls, 1);
}

/* The n-th request's body (new reference). */
static json_t *req_json(size_t n)
{
    json_t *j = fake_llm_request_json(T.fake, n);
    cr_assert_not_null(j, "request %zu has no JSON body", n);
    return j;
}

/* --- endpoint rule and settings -------------------------------------------------------- */

static void check_url(const char *base, const char *want)
{
    char *u = llm_url(base, "/chat/completions");
    if (!want) {
        cr_assert_null(u, "%s should be refused", base);
        return;
    }
    cr_assert_not_null(u, "%s refused", base);
    cr_assert_str_eq(u, want);
    free(u);
}

Test(llm, url_rule)
{
    check_url("http://litellm:4000", "http://litellm:4000/v1/chat/completions");
    check_url("http://litellm:4000/", "http://litellm:4000/v1/chat/completions");
    check_url("https://api.openai.com/v1", "https://api.openai.com/v1/chat/completions");
    check_url("https://api.openai.com/v1/", "https://api.openai.com/v1/chat/completions");
    check_url("http://localhost:11434", "http://localhost:11434/v1/chat/completions");
    check_url("http://vllm:8000/v1//", "http://vllm:8000/v1/chat/completions");
    check_url("https://openrouter.ai/api/v1", "https://openrouter.ai/api/v1/chat/completions");
    check_url("https://gw.example/acct/openai", "https://gw.example/acct/openai/chat/completions");
    check_url("HTTPS://Example.com", "HTTPS://Example.com/v1/chat/completions");
    check_url("ftp://example.com", NULL);
    check_url("example.com/v1", NULL);
    check_url("http://", NULL);
    check_url(NULL, NULL);
}

Test(llm, new_refuses_bad_settings)
{
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    struct http_client *http = http_client_new(&loop, NULL, NULL);
    struct {
        const char *base;
        struct http_client *http;
        double temp;
        const char *want;
    } cases[] = {
        {"http://x", NULL, 0, "no http client"},         {NULL, http, 0, "no base URL"},
        {"file:///etc", http, 0, "http:// or https://"}, {"http://x", http, 2.5, "temperature"},
        {"http://x", http, NAN, "temperature"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct llm_opts o = {
            .http = cases[i].http, .base_url = cases[i].base, .temperature = cases[i].temp};
        char *err = NULL;
        cr_assert_null(llm_new(&o, &err), "case %zu accepted", i);
        cr_assert(err && strstr(err, cases[i].want), "case %zu: %s", i, err ? err : "(null)");
        free(err);
    }
    struct llm_opts ok = {.http = http, .base_url = "http://x", .temperature = -1};
    struct llm *c = llm_new(&ok, NULL);
    cr_assert_not_null(c);
    llm_free(c);
    int closed = 0;
    http_client_close(http, on_closed, &closed);
    cr_assert_eq(uv_run(&loop, UV_RUN_DEFAULT), 0);
    cr_assert_eq(uv_loop_close(&loop), 0);
}

/* --- request shapes -------------------------------------------------------------------- */

Test(llm, json_schema_request_and_answer)
{
    t_start(NULL, t_opts());
    char *logbuf = NULL;
    size_t loglen = 0;
    FILE *logf = open_memstream(&logbuf, &loglen);
    log_set_stream(logf);
    log_min_level = LOG_DEBUG;
    struct fake_llm_reply r = {.content = "{\"action\":\"answer\",\"answer\":\"Use the link.\"}",
                               .prompt_tokens = 120,
                               .completion_tokens = 14,
                               .call_id = "call-abc-123",
                               .model = "gpt-test-2026"};
    fake_llm_push_reply(T.fake, &r);
    struct llm_chat_request req = schema_req();
    struct chat_seen s;
    chat(&req, &s);
    log_set_stream(NULL);
    fclose(logf);

    cr_assert_null(s.err, "%s", s.err ? s.err->error_message : "");
    cr_assert_eq(s.usable, 1);
    cr_assert_eq(s.why, LLM_USABLE);
    cr_assert_str_eq(s.why_text, "");
    cr_assert_str_eq(s.content, r.content);
    cr_assert_str_eq(json_string_value(json_object_get(s.json, "action")), "answer");
    cr_assert_str_eq(json_string_value(json_object_get(s.json, "answer")), "Use the link.");
    cr_assert_str_eq(s.finish_reason, "stop");
    cr_assert_str_eq(s.model, "gpt-test-2026");
    cr_assert_str_eq(s.call_id, "call-abc-123");
    cr_assert_str_eq(s.id, "chatcmpl-fake1");
    cr_assert_null(s.refusal);
    cr_assert_eq(s.pt, 120);
    cr_assert_eq(s.ct, 14);
    cr_assert_eq(s.tt, 134);
    cr_assert(strstr(logbuf, "call-abc-123") && strstr(logbuf, "jid-chat"), "log: %s", logbuf);
    free(logbuf);

    cr_assert_eq(fake_llm_count(T.fake), 1);
    const struct fake_http_request *hr = fake_llm_request(T.fake, 0);
    cr_assert_str_eq(hr->method, "POST");
    cr_assert_str_eq(hr->path, "/v1/chat/completions");
    cr_assert_str_eq(fake_http_request_header(hr, "Authorization"), "Bearer " KEY);
    cr_assert_str_eq(fake_http_request_header(hr, "Content-Type"), "application/json");
    json_t *b = req_json(0);
    cr_assert_str_eq(json_string_value(json_object_get(b, "model")), "gpt-test");
    json_t *msgs = json_object_get(b, "messages");
    cr_assert_eq(json_array_size(msgs), 2);
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(msgs, 0), "role")), "system");
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(msgs, 1), "content")),
                     MSGS[1].content);
    cr_assert_float_eq(json_real_value(json_object_get(b, "temperature")), 0.2, 1e-9);
    cr_assert_eq(json_integer_value(json_object_get(b, "max_completion_tokens")), 500);
    cr_assert_null(json_object_get(b, "max_tokens"));
    json_t *rf = json_object_get(b, "response_format");
    cr_assert_str_eq(json_string_value(json_object_get(rf, "type")), "json_schema");
    json_t *js = json_object_get(rf, "json_schema");
    cr_assert_str_eq(json_string_value(json_object_get(js, "name")), "decision");
    cr_assert(json_is_true(json_object_get(js, "strict")));
    cr_assert(json_equal(json_object_get(js, "schema"), T.schema), "schema not passed through");
    json_decref(b);
    chat_seen_free(&s);
    t_finish();
}

Test(llm, json_object_mode)
{
    struct llm_opts o = t_opts();
    o.format = LLM_FORMAT_JSON_OBJECT;
    t_start(NULL, o);
    fake_llm_push_reply(T.fake, &(struct fake_llm_reply){.content = " {\"action\":\"escalate\"} "});
    struct llm_chat_request req = schema_req();
    struct chat_seen s;
    chat(&req, &s);
    cr_assert_null(s.err);
    cr_assert_eq(s.usable, 1);
    cr_assert_str_eq(json_string_value(json_object_get(s.json, "action")), "escalate");
    json_t *b = req_json(0);
    json_t *rf = json_object_get(b, "response_format");
    cr_assert_eq(json_object_size(rf), 1);
    cr_assert_str_eq(json_string_value(json_object_get(rf, "type")), "json_object");
    json_decref(b);
    chat_seen_free(&s);

    /* OpenAI's rule, enforced by the fake: JSON mode needs "json" in the messages. */
    struct llm_message plain[] = {{"user", "hello"}};
    struct llm_chat_request bad = {.messages = plain, .nmessages = 1, .want_json = 1};
    chat(&bad, &s);
    cr_assert_not_null(s.err);
    cr_assert_eq(s.err->kind, JOB_ERR_PERMANENT);
    cr_assert_str_eq(s.err->error_class, "Tierone::LLM::ClientError");
    cr_assert(strstr(s.err->error_message, "must contain the word 'json'"), "%s",
              s.err->error_message);
    chat_seen_free(&s);
    t_finish();
}

Test(llm, want_json_without_schema_uses_json_mode)
{
    t_start(NULL, t_opts());
    struct llm_chat_request req = {.messages = MSGS, .nmessages = 2, .want_json = 1};
    struct chat_seen s;
    chat(&req, &s);
    cr_assert_null(s.err);
    cr_assert_eq(s.usable, 1, "%s", s.why_text);
    cr_assert(json_is_object(s.json));
    json_t *b = req_json(0);
    cr_assert_str_eq(
        json_string_value(json_object_get(json_object_get(b, "response_format"), "type")),
        "json_object");
    json_decref(b);
    chat_seen_free(&s);
    t_finish();
}

Test(llm, format_none_parses_fenced_json)
{
    struct llm_opts o = t_opts();
    o.format = LLM_FORMAT_NONE;
    t_start(NULL, o);
    fake_llm_push_reply(T.fake,
                        &(struct fake_llm_reply){
                            .content = "```json\n{\"action\":\"answer\",\"answer\":\"x\"}\n```"});
    struct llm_chat_request req = schema_req();
    struct chat_seen s;
    chat(&req, &s);
    cr_assert_null(s.err);
    cr_assert_eq(s.usable, 1, "%s", s.why_text);
    cr_assert_str_eq(json_string_value(json_object_get(s.json, "answer")), "x");
    json_t *b = req_json(0);
    cr_assert_null(json_object_get(b, "response_format"));
    json_decref(b);
    chat_seen_free(&s);
    t_finish();
}

Test(llm, free_text_without_json)
{
    t_start(NULL, t_opts());
    fake_llm_push_reply(T.fake, &(struct fake_llm_reply){.content = "Hello there", .no_usage = 1});
    struct llm_chat_request req = {.messages = MSGS + 1, .nmessages = 1};
    struct chat_seen s;
    chat(&req, &s);
    cr_assert_null(s.err);
    cr_assert_eq(s.usable, 1);
    cr_assert_str_eq(s.content, "Hello there");
    cr_assert_null(s.json);
    cr_assert_null(s.call_id);
    cr_assert_eq(s.pt, -1);
    cr_assert_eq(s.tt, -1);
    json_t *b = req_json(0);
    cr_assert_null(json_object_get(b, "response_format"));
    json_decref(b);
    chat_seen_free(&s);
    t_finish();
}

Test(llm, max_tokens_name_and_temperature)
{
    struct llm_opts o = t_opts();
    o.token_param = LLM_TOKENS_MAX_TOKENS;
    o.max_tokens = 321;
    o.temperature = LLM_TEMPERATURE_UNSET;
    t_start(NULL, o);
    struct llm_chat_request req = schema_req();
    struct chat_seen s;
    chat(&req, &s);
    cr_assert_null(s.err);
    json_t *b = req_json(0);
    cr_assert_eq(json_integer_value(json_object_get(b, "max_tokens")), 321);
    cr_assert_null(json_object_get(b, "max_completion_tokens"));
    cr_assert_null(json_object_get(b, "temperature"));
    json_decref(b);
    chat_seen_free(&s);
    t_finish();
}

Test(llm, reasoning_model_rejects_max_tokens)
{
    struct fake_llm_opts fo = {.api_key = KEY, .reasoning = 1};
    struct llm_opts o = t_opts();
    o.token_param = LLM_TOKENS_MAX_TOKENS;
    o.temperature = LLM_TEMPERATURE_UNSET;
    t_start(&fo, o);
    struct llm_chat_request req = schema_req();
    struct chat_seen s;
    chat(&req, &s);
    cr_assert_not_null(s.err);
    cr_assert_eq(s.err->kind, JOB_ERR_PERMANENT);
    cr_assert_str_eq(s.err->error_class, "Tierone::LLM::ClientError");
    cr_assert_str_eq(s.err->error_message,
                     "POST /v1/chat/completions -> HTTP 400: Unsupported parameter: 'max_tokens' "
                     "is not supported with this model. Use 'max_completion_tokens' instead.");
    chat_seen_free(&s);
    llm_free(T.llm);

    /* The same model with max_completion_tokens and no temperature answers. */
    o = t_opts();
    o.http = T.http;
    o.base_url = fake_llm_url(T.fake);
    o.temperature = LLM_TEMPERATURE_UNSET;
    T.llm = llm_new(&o, NULL);
    chat(&req, &s);
    cr_assert_null(s.err, "%s", s.err ? s.err->error_message : "");
    cr_assert_eq(s.usable, 1);
    chat_seen_free(&s);
    t_finish();
}

Test(llm, no_key_sends_no_authorization)
{
    struct fake_llm_opts fo = {0};
    struct llm_opts o = t_opts();
    o.api_key = NULL;
    o.base_url = NULL;
    t_start(&fo, o);
    llm_free(T.llm);
    char *base = xasprintf("%s/v1/", fake_llm_url(T.fake));
    o.http = T.http;
    o.base_url = base;
    T.llm = llm_new(&o, NULL);
    free(base);
    struct llm_chat_request req = schema_req();
    struct chat_seen s;
    chat(&req, &s);
    cr_assert_null(s.err);
    const struct fake_http_request *hr = fake_llm_request(T.fake, 0);
    cr_assert_str_eq(hr->path, "/v1/chat/completions");
    cr_assert_null(fake_http_request_header(hr, "Authorization"));
    chat_seen_free(&s);
    t_finish();
}

Test(llm, message_text_arrives_byte_for_byte)
{
    /* Every byte JSON must escape, and multi-byte UTF-8, in each message and the model's
     * name: the server's parse of the body gives back exactly what was asked. */
    t_start(NULL, t_opts());
    struct llm_message msgs[] = {
        {"system", "quote \" backslash \\ slash / tab \t cr \r nl \n bell \x07 del \x7f"},
        {"user", "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \x01\x1f end"},
    };
    struct llm_chat_request req = {.messages = msgs,
                                   .nmessages = 2,
                                   .model = "m\"odel\xc3\xa9",
                                   .has_temperature = 1,
                                   .temperature = 0.7};
    struct chat_seen s;
    chat(&req, &s);
    cr_assert_null(s.err, "%s", s.err ? s.err->error_message : "");
    json_t *b = req_json(0);
    cr_assert(b, "the body is JSON");
    cr_assert_str_eq(json_string_value(json_object_get(b, "model")), req.model);
    json_t *got = json_object_get(b, "messages");
    cr_assert_eq(json_array_size(got), 2);
    for (size_t i = 0; i < 2; i++) {
        json_t *m = json_array_get(got, i);
        cr_assert_eq(json_object_size(m), 2);
        cr_assert_str_eq(json_string_value(json_object_get(m, "role")), msgs[i].role);
        cr_assert_str_eq(json_string_value(json_object_get(m, "content")), msgs[i].content);
    }
    cr_assert(json_is_real(json_object_get(b, "temperature")));
    cr_assert_float_eq(json_real_value(json_object_get(b, "temperature")), 0.7, 1e-12);
    json_decref(b);
    chat_seen_free(&s);
    t_finish();
}

Test(llm, invalid_inputs_send_nothing)
{
    t_start(NULL, t_opts());
    struct chat_seen s = {0};
    struct llm_message badrole[] = {{"robot", "x"}};
    struct llm_message nocontent[] = {{"user", NULL}};
    struct llm_message badutf8[] = {{"user", "caf\xc3"}}; /* a cut-off "é" */
    json_t *arr = json_array();
    struct llm_chat_request reqs[] = {
        {.messages = MSGS, .nmessages = 0},
        {.messages = NULL, .nmessages = 1},
        {.messages = badrole, .nmessages = 1},
        {.messages = nocontent, .nmessages = 1},
        {.messages = badutf8, .nmessages = 1},
        {.messages = MSGS, .nmessages = 2, .model = "gpt-\xff"},
        {.messages = MSGS, .nmessages = 2, .schema = arr},
        {.messages = MSGS, .nmessages = 2, .schema = T.schema, .schema_name = "bad name"},
    };
    for (size_t i = 0; i < sizeof reqs / sizeof reqs[0]; i++)
        cr_assert_eq(llm_chat(T.llm, "j", &reqs[i], on_chat, &s), -1, "case %zu", i);
    json_decref(arr);
    const char *texts[] = {"a", ""};
    cr_assert_eq(llm_embed(T.llm, "j", texts, 0, NULL, NULL), -1);
    cr_assert_eq(llm_embed(T.llm, "j", texts, 2, NULL, NULL), -1);
    llm_free(T.llm);
    struct llm_opts o = {.http = T.http, .base_url = fake_llm_url(T.fake)};
    T.llm = llm_new(&o, NULL);
    struct llm_chat_request ok = schema_req();
    cr_assert_eq(llm_chat(T.llm, "j", &ok, on_chat, &s), -1, "no model");
    cr_assert_eq(llm_embed(T.llm, "j", texts, 1, NULL, NULL), -1, "no embedding model");
    uv_run(&T.loop, UV_RUN_NOWAIT);
    cr_assert_eq(s.calls, 0);
    cr_assert_eq(fake_llm_count(T.fake), 0);
    t_finish();
}

/* A handler that answers with the last message's content as the "answer". */
static void echo_handler(const json_t *request, struct fake_llm_reply *reply, void *arg)
{
    json_t *msgs = json_object_get(request, "messages");
    json_t *last = json_array_get(msgs, json_array_size(msgs) - 1);
    json_t *out =
        json_pack("{s:s, s:O}", "action", "answer", "answer", json_object_get(last, "content"));
    reply->content = json_dumps(out, JSON_COMPACT);
    reply->free_content = 1;
    reply->call_id = arg;
    json_decref(out);
}

Test(llm, fake_handler_answers_when_queue_is_empty)
{
    t_start(NULL, t_opts());
    fake_llm_set_handler(T.fake, echo_handler, "call-echo");
    fake_llm_push_reply(T.fake, &(struct fake_llm_reply){.content = "{\"action\":\"escalate\"}"});
    struct llm_chat_request req = schema_req();
    struct chat_seen s;
    chat(&req, &s); /* the queue first */
    cr_assert_str_eq(json_string_value(json_object_get(s.json, "action")), "escalate");
    chat_seen_free(&s);
    chat(&req, &s); /* then the handler */
    cr_assert_null(s.err);
    cr_assert_str_eq(json_string_value(json_object_get(s.json, "answer")), MSGS[1].content);
    cr_assert_str_eq(s.call_id, "call-echo");
    chat_seen_free(&s);
    cr_assert_eq(fake_llm_chat_count(T.fake), 2);
    t_finish();
}

/* --- asking again ------------------------------------------------------------------------ */

/* The first answer's callback asks again (llm_chat_again) and records the second answer. */
struct again {
    int first_calls, again_rc;
    struct chat_seen second;
};

static void on_first_then_again(struct job_error *err, const struct llm_chat_result *res, void *arg)
{
    struct again *a = arg;
    a->first_calls++;
    cr_assert_null(err);
    a->again_rc = llm_chat_again(res, "jid-again", on_chat, &a->second);
}

Test(llm, chat_again_sends_the_same_request_once_more)
{
    t_start(NULL, t_opts());
    fake_llm_push_reply(T.fake, &(struct fake_llm_reply){.content = "not json"});
    fake_llm_push_reply(T.fake, &(struct fake_llm_reply){.content = "{\"action\":\"answer\"}"});
    struct llm_chat_request req = schema_req();
    struct again a = {0};
    cr_assert_eq(llm_chat(T.llm, "jid-first", &req, on_first_then_again, &a), 0);
    run_until(&a.second.calls);
    cr_assert_eq(a.first_calls, 1);
    cr_assert_eq(a.again_rc, 0);
    cr_assert_eq(a.second.calls, 1);
    cr_assert_null(a.second.err);
    cr_assert_str_eq(json_string_value(json_object_get(a.second.json, "action")), "answer");
    /* Byte for byte the same body, sent twice. */
    cr_assert_eq(fake_llm_count(T.fake), 2);
    const struct fake_http_request *r0 = fake_llm_request(T.fake, 0),
                                   *r1 = fake_llm_request(T.fake, 1);
    cr_assert(r0 && r1);
    cr_assert_eq(r0->body_len, r1->body_len);
    cr_assert_eq(memcmp(r0->body, r1->body, r0->body_len), 0, "the second body differs");
    chat_seen_free(&a.second);
    /* Without a request to repeat, nothing is sent and the callback never runs. */
    struct llm_chat_result none = {0};
    struct chat_seen never = {0};
    cr_assert_eq(llm_chat_again(&none, "jid-none", on_chat, &never), -1);
    cr_assert_eq(llm_chat_again(NULL, "jid-none", on_chat, &never), -1);
    cr_assert_eq(never.calls, 0);
    t_finish();
}

/* --- unusable answers ------------------------------------------------------------------ */

static void expect_unusable(const struct fake_llm_reply *r, enum llm_unusable why, const char *text)
{
    fake_llm_push_reply(T.fake, r);
    struct llm_chat_request req = schema_req();
    struct chat_seen s;
    chat(&req, &s);
    cr_assert_null(s.err, "%s", s.err ? s.err->error_message : "");
    cr_assert_eq(s.usable, 0);
    cr_assert_eq(s.why, why, "got %s, want %s", llm_unusable_name(s.why), llm_unusable_name(why));
    cr_assert(strstr(s.why_text, text), "why_text: %s", s.why_text);
    cr_assert_null(s.json);
    chat_seen_free(&s);
}

Test(llm, unusable_answers)
{
    t_start(NULL, t_opts());
    expect_unusable(
        &(struct fake_llm_reply){.content = "{\"action\":\"ans", .finish_reason = "length"},
        LLM_UNUSABLE_LENGTH, "max_completion_tokens 500");
    expect_unusable(&(struct fake_llm_reply){.content = "{\"action\":\"answer\",\"answer\":\"\"}",
                                             .finish_reason = "content_filter"},
                    LLM_UNUSABLE_CONTENT_FILTER, "content_filter");
    expect_unusable(&(struct fake_llm_reply){.refusal = "I'm sorry, I cannot help with that."},
                    LLM_UNUSABLE_REFUSAL, "I cannot help with that");
    expect_unusable(&(struct fake_llm_reply){.content = "Sure! Here is the answer."},
                    LLM_UNUSABLE_INVALID_JSON, "not valid JSON");
    expect_unusable(&(struct fake_llm_reply){.content = "[1,2]"}, LLM_UNUSABLE_INVALID_JSON,
                    "not an object");
    expect_unusable(&(struct fake_llm_reply){.content = " \n "}, LLM_UNUSABLE_EMPTY,
                    "empty content");
    expect_unusable(&(struct fake_llm_reply){.content = NULL, .finish_reason = "tool_calls"},
                    LLM_UNUSABLE_EMPTY, "tool_calls");
    cr_assert_eq(fake_llm_chat_count(T.fake), 7);
    t_finish();
}

/* --- failures -------------------------------------------------------------------------- */

/* Queue fault f, make one chat call, check the error's kind and class and that the message
 * contains text; returns the seen struct (caller frees). */
static void expect_failure(const struct fake_fault *f, enum job_err_kind kind, const char *cls,
                           const char *text, struct chat_seen *s)
{
    size_t before = fake_llm_count(T.fake);
    fake_faults_push(fake_llm_faults(T.fake), f, 1);
    struct llm_chat_request req = schema_req();
    chat(&req, s);
    cr_assert_not_null(s->err, "no error for status %d", f->status);
    cr_assert_eq(s->err->kind, kind, "status %d: kind %s, want %s (%s)", f->status,
                 job_error_kind_name(s->err->kind), job_error_kind_name(kind),
                 s->err->error_message);
    cr_assert_str_eq(s->err->error_class, cls, "status %d", f->status);
    cr_assert(strstr(s->err->error_message, text), "status %d: message %s", f->status,
              s->err->error_message);
    cr_assert_eq(fake_llm_count(T.fake), before + 1, "the client must not retry by itself");
}

static void expect_retry_at(const struct fake_fault *f, double wait_s)
{
    struct chat_seen s;
    expect_failure(f, JOB_ERR_RETRY_AT, "Tierone::LLM::RateLimited", "HTTP 429", &s);
    cr_assert_geq(s.err->retry_at, s.before + wait_s - 1e-6, "retry_at %.6f, before %.6f",
                  s.err->retry_at, s.before);
    cr_assert_leq(s.err->retry_at, s.after + wait_s + 1e-6, "retry_at %.6f, after %.6f",
                  s.err->retry_at, s.after);
    chat_seen_free(&s);
}

static const char *RATE_BODY =
    "{\"error\":{\"message\":\"Rate limit reached for gpt-test on requests per min (RPM): "
    "Limit 3, Used 3, Requested 1.\",\"type\":\"requests\",\"param\":null,\"code\":"
    "\"rate_limit_exceeded\"}}";

Test(llm, rate_limited_retry_at_times)
{
    t_start(NULL, t_opts());
    expect_retry_at(
        &(struct fake_fault){.status = 429, .header = "retry-after-ms: 1500", .body = RATE_BODY},
        1.5);
    expect_retry_at(&(struct fake_fault){.status = 429, .retry_after = "7", .body = RATE_BODY}, 7);
    expect_retry_at(&(struct fake_fault){.status = 429,
                                         .header = "llm_provider-retry-after: 30",
                                         .body = RATE_BODY},
                    30);

    /* OpenAI's own headers: the exhausted limit's reset (two header lines in one). */
    expect_retry_at(&(struct fake_fault){.status = 429,
                                         .header = "x-ratelimit-remaining-requests: 0\r\n"
                                                   "x-ratelimit-reset-requests: 6m0.5s\r\n"
                                                   "x-ratelimit-remaining-tokens: 5000\r\n"
                                                   "x-ratelimit-reset-tokens: 20ms",
                                         .body = RATE_BODY},
                    360.5);
    expect_retry_at(&(struct fake_fault){.status = 429,
                                         .header = "x-ratelimit-remaining-tokens: 0\r\n"
                                                   "x-ratelimit-reset-tokens: 1h2m3s",
                                         .body = RATE_BODY},
                    3723);

    /* An HTTP-date gives an exact time. */
    time_t at = time(NULL) + 120;
    char date[64];
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", gmtime(&at));
    struct chat_seen s;
    expect_failure(&(struct fake_fault){.status = 429, .retry_after = date, .body = RATE_BODY},
                   JOB_ERR_RETRY_AT, "Tierone::LLM::RateLimited", "Rate limit reached", &s);
    cr_assert_float_eq(s.err->retry_at, (double)at, 1e-6);
    chat_seen_free(&s);

    /* Without a header (or with limits left): plain retry, with the service's message. */
    expect_failure(&(struct fake_fault){.status = 429,
                                        .header = "x-ratelimit-remaining-requests: 2\r\n"
                                                  "x-ratelimit-reset-requests: 1s",
                                        .body = RATE_BODY},
                   JOB_ERR_RETRY, "Tierone::LLM::RateLimited",
                   "POST /v1/chat/completions -> HTTP 429: Rate limit reached for gpt-test", &s);
    cr_assert_eq(s.err->retry_at, 0);
    chat_seen_free(&s);
    t_finish();
}

Test(llm, insufficient_quota_is_permanent)
{
    t_start(NULL, t_opts());
    struct chat_seen s;
    /* OpenAI's body; the Retry-After must not turn it into a retry. */
    expect_failure(
        &(struct fake_fault){
            .status = 429,
            .retry_after = "20",
            .body = "{\"error\":{\"message\":\"You exceeded your current quota, please check your "
                    "plan and billing details.\",\"type\":\"insufficient_quota\",\"param\":null,"
                    "\"code\":\"insufficient_quota\"}}"},
        JOB_ERR_PERMANENT, "Tierone::LLM::InsufficientQuota",
        "HTTP 429: You exceeded your current quota", &s);
    cr_assert_eq(s.err->retry_at, 0);
    chat_seen_free(&s);
    /* LiteLLM's: code is the status, the provider's text is inside the message. */
    expect_failure(
        &(struct fake_fault){
            .status = 429,
            .body = "{\"error\":{\"message\":\"litellm.RateLimitError: RateLimitError: "
                    "OpenAIException - You exceeded your current quota, please check your plan "
                    "and billing details.\",\"type\":\"throttling_error\",\"param\":null,"
                    "\"code\":\"429\"}}"},
        JOB_ERR_PERMANENT, "Tierone::LLM::InsufficientQuota", "litellm.RateLimitError", &s);
    chat_seen_free(&s);
    /* LiteLLM's gateway budget. */
    expect_failure(&(struct fake_fault){.status = 429,
                                        .body = "{\"error\":{\"message\":\"Budget has been "
                                                "exceeded! Current cost: 10.2, Max budget: 10.0\","
                                                "\"type\":\"budget_exceeded\",\"param\":null,"
                                                "\"code\":\"429\"}}"},
                   JOB_ERR_PERMANENT, "Tierone::LLM::InsufficientQuota", "Budget has been", &s);
    chat_seen_free(&s);
    t_finish();
}

Test(llm, server_errors_retry)
{
    t_start(NULL, t_opts());
    struct chat_seen s;
    expect_failure(&(struct fake_fault){.status = 500,
                                        .body = "{\"error\":{\"message\":\"The server had an "
                                                "error while processing your request.\",\"type\":"
                                                "\"server_error\",\"param\":null,\"code\":null}}"},
                   JOB_ERR_RETRY, "Tierone::LLM::ServerError", "HTTP 500: The server had an error",
                   &s);
    chat_seen_free(&s);
    expect_failure(&(struct fake_fault){.status = 502, .body = "<html>Bad Gateway</html>"},
                   JOB_ERR_RETRY, "Tierone::LLM::ServerError", "HTTP 502: <html>Bad Gateway", &s);
    chat_seen_free(&s);
    expect_failure(&(struct fake_fault){.status = 503,
                                        .retry_after = "2",
                                        .body = "{\"error\":{\"message\":\"Slow Down\",\"type\":"
                                                "\"server_error\",\"code\":"
                                                "\"server_is_overloaded\"}}"},
                   JOB_ERR_RETRY_AT, "Tierone::LLM::ServerError", "HTTP 503: Slow Down", &s);
    cr_assert_geq(s.err->retry_at, s.before + 2 - 1e-6);
    cr_assert_leq(s.err->retry_at, s.after + 2 + 1e-6);
    chat_seen_free(&s);
    expect_failure(&(struct fake_fault){.status = 408,
                                        .body = "{\"error\":{\"message\":\"litellm.Timeout: "
                                                "Request timed out\",\"code\":\"408\"}}"},
                   JOB_ERR_RETRY, "Tierone::LLM::Timeout", "HTTP 408: litellm.Timeout", &s);
    chat_seen_free(&s);
    expect_failure(
        &(struct fake_fault){.status = 409, .body = "{\"error\":{\"message\":\"Conflict\"}}"},
        JOB_ERR_RETRY, "Tierone::LLM::Conflict", "HTTP 409: Conflict", &s);
    chat_seen_free(&s);
    t_finish();
}

Test(llm, transport_failures_retry)
{
    struct llm_opts o = t_opts();
    o.timeout_ms = 300;
    t_start(NULL, o);
    struct chat_seen s;
    expect_failure(&(struct fake_fault){.action = FAKE_HTTP_DROP}, JOB_ERR_RETRY,
                   "Tierone::LLM::TransportError", "POST /v1/chat/completions -> ", &s);
    chat_seen_free(&s);
    expect_failure(&(struct fake_fault){.action = FAKE_HTTP_GARBAGE}, JOB_ERR_RETRY,
                   "Tierone::LLM::TransportError", "POST /v1/chat/completions -> ", &s);
    chat_seen_free(&s);
    expect_failure(&(struct fake_fault){.delay_ms = 5000, .pass_through = 1}, JOB_ERR_RETRY,
                   "Tierone::LLM::Timeout", "POST /v1/chat/completions -> ", &s);
    chat_seen_free(&s);
    /* A 200 that is not JSON (a proxy's page), or JSON without choices. */
    expect_failure(&(struct fake_fault){.status = 200, .body = "<html>ok</html>"}, JOB_ERR_RETRY,
                   "Tierone::LLM::BadResponse", "not JSON", &s);
    chat_seen_free(&s);
    expect_failure(&(struct fake_fault){.status = 200, .body = "{\"id\":\"x\",\"choices\":[]}"},
                   JOB_ERR_RETRY, "Tierone::LLM::BadResponse", "no choices[0].message", &s);
    chat_seen_free(&s);
    /* A 200 carrying an error envelope whose code is a status (some gateways). */
    expect_failure(
        &(struct fake_fault){.status = 200,
                             .retry_after = "4",
                             .body = "{\"error\":{\"message\":\"litellm.RateLimitError: busy\","
                                     "\"type\":\"throttling_error\",\"code\":\"429\"}}"},
        JOB_ERR_RETRY_AT, "Tierone::LLM::RateLimited", "litellm.RateLimitError: busy", &s);
    cr_assert_geq(s.err->retry_at, s.before + 4 - 1e-6);
    cr_assert_leq(s.err->retry_at, s.after + 4 + 1e-6);
    chat_seen_free(&s);
    expect_failure(&(struct fake_fault){.status = 200,
                                        .body = "{\"error\":{\"message\":\"odd\",\"code\":null}}"},
                   JOB_ERR_RETRY, "Tierone::LLM::BadResponse", "odd", &s);
    chat_seen_free(&s);
    t_finish();
}

Test(llm, client_errors_are_permanent)
{
    static const char *const models[] = {"other-model", NULL};
    struct fake_llm_opts fo = {.api_key = "sk-the-real-key", .models = models};
    t_start(&fo, t_opts());
    struct chat_seen s;
    struct llm_chat_request req = schema_req();
    chat(&req, &s); /* wrong key */
    cr_assert_eq(s.err->kind, JOB_ERR_PERMANENT);
    cr_assert_str_eq(s.err->error_class, "Tierone::LLM::Unauthorized");
    cr_assert(strstr(s.err->error_message, "HTTP 401: Incorrect API key provided"), "%s",
              s.err->error_message);
    cr_assert_null(strstr(s.err->error_message, KEY));
    chat_seen_free(&s);
    fake_llm_free(T.fake);

    fo.api_key = KEY;
    T.fake = fake_llm_start(&fo);
    llm_free(T.llm);
    struct llm_opts o = t_opts();
    o.http = T.http;
    o.base_url = fake_llm_url(T.fake);
    T.llm = llm_new(&o, NULL);
    chat(&req, &s); /* unknown model */
    cr_assert_eq(s.err->kind, JOB_ERR_PERMANENT);
    cr_assert_str_eq(s.err->error_class, "Tierone::LLM::NotFound");
    cr_assert(strstr(s.err->error_message, "HTTP 404: The model `gpt-test` does not exist"), "%s",
              s.err->error_message);
    chat_seen_free(&s);
    expect_failure(&(struct fake_fault){.status = 403,
                                        .body = "{\"error\":{\"message\":\"Country, region, or "
                                                "territory not supported\",\"type\":"
                                                "\"request_forbidden\",\"code\":"
                                                "\"unsupported_country_region_territory\"}}"},
                   JOB_ERR_PERMANENT, "Tierone::LLM::Forbidden", "HTTP 403: Country, region", &s);
    chat_seen_free(&s);
    expect_failure(
        &(struct fake_fault){.status = 400,
                             .body =
                                 "{\"error\":{\"message\":\"This model's maximum context "
                                 "length is 8192 tokens. However, your messages resulted "
                                 "in 9000 tokens.\",\"type\":\"invalid_request_error\","
                                 "\"param\":\"messages\",\"code\":\"context_length_exceeded\"}}"},
        JOB_ERR_PERMANENT, "Tierone::LLM::ContextLengthExceeded", "maximum context length", &s);
    chat_seen_free(&s);
    expect_failure(&(struct fake_fault){.status = 400,
                                        .body = "{\"error\":{\"message\":\"litellm."
                                                "ContextWindowExceededError: litellm."
                                                "BadRequestError: prompt too long\",\"type\":null,"
                                                "\"param\":null,\"code\":\"400\"}}"},
                   JOB_ERR_PERMANENT, "Tierone::LLM::ContextLengthExceeded",
                   "ContextWindowExceededError", &s);
    chat_seen_free(&s);
    expect_failure(&(struct fake_fault){.status = 400,
                                        .body = "{\"error\":{\"message\":\"Invalid schema for "
                                                "response_format 'decision'\",\"type\":"
                                                "\"invalid_request_error\",\"code\":"
                                                "\"400\"}}"},
                   JOB_ERR_PERMANENT, "Tierone::LLM::ClientError", "Invalid schema", &s);
    chat_seen_free(&s);
    t_finish();
}

/* --- embeddings ------------------------------------------------------------------------ */

struct embed_seen {
    int calls;
    struct job_error *err;
    size_t n, dim;
    float *data; /* taken from the result */
    char *model;
    long prompt_tokens;
};

static void on_embed(struct job_error *err, struct llm_embeddings *res, void *arg)
{
    struct embed_seen *s = arg;
    s->calls++;
    s->err = err;
    if (res) {
        s->n = res->n;
        s->dim = res->dim;
        s->data = res->data;
        res->data = NULL;
        s->model = dup_or_null(res->model);
        s->prompt_tokens = res->prompt_tokens;
    }
}

static void embed_seen_free(struct embed_seen *s)
{
    job_error_free(s->err);
    free(s->data);
    free(s->model);
}

Test(llm, embeddings_batched_and_mapped_by_index)
{
    struct llm_opts o = t_opts();
    o.embedding_batch = 4;
    o.dimensions = 16;
    t_start(NULL, o);
    char *texts[10];
    for (int i = 0; i < 10; i++)
        texts[i] = xasprintf("chunk number %d about password resets", i);
    struct embed_seen s = {0};
    cr_assert_eq(llm_embed(T.llm, "jid-emb", (const char *const *)texts, 10, on_embed, &s), 0);
    run_until(&s.calls);
    cr_assert_null(s.err, "%s", s.err ? s.err->error_message : "");
    cr_assert_eq(s.n, 10);
    cr_assert_eq(s.dim, 16);
    cr_assert_str_eq(s.model, "emb-test");
    cr_assert_gt(s.prompt_tokens, 0);
    float want[16];
    for (int i = 0; i < 10; i++) {
        fake_llm_embedding(texts[i], 16, want);
        for (int k = 0; k < 16; k++)
            cr_assert_eq(s.data[i * 16 + k], want[k], "vector %d[%d]", i, k);
    }
    cr_assert_eq(fake_llm_count(T.fake), 3);
    cr_assert_eq(fake_llm_embedding_count(T.fake), 3);
    size_t sizes[] = {4, 4, 2};
    size_t next = 0;
    for (size_t r = 0; r < 3; r++) {
        const struct fake_http_request *hr = fake_llm_request(T.fake, r);
        cr_assert_str_eq(hr->path, "/v1/embeddings");
        cr_assert_str_eq(fake_http_request_header(hr, "Authorization"), "Bearer " KEY);
        json_t *b = req_json(r);
        cr_assert_str_eq(json_string_value(json_object_get(b, "model")), "emb-test");
        cr_assert_str_eq(json_string_value(json_object_get(b, "encoding_format")), "float");
        cr_assert_eq(json_integer_value(json_object_get(b, "dimensions")), 16);
        json_t *in = json_object_get(b, "input");
        cr_assert_eq(json_array_size(in), sizes[r]);
        for (size_t i = 0; i < sizes[r]; i++)
            cr_assert_str_eq(json_string_value(json_array_get(in, i)), texts[next++]);
        json_decref(b);
    }
    for (int i = 0; i < 10; i++)
        free(texts[i]);
    embed_seen_free(&s);
    t_finish();
}

Test(llm, embeddings_failed_batch_fails_the_call)
{
    struct llm_opts o = t_opts();
    o.embedding_batch = 2;
    t_start(NULL, o);
    fake_faults_push(fake_llm_faults(T.fake), &(struct fake_fault){.pass_through = 1}, 1);
    fake_faults_push(fake_llm_faults(T.fake),
                     &(struct fake_fault){.status = 503, .retry_after = "3", .body = "busy"}, 1);
    const char *texts[] = {"a", "b", "c", "d", "e"};
    struct embed_seen s = {0};
    double before = clock_wall_s();
    cr_assert_eq(llm_embed(T.llm, "jid-emb", texts, 5, on_embed, &s), 0);
    run_until(&s.calls);
    double after = clock_wall_s();
    cr_assert_not_null(s.err);
    cr_assert_eq(s.err->kind, JOB_ERR_RETRY_AT);
    cr_assert_str_eq(s.err->error_class, "Tierone::LLM::ServerError");
    cr_assert_str_eq(s.err->error_message, "POST /v1/embeddings -> HTTP 503: busy");
    cr_assert_geq(s.err->retry_at, before + 3 - 1e-6);
    cr_assert_leq(s.err->retry_at, after + 3 + 1e-6);
    cr_assert_eq(fake_llm_count(T.fake), 2, "the third batch must not be sent");
    cr_assert_null(s.data);
    embed_seen_free(&s);

    /* A configured dimension the model ignores is a setting error. */
    llm_free(T.llm);
    o = t_opts();
    o.http = T.http;
    o.base_url = fake_llm_url(T.fake);
    o.dimensions = 4;
    T.llm = llm_new(&o, NULL);
    fake_faults_push(fake_llm_faults(T.fake),
                     &(struct fake_fault){.status = 200,
                                          .body = "{\"object\":\"list\",\"data\":[{\"index\":0,"
                                                  "\"embedding\":[0.1,0.2]}]}"},
                     1);
    memset(&s, 0, sizeof s);
    cr_assert_eq(llm_embed(T.llm, "jid-emb", texts, 1, on_embed, &s), 0);
    run_until(&s.calls);
    cr_assert_eq(s.err->kind, JOB_ERR_PERMANENT);
    cr_assert_str_eq(s.err->error_class, "Tierone::LLM::BadResponse");
    embed_seen_free(&s);
    t_finish();
}

/* --- rate limit ------------------------------------------------------------------------ */

static void on_redis_closed(void *data)
{
    *(int *)data = 1;
}

Test(llm, rate_limited_call_is_rescheduled_without_a_request)
{
    redisContext *rc = test_redis_connect(REDIS_DB);
    redisFree(rc);
    t_start(NULL, t_opts());
    struct redis_opts ro = {.url = test_redis_url(REDIS_DB), .name = "test-llm"};
    const char *why = NULL;
    struct redis *redis = redis_new(&T.loop, &ro, &why);
    cr_assert_not_null(redis, "redis_new: %s", why);
    cr_assert(test_loop_until_redis_up(&T.loop, redis, 10000), "Redis did not come up");
    struct rate_limit *rl = rate_limit_new(redis, "llm-test", 0.01, 1, &why);
    cr_assert_not_null(rl, "%s", why);
    llm_free(T.llm);
    struct llm_opts o = t_opts();
    o.http = T.http;
    o.base_url = fake_llm_url(T.fake);
    o.limit = rl;
    T.llm = llm_new(&o, NULL);

    struct llm_chat_request req = schema_req();
    struct chat_seen s;
    chat(&req, &s); /* the one token */
    cr_assert_null(s.err, "%s", s.err ? s.err->error_message : "");
    chat_seen_free(&s);
    chat(&req, &s);
    cr_assert_not_null(s.err);
    cr_assert_eq(s.err->kind, JOB_ERR_RESCHEDULE, "%s", job_error_kind_name(s.err->kind));
    cr_assert_gt(s.err->retry_at, s.before);
    chat_seen_free(&s);

    const char *texts[] = {"x"};
    struct embed_seen e = {0};
    cr_assert_eq(llm_embed(T.llm, "jid-emb", texts, 1, on_embed, &e), 0);
    run_until(&e.calls);
    cr_assert_eq(e.err->kind, JOB_ERR_RESCHEDULE);
    embed_seen_free(&e);
    cr_assert_eq(fake_llm_count(T.fake), 1, "no request without a token");

    int closed = 0;
    redis_close(redis, on_redis_closed, &closed);
    run_until(&closed);
    rate_limit_free(rl);
    t_finish();
}
