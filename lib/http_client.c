/* http_client: libcurl multi driven by a libuv loop (see http_client.h).
 *
 * Flow, in the order things happen: http_client_request() takes an easy handle (reset and
 * reused from earlier requests) and adds it to a multi; curl asks for a timer
 * (hc_on_timer_change) and for sockets (hc_on_socket); the loop reports readiness
 * (hc_on_poll, hc_on_timeout), both of which call hc_drive(): curl_multi_socket_action,
 * then drain finished transfers (hc_drain -> hc_req_finish -> the user's callback).
 *
 * Shards: without connection limits the client spreads requests over several multi
 * handles ("shards", HC_SHARD_SIZE requests in flight each, opened as needed, first fit),
 * because libcurl 7.88 does two linear scans over a multi's whole connection cache per
 * request (looking for an idle connection to reuse, and in curl_multi_remove_handle
 * looking for the last connection used): at 10,000 connections those scans were most of
 * the client's CPU time. Each shard has its own connection cache and timer. With any
 * connection limit set there is one shard, so the limits mean what curl says.
 *
 * Closing: http_client_close() cancels what is pending, then hc_maybe_finish() cleans up
 * the multis (closing cached connections), closes the poll handles and the timers, and
 * frees the client in the last close callback. `depth` counts how deeply we are inside
 * hc_drive()/close, so a multi is never cleaned up under a caller that still uses it. */
#include "http_client.h"
#include "buf.h"
#include "clock.h"
#include "log.h"
#include "xalloc.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define HC_DEFAULT_TIMEOUT_MS         30000
#define HC_DEFAULT_CONNECT_TIMEOUT_MS 10000
#define HC_DEFAULT_MAX_BODY           (8u * 1024 * 1024)
#define HC_SWEEP_MS                   50
#define HC_SWEEP_GRACE_NS             (25u * 1000 * 1000)
#define HC_RUN_NOW_PASSES             4
#define HC_SHARD_SIZE                 128

#ifndef TIERONE_VERSION
#define TIERONE_VERSION "dev"
#endif

