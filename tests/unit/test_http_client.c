/* Tests for lib/http_client against tests/support/fake_http: statuses, headers, bodies,
 * every transport error, concurrency, connection reuse and closing with requests in
 * flight. Every test closes the client and asserts uv_loop_close() == 0. */
#include "fake_http.h"
#include "http_client.h"
#include "xalloc.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

/* What one callback saw, copied out of the response. */
struct seen {
    int calls;
    enum http_result result;
    long status;
    char *body;
    size_t body_len;
    char *error;
    char *retry_after;
    char *call_id;
    char *content_type;
    uint64_t total_us;
    int resubmit_rc; /* for the "refused while closing" check */
};

struct t {
    uv_loop_t loop;
    struct http_client *client;
    struct fake_http *fake;
    int closed;
    int done;
};

static struct t T;

/* Each test runs in its own process: release curl's globals so valgrind sees no leaks. */
static void suite_fini(void)
{
    http_client_global_cleanup();
}

TestSuite(http_client, .fini = suite_fini);

static void t_start(const struct http_client_opts *opts)
{
    memset(&T, 0, sizeof(T));
    cr_assert_eq(uv_loop_init(&T.loop), 0);
    char *err = NULL;
    T.client = http_client_new(&T.loop, opts, &err);
    cr_assert_not_null(T.client, "http_client_new: %s", err ? err : "?");
    T.fake = fake_http_start(NULL);
    cr_assert_not_null(T.fake);
}

static void on_closed(void *arg)
{
    int *closed = arg;
    (*closed)++;
}

/* Close the client (if still open), run the loop dry, check everything is gone. */
static void t_finish(void)
{
    if (T.client)
        http_client_close(T.client, on_closed, &T.closed);
    T.client = NULL;
    cr_assert_eq(uv_run(&T.loop, UV_RUN_DEFAULT), 0);
    cr_assert_eq(T.closed, 1, "closed callback ran %d times", T.closed);
    cr_assert_eq(uv_loop_close(&T.loop), 0);
    fake_http_free(T.fake);
    T.fake = NULL;
}

/* Run the loop until `n` callbacks have run. */
static void t_run_until(int n)
{
    while (T.done < n) {
        int alive = uv_run(&T.loop, UV_RUN_ONCE);
        cr_assert(alive || T.done >= n, "loop ran dry at %d of %d", T.done, n);
    }
}

static char *dup_or_null(const char *s)
{
    return s ? xstrdup(s) : NULL;
}

static void seen_free(struct seen *s)
{
    free(s->body);
    free(s->error);
    free(s->retry_after);
    free(s->call_id);
    free(s->content_type);
}

static void on_done(struct http_response *r, void *arg)
{
    struct seen *s = arg;
    s->calls++;
    s->result = r->result;
    s->status = r->status;
    s->body = xstrndup(r->body, r->body_len);
    s->body_len = r->body_len;
    s->error = xstrdup(r->error);
    s->retry_after = dup_or_null(http_response_header(r, "retry-after"));
    s->call_id = dup_or_null(http_response_header(r, "X-LiteLLM-Call-ID"));
    s->content_type = dup_or_null(http_response_header(r, "content-type"));
    s->total_us = r->total_us;
    T.done++;
}

static char *url(const char *path)
{
    return xasprintf("%s%s", fake_http_url(T.fake), path);
}

/* Submit one request to the fake and run the loop until it finished. */
static void fetch(struct http_request *req, const char *path, struct seen *s)
{
    char *u = url(path);
    req->url = u;
    char *err = NULL;
    cr_assert_eq(http_client_request(T.client, req, on_done, s, &err), 0, "request: %s",
                 err ? err : "?");
    cr_assert_eq(s->calls, 0, "callback must not run inside http_client_request");
    t_run_until(T.done + 1);
    free(u);
}

/* ---- fake handlers ---- */

