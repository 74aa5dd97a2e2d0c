/* pg: the non-blocking PostgreSQL pool against the real server in TIERONE_TEST_DATABASE_URL.
 *
 * Bound parameters (an injection string round-trips as data), NULLs and the row/column API,
 * error classification (syntax, unique violation, statement timeout), the bounded wait
 * queue, transactions on an acquired connection (rolled back on release), a backend killed
 * mid-query (retryable, the pool reconnects), close with queries in flight, an unreachable
 * server. Every test closes the pool and asserts uv_loop_close() == 0. The restart of a
 * whole server is in test_pg_restart.c. */
#include "clock.h"
#include "pg.h"
#include "pg_internal.h" /* PG_STMT_CACHE */

#include <criterion/criterion.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define MAX_ROWS 8
#define MAX_COLS 4

static uv_loop_t loop;
static uv_timer_t guard; /* wakes the loop while run_until polls its flag */

/* Everything a test wants to know about one result, copied out of the callback. */
struct qres {
    int done;
    int order; /* completion order among the results of a test */
    enum pg_error err;
    int retryable;
    char sqlstate[6];
    char msg[512];
    int nrows, ncols;
    char *v[MAX_ROWS][MAX_COLS]; /* NULL for SQL NULL */
    int isnull[MAX_ROWS][MAX_COLS];
    long long affected;
    struct job_error *je;
};

static int completions;

static void qres_fill(struct qres *q, const struct pg_result *r)
{
    q->done = 1;
    q->order = completions++;
    q->err = pg_result_error(r);
    q->retryable = pg_result_retryable(r);
    snprintf(q->sqlstate, sizeof q->sqlstate, "%s", pg_result_sqlstate(r));
    snprintf(q->msg, sizeof q->msg, "%s", pg_result_message(r));
    q->nrows = pg_result_nrows(r);
    q->ncols = pg_result_ncols(r);
    for (int i = 0; i < q->nrows && i < MAX_ROWS; i++)
        for (int j = 0; j < q->ncols && j < MAX_COLS; j++) {
            const char *v = pg_result_value(r, i, j);
            q->v[i][j] = v ? strdup(v) : NULL;
            q->isnull[i][j] = pg_result_is_null(r, i, j);
        }
    q->affected = pg_result_affected(r);
    q->je = pg_result_job_error(r, "test query");
}

static void qres_clear(struct qres *q)
{
    for (int i = 0; i < MAX_ROWS; i++)
        for (int j = 0; j < MAX_COLS; j++)
            free(q->v[i][j]);
    job_error_free(q->je);
    memset(q, 0, sizeof *q);
}

static void on_result(const struct pg_result *r, void *arg)
{
    qres_fill(arg, r);
}

static void on_guard(uv_timer_t *t)
{
    (void)t;
}

/* Run the loop until *flag is set (20 s at most). */
static void run_until(const int *flag)
{
    uint64_t deadline = clock_mono_ms() + 20000;
    uv_timer_start(&guard, on_guard, 50, 50);
    while (!*flag) {
        cr_assert(clock_mono_ms() < deadline, "timed out waiting for a callback");
        uv_run(&loop, UV_RUN_ONCE);
    }
    uv_timer_stop(&guard);
}

static const char *db_url(void)
{
    const char *u = getenv("TIERONE_TEST_DATABASE_URL");
    cr_assert(u && *u, "TIERONE_TEST_DATABASE_URL is not set: run through scripts/test.sh "
                       "(bash scripts/test.sh --services-only -- ctest ...)");
    return u;
}

/* A pool with pipeline depth depth (0: the default). */
static struct pg_pool *pool_open_depth(unsigned size, unsigned max_waiters,
                                       uint32_t query_timeout_ms, unsigned depth)
{
    struct pg_pool_opts o = {.conninfo = db_url(),
                             .size = size,
                             .max_waiters = max_waiters,
                             .query_timeout_ms = query_timeout_ms,
                             .pipeline_depth = depth};
    char *err = NULL;
    struct pg_pool *p = pg_pool_new(&loop, &o, &err);
    cr_assert_not_null(p, "pg_pool_new: %s", err ? err : "?");
    return p;
}

static struct pg_pool *pool_open(unsigned size, unsigned max_waiters, uint32_t query_timeout_ms)
{
    return pool_open_depth(size, max_waiters, query_timeout_ms, 0);
}

static void on_closed(void *arg)
{
    *(int *)arg = 1;
}

static void pool_close_wait(struct pg_pool *p)
{
    int closed = 0;
    pg_pool_close(p, on_closed, &closed);
    run_until(&closed);
}

/* Run sql on p and wait for its result (caller clears it). */
static void q(struct pg_pool *p, struct qres *out, const char *sql, int n,
              const char *const *params)
{
    memset(out, 0, sizeof *out);
    cr_assert_eq(pg_query(p, sql, n, params, on_result, out), 0);
    run_until(&out->done);
}

/* Like q, asserting success. */
static void q_ok(struct pg_pool *p, struct qres *out, const char *sql, int n,
                 const char *const *params)
{
    q(p, out, sql, n, params);
    cr_assert_eq(out->err, PG_OK, "%s: %s", sql, out->msg);
}

static void exec_ok(struct pg_pool *p, const char *sql)
{
    struct qres r;
    q_ok(p, &r, sql, 0, NULL);
    qres_clear(&r);
}

static void setup(void)
{
    completions = 0;
    cr_assert_eq(uv_loop_init(&loop), 0);
    uv_timer_init(&loop, &guard);
}

static void teardown(void)
{
    uv_close((uv_handle_t *)&guard, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&loop), 0, "handles left open");
}

TestSuite(pg, .init = setup, .fini = teardown, .timeout = 60);

Test(pg, parameters_are_bound_never_formatted)
{
    struct pg_pool *p = pool_open(1, 0, 0);
    const char *evil = "'; DROP TABLE pgt_inject; --";
    exec_ok(p, "DROP TABLE IF EXISTS pgt_inject");
    exec_ok(p, "CREATE TABLE pgt_inject (v text)");
    struct qres r;
    const char *ins[] = {evil};
    q_ok(p, &r, "INSERT INTO pgt_inject VALUES ($1)", 1, ins);
    cr_expect_eq(r.affected, 1);
    qres_clear(&r);
    q_ok(p, &r, "SELECT v FROM pgt_inject", 0, NULL);
    cr_assert_eq(r.nrows, 1);
    cr_expect_str_eq(r.v[0][0], evil);
    qres_clear(&r);

    const char *odd[] = {"quote ' double \" backslash \\ dollar $1", "41",
                         "h\xc3\xa9llo \xe2\x9c\x93"};
    q_ok(p, &r, "SELECT $1::text AS a, $2::int + 1 AS b, $3::text AS c", 3, odd);
    cr_expect_str_eq(r.v[0][0], odd[0]);
    cr_expect_str_eq(r.v[0][1], "42");
    cr_expect_str_eq(r.v[0][2], odd[2]);
    qres_clear(&r);
    exec_ok(p, "DROP TABLE pgt_inject");
    pool_close_wait(p);
}

