/* The Chatwoot client against fake_chatwoot: every call, which token each call uses, the
 * Liquid escape (pure, and end to end through the fake's model of Chatwoot's rendering),
 * read-merge-write labels, every failure class, and the fleet-wide rate limit (real Redis,
 * database 11). */
#include "chatwoot.h"
#include "clock.h"
#include "fake_chatwoot.h"
#include "log.h"
#include "rate_limit.h"
#include "test_loop.h"
#include "test_redis.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define DB   11
#define ACC  3
#define CONV 42

/* ---- harness --------------------------------------------------------------------------- */

struct t {
    uv_loop_t loop;
    struct http_client *http;
    struct fake_chatwoot *fake;
    struct chatwoot *cw;
    int closed;
};

struct outcome {
    int done;
    struct job_error *err;
    json_t *result; /* deep copy */
};

static void on_done(struct job_error *err, json_t *result, void *arg)
{
    struct outcome *o = arg;
    o->done++;
    o->err = err;
    o->result = result ? json_deep_copy(result) : NULL;
    if (err)
        cr_assert_null(result, "an error comes without a result");
}

static void outcome_clear(struct outcome *o)
{
    job_error_free(o->err);
    json_decref(o->result);
    memset(o, 0, sizeof *o);
}

static void run(struct t *t, struct outcome *o)
{
    cr_assert_eq(o->done, 0, "the callback must not run inside the call");
    test_loop_until_flag(&t->loop, &o->done, 10000);
    cr_assert_eq(o->done, 1, "the callback ran %d times", o->done);
}

static struct chatwoot *client(struct t *t, const char *bot, const char *user, uint64_t timeout)
{
    struct chatwoot_opts o = {.http = t->http,
                              .base_url = fake_chatwoot_url(t->fake),
                              .bot_token = bot,
                              .user_token = user,
                              .timeout_ms = timeout};
    char *err = NULL;
    struct chatwoot *c = chatwoot_new(&o, &err);
    cr_assert_not_null(c, "%s", err);
    return c;
}

static void t_init(struct t *t)
{
    memset(t, 0, sizeof *t);
    log_init("test", LOG_OFF);
    uv_loop_init(&t->loop);
    char *err = NULL;
    t->http = http_client_new(&t->loop, NULL, &err);
    cr_assert_not_null(t->http, "%s", err);
    t->fake = fake_chatwoot_start(NULL);
    cr_assert_not_null(t->fake);
    long alice = fake_chatwoot_add_contact(t->fake, ACC, "{\"name\":\"Alice Doe\"}");
    fake_chatwoot_add_conversation(t->fake, ACC, CONV, "pending", 5, alice);
    t->cw = client(t, "bot-token", "user-token", 5000);
}

static void on_closed(void *arg)
{
    *(int *)arg = 1;
}

static void t_close(struct t *t)
{
    chatwoot_free(t->cw);
    http_client_close(t->http, on_closed, &t->closed);
    uv_run(&t->loop, UV_RUN_DEFAULT);
    cr_assert(t->closed);
    cr_assert_eq(uv_loop_close(&t->loop), 0, "handles left open");
    fake_chatwoot_free(t->fake);
}

/* The i-th request the fake received. */
static const struct fake_http_request *req_at(struct t *t, size_t i)
{
    const struct fake_http_request *r = fake_http_request_at(fake_chatwoot_http(t->fake), i);
    cr_assert_not_null(r, "request %zu was not received", i);
    return r;
}

static size_t nreq(struct t *t)
{
    return fake_http_count(fake_chatwoot_http(t->fake));
}

static const char *token_of(const struct fake_http_request *r)
{
    const char *v = fake_http_request_header(r, "api_access_token");
    return v ? v : "(none)";
}

/* ---- the Liquid escape ----------------------------------------------------------------- */

static const char *const liquid_cases[] = {
    "",
    "Hello, how can I help?",
    "{",
    "}",
    "{}",
    "{{",
    "}}",
    "{%",
    "%}",
    "{{{",
    "{{{{}}}}",
    "Dear {{ contact.name }}, your ticket is {{conversation.display_id}}.",
    "{% if true %}yes{% endif %}",
    "{% raw %}not raw{% endraw %}",
    "{%comment%}hidden{%endcomment%} shown",
    "{{- contact.name -}}",
    "{{ \"{\" }}",
    "{{ \"%60\" | url_decode }}",
    "{{ '{{' }}",
    "\\{{x}}",
    "100% {off} %} }}",
    "JSON: {\"a\": {\"b\": [1, {\"c\": 2}]}}",
    "Run `make` then `make install`.",
    "Use `{{ page.title }}` in the template.",
    "`a` {{ b }} `c`",
    "a{`b`",
    "{`",
    "`{`",
    "`x`{",
    "`x`{{y}}",
    "``",
    "```",
    "````{{x}}",
    "`unclosed {{ contact.name }}",
    "a ` b {{ c }} ` d ` e {{ f }}",
    "`{% endraw %}{{ contact.name }}`",
    "`{% endraw %}{{ contact.name }}{% raw %}`",
    "`{%- endraw -%}` and {{ contact.name }}",
    "`{% raw %}` {% endraw %}",
    "`{% comment %}` {{ contact.email }}",
    "C++ `std::map<int, {int}>` and `{x}`",
    "multi\nline `a\n{{ b }}\nc` end {% if x %}",
    "h\xc3\xa9llo {{ w\xc3\xb6rld }} \xe2\x9c\x93 `{{ \xc3\xa9 }}`",
    "```\nfunction f() { return {a: 1}; }\n```\nThen {{ contact.name }}",
    "```liquid\n{% for x in list %}{{ x }}{% endfor %}\n```",
    "%60 {{ \"%60\" }} `%60`",
};