#define hc_container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/* One poll handle per socket curl wants watched. Freed in its close callback.
 *
 * A socket we opened ourselves (hc_on_opensocket; every connection socket) keeps its poll
 * handle until curl closes it (hc_on_closesocket), also while its connection sits idle in
 * curl's cache between requests: curl says CURL_POLL_REMOVE when a transfer ends and
 * CURL_POLL_IN again when the next request reuses the connection, and re-creating the
 * handle each time costs five syscalls (uv_poll_init_socket checks the fd with
 * epoll_ctl ADD+DEL and sets O_NONBLOCK; libuv 1.44's uv_poll_start always does DEL+ADD).
 * While curl does not want the socket, a readable watch may stay armed, unreferenced (an
 * idle connection must not keep uv_run going): if it fires (the server closed the idle
 * connection) the handle is stopped; curl is not told, it checks a connection on reuse.
 * Other sockets (curl's resolver socketpair, closed without the close callback) lose
 * their handle at CURL_POLL_REMOVE. */
struct hc_sock {
    uv_poll_t poll;
    curl_socket_t fd;
    struct http_client *c;
    struct hc_shard *sh; /* whose multi watches it */
    struct hc_sock *prev, *next;
    int events;      /* what the poll handle watches (UV_READABLE | UV_WRITABLE; 0: stopped) */
    bool curl_wants; /* between curl's CURL_POLL_IN/OUT and its CURL_POLL_REMOVE */
};

/* Per file descriptor: its poll handle, and whether hc_on_opensocket opened it. */
struct hc_fd {
    struct hc_sock *sk;
    bool owned;
};

/* One multi handle with its timer (see "Shards" above). */
struct hc_shard {
    struct http_client *c;
    CURLM *multi; /* NULL once cleaned up (closing) */
    uv_timer_t timer;
    size_t active; /* requests on this multi */
    bool run_now;  /* curl's last timer request was 0 ms (see hc_on_timer_change) */
};

/* One submitted request; lives from http_client_request() until its callback returned. */
struct hc_req {
    struct hc_req *prev, *next;
    struct http_client *c;
    struct hc_shard *sh;
    CURL *easy;
    struct curl_slist *headers;
    char *body; /* the request body (our copy), body_len bytes + NUL; NULL: none */
    size_t body_len;
    size_t max_body;
    bool too_large;
    bool body_stolen;
    struct buf resp_body;
    struct http_header *hdrs;
    size_t nhdrs, caphdrs;
    http_done_cb cb;
    void *arg;
    uint64_t start_ns;
    uint64_t deadline_ns; /* start + total timeout (+ grace), for the sweeper */
    struct http_response resp;
    char errbuf[CURL_ERROR_SIZE];
};

struct http_client {
    uv_loop_t *loop;
    struct hc_shard **shards; /* nshards, created as needed; the first at http_client_new */
    size_t nshards;
    size_t shard_size;   /* requests per shard before the next is used (SIZE_MAX: one shard) */
    bool multis_cleaned; /* closing: every multi has been cleaned up */
    struct http_client_opts opts; /* limits for new multis (strings not kept here) */
    uv_timer_t sweep; /* deadline sweeper, used only with connection limits (see below) */
    bool sweeping;
    bool limited; /* connection limits are set: the sweeper is needed */
    char *user_agent;
    char *ca_file;
    long recv_buffer_size;
    struct hc_req *reqs;   /* pending requests */
    struct hc_sock *socks; /* watched sockets */
    struct hc_fd *fds;     /* indexed by fd, nfds entries (grown on demand) */
    size_t nfds;
    CURL **idle; /* easy handles of finished requests, reset, for the next ones */
    size_t nidle, capidle;
    unsigned open_handles; /* uv handles not yet through their close callback */
    int depth;
    bool closing;
    http_closed_cb closed_cb;
    void *closed_arg;
    struct http_client_stats stats;
};

static pthread_once_t hc_once = PTHREAD_ONCE_INIT;
static CURLcode hc_global_rc = CURLE_OK;

static void hc_drive(struct hc_shard *sh, curl_socket_t fd, int flags);
static void hc_on_poll(uv_poll_t *h, int status, int events);
static void hc_maybe_finish(struct http_client *c);

/* ---- process-wide init ---- */

static void hc_global_init(void)
{
    hc_global_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

void http_client_global_cleanup(void)
{
    if (hc_global_rc == CURLE_OK)
        curl_global_cleanup();
}

/* ---- sockets and the timer (curl -> libuv) ---- */

static void hc_sock_on_closed(uv_handle_t *h)
{
    struct hc_sock *sk = h->data;
    struct http_client *c = sk->c;
    free(sk);
    c->open_handles--;
    hc_maybe_finish(c);
}

/* The table entry of fd, growing the table if needed. */
static struct hc_fd *hc_fd_get(struct http_client *c, curl_socket_t fd)
{
    if ((size_t)fd >= c->nfds) {
        size_t n = c->nfds ? c->nfds : 64;
        while (n <= (size_t)fd)
            n *= 2;
        c->fds = xrealloc(c->fds, n * sizeof(*c->fds));
        memset(c->fds + c->nfds, 0, (n - c->nfds) * sizeof(*c->fds));
        c->nfds = n;
    }
    return &c->fds[fd];
}

static void hc_sock_close(struct hc_sock *sk)
{
    struct http_client *c = sk->c;
    if ((size_t)sk->fd < c->nfds && c->fds[sk->fd].sk == sk)
        c->fds[sk->fd].sk = NULL;
    if (sk->prev)
        sk->prev->next = sk->next;
    else
        c->socks = sk->next;
    if (sk->next)
        sk->next->prev = sk->prev;
    sk->prev = sk->next = NULL;
    uv_poll_stop(&sk->poll);
    uv_close((uv_handle_t *)&sk->poll, hc_sock_on_closed);
}

/* Make the poll handle watch `events` (0: stop); no syscall if it already does. */
static int hc_sock_watch(struct hc_sock *sk, int events)
{
    if (events == sk->events)
        return 0;
    int rc = events ? uv_poll_start(&sk->poll, events, hc_on_poll) : uv_poll_stop(&sk->poll);
    if (rc) {
        log_error("http_client: cannot poll socket %d: %s", (int)sk->fd, uv_strerror(rc));
        sk->events = 0;
        return -1;
    }
    sk->events = events;
    return 0;
}

static void hc_on_poll(uv_poll_t *h, int status, int events)
{
    struct hc_sock *sk = h->data;
    if (!sk->curl_wants) {
        hc_sock_watch(sk, 0); /* an idle cached connection woke up: curl checks it on reuse */
        return;
    }
    int flags = 0;
    if (status < 0)
        flags = CURL_CSELECT_ERR;
    if (events & UV_READABLE)
        flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
        flags |= CURL_CSELECT_OUT;
    hc_drive(sk->sh, sk->fd, flags);
}

static struct hc_sock *hc_sock_new(struct hc_shard *sh, curl_socket_t fd)
{
    struct http_client *c = sh->c;
    struct hc_sock *sk = xcalloc(1, sizeof(*sk));
    int rc = uv_poll_init_socket(c->loop, &sk->poll, fd);
    if (rc) {
        log_error("http_client: cannot watch socket %d: %s", (int)fd, uv_strerror(rc));
        free(sk);
        return NULL;
    }
    sk->poll.data = sk;
    sk->fd = fd;
    sk->c = c;
    sk->sh = sh;
    hc_fd_get(c, fd)->sk = sk;
    sk->next = c->socks;
    if (c->socks)
        c->socks->prev = sk;
    c->socks = sk;
    c->open_handles++;
    return sk;
}

/* CURLMOPT_SOCKETFUNCTION: start, change or stop watching one socket. */
static int hc_on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    struct hc_shard *sh = userp;
    struct http_client *c = sh->c;
    struct hc_fd *fe = hc_fd_get(c, fd);
    struct hc_sock *sk = fe->sk;

    if (what == CURL_POLL_REMOVE) {
        if (!sk)
            return 0;
        if (!fe->owned) {
            hc_sock_close(sk);
            return 0;
        }
        sk->curl_wants = false;
        uv_unref((uv_handle_t *)&sk->poll); /* an idle connection does not keep the loop alive */
        if (sk->events & UV_WRITABLE)
            hc_sock_watch(sk, 0); /* a writable watch would fire at once */
        return 0;
    }
    if (!sk) {
        sk = hc_sock_new(sh, fd);
        if (!sk)
            return -1;
    }
    sk->sh = sh; /* sockets never move between multis; kept exact anyway */
    sk->curl_wants = true;
    uv_ref((uv_handle_t *)&sk->poll);
    int events = 0;
    if (what & CURL_POLL_IN)
        events |= UV_READABLE;
    if (what & CURL_POLL_OUT)
        events |= UV_WRITABLE;
    return hc_sock_watch(sk, events);
}

/* CURLOPT_OPENSOCKETFUNCTION: what curl does itself, plus remembering that the close
 * callback below will see this socket close. */
static curl_socket_t hc_on_opensocket(void *clientp, curlsocktype purpose,
                                      struct curl_sockaddr *addr)
{
    struct http_client *c = clientp;
    curl_socket_t fd = socket(addr->family, addr->socktype, addr->protocol);
    if (fd != CURL_SOCKET_BAD) {
        struct hc_fd *fe = hc_fd_get(c, fd);
        if (fe->sk)
            hc_sock_close(fe->sk); /* its fd was closed behind our back: a stale watcher */
        fe->owned = true;
    }
    return fd;
}

/* CURLOPT_CLOSESOCKETFUNCTION: stop watching (before the fd can be reused), then close. */
static int hc_on_closesocket(void *clientp, curl_socket_t fd)
{
    struct http_client *c = clientp;
    if ((size_t)fd < c->nfds) {
        struct hc_fd *fe = &c->fds[fd];
        if (fe->sk)
            hc_sock_close(fe->sk);
        fe->owned = false;
    }
    return close(fd);
}

static void hc_on_timeout(uv_timer_t *t)
{
    struct hc_shard *sh = t->data;
    hc_drive(sh, CURL_SOCKET_TIMEOUT, 0);
}

/* CURLMOPT_TIMERFUNCTION: (re)arm or stop the one timer.
 *
 * curl asks for 0 ms ("run now") after every curl_multi_add_handle. Two libuv traps:
 * a 0 ms timer started from a timer callback runs again in the same pass, without
 * polling for I/O (the loop's clock does not move during the pass), so the loop could stay
 * in its timer phase; and when many sockets are ready, one poll phase handles up to 48
 * batches of 1024 events before timers run again, so requests submitted from completion
 * callbacks would wait that long to be sent. So "now" arms a 1 ms timer (as curl's
 * docs/examples/multi-uv.c does) and sets run_now, which hc_drive() acts on at once. */
static int hc_on_timer_change(CURLM *multi, long timeout_ms, void *userp)
{
    struct hc_shard *sh = userp;
    sh->run_now = timeout_ms == 0;
    if (timeout_ms < 0)
        uv_timer_stop(&sh->timer);
    else
        uv_timer_start(&sh->timer, hc_on_timeout, timeout_ms > 0 ? (uint64_t)timeout_ms : 1, 0);
    return 0;
}

static void hc_timer_on_closed(uv_handle_t *h)
{
    struct http_client *c = h->data;
    c->open_handles--;
    hc_maybe_finish(c);
}

static void hc_shard_timer_on_closed(uv_handle_t *h)
{
    struct hc_shard *sh = h->data;
    struct http_client *c = sh->c;
    free(sh);
    c->open_handles--;
    hc_maybe_finish(c);
}

/* A new multi with the client's settings, appended to the shards; NULL if curl fails. */
static struct hc_shard *hc_shard_new(struct http_client *c)
{
    CURLM *multi = curl_multi_init();
    if (!multi)
        return NULL;
    struct hc_shard *sh = xcalloc(1, sizeof(*sh));
    sh->c = c;
    sh->multi = multi;
    uv_timer_init(c->loop, &sh->timer);
    sh->timer.data = sh;
    c->open_handles++;
    curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, hc_on_socket);
    curl_multi_setopt(multi, CURLMOPT_SOCKETDATA, sh);
    curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, hc_on_timer_change);
    curl_multi_setopt(multi, CURLMOPT_TIMERDATA, sh);
    if (c->opts.max_host_connections > 0)
        curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, c->opts.max_host_connections);
    if (c->opts.max_total_connections > 0)
        curl_multi_setopt(multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, c->opts.max_total_connections);
    /* curl's default cache keeps four connections per transfer still running, so as a
     * burst drained its connections were closed and the next burst opened them again.
     * A shard keeps four per transfer it can run (several hosts: the model, Chatwoot...). */
    long keep = c->opts.max_cached_connections;
    if (keep <= 0 && !c->limited)
        keep = 4 * HC_SHARD_SIZE;
    if (keep > 0)
        curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, keep);
    c->shards = xrealloc(c->shards, (c->nshards + 1) * sizeof(*c->shards));
    c->shards[c->nshards++] = sh;
    return sh;
}