Test(pg, nulls_and_the_row_column_api)
{
    struct pg_pool *p = pool_open(2, 0, 0);
    struct qres r;
    q_ok(p, &r,
         "SELECT * FROM (VALUES (1, 'a', NULL::text), (2, NULL, 'z')) AS t(id, name, note) "
         "ORDER BY id",
         0, NULL);
    cr_assert_eq(r.nrows, 2);
    cr_assert_eq(r.ncols, 3);
    cr_expect_str_eq(r.v[0][0], "1");
    cr_expect_str_eq(r.v[0][1], "a");
    cr_expect_null(r.v[0][2]);
    cr_expect(r.isnull[0][2]);
    cr_expect_not(r.isnull[0][1]);
    cr_expect_null(r.v[1][1]);
    cr_expect(r.isnull[1][1]);
    cr_expect_str_eq(r.v[1][2], "z");
    cr_expect_eq(r.affected, 2); /* SELECT reports its row count */
    qres_clear(&r);

    const char *nul[] = {NULL};
    q_ok(p, &r, "SELECT $1::text IS NULL AS was_null, $1::text AS v", 1, nul);
    cr_expect_str_eq(r.v[0][0], "t");
    cr_expect(r.isnull[0][1]);
    qres_clear(&r);
    pool_close_wait(p);
}

/* Column lookup needs the live result: checked inside the callback. */
static void on_columns(const struct pg_result *r, void *arg)
{
    int *ok = arg;
    cr_expect(pg_result_ok(r));
    cr_expect_eq(pg_result_col(r, "id"), 0);
    cr_expect_eq(pg_result_col(r, "Name"), 1);
    cr_expect_eq(pg_result_col(r, "name"), -1, "names match exactly");
    cr_expect_eq(pg_result_col(r, "nope"), -1);
    cr_expect_str_eq(pg_result_colname(r, 1), "Name");
    cr_expect_null(pg_result_colname(r, 2));
    cr_expect_null(pg_result_value(r, 5, 0));
    cr_expect_null(pg_result_value(r, 0, -1));
    cr_expect(pg_result_is_null(r, 9, 9));
    cr_expect_str_eq(pg_result_value(r, 0, pg_result_col(r, "Name")), "x");
    cr_expect_str_eq(pg_result_message(r), "");
    cr_expect_str_eq(pg_result_sqlstate(r), "");
    cr_expect_null(pg_result_job_error(r, "x"));
    *ok = 1;
}

Test(pg, column_lookup)
{
    struct pg_pool *p = pool_open(1, 0, 0);
    int done = 0;
    cr_assert_eq(pg_query(p, "SELECT 7 AS id, 'x' AS \"Name\"", 0, NULL, on_columns, &done), 0);
    run_until(&done);
    pool_close_wait(p);
}

Test(pg, affected_rows)
{
    struct pg_pool *p = pool_open(1, 0, 0);
    struct qres r;
    exec_ok(p, "DROP TABLE IF EXISTS pgt_aff");
    exec_ok(p, "CREATE TABLE pgt_aff (id int)");
    q_ok(p, &r, "INSERT INTO pgt_aff SELECT generate_series(1, 3)", 0, NULL);
    cr_expect_eq(r.affected, 3);
    cr_expect_eq(r.nrows, 0);
    qres_clear(&r);
    const char *one[] = {"2"};
    q_ok(p, &r, "UPDATE pgt_aff SET id = id + 10 WHERE id >= $1", 1, one);
    cr_expect_eq(r.affected, 2);
    qres_clear(&r);
    exec_ok(p, "DROP TABLE pgt_aff");
    pool_close_wait(p);
}

Test(pg, errors_are_classified)
{
    struct pg_pool *p = pool_open(1, 0, 0);
    struct qres r;
    q(p, &r, "SELEC 1", 0, NULL);
    cr_expect_eq(r.err, PG_ERR_SERVER);
    cr_expect_str_eq(r.sqlstate, "42601");
    cr_expect_not(r.retryable);
    cr_assert_not_null(r.je);
    cr_expect_eq(r.je->kind, JOB_ERR_PERMANENT);
    cr_expect_str_eq(r.je->error_class, "Tierone::PG::SyntaxError");
    cr_expect(strstr(r.je->error_message, "test query: ") == r.je->error_message, "%s",
              r.je->error_message);
    cr_expect(strstr(r.je->error_message, "(SQLSTATE 42601)"), "%s", r.je->error_message);
    qres_clear(&r);

    exec_ok(p, "DROP TABLE IF EXISTS pgt_uniq");
    exec_ok(p, "CREATE TABLE pgt_uniq (id int PRIMARY KEY)");
    const char *one[] = {"1"};
    q_ok(p, &r, "INSERT INTO pgt_uniq VALUES ($1)", 1, one);
    qres_clear(&r);
    q(p, &r, "INSERT INTO pgt_uniq VALUES ($1)", 1, one);
    cr_expect_eq(r.err, PG_ERR_SERVER);
    cr_expect_str_eq(r.sqlstate, "23505");
    cr_expect_not(r.retryable);
    cr_expect_eq(r.je->kind, JOB_ERR_PERMANENT);
    cr_expect_str_eq(r.je->error_class, "Tierone::PG::UniqueViolation");
    qres_clear(&r);
    exec_ok(p, "DROP TABLE pgt_uniq");
    /* The connection is still usable after errors. */
    q_ok(p, &r, "SELECT 1", 0, NULL);
    qres_clear(&r);
    pool_close_wait(p);
}

Test(pg, statement_timeout_is_retryable)
{
    struct pg_pool *p = pool_open(1, 0, 200);
    struct qres r;
    q(p, &r, "SELECT pg_sleep(5)", 0, NULL);
    cr_expect_eq(r.err, PG_ERR_SERVER);
    cr_expect_str_eq(r.sqlstate, "57014");
    cr_expect(r.retryable);
    cr_assert_not_null(r.je);
    cr_expect_eq(r.je->kind, JOB_ERR_RETRY);
    cr_expect_str_eq(r.je->error_class, "Tierone::PG::QueryCanceled");
    qres_clear(&r);
    q_ok(p, &r, "SELECT current_setting('statement_timeout')", 0, NULL);
    cr_expect_str_eq(r.v[0][0], "200ms");
    qres_clear(&r);
    pool_close_wait(p);
}

Test(pg, sqlstate_classes)
{
    const char *retry[] = {"08006", "08001", "57P01", "57P02", "57P03", "40001",
                           "40P01", "53300", "53100", "57014", "55P03", "25006"};
    const char *perm[] = {"42601", "23505", "22P02", "42P01", "XX000", "", "57P04", "0800"};
    for (size_t i = 0; i < sizeof retry / sizeof *retry; i++)
        cr_expect(pg_sqlstate_retryable(retry[i]), "%s", retry[i]);
    for (size_t i = 0; i < sizeof perm / sizeof *perm; i++)
        cr_expect_not(pg_sqlstate_retryable(perm[i]), "%s", perm[i]);
    cr_expect_not(pg_sqlstate_retryable(NULL));
}

