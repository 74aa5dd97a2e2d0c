/* fake_http: scriptable HTTP/1.1 test server on its own thread (see fake_http.h).
 *
 * Loop-thread objects: the listener, a stop async, one fake_conn per connection and one
 * fake_pending per answer not yet written (with a uv timer when it is delayed). A
 * connection is freed once its tcp handle, its pending timers and its writes are all done.
 * Shared with the test thread, under `mu`: routes, records and counters. */
#include "fake_http.h"
#include "log.h"
#include "xalloc.h"

#include <http_parser.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <uv.h>

#define FAKE_READ_BUF    (64 * 1024)
#define FAKE_GARBAGE_OUT "THIS IS NOT HTTP AT ALL\r\n\r\n"
#define FAKE_BAD_REQUEST                                                                           \
    "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

struct fake_route {
    struct fake_route *next;
    char *method; /* NULL: any */
    char *path;
    size_t path_len;
    bool prefix;
    fake_http_handler handler;
    void *arg;
    /* canned answer for fake_http_route_static */
    int status;
    char *content_type;
    char *body;
};

struct fake_conn;

/* One answer waiting to be written, in request order. */
struct fake_pending {
    uv_timer_t timer;
    struct fake_conn *conn;
    struct fake_pending *next;
    bool has_timer;
    bool ready;
    enum fake_http_action action;
    bool close;
    char *data; /* serialized answer (or garbage) */
    size_t len;
};

struct fake_write {
    uv_write_t req;
    struct fake_conn *conn;
    char *data;
};

struct fake_conn {
    uv_tcp_t tcp;
    struct fake_http *f;
    struct fake_conn *prev, *next;
    unsigned id;
    http_parser parser;
    /* request being parsed */
    struct buf url, body, field, value;
    bool in_value;
    struct fake_http_header *hdrs;
    size_t nhdrs, caphdrs;
    /* answers, oldest first */
    struct fake_pending *head, *tail;
    unsigned refs;   /* tcp handle + timers + writes not yet finished */
    unsigned writes; /* writes not yet finished */
    bool closing;
    bool close_after; /* close once the queued writes are done; ignore further requests */
};

struct fake_http {
    uv_loop_t loop;
    uv_tcp_t listener;
    uv_async_t stop;
    pthread_t thread;
    struct fake_http_opts opts;
    char *plain_body, *plain_type;
    char rbuf[FAKE_READ_BUF];
    struct fake_conn *conns; /* loop thread only */
    int port;
    char url[64];

    pthread_mutex_t mu; /* guards everything below */
    pthread_cond_t cond;
    struct fake_route *routes;
    struct fake_http_request **recs;
    size_t nrecs, caprecs;
    size_t count;
    unsigned connections, open_conns;
};

static void fake_conn_close(struct fake_conn *conn);
static void fake_conn_flush(struct fake_conn *conn);

/* ---- small helpers ---- */

static const char *fake_reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 422:
        return "Unprocessable Entity";
    case 429:
        return "Too Many Requests";
    case 500:
        return "Internal Server Error";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return "Status";
    }
}

static void fake_request_free(struct fake_http_request *r)
{
    if (!r)
        return;
    free(r->method);
    free(r->path);
    free(r->query);
    for (size_t i = 0; i < r->nheaders; i++) {
        free(r->headers[i].name);
        free(r->headers[i].value);
    }
    free(r->headers);
    free(r->body);
    free(r);
}

void fake_http_response_header(struct fake_http_response *r, const char *name, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *v = NULL;
    if (vasprintf(&v, fmt, ap) < 0)
        abort();
    va_end(ap);
    buf_printf(&r->headers, "%s: %s\r\n", name, v);
    free(v);
}

void fake_http_response_body(struct fake_http_response *r, const char *s)
{
    buf_reset(&r->body);
    buf_puts(&r->body, s);
}

const char *fake_http_request_header(const struct fake_http_request *r, const char *name)
{
    for (size_t i = 0; i < r->nheaders; i++)
        if (strcasecmp(r->headers[i].name, name) == 0)
            return r->headers[i].value;
    return NULL;
}

/* ---- routing and answering ---- */