static void h_hello(const struct fake_http_request *req, struct fake_http_response *resp, void *arg)
{
    fake_http_response_header(resp, "Content-Type", "text/plain");
    fake_http_response_header(resp, "x-litellm-call-id", "abc-123");
    fake_http_response_body(resp, "hello world");
}

static void h_echo(const struct fake_http_request *req, struct fake_http_response *resp, void *arg)
{
    resp->status = 201;
    fake_http_response_header(resp, "Content-Type", "application/json");
    buf_append(&resp->body, req->body, req->body_len);
}

static void h_slow(const struct fake_http_request *req, struct fake_http_response *resp, void *arg)
{
    resp->delay_ms = 60 * 1000;
    fake_http_response_body(resp, "too late");
}

static void h_small_delay(const struct fake_http_request *req, struct fake_http_response *resp,
                          void *arg)
{
    resp->delay_ms = 20;
    buf_printf(&resp->body, "seq=%s", req->query);
}

static void h_drop(const struct fake_http_request *req, struct fake_http_response *resp, void *arg)
{
    resp->action = FAKE_HTTP_DROP;
}

static void h_garbage(const struct fake_http_request *req, struct fake_http_response *resp,
                      void *arg)
{
    resp->action = FAKE_HTTP_GARBAGE;
}

static void h_big(const struct fake_http_request *req, struct fake_http_response *resp, void *arg)
{
    for (int i = 0; i < 4096; i++)
        buf_puts(&resp->body, "0123456789abcdef");
    resp->no_content_length = strcmp(req->query, "nocl") == 0;
}

static void h_redirect(const struct fake_http_request *req, struct fake_http_response *resp,
                       void *arg)
{
    resp->status = 302;
    fake_http_response_header(resp, "Location", "/target");
    fake_http_response_body(resp, "moved");
}

/* ---- tests ---- */

Test(http_client, get_200_body_and_headers, .timeout = 30)
{
    t_start(NULL);
    fake_http_route(T.fake, "GET", "/hello", h_hello, NULL);
    struct seen s = {0};
    struct http_request req = {.method = "GET"};
    fetch(&req, "/hello?x=1", &s);

    cr_assert_eq(s.calls, 1);
    cr_assert_eq(s.result, HTTP_OK, "result %s: %s", http_result_name(s.result), s.error);
    cr_assert_eq(s.status, 200);
    cr_assert_str_eq(s.body, "hello world");
    cr_assert_eq(s.body_len, 11);
    cr_assert_str_eq(s.error, "");
    cr_assert_str_eq(s.content_type, "text/plain");
    cr_assert_str_eq(s.call_id, "abc-123");
    cr_assert_null(s.retry_after);

    const struct fake_http_request *seen = fake_http_request_at(T.fake, 0);
    cr_assert_not_null(seen);
    cr_assert_str_eq(seen->method, "GET");
    cr_assert_str_eq(seen->path, "/hello");
    cr_assert_str_eq(seen->query, "x=1");
    cr_assert_not_null(fake_http_request_header(seen, "user-agent"));
    seen_free(&s);
    t_finish();
}

Test(http_client, post_json_body_and_custom_headers, .timeout = 30)
{
    t_start(NULL);
    fake_http_route(T.fake, "POST", "/api/v1/*", h_echo, NULL);
    const char *body = "{\"content\":\"hi \\\"there\\\"\",\"private\":false}";
    const char *headers[] = {"Content-Type: application/json", "api_access_token: tok-42",
                             "x-litellm-tags: a,b"};
    struct seen s = {0};
    struct http_request req = {.method = "POST",
                               .headers = headers,
                               .nheaders = 3,
                               .body = body,
                               .body_len = strlen(body)};
    fetch(&req, "/api/v1/accounts/1/messages", &s);

    cr_assert_eq(s.result, HTTP_OK, "%s", s.error);
    cr_assert_eq(s.status, 201);
    cr_assert_str_eq(s.body, body);

    const struct fake_http_request *seen = fake_http_request_at(T.fake, 0);
    cr_assert_not_null(seen);
    cr_assert_str_eq(seen->method, "POST");
    cr_assert_str_eq(seen->path, "/api/v1/accounts/1/messages");
    cr_assert_eq(seen->body_len, strlen(body));
    cr_assert_str_eq(seen->body, body);
    cr_assert_str_eq(fake_http_request_header(seen, "content-type"), "application/json");
    cr_assert_str_eq(fake_http_request_header(seen, "API_ACCESS_TOKEN"), "tok-42");
    cr_assert_str_eq(fake_http_request_header(seen, "X-LiteLLM-Tags"), "a,b");
    cr_assert_null(fake_http_request_header(seen, "expect"));
    seen_free(&s);
    t_finish();
}

