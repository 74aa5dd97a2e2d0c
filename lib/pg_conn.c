/* pg_conn: one connection of the pool: connect (PQconnectStart/PQconnectPoll), send in
 * libpq's pipeline mode (PQsendQueryParams, or PQsendPrepare once and PQsendQueryPrepared
 * after, each followed by PQpipelineSync; PQflush), read (PQconsumeInput, PQisBusy,
 * PQgetResult up to each statement's PGRES_PIPELINE_SYNC) with a uv_poll_t on libpq's
 * socket, reconnect backoff and timeouts. See pg_internal.h for the states.
 *
 * libpq may replace its socket while connecting (another host, SSL fallback), possibly
 * under the same fd number, so every connect step watches the socket with a fresh
 * uv_poll_t; once UP, one poll handle lives as long as the connection. */
#include "pg_internal.h"

#include "log.h"
#include "xalloc.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PG_BACKOFF_MIN_MS    100
#define PG_BACKOFF_MAX_MS    5000
#define PG_WATCHDOG_GRACE_MS 2000
/* A statement on the wire this long is slow: nothing more queues behind it. */
#define PG_PIPELINE_STALL_MS 50

static const char *const pg_conn_state_names[] = {"down", "backoff", "connecting", "up", "closed"};

static void pg_conn_lost(struct pg_conn *c, enum pg_error err, const char *sqlstate,
                         const char *why);
static void pg_conn_on_poll(uv_poll_t *h, int status, int events);
static void pg_conn_make_free(struct pg_conn *c);

/* ---- slots: watching the socket ---------------------------------------------------------- */

static void pg_conn_on_poll_closed(uv_handle_t *h)
{
    struct pg_poll *pp = h->data;
    struct pg_pool *p = pp->pool;
    free(pp);
    p->handles_open--;
    pg_pool_maybe_finish(p);
}

/* Stop watching c's socket (before libpq closes it). */
static void pg_conn_unwatch(struct pg_conn *c)
{
    struct pg_poll *pp = c->poll;
    if (!pp)
        return;
    c->poll = NULL;
    c->poll_events = 0;
    pp->conn = NULL;
    uv_close((uv_handle_t *)&pp->handle, pg_conn_on_poll_closed);
}

/* Watch c's socket for events (the same socket as before). */
static void pg_conn_watch(struct pg_conn *c, int events)
{
    if (!c->poll || c->poll_events == events)
        return;
    uv_poll_start(&c->poll->handle, events, pg_conn_on_poll);
    c->poll_events = events;
}

/* Watch PQsocket() with a new handle. Returns 0, or -1 with a reason. */
static int pg_conn_watch_fresh(struct pg_conn *c, int events, const char **why)
{
    pg_conn_unwatch(c);
    int fd = PQsocket(c->pg);
    if (fd < 0) {
        *why = "no socket";
        return -1;
    }
    struct pg_poll *pp = xcalloc(1, sizeof *pp);
    int rc = uv_poll_init(c->pool->loop, &pp->handle, fd);
    if (rc < 0) {
        free(pp);
        *why = uv_strerror(rc);
        return -1;
    }
    pp->handle.data = pp;
    pp->pool = c->pool;
    pp->conn = c;
    c->pool->handles_open++;
    c->poll = pp;
    pg_conn_watch(c, events);
    return 0;
}

/* ---- slots: state changes ---------------------------------------------------------------- */

static void pg_conn_enter(struct pg_conn *c, enum pg_conn_state to)
{
    if (c->state == to)
        return;
    log_debug("postgres: connection %d %s -> %s", c->index, pg_conn_state_names[c->state],
              pg_conn_state_names[to]);
    c->state = to;
}

/* Forget the session's prepared statements (a new connection has none). */
static void pg_conn_forget_stmts(struct pg_conn *c)
{
    for (unsigned i = 0; i < c->nstmts; i++)
        free(c->stmts[i].sql);
    c->nstmts = c->next_no = c->unconfirmed = 0;
}

/* Forget the libpq connection (its socket unwatched first). */
static void pg_conn_close_pg(struct pg_conn *c)
{
    pg_conn_forget_stmts(c);
    pg_conn_unwatch(c);
    if (c->res) {
        PQclear(c->res);
        c->res = NULL;
    }
    c->units = 0;
    c->cork = 0;
    if (c->pg) {
        PQfinish(c->pg);
        c->pg = NULL;
    }
}

