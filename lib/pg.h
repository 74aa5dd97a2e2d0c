/* pg: a small pool of non-blocking PostgreSQL connections on a libuv loop (libpq's async
 * API: PQconnectStart/PQconnectPoll, PQsendQueryParams, PQconsumeInput/PQisBusy, one
 * uv_poll_t on each connection's socket).
 *
 *  - Parameters are always bound ($1, $2, ... text format): values are never formatted
 *    into SQL. A NULL in params[] is SQL NULL.
 *  - A statement with parameters is prepared (named) the first time a connection runs it,
 *    and executed by name from then on, so the server parses and plans it once per
 *    session instead of on every call (the knowledge base search plans in milliseconds).
 *    Each connection keeps up to 128 such statements, matched by their SQL text; more
 *    run unnamed (PQsendQueryParams). opts.no_prepare turns this off. A statement whose
 *    prepared form went stale (SQLSTATE 0A000 after its table changed, 26000 after a
 *    DEALLOCATE) fails once, retryably, and is prepared anew on its next run.
 *  - Connections open lazily: a slot connects when a query waits and no connection is
 *    free, up to opts.size connections. A lost connection is noticed at once (an idle one
 *    too: its socket stays watched); the slot reconnects after a backoff (100 ms doubling
 *    to 5 s, reset by a successful connect) if queries are waiting.
 *  - Pipelines (libpq's pipeline mode): a connection takes up to pipeline_depth statements
 *    at once, each followed by its own Sync, so each still runs as its own transaction and
 *    an error in one stops nothing behind it; results come back in order. A statement goes
 *    to an idle connection first; only when every slot is open and busy does it queue
 *    behind others on the connection with the fewest, and never behind a BEGIN (which goes
 *    alone), behind a statement on the wire for more than 50 ms, or behind a Parse of its
 *    own text not yet answered. A held connection runs one statement at a time.
 *  - A query that finds no free connection waits in a FIFO queue of at most max_waiters
 *    entries (also while the connections are being opened), each until its own deadline
 *    (wait_timeout_ms; also while the server is down), then fails retryably. Beyond
 *    max_waiters it fails at once ("pool queue full", retryable).
 *  - Timeouts: query_timeout_ms becomes the session's statement_timeout (server side,
 *    SQLSTATE 57014, retryable), and a client watchdog of query_timeout_ms + 2 s drops a
 *    connection whose server stopped answering altogether. connect_timeout_ms bounds each
 *    connect attempt. Only single statements: COPY is refused (PG_ERR_PROTOCOL).
 *  - Transactions: pg_pool_acquire hands one connection to the caller, who runs several
 *    statements on it with pg_conn_query and gives it back with pg_conn_release. A
 *    connection given back inside a transaction (open or aborted) is reset with ROLLBACK
 *    before anyone else gets it. A held connection that is lost is not reconnected behind
 *    the caller's back: its later queries fail (retryably) until it is released.
 *  - Host names in the conninfo are resolved synchronously by libpq (PQconnectStart); use
 *    an IP address or a local resolver when that matters.
 *
 * Callback contract (libuv's): if a submit function returns 0, its callback runs exactly
 * once, later, from the loop (never from inside the submit call), with the result or an
 * error; if it returns -1 the callback never runs. The one exception is pg_pool_close,
 * which runs the callbacks of everything still pending from inside itself (cancelled).
 * A struct pg_result is valid only during the callback: copy what you need. */
#ifndef TIERONE_PG_H
#define TIERONE_PG_H

#include "job_error.h"

#include <stdint.h>
#include <uv.h>

struct pg_pool;
struct pg_conn;   /* one connection, while acquired by a caller */
struct pg_result; /* a query's outcome, valid during its callback only */

/* Why a request failed. Everything but PG_OK is an error; pg_result_retryable says
 * whether trying again later can help. */
enum pg_error {
    PG_OK = 0,
    PG_ERR_SERVER,     /* the server refused the statement: see pg_result_sqlstate */
    PG_ERR_CONNECTION, /* connect failed, or the connection was lost (the statement may or
                        * may not have run); retryable */
    PG_ERR_TIMEOUT,    /* no free connection within wait_timeout_ms, or no reply within the
                        * client watchdog; retryable */
    PG_ERR_QUEUE_FULL, /* max_waiters requests were already waiting; retryable */
    PG_ERR_CANCELLED,  /* the pool closed first; retryable */
    PG_ERR_PROTOCOL,   /* a result the pool cannot handle (COPY); permanent */
};

struct pg_pool_opts {
    const char *conninfo;         /* required: postgresql:// URL or "key=value ..." */
    unsigned size;                /* connections, default 4 */
    unsigned max_waiters;         /* queue bound, default 1000 */
    uint32_t connect_timeout_ms;  /* per connect attempt, default 5000 */
    uint32_t query_timeout_ms;    /* statement_timeout; 0 = none (the server default) */
    uint32_t wait_timeout_ms;     /* longest wait for a connection, default 10000 */
    const char *application_name; /* default: the conninfo's, else "tierone" */
    int no_prepare; /* 1: never prepare (e.g. behind PgBouncer < 1.21 in transaction mode) */
    unsigned pipeline_depth; /* statements on one connection at once, default
                              * PG_PIPELINE_DEPTH; 1 = one at a time */
};

/* Statements a connection has on the wire at most, by default. */
#define PG_PIPELINE_DEPTH 16

