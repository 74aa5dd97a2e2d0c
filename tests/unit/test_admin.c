/* Tests for lib/admin: /healthz, /readyz, /metrics, 404 and 405 over real TCP on
 * 127.0.0.1 (ephemeral port), client in a thread with blocking sockets. */
#include "admin.h"
#include "log.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct ctx {
    uv_loop_t loop;
    uv_async_t async;
    struct admin *admin;
    int port;
    int redis_down; /* toggled by the client thread */
    int metrics_calls;
    int done_called;
    char err[512];
    void (*client)(struct ctx *c);
};

static void check_fail(struct ctx *c, int line, const char *cond, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void check_fail(struct ctx *c, int line, const char *cond, const char *fmt, ...)
{
    if (c->err[0])
        return;
    int n = snprintf(c->err, sizeof c->err, "line %d: %s: ", line, cond);
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && n < (int)sizeof c->err)
        vsnprintf(c->err + n, sizeof c->err - (size_t)n, fmt, ap);
    va_end(ap);
}

#define CHECK(c, cond, ...)                                                                        \
    do {                                                                                           \
        if (!(cond))                                                                               \
            check_fail((c), __LINE__, #cond, __VA_ARGS__);                                         \
    } while (0)

static const char *ready_cb(void *ud)
{
    struct ctx *c = ud;
    return __atomic_load_n(&c->redis_down, __ATOMIC_SEQ_CST) ? "redis down" : NULL;
}

static void metrics_cb(struct buf *out, void *ud)
{
    struct ctx *c = ud;
    c->metrics_calls++;
    buf_puts(out, "# HELP tierone_test_total A test counter.\n");
    buf_puts(out, "# TYPE tierone_test_total counter\n");
    buf_printf(out, "tierone_test_total %d\n", c->metrics_calls);
}

/* ---- blocking client: one request per connection, read to EOF ---- */

struct reply {
    int status;
    char text[8192]; /* whole response */
    const char *body;
};

static int request(int port, const char *req, struct reply *r)
{
    memset(r, 0, sizeof *r);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    int rc = -1;
    size_t len = 0;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0)
        goto out;
    if (send(fd, req, strlen(req), MSG_NOSIGNAL) != (ssize_t)strlen(req))
        goto out;
    for (;;) {
        ssize_t n = recv(fd, r->text + len, sizeof r->text - 1 - len, 0);
        if (n < 0)
            goto out;
        if (n == 0)
            break;
        len += (size_t)n;
    }
    r->text[len] = '\0';
    char *end = strstr(r->text, "\r\n\r\n");
    if (!end || sscanf(r->text, "HTTP/1.1 %d", &r->status) != 1)
        goto out;
    r->body = end + 4;
    rc = 0;
out:
    close(fd);
    return rc;
}

static int get(int port, const char *method, const char *path, struct reply *r)
{
    char req[256];
    snprintf(req, sizeof req, "%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", method,
             path);
    return request(port, req, r);
}

/* ---- harness ---- */

static void on_done(void *arg)
{
    struct ctx *c = arg;
    c->done_called++;
}

static void on_async(uv_async_t *a)
{
    struct ctx *c = a->data;
    uv_close((uv_handle_t *)a, NULL);
    admin_stop(c->admin, on_done, c);
}

static void *client_thread(void *arg)
{
    struct ctx *c = arg;
    c->client(c);
    uv_async_send(&c->async);
    return NULL;
}

static void run(struct ctx *c, void (*client)(struct ctx *c))
{
    char err[256];
    log_init("test", LOG_WARN);
    cr_assert_eq(uv_loop_init(&c->loop), 0);
    struct admin_opts o = {.host = "127.0.0.1", .ready = ready_cb, .metrics = metrics_cb, .ud = c};
    c->admin = admin_start(&c->loop, &o, err, sizeof err);
    cr_assert_not_null(c->admin, "%s", err);
    c->port = admin_port(c->admin);
    uv_async_init(&c->loop, &c->async, on_async);
    c->async.data = c;
    c->client = client;
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, client_thread, c), 0);
    uv_run(&c->loop, UV_RUN_DEFAULT);
    pthread_join(th, NULL);
    cr_assert_eq(uv_loop_close(&c->loop), 0);
    cr_assert_eq(c->done_called, 1);
    cr_assert_str_empty(c->err, "%s", c->err);
}