Test(pg, bounded_wait_queue)
{
    struct pg_pool *p = pool_open(1, 2, 0);
    exec_ok(p, "SELECT 1"); /* the one connection is up and free */
    completions = 0;
    struct qres r[4];
    memset(r, 0, sizeof r);
    const char *vals[] = {"0", "1", "2", "3"};
    for (int i = 0; i < 4; i++) {
        const char *param[] = {vals[i]};
        cr_assert_eq(pg_query(p, "SELECT pg_sleep(0.1), $1::int AS i", 1, param, on_result, &r[i]),
                     0);
    }
    struct pg_pool_stats st;
    pg_pool_stats(p, &st);
    cr_expect_eq(st.busy, 1);
    cr_expect_eq(st.waiting, 2);
    for (int i = 0; i < 4; i++)
        run_until(&r[i].done);
    cr_expect_eq(r[3].err, PG_ERR_QUEUE_FULL);
    cr_expect(r[3].retryable);
    cr_expect_eq(r[3].order, 0, "the full queue fails at once");
    cr_expect_str_eq(r[3].je->error_class, "Tierone::PG::PoolQueueFull");
    cr_expect_eq(r[3].je->kind, JOB_ERR_RETRY);
    for (int i = 0; i < 3; i++) {
        cr_expect_eq(r[i].err, PG_OK, "query %d: %s", i, r[i].msg);
        cr_expect_str_eq(r[i].v[0][1], vals[i]);
        cr_expect_eq(r[i].order, i + 1, "FIFO");
    }
    for (int i = 0; i < 4; i++)
        qres_clear(&r[i]);
    pool_close_wait(p);
}

/* A transaction: acquire, run stmts one after the other, release. */
struct txn {
    struct pg_pool *pool;
    struct pg_conn *conn;
    const char *const *stmts;
    int n, i;
    struct qres res[8];
    int done;
};

static void txn_step(struct txn *t);

static void txn_on_result(const struct pg_result *r, void *arg)
{
    struct txn *t = arg;
    qres_fill(&t->res[t->i++], r);
    txn_step(t);
}

static void txn_step(struct txn *t)
{
    if (t->i == t->n) {
        pg_conn_release(t->conn);
        t->done = 1;
        return;
    }
    cr_assert_eq(pg_conn_query(t->conn, t->stmts[t->i], 0, NULL, txn_on_result, t), 0);
    /* One statement at a time on a connection. */
    cr_assert_eq(pg_conn_query(t->conn, "SELECT 1", 0, NULL, txn_on_result, t), -1);
}

static void txn_on_acquire(struct pg_conn *c, const struct pg_result *err, void *arg)
{
    struct txn *t = arg;
    cr_assert_null(err, "acquire failed: %s", err ? pg_result_message(err) : "");
    cr_assert_not_null(c);
    cr_assert_gt(pg_conn_backend_pid(c), 0);
    t->conn = c;
    txn_step(t);
}

static void txn_run(struct pg_pool *p, struct txn *t, const char *const *stmts, int n)
{
    memset(t, 0, sizeof *t);
    t->pool = p;
    t->stmts = stmts;
    t->n = n;
    cr_assert_eq(pg_pool_acquire(p, txn_on_acquire, t), 0);
    run_until(&t->done);
}

static void txn_clear(struct txn *t)
{
    for (int i = 0; i < t->n; i++)
        qres_clear(&t->res[i]);
}

static void expect_count(struct pg_pool *p, const char *want)
{
    struct qres r;
    q_ok(p, &r, "SELECT count(*) FROM pgt_tx", 0, NULL);
    cr_expect_str_eq(r.v[0][0], want);
    qres_clear(&r);
}

Test(pg, transactions_on_an_acquired_connection)
{
    /* One connection: what runs after a release runs on the same session, so a
     * transaction left open would show. */
    struct pg_pool *p = pool_open(1, 0, 0);
    exec_ok(p, "DROP TABLE IF EXISTS pgt_tx");
    exec_ok(p, "CREATE TABLE pgt_tx (id int PRIMARY KEY)");
    struct txn t;

    const char *commit[] = {"BEGIN", "INSERT INTO pgt_tx VALUES (1)", "COMMIT"};
    txn_run(p, &t, commit, 3);
    for (int i = 0; i < 3; i++)
        cr_expect_eq(t.res[i].err, PG_OK, "%s: %s", commit[i], t.res[i].msg);
    txn_clear(&t);
    expect_count(p, "1");

    /* An error aborts the transaction; release rolls it back. */
    const char *fail[] = {"BEGIN", "INSERT INTO pgt_tx VALUES (2)",
                          "INSERT INTO pgt_tx VALUES (1)"};
    txn_run(p, &t, fail, 3);
    cr_expect_eq(t.res[1].err, PG_OK);
    cr_expect_str_eq(t.res[2].sqlstate, "23505");
    txn_clear(&t);
    expect_count(p, "1");

    /* Released inside an open transaction (no COMMIT): rolled back too. */
    const char *open_tx[] = {"BEGIN", "INSERT INTO pgt_tx VALUES (3)"};
    txn_run(p, &t, open_tx, 2);
    cr_expect_eq(t.res[1].err, PG_OK);
    txn_clear(&t);
    expect_count(p, "1");

    /* A BEGIN sent through pg_query does not leak into the next query either. */
    exec_ok(p, "BEGIN");
    struct qres r1, r2;
    q_ok(p, &r1, "SELECT pg_current_xact_id()::text", 0, NULL);
    q_ok(p, &r2, "SELECT pg_current_xact_id()::text", 0, NULL);
    cr_expect_str_neq(r1.v[0][0], r2.v[0][0], "each statement in its own transaction");
    qres_clear(&r1);
    qres_clear(&r2);
    exec_ok(p, "DROP TABLE pgt_tx");
    pool_close_wait(p);
}

Test(pg, killed_backend_fails_retryably_and_the_pool_reconnects)
{
    struct pg_pool *p = pool_open(1, 0, 0);
    struct pg_pool *killer = pool_open(1, 0, 0);
    struct qres r, k, s;
    q_ok(p, &r, "SELECT pg_backend_pid()", 0, NULL);
    char *pid = strdup(r.v[0][0]);
    qres_clear(&r);

    memset(&s, 0, sizeof s);
    cr_assert_eq(pg_query(p, "SELECT pg_sleep(10)", 0, NULL, on_result, &s), 0);
    const char *param[] = {pid};
    q_ok(killer, &k, "SELECT pg_terminate_backend($1::int)", 1, param);
    cr_expect_str_eq(k.v[0][0], "t");
    qres_clear(&k);
    run_until(&s.done);
    cr_expect_neq(s.err, PG_OK);
    cr_expect(s.retryable, "err %d sqlstate %s: %s", s.err, s.sqlstate, s.msg);
    cr_expect(s.err == PG_ERR_CONNECTION || strcmp(s.sqlstate, "57P01") == 0, "%d %s: %s", s.err,
              s.sqlstate, s.msg);
    cr_expect_eq(s.je->kind, JOB_ERR_RETRY);
    cr_expect_str_eq(s.je->error_class, "Tierone::PG::ConnectionBad");
    qres_clear(&s);

    q_ok(p, &r, "SELECT pg_backend_pid()", 0, NULL);
    cr_expect_str_neq(r.v[0][0], pid, "a new session");
    qres_clear(&r);
    struct pg_pool_stats st;
    pg_pool_stats(p, &st);
    cr_expect_eq(st.open, 1);
    cr_expect_eq(st.busy, 0);
    cr_expect_eq(st.errors_total, 1);
    cr_expect_eq(st.queries_total, 3);
    free(pid);
    pool_close_wait(killer);
    pool_close_wait(p);
}

