/* redis: async Redis connection with reconnect, timeouts and scripts (see redis.h).
 *
 * State machine: DOWN -> CONNECTING -> HANDSHAKE (AUTH, SELECT, CLIENT SETNAME) -> UP.
 * Any failure goes back to DOWN and arms the reconnect timer with backoff. CLOSING is
 * final. Every command in flight is a struct redis_cmd on a FIFO list, in send order (Redis
 * answers in order), so the watchdog only looks at the head to find a hung command. */
#include "redis.h"

#include "defer.h"
#include "log.h"
#include "clock.h"
#include "xalloc.h"

#include <hiredis/async.h>
#include <openssl/sha.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* A connection counts as working again after this long without a failover reply. */
#define HEALTHY_AFTER_MS 1000

enum redis_state { R_DOWN, R_CONNECTING, R_HANDSHAKE, R_UP, R_CLOSING };

static const char *const redis_state_names[] = {"down", "connecting", "handshake", "up", "closing"};

struct redis_cmd {
    struct redis *r;
    redis_reply_cb cb;
    void *data;
    uint64_t sent_ms;
    struct redis_cmd *prev, *next;
    /* For EVALSHA: what is needed to resend as EVAL after NOSCRIPT. */
    struct redis_script *script;
    int argc;
    char **argv;
    size_t *lens;
};

struct redis {
    uv_loop_t *loop;
    struct redis_url url;
    char *name;
    uint32_t connect_timeout_ms;
    uint32_t command_timeout_ms;
    redis_state_cb on_state;
    void *state_data;

    enum redis_state state;
    redisAsyncContext *ac;
    uint64_t connect_started_ms;
    uint32_t backoff_ms;
    int handshake_left;
    int warned_down; /* the "down" log line was written for this outage */
    int healthy;     /* up for HEALTHY_AFTER_MS with no failover reply: the outage is over */
    uint64_t up_since_ms;

    struct redis_cmd *head, *tail; /* commands in flight, oldest first */
    size_t pending;

    uv_timer_t reconnect_timer;
    uv_timer_t watchdog;
    int handles_open;
    void (*closed_cb)(void *data);
    void *closed_data;
};

static void redis_connect(struct redis *r);
static void redis_drop(struct redis *r, const char *why);

/* ---- event adapter ------------------------------------------------------------------
 * Our own libuv binding for hiredis's event hooks. Debian's hiredis 0.14 ships one whose
 * poll callback returns on an error status; libuv reports a reset socket that way (and
 * stops the poll), so that adapter never tells hiredis the connection is gone and every
 * command hangs until the command timeout. Here a poll error drops the connection at once.
 *
 * Writes are deferred, not polled for: hiredis asks for a write on every command, and a
 * connected socket almost always has room. So a command marks the connection dirty and the
 * commands of one loop iteration are written together at its end (lib/defer.h). Only a
 * write the socket cannot take whole, or a connect in progress, waits for POLLOUT. That
 * saves two epoll_ctl calls and one wake-up per batch of commands, the larger part of the
 * adapter's cost under load. */

struct redis_ev {
    uv_poll_t poll;
    struct defer flush;    /* writes the iteration's commands; armed while they wait */
    redisAsyncContext *ac; /* NULL once hiredis cleaned up */
    int events;            /* what the poll watches */
    int flushing;          /* inside redisAsyncHandleWrite from a flush */
    int open_handles;      /* the poll and the defer; freed when both closed */
};

static void redis_ev_closed(void *arg)
{
    struct redis_ev *e = arg;
    if (--e->open_handles == 0)
        free(e);
}

static void redis_ev_on_poll_closed(uv_handle_t *h)
{
    redis_ev_closed(h->data);
}

static void redis_ev_on_poll(uv_poll_t *h, int status, int events)
{
    struct redis_ev *e = h->data;
    if (!e->ac)
        return;
    if (status < 0) {
        struct redis *r = e->ac->data;
        if (r && r->ac == e->ac)
            redis_drop(r, uv_strerror(status));
        return;
    }
    if (events & UV_READABLE)
        redisAsyncHandleRead(e->ac);
    if (e->ac && (events & UV_WRITABLE))
        redisAsyncHandleWrite(e->ac);
}