/* The first shard with room (opening one if all are full); NULL if curl fails. First fit
 * keeps a light load on the first shard, so its cached connections get reused. */
static struct hc_shard *hc_shard_pick(struct http_client *c)
{
    for (size_t i = 0; i < c->nshards; i++)
        if (c->shards[i]->active < c->shard_size)
            return c->shards[i];
    return hc_shard_new(c);
}

/* ---- per-request data callbacks (curl -> us) ---- */

static void hc_req_clear_headers(struct hc_req *r)
{
    for (size_t i = 0; i < r->nhdrs; i++) {
        free(r->hdrs[i].name);
        free(r->hdrs[i].value);
    }
    r->nhdrs = 0;
}

static bool hc_is_blank(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n';
}

/* CURLOPT_HEADERFUNCTION: one header line per call; a status line starts a new set. */
static size_t hc_on_header(char *p, size_t size, size_t n, void *ud)
{
    struct hc_req *r = ud;
    size_t len = size * n;

    if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) {
        hc_req_clear_headers(r);
        return len;
    }
    const char *colon = memchr(p, ':', len);
    if (!colon || colon == p)
        return len; /* the blank line ending the headers, or junk */
    size_t nlen = (size_t)(colon - p);
    const char *v = colon + 1, *end = p + len;
    while (v < end && hc_is_blank(*v))
        v++;
    while (end > v && hc_is_blank(end[-1]))
        end--;
    if (r->nhdrs == r->caphdrs) {
        r->caphdrs = r->caphdrs ? r->caphdrs * 2 : 8;
        r->hdrs = xrealloc(r->hdrs, r->caphdrs * sizeof(*r->hdrs));
    }
    r->hdrs[r->nhdrs].name = xstrndup(p, nlen);
    r->hdrs[r->nhdrs].value = xstrndup(v, (size_t)(end - v));
    r->nhdrs++;
    return len;
}

