/* bench_slow_http: a tiny HTTP/1.1 server on libuv that answers every request with
 * "200 OK" after a fixed delay. It stands in for a slow upstream API in the worker
 * benchmark (bench/worker.sh).
 *
 * Usage: bench_slow_http PORT DELAY_MS   (PORT 0 = any free port)
 * Prints "port N" on stdout once listening on 127.0.0.1; runs until SIGTERM/SIGINT, then
 * prints "served N" (requests answered) on stderr and exits 0.
 *
 * Requests are parsed with http-parser (keep-alive, pipelining, bodies ignored). Each
 * connection answers its requests in order: one uv timer per connection fires DELAY_MS
 * after a request became the oldest unanswered one. Thousands of connections cost one
 * small struct each (reads go through one shared buffer: the parser keeps no pointers into
 * it). RLIMIT_NOFILE is raised to its hard limit at start so that it can hold 10,000+
 * connections (bench/http_client.sh); the listen backlog asks for 65535 (the kernel caps it at
 * net.core.somaxconn). */
#include "xalloc.h"

#include <http_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <uv.h>

static const char slow_response[] = "HTTP/1.1 200 OK\r\n"
                                    "Content-Type: text/plain\r\n"
                                    "Content-Length: 3\r\n"
                                    "\r\n"
                                    "ok\n";
static const char slow_response_close[] = "HTTP/1.1 200 OK\r\n"
                                          "Content-Type: text/plain\r\n"
                                          "Content-Length: 3\r\n"
                                          "Connection: close\r\n"
                                          "\r\n"
                                          "ok\n";

struct slow_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    http_parser parser;
    unsigned pending; /* complete requests not answered yet */
    int close_after;  /* a request asked for Connection: close (answer it, then close) */
    int closing;      /* handles are closing */
    int open_handles; /* free when this reaches 0 */
};

static uint64_t slow_delay_ms;
static unsigned long long slow_served;
static unsigned long long slow_connections;
static http_parser_settings slow_settings;
static char slow_rbuf[65536]; /* every read lands here and is parsed at once */

static void slow_free_cb(uv_handle_t *h)
{
    struct slow_conn *c = h->data;
    if (--c->open_handles == 0)
        free(c);
}

static void slow_close(struct slow_conn *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    uv_close((uv_handle_t *)&c->timer, slow_free_cb);
    uv_close((uv_handle_t *)&c->tcp, slow_free_cb);
}

static void slow_write_cb(uv_write_t *req, int status)
{
    struct slow_conn *c = req->data;
    free(req);
    if (status < 0)
        slow_close(c);
}

static void slow_shutdown_cb(uv_shutdown_t *req, int status)
{
    struct slow_conn *c = req->data;
    free(req);
    slow_close(c);
}

static void slow_timer_cb(uv_timer_t *t)
{
    struct slow_conn *c = t->data;
    c->pending--;
    slow_served++;
    int last = c->close_after && c->pending == 0;
    uv_buf_t b = last ? uv_buf_init((char *)slow_response_close, sizeof slow_response_close - 1)
                      : uv_buf_init((char *)slow_response, sizeof slow_response - 1);
    uv_write_t *req = xmalloc(sizeof *req);
    req->data = c;
    if (uv_write(req, (uv_stream_t *)&c->tcp, &b, 1, slow_write_cb) != 0) {
        free(req);
        slow_close(c);
        return;
    }
    if (last) {
        /* uv_close would cancel a write still queued; shut down (flushes) first. */
        uv_shutdown_t *sreq = xmalloc(sizeof *sreq);
        sreq->data = c;
        if (uv_shutdown(sreq, (uv_stream_t *)&c->tcp, slow_shutdown_cb) != 0) {
            free(sreq);
            slow_close(c);
        }
        return;
    }
    if (c->pending > 0)
        uv_timer_start(&c->timer, slow_timer_cb, slow_delay_ms, 0);
}

static int slow_on_message_complete(http_parser *p)
{
    struct slow_conn *c = p->data;
    if (c->close_after)
        return 0; /* ignore anything pipelined after Connection: close */
    if (!http_should_keep_alive(p))
        c->close_after = 1;
    if (c->pending++ == 0)
        uv_timer_start(&c->timer, slow_timer_cb, slow_delay_ms, 0);
    return 0;
}

static void slow_alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    *buf = uv_buf_init(slow_rbuf, sizeof slow_rbuf);
}

static void slow_read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct slow_conn *c = s->data;
    if (n < 0) {
        slow_close(c);
        return;
    }
    if (n == 0)
        return;
    size_t used = http_parser_execute(&c->parser, &slow_settings, buf->base, (size_t)n);
    if (c->parser.http_errno != HPE_OK || used != (size_t)n) {
        if (c->pending == 0)
            slow_close(c); /* malformed request: drop the connection */
        else
            c->close_after = 1;
    }
}

static void slow_connection_cb(uv_stream_t *server, int status)
{
    if (status < 0)
        return;
    struct slow_conn *c = xcalloc(1, sizeof *c);
    uv_tcp_init(server->loop, &c->tcp);
    uv_timer_init(server->loop, &c->timer);
    c->tcp.data = c->timer.data = c->parser.data = c;
    c->open_handles = 2;
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        slow_close(c);
        return;
    }
    slow_connections++;
    uv_tcp_nodelay(&c->tcp, 1);
    uv_read_start((uv_stream_t *)&c->tcp, slow_alloc_cb, slow_read_cb);
}

static void slow_close_walk_cb(uv_handle_t *h, void *arg)
{
    if (uv_is_closing(h))
        return;
    if (h->type == UV_TCP && h->data != NULL) {
        slow_close(h->data);
        return;
    }
    if (h->type == UV_TIMER && h->data != NULL)
        return; /* closed with its connection */
    uv_close(h, NULL);
}

static void slow_signal_cb(uv_signal_t *sig, int signum)
{
    uv_walk(sig->loop, slow_close_walk_cb, NULL);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s PORT DELAY_MS\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]);
    slow_delay_ms = strtoull(argv[2], NULL, 10);
    slow_settings.on_message_complete = slow_on_message_complete;

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    uv_loop_t *loop = uv_default_loop();
    uv_tcp_t server;
    uv_signal_t sigterm, sigint;
    struct sockaddr_in addr;
    uv_ip4_addr("127.0.0.1", port, &addr);
    uv_tcp_init(loop, &server);
    server.data = NULL;
    int rc = uv_tcp_bind(&server, (const struct sockaddr *)&addr, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&server, 65535, slow_connection_cb);
    if (rc != 0) {
        fprintf(stderr, "bench_slow_http: listen on 127.0.0.1:%d: %s\n", port, uv_strerror(rc));
        return 1;
    }
    struct sockaddr_in bound;
    int len = sizeof bound;
    uv_tcp_getsockname(&server, (struct sockaddr *)&bound, &len);
    printf("port %d\n", ntohs(bound.sin_port));
    fflush(stdout);

    uv_signal_init(loop, &sigterm);
    uv_signal_init(loop, &sigint);
    sigterm.data = sigint.data = NULL;
    uv_signal_start(&sigterm, slow_signal_cb, SIGTERM);
    uv_signal_start(&sigint, slow_signal_cb, SIGINT);
    uv_run(loop, UV_RUN_DEFAULT);
    rc = uv_loop_close(loop);
    fprintf(stderr, "served %llu requests on %llu connections\n", slow_served, slow_connections);
    return rc == 0 ? 0 : 1;
}
