/* pg: the PostgreSQL connection pool on libuv (see pg.h): requests, the wait queue,
 * dispatch to connections (pg_conn.c), stats and close. */
#include "pg_internal.h"

#include "clock.h"
#include "xalloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- request lists ----------------------------------------------------------------------- */

void pg_req_list_push(struct pg_req_list *l, struct pg_req *req)
{
    req->next = NULL;
    if (l->tail)
        l->tail->next = req;
    else
        l->head = req;
    l->tail = req;
    l->n++;
}

void pg_req_list_move(struct pg_req_list *dst, struct pg_req_list *src)
{
    if (!src->head)
        return;
    if (dst->tail)
        dst->tail->next = src->head;
    else
        dst->head = src->head;
    dst->tail = src->tail;
    dst->n += src->n;
    memset(src, 0, sizeof *src);
}

struct pg_req *pg_req_list_pop(struct pg_req_list *l)
{
    struct pg_req *req = l->head;
    if (!req)
        return NULL;
    l->head = req->next;
    if (!l->head)
        l->tail = NULL;
    l->n--;
    req->next = NULL;
    return req;
}

/* 1 if sql opens a transaction block (BEGIN, START TRANSACTION): statements pipelined
 * behind it would run inside it. */
static int pg_sql_begins_block(const char *sql)
{
    if (!sql)
        return 0;
    sql += strspn(sql, " \t\r\n");
    return !strncasecmp(sql, "begin", 5) || !strncasecmp(sql, "start", 5);
}

struct pg_req *pg_req_new(struct pg_pool *p, enum pg_req_kind kind, const char *sql, int nparams,
                          const char *const *params)
{
    struct pg_req *req = xcalloc(1, sizeof *req);
    req->pool = p;
    req->kind = kind;
    req->sql = xstrdup(sql);
    req->hash = p->prepare && nparams > 0 ? pg_stmt_hash(sql) : 0; /* for the cache only */
    req->alone = kind == PQ_ACQUIRE || pg_sql_begins_block(sql);
    req->stmt_no = -1;
    req->nparams = nparams;
    if (nparams > 0) {
        req->params = xcalloc((size_t)nparams, sizeof *req->params);
        for (int i = 0; i < nparams; i++)
            req->params[i] = xstrdup(params[i]);
    }
    return req;
}

void pg_req_free(struct pg_req *req)
{
    for (int i = 0; i < req->nparams; i++)
        free(req->params[i]);
    free(req->params);
    free(req->sql);
    free(req->errmsg);
    free(req);
}

/* Run req's callback with r (NULL r for an acquire grant) and free req. */
void pg_req_deliver(struct pg_req *req, const struct pg_result *r)
{
    struct pg_pool *p = req->pool;
    if (req->kind == PQ_RESET) {
        pg_req_free(req);
        return;
    }
    if (req->kind == PQ_QUERY)
        p->queries_total++;
    if (r && r->err != PG_OK)
        p->errors_total++;
    if (req->kind == PQ_QUERY)
        req->cb(r, req->arg);
    else
        req->acb(r ? NULL : req->conn, r, req->arg);
    pg_req_free(req);
}

/* Deliver req from the `later` list (or from close). */
static void pg_req_deliver_saved(struct pg_req *req)
{
    if (req->kind == PQ_ACQUIRE && req->err == PG_OK) {
        pg_req_deliver(req, NULL);
        return;
    }
    struct pg_result r;
    pg_result_set_error(&r, req->err, req->sqlstate, req->errmsg);
    pg_req_deliver(req, &r);
}

/* Deliver what is on `later` now; what callbacks add waits for the next kick. A close
 * from a callback cancels the rest of this batch. */
static void pg_pool_on_kick(uv_timer_t *t)
{
    struct pg_pool *p = t->data;
    pg_req_list_move(&p->delivering, &p->later);
    struct pg_req *req;
    while ((req = pg_req_list_pop(&p->delivering)))
        pg_req_deliver_saved(req);
}