static void fake_static_handler(const struct fake_http_request *req,
                                struct fake_http_response *resp, void *arg)
{
    const struct fake_route *rt = arg;
    resp->status = rt->status;
    if (rt->content_type)
        fake_http_response_header(resp, "Content-Type", "%s", rt->content_type);
    if (rt->body)
        fake_http_response_body(resp, rt->body);
}

static bool fake_route_matches(const struct fake_route *rt, const struct fake_http_request *req)
{
    if (rt->method && strcmp(rt->method, req->method) != 0)
        return false;
    if (rt->prefix)
        return strncmp(req->path, rt->path, rt->path_len) == 0;
    return strcmp(req->path, rt->path) == 0;
}

/* Fill resp for req: plain answer, matching route, or 404. Runs on the loop thread. */
static void fake_dispatch(struct fake_http *f, const struct fake_http_request *req,
                          struct fake_http_response *resp)
{
    if (f->opts.plain) {
        resp->status = f->opts.plain_status ? f->opts.plain_status : 200;
        fake_http_response_header(resp, "Content-Type", "%s", f->plain_type);
        fake_http_response_body(resp, f->plain_body);
        resp->delay_ms = f->opts.plain_delay_ms;
        return;
    }
    struct fake_route *rt;
    pthread_mutex_lock(&f->mu);
    for (rt = f->routes; rt; rt = rt->next)
        if (fake_route_matches(rt, req))
            break;
    pthread_mutex_unlock(&f->mu);
    if (!rt) {
        resp->status = 404;
        fake_http_response_header(resp, "Content-Type", "text/plain");
        fake_http_response_body(resp, "no route\n");
        return;
    }
    rt->handler(req, resp, rt->arg);
}

static bool fake_has_header(const struct buf *headers, const char *name)
{
    size_t n = strlen(name);
    const char *p = headers->data;
    while (p && *p) {
        if (strncasecmp(p, name, n) == 0 && p[n] == ':')
            return true;
        p = strstr(p, "\r\n");
        if (p)
            p += 2;
    }
    return false;
}

/* Turn the handler's response into the bytes of a pending answer. */
static void fake_serialize(struct fake_pending *p, struct fake_http_response *resp, bool head)
{
    struct buf out = BUF_INIT;
    if (resp->action == FAKE_HTTP_GARBAGE) {
        if (resp->body.len)
            buf_append(&out, resp->body.data, resp->body.len);
        else
            buf_puts(&out, FAKE_GARBAGE_OUT);
    } else if (resp->action == FAKE_HTTP_ANSWER) {
        buf_printf(&out, "HTTP/1.1 %d %s\r\n", resp->status, fake_reason(resp->status));
        if (resp->headers.len)
            buf_append(&out, resp->headers.data, resp->headers.len);
        if (!resp->no_content_length && !fake_has_header(&resp->headers, "Content-Length"))
            buf_printf(&out, "Content-Length: %zu\r\n", resp->body.len);
        buf_puts(&out, p->close ? "Connection: close\r\n\r\n" : "Connection: keep-alive\r\n\r\n");
        if (!head && resp->body.len)
            buf_append(&out, resp->body.data, resp->body.len);
    }
    p->len = out.len;
    p->data = buf_steal(&out);
}

static void fake_record(struct fake_http *f, struct fake_http_request *req)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    req->at_ns = (unsigned long long)now.tv_sec * 1000000000ull + (unsigned long long)now.tv_nsec;
    pthread_mutex_lock(&f->mu);
    req->seq = f->count++;
    if (!f->opts.no_record) {
        if (f->nrecs == f->caprecs) {
            f->caprecs = f->caprecs ? f->caprecs * 2 : 64;
            f->recs = xrealloc(f->recs, f->caprecs * sizeof(*f->recs));
        }
        f->recs[f->nrecs++] = req;
        req = NULL;
    }
    pthread_cond_broadcast(&f->cond);
    pthread_mutex_unlock(&f->mu);
    fake_request_free(req);
}

/* ---- pending answers ---- */

