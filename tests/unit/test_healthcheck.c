/* Tests for lib/healthcheck: the --healthcheck probe against the fake HTTP server (2xx,
 * 503, garbage, a server that never answers), a closed port, IPv6, the host and port
 * rules, healthcheck_main's output and exit status, and healthcheck_take_flag. */
#include "fake_http.h"
#include "healthcheck.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <criterion/redirect.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void h_garbage(const struct fake_http_request *req, struct fake_http_response *resp,
                      void *arg)
{
    resp->action = FAKE_HTTP_GARBAGE;
    fake_http_response_body(resp, arg);
}

static void h_never(const struct fake_http_request *req, struct fake_http_response *resp, void *arg)
{
    resp->delay_ms = 60000; /* dropped when the fake is freed */
}

static void h_drop(const struct fake_http_request *req, struct fake_http_response *resp, void *arg)
{
    resp->action = FAKE_HTTP_DROP;
}

static struct fake_http *start_fake(void)
{
    struct fake_http *f = fake_http_start(NULL);
    cr_assert_not_null(f);
    fake_http_route_static(f, "GET", "/healthz", 200, "text/plain", "ok");
    fake_http_route_static(f, "GET", "/nocontent", 204, NULL, NULL);
    fake_http_route_static(f, "GET", "/readyz", 503, "text/plain", "redis down");
    fake_http_route(f, "GET", "/garbage", h_garbage, "SSH-2.0-OpenSSH_9.2\r\n");
    fake_http_route(f, "GET", "/silent", h_garbage, "");
    fake_http_route(f, "GET", "/never", h_never, NULL);
    fake_http_route(f, "GET", "/drop", h_drop, NULL);
    return f;
}

/* A TCP port on 127.0.0.1 that refuses connections: bound, never listening, kept open by
 * the caller so no one else can take it meanwhile. */
static int closed_port(int *fd_out)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t len = sizeof a;
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    *fd_out = fd;
    return ntohs(a.sin_port);
}

Test(healthcheck, ok_200, .timeout = 30)
{
    struct fake_http *f = start_fake();
    char msg[512], want[128];
    int port = fake_http_port(f);
    cr_assert_eq(healthcheck_probe("127.0.0.1", port, "/healthz", 5000, msg, sizeof msg), 0);
    snprintf(want, sizeof want, "healthy: 200 from 127.0.0.1:%d/healthz", port);
    cr_assert_str_eq(msg, want);
    /* The request is a plain GET with the Host header and Connection: close. */
    const struct fake_http_request *r = fake_http_request_at(f, 0);
    cr_assert_not_null(r);
    cr_assert_str_eq(r->method, "GET");
    cr_assert_str_eq(r->path, "/healthz");
    snprintf(want, sizeof want, "127.0.0.1:%d", port);
    cr_assert_str_eq(fake_http_request_header(r, "Host"), want);
    cr_assert_str_eq(fake_http_request_header(r, "Connection"), "close");
    fake_http_free(f);
}

Test(healthcheck, any_2xx_is_healthy, .timeout = 30)
{
    struct fake_http *f = start_fake();
    char msg[512];
    cr_assert_eq(
        healthcheck_probe("127.0.0.1", fake_http_port(f), "/nocontent", 5000, msg, sizeof msg), 0);
    cr_assert(strncmp(msg, "healthy: 204 from ", 18) == 0, "%s", msg);
    fake_http_free(f);
}

Test(healthcheck, wildcard_and_empty_hosts_mean_loopback, .timeout = 30)
{
    struct fake_http *f = start_fake();
    char msg[512], want[128];
    int port = fake_http_port(f);
    snprintf(want, sizeof want, "healthy: 200 from 127.0.0.1:%d/healthz", port);
    const char *hosts[] = {"0.0.0.0", "", NULL};
    for (size_t i = 0; i < 3; i++) {
        cr_assert_eq(healthcheck_probe(hosts[i], port, NULL, 5000, msg, sizeof msg), 0, "%s", msg);
        cr_assert_str_eq(msg, want);
    }
    /* A name is resolved. */
    cr_assert_eq(healthcheck_probe("localhost", port, "/healthz", 5000, msg, sizeof msg), 0, "%s",
                 msg);
    fake_http_free(f);
}