Test(http_client, other_methods_send_their_verb, .timeout = 30)
{
    t_start(NULL);
    fake_http_route_static(T.fake, NULL, "/*", 204, NULL, NULL);
    struct seen a = {0}, b = {0}, c = {0};
    struct http_request patch = {.method = "PATCH", .body = "{}", .body_len = 2};
    struct http_request del = {.method = "DELETE"};
    struct http_request post_empty = {.method = "POST"};
    fetch(&patch, "/p", &a);
    fetch(&del, "/d", &b);
    fetch(&post_empty, "/e", &c);
    cr_assert_eq(a.status, 204);
    cr_assert_eq(b.status, 204);
    cr_assert_eq(c.status, 204);
    cr_assert_str_eq(fake_http_request_at(T.fake, 0)->method, "PATCH");
    cr_assert_str_eq(fake_http_request_at(T.fake, 0)->body, "{}");
    cr_assert_str_eq(fake_http_request_at(T.fake, 1)->method, "DELETE");
    cr_assert_str_eq(fake_http_request_at(T.fake, 2)->method, "POST");
    cr_assert_str_eq(fake_http_request_header(fake_http_request_at(T.fake, 2), "content-length"),
                     "0");
    seen_free(&a);
    seen_free(&b);
    seen_free(&c);
    t_finish();
}

static void h_429(const struct fake_http_request *req, struct fake_http_response *resp, void *arg)
{
    resp->status = 429;
    fake_http_response_header(resp, "Retry-After", "7");
    fake_http_response_header(resp, "Content-Type", "text/plain");
    fake_http_response_body(resp, "Retry later\n");
}

Test(http_client, status_429_with_retry_after, .timeout = 30)
{
    t_start(NULL);
    fake_http_route(T.fake, NULL, "/limited", h_429, NULL);
    struct seen s = {0};
    struct http_request req = {0};
    fetch(&req, "/limited", &s);
    cr_assert_eq(s.result, HTTP_OK);
    cr_assert_eq(s.status, 429);
    cr_assert_str_eq(s.retry_after, "7");
    cr_assert_str_eq(s.body, "Retry later\n");
    seen_free(&s);
    t_finish();
}

Test(http_client, status_500_is_a_transport_success, .timeout = 30)
{
    t_start(NULL);
    fake_http_route_static(T.fake, "GET", "/boom", 500, "application/json",
                           "{\"error\":\"internal\"}");
    struct seen s = {0};
    struct http_request req = {0};
    fetch(&req, "/boom", &s);
    cr_assert_eq(s.result, HTTP_OK);
    cr_assert_eq(s.status, 500);
    cr_assert_str_eq(s.body, "{\"error\":\"internal\"}");
    struct http_client_stats st;
    http_client_get_stats(T.client, &st);
    cr_assert_eq(st.in_flight, 0);
    cr_assert_eq(st.completed, 1);
    cr_assert_eq(st.failed, 0);
    seen_free(&s);
    t_finish();
}

