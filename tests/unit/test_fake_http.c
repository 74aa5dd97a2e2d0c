/* Tests for tests/support/fake_http itself, driven by a plain blocking socket client:
 * routing, keep-alive and pipelining order, delays, drop/garbage, plain mode, records. */
#include "fake_http.h"
#include "xalloc.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static int conn_to(struct fake_http *f)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)fake_http_port(f)),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    return fd;
}

static void send_all(int fd, const char *s)
{
    size_t len = strlen(s);
    while (len) {
        ssize_t n = write(fd, s, len);
        cr_assert_gt(n, 0);
        s += n;
        len -= (size_t)n;
    }
}

/* Read until the server closes; returns what arrived (caller frees). */
static char *read_to_eof(int fd)
{
    struct buf b = BUF_INIT;
    char tmp[4096];
    ssize_t n;
    while ((n = read(fd, tmp, sizeof(tmp))) > 0)
        buf_append(&b, tmp, (size_t)n);
    cr_assert_eq(n, 0, "read error or timeout before EOF");
    close(fd);
    return buf_steal(&b);
}

/* Send `req` on a new connection and return everything until the server closes. */
static char *exchange(struct fake_http *f, const char *req)
{
    int fd = conn_to(f);
    send_all(fd, req);
    return read_to_eof(fd);
}

static void h_named(const struct fake_http_request *req, struct fake_http_response *resp, void *arg)
{
    fake_http_response_body(resp, arg);
}

static void h_delayed(const struct fake_http_request *req, struct fake_http_response *resp,
                      void *arg)
{
    resp->delay_ms = 100;
    fake_http_response_body(resp, "first");
}

static void h_drop(const struct fake_http_request *req, struct fake_http_response *resp, void *arg)
{
    resp->action = FAKE_HTTP_DROP;
}

static void h_garbage(const struct fake_http_request *req, struct fake_http_response *resp,
                      void *arg)
{
    resp->action = FAKE_HTTP_GARBAGE;
    fake_http_response_body(resp, "NOPE\r\n");
}