Test(chatwoot_liquid, the_fake_renders_like_chatwoot)
{
    /* Sanity of the model the round trip relies on. */
    struct {
        const char *in, *out;
    } cases[] = {
        {"Hi {{ contact.name }}!", "Hi Alice Doe!"},
        {"Hi {{contact.first_name | upcase}}", "Hi ALICE"},
        {"{{ agent.name }} here", "Tierone Bot here"},
        {"{{ nothing.here }}x", "x"},
        {"{% if contact.name %}a{% endif %}b", "ab"},
        {"code: `{{ contact.name }}`", "code: `{{ contact.name }}`"},
        {"{{ contact.name", "{{ contact.name"}, /* syntax error: unchanged */
        {"{% frobnicate %}{{ contact.name }}", "{% frobnicate %}{{ contact.name }}"},
        {"{% if x %}never closed {{ contact.name }}", "{% if x %}never closed {{ contact.name }}"},
        {"{{ \"%7B%7B\" | url_decode }}", "{{"},
        /* an endraw inside a code span ends the raw block early */
        {"`{% endraw %}{{ contact.name }}{% raw %}`", "`Alice Doe`"},
        {"`a{% endraw %}{{ contact.name }}`", "`a{% endraw %}{{ contact.name }}`"}, /* error */
        {"a {{- ' b' -}} c", "a bc"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *got = fake_chatwoot_liquid(cases[i].in, NULL);
        cr_assert_str_eq(got, cases[i].out, "case %zu: %s", i, cases[i].in);
        free(got);
    }
}

Test(chatwoot_liquid, escape_round_trips)
{
    size_t altered = 0;
    for (size_t i = 0; i < sizeof liquid_cases / sizeof *liquid_cases; i++) {
        const char *s = liquid_cases[i];
        char *unescaped = fake_chatwoot_liquid(s, NULL);
        altered += strcmp(unescaped, s) != 0;
        free(unescaped);
        char *e = chatwoot_escape_liquid(s);
        char *stored = fake_chatwoot_liquid(e, NULL);
        cr_assert_str_eq(stored, s, "case %zu: %s\nsent: %s", i, s, e);
        if (!strchr(s, '{'))
            cr_assert_str_eq(e, s, "text without braces is sent as is");
        free(e);
        free(stored);
    }
    /* the cases matter: sent as they are, Chatwoot would change many of them */
    cr_assert_geq(altered, 15, "only %zu cases are altered without the escape", altered);
}

Test(chatwoot_liquid, escape_is_minimal)
{
    struct {
        const char *in, *out;
    } cases[] = {
        {"a { b } c", "a { b } c"},
        {"{{x}}", "{{ \"{\" }}{x}}"},
        {"{%x%}", "{{ \"{\" }}%x%}"},
        {"Run `{x}`", "Run `{x}`"},
        {"{`b`", "{{ \"{\" }}`b`"},
        {"`{{x}}`", "{{ \"%60\" | url_decode }}{{ \"{\" }}{x}}{{ \"%60\" | url_decode }}"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *e = chatwoot_escape_liquid(cases[i].in);
        cr_assert_str_eq(e, cases[i].out, "case %zu", i);
        free(e);
    }
}

/* ---- conversations ----------------------------------------------------------------------- */

Test(chatwoot, new_checks_its_options)
{
    struct chatwoot_opts o = {.http = (struct http_client *)1, .base_url = "https://cw.example"};
    char *err = NULL;
    cr_assert_null(chatwoot_new(&o, &err), "no token at all");
    cr_assert(strstr(err, "neither"), "%s", err);
    free(err);
    o.user_token = "u";
    o.base_url = "cw.example";
    cr_assert_null(chatwoot_new(&o, &err));
    free(err);
    o.base_url = "https:///x";
    cr_assert_null(chatwoot_new(&o, &err));
    free(err);
    o.base_url = "https://cw.example/";
    struct chatwoot *c = chatwoot_new(&o, &err);
    cr_assert_not_null(c);
    cr_assert_str_eq(chatwoot_last_error(c), "");
    chatwoot_free(c);
}

Test(chatwoot, get_conversation_uses_the_bot_token)
{
    struct t t;
    t_init(&t);
    struct outcome o = {0};
    cr_assert_eq(chatwoot_get_conversation(t.cw, "jid1", ACC, CONV, on_done, &o), 0);
    run(&t, &o);
    cr_assert_null(o.err, "%s", o.err->error_message);
    cr_assert_eq(json_integer_value(json_object_get(o.result, "id")), CONV);
    cr_assert_str_eq(json_string_value(json_object_get(o.result, "status")), "pending");
    cr_assert_str_eq(json_string_value(json_object_get(
                         json_object_get(json_object_get(o.result, "meta"), "sender"), "name")),
                     "Alice Doe");
    const struct fake_http_request *r = req_at(&t, 0);
    cr_assert_str_eq(r->method, "GET");
    char path[64];
    snprintf(path, sizeof path, "/api/v1/accounts/%d/conversations/%d", ACC, CONV);
    cr_assert_str_eq(r->path, path);
    cr_assert_str_eq(token_of(r), "bot-token");
    outcome_clear(&o);

    /* unknown conversation: 404, permanent, Chatwoot's text */
    cr_assert_eq(chatwoot_get_conversation(t.cw, NULL, ACC, 999, on_done, &o), 0);
    run(&t, &o);
    cr_assert_eq(o.err->kind, JOB_ERR_PERMANENT);
    cr_assert_str_eq(o.err->error_class, "Tierone::Chatwoot::NotFound");
    cr_assert_str_eq(o.err->error_message, "GET /api/v1/accounts/3/conversations/999 -> HTTP 404: "
                                           "Resource could not be found");
    outcome_clear(&o);

    /* invalid inputs: -1, nothing sent, a reason */
    size_t sent = nreq(&t);
    cr_assert_eq(chatwoot_get_conversation(t.cw, NULL, 0, CONV, on_done, &o), -1);
    cr_assert(strstr(chatwoot_last_error(t.cw), "must be > 0"));
    cr_assert_eq(chatwoot_toggle_status(t.cw, NULL, ACC, CONV, "closed", 0, on_done, &o), -1);
    cr_assert_eq(chatwoot_toggle_status(t.cw, NULL, ACC, CONV, "open", 99, on_done, &o), -1);
    struct chatwoot_message empty = {.content = ""};
    cr_assert_eq(chatwoot_create_message(t.cw, NULL, ACC, CONV, &empty, on_done, &o), -1);
    cr_assert_eq(nreq(&t), sent);
    cr_assert_eq(o.done, 0);
    t_close(&t);
}

Test(chatwoot, list_messages_after_an_id_needs_the_user_token)
{
    struct t t;
    t_init(&t);
    long first = fake_chatwoot_add_message(t.fake, ACC, CONV, 0, "hello", 0);
    long second = fake_chatwoot_add_message(t.fake, ACC, CONV, 0, "anyone?", 0);
    fake_chatwoot_add_message(t.fake, ACC, CONV, 1, "note", 1);
    struct outcome o = {0};
    cr_assert_eq(chatwoot_list_messages(t.cw, "j", ACC, CONV, first, on_done, &o), 0);
    run(&t, &o);
    cr_assert_null(o.err);
    cr_assert(json_is_array(o.result));
    cr_assert_eq(json_array_size(o.result), 2);
    cr_assert_eq(json_integer_value(json_object_get(json_array_get(o.result, 0), "id")), second);
    const struct fake_http_request *r = req_at(&t, 0);
    char q[32];
    snprintf(q, sizeof q, "after=%ld", first);
    cr_assert_str_eq(r->query, q);
    cr_assert_str_eq(token_of(r), "user-token");
    outcome_clear(&o);

    /* after 0: the latest 20, no query */
    cr_assert_eq(chatwoot_list_messages(t.cw, "j", ACC, CONV, 0, on_done, &o), 0);
    run(&t, &o);
    cr_assert_eq(json_array_size(o.result), 3);
    cr_assert_str_eq(req_at(&t, 1)->query, "");
    outcome_clear(&o);

    /* a bot-only client cannot list messages: -1 with a reason, nothing sent */
    struct chatwoot *bot_only = client(&t, "bot-token", NULL, 5000);
    cr_assert_eq(chatwoot_list_messages(bot_only, "j", ACC, CONV, first, on_done, &o), -1);
    cr_assert(strstr(chatwoot_last_error(bot_only), "user token"), "%s",
              chatwoot_last_error(bot_only));
    cr_assert_eq(chatwoot_search_contacts(bot_only, "j", ACC, "x", 1, on_done, &o), -1);
    cr_assert_eq(nreq(&t), 2);
    cr_assert_eq(o.done, 0);
    chatwoot_free(bot_only);

    /* the fake refuses the bot token on messages index the way Chatwoot does */
    struct chatwoot *wrong = client(&t, NULL, "bot-token", 5000);
    cr_assert_eq(chatwoot_list_messages(wrong, "j", ACC, CONV, 0, on_done, &o), 0);
    run(&t, &o);
    cr_assert_eq(o.err->kind, JOB_ERR_PERMANENT);
    cr_assert(strstr(o.err->error_message,
                     "HTTP 401: Access to this endpoint is not authorized for bots (user token)"),
              "%s", o.err->error_message);
    outcome_clear(&o);
    chatwoot_free(wrong);
    t_close(&t);
}

Test(chatwoot, create_message_reply_and_private_note_with_a_marker)
{
    struct t t;
    t_init(&t);
    long incoming = fake_chatwoot_add_message(t.fake, ACC, CONV, 0, "my order?", 0);
    json_t *marker = json_pack("{s:I}", "tierone_reply_to", (json_int_t)incoming);
    struct chatwoot_message m = {
        .content = "It ships today.", .content_attributes = marker, .echo_id = "e-1"};
    struct outcome o = {0};
    cr_assert_eq(chatwoot_create_message(t.cw, "j", ACC, CONV, &m, on_done, &o), 0);
    run(&t, &o);
    cr_assert_null(o.err, "%s", o.err->error_message);
    long id1 = json_integer_value(json_object_get(o.result, "id"));
    cr_assert(id1 > incoming);
    cr_assert_str_eq(json_string_value(json_object_get(o.result, "content")), "It ships today.");
    cr_assert_str_eq(json_string_value(json_object_get(o.result, "echo_id")), "e-1");
    cr_assert(json_equal(json_object_get(o.result, "content_attributes"), marker));
    const struct fake_http_request *r = req_at(&t, 0);
    cr_assert_str_eq(r->method, "POST");
    cr_assert_str_eq(token_of(r), "bot-token");
    json_t *body = json_loads(r->body, 0, NULL);
    cr_assert_str_eq(json_string_value(json_object_get(body, "message_type")), "outgoing");
    cr_assert(json_is_false(json_object_get(body, "private")));
    json_decref(body);
    outcome_clear(&o);

    struct chatwoot_message note = {.content = "Escalated to billing.", .private_note = 1};
    cr_assert_eq(chatwoot_create_message(t.cw, "j", ACC, CONV, &note, on_done, &o), 0);
    run(&t, &o);
    cr_assert_null(o.err);
    cr_assert(json_integer_value(json_object_get(o.result, "id")) > id1, "ids increase");
    outcome_clear(&o);

    json_t *msgs = fake_chatwoot_messages(t.fake, ACC, CONV);
    cr_assert_eq(json_array_size(msgs), 3);
    json_t *reply = json_array_get(msgs, 1), *pn = json_array_get(msgs, 2);
    cr_assert(json_equal(json_object_get(reply, "content_attributes"), marker),
              "the marker is stored");
    cr_assert_eq(json_integer_value(json_object_get(reply, "message_type")), 1);
    cr_assert(json_is_false(json_object_get(reply, "private")));
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(reply, "sender"), "type")),
                     "agent_bot");
    cr_assert(json_is_true(json_object_get(pn, "private")));
    json_decref(msgs);

    /* list messages after the incoming one finds the marker (the resend check) */
    cr_assert_eq(chatwoot_list_messages(t.cw, "j", ACC, CONV, incoming, on_done, &o), 0);
    run(&t, &o);
    cr_assert_eq(json_integer_value(json_object_get(
                     json_object_get(json_array_get(o.result, 0), "content_attributes"),
                     "tierone_reply_to")),
                 incoming);
    outcome_clear(&o);
    json_decref(marker);
    t_close(&t);
}