static void on_acquire_record(struct pg_conn *c, const struct pg_result *err, void *arg)
{
    struct qres *q = arg;
    cr_expect_null(c);
    cr_assert_not_null(err);
    qres_fill(q, err);
}

Test(pg, close_with_queries_in_flight)
{
    /* One statement per connection, so that four of them wait in the queue. */
    struct pg_pool *p = pool_open_depth(2, 0, 0, 1);
    struct qres r[5], a;
    memset(r, 0, sizeof r);
    memset(&a, 0, sizeof a);
    for (int i = 0; i < 5; i++)
        cr_assert_eq(pg_query(p, "SELECT pg_sleep(1)", 0, NULL, on_result, &r[i]), 0);
    cr_assert_eq(pg_pool_acquire(p, on_acquire_record, &a), 0);
    /* Wait until both connections are up and running a statement. */
    uint64_t deadline = clock_mono_ms() + 10000;
    struct pg_pool_stats st;
    uv_timer_start(&guard, on_guard, 10, 10);
    for (pg_pool_stats(p, &st); st.busy < 2; pg_pool_stats(p, &st)) {
        cr_assert(clock_mono_ms() < deadline, "connections did not come up");
        uv_run(&loop, UV_RUN_ONCE);
    }
    uv_timer_stop(&guard);
    cr_expect_eq(st.waiting, 4);
    int closed = 0;
    pg_pool_close(p, on_closed, &closed);
    for (int i = 0; i < 5; i++) {
        cr_expect(r[i].done, "query %d completed inside pg_pool_close", i);
        cr_expect_eq(r[i].err, PG_ERR_CANCELLED);
        cr_expect(r[i].retryable);
        qres_clear(&r[i]);
    }
    cr_expect(a.done);
    cr_expect_eq(a.err, PG_ERR_CANCELLED);
    qres_clear(&a);
    cr_expect_eq(pg_query(p, "SELECT 1", 0, NULL, on_result, &r[0]), -1, "pool is closing");
    cr_expect_eq(pg_pool_acquire(p, on_acquire_record, &a), -1);
    run_until(&closed);
}

static void on_acquire_keep(struct pg_conn *c, const struct pg_result *err, void *arg)
{
    cr_assert_null(err);
    *(struct pg_conn **)arg = c;
}

Test(pg, close_waits_for_held_connections)
{
    struct pg_pool *p = pool_open(1, 0, 0);
    struct pg_conn *c = NULL;
    cr_assert_eq(pg_pool_acquire(p, on_acquire_keep, &c), 0);
    uv_timer_start(&guard, on_guard, 10, 10);
    uint64_t deadline = clock_mono_ms() + 10000;
    while (!c) {
        cr_assert(clock_mono_ms() < deadline);
        uv_run(&loop, UV_RUN_ONCE);
    }
    uv_timer_stop(&guard);
    int closed = 0;
    pg_pool_close(p, on_closed, &closed);
    struct qres r;
    cr_expect_eq(pg_conn_query(c, "SELECT 1", 0, NULL, on_result, &r), -1);
    uv_run(&loop, UV_RUN_DEFAULT); /* every pool handle closes */
    cr_expect_not(closed, "the pool waits for the held connection");
    pg_conn_release(c);
    cr_expect(closed);
}

Test(pg, unreachable_server_fails_at_the_deadline)
{
    /* Nothing listens on port 1; the queued query waits until its own deadline. */
    struct pg_pool_opts o = {.conninfo = "postgresql://nobody@127.0.0.1:1/none",
                             .wait_timeout_ms = 500};
    char *err = NULL;
    struct pg_pool *p = pg_pool_new(&loop, &o, &err);
    cr_assert_not_null(p, "%s", err);
    struct qres r;
    q(p, &r, "SELECT 1", 0, NULL);
    cr_expect_eq(r.err, PG_ERR_CONNECTION);
    cr_expect(r.retryable);
    cr_expect(strstr(r.msg, "no connection within 500 ms"), "%s", r.msg);
    cr_expect_str_eq(r.je->error_class, "Tierone::PG::ConnectionBad");
    qres_clear(&r);
    struct pg_pool_stats st;
    pg_pool_stats(p, &st);
    cr_expect_eq(st.open, 0);
    cr_expect_eq(st.errors_total, 1);
    pool_close_wait(p);
}

Test(pg, invalid_conninfo)
{
    struct pg_pool_opts o = {.conninfo = "host=x nonsense_key=1"};
    char *err = NULL;
    cr_expect_null(pg_pool_new(&loop, &o, &err));
    cr_assert_not_null(err);
    cr_expect(strstr(err, "invalid conninfo"), "%s", err);
    free(err);
}

Test(pg, large_parameters_are_flushed_in_pieces)
{
    struct pg_pool *p = pool_open(1, 0, 0);
    size_t n = 8u << 20; /* far more than a socket buffer: PQflush needs several rounds */
    char *big = malloc(n + 1);
    for (size_t i = 0; i < n; i++)
        big[i] = (char)('a' + i % 26);
    big[n] = 0;
    const char *param[] = {big};
    struct qres r;
    q_ok(p, &r,
         "SELECT length($1), md5($1) = md5(left(repeat('abcdefghijklmnopqrstuvwxyz', 400000), "
         "8388608))",
         1, param);
    cr_expect_str_eq(r.v[0][0], "8388608");
    cr_expect_str_eq(r.v[0][1], "t");
    qres_clear(&r);
    free(big);
    pool_close_wait(p);
}

Test(pg, copy_is_refused_and_the_pool_carries_on)
{
    struct pg_pool *p = pool_open(1, 0, 0);
    struct qres r;
    q(p, &r, "COPY (SELECT 1) TO STDOUT", 0, NULL);
    cr_expect_eq(r.err, PG_ERR_PROTOCOL);
    cr_expect_not(r.retryable);
    cr_expect_eq(r.je->kind, JOB_ERR_PERMANENT);
    qres_clear(&r);
    q_ok(p, &r, "SELECT 2", 0, NULL);
    cr_expect_str_eq(r.v[0][0], "2");
    qres_clear(&r);
    pool_close_wait(p);
}

/* A held connection that is lost stays lost until released: no silent reconnect in the
 * middle of the caller's transaction. */
struct held {
    struct pg_conn *conn;
    int acquired;
    struct qres r1, r2;
};

static void on_held_acquire(struct pg_conn *c, const struct pg_result *err, void *arg)
{
    struct held *h = arg;
    cr_assert_null(err);
    h->conn = c;
    h->acquired = 1;
}