/* CURLOPT_WRITEFUNCTION: append body bytes, refusing to grow past max_body. */
static size_t hc_on_write(char *p, size_t size, size_t n, void *ud)
{
    struct hc_req *r = ud;
    size_t len = size * n;
    if (len > r->max_body - r->resp_body.len) {
        r->too_large = true;
        return 0; /* makes curl stop with CURLE_WRITE_ERROR */
    }
    buf_append(&r->resp_body, p, len);
    return len;
}

/* ---- completion ---- */

static enum http_result hc_map_result(const struct hc_req *r, CURLcode rc)
{
    if (r->too_large || rc == CURLE_FILESIZE_EXCEEDED)
        return HTTP_ERR_TOO_LARGE;
    switch (rc) {
    case CURLE_OK:
        return HTTP_OK;
    case CURLE_OPERATION_TIMEDOUT:
        return HTTP_ERR_TIMEOUT;
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        return HTTP_ERR_CONNECT;
    default:
        return HTTP_ERR_OTHER;
    }
}

/* An easy handle for a new request: a reset one from the idle list, or a new one. */
static CURL *hc_easy_get(struct http_client *c)
{
    if (c->nidle > 0)
        return c->idle[--c->nidle];
    return curl_easy_init();
}

/* Keep a finished request's easy handle (already off the multi) for the next request:
 * curl_easy_init + curl_easy_cleanup per request cost more than curl_easy_reset. The
 * list grows to the most requests ever in flight at once and is freed on close. */
