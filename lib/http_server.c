/* http_server: bounded HTTP/1.1 server on libuv + http-parser (see http_server.h).
 *
 * Reading order: the connection state machine (conn_enter, conn_drive, conn_step), the
 * http-parser callbacks that feed it, responses, the libuv transport (accept, read, write,
 * close), the server, and the socket-less session.
 *
 * Ownership: a connection is reference counted. One reference belongs to the transport
 * (dropped when its last uv handle has closed, or at once for a session), one to the
 * request the handler holds (dropped by http_respond), and one to a running conn_drive().
 * The server struct lives until its done callback has fired and every connection struct is
 * freed, so a late http_respond() never touches freed memory. */
#include "http_server.h"
#include "clock.h"
#include "log.h"
#include "xalloc.h"

#include <arpa/inet.h>
#include <http_parser.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define HTTP_READ_CHUNK      (64 * 1024) /* one read at most */
#define HTTP_MIN_INPUT_CAP   (8 * 1024)  /* unparsed input bound: max(this, max_header_bytes) */
#define HTTP_WRITE_HIGH      (64 * 1024) /* stop parsing while more than this waits to be sent */
#define HTTP_CLOSE_MAX_MS    5000        /* a closing connection gets at most this long */
#define HTTP_HEADER_OVERHEAD 4           /* ": " + CRLF counted per header line */
#define HTTP_SPARE_MAX       (64 * 1024) /* a finished request's buffers are kept up to this */

#define http_container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

enum conn_state {
    CS_NEW,     /* just created */
    CS_IDLE,    /* waiting for the first byte of a request */
    CS_HEADERS, /* receiving the request line and headers */
    CS_BODY,    /* receiving the body */
    CS_HANDLER, /* request handed to the handler; waiting for http_respond */
    CS_CLOSING, /* final response queued: flush, shut down, wait for EOF, close */
    CS_CLOSED,  /* transport closed (handles closing or closed) */
};

static const char *const conn_state_names[] = {"new",     "idle",    "headers", "body",
                                               "handler", "closing", "closed"};

/* Header-collection phase of the request being parsed. http-parser may split a name or
 * value across calls but always reports a value (possibly empty) between two names. */
enum req_phase { RP_URL, RP_FIELD, RP_VALUE, RP_DONE };

struct http_conn;

/* A request: the public part plus what backs it. */
struct http_req {
    struct http_request pub;
    struct http_conn *conn;
    struct buf raw;    /* url NUL, then name NUL value NUL per header */
    struct buf body;   /* decoded body */
    struct buf target; /* path NUL query NUL */
    struct http_header *hv;
    size_t hv_cap;
    char *path;  /* in target; NULL until the headers are complete */
    char *query; /* in target */
    int keep_alive;
    int is_head;
};

struct http_conn {
    uv_tcp_t tcp; /* only when has_uv */
    uv_timer_t timer;
    uv_shutdown_t shutdown_req;
    struct http_server *srv;
    struct http_conn *prev, *next; /* in srv->conns while not CS_CLOSED */
    enum conn_state state;
    int refs;
    int has_uv;       /* 0 for a session */
    int handles_open; /* uv handles not yet closed */
    int reading;      /* uv_read_start active */
    int eof;          /* the client half-closed */
    int shut_done;    /* uv_shutdown finished (CS_CLOSING) */
    int served;       /* at least one response sent */
    int driving;      /* inside conn_drive */
    http_parser parser;
    struct buf in; /* unparsed input from in_off */
    size_t in_off;
    size_t in_cap;
    /* the request being parsed */
    struct http_req *cur;
    struct http_req *spare; /* a finished request kept for the next one (its buffers) */
    enum req_phase phase;
    size_t n_headers;
    size_t hdr_bytes;
    int error_status;          /* set by a parser callback that rejects the request */
    int complete;              /* cur is complete; parser paused */
    struct http_req *inflight; /* held by the handler */
    size_t write_pending;      /* bytes in uv_write requests not yet completed */
    char peer[64];
};

struct http_server {
    uv_loop_t *loop; /* NULL for a session */
    uv_tcp_t listener;
    int listening; /* listener handle open */
    struct http_server_opts opts;
    char *host;
    char *name;
    http_handler_fn handler;
    void *ud;
    int port;
    struct http_server_stats stats;
    struct http_conn *conns;
    uint64_t open_handles; /* uv handles of ours not yet closed */
    uint64_t live_conns;   /* connection structs not yet freed */
    int draining;          /* shutdown or force close started */
    int shutdown_called;
    int done_fired;
    http_server_done_fn done;
    void *done_arg;
    struct buf session_out; /* session: everything "written" */
    char readbuf[HTTP_READ_CHUNK];
};

struct http_session {
    struct http_server *srv;
    struct http_conn *conn;
};