static void redis_ev_update(struct redis_ev *e, int add, int remove)
{
    if (!e->ac)
        return;
    int events = (e->events | add) & ~remove;
    /* hiredis asks for reading again on every command; libuv's uv_poll_start restarts the
     * watcher even when nothing changes (an epoll_ctl DEL, then an ADD on the next poll). */
    if (events == e->events)
        return;
    e->events = events;
    if (e->events)
        uv_poll_start(&e->poll, e->events, redis_ev_on_poll);
    else
        uv_poll_stop(&e->poll);
}

static void redis_ev_flush(void *arg)
{
    struct redis_ev *e = arg;
    if (!e->ac)
        return;
    e->flushing = 1;
    redisAsyncHandleWrite(e->ac); /* may clean up: e->ac is then NULL */
    e->flushing = 0;
}

static void redis_ev_add_read(void *p)
{
    redis_ev_update(p, UV_READABLE, 0);
}
static void redis_ev_del_read(void *p)
{
    redis_ev_update(p, 0, UV_READABLE);
}
static void redis_ev_add_write(void *p)
{
    struct redis_ev *e = p;
    if (!e->ac)
        return;
    /* A connect in progress, or a flush that left bytes over: wait until writable. */
    if (e->flushing || !(e->ac->c.flags & REDIS_CONNECTED) || (e->events & UV_WRITABLE)) {
        redis_ev_update(e, UV_WRITABLE, 0);
        return;
    }
    defer_arm(&e->flush);
}
static void redis_ev_del_write(void *p)
{
    redis_ev_update(p, 0, UV_WRITABLE);
}

static void redis_ev_cleanup(void *p)
{
    struct redis_ev *e = p;
    e->ac = NULL;
    uv_poll_stop(&e->poll);
    uv_close((uv_handle_t *)&e->poll, redis_ev_on_poll_closed);
    defer_close(&e->flush, redis_ev_closed);
}

static int redis_ev_attach(redisAsyncContext *ac, uv_loop_t *loop)
{
    struct redis_ev *e = xcalloc(1, sizeof *e);
    if (uv_poll_init_socket(loop, &e->poll, ac->c.fd) != 0) {
        free(e);
        return -1;
    }
    defer_init(&e->flush, loop, redis_ev_flush, e);
    e->poll.data = e;
    e->open_handles = 2;
    e->ac = ac;
    ac->ev.data = e;
    ac->ev.addRead = redis_ev_add_read;
    ac->ev.delRead = redis_ev_del_read;
    ac->ev.addWrite = redis_ev_add_write;
    ac->ev.delWrite = redis_ev_del_write;
    ac->ev.cleanup = redis_ev_cleanup;
    return 0;
}

/* ---- URL ---------------------------------------------------------------------------- */

int redis_url_parse(const char *url, struct redis_url *out, const char **err)
{
    memset(out, 0, sizeof *out);
    out->port = 6379;
    const char *p;
    if (strncmp(url, "redis://", 8) == 0) {
        p = url + 8;
    } else {
        *err = "must start with redis://";
        return -1;
    }
    const char *at = strrchr(p, '@');
    const char *hostpart = p;
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (colon) {
            if (colon > p)
                out->user = xstrndup(p, (size_t)(colon - p));
            out->password = xstrndup(colon + 1, (size_t)(at - colon - 1));
        } else {
            out->password = xstrndup(p, (size_t)(at - p));
        }
        hostpart = at + 1;
    }
    size_t hostlen = strcspn(hostpart, ":/");
    if (hostlen == 0) {
        *err = "has no host";
        goto fail;
    }
    out->host = xstrndup(hostpart, hostlen);
    const char *rest = hostpart + hostlen;
    if (*rest == ':') {
        char *end;
        long port = strtol(rest + 1, &end, 10);
        if (end == rest + 1 || port <= 0 || port > 65535 || (*end && *end != '/')) {
            *err = "has an invalid port";
            goto fail;
        }
        out->port = (int)port;
        rest = end;
    }
    if (*rest == '/' && rest[1]) {
        char *end;
        long db = strtol(rest + 1, &end, 10);
        if (end == rest + 1 || *end || db < 0 || db > 100000) {
            *err = "has an invalid database number";
            goto fail;
        }
        out->db = (int)db;
    }
    return 0;