static void pg_conn_on_backoff_done(uv_timer_t *t)
{
    struct pg_conn *c = t->data;
    pg_conn_enter(c, PC_DOWN);
    pg_pool_dispatch(c->pool);
}

/* Close the connection and wait before the slot may connect again. */
static void pg_conn_backoff(struct pg_conn *c)
{
    pg_conn_close_pg(c);
    c->backoff_ms = c->backoff_ms ? c->backoff_ms * 2 : PG_BACKOFF_MIN_MS;
    if (c->backoff_ms > PG_BACKOFF_MAX_MS)
        c->backoff_ms = PG_BACKOFF_MAX_MS;
    pg_conn_enter(c, PC_BACKOFF);
    uv_timer_start(&c->timer, pg_conn_on_backoff_done, c->backoff_ms, 0);
}

static void pg_conn_connect_failed(struct pg_conn *c, const char *why)
{
    struct pg_pool *p = c->pool;
    free(p->last_error);
    p->last_error = xstrndup(why, strcspn(why, "\n"));
    if (!p->warned_down) {
        log_warn("postgres: connect failed: %s", p->last_error);
        p->warned_down = 1;
    }
    pg_conn_backoff(c);
}

/* Server notices: WARNING to the log, the rest (NOTICE "... skipping") at debug level. */
static void pg_conn_on_notice(void *arg, const PGresult *res)
{
    struct pg_conn *c = arg;
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    enum log_level level = sev && strcmp(sev, "WARNING") == 0 ? LOG_WARN : LOG_DEBUG;
    log_at(level, NULL, NULL, "postgres: connection %d: %s: %s", c->index, sev ? sev : "NOTICE",
           msg ? msg : "");
}

static void pg_conn_up(struct pg_conn *c)
{
    struct pg_pool *p = c->pool;
    const char *why = NULL;
    uv_timer_stop(&c->timer);
    if (PQsetnonblocking(c->pg, 1) != 0 || !PQenterPipelineMode(c->pg) ||
        pg_conn_watch_fresh(c, UV_READABLE, &why) != 0) {
        pg_conn_connect_failed(c, why ? why : PQerrorMessage(c->pg));
        return;
    }
    c->backoff_ms = 0;
    pg_conn_enter(c, PC_UP);
    free(p->last_error);
    p->last_error = NULL;
    if (p->warned_down) {
        log_info("postgres: connected again");
        p->warned_down = 0;
    }
    pg_pool_dispatch(p);
}

/* One step of PQconnectPoll, after the socket became ready (or failed). */
static void pg_conn_connect_step(struct pg_conn *c)
{
    const char *why = NULL;
    int rc = 0;
    switch (PQconnectPoll(c->pg)) {
    case PGRES_POLLING_OK:
        pg_conn_up(c);
        return;
    case PGRES_POLLING_READING:
        rc = pg_conn_watch_fresh(c, UV_READABLE, &why);
        break;
    case PGRES_POLLING_WRITING:
        rc = pg_conn_watch_fresh(c, UV_WRITABLE, &why);
        break;
    default:
        pg_conn_connect_failed(c, PQerrorMessage(c->pg));
        return;
    }
    if (rc != 0)
        pg_conn_connect_failed(c, why);
}

static void pg_conn_on_connect_timeout(uv_timer_t *t)
{
    struct pg_conn *c = t->data;
    char *why = xasprintf("connect timed out after %u ms", c->pool->connect_timeout_ms);
    pg_conn_connect_failed(c, why);
    free(why);
}

/* Start connecting slot c (DOWN). */
void pg_conn_connect(struct pg_conn *c)
{
    struct pg_pool *p = c->pool;
    const char *why = NULL;
    c->pg = PQconnectStartParams((const char *const *)p->kw, (const char *const *)p->vals, 0);
    if (!c->pg) {
        pg_conn_connect_failed(c, "out of memory");
        return;
    }
    if (PQstatus(c->pg) == CONNECTION_BAD) {
        pg_conn_connect_failed(c, PQerrorMessage(c->pg));
        return;
    }
    PQsetNoticeReceiver(c->pg, pg_conn_on_notice, c);
    pg_conn_enter(c, PC_CONNECTING);
    if (pg_conn_watch_fresh(c, UV_WRITABLE, &why) != 0) {
        pg_conn_connect_failed(c, why);
        return;
    }
    if (p->connect_timeout_ms)
        uv_timer_start(&c->timer, pg_conn_on_connect_timeout, p->connect_timeout_ms, 0);
}