static void hc_easy_put(struct http_client *c, CURL *e)
{
    if (c->closing) {
        curl_easy_cleanup(e);
        return;
    }
    curl_easy_reset(e);
    if (c->nidle == c->capidle) {
        c->capidle = c->capidle ? c->capidle * 2 : 64;
        c->idle = xrealloc(c->idle, c->capidle * sizeof(*c->idle));
    }
    c->idle[c->nidle++] = e;
}

static void hc_req_free(struct hc_req *r)
{
    if (r->easy)
        hc_easy_put(r->c, r->easy);
    curl_slist_free_all(r->headers);
    free(r->body);
    if (!r->body_stolen)
        buf_free(&r->resp_body);
    hc_req_clear_headers(r);
    free(r->hdrs);
    free(r);
}

static void hc_req_unlink(struct hc_req *r)
{
    struct http_client *c = r->c;
    if (r->prev)
        r->prev->next = r->next;
    else
        c->reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->prev = r->next = NULL;
}

/* Take r off the multi and the list, fill in its response, run the callback, free it. */
static void hc_req_finish(struct hc_req *r, CURLcode rc, bool cancelled)
{
    struct http_client *c = r->c;
    struct http_response *resp = &r->resp;

    curl_multi_remove_handle(r->sh->multi, r->easy);
    r->sh->active--;
    hc_req_unlink(r);

    resp->curl_code = (int)rc;
    resp->result = cancelled ? HTTP_ERR_CANCELLED : hc_map_result(r, rc);
    if (resp->result == HTTP_OK)
        resp->error = "";
    else if (cancelled)
        resp->error = "cancelled: the HTTP client was closed";
    else if (resp->result == HTTP_ERR_TOO_LARGE) {
        snprintf(r->errbuf, sizeof(r->errbuf), "response body larger than %zu bytes", r->max_body);
        resp->error = r->errbuf;
    } else
        resp->error = r->errbuf[0] ? r->errbuf : curl_easy_strerror(rc);
    long status = 0;
    curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
    resp->status = status;
    resp->headers = r->hdrs;
    resp->nheaders = r->nhdrs;
    if (!r->resp_body.data)
        buf_reserve(&r->resp_body, 0);
    resp->body = r->resp_body.data;
    resp->body_len = r->resp_body.len;
    resp->total_us = (clock_mono_ns() - r->start_ns) / 1000;
    resp->request_body = r->body;
    resp->request_body_len = r->body_len;

    c->stats.in_flight--;
    c->stats.completed++;
    if (resp->result != HTTP_OK)
        c->stats.failed++;
    r->cb(resp, r->arg);
    hc_req_free(r);
}