fail:
    redis_url_free(out);
    return -1;
}

void redis_url_free(struct redis_url *u)
{
    free(u->host);
    free(u->user);
    free(u->password);
    memset(u, 0, sizeof *u);
}

/* ---- command list ------------------------------------------------------------------- */

static void redis_cmd_unlink(struct redis *r, struct redis_cmd *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        r->head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        r->tail = c->prev;
    r->pending--;
}

static struct redis_cmd *redis_cmd_new(struct redis *r, redis_reply_cb cb, void *data)
{
    struct redis_cmd *c = xcalloc(1, sizeof *c);
    c->r = r;
    c->cb = cb;
    c->data = data;
    c->sent_ms = clock_mono_ms();
    c->prev = r->tail;
    if (r->tail)
        r->tail->next = c;
    else
        r->head = c;
    r->tail = c;
    r->pending++;
    return c;
}

static void redis_cmd_free(struct redis_cmd *c)
{
    for (int i = 0; i < c->argc; i++)
        free(c->argv[i]);
    free(c->argv);
    free(c->lens);
    free(c);
}

int redis_reply_is_failover(const redisReply *reply)
{
    static const char *const prefixes[] = {"READONLY", "NOREPLICAS", "UNBLOCKED", "LOADING",
                                           "MASTERDOWN"};
    for (size_t i = 0; i < sizeof prefixes / sizeof *prefixes; i++)
        if (redis_reply_is_error(reply, prefixes[i]))
            return 1;
    return 0;
}

static int redis_send_eval(struct redis *r, struct redis_cmd *c, int use_sha);

static void redis_mark_healthy(struct redis *r)
{
    if (r->healthy)
        return;
    r->healthy = 1;
    if (r->warned_down)
        log_info("redis %s: working again on %s:%d", r->name, r->url.host, r->url.port);
    r->warned_down = 0;
    r->backoff_ms = 0;
}

/* The one hiredis callback for user commands. */
static void redis_on_reply(redisAsyncContext *ac, void *replyp, void *privdata)
{
    (void)ac;
    struct redis_cmd *c = privdata;
    struct redis *r = c->r;
    redisReply *reply = replyp;
    redis_cmd_unlink(r, c);
    if (reply && c->script && redis_reply_is_error(reply, "NOSCRIPT") && r->state == R_UP) {
        /* The server lost its script cache (restart, SCRIPT FLUSH): resend as EVAL. */
        struct redis_cmd *again = redis_cmd_new(r, c->cb, c->data);
        again->script = c->script;
        again->argc = c->argc;
        again->argv = c->argv;
        again->lens = c->lens;
        c->argv = NULL;
        c->lens = NULL;
        c->argc = 0;
        redis_cmd_free(c);
        if (redis_send_eval(r, again, 0) == 0)
            return;
        redis_cmd_unlink(r, again);
        again->cb(r, NULL, again->data);
        redis_cmd_free(again);
        return;
    }
    int failover = reply && redis_reply_is_failover(reply);
    if (c->cb)
        c->cb(r, reply, c->data);
    redis_cmd_free(c);
    if (failover && r->state == R_UP)
        redis_drop(r, reply->str);
}

/* ---- connection life ---------------------------------------------------------------- */

static void redis_set_state(struct redis *r, enum redis_state s)
{
    enum redis_state old = r->state;
    if (old == s)
        return;
    r->state = s;
    log_debug("redis %s: %s -> %s", r->name, redis_state_names[old], redis_state_names[s]);
    if (s == R_UP) {
        /* The backoff and the "down" warning are reset only once a command succeeds
         * the connection has stayed up for a while (redis_mark_healthy, from the
         * watchdog): a replica that accepts connections and reads but answers writes with
         * READONLY must not turn into a reconnect loop that logs every 100 ms. */
        r->healthy = 0;
        r->up_since_ms = clock_mono_ms();
        if (r->on_state)
            r->on_state(r, 1, r->state_data);
    } else if (old == R_UP && r->on_state) {
        r->on_state(r, 0, r->state_data);
    }
}