/* A write in flight; owns its bytes. */
struct http_write {
    uv_write_t req;
    char *data;
    size_t len;
};

static void conn_drive(struct http_conn *c);
static void conn_close(struct http_conn *c);
static void server_note_error(struct http_server *s, int status, const char *path);
static void conn_finish(struct http_conn *c);
static void conn_fail(struct http_conn *c, int status);
static void conn_write(struct http_conn *c, struct buf *out);
static void conn_write_bytes(struct http_conn *c, const char *data, size_t len);
static void conn_update_reading(struct http_conn *c);
static void conn_arm_timer(struct http_conn *c, uint64_t ms);
static void server_check_done(struct http_server *s);
static void server_maybe_free(struct http_server *s);
static const http_parser_settings conn_parser_settings;

/* ---------------------------------------------------------------------------------------
 * Requests */

/* A request for c: its spare one when there is one (keep-alive connections then allocate
 * nothing per request), else a new one. */
static struct http_req *req_new(struct http_conn *c)
{
    struct http_req *r = c->spare;
    if (r)
        c->spare = NULL;
    else
        r = xcalloc(1, sizeof *r);
    r->conn = c;
    return r;
}

static void req_free(struct http_req *r)
{
    if (!r)
        return;
    buf_free(&r->raw);
    buf_free(&r->body);
    buf_free(&r->target);
    free(r->hv);
    free(r);
}

/* Done with r, a request of c: kept as c's spare (emptied, its buffers kept) while c is
 * open and has none and the buffers are not large; freed otherwise. */
static void req_release(struct http_conn *c, struct http_req *r)
{
    if (!r)
        return;
    if (c->spare || c->state == CS_CLOSED || r->raw.cap > HTTP_SPARE_MAX ||
        r->body.cap > HTTP_SPARE_MAX || r->target.cap > HTTP_SPARE_MAX) {
        req_free(r);
        return;
    }
    buf_reset(&r->raw);
    buf_reset(&r->body);
    buf_reset(&r->target);
    memset(&r->pub, 0, sizeof r->pub);
    r->path = r->query = NULL;
    r->keep_alive = r->is_head = 0;
    c->spare = r;
}

/* Split the request target into path and query (origin-form, absolute-form, "*"). */
static void req_split_target(struct http_req *r, const char *url)
{
    const char *p = url;
    const char *scheme = strstr(url, "://");
    if (url[0] != '/' && scheme) {
        p = strchr(scheme + 3, '/');
        if (!p)
            p = "/";
    }
    size_t plen = strcspn(p, "?#");
    const char *q = p[plen] == '?' ? p + plen + 1 : "";
    buf_reset(&r->target);
    if (plen)
        buf_append(&r->target, p, plen);
    else
        buf_append(&r->target, "/", plen = 1);
    buf_append(&r->target, "", 1);
    buf_append(&r->target, q, strcspn(q, "#"));
    r->path = r->target.data; /* the buffer does not move from here on */
    r->query = r->target.data + plen + 1;
}

static void header_trim(char *s)
{
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        s[--n] = '\0';
}

/* Close the last raw string and turn raw into url + header array. */
static void req_finish_headers(struct http_conn *c, struct http_req *r)
{
    if (c->phase == RP_URL || c->phase == RP_VALUE)
        buf_append(&r->raw, "", 1);
    else if (c->phase == RP_FIELD)
        buf_append(&r->raw, "\0", 2); /* end name, empty value */
    c->phase = RP_DONE;

    char *p = r->raw.data;
    req_split_target(r, p);
    p += strlen(p) + 1;
    if (c->n_headers > r->hv_cap || !r->hv) {
        free(r->hv);
        r->hv_cap = c->n_headers > 16 ? c->n_headers : 16;
        r->hv = xcalloc(r->hv_cap, sizeof *r->hv);
    }
    for (size_t i = 0; i < c->n_headers; i++) {
        r->hv[i].name = p;
        p += strlen(p) + 1;
        char *next = p + strlen(p) + 1;
        while (*p == ' ' || *p == '\t')
            p++;
        header_trim(p);
        r->hv[i].value = p;
        p = next;
    }
    r->pub.method = http_method_str((enum http_method)c->parser.method);
    r->pub.path = r->path;
    r->pub.query = r->query;
    r->pub.headers = r->hv;
    r->pub.n_headers = c->n_headers;
    r->pub.peer = c->peer;
    r->pub.recv_ns = clock_mono_ns();
    r->pub.http_minor = c->parser.http_major == 1 ? c->parser.http_minor : 0;
    r->is_head = c->parser.method == HTTP_HEAD;
}

const char *http_request_header(const struct http_request *req, const char *name)
{
    for (size_t i = 0; i < req->n_headers; i++)
        if (strcasecmp(req->headers[i].name, name) == 0)
            return req->headers[i].value;
    return NULL;
}

