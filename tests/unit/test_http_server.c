/* Tests for lib/http_server: a real server on 127.0.0.1 (ephemeral port) driven by a client
 * thread with blocking sockets, plus the socket-less session core. Every loop test ends with
 * uv_loop_close() == 0. */
#include "buf.h"
#include "http_server.h"
#include "log.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------------------------------
 * Harness: the loop runs in the test's main thread, the client in its own thread. When the
 * client returns, an async handle asks the server to shut down gracefully. */

struct harness;
typedef void (*client_fn)(struct harness *h);

struct harness {
    uv_loop_t loop;
    uv_async_t async;
    struct http_server *srv;
    int port;
    client_fn client;
    pthread_t thread;
    char err[512];                  /* first failed CHECK in the client thread */
    int done_called;                /* shutdown done callback count */
    int shutdown_asked;             /* shutdown (or force close) already started */
    struct http_server_stats final; /* stats captured in the done callback */
    /* /hold support */
    struct http_request *held;
    void (*on_hold)(struct harness *h, struct http_request *req);
    uv_timer_t hold_timer;
    int hold_timer_used;
    int held_responded;
    int late_respond; /* respond to `held` after uv_run returned */
};

static void check_fail(struct harness *h, int line, const char *cond, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void check_fail(struct harness *h, int line, const char *cond, const char *fmt, ...)
{
    if (h->err[0])
        return; /* keep the first failure */
    int n = snprintf(h->err, sizeof h->err, "line %d: %s: ", line, cond);
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && n < (int)sizeof h->err)
        vsnprintf(h->err + n, sizeof h->err - (size_t)n, fmt, ap);
    va_end(ap);
}

/* Record a failure from the client thread; the main thread asserts h->err is empty. */
#define CHECK(h, cond, ...)                                                                        \
    do {                                                                                           \
        if (!(cond))                                                                               \
            check_fail((h), __LINE__, #cond, __VA_ARGS__);                                         \
    } while (0)

static void on_done(void *arg)
{
    struct harness *h = arg;
    h->done_called++;
    http_server_get_stats(h->srv, &h->final);
}

static void harness_shutdown(struct harness *h)
{
    if (h->shutdown_asked)
        return;
    h->shutdown_asked = 1;
    http_server_shutdown(h->srv, on_done, h);
}

static void on_async(uv_async_t *a)
{
    struct harness *h = a->data;
    uv_close((uv_handle_t *)a, NULL);
    harness_shutdown(h);
}

static void *client_thread(void *arg)
{
    struct harness *h = arg;
    h->client(h);
    uv_async_send(&h->async);
    return NULL;
}

/* Per-request delayed response. */
struct delayed {
    uv_timer_t timer;
    struct http_request *req;
};

static void on_delayed_close(uv_handle_t *t)
{
    free(t->data);
}

static void on_delayed(uv_timer_t *t)
{
    struct delayed *d = t->data;
    char body[256];
    int n = snprintf(body, sizeof body, "delayed %s", d->req->query);
    http_respond(d->req, 200, "text/plain", NULL, body, (size_t)n);
    uv_close((uv_handle_t *)t, on_delayed_close);
}

/* /echo: method, path, query, selected headers, body. /delay?N: answer after N ms.
 * /hold: keep the request for the test's on_hold hook. */
static void test_handler(struct http_request *req, void *ud)
{
    struct harness *h = ud;
    if (strcmp(req->path, "/delay") == 0) {
        struct delayed *d = calloc(1, sizeof *d);
        d->req = req;
        uv_timer_init(&h->loop, &d->timer);
        d->timer.data = d;
        uv_timer_start(&d->timer, on_delayed, (uint64_t)atoi(req->query), 0);
        return;
    }
    if (strcmp(req->path, "/hold") == 0) {
        __atomic_store_n(&h->held, req, __ATOMIC_SEQ_CST); /* the client thread polls it */
        if (h->on_hold)
            h->on_hold(h, req);
        return;
    }
    struct buf b = BUF_INIT;
    const char *xc = http_request_header(req, "x-custom");
    buf_printf(&b, "%s %s ?%s x-custom=%s peer=%s len=%zu\n", req->method, req->path, req->query,
               xc ? xc : "(none)", req->peer, req->body_len);
    buf_append(&b, req->body, req->body_len);
    http_respond(req, strcmp(req->path, "/missing") == 0 ? 404 : 200, "text/plain",
                 "X-Test: yes\r\n", b.data, b.len);
    buf_free(&b);
}

static void test_opts(struct http_server_opts *o)
{
    http_server_opts_default(o);
    o->port = 0;
    o->max_header_bytes = 1024;
    o->max_body_bytes = 1024;
    o->header_timeout_ms = 5000;
    o->body_timeout_ms = 5000;
    o->idle_timeout_ms = 5000;
    o->name = "test";
}

/* Run client in a thread against a fresh server; returns after every handle is closed. */
static void harness_run(struct harness *h, const struct http_server_opts *o, client_fn client)
{
    char err[256];
    log_init("test", LOG_WARN);
    cr_assert_eq(uv_loop_init(&h->loop), 0);
    h->srv = http_server_start(&h->loop, o, test_handler, h, err, sizeof err);
    cr_assert_not_null(h->srv, "%s", err);
    h->port = http_server_port(h->srv);
    cr_assert_gt(h->port, 0);
    uv_async_init(&h->loop, &h->async, on_async);
    h->async.data = h;
    h->client = client;
    cr_assert_eq(pthread_create(&h->thread, NULL, client_thread, h), 0);
    uv_run(&h->loop, UV_RUN_DEFAULT);
    pthread_join(h->thread, NULL);
    if (h->late_respond && h->held) {
        http_respond(h->held, 200, "text/plain", NULL, "late", 4);
        h->held = NULL;
    }
    cr_assert_eq(uv_loop_close(&h->loop), 0);
    cr_assert_str_empty(h->err, "%s", h->err);
}

/* ---------------------------------------------------------------------------------------
 * Blocking client */

struct tc {
    int fd;
    char buf[16384];
    size_t len;
};

struct resp {
    int status;
    char head[2048];
    char body[8192];
    size_t body_len;
};

static int tc_connect(struct tc *c, int port)
{
    memset(c, 0, sizeof *c);
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {.tv_sec = 10};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)&a, sizeof a) != 0) {
        int e = errno;
        close(c->fd);
        c->fd = -1;
        return -e;
    }
    return 0;
}