static void redis_on_reconnect_timer(uv_timer_t *t)
{
    struct redis *r = t->data;
    if (r->state == R_DOWN)
        redis_connect(r);
}

/* Go DOWN (if not closing) and schedule a reconnect with backoff. */
static void redis_schedule_reconnect(struct redis *r)
{
    if (r->state == R_CLOSING)
        return;
    redis_set_state(r, R_DOWN);
    r->backoff_ms = r->backoff_ms ? r->backoff_ms * 2 : 100;
    if (r->backoff_ms > 5000)
        r->backoff_ms = 5000;
    uv_timer_start(&r->reconnect_timer, redis_on_reconnect_timer, r->backoff_ms, 0);
}

/* Tear the connection down: pending callbacks get NULL, then reconnect later. */
static void redis_drop(struct redis *r, const char *why)
{
    if (!r->warned_down && r->state != R_CLOSING) {
        log_warn("redis %s: connection to %s:%d lost (%s); retrying with backoff", r->name,
                 r->url.host, r->url.port, why);
        r->warned_down = 1;
    }
    redisAsyncContext *ac = r->ac;
    r->ac = NULL;
    if (r->state != R_CLOSING)
        redis_set_state(r, R_DOWN);
    if (ac)
        redisAsyncFree(ac); /* runs pending callbacks with NULL replies */
    redis_schedule_reconnect(r);
}

static void redis_on_disconnect(const redisAsyncContext *ac, int status)
{
    struct redis *r = ac->data;
    if (!r || r->ac != ac)
        return;
    r->ac = NULL; /* hiredis frees the context after this callback */
    if (r->state != R_CLOSING && !r->warned_down) {
        log_warn("redis %s: disconnected from %s:%d (%s); retrying with backoff", r->name,
                 r->url.host, r->url.port, status == REDIS_OK ? "closed" : ac->errstr);
        r->warned_down = 1;
    }
    redis_schedule_reconnect(r);
}

static void redis_on_handshake_reply(redisAsyncContext *ac, void *replyp, void *privdata)
{
    struct redis *r = privdata;
    redisReply *reply = replyp;
    if (r->ac != ac || r->state != R_HANDSHAKE)
        return;
    if (!reply || reply->type == REDIS_REPLY_ERROR) {
        /* CLIENT SETNAME failing is harmless; AUTH or SELECT failing is not. */
        if (!r->warned_down) {
            log_error("redis %s: handshake with %s:%d failed: %s", r->name, r->url.host,
                      r->url.port, reply ? reply->str : "no reply");
            r->warned_down = 1;
        }
        redis_drop(r, "handshake failed");
        return;
    }
    if (--r->handshake_left == 0)
        redis_set_state(r, R_UP);
}

static void redis_on_connect(const redisAsyncContext *cac, int status)
{
    redisAsyncContext *ac = (redisAsyncContext *)cac;
    struct redis *r = ac->data;
    if (!r || r->ac != ac)
        return;
    if (status != REDIS_OK) {
        r->ac = NULL; /* hiredis frees it after this callback */
        if (!r->warned_down) {
            log_warn("redis %s: cannot connect to %s:%d (%s); retrying with backoff", r->name,
                     r->url.host, r->url.port, ac->errstr);
            r->warned_down = 1;
        }
        redis_schedule_reconnect(r);
        return;
    }
    redis_set_state(r, R_HANDSHAKE);
    r->handshake_left = 0;
    if (r->url.password) {
        const char *argv[3] = {"AUTH", r->url.user, r->url.password};
        if (r->url.user)
            redisAsyncCommandArgv(ac, redis_on_handshake_reply, r, 3, argv, NULL);
        else
            redisAsyncCommandArgv(ac, redis_on_handshake_reply, r, 2,
                                  (const char *[]){"AUTH", r->url.password}, NULL);
        r->handshake_left++;
    }
    if (r->url.db) {
        redisAsyncCommand(ac, redis_on_handshake_reply, r, "SELECT %d", r->url.db);
        r->handshake_left++;
    }
    redisAsyncCommand(ac, redis_on_handshake_reply, r, "CLIENT SETNAME %s", r->name);
    r->handshake_left++;
}