/* The connection broke: fail the statements on it (later), close, back off. The slot stays
 * held if a caller holds it. */
static void pg_conn_lost(struct pg_conn *c, enum pg_error err, const char *sqlstate,
                         const char *why)
{
    char *msg = xstrndup(why, strcspn(why, "\n"));
    log_warn("postgres: connection %d lost: %s", c->index, msg);
    struct pg_req_list wire = {0};
    pg_req_list_move(&wire, &c->wire);
    uv_timer_stop(&c->timer);
    pg_conn_backoff(c);
    struct pg_req *req;
    while ((req = pg_req_list_pop(&wire)))
        pg_req_finish_later(req, err, sqlstate, msg);
    free(msg);
}

/* ---- slots: statements ------------------------------------------------------------------- */

static void pg_conn_on_watchdog(uv_timer_t *t)
{
    struct pg_conn *c = t->data;
    char *why =
        xasprintf("no reply within %u ms", c->pool->query_timeout_ms + PG_WATCHDOG_GRACE_MS);
    pg_conn_lost(c, PG_ERR_TIMEOUT, NULL, why);
    free(why);
}

/* (Re)start the watchdog while statements are on the wire: it fires when the server sends
 * nothing for the oldest one within the timeout. */
static void pg_conn_watchdog(struct pg_conn *c)
{
    uint32_t ms = c->pool->query_timeout_ms;
    if (!c->wire.n)
        uv_timer_stop(&c->timer);
    else if (ms)
        uv_timer_start(&c->timer, pg_conn_on_watchdog, ms + PG_WATCHDOG_GRACE_MS, 0);
}

/* ---- corking: one segment for the statements of one loop iteration ----------------------
 * libpq (15) flushes after every PQpipelineSync, so every statement would cost a TCP
 * segment (and on loopback, the receiving side's work too, in the sender's system call).
 * A socket corked while statements are sent, uncorked once per iteration, sends them
 * together. */

void pg_pool_uncork(void *arg)
{
    struct pg_pool *p = arg;
    int off = 0;
    for (unsigned i = 0; i < p->size; i++) {
        struct pg_conn *c = &p->conns[i];
        if (c->cork == 1 && c->pg) {
            c->cork = 0;
            setsockopt(PQsocket(c->pg), IPPROTO_TCP, TCP_CORK, &off, sizeof off);
        }
    }
}

/* Cork c's socket until the end of this loop iteration (once per iteration). */
static void pg_conn_cork(struct pg_conn *c)
{
    struct pg_pool *p = c->pool;
    int on = 1;
    if (c->cork)
        return;
    if (setsockopt(PQsocket(c->pg), IPPROTO_TCP, TCP_CORK, &on, sizeof on) != 0) {
        c->cork = -1; /* not TCP */
        return;
    }
    c->cork = 1;
    defer_arm(&p->uncork);
}

/* Push the outgoing buffer; watch for writability while some is left. */
static void pg_conn_flush(struct pg_conn *c)
{
    int rc = PQflush(c->pg);
    if (rc < 0) {
        pg_conn_lost(c, PG_ERR_CONNECTION, NULL, PQerrorMessage(c->pg));
        return;
    }
    pg_conn_watch(c, rc ? UV_READABLE | UV_WRITABLE : UV_READABLE);
}

uint64_t pg_stmt_hash(const char *sql)
{
    uint64_t h = 14695981039346656037ull;
    for (const unsigned char *q = (const unsigned char *)sql; *q; q++)
        h = (h ^ *q) * 1099511628211ull;
    return h;
}

/* The cache index of sql on c, or -1. */
static int pg_stmt_find(const struct pg_conn *c, const char *sql, uint64_t hash)
{
    for (unsigned i = 0; i < c->nstmts; i++)
        if (c->stmts[i].hash == hash && !strcmp(c->stmts[i].sql, sql))
            return (int)i;
    return -1;
}

/* The cache index of statement number no on c, or -1 (dropped meanwhile). */
static int pg_stmt_index(const struct pg_conn *c, int no)
{
    for (unsigned i = 0; i < c->nstmts; i++)
        if ((int)c->stmts[i].no == no)
            return (int)i;
    return -1;
}

static void pg_stmt_drop(struct pg_conn *c, int i)
{
    if (!c->stmts[i].confirmed)
        c->unconfirmed--;
    free(c->stmts[i].sql);
    c->stmts[i] = c->stmts[--c->nstmts];
}