Test(http_client, unrouted_path_gets_404, .timeout = 30)
{
    t_start(NULL);
    struct seen s = {0};
    struct http_request req = {0};
    fetch(&req, "/nowhere", &s);
    cr_assert_eq(s.result, HTTP_OK);
    cr_assert_eq(s.status, 404);
    seen_free(&s);
    t_finish();
}

Test(http_client, deadline_exceeded_on_slow_answer, .timeout = 30)
{
    t_start(NULL);
    fake_http_route(T.fake, NULL, "/slow", h_slow, NULL);
    struct seen s = {0};
    struct http_request req = {.timeout_ms = 200};
    fetch(&req, "/slow", &s);
    cr_assert_eq(s.calls, 1);
    cr_assert_eq(s.result, HTTP_ERR_TIMEOUT, "result %s: %s", http_result_name(s.result), s.error);
    cr_assert_eq(s.status, 0);
    cr_assert(strstr(s.error, "imed out") != NULL, "error: %s", s.error);
    struct http_client_stats st;
    http_client_get_stats(T.client, &st);
    cr_assert_eq(st.failed, 1);
    cr_assert_eq(st.completed, 1);
    t_finish();
    cr_assert_eq(s.calls, 1);
    seen_free(&s);
}

/* A port nothing listens on: bind an ephemeral one, then close it. */
static int closed_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

Test(http_client, connection_refused, .timeout = 30)
{
    t_start(NULL);
    char *u = xasprintf("http://127.0.0.1:%d/x", closed_port());
    struct seen s = {0};
    struct http_request req = {.url = u};
    cr_assert_eq(http_client_request(T.client, &req, on_done, &s, NULL), 0);
    t_run_until(1);
    cr_assert_eq(s.calls, 1);
    cr_assert_eq(s.result, HTTP_ERR_CONNECT, "result %s: %s", http_result_name(s.result), s.error);
    cr_assert_neq(s.error[0], '\0');
    free(u);
    seen_free(&s);
    t_finish();
}

Test(http_client, dropped_connection, .timeout = 30)
{
    t_start(NULL);
    fake_http_route(T.fake, NULL, "/drop", h_drop, NULL);
    struct seen s = {0};
    struct http_request req = {0};
    fetch(&req, "/drop", &s);
    cr_assert_eq(s.calls, 1);
    cr_assert_eq(s.result, HTTP_ERR_OTHER, "result %s: %s", http_result_name(s.result), s.error);
    cr_assert_neq(s.error[0], '\0');
    seen_free(&s);
    t_finish();
}

Test(http_client, garbage_response, .timeout = 30)
{
    t_start(NULL);
    fake_http_route(T.fake, NULL, "/garbage", h_garbage, NULL);
    struct seen s = {0};
    struct http_request req = {0};
    fetch(&req, "/garbage", &s);
    cr_assert_eq(s.calls, 1);
    cr_assert_eq(s.result, HTTP_ERR_OTHER, "result %s: %s", http_result_name(s.result), s.error);
    cr_assert_neq(s.error[0], '\0');
    seen_free(&s);
    t_finish();
}

Test(http_client, body_over_cap_with_content_length, .timeout = 30)
{
    t_start(NULL);
    fake_http_route(T.fake, NULL, "/big", h_big, NULL);
    struct seen s = {0};
    struct http_request req = {.max_body = 1024};
    fetch(&req, "/big", &s);
    cr_assert_eq(s.result, HTTP_ERR_TOO_LARGE, "result %s: %s", http_result_name(s.result),
                 s.error);
    cr_assert(strstr(s.error, "1024") != NULL, "error: %s", s.error);
    cr_assert_leq(s.body_len, 1024);
    seen_free(&s);
    t_finish();
}

Test(http_client, body_over_cap_without_content_length, .timeout = 30)
{
    t_start(NULL);
    fake_http_route(T.fake, NULL, "/big", h_big, NULL);
    struct seen s = {0};
    struct http_request req = {.max_body = 1000};
    fetch(&req, "/big?nocl", &s);
    cr_assert_eq(s.result, HTTP_ERR_TOO_LARGE, "result %s: %s", http_result_name(s.result),
                 s.error);
    cr_assert_leq(s.body_len, 1000);
    seen_free(&s);
    t_finish();
}