static void redis_connect(struct redis *r)
{
    redisAsyncContext *ac = redisAsyncConnect(r->url.host, r->url.port);
    if (!ac || ac->err) {
        if (!r->warned_down) {
            log_warn("redis %s: cannot connect to %s:%d (%s); retrying with backoff", r->name,
                     r->url.host, r->url.port, ac ? ac->errstr : "out of memory");
            r->warned_down = 1;
        }
        if (ac)
            redisAsyncFree(ac);
        redis_schedule_reconnect(r);
        return;
    }
    ac->data = r;
    r->ac = ac;
    if (redis_ev_attach(ac, r->loop) != 0) {
        r->ac = NULL;
        redisAsyncFree(ac);
        redis_schedule_reconnect(r);
        return;
    }
    redisAsyncSetConnectCallback(ac, redis_on_connect);
    redisAsyncSetDisconnectCallback(ac, redis_on_disconnect);
    r->connect_started_ms = clock_mono_ms();
    redis_set_state(r, R_CONNECTING);
}

/* Every 100 ms: a connect that takes too long, or a command that got no reply in time,
 * means the server is unusable; drop the connection and start over. */
static void redis_on_watchdog(uv_timer_t *t)
{
    struct redis *r = t->data;
    uint64_t now = clock_mono_ms();
    if ((r->state == R_CONNECTING || r->state == R_HANDSHAKE) &&
        now - r->connect_started_ms > r->connect_timeout_ms) {
        redis_drop(r, "connect timeout");
        return;
    }
    if (r->state == R_UP && !r->healthy && now - r->up_since_ms >= HEALTHY_AFTER_MS)
        redis_mark_healthy(r);
    if (r->state == R_UP && r->command_timeout_ms && r->head &&
        now - r->head->sent_ms > r->command_timeout_ms)
        redis_drop(r, "command timeout");
}

struct redis *redis_new(uv_loop_t *loop, const struct redis_opts *opts, const char **err)
{
    struct redis *r = xcalloc(1, sizeof *r);
    if (redis_url_parse(opts->url, &r->url, err) != 0) {
        free(r);
        return NULL;
    }
    r->loop = loop;
    r->name = xstrdup(opts->name ? opts->name : "tierone");
    r->connect_timeout_ms = opts->connect_timeout_ms ? opts->connect_timeout_ms : 2000;
    r->command_timeout_ms = opts->command_timeout_ms;
    r->on_state = opts->on_state;
    r->state_data = opts->data;
    uv_timer_init(loop, &r->reconnect_timer);
    uv_timer_init(loop, &r->watchdog);
    r->reconnect_timer.data = r->watchdog.data = r;
    r->handles_open = 2;
    uv_timer_start(&r->watchdog, redis_on_watchdog, 100, 100);
    uv_unref((uv_handle_t *)&r->watchdog);
    redis_connect(r);
    return r;
}

int redis_is_up(const struct redis *r)
{
    return r->state == R_UP;
}

size_t redis_pending(const struct redis *r)
{
    return r->pending;
}

int redis_command(struct redis *r, redis_reply_cb cb, void *data, const char *fmt, ...)
{
    if (r->state != R_UP)
        return -1;
    struct redis_cmd *c = redis_cmd_new(r, cb, data);
    va_list ap;
    va_start(ap, fmt);
    int rc = redisvAsyncCommand(r->ac, redis_on_reply, c, fmt, ap);
    va_end(ap);
    if (rc != REDIS_OK) {
        redis_cmd_unlink(r, c);
        redis_cmd_free(c);
        return -1;
    }
    return 0;
}

