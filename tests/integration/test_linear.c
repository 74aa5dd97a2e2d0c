/* lib/linear against tests/fakes/fake_linear: the three GraphQL operations, the
 * deterministic issue id and the duplicate-id reconcile, idempotent attachments, both auth
 * forms (and the wrong one reported as such), errors[] read on every status, RATELIMITED
 * on HTTP 400 retried at the reset header's exact time, 5xx and transport failures
 * retried, and the fleet rate limit (real Redis, database 13) rescheduling without a
 * request. Every test closes its loop and asserts uv_loop_close() == 0. */
#include "clock.h"
#include "fake_linear.h"
#include "http_client.h"
#include "linear.h"
#include "log.h"
#include "rate_limit.h"
#include "redis.h"
#include "test_loop.h"
#include "test_redis.h"
#include "xalloc.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define REDIS_DB 13
#define TEAM     "team-fake"
#define KEY      "lin_api_0123456789abcdef"

struct seen {
    int calls;
    struct job_error *err;
    json_t *result;
};

struct t {
    uv_loop_t loop;
    struct http_client *http;
    struct fake_linear *fake;
    struct linear *c;
    struct redis *redis;
    struct rate_limit *limit;
    int closed;
};

static struct t T;

static void suite_fini(void)
{
    http_client_global_cleanup();
}

TestSuite(linear, .fini = suite_fini);

static struct linear *client(const char *key, enum linear_auth auth)
{
    struct linear_opts o = {.http = T.http,
                            .limit = T.limit,
                            .api_url = fake_linear_api_url(T.fake),
                            .api_key = key,
                            .auth = auth,
                            .team_id = TEAM,
                            .timeout_ms = 2000};
    char *err = NULL;
    struct linear *c = linear_new(&o, &err);
    cr_assert_not_null(c, "%s", err);
    return c;
}

/* Loop, HTTP client and a fake expecting fopts' credentials; client with key/auth. */
static void t_start_full(const struct fake_linear_opts *fopts, const char *key,
                         enum linear_auth auth, int with_limit);

static void t_start(void)
{
    struct fake_linear_opts fo = {.api_key = KEY};
    t_start_full(&fo, KEY, LINEAR_AUTH_AUTO, 0);
}

static struct rate_limit *make_limit(void)
{
    redisContext *rc = test_redis_connect(REDIS_DB); /* FLUSHDB */
    redisFree(rc);
    struct redis_opts o = {.url = test_redis_url(REDIS_DB), .name = "test-linear"};
    const char *err = NULL;
    T.redis = redis_new(&T.loop, &o, &err);
    cr_assert_not_null(T.redis, "%s", err);
    cr_assert(test_loop_until_redis_up(&T.loop, T.redis, 5000), "redis did not come up");
    struct rate_limit *rl = rate_limit_new(T.redis, "linear:test", 1.0 / 60, 1, &err);
    cr_assert_not_null(rl, "%s", err);
    return rl;
}

static void t_start_full(const struct fake_linear_opts *fopts, const char *key,
                         enum linear_auth auth, int with_limit)
{
    memset(&T, 0, sizeof T);
    log_init("test", LOG_OFF);
    cr_assert_eq(uv_loop_init(&T.loop), 0);
    char *err = NULL;
    T.http = http_client_new(&T.loop, NULL, &err);
    cr_assert_not_null(T.http, "%s", err);
    T.fake = fake_linear_start(fopts);
    cr_assert_not_null(T.fake);
    if (with_limit)
        T.limit = make_limit();
    T.c = client(key, auth);
}

static void on_closed(void *arg)
{
    (*(int *)arg)++;
}

static void t_finish(void)
{
    linear_free(T.c);
    rate_limit_free(T.limit);
    if (T.redis)
        redis_close(T.redis, NULL, NULL);
    http_client_close(T.http, on_closed, &T.closed);
    cr_assert_eq(uv_run(&T.loop, UV_RUN_DEFAULT), 0);
    cr_assert_eq(T.closed, 1);
    cr_assert_eq(uv_loop_close(&T.loop), 0);
    fake_linear_free(T.fake);
}

static void on_done(struct job_error *err, json_t *result, void *arg)
{
    struct seen *s = arg;
    s->calls++;
    s->err = err;
    s->result = json_incref(result);
}

static void seen_free(struct seen *s)
{
    job_error_free(s->err);
    json_decref(s->result);
    memset(s, 0, sizeof *s);
}

static void wait_done(struct seen *s)
{
    cr_assert(test_loop_until_flag(&T.loop, &s->calls, 15000), "the callback never ran");
    cr_assert_eq(s->calls, 1);
}