static int tc_send(struct tc *c, const char *s)
{
    size_t n = strlen(s);
    while (n) {
        ssize_t w = send(c->fd, s, n, MSG_NOSIGNAL);
        if (w <= 0)
            return -1;
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

static int tc_fill(struct tc *c)
{
    if (c->len >= sizeof c->buf)
        return -1;
    ssize_t n = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
    if (n <= 0)
        return -1;
    c->len += (size_t)n;
    return 0;
}

/* Read one response (Content-Length framed). Returns 0, or -1 on EOF/error/garbage. */
static int tc_read_response(struct tc *c, struct resp *r)
{
    memset(r, 0, sizeof *r);
    char *end;
    while (!(end = memmem(c->buf, c->len, "\r\n\r\n", 4)))
        if (tc_fill(c))
            return -1;
    size_t hlen = (size_t)(end - c->buf) + 4;
    if (hlen >= sizeof r->head || sscanf(c->buf, "HTTP/1.1 %d", &r->status) != 1)
        return -1;
    memcpy(r->head, c->buf, hlen);
    const char *cl = strcasestr(r->head, "\r\ncontent-length:");
    if (!cl)
        return -1;
    r->body_len = strtoul(cl + 17, NULL, 10);
    if (r->body_len >= sizeof r->body)
        return -1;
    while (c->len < hlen + r->body_len)
        if (tc_fill(c))
            return -1;
    memcpy(r->body, c->buf + hlen, r->body_len);
    memmove(c->buf, c->buf + hlen + r->body_len, c->len - hlen - r->body_len);
    c->len -= hlen + r->body_len;
    return 0;
}

/* Read until the server closes. Returns 0 on a clean EOF, -1 on reset or timeout. Data read
 * is appended to c->buf. */
static int tc_read_to_close(struct tc *c)
{
    for (;;) {
        if (c->len >= sizeof c->buf - 1)
            return -1;
        ssize_t n = recv(c->fd, c->buf + c->len, sizeof c->buf - 1 - c->len, 0);
        if (n == 0)
            break;
        if (n < 0)
            return -1;
        c->len += (size_t)n;
    }
    c->buf[c->len] = '\0';
    return 0;
}

static void tc_close(struct tc *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int has_header(const struct resp *r, const char *line)
{
    return strcasestr(r->head, line) != NULL;
}

/* ---------------------------------------------------------------------------------------
 * Tests over TCP */

static void client_simple_get(struct harness *h)
{
    struct tc c;
    struct resp r;
    CHECK(h, tc_connect(&c, h->port) == 0, "connect");
    CHECK(h,
          tc_send(&c, "GET /echo?a=1&b=2 HTTP/1.1\r\nHost: x\r\nX-Custom:  hi there \r\n\r\n") == 0,
          "send");
    CHECK(h, tc_read_response(&c, &r) == 0, "read");
    CHECK(h, r.status == 200, "status %d", r.status);
    CHECK(h, strstr(r.body, "GET /echo ?a=1&b=2 x-custom=hi there peer=127.0.0.1:") == r.body,
          "body %s", r.body);
    CHECK(h, has_header(&r, "\r\nX-Test: yes\r\n"), "extra header: %s", r.head);
    CHECK(h, has_header(&r, "\r\nContent-Type: text/plain\r\n"), "ctype: %s", r.head);
    CHECK(h, !has_header(&r, "Connection: close"), "keep-alive expected: %s", r.head);
    tc_close(&c);
}

Test(http_server, simple_get)
{
    struct harness h = {0};
    struct http_server_opts o;
    test_opts(&o);
    harness_run(&h, &o, client_simple_get);
    cr_assert_eq(h.done_called, 1);
    cr_assert_eq(h.final.requests_total, 1);
    cr_assert_eq(h.final.connections_current, 0);
}

static void client_keep_alive(struct harness *h)
{
    struct tc c;
    struct resp r;
    CHECK(h, tc_connect(&c, h->port) == 0, "connect");
    for (int i = 0; i < 3; i++) {
        char req[128], want[64];
        snprintf(req, sizeof req, "GET /echo?n=%d HTTP/1.1\r\nHost: x\r\n\r\n", i);
        snprintf(want, sizeof want, "GET /echo ?n=%d ", i);
        CHECK(h, tc_send(&c, req) == 0, "send %d", i);
        CHECK(h, tc_read_response(&c, &r) == 0, "read %d", i);
        CHECK(h, strstr(r.body, want) == r.body, "body %d: %s", i, r.body);
    }
    /* Connection: close on the last request closes after the response. */
    CHECK(h, tc_send(&c, "GET /echo?last HTTP/1.1\r\nConnection: close\r\n\r\n") == 0, "send");
    CHECK(h, tc_read_response(&c, &r) == 0, "read last");
    CHECK(h, has_header(&r, "\r\nConnection: close\r\n"), "close header: %s", r.head);
    CHECK(h, tc_read_to_close(&c) == 0 && c.len == 0, "EOF after close");
    tc_close(&c);
}

Test(http_server, keep_alive_and_connection_close)
{
    struct harness h = {0};
    struct http_server_opts o;
    test_opts(&o);
    harness_run(&h, &o, client_keep_alive);
    cr_assert_eq(h.final.requests_total, 4);
}

static void client_pipelined(struct harness *h)
{
    struct tc c;
    struct resp r;
    CHECK(h, tc_connect(&c, h->port) == 0, "connect");
    /* The first answer is delayed; the later ones must wait for it. */
    CHECK(h,
          tc_send(&c, "GET /delay?100 HTTP/1.1\r\nHost: x\r\n\r\n"
                      "POST /echo?2 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
                      "GET /echo?3 HTTP/1.1\r\nHost: x\r\n\r\n") == 0,
          "send");
    CHECK(h, tc_read_response(&c, &r) == 0 && strcmp(r.body, "delayed 100") == 0, "1st: %s",
          r.body);
    CHECK(h, tc_read_response(&c, &r) == 0 && strstr(r.body, "POST /echo ?2 ") == r.body, "2nd: %s",
          r.body);
    CHECK(h, strstr(r.body, "len=3\nabc") != NULL, "2nd body: %s", r.body);
    CHECK(h, tc_read_response(&c, &r) == 0 && strstr(r.body, "GET /echo ?3 ") == r.body, "3rd: %s",
          r.body);
    tc_close(&c);
}

Test(http_server, pipelined_answered_in_order)
{
    struct harness h = {0};
    struct http_server_opts o;
    test_opts(&o);
    harness_run(&h, &o, client_pipelined);
    cr_assert_eq(h.final.requests_total, 3);
}

static void client_chunked(struct harness *h)
{
    struct tc c;
    struct resp r;
    CHECK(h, tc_connect(&c, h->port) == 0, "connect");
    CHECK(h, tc_send(&c, "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel") == 0,
          "send");
    CHECK(h, tc_send(&c, "lo\r\n6;ext=1\r\n world\r\n") == 0, "send");
    CHECK(h, tc_send(&c, "0\r\nX-Trailer: t\r\n\r\n") == 0, "send");
    CHECK(h, tc_read_response(&c, &r) == 0, "read");
    CHECK(h, r.status == 200 && strstr(r.body, "len=11\nhello world") != NULL, "body: %s", r.body);
    tc_close(&c);
}

Test(http_server, chunked_post_reassembled)
{
    struct harness h = {0};
    struct http_server_opts o;
    test_opts(&o);
    harness_run(&h, &o, client_chunked);
}

static void client_async(struct harness *h)
{
    struct tc c;
    struct resp r;
    CHECK(h, tc_connect(&c, h->port) == 0, "connect");
    CHECK(h, tc_send(&c, "GET /delay?50 HTTP/1.1\r\n\r\n") == 0, "send");
    CHECK(h, tc_read_response(&c, &r) == 0, "read");
    CHECK(h, r.status == 200 && strcmp(r.body, "delayed 50") == 0, "body: %s", r.body);
    /* The connection is reusable after an async response. */
    CHECK(h, tc_send(&c, "GET /echo HTTP/1.1\r\n\r\n") == 0, "send");
    CHECK(h, tc_read_response(&c, &r) == 0 && r.status == 200, "second");
    tc_close(&c);
}

Test(http_server, async_response_from_timer)
{
    struct harness h = {0};
    struct http_server_opts o;
    test_opts(&o);
    harness_run(&h, &o, client_async);
}

/* Send req, expect a response with status, then EOF. */
static void expect_error(struct harness *h, const char *req, int status)
{
    struct tc c;
    struct resp r;
    CHECK(h, tc_connect(&c, h->port) == 0, "connect");
    CHECK(h, tc_send(&c, req) == 0, "send");
    CHECK(h, tc_read_response(&c, &r) == 0, "read (want %d)", status);
    CHECK(h, r.status == status, "status %d, want %d", r.status, status);
    CHECK(h, has_header(&r, "\r\nConnection: close\r\n"), "close header: %s", r.head);
    CHECK(h, tc_read_to_close(&c) == 0, "EOF after %d", status);
    tc_close(&c);
}

static void client_errors(struct harness *h)
{
    expect_error(h, "POST /echo HTTP/1.1\r\nHost: x\r\n\r\n", 411);
    expect_error(h, "PUT /echo HTTP/1.1\r\nHost: x\r\n\r\n", 411);
    expect_error(h, "POST /echo HTTP/1.1\r\nContent-Length: 5000\r\n\r\n", 413);
    char big[3000];
    int n = snprintf(big, sizeof big,
                     "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n320\r\n");
    memset(big + n, 'a', 800);
    strcpy(big + n + 800, "\r\n320\r\n");
    n += 807;
    memset(big + n, 'b', 800);
    strcpy(big + n + 800, "\r\n0\r\n\r\n");
    expect_error(h, big, 413);
    char hdr[2000];
    n = snprintf(hdr, sizeof hdr, "GET /echo HTTP/1.1\r\nX-Big: ");
    memset(hdr + n, 'x', 1500);
    strcpy(hdr + n + 1500, "\r\n\r\n");
    expect_error(h, hdr, 431);
    expect_error(h, "GARBAGE\r\n\r\n", 400);
    expect_error(h, "GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400);
    expect_error(h,
                 "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                 "0\r\n\r\n",
                 400);
}

Test(http_server, error_statuses)
{
    struct harness h = {0};
    struct http_server_opts o;
    test_opts(&o);
    harness_run(&h, &o, client_errors);
    cr_assert_eq(h.final.requests_total, 0);
    cr_assert_eq(h.final.errors_total, 8, "every error answer is counted");
}

static void client_slowloris(struct harness *h)
{
    struct tc c;
    CHECK(h, tc_connect(&c, h->port) == 0, "connect");
    CHECK(h, tc_send(&c, "GET /echo HTTP/1.1\r\n") == 0, "send");
    /* Trickle header lines until the server answers (bounded by a deadline). */
    int answered = 0;
    for (int i = 0; i < 200 && !answered; i++) {
        if (tc_send(&c, "X-Slow: 1\r\n") != 0)
            break;
        struct pollfd p = {.fd = c.fd, .events = POLLIN};
        answered = poll(&p, 1, 50) > 0;
    }
    CHECK(h, answered, "server never answered the slow client");
    CHECK(h, tc_read_to_close(&c) == 0, "EOF");
    CHECK(h, strncmp(c.buf, "HTTP/1.1 408 ", 13) == 0, "want 408: %s", c.buf);
    tc_close(&c);

    /* A silent connection is closed without a response. */
    CHECK(h, tc_connect(&c, h->port) == 0, "connect");
    CHECK(h, tc_read_to_close(&c) == 0 && c.len == 0, "silent close, got %zu bytes", c.len);
    tc_close(&c);
}

Test(http_server, slowloris_gets_408)
{
    struct harness h = {0};
    struct http_server_opts o;
    test_opts(&o);
    o.header_timeout_ms = 200;
    harness_run(&h, &o, client_slowloris);
}

static void client_slow_body(struct harness *h)
{
    struct tc c;
    CHECK(h, tc_connect(&c, h->port) == 0, "connect");
    CHECK(h, tc_send(&c, "POST /echo HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc") == 0, "send");
    CHECK(h, tc_read_to_close(&c) == 0, "EOF");
    CHECK(h, strncmp(c.buf, "HTTP/1.1 408 ", 13) == 0, "want 408: %s", c.buf);
    tc_close(&c);

    /* Idle keep-alive: after a response, the connection is closed silently. */
    struct resp r;
    CHECK(h, tc_connect(&c, h->port) == 0, "connect");
    CHECK(h, tc_send(&c, "GET /echo HTTP/1.1\r\n\r\n") == 0, "send");
    CHECK(h, tc_read_response(&c, &r) == 0 && r.status == 200, "read");
    CHECK(h, tc_read_to_close(&c) == 0 && c.len == 0, "idle close, got %zu bytes", c.len);
    tc_close(&c);
}

Test(http_server, body_timeout_and_idle_close)
{
    struct harness h = {0};
    struct http_server_opts o;
    test_opts(&o);
    o.body_timeout_ms = 200;
    o.idle_timeout_ms = 200;
    harness_run(&h, &o, client_slow_body);
}

static void client_http10(struct harness *h)
{
    struct tc c;
    struct resp r;
    CHECK(h, tc_connect(&c, h->port) == 0, "connect");
    CHECK(h, tc_send(&c, "GET /echo HTTP/1.0\r\n\r\n") == 0, "send");
    CHECK(h, tc_read_response(&c, &r) == 0 && r.status == 200, "read");
    CHECK(h, has_header(&r, "\r\nConnection: close\r\n"), "close: %s", r.head);
    CHECK(h, tc_read_to_close(&c) == 0, "EOF");
    tc_close(&c);

    CHECK(h, tc_connect(&c, h->port) == 0, "connect");
    CHECK(h, tc_send(&c, "GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n") == 0, "send");
    CHECK(h, tc_read_response(&c, &r) == 0 && r.status == 200, "read");
    CHECK(h, has_header(&r, "\r\nConnection: keep-alive\r\n"), "keep-alive: %s", r.head);
    CHECK(h, tc_send(&c, "GET /echo HTTP/1.0\r\n\r\n") == 0, "send");
    CHECK(h, tc_read_response(&c, &r) == 0 && r.status == 200, "read 2");
    tc_close(&c);
}

Test(http_server, http10)
{
    struct harness h = {0};
    struct http_server_opts o;
    test_opts(&o);
    harness_run(&h, &o, client_http10);
    cr_assert_eq(h.final.requests_total, 3);
}

static void client_half_close(struct harness *h)
{
    struct tc c;
    struct resp r;
    CHECK(h, tc_connect(&c, h->port) == 0, "connect");
    CHECK(h, tc_send(&c, "GET /delay?50 HTTP/1.1\r\n\r\nGET /echo?2 HTTP/1.1\r\n\r\n") == 0,
          "send");
    shutdown(c.fd, SHUT_WR);
    CHECK(h, tc_read_response(&c, &r) == 0 && strcmp(r.body, "delayed 50") == 0, "1st: %s", r.body);
    CHECK(h, tc_read_response(&c, &r) == 0 && strstr(r.body, "GET /echo ?2") == r.body, "2nd: %s",
          r.body);
    CHECK(h, tc_read_to_close(&c) == 0 && c.len == 0, "EOF");
    tc_close(&c);
}

Test(http_server, half_closed_client_still_answered)
{
    struct harness h = {0};
    struct http_server_opts o;
    test_opts(&o);
    harness_run(&h, &o, client_half_close);
    cr_assert_eq(h.final.requests_total, 2);
}

static void client_conn_cap(struct harness *h)
{
    struct tc a, b, x;
    struct resp r;
    CHECK(h, tc_connect(&a, h->port) == 0, "connect a");
    CHECK(h, tc_send(&a, "GET /echo HTTP/1.1\r\n\r\n") == 0 && tc_read_response(&a, &r) == 0,
          "a served");
    CHECK(h, tc_connect(&b, h->port) == 0, "connect b");
    CHECK(h, tc_send(&b, "GET /echo HTTP/1.1\r\n\r\n") == 0 && tc_read_response(&b, &r) == 0,
          "b served");
    /* The third is over the cap: a 503 (or nothing) and closed. */
    CHECK(h, tc_connect(&x, h->port) == 0, "connect x");
    int rc = tc_read_to_close(&x);
    CHECK(h, rc == 0 && strncmp(x.buf, "HTTP/1.1 503 ", 13) == 0, "over the cap: rc %d: %s", rc,
          x.buf);
    tc_close(&x);
    /* After a slot frees up, new connections are served again. */
    tc_close(&a);
    int served = 0;
    for (int i = 0; i < 250 && !served; i++) {
        if (tc_connect(&x, h->port) != 0)
            break;
        served = tc_send(&x, "GET /echo HTTP/1.1\r\n\r\n") == 0 && tc_read_response(&x, &r) == 0 &&
                 r.status == 200;
        tc_close(&x);
        if (!served)
            sleep_ms(20);
    }
    CHECK(h, served, "never served after a slot freed");
    tc_close(&b);
}

Test(http_server, connection_cap)
{
    struct harness h = {0};
    struct http_server_opts o;
    test_opts(&o);
    o.max_connections = 2;
    harness_run(&h, &o, client_conn_cap);
    cr_assert_geq(h.final.connections_rejected, 1);
    cr_assert_eq(h.final.errors_total, h.final.connections_rejected, "each 503 is counted");
    cr_assert_eq(h.final.connections_current, 0);
}

/* /hold: poll until the server has seen the client go away, then respond. */
static void on_poll_gone(uv_timer_t *t)
{
    struct harness *h = t->data;
    struct http_server_stats st;
    http_server_get_stats(h->srv, &st);
    if (st.connections_current != 0)
        return;
    http_respond(h->held, 200, "text/plain", NULL, "too late", 8);
    __atomic_store_n(&h->held_responded, 1, __ATOMIC_SEQ_CST);
    uv_close((uv_handle_t *)t, NULL);
}

static void hold_until_gone(struct harness *h, struct http_request *req)
{
    uv_timer_init(&h->loop, &h->hold_timer);
    h->hold_timer.data = h;
    uv_timer_start(&h->hold_timer, on_poll_gone, 5, 5);
}

static void client_disconnect(struct harness *h)
{
    struct tc c;
    CHECK(h, tc_connect(&c, h->port) == 0, "connect");
    CHECK(h, tc_send(&c, "POST /hold HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi") == 0, "send");
    /* Wait until the handler holds the request: the server reads nothing more from us, so
     * poll the shared flag (written on the loop thread). */
    for (int i = 0; i < 500 && !__atomic_load_n(&h->held, __ATOMIC_SEQ_CST); i++)
        sleep_ms(10);
    CHECK(h, __atomic_load_n(&h->held, __ATOMIC_SEQ_CST) != NULL, "handler never got the request");
    struct linger lg = {.l_onoff = 1, .l_linger = 0}; /* close with a reset */
    setsockopt(c.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    tc_close(&c);
    for (int i = 0; i < 500 && !__atomic_load_n(&h->held_responded, __ATOMIC_SEQ_CST); i++)
        sleep_ms(10);
}

Test(http_server, client_gone_before_async_response)
{
    struct harness h = {0};
    struct http_server_opts o;
    test_opts(&o);
    h.on_hold = hold_until_gone;
    harness_run(&h, &o, client_disconnect);
    cr_assert_eq(h.held_responded, 1);
    cr_assert_eq(h.done_called, 1);
}

/* /hold: start a graceful shutdown, answer a little later. */
static void on_hold_timer(uv_timer_t *t)
{
    struct harness *h = t->data;
    http_respond(h->held, 200, "text/plain", NULL, "finished", 8);
    h->held = NULL;
    uv_close((uv_handle_t *)t, NULL);
}

static void hold_then_shutdown(struct harness *h, struct http_request *req)
{
    harness_shutdown(h);
    uv_timer_init(&h->loop, &h->hold_timer);
    h->hold_timer.data = h;
    uv_timer_start(&h->hold_timer, on_hold_timer, 100, 0);
}

static void client_graceful(struct harness *h)
{
    struct tc c, d, idle;
    struct resp r;
    CHECK(h, tc_connect(&idle, h->port) == 0, "connect idle");
    CHECK(h, tc_send(&idle, "GET /echo HTTP/1.1\r\n\r\n") == 0 && tc_read_response(&idle, &r) == 0,
          "idle served");
    CHECK(h, tc_connect(&c, h->port) == 0, "connect");
    CHECK(h, tc_send(&c, "GET /hold HTTP/1.1\r\n\r\nGET /echo?dropped HTTP/1.1\r\n\r\n") == 0,
          "send");
    CHECK(h, tc_read_response(&c, &r) == 0, "in-flight response");
    CHECK(h, r.status == 200 && strcmp(r.body, "finished") == 0, "body: %s", r.body);
    CHECK(h, has_header(&r, "\r\nConnection: close\r\n"), "close: %s", r.head);
    CHECK(h, tc_read_to_close(&c) == 0 && c.len == 0, "EOF after the in-flight response");
    tc_close(&c);
    /* The idle keep-alive connection was closed by the shutdown. */
    CHECK(h, tc_read_to_close(&idle) == 0 && idle.len == 0, "idle closed");
    tc_close(&idle);
    /* No longer accepting. */
    CHECK(h, tc_connect(&d, h->port) != 0, "connect after shutdown succeeded");
    tc_close(&d);
}

Test(http_server, graceful_shutdown_finishes_in_flight)
{
    struct harness h = {0};
    struct http_server_opts o;
    test_opts(&o);
    h.on_hold = hold_then_shutdown;
    harness_run(&h, &o, client_graceful);
    cr_assert_eq(h.done_called, 1);
    cr_assert_eq(h.final.requests_total, 2);
}

/* /hold: force-close everything; the request is answered after uv_run returned. */
static void hold_then_force(struct harness *h, struct http_request *req)
{
    h->shutdown_asked = 1;
    h->late_respond = 1;
    http_server_force_close(h->srv);
    h->srv = NULL;
}

static void client_force(struct harness *h)
{
    struct tc c;
    CHECK(h, tc_connect(&c, h->port) == 0, "connect");
    CHECK(h, tc_send(&c, "GET /hold HTTP/1.1\r\n\r\n") == 0, "send");
    tc_read_to_close(&c); /* EOF or reset: either way no response */
    CHECK(h, c.len == 0, "no response expected: %s", c.buf);
    tc_close(&c);
}

Test(http_server, force_close_with_held_request)
{
    struct harness h = {0};
    struct http_server_opts o;
    test_opts(&o);
    h.on_hold = hold_then_force;
    harness_run(&h, &o, client_force);
    cr_assert_eq(h.done_called, 0);
    cr_assert_null(h.held);
}

Test(http_server, bind_failure_reports_reason)
{
    uv_loop_t loop;
    char err[256] = "";
    struct http_server_opts o;
    test_opts(&o);
    o.host = "not-an-address";
    cr_assert_eq(uv_loop_init(&loop), 0);
    cr_assert_null(http_server_start(&loop, &o, test_handler, NULL, err, sizeof err));
    cr_assert(strstr(err, "not-an-address") != NULL, "%s", err);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&loop), 0);
}

/* ---------------------------------------------------------------------------------------
 * Socket-less session */

static struct http_request *session_held;

static void session_handler(struct http_request *req, void *ud)
{
    int *count = ud;
    (*count)++;
    if (strcmp(req->path, "/hold") == 0) {
        session_held = req;
        return;
    }
    char body[256];
    int n = snprintf(body, sizeof body, "%s %s %.*s", req->method, req->path, (int)req->body_len,
                     req->body);
    http_respond(req, 200, "text/plain", NULL, body, (size_t)n);
}

static int feed_str(struct http_session *s, const char *str)
{
    return http_session_feed(s, str, strlen(str));
}

static struct http_session *session_new(int *count)
{
    struct http_server_opts o;
    test_opts(&o);
    *count = 0;
    session_held = NULL;
    return http_session_new(&o, session_handler, count);
}

Test(http_session, byte_by_byte_pipelined)
{
    int count;
    struct http_session *s = session_new(&count);
    const char *in = "GET /a HTTP/1.1\r\n\r\n"
                     "POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nxyz\r\n0\r\n\r\n"
                     "HEAD /c HTTP/1.1\r\n\r\n";
    for (size_t i = 0; in[i]; i++)
        cr_assert_eq(http_session_feed(s, in + i, 1), 0);
    cr_assert_eq(count, 3);
    const char *want = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 7\r\n\r\n"
                       "GET /a "
                       "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\n"
                       "POST /b xyz"
                       "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 8\r\n\r\n";
    cr_assert_str_eq(http_session_output(s)->data, want);
    http_session_eof(s);
    cr_assert(http_session_closed(s));
    http_session_free(s);
}

Test(http_session, held_request_survives_free)
{
    int count;
    struct http_session *s = session_new(&count);
    cr_assert_eq(feed_str(s, "GET /hold HTTP/1.1\r\n\r\nGET /x HTTP/1.1\r\n\r\n"), 0);
    cr_assert_eq(count, 1); /* the second waits for the first */
    cr_assert_not_null(session_held);
    http_session_free(s);
    cr_assert_str_eq(session_held->path, "/hold");
    http_respond(session_held, 200, NULL, NULL, "", 0); /* dropped, frees everything */
}

Test(http_session, respond_later_resumes_pipeline)
{
    int count;
    struct http_session *s = session_new(&count);
    cr_assert_eq(feed_str(s, "GET /hold HTTP/1.1\r\n\r\nGET /x HTTP/1.1\r\n\r\n"), 0);
    cr_assert_eq(count, 1);
    http_respond(session_held, 204, NULL, "X-A: 1\r\n", NULL, 0);
    cr_assert_eq(count, 2);
    const char *out = http_session_output(s)->data;
    cr_assert(strncmp(out, "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nX-A: 1\r\n\r\n", 53) ==
                  0,
              "%s", out);
    cr_assert(strstr(out, "GET /x ") != NULL, "%s", out);
    http_session_free(s);
}

Test(http_session, timeout_and_garbage)
{
    int count;
    struct http_session *s = session_new(&count);
    cr_assert_eq(feed_str(s, "GET / HTTP/1.1\r\nX-A"), 0);
    http_session_expire(s);
    cr_assert(http_session_closed(s));
    cr_assert(strncmp(http_session_output(s)->data, "HTTP/1.1 408 Request Timeout\r\n", 30) == 0);
    cr_assert_eq(feed_str(s, "more"), -1);
    http_session_free(s);

    s = session_new(&count);
    cr_assert_eq(feed_str(s, "\x01\x02\x03 junk\r\n\r\n"), -1);
    cr_assert(strncmp(http_session_output(s)->data, "HTTP/1.1 400 Bad Request\r\n", 26) == 0);
    cr_assert_eq(count, 0);
    http_session_free(s);
}

static struct {
    char path[64], query[64], method[16], host[16], empty[16], multi[16], missing[16];
    size_t n_headers;
} cap;

static void capture_handler(struct http_request *req, void *ud)
{
    const char *e = http_request_header(req, "x-empty");
    const char *miss = http_request_header(req, "X-Nope");
    snprintf(cap.path, sizeof cap.path, "%s", req->path);
    snprintf(cap.query, sizeof cap.query, "%s", req->query);
    snprintf(cap.method, sizeof cap.method, "%s", req->method);
    snprintf(cap.host, sizeof cap.host, "%s", http_request_header(req, "HOST"));
    snprintf(cap.empty, sizeof cap.empty, "%s", e ? e : "(null)");
    snprintf(cap.multi, sizeof cap.multi, "%s", http_request_header(req, "X-MULTI"));
    snprintf(cap.missing, sizeof cap.missing, "%s", miss ? miss : "(null)");
    cap.n_headers = req->n_headers;
    http_respond(req, 200, NULL, NULL, "", 0);
}

Test(http_session, headers_and_query)
{
    struct http_server_opts o;
    test_opts(&o);
    struct http_session *s = http_session_new(&o, capture_handler, NULL);
    const char *in = "DELETE http://h.example/p/q?x=1#frag HTTP/1.1\r\n"
                     "Host: h \r\nX-Empty:\r\nX-Multi: a\r\nx-multi: b\r\n"
                     "Connection: close\r\n\r\n";
    cr_assert_eq(http_session_feed(s, in, strlen(in)), -1); /* answered, then closed */
    cr_assert_str_eq(cap.method, "DELETE");
    cr_assert_str_eq(cap.path, "/p/q");
    cr_assert_str_eq(cap.query, "x=1");
    cr_assert_str_eq(cap.host, "h");
    cr_assert_str_eq(cap.empty, "");
    cr_assert_str_eq(cap.multi, "a");
    cr_assert_str_eq(cap.missing, "(null)");
    cr_assert_eq(cap.n_headers, 5);
    cr_assert(http_session_closed(s));
    cr_assert(strstr(http_session_output(s)->data, "Connection: close\r\n") != NULL);
    http_session_free(s);

    s = http_session_new(&o, capture_handler, NULL);
    in = "OPTIONS * HTTP/1.1\r\n\r\n";
    cr_assert_eq(http_session_feed(s, in, strlen(in)), 0);
    cr_assert_str_eq(cap.path, "*");
    cr_assert_str_eq(cap.query, "");
    cr_assert_eq(cap.n_headers, 0);
    http_session_free(s);
}

Test(http_session, expect_100_continue)
{
    int count;
    struct http_session *s = session_new(&count);
    cr_assert_eq(
        feed_str(s, "POST /e HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"), 0);
    cr_assert_str_eq(http_session_output(s)->data, "HTTP/1.1 100 Continue\r\n\r\n");
    cr_assert_eq(feed_str(s, "ok"), 0);
    cr_assert_eq(count, 1);
    cr_assert(strstr(http_session_output(s)->data, "\r\n\r\nPOST /e ok") != NULL);
    http_session_free(s);
}

/* Robustness: mutated requests fed in random pieces, answered now or later. Run under
 * ASan/UBSan this is a small deterministic fuzz pass over the socket-less core. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint32_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 11);
}

static struct http_request *fuzz_held[64];
static int fuzz_n_held;

static void fuzz_handler(struct http_request *req, void *ud)
{
    if (rng() % 3 == 0 && fuzz_n_held < 64) {
        fuzz_held[fuzz_n_held++] = req;
        return;
    }
    http_respond(req, 200, "text/plain", NULL, req->body, req->body_len);
}

Test(http_session, mutated_input_never_crashes)
{
    static const char *seeds[] = {
        "GET /a?b=c HTTP/1.1\r\nHost: x\r\n\r\n",
        "POST /w HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\n\r\n",
        "POST /w HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nT: 1\r\n\r\n",
        "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nHEAD / HTTP/1.1\r\n\r\n",
        "PUT /p HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx",
        "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nrest",
    };
    struct http_server_opts o;
    test_opts(&o);
    o.max_header_bytes = 128;
    o.max_body_bytes = 64;
    for (int iter = 0; iter < 3000; iter++) {
        char in[512];
        const char *seed = seeds[rng() % (sizeof seeds / sizeof seeds[0])];
        size_t n = strlen(seed);
        memcpy(in, seed, n);
        for (int m = (int)(rng() % 4); m > 0; m--) {
            size_t at = rng() % n;
            switch (rng() % 3) {
            case 0:
                in[at] = (char)rng();
                break;
            case 1:
                n = at + 1;
                break;
            default:
                if (n < sizeof in - 40) {
                    memmove(in + at + 20, in + at, n - at);
                    memset(in + at, 'A' + (int)(rng() % 26), 20);
                    n += 20;
                }
            }
        }
        fuzz_n_held = 0;
        struct http_session *s = http_session_new(&o, fuzz_handler, NULL);
        for (size_t off = 0; off < n;) {
            size_t piece = 1 + rng() % 16;
            if (piece > n - off)
                piece = n - off;
            if (http_session_feed(s, in + off, piece) != 0)
                break;
            off += piece;
            if (fuzz_n_held && rng() % 2)
                http_respond(fuzz_held[--fuzz_n_held], 202, NULL, NULL, "", 0);
        }
        if (rng() % 2)
            http_session_eof(s);
        if (rng() % 2)
            http_session_expire(s);
        const struct buf *out = http_session_output(s);
        cr_assert(out->len == 0 || strncmp(out->data, "HTTP/1.1 ", 9) == 0, "iter %d", iter);
        if (rng() % 2) {
            http_session_free(s);
            s = NULL;
        }
        while (fuzz_n_held)
            http_respond(fuzz_held[--fuzz_n_held], 202, NULL, NULL, "", 0);
        if (s)
            http_session_free(s);
    }
}

Test(http_session, upgrade_answered_then_closed)
{
    int count;
    struct http_session *s = session_new(&count);
    cr_assert_eq(
        feed_str(s, "GET /u HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nrest"),
        -1);
    cr_assert_eq(count, 1);
    cr_assert(http_session_closed(s));
    cr_assert(strstr(http_session_output(s)->data, "\r\nConnection: close\r\n") != NULL);
    http_session_free(s);
}

/* The on_error hook hears of every error answer, with the path when it was received. */
static struct {
    int status[8];
    char path[8][32];
    int n;
} errs;

static void note_error(int status, const char *path, void *ud)
{
    cr_assert_eq(ud, &errs);
    cr_assert_lt(errs.n, 8);
    errs.status[errs.n] = status;
    snprintf(errs.path[errs.n], sizeof errs.path[0], "%s", path ? path : "(none)");
    errs.n++;
}

static void error_case(const char *input, int expire, int status, const char *path)
{
    struct http_server_opts o;
    test_opts(&o);
    o.on_error = note_error;
    o.error_ud = &errs;
    int count = 0;
    memset(&errs, 0, sizeof errs);
    struct http_session *s = http_session_new(&o, session_handler, &count);
    feed_str(s, input);
    if (expire)
        http_session_expire(s);
    cr_assert(http_session_closed(s), "%s", input);
    char want[32];
    snprintf(want, sizeof want, "HTTP/1.1 %d ", status);
    cr_assert(strncmp(http_session_output(s)->data, want, strlen(want)) == 0, "%s",
              http_session_output(s)->data);
    cr_assert_eq(errs.n, 1, "%s: %d calls", input, errs.n);
    cr_assert_eq(errs.status[0], status);
    cr_assert_str_eq(errs.path[0], path);
    cr_assert_eq(count, 0, "the handler never saw it");
    http_session_free(s);
}

Test(http_session, error_hook_sees_every_error_answer)
{
    error_case("GARBAGE\r\n\r\n", 0, 400, "(none)");
    error_case("GET /slow HTTP/1.1\r\nX-A", 1, 408, "(none)");
    error_case("POST /in?x=1 HTTP/1.1\r\nContent-Length: 5\r\n\r\nab", 1, 408, "/in");
    error_case("POST /nolen HTTP/1.1\r\nHost: x\r\n\r\n", 0, 411, "/nolen");
    error_case("POST /big HTTP/1.1\r\nContent-Length: 5000\r\n\r\n", 0, 413, "/big");
    char hdr[2000];
    int n = snprintf(hdr, sizeof hdr, "GET /hdr HTTP/1.1\r\nX-Big: ");
    memset(hdr + n, 'x', 1500);
    strcpy(hdr + n + 1500, "\r\n\r\n");
    error_case(hdr, 0, 431, "(none)");
    /* A request the handler answers is not an error of the server's. */
    struct http_server_opts o;
    test_opts(&o);
    o.on_error = note_error;
    o.error_ud = &errs;
    int count = 0;
    memset(&errs, 0, sizeof errs);
    struct http_session *s = http_session_new(&o, session_handler, &count);
    feed_str(s, "GET /fine HTTP/1.1\r\n\r\n");
    cr_assert_eq(count, 1);
    cr_assert_eq(errs.n, 0);
    http_session_free(s);
}

/* Requests that follow each other on one connection reuse the previous request's buffers:
 * nothing of an earlier request (headers, query, body) may show in a later one, whatever
 * their sizes (more headers than before, a body over the size a connection keeps). */
static void reuse_handler(struct http_request *req, void *ud)
{
    struct buf *log = ud;
    const char *h5 = http_request_header(req, "X-H5");
    buf_printf(log, "%s %s ?%s n=%zu h5=%s body=%zu:%.3s\n", req->method, req->path, req->query,
               req->n_headers, h5 ? h5 : "-", req->body_len, req->body_len ? req->body : "");
    http_respond(req, 200, NULL, NULL, "", 0);
}

static void append_headers(struct buf *in, int n)
{
    for (int i = 0; i < n; i++)
        buf_printf(in, "X-H%d: v%d\r\n", i, i);
}

Test(http_session, keep_alive_requests_do_not_see_earlier_ones)
{
    struct http_server_opts o;
    test_opts(&o);
    o.max_body_bytes = 256 * 1024;
    o.max_header_bytes = 16 * 1024;
    struct buf log = BUF_INIT, in = BUF_INIT;
    struct http_session *s = http_session_new(&o, reuse_handler, &log);
    size_t big = 100 * 1024;
    /* 1: many headers and a body larger than a connection keeps */
    buf_printf(&in, "POST /one?x=1 HTTP/1.1\r\nContent-Length: %zu\r\n", big);
    append_headers(&in, 20);
    buf_puts(&in, "\r\n");
    for (size_t i = 0; i < big; i++)
        buf_append(&in, i % 2 ? "b" : "a", 1);
    /* 2: fewer headers, no body, a fragment */
    buf_puts(&in, "GET /two?b=2#frag HTTP/1.1\r\nHost: h\r\n\r\n");
    /* 3: absolute form, more headers than the last one had */
    buf_puts(&in, "POST http://h/three HTTP/1.1\r\nContent-Length: 3\r\n");
    append_headers(&in, 30);
    buf_puts(&in, "\r\nxyz");
    /* 4: an empty query, no headers */
    buf_puts(&in, "GET /? HTTP/1.1\r\n\r\n");
    /* 5: a small body after a small one */
    buf_puts(&in, "POST /five HTTP/1.1\r\nContent-Length: 2\r\nX-H5: five\r\n\r\nok");
    cr_assert_eq(http_session_feed(s, in.data, in.len), 0);
    cr_assert_str_eq(log.data, "POST /one ?x=1 n=21 h5=v5 body=102400:aba\n"
                               "GET /two ?b=2 n=1 h5=- body=0:\n"
                               "POST /three ? n=31 h5=v5 body=3:xyz\n"
                               "GET / ? n=0 h5=- body=0:\n"
                               "POST /five ? n=2 h5=five body=2:ok\n");
    http_session_eof(s);
    http_session_free(s);
    buf_free(&log);
    buf_free(&in);
}