int pg_conn_accepts(const struct pg_conn *c, const struct pg_req *req)
{
    if (c->state != PC_UP || c->held)
        return 0;
    if (req->alone)
        return c->wire.n == 0;
    if (c->wire.n >= c->pool->depth)
        return 0;
    if (c->wire.head && (c->wire.head->alone ||
                         uv_now(c->pool->loop) - c->wire.head->sent_ms > PG_PIPELINE_STALL_MS))
        return 0; /* behind a transaction block, or a statement that takes its time */
    if (c->unconfirmed && c->pool->prepare && req->nparams > 0) {
        int i = pg_stmt_find(c, req->sql, req->hash);
        if (i >= 0 && !c->stmts[i].confirmed)
            return 0; /* its Parse may still fail: wait for its answer */
    }
    return 1;
}

/* Queue req on c's pipeline: its Execute (prepared statement), its Parse and Execute (a new
 * statement with parameters), or the statement unnamed; then a Sync. Returns 1 when queued,
 * 0 when libpq refused it before queuing anything, -1 when it failed half-way (the
 * connection is unusable). */
static int pg_conn_send_step(struct pg_conn *c, struct pg_req *req)
{
    const char *const *params = (const char *const *)req->params;
    char name[32];
    int i = -1, ok;
    req->stmt_no = -1;
    req->parse = 0;
    if (c->pool->prepare && req->nparams > 0) {
        i = pg_stmt_find(c, req->sql, req->hash);
        if (i < 0 && c->nstmts < PG_STMT_CACHE) {
            snprintf(name, sizeof name, "tierone_%u", c->next_no);
            if (!PQsendPrepare(c->pg, name, req->sql, req->nparams, NULL))
                return 0;
            i = (int)c->nstmts++;
            c->stmts[i] =
                (struct pg_stmt){.hash = req->hash, .sql = xstrdup(req->sql), .no = c->next_no++};
            c->unconfirmed++;
            req->parse = 1;
        }
    }
    if (i >= 0) {
        req->stmt_no = (int)c->stmts[i].no;
        snprintf(name, sizeof name, "tierone_%u", c->stmts[i].no);
        ok = PQsendQueryPrepared(c->pg, name, req->nparams, params, NULL, NULL, 0);
    } else {
        ok = PQsendQueryParams(c->pg, req->sql, req->nparams, NULL, params, NULL, NULL, 0);
    }
    if (!ok)
        return req->parse ? -1 : 0;
    return PQpipelineSync(c->pg) ? 1 : -1;
}

/* Send req on the UP slot c (free, or held). Failures complete req later. */
void pg_conn_send(struct pg_conn *c, struct pg_req *req)
{
    pg_conn_cork(c);
    int rc = pg_conn_send_step(c, req);
    if (rc <= 0) {
        const char *e = PQerrorMessage(c->pg);
        char *msg = xstrndup(e, strcspn(e, "\n"));
        if (rc == 0 && PQstatus(c->pg) != CONNECTION_BAD) {
            /* libpq refused the request itself (e.g. too many parameters) */
            pg_req_finish_later(req, PG_ERR_PROTOCOL, NULL, msg);
        } else {
            pg_req_list_push(&c->wire, req);
            pg_conn_lost(c, PG_ERR_CONNECTION, NULL, *msg ? msg : "could not send");
        }
        free(msg);
        return;
    }
    req->sent_ms = uv_now(c->pool->loop);
    c->pool->pipelined_total += c->wire.n > 0;
    pg_req_list_push(&c->wire, req);
    if (c->wire.n == 1)
        pg_conn_watchdog(c);
    pg_conn_flush(c);
}

/* c is UP, not held, with nothing on the wire: roll back a leftover transaction, or offer
 * the slot to waiting requests. */
static void pg_conn_make_free(struct pg_conn *c)
{
    switch (PQtransactionStatus(c->pg)) {
    case PQTRANS_IDLE:
        pg_pool_dispatch(c->pool);
        return;
    case PQTRANS_INTRANS:
    case PQTRANS_INERROR:
        pg_conn_send(c, pg_req_new(c->pool, PQ_RESET, "ROLLBACK", 0, NULL));
        return;
    default:
        pg_conn_lost(c, PG_ERR_CONNECTION, NULL, "connection in an unknown state");
        return;
    }
}

/* Keep the first error result, else the last result. */
static void pg_conn_keep_result(struct pg_conn *c, PGresult *res)
{
    int is_err = PQresultStatus(res) == PGRES_FATAL_ERROR;
    if (!c->res) {
        c->res = res;
    } else if (is_err && PQresultStatus(c->res) != PGRES_FATAL_ERROR) {
        PQclear(c->res);
        c->res = res;
    } else {
        PQclear(res);
    }
}