Test(pg, a_lost_held_connection_is_not_reconnected_behind_the_caller)
{
    struct pg_pool *p = pool_open(1, 0, 0);
    struct pg_pool *killer = pool_open(1, 0, 0);
    struct held h;
    memset(&h, 0, sizeof h);
    cr_assert_eq(pg_pool_acquire(p, on_held_acquire, &h), 0);
    run_until(&h.acquired);
    cr_assert_eq(pg_conn_query(h.conn, "BEGIN", 0, NULL, on_result, &h.r1), 0);
    run_until(&h.r1.done);
    cr_assert_eq(h.r1.err, PG_OK);
    qres_clear(&h.r1);
    char pid[16];
    snprintf(pid, sizeof pid, "%d", pg_conn_backend_pid(h.conn));
    const char *param[] = {pid};
    struct qres k;
    q_ok(killer, &k, "SELECT pg_terminate_backend($1::int)", 1, param);
    qres_clear(&k);

    /* Until the pool notices, a statement may still be sent; either way it fails. */
    cr_assert_eq(pg_conn_query(h.conn, "SELECT 1", 0, NULL, on_result, &h.r1), 0);
    run_until(&h.r1.done);
    cr_expect_neq(h.r1.err, PG_OK);
    cr_expect(h.r1.retryable, "%s", h.r1.msg);
    cr_expect_eq(pg_conn_backend_pid(h.conn), 0);
    cr_assert_eq(pg_conn_query(h.conn, "SELECT 1", 0, NULL, on_result, &h.r2), 0);
    run_until(&h.r2.done);
    cr_expect_eq(h.r2.err, PG_ERR_CONNECTION, "still lost: %s", h.r2.msg);
    qres_clear(&h.r1);
    qres_clear(&h.r2);
    pg_conn_release(h.conn);

    struct qres r;
    q_ok(p, &r, "SELECT pg_backend_pid()", 0, NULL);
    cr_expect_str_neq(r.v[0][0], pid);
    qres_clear(&r);
    pool_close_wait(killer);
    pool_close_wait(p);
}

/* Closing from inside a callback: the rest of the batch and everything queued still
 * complete exactly once. */
struct closer {
    struct pg_pool *pool;
    int closed;
    struct qres r;
};

static void on_result_then_close(const struct pg_result *r, void *arg)
{
    struct closer *c = arg;
    qres_fill(&c->r, r);
    pg_pool_close(c->pool, on_closed, &c->closed);
}

Test(pg, close_from_a_callback)
{
    struct pg_pool *p = pool_open_depth(1, 1, 0, 1); /* one at a time: the queue fills */
    exec_ok(p, "SELECT 1");
    struct qres r[3];
    memset(r, 0, sizeof r);
    struct closer cl = {.pool = p};
    cr_assert_eq(pg_query(p, "SELECT pg_sleep(1)", 0, NULL, on_result, &r[0]), 0); /* runs */
    cr_assert_eq(pg_query(p, "SELECT 2", 0, NULL, on_result, &r[1]), 0);           /* waits */
    cr_assert_eq(pg_query(p, "SELECT 3", 0, NULL, on_result_then_close, &cl), 0);  /* full */
    cr_assert_eq(pg_query(p, "SELECT 4", 0, NULL, on_result, &r[2]), 0);           /* full */
    run_until(&cl.r.done);
    cr_expect_eq(cl.r.err, PG_ERR_QUEUE_FULL);
    cr_expect(r[2].done, "the rest of the batch was delivered by the close");
    cr_expect_eq(r[2].err, PG_ERR_QUEUE_FULL);
    cr_expect(r[0].done && r[1].done);
    cr_expect_eq(r[0].err, PG_ERR_CANCELLED);
    cr_expect_eq(r[1].err, PG_ERR_CANCELLED);
    run_until(&cl.closed);
    for (int i = 0; i < 3; i++)
        qres_clear(&r[i]);
    qres_clear(&cl.r);
}

/* ---- prepared statements ------------------------------------------------------------------
 * A statement with parameters is prepared once per connection ("tierone_<n>") and executed
 * by name after; what the session holds is read back from pg_prepared_statements with
 * statements without parameters (those always run unnamed, so they never show there).
 * Pools of one connection: pg_query runs every statement on the same session. */

#define PREPARED_COUNT "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'tierone\\_%'"

/* Acquire a connection of p and wait for it. */
static struct pg_conn *conn_acquire(struct pg_pool *p)
{
    struct held h;
    memset(&h, 0, sizeof h);
    cr_assert_eq(pg_pool_acquire(p, on_held_acquire, &h), 0);
    run_until(&h.acquired);
    return h.conn;
}

/* Run sql on the acquired connection c and wait for its result (caller clears it). */
static void cq(struct pg_conn *c, struct qres *out, const char *sql, int n,
               const char *const *params)
{
    memset(out, 0, sizeof *out);
    cr_assert_eq(pg_conn_query(c, sql, n, params, on_result, out), 0);
    run_until(&out->done);
    cr_assert_eq(out->err, PG_OK, "%s: %s", sql, out->msg);
}

/* The one-value result of a parameterless query on p, as a number. */
static long long value_of(struct pg_pool *p, const char *sql)
{
    struct qres r;
    q_ok(p, &r, sql, 0, NULL);
    cr_assert_eq(r.nrows, 1, "%s", sql);
    cr_assert_not_null(r.v[0][0], "%s", sql);
    long long v = atoll(r.v[0][0]);
    qres_clear(&r);
    return v;
}

static char *backend_pid(struct pg_pool *p)
{
    struct qres r;
    q_ok(p, &r, "SELECT pg_backend_pid()", 0, NULL);
    char *pid = strdup(r.v[0][0]);
    qres_clear(&r);
    return pid;
}

#define DOUBLE_SQL "SELECT $1::int * 2 AS twice, $2::text AS tag"

Test(pg, a_statement_with_parameters_is_prepared_once_per_connection)
{
    struct pg_pool *p = pool_open(1, 0, 0);
    struct pg_conn *c = conn_acquire(p);
    struct qres r;
    char n[16], tag[16];
    for (int i = 0; i < 5; i++) {
        snprintf(n, sizeof n, "%d", i * 7);
        snprintf(tag, sizeof tag, "run %d", i);
        const char *params[] = {n, tag};
        cq(c, &r, DOUBLE_SQL, 2, params);
        cr_assert_eq(r.nrows, 1);
        char want[16];
        snprintf(want, sizeof want, "%d", i * 14);
        cr_expect_str_eq(r.v[0][0], want, "run %d", i);
        cr_expect_str_eq(r.v[0][1], tag);
        qres_clear(&r);
        cq(c, &r, "SELECT 1", 0, NULL); /* no parameters: never prepared */
        qres_clear(&r);
    }
    /* One prepared statement, with this SQL text, executed five times (each execution
     * makes one plan, custom or generic). */
    cq(c, &r,
       "SELECT name, statement, generic_plans + custom_plans, parameter_types::text "
       "FROM pg_prepared_statements ORDER BY name",
       0, NULL);
    cr_assert_eq(r.nrows, 1, "prepared: %d statements", r.nrows);
    cr_expect(strncmp(r.v[0][0], "tierone_", 8) == 0, "%s", r.v[0][0]);
    cr_expect_str_eq(r.v[0][1], DOUBLE_SQL);
    cr_expect_str_eq(r.v[0][2], "5");
    cr_expect_str_eq(r.v[0][3], "{integer,text}");
    qres_clear(&r);
    pg_conn_release(c);

    /* pg_query on the same session uses the same entry; a second text gets its own. */
    const char *params[] = {"21", "x"};
    q_ok(p, &r, DOUBLE_SQL, 2, params);
    cr_expect_str_eq(r.v[0][0], "42");
    qres_clear(&r);
    const char *one[] = {"abc"};
    q_ok(p, &r, "SELECT length($1)", 1, one);
    cr_expect_str_eq(r.v[0][0], "3");
    qres_clear(&r);
    cr_expect_eq(value_of(p, PREPARED_COUNT), 2);
    cr_expect_eq(value_of(p, "SELECT generic_plans + custom_plans FROM pg_prepared_statements "
                             "WHERE statement = '" DOUBLE_SQL "'"),
                 6);
    pool_close_wait(p);
}