Test(healthcheck, status_503_is_unhealthy, .timeout = 30)
{
    struct fake_http *f = start_fake();
    char msg[512], want[128];
    int port = fake_http_port(f);
    cr_assert_eq(healthcheck_probe("127.0.0.1", port, "/readyz", 5000, msg, sizeof msg), 1);
    snprintf(want, sizeof want, "unhealthy: 503 from 127.0.0.1:%d/readyz", port);
    cr_assert_str_eq(msg, want);
    /* 404 too. */
    cr_assert_eq(healthcheck_probe("127.0.0.1", port, "/nope", 5000, msg, sizeof msg), 1);
    cr_assert(strncmp(msg, "unhealthy: 404 from ", 20) == 0, "%s", msg);
    fake_http_free(f);
}

Test(healthcheck, closed_port_is_refused, .timeout = 30)
{
    int fd;
    int port = closed_port(&fd);
    char msg[512], want[128];
    cr_assert_eq(healthcheck_probe("127.0.0.1", port, "/healthz", 5000, msg, sizeof msg), 1);
    snprintf(want, sizeof want, "unhealthy: connection refused by 127.0.0.1:%d/healthz", port);
    cr_assert_str_eq(msg, want);
    close(fd);
}

Test(healthcheck, silent_server_times_out, .timeout = 30)
{
    struct fake_http *f = start_fake();
    char msg[512], want[128];
    int port = fake_http_port(f);
    cr_assert_eq(healthcheck_probe("127.0.0.1", port, "/never", 200, msg, sizeof msg), 1);
    snprintf(want, sizeof want, "unhealthy: no answer within 200 ms from 127.0.0.1:%d/never", port);
    cr_assert_str_eq(msg, want);
    cr_assert_eq(fake_http_count(f), 1); /* the request did arrive */
    fake_http_free(f);
}

Test(healthcheck, garbage_is_unhealthy, .timeout = 30)
{
    struct fake_http *f = start_fake();
    char msg[512], want[128];
    int port = fake_http_port(f);
    snprintf(want, sizeof want, "unhealthy: not an HTTP answer from 127.0.0.1:%d/garbage", port);
    cr_assert_eq(healthcheck_probe("127.0.0.1", port, "/garbage", 5000, msg, sizeof msg), 1);
    cr_assert_str_eq(msg, want);
    /* The fake's own non-HTTP line, then close. */
    cr_assert_eq(healthcheck_probe("127.0.0.1", port, "/silent", 5000, msg, sizeof msg), 1);
    cr_assert(strncmp(msg, "unhealthy: not an HTTP answer from ", 35) == 0, "%s", msg);
    /* Closed without a byte. */
    cr_assert_eq(healthcheck_probe("127.0.0.1", port, "/drop", 5000, msg, sizeof msg), 1);
    snprintf(want, sizeof want,
             "unhealthy: connection closed without an answer by 127.0.0.1:%d/drop", port);
    cr_assert_str_eq(msg, want);
    fake_http_free(f);
}

Test(healthcheck, port_zero_is_nothing_to_check, .timeout = 30)
{
    char msg[512];
    cr_assert_eq(healthcheck_probe("0.0.0.0", 0, "/healthz", 5000, msg, sizeof msg), 1);
    cr_assert_str_eq(msg, "unhealthy: nothing to check (port 0) at 127.0.0.1:0/healthz");
    cr_assert_eq(healthcheck_probe("127.0.0.1", 70000, "/healthz", 5000, msg, sizeof msg), 1);
    cr_assert_eq(healthcheck_probe("no-such-host.invalid", 80, "/healthz", 5000, msg, sizeof msg),
                 1);
    cr_assert(strncmp(msg, "unhealthy: cannot resolve no-such-host.invalid:80/healthz", 57) == 0,
              "%s", msg);
}

/* A one-shot HTTP server on [::1] (the fake listens on IPv4 only). */
struct v6_server {
    int fd;
    int port;
    pthread_t thread;
};

static void *v6_serve(void *arg)
{
    struct v6_server *s = arg;
    int c = accept(s->fd, NULL, NULL);
    if (c < 0)
        return NULL;
    char buf[2048];
    ssize_t n, got = 0;
    while (got < (ssize_t)sizeof buf - 1 && (n = read(c, buf + got, sizeof buf - 1 - got)) > 0) {
        got += n;
        buf[got] = '\0';
        if (strstr(buf, "\r\n\r\n"))
            break;
    }
    const char *ans = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
    ssize_t w = write(c, ans, strlen(ans));
    (void)w;
    close(c);
    return NULL;
}