/* A result (not the Sync) of the oldest statement on the wire. */
static void pg_conn_take_result(struct pg_conn *c, PGresult *res)
{
    struct pg_req *req = c->wire.head;
    ExecStatusType st = PQresultStatus(res);
    if (req->parse && c->units == 0) { /* its Parse's answer */
        int i = pg_stmt_index(c, req->stmt_no);
        if (st == PGRES_COMMAND_OK) {
            if (i >= 0 && !c->stmts[i].confirmed) {
                c->stmts[i].confirmed = 1;
                c->unconfirmed--;
            }
            PQclear(res);
            return;
        }
        /* The Parse failed (a syntax error, say): that is the statement's result (its
         * Execute comes back PIPELINE_ABORTED), and the text is not cached. */
        if (i >= 0)
            pg_stmt_drop(c, i);
    }
    if (st == PGRES_PIPELINE_ABORTED) { /* behind an error of the same segment, kept */
        PQclear(res);
        return;
    }
    pg_conn_keep_result(c, res);
}

/* The oldest statement on c completed (its Sync came back): deliver its result. */
static void pg_conn_finish(struct pg_conn *c)
{
    struct pg_pool *p = c->pool;
    struct pg_req *req = pg_req_list_pop(&c->wire);
    PGresult *res = c->res;
    c->res = NULL;
    c->units = 0;
    int stale = 0; /* req ran as a cache entry the server no longer has as it was */
    if (req->stmt_no >= 0 && !req->parse && res && PQresultStatus(res) == PGRES_FATAL_ERROR) {
        /* 0A000 "cached plan must not change result type" (a table changed under the
         * session) or 26000 "prepared statement does not exist" (DEALLOCATE/DISCARD ran on
         * the session): the error goes to the caller, retryable, and the next run prepares
         * the statement anew (under a new name: the old one may still exist). */
        const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        if (state && (!strcmp(state, "0A000") || !strcmp(state, "26000"))) {
            int i = pg_stmt_index(c, req->stmt_no);
            if (i >= 0)
                pg_stmt_drop(c, i);
            stale = 1;
        }
    }
    pg_conn_watchdog(c);
    char *msg = NULL;
    struct pg_result r;
    pg_result_from_pq(&r, res, c->pg, &msg);
    if (stale)
        r.retryable = 1; /* the next run re-prepares it: a retry succeeds */
    if (req->kind == PQ_RESET) {
        if (r.err != PG_OK)
            pg_conn_lost(c, PG_ERR_CONNECTION, NULL, "ROLLBACK failed");
        else if (!c->held && !c->wire.n)
            pg_conn_make_free(c);
        pg_req_free(req);
    } else {
        /* Settle the slot before user code runs: a leftover transaction is rolled back
         * before the next request can get the slot. */
        if (!c->held && !c->wire.n && PQtransactionStatus(c->pg) != PQTRANS_IDLE)
            pg_conn_make_free(c);
        pg_req_deliver(req, &r);
        if (!p->closing && c->state == PC_UP && !c->held && c->wire.n < p->depth)
            pg_pool_dispatch(p);
    }
    PQclear(res);
    free(msg);
}

/* The connection failed while reading: save what the server said last (e.g. 57P01 before
 * it closed the socket) for the statement on the wire. */
static void pg_conn_read_failed(struct pg_conn *c)
{
    if (c->wire.head && PQstatus(c->pg) == CONNECTION_BAD) {
        /* libpq's socket is gone, so PQgetResult cannot block. */
        PGresult *res;
        for (int i = 0; i < 16 && (res = PQgetResult(c->pg)); i++)
            pg_conn_keep_result(c, res);
    }
    if (c->res && PQresultStatus(c->res) == PGRES_FATAL_ERROR) {
        char *msg = NULL;
        struct pg_result r;
        pg_result_from_pq(&r, c->res, c->pg, &msg);
        if (r.err == PG_ERR_SERVER)
            pg_conn_lost(c, PG_ERR_SERVER, r.sqlstate, msg);
        else
            pg_conn_lost(c, PG_ERR_CONNECTION, NULL, msg);
        free(msg);
        return;
    }
    const char *why = PQerrorMessage(c->pg);
    pg_conn_lost(c, PG_ERR_CONNECTION, NULL, *why ? why : "connection lost");
}