/* ---------------------------------------------------------------------------------------
 * Connection state machine */

static void conn_ref(struct http_conn *c)
{
    c->refs++;
}

static void conn_free(struct http_conn *c)
{
    struct http_server *s = c->srv;
    req_free(c->cur);
    req_free(c->spare);
    buf_free(&c->in);
    free(c);
    s->live_conns--;
    server_maybe_free(s);
}

static void conn_unref(struct http_conn *c)
{
    if (--c->refs == 0)
        conn_free(c);
}

static size_t conn_pending_input(const struct http_conn *c)
{
    return c->in.len - c->in_off;
}

/* Every state change goes through here: it logs and (re)arms the timer of the new state. */
static void conn_enter(struct http_conn *c, enum conn_state next)
{
    const struct http_server_opts *o = &c->srv->opts;
    if (c->state == next || c->state == CS_CLOSED)
        return; /* closed is final */
    log_debug("%s %s: %s -> %s", c->srv->name, c->peer, conn_state_names[c->state],
              conn_state_names[next]);
    c->state = next;
    switch (next) {
    case CS_IDLE:
        conn_arm_timer(c, c->served ? o->idle_timeout_ms : o->header_timeout_ms);
        break;
    case CS_HEADERS:
        conn_arm_timer(c, o->header_timeout_ms);
        break;
    case CS_BODY:
        conn_arm_timer(c, o->body_timeout_ms);
        break;
    case CS_HANDLER:
        conn_arm_timer(c, 0);
        break;
    case CS_CLOSING: {
        uint64_t ms =
            o->idle_timeout_ms < HTTP_CLOSE_MAX_MS ? o->idle_timeout_ms : HTTP_CLOSE_MAX_MS;
        conn_arm_timer(c, ms ? ms : HTTP_CLOSE_MAX_MS);
        break;
    }
    case CS_NEW:
    case CS_CLOSED:
        break;
    default:
        abort();
    }
}

/* Hand the completed request to the handler. */
static void conn_dispatch(struct http_conn *c)
{
    struct http_req *r = c->cur;
    c->cur = NULL;
    c->complete = 0;
    c->inflight = r;
    conn_ref(c); /* held by r until http_respond */
    c->srv->stats.requests_total++;
    conn_enter(c, CS_HANDLER);
    c->srv->handler(&r->pub, c->srv->ud);
}

static void conn_compact_input(struct http_conn *c)
{
    if (c->in_off == c->in.len) {
        buf_reset(&c->in);
        c->in_off = 0;
    } else if (c->in_off > 0) {
        memmove(c->in.data, c->in.data + c->in_off, c->in.len - c->in_off);
        c->in.len -= c->in_off;
        c->in.data[c->in.len] = '\0';
        c->in_off = 0;
    }
}

/* Parse pending input. Returns 1 if a request was dispatched (more may follow). */
static int conn_parse(struct http_conn *c)
{
    size_t avail = conn_pending_input(c);
    if (avail == 0) {
        if (c->eof) /* client is done; a half-received request is dropped */
            conn_finish(c);
        return 0;
    }
    size_t n =
        http_parser_execute(&c->parser, &conn_parser_settings, c->in.data + c->in_off, avail);
    c->in_off += n;
    conn_compact_input(c);
    enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
    if (c->error_status) {
        conn_fail(c, c->error_status);
        return 0;
    }
    if (e == HPE_PAUSED && c->complete) {
        http_parser_pause(&c->parser, 0);
        conn_dispatch(c);
        return 1;
    }
    if (e != HPE_OK) {
        log_debug("%s %s: parse error: %s", c->srv->name, c->peer, http_errno_name(e));
        conn_fail(c, e == HPE_HEADER_OVERFLOW ? 431 : 400);
        return 0;
    }
    if (c->eof && conn_pending_input(c) == 0)
        conn_finish(c);
    return 0;
}

/* One step of the machine; returns 1 if another step may make progress. */
static int conn_step(struct http_conn *c)
{
    switch (c->state) {
    case CS_IDLE:
        if (c->srv->draining) {
            conn_finish(c);
            return 0;
        }
        /* fall through */
    case CS_HEADERS:
    case CS_BODY:
        if (c->write_pending > HTTP_WRITE_HIGH)
            return 0; /* resumed by after_write */
        return conn_parse(c);
    case CS_NEW:
    case CS_HANDLER:
    case CS_CLOSING:
    case CS_CLOSED:
        return 0;
    default:
        abort();
    }
}

/* Run the machine until it waits for input, the handler or the transport. */
static void conn_drive(struct http_conn *c)
{
    if (c->driving)
        return; /* http_respond from inside the handler: the outer loop continues */
    conn_ref(c);
    c->driving = 1;
    while (conn_step(c))
        ;
    c->driving = 0;
    conn_update_reading(c);
    conn_unref(c);
}

