/* http_client: asynchronous HTTP(S) requests on a libuv loop, for every outside service
 * tierone talks to (Chatwoot, an OpenAI-compatible LLM, Slack, Linear).
 *
 * One client per loop. It drives libcurl multi handles from the loop the way curl's
 * docs/examples/multi-uv.c does: curl's socket callback starts/stops one uv_poll_t per
 * socket (kept across keep-alive reuse until curl closes the socket), its timer callback
 * drives a uv_timer_t, and finished transfers are drained with curl_multi_info_read after
 * every curl_multi_socket_action. Requests are spread over several multi handles of 128
 * transfers each (curl 7.88 scans its whole connection cache per request), unless a
 * connection limit is set, which needs one multi. Easy handles are reused
 * (curl_easy_reset). No threads of our own (curl resolves host names on short-lived
 * resolver threads unless the host is an IP literal). A request in flight costs about
 * 17 KB, almost all of it libcurl's own state (bench/README.md), so thousands can be in
 * flight at once.
 *
 * Fixed policy: TLS peer and host verification always on, no signals (CURLOPT_NOSIGNAL),
 * only http/https, no redirects unless a request asks, keep-alive connections cached per
 * host and reused by later requests.
 *
 * Not thread-safe: call everything from the loop's thread.
 *
 * Callback contract: if http_client_request() returns -1 the callback never runs;
 * otherwise it runs exactly once, never from inside http_client_request() itself, also
 * when the client is closed first (result HTTP_ERR_CANCELLED). */
#ifndef TIERONE_HTTP_CLIENT_H
#define TIERONE_HTTP_CLIENT_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct http_client;

/* Client settings; zero means "the default" for every field. With a connection limit,
 * requests beyond it queue inside curl; their total deadline still counts from submission
 * (enforced by a 50 ms sweep timer, since curl 7.88 does not time out queued transfers).
 * ca_file replaces the default CA bundle (CURLOPT_CAINFO); verification stays on. */
struct http_client_opts {
    long max_host_connections;   /* CURLMOPT_MAX_HOST_CONNECTIONS (0: unlimited) */
    long max_total_connections;  /* CURLMOPT_MAX_TOTAL_CONNECTIONS (0: unlimited) */
    long max_cached_connections; /* CURLMOPT_MAXCONNECTS per multi (0: four per transfer a
                                  * shard runs, 512; with a limit above, curl's default) */
    long recv_buffer_size;       /* CURLOPT_BUFFERSIZE per request (0: curl's 16 KiB) */
    const char *user_agent;      /* copied; default "tierone/<version>" */
    const char *ca_file;         /* CA bundle path (copied); default: the system store */
};

/* How a request ended at the transport level (the HTTP status is separate). */
enum http_result {
    HTTP_OK = 0,        /* a complete response arrived (any status, 500 included) */
    HTTP_ERR_TIMEOUT,   /* total deadline or connect timeout passed */
    HTTP_ERR_CONNECT,   /* could not resolve or connect (refused, unreachable) */
    HTTP_ERR_TOO_LARGE, /* response body over the request's max_body */
    HTTP_ERR_CANCELLED, /* the client was closed before the request finished */
    HTTP_ERR_OTHER,     /* anything else: dropped connection, garbage, TLS, bad URL */
};

/* One request. Everything is copied by http_client_request(); the caller may free or
 * reuse it as soon as that call returns. */
struct http_request {
    const char *method;         /* "GET", "POST", "PUT", "PATCH", "DELETE", ...; NULL: GET */
    const char *url;            /* required; http:// or https:// */
    const char *const *headers; /* "Name: value" lines; "Name:" removes a curl default */
    size_t nheaders;
    const void *body; /* request body (NULL: none); body_len bytes, copied */
    size_t body_len;
    uint64_t timeout_ms;         /* total deadline (CURLOPT_TIMEOUT_MS); 0: 30000 */
    uint64_t connect_timeout_ms; /* CURLOPT_CONNECTTIMEOUT_MS; 0: 10000 */
    size_t max_body;             /* response body cap in bytes; 0: 8 MiB */
    int max_redirects;           /* 0: redirects are not followed (the 3xx is the answer) */
};

