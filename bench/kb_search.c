/* kb_search: search latency of the knowledge base, for bench/kb.sh.
 *
 *   bench_kb_search run DATABASE_URL KB QUESTIONS_FILE
 *       runs every question (one per line) through kb_search (k = 5) one after the other
 *       on a pool of one connection, after 20 warm-up questions; prints
 *       "queries N p50_ms X p99_ms Y mean_ms Z hits H" (H: questions with at least one hit).
 *   bench_kb_search pgbench DATABASE_URL KB QUESTIONS_FILE N DIR
 *       writes DIR/q0.sql .. q{N-1}.sql: the full-text statement kb_search sends for each
 *       of the first N questions, with its parameters (from the lookup statement, run
 *       here) written in as literals, for `pgbench -f DIR/q0.sql ...`: the database-only
 *       floor of the same work.
 *
 * Latency is measured from the kb_search call to its callback (one knowledge-base lookup
 * plus the full-text statement, results copied), with clock_mono_ns. */
#include "buf.h"
#include "clock.h"
#include "kb_search.h"
#include "pg.h"
#include "xalloc.h"

#include <libpq-fe.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

static char **read_lines(const char *path, size_t *n)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        perror(path);
        exit(2);
    }
    char **v = NULL, *line = NULL;
    size_t cap = 0, lcap = 0;
    *n = 0;
    ssize_t len;
    while ((len = getline(&line, &lcap, f)) != -1) {
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        if (len == 0)
            continue;
        if (*n == cap) {
            cap = cap ? 2 * cap : 1024;
            v = xrealloc(v, cap * sizeof(*v));
        }
        v[(*n)++] = xstrdup(line);
    }
    free(line);
    fclose(f);
    return v;
}

struct one {
    int done;
    size_t hits;
    char *err;
};

static void on_hits(const char *err, const struct kb_hit *hits, size_t n, void *arg)
{
    struct one *o = arg;
    (void)hits;
    o->done = 1;
    o->hits = n;
    o->err = err ? xstrdup(err) : NULL;
}