/* Reject the request being received with an error status and close. */
static void conn_fail(struct http_conn *c, int status)
{
    static const struct {
        int status;
        const char *body;
    } msgs[] = {
        {400, "bad request\n"},       {408, "request timeout\n"},   {411, "length required\n"},
        {413, "payload too large\n"}, {431, "headers too large\n"}, {503, "service unavailable\n"},
    };
    const char *body = "error\n";
    for (size_t i = 0; i < sizeof msgs / sizeof msgs[0]; i++)
        if (msgs[i].status == status)
            body = msgs[i].body;
    log_debug("%s %s: rejecting request with %d", c->srv->name, c->peer, status);
    server_note_error(c->srv, status, c->cur ? c->cur->path : NULL);
    req_release(c, c->cur);
    c->cur = NULL;
    c->complete = 0;
    struct buf out = BUF_INIT;
    buf_printf(&out,
               "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
               "Connection: close\r\n\r\n%s",
               status, http_status_str((enum http_status)status), strlen(body), body);
    conn_write(c, &out);
    conn_finish(c);
}

static void conn_on_timeout(struct http_conn *c)
{
    switch (c->state) {
    case CS_IDLE:
        conn_finish(c);
        break;
    case CS_HEADERS:
    case CS_BODY:
        conn_fail(c, 408);
        break;
    case CS_CLOSING:
        conn_close(c);
        break;
    default:
        break;
    }
}

/* ---------------------------------------------------------------------------------------
 * http-parser callbacks: they only record into the connection; conn_parse decides. */

static int conn_count_header_bytes(struct http_conn *c, size_t len)
{
    c->hdr_bytes += len;
    if (c->hdr_bytes > c->srv->opts.max_header_bytes) {
        c->error_status = 431;
        return -1;
    }
    return 0;
}

static int on_message_begin(http_parser *p)
{
    struct http_conn *c = p->data;
    req_release(c, c->cur);
    c->cur = req_new(c);
    buf_reserve(&c->cur->raw, 512); /* a typical request line and headers, in one go */
    c->phase = RP_URL;
    c->n_headers = 0;
    c->hdr_bytes = 0;
    conn_enter(c, CS_HEADERS);
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    struct http_conn *c = p->data;
    if (conn_count_header_bytes(c, len))
        return -1;
    buf_append(&c->cur->raw, at, len);
    return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    struct http_conn *c = p->data;
    if (c->phase == RP_DONE) /* trailer: counted, not kept */
        return conn_count_header_bytes(c, len);
    if (c->phase != RP_FIELD) {
        buf_append(&c->cur->raw, "", 1); /* end url or previous value */
        c->phase = RP_FIELD;
        c->n_headers++;
        if (conn_count_header_bytes(c, HTTP_HEADER_OVERHEAD))
            return -1;
    }
    if (conn_count_header_bytes(c, len))
        return -1;
    buf_append(&c->cur->raw, at, len);
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    struct http_conn *c = p->data;
    if (c->phase == RP_DONE)
        return conn_count_header_bytes(c, len);
    if (c->phase == RP_FIELD) {
        buf_append(&c->cur->raw, "", 1); /* end name */
        c->phase = RP_VALUE;
    }
    if (conn_count_header_bytes(c, len))
        return -1;
    buf_append(&c->cur->raw, at, len);
    return 0;
}

static int on_headers_complete(http_parser *p)
{
    struct http_conn *c = p->data;
    req_finish_headers(c, c->cur);
    int has_length = (p->flags & (F_CHUNKED | F_CONTENTLENGTH)) != 0;
    if ((p->method == HTTP_POST || p->method == HTTP_PUT) && !has_length) {
        c->error_status = 411;
        return -1;
    }
    if ((p->flags & F_CONTENTLENGTH) && p->content_length > c->srv->opts.max_body_bytes) {
        c->error_status = 413;
        return -1;
    }
    if (p->flags & F_CONTENTLENGTH)
        buf_reserve(&c->cur->body, (size_t)p->content_length); /* <= max_body_bytes */
    const char *expect = http_request_header(&c->cur->pub, "Expect");
    if (expect && strcasecmp(expect, "100-continue") == 0 && p->http_major == 1 &&
        p->http_minor >= 1 && has_length) {
        struct buf cont = BUF_INIT;
        buf_puts(&cont, "HTTP/1.1 100 Continue\r\n\r\n");
        conn_write(c, &cont);
    }
    conn_enter(c, CS_BODY);
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    struct http_conn *c = p->data;
    struct buf *b = &c->cur->body;
    if (len > c->srv->opts.max_body_bytes - b->len) {
        c->error_status = 413;
        return -1;
    }
    buf_append(b, at, len);
    return 0;
}