/* Queue req for delivery from the loop with the given outcome (err PG_OK: a grant). */
void pg_req_finish_later(struct pg_req *req, enum pg_error err, const char *sqlstate,
                         const char *msg)
{
    struct pg_pool *p = req->pool;
    req->err = err;
    snprintf(req->sqlstate, sizeof req->sqlstate, "%s", sqlstate ? sqlstate : "");
    free(req->errmsg);
    req->errmsg = xstrdup(msg);
    if (req->kind == PQ_RESET) {
        pg_req_free(req);
        return;
    }
    if (p->closing) {
        pg_req_deliver_saved(req);
        return;
    }
    pg_req_list_push(&p->later, req);
    uv_timer_start(&p->kick, pg_pool_on_kick, 0, 0);
}

/* One of the pool's own handles (or its defer) closed. */
static void pg_pool_one_closed(void *arg)
{
    struct pg_pool *p = arg;
    p->handles_open--;
    pg_pool_maybe_finish(p);
}

static void pg_pool_on_handle_closed(uv_handle_t *h)
{
    pg_pool_one_closed(h->data);
}

/* ---- the pool ---------------------------------------------------------------------------- */

/* The slot to take req now, or NULL: an idle one that accepts it; else, once no slot is
 * still to be opened (each is up, backing off or held), the one that accepts it with the
 * fewest statements on the wire. So the pool first grows to its size, and a statement
 * queues in a pipeline only when every connection is busy. */
static struct pg_conn *pg_pool_conn_for(struct pg_pool *p, const struct pg_req *req)
{
    struct pg_conn *best = NULL;
    int opening = 0;
    for (unsigned i = 0; i < p->size; i++) {
        struct pg_conn *c = &p->conns[i];
        opening |= (c->state == PC_DOWN || c->state == PC_CONNECTING) && !c->held;
        if ((!best || c->wire.n < best->wire.n) && pg_conn_accepts(c, req)) {
            best = c;
            if (!c->wire.n)
                return c;
        }
    }
    return opening ? NULL : best;
}

/* Hand waiting requests to free slots; open slots for the rest. Runs no callbacks. */
void pg_pool_dispatch(struct pg_pool *p)
{
    struct pg_conn *c;
    if (p->closing)
        return;
    while (p->queue.head && (c = pg_pool_conn_for(p, p->queue.head))) {
        struct pg_req *req = pg_req_list_pop(&p->queue);
        if (req->kind == PQ_ACQUIRE) {
            c->held = 1;
            p->held++;
            req->conn = c;
            pg_req_finish_later(req, PG_OK, NULL, NULL);
        } else {
            pg_conn_send(c, req);
        }
    }
    if (!p->queue.head)
        uv_timer_stop(&p->wait_timer);
    size_t connecting = 0;
    for (unsigned i = 0; i < p->size; i++)
        connecting += p->conns[i].state == PC_CONNECTING && !p->conns[i].held;
    for (unsigned i = 0; i < p->size && connecting < p->queue.n; i++) {
        c = &p->conns[i];
        if (c->state != PC_DOWN || c->held)
            continue;
        pg_conn_connect(c);
        connecting += c->state == PC_CONNECTING;
    }
}

static void pg_pool_on_wait_timer(uv_timer_t *t)
{
    struct pg_pool *p = t->data;
    uint64_t now = clock_mono_ms();
    int any_up = 0;
    for (unsigned i = 0; i < p->size; i++)
        any_up |= p->conns[i].state == PC_UP;
    while (p->queue.head && p->queue.head->deadline_ms <= now) {
        struct pg_req *req = pg_req_list_pop(&p->queue);
        char *msg;
        if (!any_up && p->last_error) {
            msg = xasprintf("no connection within %u ms: %s", p->wait_timeout_ms, p->last_error);
            pg_req_finish_later(req, PG_ERR_CONNECTION, NULL, msg);
        } else {
            msg = xasprintf("no free connection within %u ms", p->wait_timeout_ms);
            pg_req_finish_later(req, PG_ERR_TIMEOUT, NULL, msg);
        }
        free(msg);
    }
    if (p->queue.head)
        uv_timer_start(&p->wait_timer, pg_pool_on_wait_timer, p->queue.head->deadline_ms - now, 0);
}