static void hc_drain(struct hc_shard *sh)
{
    CURLMsg *m;
    int left;
    while (sh->multi && (m = curl_multi_info_read(sh->multi, &left))) {
        if (m->msg != CURLMSG_DONE)
            continue;
        CURLcode rc = m->data.result;
        char *priv = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &priv);
        hc_req_finish((struct hc_req *)priv, rc, false);
    }
}

/* Tell curl what happened on fd (or that its timer fired), then deliver finished transfers. */
static void hc_drive(struct hc_shard *sh, curl_socket_t fd, int flags)
{
    struct http_client *c = sh->c;
    if (!sh->multi)
        return;
    int running = 0;
    c->depth++;
    curl_multi_socket_action(sh->multi, fd, flags, &running);
    hc_drain(sh);
    /* Start what the callbacks just submitted (see hc_on_timer_change); bounded, the
     * timer catches up with the rest. */
    for (int i = 0; i < HC_RUN_NOW_PASSES && sh->multi && sh->run_now; i++) {
        sh->run_now = false;
        curl_multi_socket_action(sh->multi, CURL_SOCKET_TIMEOUT, 0, &running);
        hc_drain(sh);
    }
    c->depth--;
    hc_maybe_finish(c);
}

/* When closing and nothing above us uses a multi: clean them up, close every handle; when
 * the last handle has closed, free the client and tell the owner. */
static void hc_maybe_finish(struct http_client *c)
{
    if (!c->closing || c->depth > 0)
        return;
    if (!c->multis_cleaned) {
        c->multis_cleaned = true;
        c->depth++; /* the close callbacks below must not free c under us */
        while (c->nidle > 0)
            curl_easy_cleanup(c->idle[--c->nidle]);
        for (size_t i = 0; i < c->nshards; i++) {
            struct hc_shard *sh = c->shards[i];
            curl_multi_cleanup(sh->multi); /* closes cached connections (hc_on_closesocket) */
            sh->multi = NULL;
            uv_close((uv_handle_t *)&sh->timer, hc_shard_timer_on_closed);
        }
        free(c->shards);
        c->shards = NULL;
        c->nshards = 0;
        while (c->socks)
            hc_sock_close(c->socks);
        uv_close((uv_handle_t *)&c->sweep, hc_timer_on_closed);
        c->depth--;
        return;
    }
    if (c->open_handles > 0)
        return;
    http_closed_cb cb = c->closed_cb;
    void *arg = c->closed_arg;
    free(c->user_agent);
    free(c->ca_file);
    free(c->idle);
    free(c->fds);
    free(c);
    if (cb)
        cb(arg);
}

/* ---- deadline sweeper ----
 * With CURLMOPT_MAX_HOST_CONNECTIONS / MAX_TOTAL_CONNECTIONS, a transfer waits in curl's
 * PENDING state for a free connection, and curl 7.88 does not apply CURLOPT_TIMEOUT_MS
 * there. So when limits are set, a timer checks every HC_SWEEP_MS for requests past
 * their deadline and completes them with HTTP_ERR_TIMEOUT. */

static void hc_on_sweep(uv_timer_t *t)
{
    struct http_client *c = t->data;
    if (!c->reqs || c->multis_cleaned) {
        uv_timer_stop(&c->sweep);
        c->sweeping = false;
        return;
    }
    uint64_t now = clock_mono_ns();
    c->depth++;
    struct hc_req *next;
    for (struct hc_req *r = c->reqs; r && !c->closing; r = next) {
        next = r->next; /* a callback may add requests (at the head) or close the client */
        if (now < r->deadline_ns)
            continue;
        snprintf(r->errbuf, sizeof(r->errbuf),
                 "Operation timed out after %llu milliseconds (waiting for a connection)",
                 (unsigned long long)((now - r->start_ns) / 1000000));
        hc_req_finish(r, CURLE_OPERATION_TIMEDOUT, false);
    }
    c->depth--;
    hc_maybe_finish(c);
}

static void hc_sweep_arm(struct http_client *c)
{
    if (!c->sweeping) {
        uv_timer_start(&c->sweep, hc_on_sweep, HC_SWEEP_MS, HC_SWEEP_MS);
        c->sweeping = true;
    }
}