Test(pg, a_statement_prepared_in_a_rolled_back_transaction_stays_prepared)
{
    /* Prepared statements are not transactional: the cache entry made inside a
     * transaction that rolls back is still good afterwards. */
    struct pg_pool *p = pool_open(1, 0, 0);
    struct pg_conn *c = conn_acquire(p);
    struct qres r;
    const char *params[] = {"4", "t"};
    cq(c, &r, "BEGIN", 0, NULL);
    qres_clear(&r);
    cq(c, &r, DOUBLE_SQL, 2, params);
    cr_expect_str_eq(r.v[0][0], "8");
    qres_clear(&r);
    cq(c, &r, "ROLLBACK", 0, NULL);
    qres_clear(&r);
    cq(c, &r, DOUBLE_SQL, 2, params);
    cr_expect_str_eq(r.v[0][0], "8");
    qres_clear(&r);
    pg_conn_release(c);
    cr_expect_eq(value_of(p, PREPARED_COUNT), 1);
    pool_close_wait(p);
}

Test(pg, a_syntax_error_with_parameters_is_the_statements_error_and_not_cached)
{
    struct pg_pool *p = pool_open(1, 0, 0);
    char *pid = backend_pid(p);
    struct qres r;
    const char *one[] = {"1"};
    for (int i = 0; i < 2; i++) {
        /* The second run parses again: a cached name would fail otherwise (26000). */
        q(p, &r, "SELEC $1::int", 1, one);
        cr_expect_eq(r.err, PG_ERR_SERVER, "run %d: %s", i, r.msg);
        cr_expect_str_eq(r.sqlstate, "42601", "run %d: %s", i, r.msg);
        cr_expect_not(r.retryable);
        cr_assert_not_null(r.je);
        cr_expect_str_eq(r.je->error_class, "Tierone::PG::SyntaxError");
        qres_clear(&r);
    }
    cr_expect_eq(value_of(p, PREPARED_COUNT), 0);
    /* The pool carries on, on the same session, and prepares the next statement. */
    const char *params[] = {"5", "ok"};
    q_ok(p, &r, DOUBLE_SQL, 2, params);
    cr_expect_str_eq(r.v[0][0], "10");
    cr_expect_str_eq(r.v[0][1], "ok");
    qres_clear(&r);
    cr_expect_eq(value_of(p, PREPARED_COUNT), 1);
    char *pid2 = backend_pid(p);
    cr_expect_str_eq(pid2, pid, "the same session throughout");
    free(pid);
    free(pid2);
    pool_close_wait(p);
}

#define ALTER_SQL "SELECT * FROM pgt_prep_alter WHERE id = $1"

Test(pg, a_changed_result_type_fails_once_retryably_then_is_prepared_again)
{
    struct pg_pool *p = pool_open(1, 0, 0);
    exec_ok(p, "DROP TABLE IF EXISTS pgt_prep_alter");
    exec_ok(p, "CREATE TABLE pgt_prep_alter (id int, a text)");
    exec_ok(p, "INSERT INTO pgt_prep_alter VALUES (1, 'x')");
    char *pid = backend_pid(p);
    struct qres r;
    const char *one[] = {"1"};
    q_ok(p, &r, ALTER_SQL, 1, one);
    cr_expect_eq(r.ncols, 2);
    qres_clear(&r);
    exec_ok(p, "ALTER TABLE pgt_prep_alter ADD COLUMN b text DEFAULT 'y'");

    /* The statement prepared before the change no longer fits: this run fails, and the
     * caller may retry. */
    q(p, &r, ALTER_SQL, 1, one);
    cr_expect_eq(r.err, PG_ERR_SERVER, "%s", r.msg);
    cr_expect_str_eq(r.sqlstate, "0A000", "%s", r.msg);
    cr_expect(r.retryable, "a retry re-prepares the statement");
    cr_assert_not_null(r.je);
    cr_expect_eq(r.je->kind, JOB_ERR_RETRY);
    qres_clear(&r);

    /* The next runs see the new column, prepared anew and then executed by name. */
    for (int i = 0; i < 2; i++) {
        q_ok(p, &r, ALTER_SQL, 1, one);
        cr_expect_eq(r.ncols, 3);
        cr_expect_str_eq(r.v[0][2], "y");
        qres_clear(&r);
    }
    cr_expect_eq(value_of(p, "SELECT generic_plans + custom_plans FROM pg_prepared_statements "
                             "WHERE statement = '" ALTER_SQL "' ORDER BY prepare_time DESC "
                             "LIMIT 1"),
                 2);
    char *pid2 = backend_pid(p);
    cr_expect_str_eq(pid2, pid, "re-prepared on the same session, not reconnected");
    free(pid);
    free(pid2);
    exec_ok(p, "DROP TABLE pgt_prep_alter");
    pool_close_wait(p);
}

Test(pg, a_deallocated_statement_fails_once_retryably_then_is_prepared_again)
{
    struct pg_pool *p = pool_open(1, 0, 0);
    struct qres r;
    const char *params[] = {"3", "d"};
    q_ok(p, &r, DOUBLE_SQL, 2, params);
    qres_clear(&r);
    exec_ok(p, "DEALLOCATE ALL"); /* what a pooler's DISCARD ALL does too */
    q(p, &r, DOUBLE_SQL, 2, params);
    cr_expect_eq(r.err, PG_ERR_SERVER, "%s", r.msg);
    cr_expect_str_eq(r.sqlstate, "26000", "%s", r.msg);
    cr_expect(r.retryable);
    qres_clear(&r);
    q_ok(p, &r, DOUBLE_SQL, 2, params);
    cr_expect_str_eq(r.v[0][0], "6");
    qres_clear(&r);
    cr_expect_eq(value_of(p, PREPARED_COUNT), 1);
    pool_close_wait(p);
}

Test(pg, no_prepare_runs_every_statement_unnamed)
{
    struct pg_pool_opts o = {.conninfo = db_url(), .size = 1, .no_prepare = 1};
    char *err = NULL;
    struct pg_pool *p = pg_pool_new(&loop, &o, &err);
    cr_assert_not_null(p, "pg_pool_new: %s", err ? err : "?");
    struct qres r;
    for (int i = 0; i < 3; i++) {
        const char *params[] = {"8", "np"};
        q_ok(p, &r, DOUBLE_SQL, 2, params);
        cr_expect_str_eq(r.v[0][0], "16");
        cr_expect_str_eq(r.v[0][1], "np");
        qres_clear(&r);
    }
    cr_expect_eq(value_of(p, "SELECT count(*) FROM pg_prepared_statements"), 0);
    pool_close_wait(p);
}