static void fake_conn_unref(struct fake_conn *conn)
{
    if (--conn->refs > 0)
        return;
    struct fake_http *f = conn->f;
    if (conn->prev)
        conn->prev->next = conn->next;
    else
        f->conns = conn->next;
    if (conn->next)
        conn->next->prev = conn->prev;
    buf_free(&conn->url);
    buf_free(&conn->body);
    buf_free(&conn->field);
    buf_free(&conn->value);
    for (size_t i = 0; i < conn->nhdrs; i++) {
        free(conn->hdrs[i].name);
        free(conn->hdrs[i].value);
    }
    free(conn->hdrs);
    free(conn);
}

static void fake_pending_on_timer_closed(uv_handle_t *h)
{
    struct fake_pending *p = h->data;
    struct fake_conn *conn = p->conn;
    free(p->data);
    free(p);
    fake_conn_unref(conn);
}

static void fake_pending_free(struct fake_pending *p)
{
    if (p->has_timer) {
        uv_close((uv_handle_t *)&p->timer, fake_pending_on_timer_closed);
        return;
    }
    free(p->data);
    free(p);
}

static void fake_pending_on_timer(uv_timer_t *t)
{
    struct fake_pending *p = t->data;
    p->ready = true;
    fake_conn_flush(p->conn);
}

static void fake_conn_enqueue(struct fake_conn *conn, struct fake_pending *p, unsigned delay_ms)
{
    p->conn = conn;
    if (conn->tail)
        conn->tail->next = p;
    else
        conn->head = p;
    conn->tail = p;
    if (delay_ms == 0) {
        p->ready = true;
        return;
    }
    uv_timer_init(&conn->f->loop, &p->timer);
    p->timer.data = p;
    p->has_timer = true;
    conn->refs++;
    uv_timer_start(&p->timer, fake_pending_on_timer, delay_ms, 0);
}

/* ---- connection I/O ---- */

static void fake_on_write(uv_write_t *req, int status)
{
    struct fake_write *w = (struct fake_write *)req;
    struct fake_conn *conn = w->conn;
    free(w->data);
    free(w);
    conn->writes--;
    if (conn->close_after && !conn->closing && !conn->head && conn->writes == 0)
        fake_conn_close(conn);
    fake_conn_unref(conn);
}

static void fake_conn_write(struct fake_conn *conn, char *data, size_t len)
{
    struct fake_write *w = xcalloc(1, sizeof(*w));
    w->conn = conn;
    w->data = data;
    uv_buf_t b = uv_buf_init(data, (unsigned)len);
    conn->refs++;
    conn->writes++;
    int rc = uv_write(&w->req, (uv_stream_t *)&conn->tcp, &b, 1, fake_on_write);
    if (rc) {
        free(data);
        free(w);
        conn->refs--;
        conn->writes--;
        fake_conn_close(conn);
    }
}

/* Write every ready answer at the head of the queue, in order. */
static void fake_conn_flush(struct fake_conn *conn)
{
    while (!conn->closing && conn->head && conn->head->ready) {
        struct fake_pending *p = conn->head;
        conn->head = p->next;
        if (!conn->head)
            conn->tail = NULL;
        if (p->action == FAKE_HTTP_DROP) {
            fake_pending_free(p);
            fake_conn_close(conn);
            return;
        }
        char *data = p->data;
        size_t len = p->len;
        bool close = p->close || p->action == FAKE_HTTP_GARBAGE;
        p->data = NULL;
        fake_pending_free(p);
        if (close)
            conn->close_after = true;
        fake_conn_write(conn, data, len);
        if (close)
            return;
    }
}

static void fake_conn_on_closed(uv_handle_t *h)
{
    struct fake_conn *conn = h->data;
    struct fake_http *f = conn->f;
    pthread_mutex_lock(&f->mu);
    f->open_conns--;
    pthread_mutex_unlock(&f->mu);
    fake_conn_unref(conn);
}

static void fake_conn_close(struct fake_conn *conn)
{
    if (conn->closing)
        return;
    conn->closing = true;
    while (conn->head) {
        struct fake_pending *p = conn->head;
        conn->head = p->next;
        fake_pending_free(p);
    }
    conn->tail = NULL;
    uv_read_stop((uv_stream_t *)&conn->tcp);
    uv_close((uv_handle_t *)&conn->tcp, fake_conn_on_closed);
}

/* ---- http-parser callbacks (build the request being read) ---- */