static const char *str(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

static void create(const char *id, const char *title, struct seen *s)
{
    struct linear_issue_input in = {.id = id, .title = title, .description = "from *chat*"};
    cr_assert_eq(linear_issue_create(T.c, "jid-create", &in, on_done, s), 0);
    wait_done(s);
}

static void get(const char *id, struct seen *s)
{
    cr_assert_eq(linear_issue_get(T.c, "jid-get", id, on_done, s), 0);
    wait_done(s);
}

static void attach(const char *issue, const char *title, const char *url, struct seen *s)
{
    cr_assert_eq(
        linear_attachment_create(T.c, "jid-att", issue, title, url, "Chatwoot", on_done, s), 0);
    wait_done(s);
}

static void assert_ok(const struct seen *s)
{
    cr_assert_null(s->err, "%s: %s", s->err ? s->err->error_class : "",
                   s->err ? s->err->error_message : "");
    cr_assert_not_null(s->result);
}

static void assert_err(const struct seen *s, enum job_err_kind kind, const char *cls,
                       const char *needle)
{
    cr_assert_not_null(s->err);
    cr_assert_eq(s->err->kind, kind, "%s (%s)", job_error_kind_name(s->err->kind),
                 s->err->error_message);
    cr_assert_str_eq(s->err->error_class, cls, "%s", s->err->error_message);
    if (needle)
        cr_assert_not_null(strstr(s->err->error_message, needle), "%s", s->err->error_message);
    cr_assert_null(strstr(s->err->error_message, KEY), "the key leaked: %s", s->err->error_message);
    cr_assert_null(s->result);
}

/* ---- ids ------------------------------------------------------------------------------ */

Test(linear, uuid_from_key_is_deterministic_and_v4_shaped)
{
    char a[37], b[37], c[37];
    linear_uuid_from_key("chatwoot:1:42:9001", a);
    linear_uuid_from_key("chatwoot:1:42:9001", b);
    linear_uuid_from_key("chatwoot:1:42:9002", c);
    /* SHA-256("chatwoot:1:42:9001") = 2038ef5b86fd2a41057a10b9..., nibbles forced */
    cr_assert_str_eq(a, "2038ef5b-86fd-4a41-857a-10b93c197ef2");
    cr_assert_str_eq(a, b);
    cr_assert_str_neq(a, c);
    for (int i = 0; i < 1000; i++) {
        char key[32];
        snprintf(key, sizeof key, "k%d", i);
        linear_uuid_from_key(key, c);
        cr_assert(linear_uuid_valid(c), "%s", c);
        cr_assert_eq(c[14], '4', "%s", c);
        cr_assert(strchr("89ab", c[19]) != NULL, "%s", c);
        for (int k = 0; k < 36; k++)
            cr_assert(c[k] == '-' || (c[k] >= '0' && c[k] <= '9') || (c[k] >= 'a' && c[k] <= 'f'));
    }
    cr_assert_not(linear_uuid_valid("2038ef5b-86fd-4a41-857a-10b93c197ef"));
    cr_assert_not(linear_uuid_valid("2038ef5b_86fd-4a41-857a-10b93c197ef2"));
    cr_assert_not(linear_uuid_valid("ENG-12"));
    cr_assert_not(linear_uuid_valid(NULL));
}

/* ---- operations ----------------------------------------------------------------------- */

Test(linear, issue_create_sends_variables_and_returns_the_issue)
{
    t_start();
    char id[37];
    linear_uuid_from_key("chatwoot:1:42:9001", id);
    const char *labels[] = {"label-1", "label-2"};
    const char *title = "Refund \"now\" } mutation { issueDelete";
    struct linear_issue_input in = {.id = id,
                                    .title = title,
                                    .description = "**Customer** says:\n> it broke",
                                    .priority = 2,
                                    .label_ids = labels,
                                    .nlabel_ids = 2};
    struct seen s = {0};
    cr_assert_eq(linear_issue_create(T.c, "jid-1", &in, on_done, &s), 0);
    wait_done(&s);
    assert_ok(&s);
    cr_assert_str_eq(str(s.result, "id"), id);
    cr_assert_str_eq(str(s.result, "identifier"), "ENG-1");
    cr_assert_not_null(strstr(str(s.result, "url"), "https://linear.app/tierone/issue/ENG-1/"));
    cr_assert(json_is_false(json_object_get(s.result, "existed")));
    seen_free(&s);

    /* The request: bare personal key, JSON, operation name, text only in variables. */
    const struct fake_http_request *r = fake_http_request_at(fake_linear_http(T.fake), 0);
    cr_assert_str_eq(r->path, "/graphql");
    cr_assert_str_eq(fake_http_request_header(r, "Authorization"), KEY);
    cr_assert_str_eq(fake_http_request_header(r, "Content-Type"), "application/json");
    json_t *body = fake_linear_request_json(T.fake, 0);
    cr_assert_str_eq(str(body, "operationName"), "TieroneIssueCreate");
    cr_assert_null(strstr(str(body, "query"), "Refund"), "user text inside the query");
    json_t *input = json_object_get(json_object_get(body, "variables"), "input");
    cr_assert_str_eq(str(input, "id"), id);
    cr_assert_str_eq(str(input, "teamId"), TEAM);
    cr_assert_str_eq(str(input, "title"), title);
    cr_assert_str_eq(str(input, "description"), "**Customer** says:\n> it broke");
    cr_assert_eq(json_integer_value(json_object_get(input, "priority")), 2);
    cr_assert_eq(json_array_size(json_object_get(input, "labelIds")), 2);
    json_decref(body);

    /* The fake kept it. */
    json_t *is = fake_linear_find_issue(T.fake, "ENG-1");
    cr_assert_str_eq(str(is, "id"), id);
    cr_assert_str_eq(str(is, "title"), title);
    json_decref(is);

    /* Priority 0 is not sent. */
    char id2[37];
    linear_uuid_from_key("other", id2);
    create(id2, "Second", &s);
    assert_ok(&s);
    cr_assert_str_eq(str(s.result, "identifier"), "ENG-2");
    seen_free(&s);
    body = fake_linear_request_json(T.fake, 1);
    input = json_object_get(json_object_get(body, "variables"), "input");
    cr_assert_null(json_object_get(input, "priority"));
    cr_assert_null(json_object_get(input, "labelIds"));
    json_decref(body);
    t_finish();
}

Test(linear, duplicate_id_reconciles_to_the_existing_issue)
{
    t_start();
    char id[37];
    linear_uuid_from_key("chatwoot:7:1:55", id);
    struct seen s = {0};
    create(id, "First attempt", &s);
    assert_ok(&s);
    char *ident = xstrdup(str(s.result, "identifier"));
    char *url = xstrdup(str(s.result, "url"));
    seen_free(&s);

    /* The job is retried (say the first answer was lost): same id, same issue. */
    create(id, "First attempt", &s);
    assert_ok(&s);
    cr_assert_str_eq(str(s.result, "id"), id);
    cr_assert_str_eq(str(s.result, "identifier"), ident);
    cr_assert_str_eq(str(s.result, "url"), url);
    cr_assert(json_is_true(json_object_get(s.result, "existed")));
    seen_free(&s);
    cr_assert_eq(fake_linear_issue_count(T.fake), 1);
    /* create, create (400 conflict), issue(id:) */
    cr_assert_eq(fake_http_count(fake_linear_http(T.fake)), 3);
    json_t *last = fake_linear_request_json(T.fake, 2);
    cr_assert_str_eq(str(last, "operationName"), "TieroneIssue");
    cr_assert_str_eq(str(json_object_get(last, "variables"), "id"), id);
    json_decref(last);
    free(ident);
    free(url);

    /* A conflict for an id the lookup cannot find (deleted, another team): permanent,
     * and the message says how it came about. */
    struct fake_fault conflict = {
        .status = 400,
        .body = "{\"errors\":[{\"message\":\"conflict on insert of Issue\",\"extensions\":"
                "{\"code\":\"INPUT_ERROR\",\"type\":\"invalid input\"}}],\"data\":null}"};
    fake_faults_push(fake_linear_faults(T.fake), &conflict, 1);
    char gone[37];
    linear_uuid_from_key("gone", gone);
    create(gone, "Gone", &s);
    assert_err(&s, JOB_ERR_PERMANENT, "Tierone::Linear::NotFound", "is taken; looking it up");
    cr_assert_not_null(strstr(s.err->error_message, gone));
    seen_free(&s);
    t_finish();
}

Test(linear, issue_get_by_id_and_identifier_and_not_found)
{
    t_start();
    char id[37];
    linear_uuid_from_key("get-me", id);
    struct seen s = {0};
    create(id, "Look me up", &s);
    seen_free(&s);
    get(id, &s);
    assert_ok(&s);
    cr_assert_str_eq(str(s.result, "identifier"), "ENG-1");
    cr_assert_null(json_object_get(s.result, "existed"));
    seen_free(&s);
    get("ENG-1", &s);
    assert_ok(&s);
    cr_assert_str_eq(str(s.result, "id"), id);
    seen_free(&s);
    get("ENG-99", &s);
    assert_err(&s, JOB_ERR_PERMANENT, "Tierone::Linear::NotFound", "Entity not found: Issue");
    seen_free(&s);

    /* issue: null without errors is a NotFound too. */
    struct fake_fault f = {.status = 200, .body = "{\"data\":{\"issue\":null}}"};
    fake_faults_push(fake_linear_faults(T.fake), &f, 1);
    get(id, &s);
    assert_err(&s, JOB_ERR_PERMANENT, "Tierone::Linear::NotFound", "no such issue");
    seen_free(&s);
    t_finish();
}

Test(linear, attachment_is_idempotent_by_issue_and_url)
{
    t_start();
    char id[37];
    linear_uuid_from_key("attach", id);
    struct seen s = {0};
    create(id, "With a link", &s);
    seen_free(&s);
    const char *conv = "https://chat.example.com/app/accounts/1/conversations/42";
    attach(id, "Chatwoot conversation 42", conv, &s);
    assert_ok(&s);
    char *att = xstrdup(str(s.result, "id"));
    cr_assert(linear_uuid_valid(att));
    cr_assert_str_eq(str(s.result, "url"), conv);
    seen_free(&s);

    attach("ENG-1", "Conversation 42 (reopened)", conv, &s); /* identifier works too */
    assert_ok(&s);
    cr_assert_str_eq(str(s.result, "id"), att, "same (issue, url): same attachment");
    seen_free(&s);
    cr_assert_eq(fake_linear_attachment_count(T.fake), 1);
    json_t *a = fake_linear_attachment(T.fake, 0);
    cr_assert_str_eq(str(a, "title"), "Conversation 42 (reopened)");
    cr_assert_str_eq(str(a, "subtitle"), "Chatwoot");
    cr_assert_str_eq(str(a, "issueId"), id);
    json_decref(a);

    attach(id, "Another", "https://chat.example.com/app/accounts/1/conversations/43", &s);
    assert_ok(&s);
    cr_assert_str_neq(str(s.result, "id"), att);
    seen_free(&s);
    cr_assert_eq(fake_linear_attachment_count(T.fake), 2);

    char missing[37];
    linear_uuid_from_key("no-such-issue", missing);
    attach(missing, "x", conv, &s);
    assert_err(&s, JOB_ERR_PERMANENT, "Tierone::Linear::NotFound", "Entity not found: Issue");
    seen_free(&s);
    free(att);
    t_finish();
}

Test(linear, invalid_inputs_are_refused_without_a_callback)
{
    t_start();
    struct seen s = {0};
    char id[37];
    linear_uuid_from_key("x", id);
    struct linear_issue_input bad_id = {.id = "not-a-uuid", .title = "t"};
    struct linear_issue_input no_title = {.id = id, .title = ""};
    struct linear_issue_input bad_prio = {.id = id, .title = "t", .priority = 5};
    cr_assert_eq(linear_issue_create(T.c, "j", &bad_id, on_done, &s), -1);
    cr_assert_eq(linear_issue_create(T.c, "j", &no_title, on_done, &s), -1);
    cr_assert_eq(linear_issue_create(T.c, "j", &bad_prio, on_done, &s), -1);
    cr_assert_eq(linear_issue_create(T.c, "j", NULL, on_done, &s), -1);
    cr_assert_eq(linear_issue_get(T.c, "j", "", on_done, &s), -1);
    cr_assert_eq(linear_attachment_create(T.c, "j", id, "t", NULL, NULL, on_done, &s), -1);
    cr_assert_eq(linear_attachment_create(T.c, "j", id, "", "https://x", NULL, on_done, &s), -1);
    /* no team anywhere */
    struct linear_opts o = {.http = T.http, .api_url = fake_linear_api_url(T.fake), .api_key = KEY};
    char *err = NULL;
    struct linear *noteam = linear_new(&o, &err);
    cr_assert_not_null(noteam);
    struct linear_issue_input ok = {.id = id, .title = "t"};
    cr_assert_eq(linear_issue_create(noteam, "j", &ok, on_done, &s), -1);
    linear_free(noteam);
    uv_run(&T.loop, UV_RUN_NOWAIT);
    cr_assert_eq(s.calls, 0);
    cr_assert_eq(fake_http_count(fake_linear_http(T.fake)), 0);

    o.api_key = "";
    cr_assert_null(linear_new(&o, &err));
    free(err);
    err = NULL;
    o.api_key = KEY;
    o.api_url = "api.linear.app/graphql";
    cr_assert_null(linear_new(&o, &err));
    free(err);
    t_finish();
}

/* ---- authentication ------------------------------------------------------------------- */

Test(linear, oauth_token_is_sent_as_bearer)
{
    struct fake_linear_opts fo = {.api_key = "lin_oauth_tok123"};
    t_start_full(&fo, "lin_oauth_tok123", LINEAR_AUTH_AUTO, 0);
    cr_assert_str_eq(linear_auth_name(T.c), "OAuth token (Authorization: Bearer <token>)");
    char id[37];
    linear_uuid_from_key("oauth", id);
    struct seen s = {0};
    create(id, "Via OAuth", &s);
    assert_ok(&s);
    seen_free(&s);
    const struct fake_http_request *r = fake_http_request_at(fake_linear_http(T.fake), 0);
    cr_assert_str_eq(fake_http_request_header(r, "Authorization"), "Bearer lin_oauth_tok123");
    t_finish();
}

Test(linear, pasted_bearer_prefix_on_a_personal_key_is_dropped)
{
    struct fake_linear_opts fo = {.api_key = KEY};
    t_start_full(&fo, "Bearer " KEY, LINEAR_AUTH_AUTO, 0);
    cr_assert_str_eq(linear_auth_name(T.c), "personal API key (Authorization: <key>)");
    struct seen s = {0};
    get("ENG-1", &s); /* reaches the API: NotFound, not an auth error */
    assert_err(&s, JOB_ERR_PERMANENT, "Tierone::Linear::NotFound", NULL);
    seen_free(&s);
    const struct fake_http_request *r = fake_http_request_at(fake_linear_http(T.fake), 0);
    cr_assert_str_eq(fake_http_request_header(r, "Authorization"), KEY);
    t_finish();
}

Test(linear, personal_key_forced_to_bearer_is_rejected_naming_the_form)
{
    struct fake_linear_opts fo = {.api_key = KEY};
    t_start_full(&fo, KEY, LINEAR_AUTH_OAUTH, 0);
    char id[37];
    linear_uuid_from_key("wrong-auth", id);
    struct seen s = {0};
    create(id, "Never filed", &s);
    assert_err(&s, JOB_ERR_PERMANENT, "Tierone::Linear::AuthenticationError",
               "Authentication required, not authenticated");
    cr_assert_not_null(strstr(s.err->error_message, "OAuth token (Authorization: Bearer <token>)"),
                       "%s", s.err->error_message);
    cr_assert_not_null(strstr(s.err->error_message, "HTTP 401"), "%s", s.err->error_message);
    seen_free(&s);
    const struct fake_http_request *r = fake_http_request_at(fake_linear_http(T.fake), 0);
    cr_assert_str_eq(fake_http_request_header(r, "Authorization"), "Bearer " KEY);
    cr_assert_eq(fake_linear_issue_count(T.fake), 0);
    t_finish();
}

Test(linear, oauth_token_sent_bare_is_rejected_naming_the_form)
{
    struct fake_linear_opts fo = {.api_key = "lin_oauth_tok123"};
    t_start_full(&fo, "lin_oauth_tok123", LINEAR_AUTH_API_KEY, 0);
    struct seen s = {0};
    get("ENG-1", &s);
    assert_err(&s, JOB_ERR_PERMANENT, "Tierone::Linear::AuthenticationError",
               "personal API key (Authorization: <key>)");
    cr_assert_null(strstr(s.err->error_message, "tok123"), "%s", s.err->error_message);
    seen_free(&s);
    t_finish();
}

Test(linear, authentication_error_on_http_200_is_permanent)
{
    t_start();
    struct fake_fault f = {.status = 200,
                           .body = "{\"errors\":[{\"message\":\"Authentication required, not "
                                   "authenticated\",\"extensions\":{\"type\":\"authentication "
                                   "error\",\"code\":\"AUTHENTICATION_ERROR\"}}],\"data\":null}"};
    fake_faults_push(fake_linear_faults(T.fake), &f, 1);
    struct seen s = {0};
    get("ENG-1", &s);
    assert_err(&s, JOB_ERR_PERMANENT, "Tierone::Linear::AuthenticationError", "HTTP 200");
    seen_free(&s);
    t_finish();
}

/* ---- rate limits ---------------------------------------------------------------------- */

Test(linear, ratelimited_on_http_400_retries_at_the_reset_header)
{
    t_start();
    /* epoch milliseconds, the current docs' unit */
    int64_t reset_ms = (int64_t)(clock_wall_s() * 1000) + 90500;
    fake_linear_ratelimit(T.fake, 1, reset_ms);
    struct seen s = {0};
    get("ENG-1", &s);
    assert_err(&s, JOB_ERR_RETRY_AT, "Tierone::Linear::RateLimited", "HTTP 400");
    cr_assert_not_null(strstr(s.err->error_message, "RATELIMITED"));
    cr_assert_float_eq(s.err->retry_at, reset_ms / 1000.0, 1e-6);
    seen_free(&s);

    /* epoch seconds (older docs) */
    int64_t reset_s = (int64_t)clock_wall_s() + 600;
    fake_linear_ratelimit(T.fake, 1, reset_s);
    get("ENG-1", &s);
    assert_err(&s, JOB_ERR_RETRY_AT, "Tierone::Linear::RateLimited", NULL);
    cr_assert_float_eq(s.err->retry_at, (double)reset_s, 1e-6);
    seen_free(&s);

    /* a reset already past: retry now, not in the past */
    fake_linear_ratelimit(T.fake, 1, (int64_t)(clock_wall_s() * 1000) - 5000);
    double before = clock_wall_s();
    get("ENG-1", &s);
    assert_err(&s, JOB_ERR_RETRY_AT, "Tierone::Linear::RateLimited", NULL);
    cr_assert(s.err->retry_at >= before && s.err->retry_at <= clock_wall_s());
    seen_free(&s);

    /* The mode is over: the API answers again. */
    get("ENG-1", &s);
    assert_err(&s, JOB_ERR_PERMANENT, "Tierone::Linear::NotFound", NULL);
    seen_free(&s);
    t_finish();
}

Test(linear, ratelimited_without_reset_uses_retry_after_or_backoff)
{
    t_start();
    const char *body = "{\"errors\":[{\"message\":\"Rate limit exceeded\",\"extensions\":"
                       "{\"code\":\"RATELIMITED\"}}]}";
    struct fake_fault f = {.status = 400, .retry_after = "20", .body = body};
    fake_faults_push(fake_linear_faults(T.fake), &f, 1);
    struct seen s = {0};
    double before = clock_wall_s();
    get("ENG-1", &s);
    double after = clock_wall_s();
    assert_err(&s, JOB_ERR_RETRY_AT, "Tierone::Linear::RateLimited", NULL);
    cr_assert(s.err->retry_at >= before + 20 && s.err->retry_at <= after + 20);
    seen_free(&s);

    struct fake_fault bare = {.status = 400, .body = body};
    fake_faults_push(fake_linear_faults(T.fake), &bare, 1);
    get("ENG-1", &s);
    assert_err(&s, JOB_ERR_RETRY, "Tierone::Linear::RateLimited", NULL);
    seen_free(&s);

    /* A plain 429 (the SDK's reading) with only the requests headers. */
    int64_t reset_ms = (int64_t)(clock_wall_s() * 1000) + 30000;
    char *hdr = xasprintf("X-RateLimit-Requests-Reset: %lld", (long long)reset_ms);
    struct fake_fault f429 = {.status = 429, .header = hdr, .body = "Too Many Requests"};
    fake_faults_push(fake_linear_faults(T.fake), &f429, 1);
    get("ENG-1", &s);
    assert_err(&s, JOB_ERR_RETRY_AT, "Tierone::Linear::RateLimited", NULL);
    cr_assert_float_eq(s.err->retry_at, reset_ms / 1000.0, 1e-6);
    seen_free(&s);
    free(hdr);
    t_finish();
}

Test(linear, no_token_reschedules_without_a_request)
{
    struct fake_linear_opts fo = {.api_key = KEY};
    t_start_full(&fo, KEY, LINEAR_AUTH_AUTO, 1);
    struct seen s = {0};
    get("ENG-1", &s); /* takes the only token */
    assert_err(&s, JOB_ERR_PERMANENT, "Tierone::Linear::NotFound", NULL);
    seen_free(&s);
    double before = clock_wall_s();
    char id[37];
    linear_uuid_from_key("limited", id);
    struct linear_issue_input in = {.id = id, .title = "t"};
    cr_assert_eq(linear_issue_create(T.c, "jid-limited", &in, on_done, &s), 0);
    wait_done(&s);
    cr_assert_not_null(s.err);
    cr_assert_eq(s.err->kind, JOB_ERR_RESCHEDULE, "%s", job_error_kind_name(s.err->kind));
    cr_assert_str_eq(s.err->error_class, "Tierone::RateLimit");
    cr_assert(s.err->retry_at > before + 50 && s.err->retry_at < before + 61, "at +%f",
              s.err->retry_at - before);
    seen_free(&s);
    cr_assert_eq(fake_http_count(fake_linear_http(T.fake)), 1, "no request without a token");
    t_finish();
}

/* ---- other failures ------------------------------------------------------------------- */

Test(linear, server_errors_and_transport_failures_are_retried)
{
    t_start();
    struct fake_faults *q = fake_linear_faults(T.fake);
    struct fake_fault drop = {.action = FAKE_HTTP_DROP};
    struct fake_fault garbage_http = {.status = 200, .body = "<html>proxy</html>"};
    struct fake_fault f502 = {.status = 502, .body = "<html>Bad Gateway</html>"};
    struct fake_fault f500 = {.status = 500,
                              .body = "{\"errors\":[{\"message\":\"Internal server error\","
                                      "\"extensions\":{\"type\":\"internal error\"}}]}"};
    struct fake_fault lock = {.status = 200,
                              .body = "{\"errors\":[{\"message\":\"Lock timeout\",\"extensions\":"
                                      "{\"type\":\"lock timeout\"}}],\"data\":null}"};
    struct fake_fault slow = {.delay_ms = 5000, .pass_through = 1};
    /* drop first: on a reused connection curl would resend once and eat the next fault */
    fake_faults_push(q, &drop, 1);
    fake_faults_push(q, &garbage_http, 1);
    fake_faults_push(q, &f502, 1);
    fake_faults_push(q, &f500, 1);
    fake_faults_push(q, &lock, 1);
    fake_faults_push(q, &slow, 1);
    const char *classes[] = {"Tierone::Linear::TransportError", "Tierone::Linear::BadResponse",
                             "Tierone::Linear::ServerError",    "Tierone::Linear::ServerError",
                             "Tierone::Linear::ServerError",    "Tierone::Linear::Timeout"};
    const char *needles[] = {
        NULL, "not JSON", "HTTP 502", "HTTP 500: Internal server error", "HTTP 200: Lock timeout",
        NULL};
    for (int i = 0; i < 6; i++) {
        struct seen s = {0};
        get("ENG-1", &s);
        assert_err(&s, JOB_ERR_RETRY, classes[i], needles[i]);
        seen_free(&s);
    }
    t_finish();
}

Test(linear, graphql_errors_are_read_on_every_status)
{
    t_start();
    struct fake_faults *q = fake_linear_faults(T.fake);
    struct seen s = {0};
    /* HTTP 200 with errors and no payload: permanent, with Linear's words. */
    struct fake_fault f200 = {.status = 200,
                              .body = "{\"errors\":[{\"message\":\"Something is off\","
                                      "\"extensions\":{\"code\":\"WEIRD\"}}],\"data\":null}"};
    fake_faults_push(q, &f200, 1);
    get("ENG-1", &s);
    assert_err(&s, JOB_ERR_PERMANENT, "Tierone::Linear::GraphQLError",
               "HTTP 200: Something is off (WEIRD)");
    seen_free(&s);

    /* Forbidden */
    struct fake_fault f403 = {.status = 400,
                              .body = "{\"errors\":[{\"message\":\"You cannot do that\","
                                      "\"extensions\":{\"type\":\"forbidden\",\"code\":"
                                      "\"FORBIDDEN\"}}]}"};
    fake_faults_push(q, &f403, 1);
    get("ENG-1", &s);
    assert_err(&s, JOB_ERR_PERMANENT, "Tierone::Linear::Forbidden", "You cannot do that");
    seen_free(&s);

    /* Unknown team: the fake's INPUT_ERROR */
    char id[37];
    linear_uuid_from_key("team?", id);
    struct linear_issue_input in = {.id = id, .team_id = "no-such-team", .title = "t"};
    cr_assert_eq(linear_issue_create(T.c, "j", &in, on_done, &s), 0);
    wait_done(&s);
    assert_err(&s, JOB_ERR_PERMANENT, "Tierone::Linear::NotFound", "Entity not found: Team");
    seen_free(&s);

    /* A validation error (INPUT_ERROR without "not found") */
    struct fake_fault inval = {.status = 400,
                               .body = "{\"errors\":[{\"message\":\"Argument Validation Error\","
                                       "\"extensions\":{\"code\":\"INPUT_ERROR\"}}]}"};
    fake_faults_push(q, &inval, 1);
    get("ENG-1", &s);
    assert_err(&s, JOB_ERR_PERMANENT, "Tierone::Linear::InvalidInput",
               "Argument Validation Error (INPUT_ERROR)");
    seen_free(&s);

    /* Partial success: the payload is complete, the errors are only logged. */
    struct fake_fault partial = {
        .status = 200,
        .body = "{\"data\":{\"issueCreate\":{\"success\":true,\"issue\":{\"id\":\"11111111-1111-"
                "4111-8111-111111111111\",\"identifier\":\"ENG-77\",\"url\":\"https://linear.app/"
                "x/issue/ENG-77\"}}},\"errors\":[{\"message\":\"labelIds: one label ignored\"}]}"};
    fake_faults_push(q, &partial, 1);
    create(id, "partial", &s);
    assert_ok(&s);
    cr_assert_str_eq(str(s.result, "identifier"), "ENG-77");
    seen_free(&s);

    /* success: false without errors */
    struct fake_fault nosuccess = {.status = 200,
                                   .body = "{\"data\":{\"issueCreate\":{\"success\":false,"
                                           "\"issue\":null}}}"};
    fake_faults_push(q, &nosuccess, 1);
    create(id, "nope", &s);
    assert_err(&s, JOB_ERR_PERMANENT, "Tierone::Linear::GraphQLError", "did not succeed");
    seen_free(&s);

    /* A 4xx without a GraphQL body: the generic verdict. */
    struct fake_fault f404 = {.status = 404, .body = "Not Found"};
    fake_faults_push(q, &f404, 1);
    get("ENG-1", &s);
    assert_err(&s, JOB_ERR_PERMANENT, "Tierone::Linear::NotFound", "HTTP 404: Not Found");
    seen_free(&s);
    t_finish();
}

/* ---- the fake's GraphQL front, with raw requests -------------------------------------- */

struct raw {
    int done;
    long status;
    json_t *body;
};

static void on_raw(struct http_response *r, void *arg)
{
    struct raw *x = arg;
    x->done = 1;
    x->status = r->status;
    x->body = json_loadb(r->body, r->body_len, 0, NULL);
}

static void raw_graphql(const char *body, long want_status, const char *want_code)
{
    const char *headers[] = {"Content-Type: application/json", "Authorization: " KEY};
    struct http_request req = {.method = "POST",
                               .url = fake_linear_api_url(T.fake),
                               .headers = headers,
                               .nheaders = 2,
                               .body = body,
                               .body_len = strlen(body)};
    struct raw x = {0};
    cr_assert_eq(http_client_request(T.http, &req, on_raw, &x, NULL), 0);
    cr_assert(test_loop_until_flag(&T.loop, &x.done, 15000), "no answer");
    cr_assert_eq(x.status, want_status, "%s", body);
    json_t *e = json_array_get(json_object_get(x.body, "errors"), 0);
    const char *code = str(json_object_get(e, "extensions"), "code");
    cr_assert_str_eq(code ? code : "", want_code, "%s", body);
    json_decref(x.body);
}

Test(linear, fake_rejects_unknown_operations_and_inline_arguments)
{
    t_start();
    raw_graphql("{\"query\":\"mutation X { issueDelete(id: \\\"a\\\") { success } }\"}", 400,
                "GRAPHQL_VALIDATION_FAILED");
    raw_graphql("{\"query\":\"query { issue(id: \\\"ENG-1\\\") { id } }\"}", 400,
                "GRAPHQL_VALIDATION_FAILED");
    raw_graphql("{\"query\":\"query Q($id: String!) { issue(id: $id) { id } }\","
                "\"operationName\":\"Other\",\"variables\":{\"id\":\"ENG-1\"}}",
                400, "GRAPHQL_VALIDATION_FAILED");
    raw_graphql("{\"query\":\"mutation M($input: IssueCreateInput!) { issueCreate(input: $input) "
                "{ success } }\",\"variables\":{\"input\":{\"title\":\"no team\"}}}",
                400, "GRAPHQL_VALIDATION_FAILED");
    raw_graphql("not json", 400, "BAD_REQUEST");
    cr_assert_eq(fake_linear_issue_count(T.fake), 0);
    t_finish();
}

struct hdrs {
    int done;
    long status;
    char *limit, *remaining, *reset;
};

static void on_hdrs(struct http_response *r, void *arg)
{
    struct hdrs *h = arg;
    h->done = 1;
    h->status = r->status;
    h->limit = xstrdup(http_response_header(r, "X-RateLimit-Requests-Limit"));
    h->remaining = xstrdup(http_response_header(r, "X-RateLimit-Requests-Remaining"));
    h->reset = xstrdup(http_response_header(r, "X-RateLimit-Requests-Reset"));
}

Test(linear, rate_headers_are_on_every_answer)
{
    t_start();
    const char *headers[] = {"Content-Type: application/json", "Authorization: wrong"};
    const char *body = "{\"query\":\"query Q($id: String!) { issue(id: $id) { id } }\","
                       "\"variables\":{\"id\":\"ENG-1\"}}";
    struct http_request req = {.method = "POST",
                               .url = fake_linear_api_url(T.fake),
                               .headers = headers,
                               .nheaders = 2,
                               .body = body,
                               .body_len = strlen(body)};
    for (int i = 0; i < 2; i++) {
        struct hdrs h = {0};
        cr_assert_eq(http_client_request(T.http, &req, on_hdrs, &h, NULL), 0);
        cr_assert(test_loop_until_flag(&T.loop, &h.done, 15000), "no answer");
        cr_assert_eq(h.status, 401, "a wrong key is refused");
        cr_assert_str_eq(h.limit, "5000");
        cr_assert_str_eq(h.remaining, i == 0 ? "4999" : "4998");
        cr_assert_not_null(h.reset);
        cr_assert(atof(h.reset) > clock_wall_s() * 1000, "reset in epoch ms");
        free(h.limit);
        free(h.remaining);
        free(h.reset);
    }
    t_finish();
}
