/* pg_internal: the pool's data structures and what pg.c (the pool, requests) and
 * pg_conn.c (one connection's state machine) call in each other; not part of the pg
 * contract (pg.h).
 *
 * Each slot (struct pg_conn) moves DOWN -> CONNECTING -> UP; a failed connect or a lost
 * connection goes to BACKOFF, whose timer brings it back to DOWN; CLOSED is final. An UP
 * connection is in libpq's pipeline mode: up to the pool's depth statements are on the
 * wire at once (`wire`, oldest first), each followed by its own Sync, so each is its own
 * implicit transaction and an error in one does not abort the next. An UP slot is held by
 * a caller (held: then one statement at a time), or takes statements while fewer than
 * depth are on the wire.
 *
 * Requests (struct pg_req) wait in the pool's FIFO queue until a slot is free. Requests
 * that end without a server result (queue full, timeouts, lost connections, acquire grants)
 * go on the `later` list, which a zero timer (kick) delivers: so submit functions never run
 * a callback, and a slot's state is settled before any user code runs. Only a statement
 * that completed on a live connection is delivered straight from the poll callback. */
#ifndef TIERONE_PG_INTERNAL_H
#define TIERONE_PG_INTERNAL_H

#include "defer.h"
#include "pg.h"

#include <libpq-fe.h>

struct pg_result {
    PGresult *res; /* the server's result; NULL for errors raised by the pool */
    enum pg_error err;
    int retryable;
    char sqlstate[6];    /* "" when none */
    const char *message; /* "" on success; owned by whoever built the result */
};

enum pg_conn_state { PC_DOWN, PC_BACKOFF, PC_CONNECTING, PC_UP, PC_CLOSED };

enum pg_req_kind { PQ_QUERY, PQ_ACQUIRE, PQ_RESET };

struct pg_req {
    struct pg_pool *pool;
    enum pg_req_kind kind;
    char *sql;
    int nparams;
    char **params;
    pg_result_cb cb;
    pg_acquire_cb acb;
    void *arg;
    struct pg_conn *conn; /* acquire: the granted slot; held-connection query: its slot */
    uint64_t hash;        /* of sql (pg_stmt_hash), for the prepared-statement cache */
    int alone;            /* an acquire, or a statement opening a transaction block: goes
                           * only to an idle connection, and nothing goes behind it */
    uint64_t deadline_ms; /* while queued */
    uint64_t sent_ms;     /* on the wire since (uv_now) */
    /* On the wire: the prepared statement it runs as (-1: unnamed), and whether its Parse
     * went in the same pipeline segment (then the first result is the Parse's). */
    int stmt_no;
    int parse;
    /* Outcome when delivered from the `later` list (err PG_OK: an acquire grant). */
    enum pg_error err;
    char sqlstate[6];
    char *errmsg;
    struct pg_req *next;
};

struct pg_req_list {
    struct pg_req *head, *tail;
    size_t n;
};

/* One uv_poll_t; conn is NULL once the handle is being closed. */
struct pg_poll {
    uv_poll_t handle;
    struct pg_pool *pool;
    struct pg_conn *conn;
};

/* A statement prepared on one connection, named "tierone_<no>". */
struct pg_stmt {
    uint64_t hash; /* FNV-1a of sql */
    char *sql;
    unsigned no;
    int confirmed; /* its Parse succeeded (until then, nothing else runs it on this slot) */
};

/* Statements one connection prepares at most; later new ones run unnamed. */
#define PG_STMT_CACHE 128

struct pg_conn {
    struct pg_pool *pool;
    int index;
    enum pg_conn_state state;
    PGconn *pg;
    struct pg_poll *poll;
    int poll_events;
    uv_timer_t timer; /* connect deadline, query watchdog or backoff, by state */
    uint32_t backoff_ms;
    struct pg_req_list wire; /* sent, results pending, oldest first */
    PGresult *res;           /* the oldest one's result so far */
    unsigned units;          /* results of the oldest one completed (PQgetResult NULLs) */
    int held;                /* acquired by a caller (also while the grant is on its way) */
    /* Prepared statements of this session (lost with the connection); `unconfirmed` of
     * them still wait for their Parse's result. */
    struct pg_stmt stmts[PG_STMT_CACHE];
    unsigned nstmts, next_no, unconfirmed;
    int cork; /* TCP_CORK on the socket: 1 set, 0 not, -1 the socket cannot (Unix) */
};