/* Data arrived on c: collect results; complete each statement whose Sync came back. */
static void pg_conn_read(struct pg_conn *c)
{
    PGconn *pg = c->pg;
    if (!PQconsumeInput(pg) || PQstatus(pg) == CONNECTION_BAD) {
        pg_conn_read_failed(c);
        return;
    }
    PGnotify *n;
    while ((n = PQnotifies(pg)))
        PQfreemem(n);
    while (c->wire.head && !PQisBusy(pg)) {
        PGresult *res = PQgetResult(pg);
        if (!res) { /* the end of one command's results: a Parse's or the statement's */
            if (++c->units > 2) {
                pg_conn_lost(c, PG_ERR_PROTOCOL, NULL, "results out of step with the pipeline");
                return;
            }
            continue;
        }
        ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) {
            /* PQgetResult would return this result forever: the session is unusable. */
            PQclear(res);
            pg_conn_lost(c, PG_ERR_PROTOCOL, NULL, "COPY is not supported by the pool");
            return;
        }
        if (st != PGRES_PIPELINE_SYNC) {
            pg_conn_take_result(c, res);
            continue;
        }
        PQclear(res);
        pg_conn_finish(c);
        if (c->state != PC_UP || c->pg != pg)
            return; /* lost, or the pool closed from the callback */
    }
}

static void pg_conn_on_poll(uv_poll_t *h, int status, int events)
{
    struct pg_poll *pp = h->data;
    struct pg_conn *c = pp->conn;
    if (!c)
        return;
    if (c->state == PC_CONNECTING) {
        /* On an error (libuv reports POLLERR as EBADF) PQconnectPoll finds out what. */
        pg_conn_connect_step(c);
        return;
    }
    if (c->state != PC_UP)
        return;
    PGconn *pg = c->pg;
    if (status < 0) {
        pg_conn_read(c); /* picks up what the server said before the error, if anything */
        if (c->state == PC_UP && c->pg == pg)
            pg_conn_lost(c, PG_ERR_CONNECTION, NULL, uv_strerror(status));
        return;
    }
    if (events & UV_READABLE)
        pg_conn_read(c);
    if (c->state == PC_UP && c->pg == pg && (c->poll_events & UV_WRITABLE))
        pg_conn_flush(c);
}

int pg_conn_query(struct pg_conn *c, const char *sql, int nparams, const char *const *params,
                  pg_result_cb cb, void *arg)
{
    struct pg_pool *p = c->pool;
    if (p->closing || !c->held || c->wire.n || !sql || !cb || nparams < 0 ||
        (nparams > 0 && !params))
        return -1;
    struct pg_req *req = pg_req_new(p, PQ_QUERY, sql, nparams, params);
    req->cb = cb;
    req->arg = arg;
    req->conn = c;
    if (c->state == PC_UP)
        pg_conn_send(c, req);
    else
        pg_req_finish_later(req, PG_ERR_CONNECTION, NULL, "connection lost");
    return 0;
}

void pg_conn_release(struct pg_conn *c)
{
    struct pg_pool *p = c->pool;
    if (!c->held)
        return;
    c->held = 0;
    p->held--;
    if (p->closing) {
        pg_pool_maybe_finish(p);
        return;
    }
    if (c->state != PC_UP)
        pg_pool_dispatch(p); /* a lost slot may reconnect now */
    else if (!c->wire.n)
        pg_conn_make_free(c); /* else pg_conn_finish settles it */
}

int pg_conn_backend_pid(const struct pg_conn *c)
{
    return c->state == PC_UP && c->pg ? PQbackendPID(c->pg) : 0;
}

/* ---- the pool's side ------------------------------------------------------------------ */

static void pg_conn_on_timer_closed(uv_handle_t *h)
{
    struct pg_conn *c = h->data;
    c->pool->handles_open--;
    pg_pool_maybe_finish(c->pool);
}

void pg_conn_init(struct pg_conn *c, struct pg_pool *p, int index)
{
    c->pool = p;
    c->index = index;
    c->state = PC_DOWN;
    uv_timer_init(p->loop, &c->timer);
    c->timer.data = c;
    p->handles_open++;
}

void pg_conn_shut(struct pg_conn *c, struct pg_req_list *out)
{
    pg_req_list_move(out, &c->wire);
    pg_conn_close_pg(c);
    pg_conn_enter(c, PC_CLOSED);
    uv_close((uv_handle_t *)&c->timer, pg_conn_on_timer_closed);
}
