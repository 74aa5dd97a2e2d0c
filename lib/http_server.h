/* http_server: a small, bounded HTTP/1.1 server on libuv + nodejs http-parser, shared by the
 * worker's admin endpoints and the webhook ingest shim (which faces the network).
 *
 * What it does:
 *  - keep-alive, pipelining (answered strictly in order: while one request waits for its
 *    asynchronous response, later requests on the same connection wait unparsed), chunked
 *    request bodies (decoded), `Connection: close`, HTTP/1.0; `Upgrade` / CONNECT requests are
 * answered like any other and the connection is then closed (no protocol switch);
 *  - `Expect: 100-continue` is answered with an interim 100 before the body is read;
 *  - limits: connections (excess ones get a best-effort 503 and are closed at once), header
 *    bytes (431), body bytes (413), POST/PUT without a length (411), parse errors (400),
 *    header / body timeouts (408), idle keep-alive timeout (silent close). Every error
 *    response closes the connection; the optional on_error hook hears of each (so a
 *    caller's per-status metrics can count what its handler never saw).
 *  - memory per connection is bounded: unparsed input <= max(max_header_bytes, 8 KiB)
 *    (it only accumulates while a pipelined request waits for the one before), header storage
 *    <= max_header_bytes, body <= max_body_bytes; parsing stops while more than 64 KiB of
 *    responses wait to be written to a client that does not read.
 *
 * Handler contract: the handler runs once per complete request and must call http_respond()
 * exactly once, then or later (e.g. from a Redis reply callback). The request object stays
 * valid until that call, even if the client disconnected or the server was force-closed in
 * the meantime (the response is then dropped). An http_respond() made outside the handler
 * may itself run the handler for the next pipelined request; one made inside it never does
 * (that request is dispatched after the handler returns).
 *
 * Socket-less use (fuzzing, unit tests): the same request-processing core runs without a
 * loop through http_session_*: feed raw bytes, requests go to the handler, the bytes the
 * server would have written collect in a buffer. A libFuzzer target is:
 *
 *     static void echo(struct http_request *r, void *ud)
 *     {
 *         http_respond(r, 200, "text/plain", NULL, r->body, r->body_len);
 *     }
 *     int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
 *     {
 *         struct http_server_opts o;
 *         http_server_opts_default(&o);
 *         o.max_body_bytes = 4096;
 *         struct http_session *s = http_session_new(&o, echo, NULL);
 *         http_session_feed(s, (const char *)data, size);
 *         http_session_eof(s);
 *         http_session_free(s);
 *         return 0;
 *     }
 */
#ifndef TIERONE_HTTP_SERVER_H
#define TIERONE_HTTP_SERVER_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "buf.h"

struct http_server;

/* Called when the server answers on its own instead of handing a request to the handler:
 * status is 400, 408, 411, 413 or 431 (the connection is then closed) or 503 (a connection
 * over max_connections, closed at once). path is the request's path (without query) when
 * its headers had been received, else NULL; valid only during the call. Must not call
 * back into the server. */
typedef void (*http_error_fn)(int status, const char *path, void *ud);

/* Numeric fields left 0 take the default. */
struct http_server_opts {
    const char *host;           /* "127.0.0.1", "0.0.0.0", "::" ...; default "127.0.0.1" */
    int port;                   /* 0 = ephemeral (see http_server_port) */
    uint32_t max_connections;   /* default 256 */
    uint32_t max_header_bytes;  /* request line + headers; default 16384 (431 above) */
    uint32_t max_body_bytes;    /* decoded body; default 1 MiB (413 above) */
    uint32_t header_timeout_ms; /* first byte (or accept) to end of headers; default 10000 */
    uint32_t body_timeout_ms;   /* end of headers to end of body; default 30000 */
    uint32_t idle_timeout_ms;   /* keep-alive wait for the next request; default 60000 */
    const char *name;           /* for log lines, e.g. "admin"; default "http" */
    http_error_fn on_error;     /* optional: told about every error answer the server sends */
    void *error_ud;             /* passed to on_error */
};

/* One header as received (names keep their case; values are trimmed of surrounding blanks).
 * Both strings are NUL-terminated. */
struct http_header {
    const char *name;
    const char *value;
};

/* A complete request, handed to the handler. Everything here is owned by the server and
 * valid until http_respond() is called on it. */