int redis_command_argv(struct redis *r, redis_reply_cb cb, void *data, int argc, const char **argv,
                       const size_t *lens)
{
    if (r->state != R_UP)
        return -1;
    struct redis_cmd *c = redis_cmd_new(r, cb, data);
    if (redisAsyncCommandArgv(r->ac, redis_on_reply, c, argc, argv, lens) != REDIS_OK) {
        redis_cmd_unlink(r, c);
        redis_cmd_free(c);
        return -1;
    }
    return 0;
}

static void redis_script_sha(struct redis_script *s)
{
    if (s->sha[0])
        return;
    unsigned char md[SHA_DIGEST_LENGTH];
    SHA1((const unsigned char *)s->src, strlen(s->src), md);
    for (int i = 0; i < SHA_DIGEST_LENGTH; i++)
        sprintf(s->sha + 2 * i, "%02x", md[i]);
}

/* Send c (already on the list) as EVALSHA or EVAL with its saved arguments. */
static int redis_send_eval(struct redis *r, struct redis_cmd *c, int use_sha)
{
    int n = c->argc + 2;
    const char **argv = xmalloc(sizeof *argv * (size_t)n);
    size_t *lens = xmalloc(sizeof *lens * (size_t)n);
    argv[0] = use_sha ? "EVALSHA" : "EVAL";
    lens[0] = strlen(argv[0]);
    argv[1] = use_sha ? c->script->sha : c->script->src;
    lens[1] = strlen(argv[1]);
    for (int i = 0; i < c->argc; i++) {
        argv[i + 2] = c->argv[i];
        lens[i + 2] = c->lens[i];
    }
    int rc = redisAsyncCommandArgv(r->ac, redis_on_reply, c, n, argv, lens);
    free(argv);
    free(lens);
    return rc == REDIS_OK ? 0 : -1;
}

int redis_eval(struct redis *r, struct redis_script *s, redis_reply_cb cb, void *data, int nkeys,
               int argc, const char **argv, const size_t *lens)
{
    if (r->state != R_UP)
        return -1;
    redis_script_sha(s);
    struct redis_cmd *c = redis_cmd_new(r, cb, data);
    c->script = s;
    c->argc = argc + 1;
    c->argv = xmalloc(sizeof *c->argv * (size_t)c->argc);
    c->lens = xmalloc(sizeof *c->lens * (size_t)c->argc);
    c->argv[0] = xasprintf("%d", nkeys);
    c->lens[0] = strlen(c->argv[0]);
    for (int i = 0; i < argc; i++) {
        size_t len = lens ? lens[i] : strlen(argv[i]);
        c->argv[i + 1] = xstrndup(argv[i], len);
        c->lens[i + 1] = len;
    }
    if (redis_send_eval(r, c, 1) != 0) {
        redis_cmd_unlink(r, c);
        redis_cmd_free(c);
        return -1;
    }
    return 0;
}

/* ---- close -------------------------------------------------------------------------- */

static void redis_on_handle_closed(uv_handle_t *h)
{
    struct redis *r = h->data;
    if (--r->handles_open > 0)
        return;
    void (*cb)(void *) = r->closed_cb;
    void *data = r->closed_data;
    redis_url_free(&r->url);
    free(r->name);
    free(r);
    if (cb)
        cb(data);
}

void redis_close(struct redis *r, void (*closed_cb)(void *data), void *data)
{
    if (r->state == R_CLOSING)
        return;
    r->state = R_CLOSING;
    r->closed_cb = closed_cb;
    r->closed_data = data;
    redisAsyncContext *ac = r->ac;
    r->ac = NULL;
    if (ac)
        redisAsyncFree(ac);
    uv_timer_stop(&r->reconnect_timer);
    uv_timer_stop(&r->watchdog);
    uv_close((uv_handle_t *)&r->reconnect_timer, redis_on_handle_closed);
    uv_close((uv_handle_t *)&r->watchdog, redis_on_handle_closed);
}

int redis_reply_is_error(const redisReply *reply, const char *prefix)
{
    return reply && reply->type == REDIS_REPLY_ERROR && reply->str &&
           strncmp(reply->str, prefix, strlen(prefix)) == 0;
}