Test(chatwoot, liquid_is_escaped_end_to_end)
{
    struct t t;
    t_init(&t);
    /* Without the escape Chatwoot would store "Hi Alice Doe": the fake renders Liquid. */
    fake_chatwoot_add_message(t.fake, ACC, CONV, 0, "x", 0);
    for (size_t i = 0; i < sizeof liquid_cases / sizeof *liquid_cases; i++) {
        if (!*liquid_cases[i])
            continue;
        struct chatwoot_message m = {.content = liquid_cases[i], .private_note = (int)(i % 2)};
        struct outcome o = {0};
        cr_assert_eq(chatwoot_create_message(t.cw, "j", ACC, CONV, &m, on_done, &o), 0);
        run(&t, &o);
        cr_assert_null(o.err, "%s", o.err->error_message);
        cr_assert_str_eq(json_string_value(json_object_get(o.result, "content")), liquid_cases[i],
                         "case %zu", i);
        outcome_clear(&o);
    }
    json_t *msgs = fake_chatwoot_messages(t.fake, ACC, CONV);
    size_t k = 1;
    for (size_t i = 0; i < sizeof liquid_cases / sizeof *liquid_cases; i++) {
        if (!*liquid_cases[i])
            continue;
        cr_assert_str_eq(json_string_value(json_object_get(json_array_get(msgs, k++), "content")),
                         liquid_cases[i]);
    }
    json_decref(msgs);
    t_close(&t);
}