Test(http_client, body_at_cap_is_fine, .timeout = 30)
{
    t_start(NULL);
    fake_http_route(T.fake, NULL, "/big", h_big, NULL);
    struct seen a = {0}, b = {0};
    struct http_request req = {.max_body = 4096 * 16};
    fetch(&req, "/big", &a);
    fetch(&req, "/big?nocl", &b);
    cr_assert_eq(a.result, HTTP_OK, "%s", a.error);
    cr_assert_eq(a.body_len, 4096 * 16);
    cr_assert_eq(b.result, HTTP_OK, "%s", b.error);
    cr_assert_eq(b.body_len, 4096 * 16);
    seen_free(&a);
    seen_free(&b);
    t_finish();
}

Test(http_client, many_concurrent_requests_all_complete, .timeout = 60)
{
    enum { N = 200 };
    t_start(NULL);
    fake_http_route(T.fake, "GET", "/c", h_small_delay, NULL);
    static struct seen s[N];
    memset(s, 0, sizeof(s));
    for (int i = 0; i < N; i++) {
        char *u = xasprintf("%s/c?%d", fake_http_url(T.fake), i);
        struct http_request req = {.url = u};
        cr_assert_eq(http_client_request(T.client, &req, on_done, &s[i], NULL), 0);
        free(u);
    }
    struct http_client_stats st;
    http_client_get_stats(T.client, &st);
    cr_assert_eq(st.in_flight, N);
    t_run_until(N);
    for (int i = 0; i < N; i++) {
        cr_assert_eq(s[i].calls, 1);
        cr_assert_eq(s[i].result, HTTP_OK, "#%d: %s", i, s[i].error);
        cr_assert_eq(s[i].status, 200);
        char want[32];
        snprintf(want, sizeof(want), "seq=%d", i);
        cr_assert_str_eq(s[i].body, want);
        seen_free(&s[i]);
    }
    http_client_get_stats(T.client, &st);
    cr_assert_eq(st.in_flight, 0);
    cr_assert_eq(st.completed, N);
    cr_assert_eq(st.failed, 0);
    cr_assert_eq(fake_http_count(T.fake), N);
    t_finish();
}

/* N concurrent GETs of /c, run to completion; every one must succeed. */
static void wave(int n)
{
    static struct seen s[300];
    cr_assert_leq(n, 300);
    memset(s, 0, sizeof(s));
    T.done = 0;
    for (int i = 0; i < n; i++) {
        char *u = xasprintf("%s/c?%d", fake_http_url(T.fake), i);
        struct http_request req = {.url = u};
        cr_assert_eq(http_client_request(T.client, &req, on_done, &s[i], NULL), 0);
        free(u);
    }
    t_run_until(n);
    for (int i = 0; i < n; i++) {
        cr_assert_eq(s[i].result, HTTP_OK, "#%d: %s", i, s[i].error);
        seen_free(&s[i]);
    }
}

/* A burst's connections stay open for the next one. curl's default cache holds four per
 * transfer still running, so as a burst drained its connections were closed, and each
 * burst of the pipeline benchmark opened them again (one connection per two requests). */
Test(http_client, a_burst_keeps_its_connections_for_the_next, .timeout = 60)
{
    enum { N = 200 }; /* more than one shard's worth */
    t_start(NULL);
    fake_http_route(T.fake, "GET", "/c", h_small_delay, NULL);
    wave(N);
    unsigned first = fake_http_connections(T.fake);
    cr_assert_gt(first, N / 2, "the burst ran on %u connections", first);
    wave(N);
    wave(N);
    cr_assert_leq(fake_http_connections(T.fake), first + N / 10,
                  "the first burst opened %u connections, three opened %u", first,
                  fake_http_connections(T.fake));
    t_finish();
}

