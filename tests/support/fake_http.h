/* fake_http: a scriptable HTTP/1.1 server for tests and benchmarks, the base of the fake
 * Chatwoot / LLM / Slack / Linear servers.
 *
 * It runs its own libuv loop on a background thread (so it never interferes with the loop
 * under test) and listens on an ephemeral port on 127.0.0.1. Keep-alive and pipelined
 * requests are supported (answers go out in request order). Requests are parsed with
 * http-parser.
 *
 * Two modes:
 *  - routes: fake_http_route() registers a handler for a method and path; the handler sees
 *    the request and fills the response, and may ask for a delay, a dropped connection
 *    or a garbage answer. Requests no route matches get 404.
 *  - plain (opts.plain): every request gets the same answer after a fixed delay, driven by
 *    uv timers, for thousands of concurrent connections (benchmarks).
 *
 * Every request is counted and (unless opts.no_record) recorded; the test thread reads
 * the records through the functions below, which lock a mutex. Handlers run on the fake's
 * thread: whatever they share with the test must be synchronised by the test (constants
 * and atomics are the easy way). */
#ifndef TIERONE_FAKE_HTTP_H
#define TIERONE_FAKE_HTTP_H

#include "buf.h"

#include <stdbool.h>
#include <stddef.h>

struct fake_http;

struct fake_http_header {
    char *name; /* as sent */
    char *value;
};

/* A request as the fake received it. Recorded requests are immutable and stay valid until
 * fake_http_free(). */
struct fake_http_request {
    char *method; /* "GET", "POST", ... */
    char *path;   /* "/api/v1/x" (without the query) */
    char *query;  /* "a=1&b=2" or "" */
    struct fake_http_header *headers;
    size_t nheaders;
    char *body; /* NUL-terminated (never NULL) */
    size_t body_len;
    unsigned conn_id;         /* 1-based number of the connection it came on */
    size_t seq;               /* 0-based arrival order over the whole server */
    unsigned long long at_ns; /* CLOCK_MONOTONIC when it was fully read (for latencies) */
};

enum fake_http_action {
    FAKE_HTTP_ANSWER = 0, /* send the response */
    FAKE_HTTP_DROP,       /* close the connection without answering */
    FAKE_HTTP_GARBAGE,    /* send `body` verbatim (or a non-HTTP line if empty), then close */
};

/* What a handler fills in. Starts as 200, no headers, empty body, no delay. */
struct fake_http_response {
    int status;
    struct buf headers; /* extra header lines, "Name: value\r\n" each (use ..._header) */
    struct buf body;
    unsigned delay_ms; /* wait this long before acting (answer, drop or garbage) */
    enum fake_http_action action;
    bool close;             /* send "Connection: close" and close after the answer */
    bool no_content_length; /* no Content-Length: body ends at close (implies close) */
};

typedef void (*fake_http_handler)(const struct fake_http_request *req,
                                  struct fake_http_response *resp, void *arg);

struct fake_http_opts {
    bool plain;                     /* every request gets the plain answer below */
    int plain_status;               /* 0: 200 */
    const char *plain_body;         /* NULL: "{}" */
    const char *plain_content_type; /* NULL: "application/json" */
    unsigned plain_delay_ms;
    bool no_record; /* count requests but keep no records (benchmarks) */
};

/* Start a server (opts may be NULL: routes mode, recording). Returns NULL (and logs) if
 * it cannot listen or start its thread. */
struct fake_http *fake_http_start(const struct fake_http_opts *opts);

/* Stop the server: close every connection (pending delayed answers are dropped), join the
 * thread, free everything, records included. NULL is a no-op. */
void fake_http_free(struct fake_http *f);

/* The port, and the base URL "http://127.0.0.1:PORT" (valid until fake_http_free). */
int fake_http_port(const struct fake_http *f);
const char *fake_http_url(const struct fake_http *f);

/* Route requests with `method` (NULL or "*": any) and `path` to handler(req, resp, arg).
 * `path` is matched against the path without the query: exactly, or as a prefix when it
 * ends in '*' (like "/api/v1/accounts/" followed by a star). The route registered last is tried
 * first, so a test can override a general route with a specific one. Callable at any time
 * (thread-safe). */
void fake_http_route(struct fake_http *f, const char *method, const char *path,
                     fake_http_handler handler, void *arg);

/* Route to a canned answer: status, Content-Type (NULL: none) and body (NULL: empty), all
 * copied. */
void fake_http_route_static(struct fake_http *f, const char *method, const char *path, int status,
                            const char *content_type, const char *body);

/* Add a response header (value formatted printf-style). */
void fake_http_response_header(struct fake_http_response *r, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Replace the response body with the NUL-terminated string s. */
void fake_http_response_body(struct fake_http_response *r, const char *s);

/* First value of request header `name` (case-insensitive), or NULL. */
const char *fake_http_request_header(const struct fake_http_request *r, const char *name);

/* Requests received so far (counted when fully read, before the answer goes out). */
size_t fake_http_count(struct fake_http *f);
/* The i-th recorded request (arrival order), or NULL if there is none (yet). */
const struct fake_http_request *fake_http_request_at(struct fake_http *f, size_t i);
/* Wait until at least n requests have arrived: 0, or -1 when timeout_ms passed first. */
int fake_http_wait(struct fake_http *f, size_t n, unsigned timeout_ms);
/* Connections accepted so far, and how many are open now. */
unsigned fake_http_connections(struct fake_http *f);
unsigned fake_http_open_connections(struct fake_http *f);

#endif