Test(fake_http, routes_most_recent_first_and_prefix, .timeout = 30)
{
    struct fake_http *f = fake_http_start(NULL);
    cr_assert_not_null(f);
    fake_http_route(f, NULL, "/a/*", h_named, "general");
    fake_http_route(f, "GET", "/a/b", h_named, "specific");
    char *r1 = exchange(f, "GET /a/b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    char *r2 = exchange(f, "GET /a/c?q=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    char *r3 = exchange(f, "POST /a/b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                           "Connection: close\r\n\r\nabc");
    char *r4 = exchange(f, "GET /zzz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    cr_assert(strstr(r1, "\r\n\r\nspecific") != NULL, "%s", r1);
    cr_assert(strncmp(r1, "HTTP/1.1 200 OK\r\n", 17) == 0, "%s", r1);
    cr_assert(strstr(r1, "Content-Length: 8\r\n") != NULL, "%s", r1);
    cr_assert(strstr(r2, "\r\n\r\ngeneral") != NULL, "%s", r2);
    cr_assert(strstr(r3, "\r\n\r\ngeneral") != NULL, "%s", r3);
    cr_assert(strncmp(r4, "HTTP/1.1 404 Not Found", 22) == 0, "%s", r4);

    cr_assert_eq(fake_http_count(f), 4);
    cr_assert_eq(fake_http_connections(f), 4);
    const struct fake_http_request *q = fake_http_request_at(f, 1);
    cr_assert_str_eq(q->path, "/a/c");
    cr_assert_str_eq(q->query, "q=1");
    cr_assert_eq(q->conn_id, 2);
    cr_assert_eq(q->seq, 1);
    q = fake_http_request_at(f, 2);
    cr_assert_str_eq(q->method, "POST");
    cr_assert_str_eq(q->body, "abc");
    cr_assert_eq(q->body_len, 3);
    cr_assert_str_eq(fake_http_request_header(q, "content-length"), "3");
    cr_assert_null(fake_http_request_at(f, 4));
    free(r1);
    free(r2);
    free(r3);
    free(r4);
    fake_http_free(f);
}

Test(fake_http, pipelined_answers_keep_request_order, .timeout = 30)
{
    struct fake_http *f = fake_http_start(NULL);
    fake_http_route(f, NULL, "/slow", h_delayed, NULL);
    fake_http_route(f, NULL, "/fast", h_named, "second");
    char *r = exchange(f, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
                          "GET /fast HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    char *first = strstr(r, "first"), *second = strstr(r, "second");
    cr_assert(first && second && first < second, "%s", r);
    cr_assert(strstr(r, "Connection: keep-alive") < strstr(r, "Connection: close"), "%s", r);
    cr_assert_eq(fake_http_connections(f), 1);
    cr_assert_eq(fake_http_request_at(f, 1)->conn_id, 1);
    free(r);
    fake_http_free(f);
}

Test(fake_http, drop_garbage_and_bad_request, .timeout = 30)
{
    struct fake_http *f = fake_http_start(NULL);
    fake_http_route(f, NULL, "/drop", h_drop, NULL);
    fake_http_route(f, NULL, "/garbage", h_garbage, NULL);
    char *d = exchange(f, "GET /drop HTTP/1.1\r\nHost: x\r\n\r\n");
    char *g = exchange(f, "GET /garbage HTTP/1.1\r\nHost: x\r\n\r\n");
    char *b = exchange(f, "NOT A REQUEST\r\n\r\n");
    cr_assert_str_eq(d, "");
    cr_assert_str_eq(g, "NOPE\r\n");
    cr_assert(strncmp(b, "HTTP/1.1 400", 12) == 0, "%s", b);
    free(d);
    free(g);
    free(b);
    fake_http_free(f);
}

Test(fake_http, plain_mode_and_no_record, .timeout = 30)
{
    struct fake_http_opts o = {.plain = true,
                               .plain_status = 202,
                               .plain_body = "{\"ok\":true}",
                               .plain_delay_ms = 10,
                               .no_record = true};
    struct fake_http *f = fake_http_start(&o);
    char *r = exchange(f, "POST /anything HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
                          "GET /else HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    cr_assert(strncmp(r, "HTTP/1.1 202 Accepted\r\n", 23) == 0, "%s", r);
    cr_assert(strstr(r, "Content-Type: application/json\r\n") != NULL, "%s", r);
    char *second = strstr(r + 1, "HTTP/1.1 202");
    cr_assert_not_null(second, "%s", r);
    cr_assert(strstr(second, "{\"ok\":true}") != NULL, "%s", r);
    cr_assert_eq(fake_http_count(f), 2);
    cr_assert_null(fake_http_request_at(f, 0));
    free(r);
    fake_http_free(f);
}

Test(fake_http, wait_for_requests, .timeout = 30)
{
    struct fake_http *f = fake_http_start(NULL);
    cr_assert_eq(fake_http_wait(f, 1, 20), -1);
    int fd = conn_to(f);
    send_all(fd, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    cr_assert_eq(fake_http_wait(f, 1, 10000), 0);
    char *r = read_to_eof(fd);
    free(r);
    cr_assert_eq(fake_http_count(f), 1);
    fake_http_free(f);
}

Test(fake_http, free_with_open_connections_and_pending_answers, .timeout = 30)
{
    struct fake_http *f = fake_http_start(NULL);
    fake_http_route(f, NULL, "/slow", h_delayed, NULL);
    int idle = conn_to(f);
    int busy = conn_to(f);
    send_all(busy, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n");
    cr_assert_eq(fake_http_wait(f, 1, 10000), 0);
    for (int i = 0; fake_http_connections(f) < 2; i++) {
        cr_assert_lt(i, 10000, "second connection never accepted");
        usleep(1000);
    }
    cr_assert_eq(fake_http_open_connections(f), 2);
    fake_http_free(f);
    close(idle);
    close(busy);
}