Test(http_client, max_host_connections_limits_parallel_connections, .timeout = 60)
{
    struct http_client_opts opts = {.max_host_connections = 2};
    t_start(&opts);
    fake_http_route(T.fake, "GET", "/c", h_small_delay, NULL);
    wave(20);
    cr_assert_leq(fake_http_connections(T.fake), 2);
    t_finish();
}

/* Completion order, to check which request finished first. */
static int order[4], norder;

static void on_ordered(struct http_response *r, void *arg)
{
    on_done(r, arg);
    order[norder++] = ((struct seen *)arg)->resubmit_rc; /* used as an id here */
}

Test(http_client, deadline_counts_while_waiting_for_a_connection, .timeout = 30)
{
    struct http_client_opts opts = {.max_host_connections = 1};
    t_start(&opts);
    fake_http_route(T.fake, NULL, "/slow", h_slow, NULL);
    norder = 0;
    struct seen busy = {.resubmit_rc = 1}, queued = {.resubmit_rc = 2};
    char *u = url("/slow");
    struct http_request holds = {.url = u, .timeout_ms = 2000};
    struct http_request waits = {.url = u, .timeout_ms = 100};
    cr_assert_eq(http_client_request(T.client, &holds, on_ordered, &busy, NULL), 0);
    cr_assert_eq(http_client_request(T.client, &waits, on_ordered, &queued, NULL), 0);
    free(u);
    t_run_until(2);
    cr_assert_eq(order[0], 2, "the queued request must time out first");
    cr_assert_eq(queued.result, HTTP_ERR_TIMEOUT, "%s", queued.error);
    cr_assert_eq(busy.result, HTTP_ERR_TIMEOUT, "%s", busy.error);
    cr_assert_eq(fake_http_count(T.fake), 1);
    seen_free(&busy);
    seen_free(&queued);
    t_finish();
}

/* Sequential requests, each started from the previous one's callback. */
struct chain {
    int left;
    int ok;
};

static void on_chain(struct http_response *r, void *arg)
{
    struct chain *ch = arg;
    T.done++;
    if (r->result == HTTP_OK && r->status == 200)
        ch->ok++;
    if (--ch->left > 0) {
        char *u = url("/hello");
        struct http_request req = {.url = u};
        cr_assert_eq(http_client_request(T.client, &req, on_chain, ch, NULL), 0);
        free(u);
    }
}

Test(http_client, keep_alive_connection_is_reused, .timeout = 30)
{
    enum { N = 5 };
    t_start(NULL);
    fake_http_route(T.fake, "GET", "/hello", h_hello, NULL);
    struct chain ch = {.left = N};
    char *u = url("/hello");
    struct http_request req = {.url = u};
    cr_assert_eq(http_client_request(T.client, &req, on_chain, &ch, NULL), 0);
    free(u);
    t_run_until(N);
    cr_assert_eq(ch.ok, N);
    cr_assert_eq(fake_http_count(T.fake), N);
    cr_assert_lt(fake_http_connections(T.fake), N);
    cr_assert_eq(fake_http_connections(T.fake), 1);
    for (size_t i = 0; i < N; i++)
        cr_assert_eq(fake_http_request_at(T.fake, i)->conn_id, 1);
    t_finish();
}

static void on_cancel(struct http_response *r, void *arg)
{
    struct seen *s = arg;
    on_done(r, arg);
    /* The client is closing: it must refuse new work, from inside a callback too. */
    char *err = NULL;
    struct http_request req = {.url = "http://127.0.0.1:1/"};
    s->resubmit_rc = http_client_request(T.client, &req, on_done, NULL, &err);
    free(err);
}