static void fake_conn_push_header(struct fake_conn *conn)
{
    if (!conn->field.len)
        return;
    if (conn->nhdrs == conn->caphdrs) {
        conn->caphdrs = conn->caphdrs ? conn->caphdrs * 2 : 16;
        conn->hdrs = xrealloc(conn->hdrs, conn->caphdrs * sizeof(*conn->hdrs));
    }
    conn->hdrs[conn->nhdrs].name = buf_steal(&conn->field);
    conn->hdrs[conn->nhdrs].value = buf_steal(&conn->value);
    conn->nhdrs++;
    conn->in_value = false;
}

static int fake_on_message_begin(http_parser *p)
{
    struct fake_conn *conn = p->data;
    buf_reset(&conn->url);
    buf_reset(&conn->body);
    buf_reset(&conn->field);
    buf_reset(&conn->value);
    conn->in_value = false;
    for (size_t i = 0; i < conn->nhdrs; i++) {
        free(conn->hdrs[i].name);
        free(conn->hdrs[i].value);
    }
    conn->nhdrs = 0;
    return 0;
}

static int fake_on_url(http_parser *p, const char *at, size_t len)
{
    struct fake_conn *conn = p->data;
    buf_append(&conn->url, at, len);
    return 0;
}

static int fake_on_header_field(http_parser *p, const char *at, size_t len)
{
    struct fake_conn *conn = p->data;
    if (conn->in_value)
        fake_conn_push_header(conn);
    buf_append(&conn->field, at, len);
    return 0;
}

static int fake_on_header_value(http_parser *p, const char *at, size_t len)
{
    struct fake_conn *conn = p->data;
    conn->in_value = true;
    buf_append(&conn->value, at, len);
    return 0;
}

static int fake_on_headers_complete(http_parser *p)
{
    fake_conn_push_header(p->data);
    return 0;
}

static int fake_on_body(http_parser *p, const char *at, size_t len)
{
    struct fake_conn *conn = p->data;
    buf_append(&conn->body, at, len);
    return 0;
}

/* Move the parsed request out of the connection into a heap request. */
static struct fake_http_request *fake_conn_take_request(struct fake_conn *conn)
{
    struct fake_http_request *req = xcalloc(1, sizeof(*req));
    req->method = xstrdup(http_method_str((enum http_method)conn->parser.method));
    const char *url = conn->url.data ? conn->url.data : "/";
    const char *q = strchr(url, '?');
    req->path = q ? xstrndup(url, (size_t)(q - url)) : xstrdup(url);
    req->query = xstrdup(q ? q + 1 : "");
    req->headers = conn->hdrs;
    req->nheaders = conn->nhdrs;
    conn->hdrs = NULL;
    conn->nhdrs = conn->caphdrs = 0;
    req->body_len = conn->body.len;
    req->body = buf_steal(&conn->body);
    req->conn_id = conn->id;
    return req;
}

static int fake_on_message_complete(http_parser *p)
{
    struct fake_conn *conn = p->data;
    if (conn->closing || conn->close_after)
        return 0; /* the connection is going away: ignore what follows */
    struct fake_http_request *req = fake_conn_take_request(conn);
    struct fake_http_response resp = {.status = 200};
    fake_dispatch(conn->f, req, &resp);

    struct fake_pending *pd = xcalloc(1, sizeof(*pd));
    pd->action = resp.action;
    pd->close = resp.close || resp.no_content_length || !http_should_keep_alive(p);
    fake_serialize(pd, &resp, strcmp(req->method, "HEAD") == 0);
    if (pd->close)
        conn->close_after = true;
    buf_free(&resp.headers);
    buf_free(&resp.body);
    fake_record(conn->f, req);
    fake_conn_enqueue(conn, pd, resp.delay_ms);
    return 0;
}

static const http_parser_settings fake_parser_settings = {
    .on_message_begin = fake_on_message_begin,
    .on_url = fake_on_url,
    .on_header_field = fake_on_header_field,
    .on_header_value = fake_on_header_value,
    .on_headers_complete = fake_on_headers_complete,
    .on_body = fake_on_body,
    .on_message_complete = fake_on_message_complete,
};

/* ---- reading and accepting ---- */

static void fake_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    struct fake_conn *conn = h->data;
    *b = uv_buf_init(conn->f->rbuf, sizeof(conn->f->rbuf));
}