/* ---- labels, status ----------------------------------------------------------------------- */

Test(chatwoot, add_labels_reads_merges_writes)
{
    struct t t;
    t_init(&t);
    const char *existing[] = {"vip", "billing"};
    fake_chatwoot_set_labels(t.fake, ACC, CONV, existing, 2);
    struct outcome o = {0};
    cr_assert_eq(chatwoot_get_labels(t.cw, "j", ACC, CONV, on_done, &o), 0);
    run(&t, &o);
    cr_assert_eq(json_array_size(o.result), 2);
    outcome_clear(&o);

    const char *add[] = {"needs-human", "vip"};
    cr_assert_eq(chatwoot_add_labels(t.cw, "j", ACC, CONV, add, 2, on_done, &o), 0);
    run(&t, &o);
    cr_assert_null(o.err);
    json_t *want = json_pack("[s,s,s]", "vip", "billing", "needs-human");
    cr_assert(json_equal(o.result, want), "result");
    json_t *stored = fake_chatwoot_labels(t.fake, ACC, CONV);
    cr_assert(json_equal(stored, want), "existing labels kept");
    json_decref(stored);
    cr_assert_eq(nreq(&t), 3, "GET, GET, POST");
    cr_assert_str_eq(req_at(&t, 1)->method, "GET");
    cr_assert_str_eq(req_at(&t, 2)->method, "POST");
    cr_assert_str_eq(token_of(req_at(&t, 2)), "bot-token");
    json_t *body = json_loads(req_at(&t, 2)->body, 0, NULL);
    cr_assert(json_equal(json_object_get(body, "labels"), want));
    json_decref(body);
    outcome_clear(&o);

    /* a repeat posts nothing */
    cr_assert_eq(chatwoot_add_labels(t.cw, "j", ACC, CONV, add, 2, on_done, &o), 0);
    run(&t, &o);
    cr_assert(json_equal(o.result, want));
    cr_assert_eq(nreq(&t), 4, "only a GET");
    cr_assert_str_eq(req_at(&t, 3)->method, "GET");
    outcome_clear(&o);
    json_decref(want);

    const char *bad[] = {""};
    cr_assert_eq(chatwoot_add_labels(t.cw, "j", ACC, CONV, bad, 1, on_done, &o), -1);
    cr_assert_eq(chatwoot_add_labels(t.cw, "j", ACC, CONV, add, 0, on_done, &o), -1);
    t_close(&t);
}