/* ---- public API ---- */

struct http_client *http_client_new(uv_loop_t *loop, const struct http_client_opts *opts,
                                    char **err)
{
    static const struct http_client_opts defaults = {0};
    if (!opts)
        opts = &defaults;
    pthread_once(&hc_once, hc_global_init);
    if (hc_global_rc != CURLE_OK) {
        if (err)
            *err = xasprintf("curl_global_init: %s", curl_easy_strerror(hc_global_rc));
        return NULL;
    }
    struct http_client *c = xcalloc(1, sizeof(*c));
    c->loop = loop;
    c->opts = *opts;
    c->opts.user_agent = NULL;
    c->opts.ca_file = NULL;
    c->user_agent = xstrdup(opts->user_agent ? opts->user_agent : "tierone/" TIERONE_VERSION);
    c->ca_file = xstrdup(opts->ca_file);
    c->recv_buffer_size = opts->recv_buffer_size;
    c->limited = opts->max_host_connections > 0 || opts->max_total_connections > 0;
    c->shard_size =
        c->limited || opts->max_cached_connections > 0 ? SIZE_MAX : (size_t)HC_SHARD_SIZE;
    if (!hc_shard_new(c)) {
        if (err)
            *err = xstrdup("curl_multi_init failed");
        free(c->user_agent);
        free(c->ca_file);
        free(c);
        return NULL;
    }
    uv_timer_init(loop, &c->sweep);
    c->sweep.data = c;
    c->open_handles++;
    return c;
}

/* Method and body: a body always goes through POSTFIELDS (curl then sends it with a
 * Content-Length); a method other than POST with a body is a custom request. */
static void hc_req_set_method(struct hc_req *r, const struct http_request *req)
{
    const char *m = req->method ? req->method : "GET";
    CURL *e = r->easy;
    if (req->body) {
        r->body = xmalloc(req->body_len + 1);
        memcpy(r->body, req->body, req->body_len);
        r->body[req->body_len] = '\0';
        r->body_len = req->body_len;
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->body);
        if (strcmp(m, "POST") != 0)
            curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, m);
    } else if (strcmp(m, "GET") == 0) {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    } else if (strcmp(m, "HEAD") == 0) {
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    } else if (strcmp(m, "POST") == 0) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, "");
    } else {
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, m);
    }
}

static void hc_req_set_options(struct hc_req *r, const struct http_request *req)
{
    struct http_client *c = r->c;
    CURL *e = r->easy;
    uint64_t timeout = req->timeout_ms ? req->timeout_ms : HC_DEFAULT_TIMEOUT_MS;
    uint64_t ctimeout =
        req->connect_timeout_ms ? req->connect_timeout_ms : HC_DEFAULT_CONNECT_TIMEOUT_MS;

    curl_easy_setopt(e, CURLOPT_URL, req->url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)r);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, hc_on_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, hc_on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)timeout);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)ctimeout);
    curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)r->max_body);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, hc_on_opensocket);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, c);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, hc_on_closesocket);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, c);
    curl_easy_setopt(e, CURLOPT_USERAGENT, c->user_agent);
    if (c->ca_file)
        curl_easy_setopt(e, CURLOPT_CAINFO, c->ca_file);
    if (c->recv_buffer_size > 0)
        curl_easy_setopt(e, CURLOPT_BUFFERSIZE, c->recv_buffer_size);
    if (req->max_redirects > 0) {
        curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 1L);
        curl_easy_setopt(e, CURLOPT_MAXREDIRS, (long)req->max_redirects);
    }
    /* No "Expect: 100-continue" round trip for large bodies. */
    r->headers = curl_slist_append(r->headers, "Expect:");
    for (size_t i = 0; i < req->nheaders; i++)
        r->headers = curl_slist_append(r->headers, req->headers[i]);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->headers);
    hc_req_set_method(r, req);
}