static void fake_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    struct fake_conn *conn = s->data;
    if (nread < 0) {
        fake_conn_close(conn);
        return;
    }
    if (nread == 0 || conn->closing)
        return;
    size_t n = http_parser_execute(&conn->parser, &fake_parser_settings, b->base, (size_t)nread);
    if ((HTTP_PARSER_ERRNO(&conn->parser) != HPE_OK || n != (size_t)nread) && !conn->close_after) {
        struct fake_pending *pd = xcalloc(1, sizeof(*pd));
        pd->close = true;
        pd->data = xstrdup(FAKE_BAD_REQUEST);
        pd->len = strlen(FAKE_BAD_REQUEST);
        conn->close_after = true;
        fake_conn_enqueue(conn, pd, 0);
        uv_read_stop(s);
    }
    fake_conn_flush(conn);
}

static void fake_on_connection(uv_stream_t *server, int status)
{
    struct fake_http *f = server->data;
    if (status < 0)
        return;
    struct fake_conn *conn = xcalloc(1, sizeof(*conn));
    conn->f = f;
    conn->refs = 1;
    uv_tcp_init(&f->loop, &conn->tcp);
    conn->tcp.data = conn;
    conn->next = f->conns;
    if (f->conns)
        f->conns->prev = conn;
    f->conns = conn;
    pthread_mutex_lock(&f->mu);
    conn->id = ++f->connections;
    f->open_conns++;
    pthread_mutex_unlock(&f->mu);
    if (uv_accept(server, (uv_stream_t *)&conn->tcp) != 0) {
        fake_conn_close(conn);
        return;
    }
    uv_tcp_nodelay(&conn->tcp, 1);
    http_parser_init(&conn->parser, HTTP_REQUEST);
    conn->parser.data = conn;
    uv_read_start((uv_stream_t *)&conn->tcp, fake_on_alloc, fake_on_read);
}

/* ---- thread, start, stop ---- */

static void fake_on_stop(uv_async_t *a)
{
    struct fake_http *f = a->data;
    uv_close((uv_handle_t *)&f->listener, NULL);
    uv_close((uv_handle_t *)&f->stop, NULL);
    for (struct fake_conn *conn = f->conns; conn; conn = conn->next)
        fake_conn_close(conn);
}

static void *fake_thread_main(void *arg)
{
    struct fake_http *f = arg;
    uv_run(&f->loop, UV_RUN_DEFAULT);
    return NULL;
}

static int fake_listen(struct fake_http *f)
{
    struct sockaddr_in addr;
    struct sockaddr_storage bound;
    int len = sizeof(bound);
    int rc = uv_ip4_addr("127.0.0.1", 0, &addr);
    if (!rc)
        rc = uv_tcp_bind(&f->listener, (const struct sockaddr *)&addr, 0);
    if (!rc)
        rc = uv_listen((uv_stream_t *)&f->listener, 4096, fake_on_connection);
    if (!rc)
        rc = uv_tcp_getsockname(&f->listener, (struct sockaddr *)&bound, &len);
    if (rc) {
        log_error("fake_http: cannot listen: %s", uv_strerror(rc));
        return -1;
    }
    f->port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
    snprintf(f->url, sizeof(f->url), "http://127.0.0.1:%d", f->port);
    return 0;
}

static void fake_free_state(struct fake_http *f)
{
    while (f->routes) {
        struct fake_route *rt = f->routes;
        f->routes = rt->next;
        free(rt->method);
        free(rt->path);
        free(rt->content_type);
        free(rt->body);
        free(rt);
    }
    for (size_t i = 0; i < f->nrecs; i++)
        fake_request_free(f->recs[i]);
    free(f->recs);
    free(f->plain_body);
    free(f->plain_type);
    pthread_cond_destroy(&f->cond);
    pthread_mutex_destroy(&f->mu);
    free(f);
}

struct fake_http *fake_http_start(const struct fake_http_opts *opts)
{
    struct fake_http *f = xcalloc(1, sizeof(*f));
    if (opts)
        f->opts = *opts;
    f->plain_body = xstrdup(f->opts.plain_body ? f->opts.plain_body : "{}");
    f->plain_type =
        xstrdup(f->opts.plain_content_type ? f->opts.plain_content_type : "application/json");
    f->opts.plain_body = f->opts.plain_content_type = NULL;
    pthread_mutex_init(&f->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&f->cond, &ca);
    pthread_condattr_destroy(&ca);