Test(chatwoot, toggle_status_and_snooze)
{
    struct t t;
    t_init(&t);
    struct outcome o = {0};
    cr_assert_eq(chatwoot_toggle_status(t.cw, "j", ACC, CONV, "open", 0, on_done, &o), 0);
    run(&t, &o);
    cr_assert_null(o.err);
    cr_assert(json_is_true(json_object_get(o.result, "success")));
    cr_assert_eq(json_integer_value(json_object_get(o.result, "conversation_id")), CONV);
    cr_assert_str_eq(json_string_value(json_object_get(o.result, "current_status")), "open");
    cr_assert(json_is_null(json_object_get(o.result, "snoozed_until")));
    cr_assert_str_eq(token_of(req_at(&t, 0)), "bot-token");
    char *st = fake_chatwoot_status(t.fake, ACC, CONV);
    cr_assert_str_eq(st, "open");
    free(st);
    outcome_clear(&o);

    cr_assert_eq(chatwoot_toggle_status(t.cw, "j", ACC, CONV, "snoozed", 1893456000, on_done, &o),
                 0);
    run(&t, &o);
    cr_assert_str_eq(json_string_value(json_object_get(o.result, "current_status")), "snoozed");
    cr_assert_str_eq(json_string_value(json_object_get(o.result, "snoozed_until")),
                     "2030-01-01T00:00:00.000Z");
    cr_assert_eq(fake_chatwoot_snoozed_until(t.fake, ACC, CONV), 1893456000);
    json_t *body = json_loads(req_at(&t, 1)->body, 0, NULL);
    cr_assert_eq(json_integer_value(json_object_get(body, "snoozed_until")), 1893456000);
    json_decref(body);
    outcome_clear(&o);

    /* without a bot token the user token does it */
    struct chatwoot *user_only = client(&t, NULL, "user-token", 5000);
    cr_assert_eq(chatwoot_toggle_status(user_only, "j", ACC, CONV, "resolved", 0, on_done, &o), 0);
    run(&t, &o);
    cr_assert_null(o.err);
    cr_assert_str_eq(token_of(req_at(&t, 2)), "user-token");
    outcome_clear(&o);
    chatwoot_free(user_only);
    t_close(&t);
}

/* ---- contacts ----------------------------------------------------------------------------- */

