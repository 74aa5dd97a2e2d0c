/* admin: /healthz, /readyz, /metrics on http_server (see admin.h). */
#include "admin.h"
#include "http_server.h"
#include "log.h"
#include "xalloc.h"

#include <stdlib.h>
#include <string.h>

#define ADMIN_ALLOW         "Allow: GET, HEAD\r\n"
#define ADMIN_CTYPE         "text/plain; charset=utf-8"
#define ADMIN_METRICS_CTYPE "text/plain; version=0.0.4; charset=utf-8"

struct admin {
    struct http_server *srv;
    admin_ready_fn ready;
    admin_metrics_fn metrics;
    void *ud;
    int stopping;
    admin_done_fn done;
    void *done_arg;
};

static void admin_text(struct http_request *req, int status, const char *extra, const char *s)
{
    http_respond(req, status, ADMIN_CTYPE, extra, s, strlen(s));
}

static void admin_readyz(struct admin *a, struct http_request *req)
{
    const char *reason = a->ready ? a->ready(a->ud) : NULL;
    if (!reason) {
        admin_text(req, 200, NULL, "ready\n");
        return;
    }
    struct buf b = BUF_INIT;
    buf_printf(&b, "%s\n", reason);
    http_respond(req, 503, ADMIN_CTYPE, NULL, b.data, b.len);
    buf_free(&b);
}

static void admin_metrics(struct admin *a, struct http_request *req)
{
    struct buf b = BUF_INIT;
    if (a->metrics)
        a->metrics(&b, a->ud);
    http_respond(req, 200, ADMIN_METRICS_CTYPE, NULL, b.data ? b.data : "", b.len);
    buf_free(&b);
}

static void admin_handle(struct http_request *req, void *ud)
{
    struct admin *a = ud;
    enum { P_NONE, P_HEALTH, P_READY, P_METRICS } which = P_NONE;
    if (strcmp(req->path, "/healthz") == 0)
        which = P_HEALTH;
    else if (strcmp(req->path, "/readyz") == 0)
        which = P_READY;
    else if (strcmp(req->path, "/metrics") == 0)
        which = P_METRICS;
    if (which == P_NONE) {
        admin_text(req, 404, NULL, "not found\n");
        return;
    }
    if (strcmp(req->method, "GET") != 0 && strcmp(req->method, "HEAD") != 0) {
        admin_text(req, 405, ADMIN_ALLOW, "method not allowed\n");
        return;
    }
    switch (which) {
    case P_HEALTH:
        admin_text(req, 200, NULL, "ok");
        break;
    case P_READY:
        admin_readyz(a, req);
        break;
    case P_METRICS:
        admin_metrics(a, req);
        break;
    default:
        abort();
    }
}

struct admin *admin_start(uv_loop_t *loop, const struct admin_opts *opts, char *err, size_t errcap)
{
    struct http_server_opts o;
    http_server_opts_default(&o);
    o.host = opts->host ? opts->host : "0.0.0.0";
    o.port = opts->port;
    o.max_connections = opts->max_connections ? opts->max_connections : 16;
    o.max_header_bytes = 8192;
    o.max_body_bytes = 4096;
    o.header_timeout_ms = 5000;
    o.body_timeout_ms = 5000;
    o.idle_timeout_ms = 30000;
    o.name = "admin";
    struct admin *a = xcalloc(1, sizeof *a);
    a->ready = opts->ready;
    a->metrics = opts->metrics;
    a->ud = opts->ud;
    a->srv = http_server_start(loop, &o, admin_handle, a, err, errcap);
    if (!a->srv) {
        free(a);
        return NULL;
    }
    return a;
}

int admin_port(const struct admin *a)
{
    return http_server_port(a->srv);
}

static void admin_on_server_done(void *arg)
{
    struct admin *a = arg;
    if (a->done)
        a->done(a->done_arg);
    free(a);
}

void admin_stop(struct admin *a, admin_done_fn done, void *arg)
{
    if (a->stopping)
        return;
    a->stopping = 1;
    a->done = done;
    a->done_arg = arg;
    http_server_shutdown(a->srv, admin_on_server_done, a);
}

void admin_force_close(struct admin *a)
{
    admin_stop(a, NULL, NULL);
    http_server_force_close(a->srv);
}