/* Queue req for a connection (or fail it at once when the queue is full). */
static void pg_pool_enqueue(struct pg_pool *p, struct pg_req *req)
{
    if (p->queue.n >= p->max_waiters) {
        char *msg = xasprintf("pool queue full (%u waiting)", p->max_waiters);
        pg_req_finish_later(req, PG_ERR_QUEUE_FULL, NULL, msg);
        free(msg);
        return;
    }
    uint64_t now = clock_mono_ms();
    req->deadline_ms = now + p->wait_timeout_ms;
    if (!p->queue.head)
        uv_timer_start(&p->wait_timer, pg_pool_on_wait_timer, p->wait_timeout_ms, 0);
    pg_req_list_push(&p->queue, req);
    pg_pool_dispatch(p);
}

/* Connect parameters: the conninfo's, with application_name and statement_timeout. */
static int pg_pool_params(struct pg_pool *p, const struct pg_pool_opts *opts, char **err)
{
    char *perr = NULL;
    PQconninfoOption *opt = PQconninfoParse(opts->conninfo, &perr);
    if (!opt) {
        const char *m = perr ? perr : "out of memory";
        *err = xasprintf("invalid conninfo: %.*s", (int)strcspn(m, "\n"), m);
        PQfreemem(perr);
        return -1;
    }
    size_t n = 0;
    for (PQconninfoOption *o = opt; o->keyword; o++)
        n++;
    p->kw = xcalloc(n + 3, sizeof *p->kw);
    p->vals = xcalloc(n + 3, sizeof *p->vals);
    const char *app = opts->application_name;
    const char *options = NULL;
    size_t k = 0;
    for (PQconninfoOption *o = opt; o->keyword; o++) {
        if (!o->val)
            continue;
        if (strcmp(o->keyword, "application_name") == 0) {
            app = app ? app : o->val;
        } else if (strcmp(o->keyword, "options") == 0) {
            options = o->val;
        } else {
            p->kw[k] = xstrdup(o->keyword);
            p->vals[k++] = xstrdup(o->val);
        }
    }
    p->kw[k] = xstrdup("application_name");
    p->vals[k++] = xstrdup(app ? app : "tierone");
    if (p->query_timeout_ms || options) {
        p->kw[k] = xstrdup("options");
        if (p->query_timeout_ms)
            p->vals[k++] = xasprintf("%s%s-c statement_timeout=%u", options ? options : "",
                                     options ? " " : "", p->query_timeout_ms);
        else
            p->vals[k++] = xstrdup(options);
    }
    PQconninfoFree(opt);
    return 0;
}

static void pg_pool_free(struct pg_pool *p)
{
    for (size_t i = 0; p->kw && p->kw[i]; i++) {
        free(p->kw[i]);
        free(p->vals[i]);
    }
    free(p->kw);
    free(p->vals);
    free(p->conns);
    free(p->last_error);
    free(p);
}

struct pg_pool *pg_pool_new(uv_loop_t *loop, const struct pg_pool_opts *opts, char **err)
{
    *err = NULL;
    if (!opts->conninfo) {
        *err = xstrdup("no conninfo");
        return NULL;
    }
    struct pg_pool *p = xcalloc(1, sizeof *p);
    p->loop = loop;
    p->size = opts->size ? opts->size : 4;
    p->max_waiters = opts->max_waiters ? opts->max_waiters : 1000;
    p->depth = opts->pipeline_depth ? opts->pipeline_depth : PG_PIPELINE_DEPTH;
    p->connect_timeout_ms = opts->connect_timeout_ms ? opts->connect_timeout_ms : 5000;
    p->query_timeout_ms = opts->query_timeout_ms;
    p->wait_timeout_ms = opts->wait_timeout_ms ? opts->wait_timeout_ms : 10000;
    p->prepare = !opts->no_prepare;
    if (pg_pool_params(p, opts, err) != 0) {
        pg_pool_free(p);
        return NULL;
    }
    p->conns = xcalloc(p->size, sizeof *p->conns);
    for (unsigned i = 0; i < p->size; i++)
        pg_conn_init(&p->conns[i], p, (int)i);
    uv_timer_init(loop, &p->kick);
    uv_timer_init(loop, &p->wait_timer);
    defer_init(&p->uncork, loop, pg_pool_uncork, p);
    p->kick.data = p->wait_timer.data = p;
    p->handles_open += 3;
    return p;
}