Test(http_client, close_with_requests_in_flight_cancels_each_once, .timeout = 30)
{
    enum { N = 5 };
    t_start(NULL);
    fake_http_route(T.fake, NULL, "/slow", h_slow, NULL);
    struct seen s[N] = {0};
    char *u = url("/slow");
    for (int i = 0; i < N; i++) {
        struct http_request req = {.url = u};
        cr_assert_eq(http_client_request(T.client, &req, on_cancel, &s[i], NULL), 0);
    }
    free(u);
    /* Let the requests reach the fake, so connections are open when we close. */
    uint64_t polls = 0;
    while (fake_http_count(T.fake) < N) {
        cr_assert_lt(polls++, 100000, "requests never reached the fake");
        uv_run(&T.loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
    http_client_close(T.client, on_closed, &T.closed);
    for (int i = 0; i < N; i++) {
        cr_assert_eq(s[i].calls, 1, "#%d ran %d times", i, s[i].calls);
        cr_assert_eq(s[i].result, HTTP_ERR_CANCELLED);
        cr_assert_str_eq(s[i].error, "cancelled: the HTTP client was closed");
        cr_assert_eq(s[i].resubmit_rc, -1);
    }
    T.client = NULL;
    t_finish();
    for (int i = 0; i < N; i++) {
        cr_assert_eq(s[i].calls, 1);
        seen_free(&s[i]);
    }
}

Test(http_client, close_right_after_submit, .timeout = 30)
{
    t_start(NULL);
    struct seen s = {0};
    char *u = url("/never");
    struct http_request req = {.url = u};
    cr_assert_eq(http_client_request(T.client, &req, on_done, &s, NULL), 0);
    free(u);
    http_client_close(T.client, on_closed, &T.closed);
    T.client = NULL;
    cr_assert_eq(s.calls, 1);
    cr_assert_eq(s.result, HTTP_ERR_CANCELLED);
    t_finish();
    cr_assert_eq(s.calls, 1);
    seen_free(&s);
}

/* Closing from inside a completion callback: the other request is cancelled, the client
 * goes away only after the callback returned. */
static struct seen close_slow;

static void on_fast_then_close(struct http_response *r, void *arg)
{
    on_done(r, arg);
    http_client_close(T.client, on_closed, &T.closed);
    cr_assert_eq(close_slow.calls, 1);
    cr_assert_eq(close_slow.result, HTTP_ERR_CANCELLED);
    cr_assert_eq(T.closed, 0);
}

Test(http_client, close_from_inside_a_callback, .timeout = 30)
{
    t_start(NULL);
    fake_http_route(T.fake, NULL, "/slow", h_slow, NULL);
    fake_http_route(T.fake, NULL, "/hello", h_hello, NULL);
    memset(&close_slow, 0, sizeof(close_slow));
    struct seen fast = {0};
    char *us = url("/slow"), *uf = url("/hello");
    struct http_request rs = {.url = us}, rf = {.url = uf};
    cr_assert_eq(http_client_request(T.client, &rs, on_done, &close_slow, NULL), 0);
    cr_assert_eq(http_client_request(T.client, &rf, on_fast_then_close, &fast, NULL), 0);
    free(us);
    free(uf);
    t_run_until(2);
    T.client = NULL;
    t_finish();
    cr_assert_eq(fast.calls, 1);
    cr_assert_eq(fast.result, HTTP_OK);
    cr_assert_eq(close_slow.calls, 1);
    seen_free(&fast);
    seen_free(&close_slow);
}

Test(http_client, invalid_requests_are_refused_without_callback, .timeout = 30)
{
    t_start(NULL);
    struct seen s = {0};
    struct http_request req = {0};
    char *err = NULL;
    cr_assert_eq(http_client_request(T.client, &req, on_done, &s, &err), -1);
    cr_assert_not_null(err);
    free(err);
    req.url = "http://127.0.0.1/";
    err = NULL;
    cr_assert_eq(http_client_request(T.client, &req, NULL, NULL, &err), -1);
    free(err);
    cr_assert_eq(s.calls, 0);
    t_finish();
    cr_assert_eq(s.calls, 0);
}

Test(http_client, unsupported_scheme_fails_in_callback, .timeout = 30)
{
    t_start(NULL);
    struct seen s = {0};
    struct http_request req = {.url = "ftp://127.0.0.1/file"};
    cr_assert_eq(http_client_request(T.client, &req, on_done, &s, NULL), 0);
    t_run_until(1);
    cr_assert_eq(s.result, HTTP_ERR_OTHER);
    seen_free(&s);
    t_finish();
}

Test(http_client, redirects_only_when_asked, .timeout = 30)
{
    t_start(NULL);
    fake_http_route(T.fake, NULL, "/old", h_redirect, NULL);
    fake_http_route(T.fake, NULL, "/target", h_hello, NULL);
    struct seen a = {0}, b = {0};
    struct http_request no = {0}, yes = {.max_redirects = 3};
    fetch(&no, "/old", &a);
    fetch(&yes, "/old", &b);
    cr_assert_eq(a.status, 302);
    cr_assert_str_eq(a.body, "moved");
    cr_assert_eq(b.status, 200);
    cr_assert_str_eq(b.body, "hello world");
    cr_assert_str_eq(b.call_id, "abc-123");
    seen_free(&a);
    seen_free(&b);
    t_finish();
}

static char *stolen;
static size_t stolen_len;

static void on_steal(struct http_response *r, void *arg)
{
    stolen = http_response_steal_body(r, &stolen_len);
    cr_assert_str_eq(r->body, "");
    cr_assert_eq(r->body_len, 0);
    T.done++;
}

Test(http_client, steal_body, .timeout = 30)
{
    t_start(NULL);
    fake_http_route(T.fake, NULL, "/hello", h_hello, NULL);
    char *u = url("/hello");
    struct http_request req = {.url = u};
    cr_assert_eq(http_client_request(T.client, &req, on_steal, NULL, NULL), 0);
    free(u);
    t_run_until(1);
    cr_assert_str_eq(stolen, "hello world");
    cr_assert_eq(stolen_len, 11);
    free(stolen);
    t_finish();
}

Test(http_client, result_names)
{
    cr_assert_str_eq(http_result_name(HTTP_OK), "ok");
    cr_assert_str_eq(http_result_name(HTTP_ERR_TIMEOUT), "timeout");
    cr_assert_str_eq(http_result_name(HTTP_ERR_CONNECT), "connect");
    cr_assert_str_eq(http_result_name(HTTP_ERR_TOO_LARGE), "too_large");
    cr_assert_str_eq(http_result_name(HTTP_ERR_CANCELLED), "cancelled");
    cr_assert_str_eq(http_result_name(HTTP_ERR_OTHER), "other");
}

Test(http_client, url_part_validates_and_splits)
{
    char *s = http_url_part("https://hooks.slack.com/services/T/B/X", HTTP_URL_HOST);
    cr_assert_str_eq(s, "hooks.slack.com");
    free(s);
    s = http_url_part("http://127.0.0.1:8080/graphql?x=1", HTTP_URL_HOST);
    cr_assert_str_eq(s, "127.0.0.1:8080");
    free(s);
    s = http_url_part("http://127.0.0.1:8080/graphql?x=1", HTTP_URL_PATH);
    cr_assert_str_eq(s, "/graphql");
    free(s);
    s = http_url_part("https://api.linear.app", HTTP_URL_PATH);
    cr_assert_str_eq(s, "/");
    free(s);
    cr_assert_null(http_url_part("ftp://example.com/x", HTTP_URL_HOST));
    cr_assert_null(http_url_part("https:///nohost", HTTP_URL_HOST));
    cr_assert_null(http_url_part("not a url", HTTP_URL_PATH));
    cr_assert_null(http_url_part(NULL, HTTP_URL_HOST));
}