struct pg_pool {
    uv_loop_t *loop;
    char **kw, **vals; /* connect parameters for PQconnectStartParams, NULL-terminated */
    unsigned size, max_waiters;
    unsigned depth; /* statements on one connection's wire at most */
    int prepare;    /* prepare statements with parameters once per connection */
    uint32_t connect_timeout_ms, query_timeout_ms, wait_timeout_ms;
    struct pg_conn *conns;
    struct pg_req_list queue;      /* waiting for a connection, oldest first */
    struct pg_req_list later;      /* finished, callback not yet run */
    struct pg_req_list delivering; /* the batch pg_pool_on_kick is delivering */
    uv_timer_t kick;               /* delivers `later` */
    uv_timer_t wait_timer;         /* fails queued requests at their deadline */
    /* Uncorks the corked sockets at the end of the loop iteration, so the statements of
     * one iteration leave in one segment; armed while some connection is corked. */
    struct defer uncork;
    char *last_error; /* last connect failure; NULL once a connection is up */
    int warned_down;
    uint64_t queries_total, errors_total, pipelined_total;
    unsigned held;
    int handles_open;
    int closing, finished;
    void (*closed_cb)(void *arg);
    void *closed_arg;
};

/* ---- pg_result.c ---- */

/* Fill r for an error without a PGresult at hand: raised by the pool, or saved from a
 * connection that was lost (sqlstate "" or the server's, e.g. 57P01). */
void pg_result_set_error(struct pg_result *r, enum pg_error err, const char *sqlstate,
                         const char *message);
/* Fill r from a finished statement's result res (may be NULL: then conn's error message
 * describes a lost connection). *msg receives a new string r->message points into (or NULL);
 * the caller frees it after the callback. */
void pg_result_from_pq(struct pg_result *r, PGresult *res, PGconn *conn, char **msg);

/* ---- pg.c: requests and the pool ---- */

void pg_req_list_push(struct pg_req_list *l, struct pg_req *req);
/* Append every request of src to dst, in order; src is left empty. */
void pg_req_list_move(struct pg_req_list *dst, struct pg_req_list *src);
/* The oldest request of l (removed), or NULL. */
struct pg_req *pg_req_list_pop(struct pg_req_list *l);

/* New request; sql and params are copied. */
struct pg_req *pg_req_new(struct pg_pool *p, enum pg_req_kind kind, const char *sql, int nparams,
                          const char *const *params);
void pg_req_free(struct pg_req *req);
/* Run req's callback with r (NULL r: an acquire grant), count it, free req. */
void pg_req_deliver(struct pg_req *req, const struct pg_result *r);
/* Complete req from the loop (the kick timer) with err (PG_OK: an acquire grant). */
void pg_req_finish_later(struct pg_req *req, enum pg_error err, const char *sqlstate,
                         const char *msg);
/* Hand waiting requests to free slots; open slots for the rest. Runs no callbacks. */
void pg_pool_dispatch(struct pg_pool *p);
/* Free the pool once it is closing, every handle closed and every slot released. */
void pg_pool_maybe_finish(struct pg_pool *p);

/* ---- pg_conn.c: one slot ---- */

/* Set up slot index of p (DOWN, its timer initialised: one handle). */
void pg_conn_init(struct pg_conn *c, struct pg_pool *p, int index);
/* Start connecting slot c (DOWN). */
void pg_conn_connect(struct pg_conn *c);
/* 1 if the UP slot c can take req now: an acquire needs an idle slot; a statement needs
 * room on the wire, and no Parse of the same text still unanswered on c. */
int pg_conn_accepts(const struct pg_conn *c, const struct pg_req *req);
/* Send req on the UP slot c; failures complete req later. */
void pg_conn_send(struct pg_conn *c, struct pg_req *req);
/* FNV-1a of sql. */
uint64_t pg_stmt_hash(const char *sql);
/* Uncork every corked connection of the pool arg (the uncork defer's function). */
void pg_pool_uncork(void *arg);
/* For pg_pool_close: move the statements on the wire to out, close the connection and the
 * slot's handles; the slot is CLOSED. */
void pg_conn_shut(struct pg_conn *c, struct pg_req_list *out);

#endif