struct pg_pool_stats {
    unsigned open;            /* connections up */
    unsigned busy;            /* of those, running a query or acquired by a caller */
    unsigned waiting;         /* requests in the wait queue */
    uint64_t queries_total;   /* queries completed (success or error) */
    uint64_t errors_total;    /* queries and acquires that completed with an error */
    uint64_t pipelined_total; /* statements sent behind another on the same connection */
};

/* Result of pg_query / pg_conn_query. */
typedef void (*pg_result_cb)(const struct pg_result *r, void *arg);
/* Result of pg_pool_acquire: conn on success (err NULL), or conn NULL and err set. */
typedef void (*pg_acquire_cb)(struct pg_conn *conn, const struct pg_result *err, void *arg);

/* New pool on loop. Connects nothing yet. Returns NULL with a reason in *err (caller
 * frees) when the conninfo does not parse. */
struct pg_pool *pg_pool_new(uv_loop_t *loop, const struct pg_pool_opts *opts, char **err);

/* Run sql (one statement) with nparams text parameters (params[i] NULL = SQL NULL) on any
 * connection. sql and params are copied. Returns 0 (cb runs once, later), or -1 (cb never
 * runs) when the pool is closing or the arguments are invalid. */
int pg_query(struct pg_pool *p, const char *sql, int nparams, const char *const *params,
             pg_result_cb cb, void *arg);

/* Take one connection for several statements (a transaction). Returns 0 (cb runs once,
 * later, with the connection or an error), or -1 when the pool is closing. The caller owns
 * the connection until pg_conn_release. */
int pg_pool_acquire(struct pg_pool *p, pg_acquire_cb cb, void *arg);

/* Like pg_query, on an acquired connection. One query at a time: returns -1 if one is
 * still running on conn, or the pool is closing. A connection lost meanwhile makes the
 * query fail with PG_ERR_CONNECTION (through cb). */
int pg_conn_query(struct pg_conn *conn, const char *sql, int nparams, const char *const *params,
                  pg_result_cb cb, void *arg);

/* Give an acquired connection back. Inside a transaction it is rolled back first; a lost
 * one is reconnected later. conn must not be used afterwards. A query still running on it
 * completes normally (its callback runs). Also required while the pool is closing: the
 * pool finishes closing only when every acquired connection has been released. */
void pg_conn_release(struct pg_conn *conn);

/* The server process id of conn (0 if not connected); for logs and tests. */
int pg_conn_backend_pid(const struct pg_conn *conn);

/* Current numbers for /metrics. */
void pg_pool_stats(const struct pg_pool *p, struct pg_pool_stats *out);

/* Close: every queued or running request completes with PG_ERR_CANCELLED (from inside this
 * call), connections close, then, once every handle is closed and every acquired
 * connection released, closed_cb(arg) runs (optional) and the pool is freed. */
void pg_pool_close(struct pg_pool *p, void (*closed_cb)(void *arg), void *arg);

/* ---- results (lib/pg_result.c) ---------------------------------------------------------- */

/* 1 if the request succeeded. */
int pg_result_ok(const struct pg_result *r);
/* PG_OK or why it failed. */
enum pg_error pg_result_error(const struct pg_result *r);
/* 1 if the error is worth retrying (see pg_sqlstate_retryable); 0 on success. */
int pg_result_retryable(const struct pg_result *r);
/* Five-character SQLSTATE of an error ("" when none, e.g. success or pool errors). */
const char *pg_result_sqlstate(const struct pg_result *r);
/* Human-readable error ("" on success). */
const char *pg_result_message(const struct pg_result *r);
/* Rows and columns of a successful result (0 otherwise). */
int pg_result_nrows(const struct pg_result *r);
int pg_result_ncols(const struct pg_result *r);
/* Column index of name, or -1. */
int pg_result_col(const struct pg_result *r, const char *name);
/* Name of column col, or NULL when out of range. */
const char *pg_result_colname(const struct pg_result *r, int col);
/* Text value of (row, col); NULL for SQL NULL or out of range. */
const char *pg_result_value(const struct pg_result *r, int row, int col);
/* 1 if (row, col) is SQL NULL (or out of range). */
int pg_result_is_null(const struct pg_result *r, int row, int col);
/* Rows affected by INSERT/UPDATE/DELETE/... (cmdTuples); 0 when none. */
long long pg_result_affected(const struct pg_result *r);

/* 1 if a server error with this SQLSTATE can succeed when retried: connection exceptions
 * (08xxx), shutdown (57P01, 57P02, 57P03), statement timeout / cancel (57014), transaction
 * rollbacks (40xxx: serialization failure, deadlock), insufficient resources (53xxx), lock
 * not available (55P03), read-only transaction (25006, a failover in progress). */
int pg_sqlstate_retryable(const char *sqlstate);

/* The failure as a job error (NULL if r succeeded): JOB_ERR_RETRY or JOB_ERR_PERMANENT,
 * error_class "Tierone::PG::<Name>" (ConnectionBad, QueryCanceled, UniqueViolation,
 * SyntaxError, PoolQueueFull, ...), message "<what>: <message> (SQLSTATE xxxxx)". what
 * names the operation (e.g. "kb search"); NULL for none. Caller owns the result. */
struct job_error *pg_result_job_error(const struct pg_result *r, const char *what);
/* The error of a submit function (pg_query, pg_pool_acquire, or a module built on them) that
 * returned -1 because the pool is closing (the process is shutting down): JOB_ERR_RETRY,
 * "Tierone::PG::PoolClosing", "<what>: the database pool is closing". Caller owns it. */
struct job_error *pg_pool_closing_error(const char *what);

#endif