    uv_loop_init(&f->loop);
    uv_tcp_init(&f->loop, &f->listener);
    f->listener.data = f;
    uv_async_init(&f->loop, &f->stop, fake_on_stop);
    f->stop.data = f;
    if (fake_listen(f) != 0 || pthread_create(&f->thread, NULL, fake_thread_main, f) != 0) {
        uv_close((uv_handle_t *)&f->listener, NULL);
        uv_close((uv_handle_t *)&f->stop, NULL);
        uv_run(&f->loop, UV_RUN_DEFAULT);
        uv_loop_close(&f->loop);
        fake_free_state(f);
        return NULL;
    }
    return f;
}

void fake_http_free(struct fake_http *f)
{
    if (!f)
        return;
    uv_async_send(&f->stop);
    pthread_join(f->thread, NULL);
    int rc = uv_loop_close(&f->loop);
    if (rc)
        log_error("fake_http: loop not closed cleanly: %s", uv_strerror(rc));
    fake_free_state(f);
}

int fake_http_port(const struct fake_http *f)
{
    return f->port;
}

const char *fake_http_url(const struct fake_http *f)
{
    return f->url;
}

static struct fake_route *fake_route_new(const char *method, const char *path)
{
    struct fake_route *rt = xcalloc(1, sizeof(*rt));
    if (method && strcmp(method, "*") != 0)
        rt->method = xstrdup(method);
    size_t n = strlen(path);
    rt->prefix = n > 0 && path[n - 1] == '*';
    rt->path = xstrndup(path, rt->prefix ? n - 1 : n);
    rt->path_len = strlen(rt->path);
    return rt;
}

static void fake_route_add(struct fake_http *f, struct fake_route *rt)
{
    pthread_mutex_lock(&f->mu);
    rt->next = f->routes;
    f->routes = rt;
    pthread_mutex_unlock(&f->mu);
}

void fake_http_route(struct fake_http *f, const char *method, const char *path,
                     fake_http_handler handler, void *arg)
{
    struct fake_route *rt = fake_route_new(method, path);
    rt->handler = handler;
    rt->arg = arg;
    fake_route_add(f, rt);
}

void fake_http_route_static(struct fake_http *f, const char *method, const char *path, int status,
                            const char *content_type, const char *body)
{
    struct fake_route *rt = fake_route_new(method, path);
    rt->handler = fake_static_handler;
    rt->arg = rt;
    rt->status = status;
    rt->content_type = xstrdup(content_type);
    rt->body = xstrdup(body);
    fake_route_add(f, rt);
}

size_t fake_http_count(struct fake_http *f)
{
    pthread_mutex_lock(&f->mu);
    size_t n = f->count;
    pthread_mutex_unlock(&f->mu);
    return n;
}

const struct fake_http_request *fake_http_request_at(struct fake_http *f, size_t i)
{
    pthread_mutex_lock(&f->mu);
    const struct fake_http_request *r = i < f->nrecs ? f->recs[i] : NULL;
    pthread_mutex_unlock(&f->mu);
    return r;
}

int fake_http_wait(struct fake_http *f, size_t n, unsigned timeout_ms)
{
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += timeout_ms / 1000;
    deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    int rc = 0;
    pthread_mutex_lock(&f->mu);
    while (f->count < n && rc == 0)
        rc = pthread_cond_timedwait(&f->cond, &f->mu, &deadline);
    bool ok = f->count >= n;
    pthread_mutex_unlock(&f->mu);
    return ok ? 0 : -1;
}

unsigned fake_http_connections(struct fake_http *f)
{
    pthread_mutex_lock(&f->mu);
    unsigned n = f->connections;
    pthread_mutex_unlock(&f->mu);
    return n;
}

unsigned fake_http_open_connections(struct fake_http *f)
{
    pthread_mutex_lock(&f->mu);
    unsigned n = f->open_conns;
    pthread_mutex_unlock(&f->mu);
    return n;
}