Test(chatwoot, contacts_search_filter_create_update)
{
    struct t t;
    t_init(&t);
    fake_chatwoot_add_contact(t.fake, ACC, "{\"name\":\"Ann\",\"email\":\"ann@x.io\"}");
    fake_chatwoot_add_contact(t.fake, ACC, "{\"name\":\"Jo\",\"email\":\"joann@x.io\"}");
    for (int i = 0; i < 18; i++) {
        char js[96];
        snprintf(js, sizeof js, "{\"name\":\"Many %d\",\"email\":\"many%d@y.io\"}", i, i);
        fake_chatwoot_add_contact(t.fake, ACC, js);
    }
    struct outcome o = {0};
    /* a substring match: "ann@x.io" also finds joann@x.io */
    cr_assert_eq(chatwoot_search_contacts(t.cw, "j", ACC, "ann@x.io", 0, on_done, &o), 0);
    run(&t, &o);
    cr_assert_null(o.err);
    cr_assert_eq(json_array_size(json_object_get(o.result, "payload")), 2);
    const struct fake_http_request *r = req_at(&t, 0);
    cr_assert_str_eq(r->query, "q=ann%40x.io&page=1");
    cr_assert_str_eq(token_of(r), "user-token");
    outcome_clear(&o);

    /* 15 per page */
    cr_assert_eq(chatwoot_search_contacts(t.cw, "j", ACC, "@y.io", 1, on_done, &o), 0);
    run(&t, &o);
    json_t *meta = json_object_get(o.result, "meta");
    cr_assert_eq(json_array_size(json_object_get(o.result, "payload")), 15);
    cr_assert_eq(json_integer_value(json_object_get(meta, "count")), 18);
    cr_assert(json_is_true(json_object_get(meta, "has_more")));
    outcome_clear(&o);
    cr_assert_eq(chatwoot_search_contacts(t.cw, "j", ACC, "@y.io", 2, on_done, &o), 0);
    run(&t, &o);
    cr_assert_eq(json_array_size(json_object_get(o.result, "payload")), 3);
    outcome_clear(&o);

    /* filter: exact */
    cr_assert_eq(chatwoot_filter_contacts(t.cw, "j", ACC, "email", "ann@x.io", on_done, &o), 0);
    run(&t, &o);
    cr_assert_null(o.err);
    json_t *hits = json_object_get(o.result, "payload");
    cr_assert_eq(json_array_size(hits), 1);
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(hits, 0), "name")), "Ann");
    json_t *fb = json_loads(req_at(&t, 3)->body, 0, NULL);
    json_t *cond = json_array_get(json_object_get(fb, "payload"), 0);
    cr_assert_str_eq(json_string_value(json_object_get(cond, "filter_operator")), "equal_to");
    cr_assert(json_is_null(json_object_get(cond, "query_operator")));
    json_decref(fb);
    outcome_clear(&o);

    /* create */
    json_t *nc = json_pack("{s:s, s:s, s:s, s:{s:s}}", "name", "Bob", "email", "Bob@Z.io",
                           "phone_number", "+4915112345678", "custom_attributes", "plan", "pro");
    cr_assert_eq(chatwoot_create_contact(t.cw, "j", ACC, nc, on_done, &o), 0);
    run(&t, &o);
    cr_assert_null(o.err, "%s", o.err->error_message);
    long bob = json_integer_value(json_object_get(o.result, "id"));
    cr_assert(bob > 0);
    cr_assert_str_eq(json_string_value(json_object_get(o.result, "email")), "bob@z.io");
    outcome_clear(&o);

    /* duplicate email (another case): 422 RecordInvalid, permanent, with Chatwoot's text */
    json_t *dup = json_pack("{s:s, s:s}", "name", "Bobby", "email", "BOB@z.io");
    cr_assert_eq(chatwoot_create_contact(t.cw, "j", ACC, dup, on_done, &o), 0);
    run(&t, &o);
    cr_assert_eq(o.err->kind, JOB_ERR_PERMANENT);
    cr_assert_str_eq(o.err->error_class, "Tierone::Chatwoot::ClientError");
    cr_assert_str_eq(o.err->error_message, "POST /api/v1/accounts/3/contacts -> HTTP 422: Email "
                                           "has already been taken [email]");
    outcome_clear(&o);
    json_decref(dup);
    json_t *badphone = json_pack("{s:s, s:s}", "name", "P", "phone_number", "015112345678");
    cr_assert_eq(chatwoot_create_contact(t.cw, "j", ACC, badphone, on_done, &o), 0);
    run(&t, &o);
    cr_assert(strstr(o.err->error_message, "Phone number should be in e164 format [phone_number]"),
              "%s", o.err->error_message);
    outcome_clear(&o);
    json_decref(badphone);

    /* update: custom attributes are shallow-merged */
    json_t *upd =
        json_pack("{s:s, s:{s:s}}", "name", "Robert", "custom_attributes", "tier", "gold");
    cr_assert_eq(chatwoot_update_contact(t.cw, "j", ACC, bob, upd, on_done, &o), 0);
    run(&t, &o);
    cr_assert_null(o.err);
    cr_assert_str_eq(json_string_value(json_object_get(o.result, "name")), "Robert");
    json_t *ca = json_object_get(o.result, "custom_attributes");
    cr_assert_str_eq(json_string_value(json_object_get(ca, "plan")), "pro");
    cr_assert_str_eq(json_string_value(json_object_get(ca, "tier")), "gold");
    const struct fake_http_request *ur = req_at(&t, nreq(&t) - 1);
    cr_assert_str_eq(ur->method, "PATCH");
    cr_assert_str_eq(token_of(ur), "user-token");
    outcome_clear(&o);
    json_decref(upd);
    json_decref(nc);

    json_t *all = fake_chatwoot_contacts(t.fake, ACC);
    cr_assert_eq(json_array_size(all), 22); /* Alice, Ann, Jo, 18 Many, Bob */
    json_decref(all);
    t_close(&t);
}