/* One response header; name and value NUL-terminated, value without surrounding blanks. */
struct http_header {
    char *name;
    char *value;
};

/* What the callback gets. Owned by the client and valid only during the callback (copy
 * what you need, or take the body with http_response_steal_body). */
struct http_response {
    enum http_result result;
    const char *error; /* human-readable reason ("" when result == HTTP_OK) */
    int curl_code;     /* the CURLcode, for logs (CURLE_ABORTED_BY_CALLBACK if cancelled) */
    long status;       /* HTTP status of the last response; 0 if none arrived */
    struct http_header *headers; /* of the last response (after redirects / 100-continue) */
    size_t nheaders;
    char *body; /* response body, NUL-terminated (never NULL) */
    size_t body_len;
    uint64_t total_us; /* wall time from submission to completion, microseconds */
    /* The request's own body as sent (the client's copy, NUL-terminated; NULL when the
     * request had none), so a caller can send it again without keeping a copy of its own
     * while the request is in flight. */
    const char *request_body;
    size_t request_body_len;
};

typedef void (*http_done_cb)(struct http_response *resp, void *arg);
typedef void (*http_closed_cb)(void *arg);

/* Counters since the client was created. */
struct http_client_stats {
    uint64_t in_flight; /* submitted, callback not yet run */
    uint64_t completed; /* callbacks run (every result) */
    uint64_t failed;    /* of those, result != HTTP_OK (an HTTP 500 is not a failure here) */
};

/* Create a client on `loop` (opts may be NULL). Initialises libcurl once per process.
 * Returns the client, or NULL with a reason in *err (caller frees) if curl cannot start. */
struct http_client *http_client_new(uv_loop_t *loop, const struct http_client_opts *opts,
                                    char **err);

/* Start a request; cb(resp, arg) runs exactly once later on the loop. Returns 0, or -1
 * with a reason in *err (caller frees; err may be NULL) when the request is invalid (no
 * URL) or the client is closing; then cb never runs. */
int http_client_request(struct http_client *c, const struct http_request *req, http_done_cb cb,
                        void *arg, char **err);

/* Close asynchronously. Every pending request completes with HTTP_ERR_CANCELLED before
 * this returns (also when called from inside a completion callback). Then, on the loop,
 * cached connections and every uv handle are closed, the client is freed and
 * closed_cb(arg) runs (closed_cb may be NULL); after that uv_loop_close() can succeed.
 * New requests are refused from the moment this is called; calling it again does nothing.
 * Do not use `c` after closed_cb has run. */
void http_client_close(struct http_client *c, http_closed_cb closed_cb, void *arg);

/* The loop the client runs on. */
uv_loop_t *http_client_loop(const struct http_client *c);

/* Current counters. */
void http_client_get_stats(const struct http_client *c, struct http_client_stats *out);

/* First value of header `name` (case-insensitive), or NULL. */
const char *http_response_header(const struct http_response *r, const char *name);

/* Take the body: returns it (NUL-terminated, free() with free) and its length in *len
 * (len may be NULL); the response is left with an empty body. */
char *http_response_steal_body(struct http_response *r, size_t *len);

/* Name of a result ("ok", "timeout", "connect", "too_large", "cancelled", "other"). */
const char *http_result_name(enum http_result r);

/* Which part of a URL http_url_part returns. */
enum http_url_part {
    HTTP_URL_HOST, /* "host", or "host:port" when the URL names a port */
    HTTP_URL_PATH, /* the path, "/" when empty */
};

/* A part of an absolute http(s) URL that names a host, read with curl's URL parser. New
 * string (caller frees), or NULL when url is not such a URL (so it also validates). */
char *http_url_part(const char *url, enum http_url_part part);

/* Release libcurl's global state at process exit, after every client has closed. */
void http_client_global_cleanup(void);

#endif