Test(pg, more_statements_than_the_cache_holds_still_run)
{
    struct pg_pool *p = pool_open(1, 0, 0);
    enum { N = PG_STMT_CACHE + 10 };
    char sql[128], want[32];
    struct qres r;
    const char *one[] = {"1000"};
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < N; i++) {
            snprintf(sql, sizeof sql, "SELECT $1::int + %d", i);
            snprintf(want, sizeof want, "%d", 1000 + i);
            q_ok(p, &r, sql, 1, one);
            cr_expect_str_eq(r.v[0][0], want, "round %d: %s", round, sql);
            qres_clear(&r);
        }
    /* The first PG_STMT_CACHE texts were prepared and each executed twice; the rest ran
     * unnamed. */
    cr_expect_eq(value_of(p, PREPARED_COUNT), PG_STMT_CACHE);
    cr_expect_eq(value_of(p, "SELECT count(*) FROM pg_prepared_statements "
                             "WHERE generic_plans + custom_plans = 2"),
                 PG_STMT_CACHE);
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM pg_prepared_statements WHERE statement = "
             "'SELECT $1::int + %d'",
             PG_STMT_CACHE);
    cr_expect_eq(value_of(p, sql), 0, "the first one past the cache ran unnamed");
    pool_close_wait(p);
}

Test(pg, a_lost_connection_forgets_its_prepared_statements)
{
    struct pg_pool *p = pool_open(1, 0, 0);
    struct pg_pool *killer = pool_open(1, 0, 0);
    struct qres r;
    const char *params[] = {"11", "before"};
    q_ok(p, &r, DOUBLE_SQL, 2, params);
    qres_clear(&r);
    cr_expect_eq(value_of(p, PREPARED_COUNT), 1);
    char *pid = backend_pid(p);
    const char *kill[] = {pid};
    q_ok(killer, &r, "SELECT pg_terminate_backend($1::int)", 1, kill);
    cr_expect_str_eq(r.v[0][0], "t");
    qres_clear(&r);

    /* Wait until the pool has noticed (the idle connection's socket is watched). */
    struct pg_pool_stats st;
    uint64_t deadline = clock_mono_ms() + 10000;
    uv_timer_start(&guard, on_guard, 10, 10);
    for (pg_pool_stats(p, &st); st.open > 0; pg_pool_stats(p, &st)) {
        cr_assert(clock_mono_ms() < deadline, "the lost connection was not noticed");
        uv_run(&loop, UV_RUN_ONCE);
    }
    uv_timer_stop(&guard);

    /* The new session has no statements: the same text is prepared there, first time. */
    const char *after[] = {"12", "after"};
    q_ok(p, &r, DOUBLE_SQL, 2, after);
    cr_expect_str_eq(r.v[0][0], "24");
    cr_expect_str_eq(r.v[0][1], "after");
    qres_clear(&r);
    char *pid2 = backend_pid(p);
    cr_expect_str_neq(pid2, pid, "a new session");
    cr_expect_eq(value_of(p, PREPARED_COUNT), 1);
    cr_expect_eq(value_of(p, "SELECT generic_plans + custom_plans FROM pg_prepared_statements"), 1);
    free(pid);
    free(pid2);
    pool_close_wait(killer);
    pool_close_wait(p);
}

/* ---- pipelines ----------------------------------------------------------------------------
 * A connection takes up to pipeline_depth statements at once, each followed by its own Sync:
 * each is its own transaction, results come back in order, an error stops nothing behind
 * it. A statement waits in the queue rather than behind a BEGIN, behind a Parse of its own
 * text not yet answered, or behind a statement that takes its time. */

/* Submit n statements (no parameters, or one each) to p at once; wait for every result. */
static void submit_all(struct pg_pool *p, struct qres *r, const char *const *sql,
                       const char *const *param, int n)
{
    memset(r, 0, sizeof *r * (size_t)n);
    for (int i = 0; i < n; i++) {
        const char *one[] = {param ? param[i] : NULL};
        int np = param && param[i] ? 1 : 0;
        cr_assert_eq(pg_query(p, sql[i], np, np ? one : NULL, on_result, &r[i]), 0, "%s", sql[i]);
    }
    for (int i = 0; i < n; i++)
        run_until(&r[i].done);
}

Test(pg, statements_on_one_connection_are_pipelined_each_in_its_own_transaction)
{
    struct pg_pool *p = pool_open(1, 0, 0);
    exec_ok(p, "DROP TABLE IF EXISTS pgt_pipe");
    exec_ok(p, "CREATE TABLE pgt_pipe (id int PRIMARY KEY)");
    struct pg_pool_stats before, after;
    pg_pool_stats(p, &before);
    const char *sql[] = {"INSERT INTO pgt_pipe VALUES (1)",
                         "INSERT INTO pgt_pipe VALUES (1)", /* 23505 */
                         "SELECT 1/0",                      /* 22012 */
                         "INSERT INTO pgt_pipe VALUES (2)",
                         "INSERT INTO pgt_pipe VALUES ($1::int)", /* Parse + Execute */
                         "INSERT INTO pgt_pipe VALUES ($1::int)", /* waits for that Parse */
                         "SELECT count(*) FROM pgt_pipe"};
    const char *param[] = {NULL, NULL, NULL, NULL, "3", "4", NULL};
    struct qres r[7];
    submit_all(p, r, sql, param, 7);
    pg_pool_stats(p, &after);
    for (int i = 0; i < 7; i++)
        cr_expect_eq(r[i].order, r[0].order + i, "%s completed in submission order", sql[i]);
    cr_expect_eq(r[0].err, PG_OK, "%s", r[0].msg);
    cr_expect_str_eq(r[1].sqlstate, "23505", "%s", r[1].msg);
    cr_expect_str_eq(r[2].sqlstate, "22012", "%s", r[2].msg);
    for (int i = 3; i < 7; i++)
        cr_expect_eq(r[i].err, PG_OK, "%s: %s", sql[i], r[i].msg);
    cr_expect_str_eq(r[6].v[0][0], "4", "the errors rolled back only their own statements");
    cr_expect_geq(after.pipelined_total - before.pipelined_total, 3,
                  "statements went behind others on the one connection");
    for (int i = 0; i < 7; i++)
        qres_clear(&r[i]);
    cr_expect_eq(value_of(p, PREPARED_COUNT), 1, "the text was prepared once");
    exec_ok(p, "DROP TABLE pgt_pipe");
    pool_close_wait(p);
}

Test(pg, a_pipelined_syntax_error_is_each_statements_error)
{
    /* The second waits for the first's Parse; when that fails, it parses again and gets the
     * same permanent error, not "prepared statement does not exist". */
    struct pg_pool *p = pool_open(1, 0, 0);
    exec_ok(p, "SELECT 1");
    const char *sql[] = {"SELEC $1::int", "SELEC $1::int", "SELECT $1::int + 1"};
    const char *param[] = {"1", "2", "3"};
    struct qres r[3];
    submit_all(p, r, sql, param, 3);
    for (int i = 0; i < 2; i++) {
        cr_expect_str_eq(r[i].sqlstate, "42601", "run %d: %s", i, r[i].msg);
        cr_expect_not(r[i].retryable, "run %d", i);
    }
    cr_expect_eq(r[2].err, PG_OK, "%s", r[2].msg);
    cr_expect_str_eq(r[2].v[0][0], "4");
    for (int i = 0; i < 3; i++)
        qres_clear(&r[i]);
    cr_expect_eq(value_of(p, PREPARED_COUNT), 1);
    pool_close_wait(p);
}