struct http_request {
    const char *method;                /* "GET", "POST", ... */
    const char *path;                  /* as sent (not %-decoded), without query */
    const char *query;                 /* after '?', without the '?'; "" if none */
    const struct http_header *headers; /* in arrival order */
    size_t n_headers;
    const char *body; /* bytes after dechunking; NUL-terminated, never NULL */
    size_t body_len;
    const char *peer; /* "1.2.3.4:5678", "[::1]:5678", or "-" */
    uint64_t recv_ns; /* clock_mono_ns() when the headers were complete */
    int http_minor;   /* 0 for HTTP/1.0, 1 for HTTP/1.1 */
    void *user;       /* free for the handler's use */
};

/* Called once per complete request; must lead to exactly one http_respond(req, ...). */
typedef void (*http_handler_fn)(struct http_request *req, void *ud);
/* Called once when a shutdown / force-close has finished: every handle is closed. */
typedef void (*http_server_done_fn)(void *arg);

struct http_server_stats {
    uint64_t connections_current;  /* open client connections */
    uint64_t requests_total;       /* requests handed to the handler */
    uint64_t connections_rejected; /* refused by max_connections */
    uint64_t errors_total;         /* error answers the server sent itself (see http_error_fn) */
};

/* Fill opts with the defaults listed above. */
void http_server_opts_default(struct http_server_opts *opts);

/* Bind and listen on opts->host:opts->port and serve requests with handler(req, ud).
 * Returns the server, or NULL with a reason in err (errcap bytes) if binding failed; then
 * run the loop once so the listener handle closes (nothing else is called).
 * The server frees itself after http_server_shutdown()/http_server_force_close() finished
 * (see there); there is no separate free. */
struct http_server *http_server_start(uv_loop_t *loop, const struct http_server_opts *opts,
                                      http_handler_fn handler, void *ud, char *err, size_t errcap);
/* The bound port (useful with port 0). */
int http_server_port(const struct http_server *s);
/* Copy the counters into out (also allowed inside the shutdown done callback). */
void http_server_get_stats(const struct http_server *s, struct http_server_stats *out);

/* Graceful shutdown: stop accepting; idle connections close now; requests already being
 * received or handled finish and get their responses (with `Connection: close`), then their
 * connections close. done(arg) runs once, from the loop, when the listener and every
 * connection handle are closed. The handler must still respond to requests it holds.
 * Call at most once. After done() the caller must not touch s again. */
void http_server_shutdown(struct http_server *s, http_server_done_fn done, void *arg);
/* Close the listener and every connection now (pending writes are dropped; requests still
 * held by the handler stay valid, their responses are dropped). If http_server_shutdown()
 * was called first, its done callback still runs once; otherwise nothing is called and s
 * must not be used after this returns. Either way, once the close callbacks have run
 * (the next uv_run), no handle of the server remains on the loop. */
void http_server_force_close(struct http_server *s);

/* Answer req and release it. status: 100..999; content_type: NULL for none; extra_headers:
 * NULL or complete header lines, each ending in "\r\n" (e.g. "Allow: GET\r\n"), which must
 * not contain Content-Length or Connection; body: body_len bytes (not sent for HEAD).
 * The server adds Content-Length and, when it will close the connection, `Connection:
 * close`. req must not be used after this call. Safe at any time, also after the client
 * went away or the server was closed (the response is then dropped). */
void http_respond(struct http_request *req, int status, const char *content_type,
                  const char *extra_headers, const char *body, size_t body_len);
/* Value of the first header named name (ASCII case-insensitive), or NULL. */
const char *http_request_header(const struct http_request *req, const char *name);

/* ---- Socket-less core (see the top of this file). ---- */
struct http_session;

/* A connection-less parser using opts' limits (host/port/timeouts are ignored). */
struct http_session *http_session_new(const struct http_server_opts *opts, http_handler_fn handler,
                                      void *ud);
/* Feed len raw bytes as if received from the client; runs the handler for each request
 * that becomes complete and can be processed. Returns 0, or -1 once the connection is
 * closed (error response sent, `Connection: close` answered, or input after close). */
int http_session_feed(struct http_session *s, const char *data, size_t len);
/* The client half-closed its side (read EOF). */
void http_session_eof(struct http_session *s);
/* Simulate expiry of the connection's current timer (header/body: 408; idle: close). */
void http_session_expire(struct http_session *s);
/* Bytes the server has written so far (all responses concatenated). */
const struct buf *http_session_output(const struct http_session *s);
/* 1 once the server side would have closed the connection. */
int http_session_closed(const struct http_session *s);
/* Free the session. Requests still held by the handler stay valid until responded. */
void http_session_free(struct http_session *s);

#endif