int pg_query(struct pg_pool *p, const char *sql, int nparams, const char *const *params,
             pg_result_cb cb, void *arg)
{
    if (p->closing || !sql || !cb || nparams < 0 || (nparams > 0 && !params))
        return -1;
    struct pg_req *req = pg_req_new(p, PQ_QUERY, sql, nparams, params);
    req->cb = cb;
    req->arg = arg;
    struct pg_conn *c = p->queue.head ? NULL : pg_pool_conn_for(p, req);
    if (c)
        pg_conn_send(c, req);
    else
        pg_pool_enqueue(p, req);
    return 0;
}

int pg_pool_acquire(struct pg_pool *p, pg_acquire_cb cb, void *arg)
{
    if (p->closing || !cb)
        return -1;
    struct pg_req *req = pg_req_new(p, PQ_ACQUIRE, NULL, 0, NULL);
    req->acb = cb;
    req->arg = arg;
    pg_pool_enqueue(p, req);
    return 0;
}

void pg_pool_stats(const struct pg_pool *p, struct pg_pool_stats *out)
{
    memset(out, 0, sizeof *out);
    for (unsigned i = 0; i < p->size; i++) {
        const struct pg_conn *c = &p->conns[i];
        if (c->state != PC_UP)
            continue;
        out->open++;
        out->busy += c->held || c->wire.n;
    }
    out->waiting = (unsigned)p->queue.n;
    out->queries_total = p->queries_total;
    out->errors_total = p->errors_total;
    out->pipelined_total = p->pipelined_total;
}

/* ---- close ------------------------------------------------------------------------------- */

void pg_pool_maybe_finish(struct pg_pool *p)
{
    if (!p->closing || p->finished || p->handles_open > 0 || p->held > 0)
        return;
    p->finished = 1;
    void (*cb)(void *) = p->closed_cb;
    void *arg = p->closed_arg;
    pg_pool_free(p);
    if (cb)
        cb(arg);
}

void pg_pool_close(struct pg_pool *p, void (*closed_cb)(void *arg), void *arg)
{
    if (p->closing)
        return;
    p->closing = 1;
    p->closed_cb = closed_cb;
    p->closed_arg = arg;
    uv_close((uv_handle_t *)&p->kick, pg_pool_on_handle_closed);
    uv_close((uv_handle_t *)&p->wait_timer, pg_pool_on_handle_closed);
    defer_close(&p->uncork, pg_pool_one_closed);
    /* Settle every slot first, so callbacks see a closed pool. */
    struct pg_req_list pending = {0};
    pg_req_list_move(&pending, &p->delivering);
    pg_req_list_move(&pending, &p->later);
    for (unsigned i = 0; i < p->size; i++)
        pg_conn_shut(&p->conns[i], &pending);
    pg_req_list_move(&pending, &p->queue);
    struct pg_req *req;
    while ((req = pg_req_list_pop(&pending))) {
        if (req->kind == PQ_ACQUIRE && req->err == PG_OK && req->conn) {
            req->conn->held = 0; /* a grant not yet delivered */
            p->held--;
        }
        if (req->err == PG_OK) {
            req->err = PG_ERR_CANCELLED;
            free(req->errmsg);
            req->errmsg = xstrdup("pool closed");
        }
        pg_req_deliver_saved(req);
    }
    pg_pool_maybe_finish(p);
}