Test(healthcheck, ipv6_literal, .timeout = 30)
{
    struct v6_server s = {.fd = socket(AF_INET6, SOCK_STREAM, 0)};
    cr_assert_geq(s.fd, 0);
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    if (bind(s.fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(s.fd);
        cr_skip_test("no IPv6 loopback here");
    }
    socklen_t len = sizeof a;
    cr_assert_eq(getsockname(s.fd, (struct sockaddr *)&a, &len), 0);
    cr_assert_eq(listen(s.fd, 4), 0);
    s.port = ntohs(a.sin6_port);
    cr_assert_eq(pthread_create(&s.thread, NULL, v6_serve, &s), 0);
    char msg[512], want[128];
    cr_assert_eq(healthcheck_probe("[::1]", s.port, "/healthz", 5000, msg, sizeof msg), 0, "%s",
                 msg);
    snprintf(want, sizeof want, "healthy: 200 from [::1]:%d/healthz", s.port);
    cr_assert_str_eq(msg, want);
    pthread_join(s.thread, NULL);
    /* "::" (listen on any) means ::1, and the literal works unbracketed: with the listener
     * closed, both are refused on [::1]. */
    close(s.fd);
    cr_assert_eq(healthcheck_probe("::", s.port, "/healthz", 5000, msg, sizeof msg), 1);
    snprintf(want, sizeof want, "unhealthy: connection refused by [::1]:%d/healthz", s.port);
    cr_assert_str_eq(msg, want);
    cr_assert_eq(healthcheck_probe("::1", s.port, "/healthz", 5000, msg, sizeof msg), 1);
    cr_assert_str_eq(msg, want);
}

Test(healthcheck, main_prints_healthy_to_stdout, .init = cr_redirect_stdout, .timeout = 30)
{
    struct fake_http *f = start_fake();
    int port = fake_http_port(f);
    cr_assert_eq(healthcheck_main("0.0.0.0", port, "/healthz", 5000), 0);
    fflush(stdout);
    char want[128];
    snprintf(want, sizeof want, "healthy: 200 from 127.0.0.1:%d/healthz\n", port);
    cr_assert_stdout_eq_str(want);
    fake_http_free(f);
}

Test(healthcheck, main_prints_unhealthy_to_stderr, .init = cr_redirect_stderr, .timeout = 30)
{
    int fd;
    int port = closed_port(&fd);
    cr_assert_eq(healthcheck_main("127.0.0.1", port, "/healthz", 5000), 1);
    fflush(stderr);
    char want[128];
    snprintf(want, sizeof want, "unhealthy: connection refused by 127.0.0.1:%d/healthz\n", port);
    cr_assert_stderr_eq_str(want);
    close(fd);
}

static void redirect_both(void)
{
    cr_redirect_stdout();
    cr_redirect_stderr();
}

Test(healthcheck, daemon_prefers_admin_port_then_listen_port, .init = redirect_both, .timeout = 30)
{
    struct fake_http *f = start_fake();
    int port = fake_http_port(f);
    int fd;
    int closed = closed_port(&fd);
    /* Admin port set: it is the one checked (closed here), not the listen port. */
    cr_assert_eq(healthcheck_daemon("0.0.0.0", closed, "0.0.0.0", port), 1);
    /* Admin server off (ingest): the listen port answers /healthz. */
    cr_assert_eq(healthcheck_daemon("0.0.0.0", 0, "0.0.0.0", port), 0);
    const struct fake_http_request *r = fake_http_request_at(f, 0);
    cr_assert_not_null(r);
    cr_assert_str_eq(r->path, "/healthz");
    /* Admin server off and nothing else (worker): unhealthy. */
    cr_assert_eq(healthcheck_daemon("0.0.0.0", 0, NULL, 0), 1);
    close(fd);
    fake_http_free(f);
}

Test(healthcheck, take_flag)
{
    char a0[] = "tierone-worker", a1[] = "--concurrency=5", a2[] = "--healthcheck", a3[] = "--",
         a4[] = "--healthcheck";
    char *argv[] = {a0, a1, a2, a3, a4, NULL};
    int argc = 5;
    cr_assert(healthcheck_take_flag(&argc, argv));
    cr_assert_eq(argc, 4);
    cr_assert_str_eq(argv[1], "--concurrency=5");
    cr_assert_str_eq(argv[2], "--");
    cr_assert_str_eq(argv[3], "--healthcheck"); /* positional after "--": kept */
    cr_assert_null(argv[4]);

    char *argv2[] = {a0, a1, NULL};
    argc = 2;
    cr_assert_not(healthcheck_take_flag(&argc, argv2));
    cr_assert_eq(argc, 2);
    cr_assert_str_eq(argv2[1], "--concurrency=5");
}