static void on_closed(void *arg)
{
    *(int *)arg = 1;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int bench_run(const char *url, const char *kb, const char *file)
{
    size_t n;
    char **q = read_lines(file, &n);
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct pg_pool_opts po = {.conninfo = url, .size = 1};
    char *err = NULL;
    struct pg_pool *pool = pg_pool_new(&loop, &po, &err);
    if (!pool) {
        fprintf(stderr, "pool: %s\n", err);
        return 2;
    }
    uint64_t *lat = xcalloc(n ? n : 1, sizeof(*lat));
    size_t with_hits = 0;
    int rc = 0;
    for (size_t i = 0; i < n + 20 && rc == 0; i++) {
        int warm = i < 20;
        const char *question = q[warm ? i % n : i - 20];
        struct one o = {0};
        struct kb_search_request req = {.kb = kb, .question = question, .k = 5};
        uint64_t t0 = clock_mono_ns();
        if (kb_search(pool, &req, on_hits, &o) != 0) {
            rc = 2;
            break;
        }
        while (!o.done)
            uv_run(&loop, UV_RUN_ONCE);
        uint64_t dt = clock_mono_ns() - t0;
        if (o.err) {
            fprintf(stderr, "%s: %s\n", question, o.err);
            free(o.err);
            rc = 1;
        }
        if (!warm && getenv("KB_BENCH_SLOW_MS") &&
            dt > (uint64_t)atoll(getenv("KB_BENCH_SLOW_MS")) * 1000000)
            fprintf(stderr, "slow %.1f ms %zu hits: %s\n", (double)dt / 1e6, o.hits, question);
        if (!warm) {
            lat[i - 20] = dt;
            with_hits += o.hits > 0;
        }
    }
    int closed = 0;
    pg_pool_close(pool, on_closed, &closed);
    while (!closed)
        uv_run(&loop, UV_RUN_ONCE);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    if (rc == 0 && n > 0) {
        double sum = 0;
        for (size_t i = 0; i < n; i++)
            sum += (double)lat[i];
        qsort(lat, n, sizeof(*lat), cmp_u64);
        size_t p99 = (n * 99 + 99) / 100 - 1;
        printf("queries %zu p50_ms %.3f p99_ms %.3f mean_ms %.3f hits %zu\n", n,
               (double)lat[(n - 1) / 2] / 1e6, (double)lat[p99] / 1e6, sum / (double)n / 1e6,
               with_hits);
    }
    for (size_t i = 0; i < n; i++)
        free(q[i]);
    free(q);
    free(lat);
    return rc;
}

/* A SQL literal: 'text' with quotes doubled (standard_conforming_strings), or NULL. */
static void put_literal(struct buf *b, const char *v)
{
    if (!v) {
        buf_puts(b, "NULL");
        return;
    }
    buf_puts(b, "'");
    for (const char *p = v; *p; p++) {
        if (*p == '\'')
            buf_puts(b, "'");
        buf_append(b, p, 1);
    }
    buf_puts(b, "'");
}

static int bench_pgbench(const char *url, const char *kb, const char *file, size_t want,
                         const char *dir)
{
    PGconn *db = PQconnectdb(url);
    if (PQstatus(db) != CONNECTION_OK) {
        fprintf(stderr, "%s", PQerrorMessage(db));
        return 2;
    }
    size_t n;
    char **q = read_lines(file, &n);
    if (want > n)
        want = n;
    const char *sql = kb_search_fulltext_sql();
    for (size_t i = 0; i < want; i++) {
        char *any = NULL, *neg = NULL;
        kb_search_any_words(q[i], &any, &neg);
        const char *lp[] = {kb, any};
        PGresult *lk = PQexecParams(db, kb_search_lookup_sql(), 2, NULL, lp, NULL, NULL, 0);
        if (PQresultStatus(lk) != PGRES_TUPLES_OK || PQntuples(lk) != 1) {
            fprintf(stderr, "lookup: %s", PQerrorMessage(db));
            return 2;
        }
        char *and_text = kb_search_and_text(q[i]);
        const char *params[] = {PQgetvalue(lk, 0, 0),
                                PQgetvalue(lk, 0, 1),
                                and_text,
                                PQgetisnull(lk, 0, 2) ? NULL : PQgetvalue(lk, 0, 2),
                                neg,
                                "5",
                                PQgetisnull(lk, 0, 3) ? NULL : PQgetvalue(lk, 0, 3),
                                PQgetisnull(lk, 0, 4) ? NULL : PQgetvalue(lk, 0, 4)};
        struct buf b = BUF_INIT;
        for (const char *p = sql; *p; p++) {
            if (*p == '$' && p[1] >= '1' && p[1] <= '8') {
                put_literal(&b, params[p[1] - '1']);
                p++;
            } else {
                buf_append(&b, p, 1);
            }
        }
        buf_puts(&b, ";\n");
        PQclear(lk);
        free(and_text);
        char path[512];
        snprintf(path, sizeof path, "%s/q%zu.sql", dir, i);
        FILE *f = fopen(path, "w");
        if (!f) {
            perror(path);
            return 2;
        }
        fputs(b.data, f);
        fclose(f);
        buf_free(&b);
        free(any);
        free(neg);
    }
    for (size_t i = 0; i < n; i++)
        free(q[i]);
    free(q);
    PQfinish(db);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "run") == 0)
        return bench_run(argv[2], argv[3], argv[4]);
    if (argc == 7 && strcmp(argv[1], "pgbench") == 0)
        return bench_pgbench(argv[2], argv[3], argv[4], (size_t)atol(argv[5]), argv[6]);
    fprintf(stderr, "usage: bench_kb_search run DATABASE_URL KB QUESTIONS\n"
                    "       bench_kb_search pgbench DATABASE_URL KB QUESTIONS N DIR\n");
    return 2;
}