Test(pg, nothing_is_pipelined_behind_a_begin)
{
    /* The INSERT waits until the BEGIN's answer; the pool then rolls the open transaction
     * back, and the INSERT runs (and commits) on its own. */
    struct pg_pool *p = pool_open(1, 0, 0);
    exec_ok(p, "DROP TABLE IF EXISTS pgt_pipe_tx");
    exec_ok(p, "CREATE TABLE pgt_pipe_tx (id int)");
    const char *sql[] = {"BEGIN", "INSERT INTO pgt_pipe_tx VALUES (1)"};
    struct qres r[2];
    submit_all(p, r, sql, NULL, 2);
    cr_expect_eq(r[0].err, PG_OK, "%s", r[0].msg);
    cr_expect_eq(r[1].err, PG_OK, "%s", r[1].msg);
    cr_expect_eq(value_of(p, "SELECT count(*) FROM pgt_pipe_tx"), 1);
    qres_clear(&r[0]);
    qres_clear(&r[1]);
    exec_ok(p, "DROP TABLE pgt_pipe_tx");
    pool_close_wait(p);
}

/* Run the loop for more than ms (by its clock). */
static void run_for(uint64_t ms)
{
    uint64_t until = uv_now(&loop) + ms;
    uv_timer_start(&guard, on_guard, 10, 10);
    while (uv_now(&loop) <= until)
        uv_run(&loop, UV_RUN_ONCE);
    uv_timer_stop(&guard);
}

Test(pg, nothing_is_pipelined_behind_a_slow_statement)
{
    struct pg_pool *p = pool_open(2, 0, 0);
    /* Open both connections: two statements at once find no idle one. */
    const char *warm[] = {"SELECT pg_sleep(0.05)", "SELECT pg_sleep(0.05)"};
    struct qres w[2];
    submit_all(p, w, warm, NULL, 2);
    struct pg_pool_stats st;
    pg_pool_stats(p, &st);
    cr_assert_eq(st.open, 2);
    qres_clear(&w[0]);
    qres_clear(&w[1]);

    struct qres slow, other, quick;
    memset(&slow, 0, sizeof slow);
    cr_assert_eq(pg_query(p, "SELECT pg_sleep(2)", 0, NULL, on_result, &slow), 0);
    run_for(100); /* the sleep is now a statement that takes its time */
    cr_assert_not(slow.done);
    /* The other connection takes the first; the second goes behind it, not the sleep. */
    memset(&other, 0, sizeof other);
    memset(&quick, 0, sizeof quick);
    cr_assert_eq(pg_query(p, "SELECT pg_sleep(0.2)", 0, NULL, on_result, &other), 0);
    cr_assert_eq(pg_query(p, "SELECT 1", 0, NULL, on_result, &quick), 0);
    run_until(&quick.done);
    cr_expect_eq(quick.err, PG_OK, "%s", quick.msg);
    cr_expect_not(slow.done, "SELECT 1 did not wait for the 2 s sleep");
    run_until(&slow.done);
    cr_expect_lt(other.order, quick.order);
    qres_clear(&slow);
    qres_clear(&other);
    qres_clear(&quick);
    pool_close_wait(p);
}

Test(pg, close_cancels_pipelined_statements)
{
    struct pg_pool *p = pool_open(1, 0, 0);
    exec_ok(p, "SELECT 1");
    struct qres r[4];
    memset(r, 0, sizeof r);
    cr_assert_eq(pg_query(p, "SELECT pg_sleep(1)", 0, NULL, on_result, &r[0]), 0);
    for (int i = 1; i < 4; i++)
        cr_assert_eq(pg_query(p, "SELECT 2", 0, NULL, on_result, &r[i]), 0);
    struct pg_pool_stats st;
    pg_pool_stats(p, &st);
    cr_expect_eq(st.waiting, 0, "all four are on the one connection's wire");
    int closed = 0;
    pg_pool_close(p, on_closed, &closed);
    for (int i = 0; i < 4; i++) {
        cr_expect(r[i].done, "statement %d completed inside pg_pool_close", i);
        cr_expect_eq(r[i].err, PG_ERR_CANCELLED, "statement %d", i);
        qres_clear(&r[i]);
    }
    run_until(&closed);
}

/* The statements of one loop iteration leave together: the socket is corked while they
 * are sent and uncorked before the loop waits. */
static int cork_of(const struct pg_conn *c)
{
    int v = -1;
    socklen_t n = sizeof v;
    cr_assert_eq(getsockopt(PQsocket(c->pg), IPPROTO_TCP, TCP_CORK, &v, &n), 0);
    return v;
}

Test(pg, statements_are_sent_corked_and_uncorked_within_the_iteration)
{
    struct pg_pool *p = pool_open(1, 0, 0);
    exec_ok(p, "SELECT 1");
    struct pg_conn *c = &p->conns[0];
    cr_assert_eq(cork_of(c), 0);
    struct qres r[3];
    memset(r, 0, sizeof r);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(pg_query(p, "SELECT 2", 0, NULL, on_result, &r[i]), 0);
    cr_expect_neq(cork_of(c), 0, "corked while the iteration sends");
    uv_run(&loop, UV_RUN_NOWAIT);
    cr_expect_eq(cork_of(c), 0, "uncorked by the end of the iteration");
    for (int i = 0; i < 3; i++) {
        run_until(&r[i].done);
        cr_expect_eq(r[i].err, PG_OK, "%s", r[i].msg);
        qres_clear(&r[i]);
    }
    pool_close_wait(p);
}

Test(pg, a_unix_socket_connection_pipelines_without_corking)
{
    const char *dir = getenv("TIERONE_TEST_PG_SOCKET_DIR");
    const char *port = getenv("TIERONE_TEST_PG_PORT");
    cr_assert(dir && port, "run through scripts/test.sh (TIERONE_TEST_PG_SOCKET_DIR, _PORT)");
    char conninfo[512];
    snprintf(conninfo, sizeof conninfo, "host=%s port=%s dbname=tierone user=tierone", dir, port);
    struct pg_pool_opts o = {.conninfo = conninfo, .size = 1};
    char *err = NULL;
    struct pg_pool *p = pg_pool_new(&loop, &o, &err);
    cr_assert_not_null(p, "%s", err);
    exec_ok(p, "SELECT 1");
    const char *sql[] = {"SELECT $1::int * 3", "SELECT $1::int * 3", "SELECT $1::int * 3"};
    const char *param[] = {"1", "2", "3"};
    struct qres r[3];
    submit_all(p, r, sql, param, 3);
    for (int i = 0; i < 3; i++) {
        char want[8];
        snprintf(want, sizeof want, "%d", 3 * (i + 1));
        cr_expect_eq(r[i].err, PG_OK, "%s", r[i].msg);
        cr_expect_str_eq(r[i].v[0][0], want);
        qres_clear(&r[i]);
    }
    cr_expect_eq(p->conns[0].cork, -1, "a Unix socket cannot be corked");
    pool_close_wait(p);
}