/* ---- failures ----------------------------------------------------------------------------- */

/* Queue one fault, get the conversation, return the outcome. */
static void faulted_get(struct t *t, struct chatwoot *cw, const struct fake_fault *f,
                        struct outcome *o)
{
    fake_faults_push(fake_chatwoot_faults(t->fake), f, 1);
    cr_assert_eq(chatwoot_get_conversation(cw, "j", ACC, CONV, on_done, o), 0);
    run(t, o);
    cr_assert_not_null(o->err);
}

Test(chatwoot, rate_limited_429_retries_at_the_end_of_the_minute)
{
    struct t t;
    t_init(&t);
    struct outcome o = {0};
    struct fake_fault f = {.status = 429, .body = "Retry later\n", .content_type = "text/plain"};
    double before = clock_wall_s();
    faulted_get(&t, t.cw, &f, &o);
    double after = clock_wall_s();
    cr_assert_eq(o.err->kind, JOB_ERR_RETRY_AT);
    cr_assert_str_eq(o.err->error_class, "Tierone::Chatwoot::RateLimited");
    double w1 = (floor(before / 60) + 1) * 60, w2 = (floor(after / 60) + 1) * 60;
    cr_assert(o.err->retry_at == w1 || o.err->retry_at == w2, "retry_at %.3f, window end %.0f",
              o.err->retry_at, w1);
    cr_assert_eq(fmod(o.err->retry_at, 60), 0);
    cr_assert(strstr(o.err->error_message, "HTTP 429: Retry later"), "%s", o.err->error_message);
    outcome_clear(&o);

    f.retry_after = "7";
    before = clock_wall_s();
    faulted_get(&t, t.cw, &f, &o);
    after = clock_wall_s();
    cr_assert_eq(o.err->kind, JOB_ERR_RETRY_AT);
    cr_assert(o.err->retry_at >= before + 7 && o.err->retry_at <= after + 7, "retry_at %.3f",
              o.err->retry_at - before);
    outcome_clear(&o);
    t_close(&t);
}

Test(chatwoot, transient_failures_retry)
{
    struct t t;
    t_init(&t);
    struct outcome o = {0};

    struct fake_fault e500 = {.status = 500, .body = "{\"error\":\"boom\"}"};
    faulted_get(&t, t.cw, &e500, &o);
    cr_assert_eq(o.err->kind, JOB_ERR_RETRY);
    cr_assert_str_eq(o.err->error_class, "Tierone::Chatwoot::ServerError");
    cr_assert(strstr(o.err->error_message, "HTTP 500: boom"));
    outcome_clear(&o);

    struct chatwoot *impatient = client(&t, "bot-token", "user-token", 200);
    struct fake_fault slow = {.delay_ms = 3000, .pass_through = 1};
    faulted_get(&t, impatient, &slow, &o);
    cr_assert_eq(o.err->kind, JOB_ERR_RETRY);
    cr_assert_str_eq(o.err->error_class, "Tierone::Chatwoot::Timeout");
    outcome_clear(&o);
    chatwoot_free(impatient);

    struct fake_fault drop = {.action = FAKE_HTTP_DROP};
    faulted_get(&t, t.cw, &drop, &o);
    cr_assert_eq(o.err->kind, JOB_ERR_RETRY);
    outcome_clear(&o);

    struct fake_fault garbage = {
        .status = 200, .body = "<html>upstream</html>", .content_type = "text/html"};
    faulted_get(&t, t.cw, &garbage, &o);
    cr_assert_eq(o.err->kind, JOB_ERR_RETRY);
    cr_assert_str_eq(o.err->error_class, "Tierone::Chatwoot::BadResponse");
    outcome_clear(&o);

    struct fake_fault shape = {.status = 200, .body = "[1,2]"};
    faulted_get(&t, t.cw, &shape, &o);
    cr_assert_eq(o.err->kind, JOB_ERR_RETRY);
    cr_assert_str_eq(o.err->error_class, "Tierone::Chatwoot::BadResponse");
    outcome_clear(&o);

    /* after all that, the next call works */
    cr_assert_eq(chatwoot_get_conversation(t.cw, "j", ACC, CONV, on_done, &o), 0);
    run(&t, &o);
    cr_assert_null(o.err);
    outcome_clear(&o);
    t_close(&t);
}