int http_client_request(struct http_client *c, const struct http_request *req, http_done_cb cb,
                        void *arg, char **err)
{
    const char *why = NULL;
    if (c->closing)
        why = "the HTTP client is closing";
    else if (!req->url || !*req->url)
        why = "request has no URL";
    else if (!cb)
        why = "request has no callback";
    else if (req->nheaders && !req->headers)
        why = "request has nheaders but no headers";
    if (why) {
        if (err)
            *err = xstrdup(why);
        return -1;
    }

    struct hc_req *r = xcalloc(1, sizeof(*r));
    r->c = c;
    r->cb = cb;
    r->arg = arg;
    r->max_body = req->max_body ? req->max_body : HC_DEFAULT_MAX_BODY;
    r->start_ns = clock_mono_ns();
    r->deadline_ns = r->start_ns +
                     (req->timeout_ms ? req->timeout_ms : HC_DEFAULT_TIMEOUT_MS) * 1000000u +
                     HC_SWEEP_GRACE_NS;
    r->sh = hc_shard_pick(c);
    if (!r->sh) {
        why = "curl_multi_init failed";
        goto out;
    }
    r->easy = hc_easy_get(c);
    if (!r->easy) {
        why = "curl_easy_init failed";
        goto out;
    }
    hc_req_set_options(r, req);
    CURLMcode mrc = curl_multi_add_handle(r->sh->multi, r->easy);
    if (mrc != CURLM_OK) {
        why = curl_multi_strerror(mrc);
        goto out;
    }
    r->sh->active++;
    r->next = c->reqs;
    if (c->reqs)
        c->reqs->prev = r;
    c->reqs = r;
    c->stats.in_flight++;
    if (c->limited)
        hc_sweep_arm(c);
    return 0;
out:
    if (err)
        *err = xstrdup(why);
    hc_req_free(r);
    return -1;
}

void http_client_close(struct http_client *c, http_closed_cb closed_cb, void *arg)
{
    if (c->closing)
        return;
    c->closing = true;
    c->closed_cb = closed_cb;
    c->closed_arg = arg;
    c->depth++;
    while (c->reqs)
        hc_req_finish(c->reqs, CURLE_ABORTED_BY_CALLBACK, true);
    c->depth--;
    hc_maybe_finish(c);
}

void http_client_get_stats(const struct http_client *c, struct http_client_stats *out)
{
    *out = c->stats;
}

const char *http_response_header(const struct http_response *r, const char *name)
{
    for (size_t i = 0; i < r->nheaders; i++)
        if (strcasecmp(r->headers[i].name, name) == 0)
            return r->headers[i].value;
    return NULL;
}

char *http_response_steal_body(struct http_response *resp, size_t *len)
{
    struct hc_req *r = hc_container_of(resp, struct hc_req, resp);
    char *body;
    if (r->body_stolen) {
        body = xstrdup("");
    } else {
        body = buf_steal(&r->resp_body);
        r->body_stolen = true;
    }
    if (len)
        *len = resp->body_len;
    resp->body = (char *)"";
    resp->body_len = 0;
    return body;
}

const char *http_result_name(enum http_result r)
{
    switch (r) {
    case HTTP_OK:
        return "ok";
    case HTTP_ERR_TIMEOUT:
        return "timeout";
    case HTTP_ERR_CONNECT:
        return "connect";
    case HTTP_ERR_TOO_LARGE:
        return "too_large";
    case HTTP_ERR_CANCELLED:
        return "cancelled";
    case HTTP_ERR_OTHER:
        return "other";
    }
    return "unknown";
}

uv_loop_t *http_client_loop(const struct http_client *c)
{
    return c->loop;
}

char *http_url_part(const char *url, enum http_url_part part)
{
    char *scheme = NULL, *host = NULL, *extra = NULL, *out = NULL;
    CURLU *u = curl_url();
    /* curl 7.88 reads "https:///x" as host "x": an empty authority is refused here. */
    const char *auth = url ? strstr(url, "://") : NULL;
    if (!auth || !auth[3] || auth[3] == '/' || curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK)
        goto out;
    if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0))
        goto out;
    if (curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK || !*host)
        goto out;
    if (part == HTTP_URL_PATH)
        out = xstrdup(curl_url_get(u, CURLUPART_PATH, &extra, 0) == CURLUE_OK ? extra : "/");
    else if (curl_url_get(u, CURLUPART_PORT, &extra, 0) == CURLUE_OK)
        out = xasprintf("%s:%s", host, extra);
    else
        out = xstrdup(host);
out:
    curl_free(scheme);
    curl_free(host);
    curl_free(extra);
    curl_url_cleanup(u);
    return out;
}