static int on_message_complete(http_parser *p)
{
    struct http_conn *c = p->data;
    struct http_req *r = c->cur;
    if (!r->body.data)
        buf_append(&r->body, "", 0);
    r->pub.body = r->body.data;
    r->pub.body_len = r->body.len;
    r->keep_alive = http_should_keep_alive(p) && !p->upgrade;
    c->complete = 1;
    http_parser_pause(p, 1); /* one request at a time: the rest waits in c->in */
    return 0;
}

static const http_parser_settings conn_parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---------------------------------------------------------------------------------------
 * Responses */

static const char *http_reason(int status)
{
    const char *s = http_status_str((enum http_status)status);
    return strcmp(s, "<unknown>") == 0 ? "Unknown" : s;
}

static char *http_put(char *p, const char *s, size_t n)
{
    memcpy(p, s, n);
    return p + n;
}

/* Decimal digits of v at p; returns the end. */
static char *http_put_u64(char *p, uint64_t v)
{
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        *p++ = tmp[--n];
    return p;
}

void http_respond(struct http_request *req, int status, const char *content_type,
                  const char *extra_headers, const char *body, size_t body_len)
{
    struct http_req *r = http_container_of(req, struct http_req, pub);
    struct http_conn *c = r->conn;
    if (c->state != CS_HANDLER || c->inflight != r)
        goto out; /* connection closed meanwhile: drop the response */
    c->inflight = NULL;
    if (status < 100 || status > 999)
        status = 500;
    int keep = r->keep_alive && !c->srv->draining;
    /* Formatted by hand into one buffer (on the stack when it fits): this runs for every
     * request. */
    const char *reason = http_reason(status);
    size_t ct_len = content_type ? strlen(content_type) : 0;
    size_t ex_len = extra_headers ? strlen(extra_headers) : 0;
    size_t send_len = !r->is_head ? body_len : 0;
    size_t cap = 128 + strlen(reason) + ct_len + ex_len + send_len;
    char stack[2048];
    char *o = cap <= sizeof stack ? stack : xmalloc(cap);
    char *p = http_put(o, "HTTP/1.1 ", 9);
    p = http_put_u64(p, (uint64_t)status);
    *p++ = ' ';
    p = http_put(p, reason, strlen(reason));
    p = http_put(p, "\r\n", 2);
    if (content_type) {
        p = http_put(p, "Content-Type: ", 14);
        p = http_put(p, content_type, ct_len);
        p = http_put(p, "\r\n", 2);
    }
    p = http_put(p, "Content-Length: ", 16);
    p = http_put_u64(p, body_len);
    p = http_put(p, "\r\n", 2);
    if (!keep)
        p = http_put(p, "Connection: close\r\n", 19);
    else if (r->pub.http_minor == 0)
        p = http_put(p, "Connection: keep-alive\r\n", 24);
    if (ex_len)
        p = http_put(p, extra_headers, ex_len);
    p = http_put(p, "\r\n", 2);
    if (send_len)
        p = http_put(p, body, send_len);
    conn_write_bytes(c, o, (size_t)(p - o));
    if (o != stack)
        free(o);
    c->served = 1;
    if (c->state == CS_CLOSED) /* the write failed */
        goto out;
    if (keep) {
        conn_enter(c, CS_IDLE);
        conn_drive(c);
    } else {
        conn_finish(c);
    }
out:
    req_release(c, r);
    conn_unref(c);
}

/* ---------------------------------------------------------------------------------------
 * Transport: timers, reads, writes, closing */

static void on_conn_timer(uv_timer_t *t)
{
    struct http_conn *c = t->data;
    conn_ref(c);
    conn_on_timeout(c);
    conn_unref(c);
}

/* Arm the connection's timer for ms (0 = stop). */
static void conn_arm_timer(struct http_conn *c, uint64_t ms)
{
    if (!c->has_uv || c->state == CS_CLOSED)
        return;
    uv_timer_stop(&c->timer);
    if (ms)
        uv_timer_start(&c->timer, on_conn_timer, ms, 0);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    struct http_conn *c = h->data;
    size_t room = sizeof c->srv->readbuf;
    if (c->state != CS_CLOSING) {
        size_t pend = conn_pending_input(c);
        room = pend < c->in_cap ? c->in_cap - pend : 0;
        if (room > sizeof c->srv->readbuf)
            room = sizeof c->srv->readbuf;
    }
    b->base = c->srv->readbuf;
    b->len = room;
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *b)
{
    struct http_conn *c = st->data;
    if (nread == 0 || c->state == CS_CLOSED)
        return;
    conn_ref(c);
    if (nread == UV_EOF) {
        c->eof = 1;
        c->reading = 0; /* libuv stopped reading */
        if (c->state == CS_CLOSING) {
            if (c->shut_done)
                conn_close(c);
        } else {
            conn_drive(c);
        }
    } else if (nread < 0) {
        log_debug("%s %s: read: %s", c->srv->name, c->peer, uv_strerror((int)nread));
        conn_close(c);
    } else if (c->state != CS_CLOSING) { /* closing: input is discarded */
        buf_append(&c->in, b->base, (size_t)nread);
        conn_drive(c);
    }
    conn_unref(c);
}