/* ---- tests ---- */

static void client_endpoints(struct ctx *c)
{
    struct reply r;
    CHECK(c, get(c->port, "GET", "/healthz", &r) == 0, "healthz");
    CHECK(c, r.status == 200 && strcmp(r.body, "ok") == 0, "healthz: %s", r.text);

    CHECK(c, get(c->port, "GET", "/readyz", &r) == 0, "readyz");
    CHECK(c, r.status == 200, "ready: %s", r.text);
    __atomic_store_n(&c->redis_down, 1, __ATOMIC_SEQ_CST);
    CHECK(c, get(c->port, "GET", "/readyz?verbose", &r) == 0, "readyz");
    CHECK(c, r.status == 503 && strcmp(r.body, "redis down\n") == 0, "not ready: %s", r.text);
    __atomic_store_n(&c->redis_down, 0, __ATOMIC_SEQ_CST);
    CHECK(c, get(c->port, "GET", "/readyz", &r) == 0 && r.status == 200, "ready again: %s", r.text);

    CHECK(c, get(c->port, "GET", "/metrics", &r) == 0, "metrics");
    CHECK(c, r.status == 200, "metrics: %s", r.text);
    CHECK(c, strstr(r.text, "\r\nContent-Type: text/plain; version=0.0.4") != NULL, "ctype: %s",
          r.text);
    CHECK(c,
          strcmp(r.body, "# HELP tierone_test_total A test counter.\n"
                         "# TYPE tierone_test_total counter\n"
                         "tierone_test_total 1\n") == 0,
          "metrics body: %s", r.body);
    CHECK(c, get(c->port, "HEAD", "/metrics", &r) == 0, "head metrics");
    CHECK(c, r.status == 200 && r.body[0] == '\0', "HEAD has no body: %s", r.text);
    CHECK(c, strstr(r.text, "\r\nContent-Length: ") != NULL, "HEAD length: %s", r.text);

    CHECK(c, get(c->port, "GET", "/nope", &r) == 0 && r.status == 404, "404: %s", r.text);
    CHECK(c, get(c->port, "GET", "/healthz/", &r) == 0 && r.status == 404, "404: %s", r.text);
    CHECK(c,
          request(c->port,
                  "POST /metrics HTTP/1.1\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi",
                  &r) == 0,
          "post");
    CHECK(c, r.status == 405, "405: %s", r.text);
    CHECK(c, strstr(r.text, "\r\nAllow: GET, HEAD\r\n") != NULL, "Allow: %s", r.text);
    CHECK(c, get(c->port, "DELETE", "/healthz", &r) == 0 && r.status == 405, "405: %s", r.text);
}

Test(admin, endpoints)
{
    struct ctx c = {0};
    run(&c, client_endpoints);
    cr_assert_eq(c.metrics_calls, 2);
}

static void client_keep_alive(struct ctx *c)
{
    struct reply r;
    CHECK(c,
          request(c->port,
                  "GET /healthz HTTP/1.1\r\n\r\nGET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n",
                  &r) == 0,
          "pipelined");
    CHECK(c, strstr(r.text, "ok") != NULL && strstr(r.text, "tierone_test_total 1") != NULL,
          "both answered: %s", r.text);
}

Test(admin, pipelined_scrape)
{
    struct ctx c = {0};
    run(&c, client_keep_alive);
}

Test(admin, bind_failure)
{
    uv_loop_t loop;
    char err[256] = "";
    cr_assert_eq(uv_loop_init(&loop), 0);
    struct admin_opts o = {.host = "bad host"};
    cr_assert_null(admin_start(&loop, &o, err, sizeof err));
    cr_assert(err[0] != '\0');
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&loop), 0);
}