Test(chatwoot, permanent_failures_carry_chatwoots_text)
{
    struct t t;
    t_init(&t);
    struct outcome o = {0};
    struct fake_fault flood = {.status = 422,
                               .body = "{\"error\":\"Validation failed: Too many messages\"}"};
    fake_faults_push(fake_chatwoot_faults(t.fake), &flood, 1);
    struct chatwoot_message m = {.content = "hi"};
    cr_assert_eq(chatwoot_create_message(t.cw, "j", ACC, CONV, &m, on_done, &o), 0);
    run(&t, &o);
    cr_assert_eq(o.err->kind, JOB_ERR_PERMANENT);
    cr_assert_str_eq(o.err->error_message, "POST /api/v1/accounts/3/conversations/42/messages -> "
                                           "HTTP 422: Validation failed: Too many messages");
    outcome_clear(&o);

    /* a wrong token: 401, permanent, names the token but never shows it */
    struct chatwoot *bad = client(&t, "s3cr3t-wrong", "user-token", 5000);
    cr_assert_eq(chatwoot_get_conversation(bad, "j", ACC, CONV, on_done, &o), 0);
    run(&t, &o);
    cr_assert_eq(o.err->kind, JOB_ERR_PERMANENT);
    cr_assert_str_eq(o.err->error_class, "Tierone::Chatwoot::Unauthorized");
    cr_assert_str_eq(o.err->error_message, "GET /api/v1/accounts/3/conversations/42 -> HTTP 401: "
                                           "Invalid Access Token (bot token)");
    cr_assert_null(strstr(o.err->error_message, "s3cr3t"));
    outcome_clear(&o);
    chatwoot_free(bad);
    t_close(&t);
}

/* The fake's own auth rules, with a raw request (a Bearer header instead of api_access_token). */
struct raw {
    int done;
    long status;
    char body[256];
};

static void on_raw(struct http_response *resp, void *arg)
{
    struct raw *r = arg;
    r->done = 1;
    r->status = resp->status;
    snprintf(r->body, sizeof r->body, "%s", resp->body);
}

Test(chatwoot, fake_refuses_a_bearer_token)
{
    struct t t;
    t_init(&t);
    char url[256];
    snprintf(url, sizeof url, "%s/api/v1/accounts/%d/conversations/%d", fake_chatwoot_url(t.fake),
             ACC, CONV);
    const char *hdr[] = {"Authorization: Bearer user-token"};
    struct http_request rq = {.url = url, .headers = hdr, .nheaders = 1};
    struct raw r = {0};
    cr_assert_eq(http_client_request(t.http, &rq, on_raw, &r, NULL), 0);
    cr_assert(test_loop_until_flag(&t.loop, &r.done, 15000), "no answer");
    cr_assert_eq(r.status, 401);
    cr_assert(strstr(r.body, "You need to sign in"), "%s", r.body);
    t_close(&t);
}

/* ---- the fleet-wide rate limit ------------------------------------------------------------ */

static void on_redis_closed(void *arg)
{
    *(int *)arg = 1;
}

Test(chatwoot, no_rate_limit_token_reschedules_without_a_request)
{
    struct t t;
    t_init(&t);
    redisContext *rc = test_redis_connect(DB);
    struct redis_opts ro = {.url = test_redis_url(DB), .name = "test-chatwoot"};
    const char *rerr = NULL;
    struct redis *redis = redis_new(&t.loop, &ro, &rerr);
    cr_assert_not_null(redis, "%s", rerr);
    cr_assert(test_loop_until_redis_up(&t.loop, redis, 5000));
    struct rate_limit *rl = rate_limit_new(redis, "chatwoot", 0.001, 1, &rerr);
    cr_assert_not_null(rl, "%s", rerr);
    struct chatwoot_opts o = {.http = t.http,
                              .limit = rl,
                              .base_url = fake_chatwoot_url(t.fake),
                              .bot_token = "bot-token"};
    char *err = NULL;
    struct chatwoot *limited = chatwoot_new(&o, &err);
    cr_assert_not_null(limited, "%s", err);

    struct outcome out = {0};
    cr_assert_eq(chatwoot_get_conversation(limited, "jid-a", ACC, CONV, on_done, &out), 0);
    run(&t, &out);
    cr_assert_null(out.err, "the burst token");
    outcome_clear(&out);
    size_t sent = nreq(&t);
    cr_assert_eq(chatwoot_get_conversation(limited, "jid-b", ACC, CONV, on_done, &out), 0);
    run(&t, &out);
    cr_assert_eq(out.err->kind, JOB_ERR_RESCHEDULE);
    cr_assert(out.err->retry_at > clock_wall_s() + 100, "the next token is ~1000 s away");
    cr_assert_eq(nreq(&t), sent, "no request without a token");
    outcome_clear(&out);

    chatwoot_free(limited);
    rate_limit_free(rl);
    int rclosed = 0;
    redis_close(redis, on_redis_closed, &rclosed);
    t_close(&t);
    cr_assert(rclosed);
    redisFree(rc);
}