/* Read while there is room for input (or while closing, to discard it). */
static void conn_update_reading(struct http_conn *c)
{
    if (!c->has_uv || c->state == CS_CLOSED || c->eof)
        return;
    int want = c->state == CS_CLOSING || conn_pending_input(c) < c->in_cap;
    if (want && !c->reading) {
        if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
            c->reading = 1;
    } else if (!want && c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = 0;
    }
}

static void after_write(uv_write_t *req, int status)
{
    struct http_write *w = http_container_of(req, struct http_write, req);
    struct http_conn *c = req->handle->data;
    c->write_pending -= w->len;
    free(w->data);
    free(w);
    if (c->state == CS_CLOSED)
        return;
    if (status < 0) {
        log_debug("%s %s: write: %s", c->srv->name, c->peer, uv_strerror(status));
        conn_close(c);
    } else if (c->state <= CS_BODY) {
        conn_drive(c); /* may have been waiting for the write queue to drain */
    }
}

/* Send len bytes from data (copied if they cannot all be written at once). */
static void conn_write_bytes(struct http_conn *c, const char *data, size_t len)
{
    if (!c->has_uv) {
        buf_append(&c->srv->session_out, data, len);
        return;
    }
    if (c->state == CS_CLOSED || len == 0)
        return;
    /* Most responses fit the socket buffer: write them now, without a queued request. */
    if (c->write_pending == 0) {
        uv_buf_t ub = uv_buf_init((char *)data, (unsigned)len);
        int n = uv_try_write((uv_stream_t *)&c->tcp, &ub, 1);
        if (n < 0 && n != UV_EAGAIN) {
            log_debug("%s %s: write: %s", c->srv->name, c->peer, uv_strerror(n));
            conn_close(c);
            return;
        }
        if (n > 0) {
            data += n;
            len -= (size_t)n;
        }
        if (len == 0)
            return;
    }
    struct http_write *w = xmalloc(sizeof *w);
    w->len = len;
    w->data = xmalloc(len);
    memcpy(w->data, data, len);
    uv_buf_t ub = uv_buf_init(w->data, (unsigned)w->len);
    int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &ub, 1, after_write);
    if (rc) {
        free(w->data);
        free(w);
        conn_close(c);
        return;
    }
    c->write_pending += w->len;
}

/* Send the bytes in out (freed; out is left empty). */
static void conn_write(struct http_conn *c, struct buf *out)
{
    conn_write_bytes(c, out->data ? out->data : "", out->len);
    buf_free(out);
}

static void after_shutdown(uv_shutdown_t *req, int status)
{
    struct http_conn *c = req->data;
    c->shut_done = 1;
    if (c->state == CS_CLOSED)
        return;
    if (status < 0 || c->eof)
        conn_close(c); /* otherwise wait for the client's EOF (or the timer) */
}

/* Stop parsing; send what is queued, then close (lingering for the client's EOF so it
 * reads the last response instead of a reset). */
static void conn_finish(struct http_conn *c)
{
    if (c->state == CS_CLOSING || c->state == CS_CLOSED)
        return;
    conn_enter(c, CS_CLOSING);
    if (!c->has_uv) {
        conn_close(c);
        return;
    }
    c->shutdown_req.data = c;
    if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, after_shutdown) != 0) {
        conn_close(c);
        return;
    }
    conn_update_reading(c);
}

static void on_conn_handle_close(uv_handle_t *h)
{
    struct http_conn *c = h->data;
    struct http_server *s = c->srv;
    s->open_handles--;
    if (--c->handles_open > 0)
        return;
    server_check_done(s); /* c still holds s alive */
    conn_unref(c);        /* the transport's reference */
}

static void conn_unlink(struct http_conn *c)
{
    struct http_server *s = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    s->stats.connections_current--;
}

/* Close the transport now (queued writes are dropped). */
static void conn_close(struct http_conn *c)
{
    if (c->state == CS_CLOSED)
        return;
    conn_enter(c, CS_CLOSED);
    conn_unlink(c);
    req_free(c->cur);
    c->cur = NULL;
    if (!c->has_uv) {
        conn_unref(c);
        return;
    }
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, on_conn_handle_close);
    uv_close((uv_handle_t *)&c->tcp, on_conn_handle_close);
}

static struct http_conn *conn_new(struct http_server *s, int has_uv)
{
    struct http_conn *c = xcalloc(1, sizeof *c);
    c->srv = s;
    c->refs = 1; /* the transport's */
    c->has_uv = has_uv;
    c->state = CS_NEW;
    c->in_cap = s->opts.max_header_bytes > HTTP_MIN_INPUT_CAP ? s->opts.max_header_bytes
                                                              : HTTP_MIN_INPUT_CAP;
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    snprintf(c->peer, sizeof c->peer, "-");
    s->live_conns++;
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->stats.connections_current++;
    return c;
}

static void conn_set_peer(struct http_conn *c)
{
    struct sockaddr_storage ss;
    int len = sizeof ss;
    char ip[INET6_ADDRSTRLEN] = "";
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) != 0)
        return;
    if (ss.ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
        uv_ip4_name(a, ip, sizeof ip);
        snprintf(c->peer, sizeof c->peer, "%s:%d", ip, ntohs(a->sin_port));
    } else if (ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;
        uv_ip6_name(a, ip, sizeof ip);
        snprintf(c->peer, sizeof c->peer, "[%s]:%d", ip, ntohs(a->sin6_port));
    }
}

/* ---------------------------------------------------------------------------------------
 * Server */

static const char http_503[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                               "Content-Length: 20\r\nConnection: close\r\n\r\n"
                               "service unavailable\n";

static void on_reject_close(uv_handle_t *h)
{
    struct http_server *s = h->data;
    free(h);
    s->open_handles--;
    server_check_done(s);
}

/* Over the connection cap: best-effort 503, then close at once. */
static void server_reject(struct http_server *s)
{
    uv_tcp_t *t = xmalloc(sizeof *t);
    uv_tcp_init(s->loop, t);
    t->data = s;
    s->open_handles++;
    if (uv_accept((uv_stream_t *)&s->listener, (uv_stream_t *)t) == 0) {
        uv_buf_t b = uv_buf_init((char *)http_503, sizeof http_503 - 1);
        (void)uv_try_write((uv_stream_t *)t, &b, 1);
    }
    uv_close((uv_handle_t *)t, on_reject_close);
    s->stats.connections_rejected++;
    server_note_error(s, 503, NULL);
}

/* Count an error answer the server sent itself and tell the caller's hook. */
static void server_note_error(struct http_server *s, int status, const char *path)
{
    s->stats.errors_total++;
    if (s->opts.on_error)
        s->opts.on_error(status, path, s->opts.error_ud);
}

static void on_connection(uv_stream_t *listener, int status)
{
    struct http_server *s = listener->data;
    if (status < 0) {
        log_warn("%s: accept: %s", s->name, uv_strerror(status));
        return;
    }
    if (s->stats.connections_current >= s->opts.max_connections) {
        server_reject(s);
        return;
    }
    struct http_conn *c = conn_new(s, 1);
    uv_tcp_init(s->loop, &c->tcp);
    uv_timer_init(s->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->handles_open = 2;
    s->open_handles += 2;
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    conn_set_peer(c);
    conn_enter(c, CS_IDLE);
    conn_update_reading(c);
}

static struct http_server *server_alloc(uv_loop_t *loop, const struct http_server_opts *opts,
                                        http_handler_fn handler, void *ud)
{
    struct http_server *s = xcalloc(1, sizeof *s);
    s->loop = loop;
    s->opts = *opts;
    s->host = xstrdup(opts->host ? opts->host : "127.0.0.1");
    s->name = xstrdup(opts->name ? opts->name : "http");
    s->opts.host = s->host;
    s->opts.name = s->name;
    struct http_server_opts d;
    http_server_opts_default(&d);
    if (!s->opts.max_connections)
        s->opts.max_connections = d.max_connections;
    if (!s->opts.max_header_bytes)
        s->opts.max_header_bytes = d.max_header_bytes;
    if (!s->opts.max_body_bytes)
        s->opts.max_body_bytes = d.max_body_bytes;
    if (!s->opts.header_timeout_ms)
        s->opts.header_timeout_ms = d.header_timeout_ms;
    if (!s->opts.body_timeout_ms)
        s->opts.body_timeout_ms = d.body_timeout_ms;
    if (!s->opts.idle_timeout_ms)
        s->opts.idle_timeout_ms = d.idle_timeout_ms;
    s->handler = handler;
    s->ud = ud;
    return s;
}

static void server_maybe_free(struct http_server *s)
{
    if (!s->done_fired || s->live_conns > 0)
        return;
    buf_free(&s->session_out);
    free(s->host);
    free(s->name);
    free(s);
}

/* After a shutdown / force close: fire done once no handle of ours is open. */
static void server_check_done(struct http_server *s)
{
    if (!s->draining || s->done_fired || s->open_handles > 0)
        return;
    s->done_fired = 1;
    if (s->done)
        s->done(s->done_arg);
    server_maybe_free(s);
}

static void on_listener_close(uv_handle_t *h)
{
    struct http_server *s = h->data;
    s->open_handles--;
    server_check_done(s);
}

static void server_close_listener(struct http_server *s)
{
    if (!s->listening)
        return;
    s->listening = 0;
    uv_close((uv_handle_t *)&s->listener, on_listener_close);
}

static int server_bind(struct http_server *s, char *err, size_t errcap)
{
    struct sockaddr_storage ss;
    int rc = uv_ip4_addr(s->host, s->opts.port, (struct sockaddr_in *)&ss);
    if (rc)
        rc = uv_ip6_addr(s->host, s->opts.port, (struct sockaddr_in6 *)&ss);
    if (rc) {
        snprintf(err, errcap, "invalid listen address '%s'", s->host);
        return -1;
    }
    rc = uv_tcp_bind(&s->listener, (const struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&s->listener, 511, on_connection);
    if (rc) {
        snprintf(err, errcap, "listen on %s:%d: %s", s->host, s->opts.port, uv_strerror(rc));
        return -1;
    }
    int len = sizeof ss;
    uv_tcp_getsockname(&s->listener, (struct sockaddr *)&ss, &len);
    s->port = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                       : ntohs(((struct sockaddr_in *)&ss)->sin_port);
    return 0;
}

void http_server_opts_default(struct http_server_opts *o)
{
    memset(o, 0, sizeof *o);
    o->host = "127.0.0.1";
    o->max_connections = 256;
    o->max_header_bytes = 16384;
    o->max_body_bytes = 1024 * 1024;
    o->header_timeout_ms = 10000;
    o->body_timeout_ms = 30000;
    o->idle_timeout_ms = 60000;
    o->name = "http";
}

struct http_server *http_server_start(uv_loop_t *loop, const struct http_server_opts *opts,
                                      http_handler_fn handler, void *ud, char *err, size_t errcap)
{
    struct http_server *s = server_alloc(loop, opts, handler, ud);
    uv_tcp_init(loop, &s->listener);
    s->listener.data = s;
    s->listening = 1;
    s->open_handles = 1;
    if (server_bind(s, err, errcap) != 0) {
        s->draining = 1; /* freed by the listener's close callback; done is NULL */
        server_close_listener(s);
        return NULL;
    }
    log_info("%s: listening on %s:%d", s->name, s->host, s->port);
    return s;
}

int http_server_port(const struct http_server *s)
{
    return s->port;
}

void http_server_get_stats(const struct http_server *s, struct http_server_stats *out)
{
    *out = s->stats;
}

void http_server_shutdown(struct http_server *s, http_server_done_fn done, void *arg)
{
    if (s->shutdown_called || s->draining)
        return;
    s->shutdown_called = 1;
    s->draining = 1;
    s->done = done;
    s->done_arg = arg;
    server_close_listener(s);
    struct http_conn *next;
    for (struct http_conn *c = s->conns; c; c = next) {
        next = c->next;
        if (c->state == CS_IDLE) /* busy ones close after their response */
            conn_finish(c);
    }
}

void http_server_force_close(struct http_server *s)
{
    s->draining = 1;
    server_close_listener(s);
    while (s->conns)
        conn_close(s->conns);
}

/* ---------------------------------------------------------------------------------------
 * Socket-less session */

struct http_session *http_session_new(const struct http_server_opts *opts, http_handler_fn handler,
                                      void *ud)
{
    struct http_session *ss = xcalloc(1, sizeof *ss);
    ss->srv = server_alloc(NULL, opts, handler, ud);
    ss->conn = conn_new(ss->srv, 0);
    conn_ref(ss->conn); /* the session's */
    conn_enter(ss->conn, CS_IDLE);
    return ss;
}

int http_session_feed(struct http_session *ss, const char *data, size_t len)
{
    struct http_conn *c = ss->conn;
    if (c->state == CS_CLOSED || c->state == CS_CLOSING)
        return -1;
    buf_append(&c->in, data, len);
    conn_drive(c);
    return c->state == CS_CLOSED ? -1 : 0;
}

void http_session_eof(struct http_session *ss)
{
    struct http_conn *c = ss->conn;
    if (c->state == CS_CLOSED)
        return;
    c->eof = 1;
    conn_drive(c);
}

void http_session_expire(struct http_session *ss)
{
    conn_on_timeout(ss->conn);
}

const struct buf *http_session_output(const struct http_session *ss)
{
    return &ss->srv->session_out;
}

int http_session_closed(const struct http_session *ss)
{
    return ss->conn->state == CS_CLOSED;
}

void http_session_free(struct http_session *ss)
{
    struct http_server *s = ss->srv;
    conn_close(ss->conn);
    s->draining = 1;
    s->done_fired = 1;
    conn_unref(ss->conn); /* may free s when no request is held */
    free(ss);
}
