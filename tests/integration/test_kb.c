/* kb: the knowledge base against the real PostgreSQL in TIERONE_TEST_DATABASE_URL.
 *
 * Each test creates a scratch database (the role has CREATEDB), applies migrations/ with
 * lib/migrate.h, and drops it at the end. Ingest of the fixture tree
 * (tests/fixtures/kb-docs, copied to a temp dir so tests can change it); re-ingest of an
 * unchanged tree writes nothing (ctid/xmin/xmax of every row and the sequences are
 * compared); a changed file gets new chunks while every other chunk row stays; prune
 * removes only the vanished source of the same root; bad documents are reported one by one
 * while the rest lands; an HTML page by URL from fake_http; search ranks the answering
 * passage above near misses with scores in [0,1]; EXPLAIN of the search statement uses the
 * GIN index on a few thousand chunks; embeddings through fake_llm (batching, retry on 429,
 * resume after an interruption); and the `tierone kb` command (eval, list, rm, exit
 * status) as a black box. */
#include "buf.h"
#include "fake_http.h"
#include "fake_llm.h"
#include "http_client.h"
#include "kb_embed.h"
#include "kb_ingest.h"
#include "kb_search.h"
#include "kb_store.h"
#include "llm.h"
#include "pg.h"
#include "test_pg.h"
#include "xalloc.h"

#include <criterion/criterion.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

static uv_loop_t loop;
static struct pg_pool *pool;
static PGconn *db; /* blocking connection to the scratch database, for assertions */
static char dbname[64];
static char *scratch_url;
static char tmpdir[256];

/* ---- setup --------------------------------------------------------------------------- */

static void on_pool_closed(void *arg)
{
    *(int *)arg = 1;
}

static void run_until(const int *flag)
{
    while (!*flag)
        cr_assert(uv_run(&loop, UV_RUN_ONCE) != 0 || *flag, "loop ran dry before completion");
}

static void setup(void)
{
    static int seq;
    snprintf(dbname, sizeof dbname, "tierone_kb_test_%d_%d", (int)getpid(), seq++);
    scratch_url = xstrdup(test_pg_fresh(dbname));
    const char *src = getenv("TIERONE_SOURCE_DIR");
    cr_assert(src, "TIERONE_SOURCE_DIR is not set (run through ctest)");
    db = test_pg_connect(scratch_url);
    char *err = NULL;
    cr_assert(uv_loop_init(&loop) == 0);
    struct pg_pool_opts o = {.conninfo = scratch_url, .size = 4};
    pool = pg_pool_new(&loop, &o, &err);
    cr_assert(pool, "pool: %s", err);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/tierone-kb-test-XXXXXX");
    cr_assert(mkdtemp(tmpdir));
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "cp -r '%s/tests/fixtures/kb-docs' '%s/docs'", src, tmpdir);
    cr_assert(system(cmd) == 0);
}

static void teardown(void)
{
    int closed = 0;
    if (pool) {
        pg_pool_close(pool, on_pool_closed, &closed);
        run_until(&closed);
        pool = NULL;
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_expect(uv_loop_close(&loop) == 0, "loop has open handles");
    PQfinish(db);
    db = NULL;
    test_pg_drop(dbname);
    free(scratch_url);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    (void)system(cmd);
}

TestSuite(kb, .init = setup, .fini = teardown, .timeout = 120);

/* ---- blocking helpers ---------------------------------------------------------------- */

/* First value of sql's result (a new string), NULL for SQL NULL. */
static char *q1(const char *sql)
{
    PGresult *r = PQexec(db, sql);
    cr_assert(PQresultStatus(r) == PGRES_TUPLES_OK, "%s: %s", sql, PQerrorMessage(db));
    char *v = PQntuples(r) && !PQgetisnull(r, 0, 0) ? strdup(PQgetvalue(r, 0, 0)) : NULL;
    PQclear(r);
    return v;
}

static long long qint(const char *sql)
{
    char *v = q1(sql);
    long long n = v ? atoll(v) : -1;
    free(v);
    return n;
}

static void qexec(const char *sql)
{
    PGresult *r = PQexec(db, sql);
    cr_assert(PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK,
              "%s: %s", sql, PQerrorMessage(db));
    PQclear(r);
}

/* Every row version of the knowledge-base tables and the sequences: equal snapshots mean
 * nothing was written (an UPDATE, DELETE or row lock changes ctid, xmin or xmax). */
static char *snapshot(void)
{
    return q1("SELECT concat_ws('|',"
              " (SELECT string_agg(ctid::text || xmin || '/' || xmax, ',' ORDER BY id)"
              "  FROM knowledge_bases),"
              " (SELECT string_agg(ctid::text || xmin || '/' || xmax, ',' ORDER BY id)"
              "  FROM kb_documents),"
              " (SELECT string_agg(ctid::text || xmin || '/' || xmax, ',' ORDER BY id)"
              "  FROM kb_chunks),"
              " (SELECT last_value FROM kb_documents_id_seq),"
              " (SELECT last_value FROM kb_chunks_id_seq),"
              " (SELECT last_value FROM knowledge_bases_id_seq))");
}

struct countw {
    int done;
    long long n;
};

static void on_count(const char *err, long long n, void *arg)
{
    struct countw *c = arg;
    cr_assert(!err, "%s", err);
    c->n = n;
    c->done = 1;
}

/* EXPLAIN of sql, every line. */
static char *explain(const char *sql)
{
    char *e = NULL;
    cr_assert(asprintf(&e, "EXPLAIN %s", sql) > 0);
    PGresult *r = PQexec(db, e);
    cr_assert(PQresultStatus(r) == PGRES_TUPLES_OK, "%s: %s", e, PQerrorMessage(db));
    struct buf b = BUF_INIT;
    for (int i = 0; i < PQntuples(r); i++) {
        buf_puts(&b, PQgetvalue(r, i, 0));
        buf_puts(&b, "\n");
    }
    PQclear(r);
    free(e);
    char *out = buf_steal(&b);
    buf_free(&b);
    return out;
}

/* ---- async helpers ------------------------------------------------------------------- */

struct kbw {
    int done;
    char *err;
    long long id;
};

static void on_kb(const char *err, const struct kb_store_kb *kb, void *arg)
{
    struct kbw *w = arg;
    w->done = 1;
    w->err = err ? strdup(err) : NULL;
    w->id = kb ? kb->id : 0;
}

static long long ensure_kb(const char *name, const char *config)
{
    struct kbw w = {0};
    cr_assert(kb_store_kb_ensure(pool, name, 1, config, on_kb, &w) == 0);
    run_until(&w.done);
    cr_assert(!w.err, "%s", w.err);
    return w.id;
}

#define MAX_EVENTS 64

struct ingest_result {
    int done;
    struct kb_ingest_summary sum;
    size_t n;
    enum kb_ingest_event ev[MAX_EVENTS];
    char *source[MAX_EVENTS];
    char *detail[MAX_EVENTS];
};

static void on_report(enum kb_ingest_event ev, const char *source, const char *detail, void *arg)
{
    struct ingest_result *r = arg;
    cr_assert(r->n < MAX_EVENTS);
    r->ev[r->n] = ev;
    r->source[r->n] = strdup(source);
    r->detail[r->n] = strdup(detail);
    r->n++;
}

static void on_ingested(const struct kb_ingest_summary *s, void *arg)
{
    struct ingest_result *r = arg;
    r->sum = *s;
    r->done = 1;
}

static void ingest_result_free(struct ingest_result *r)
{
    for (size_t i = 0; i < r->n; i++) {
        free(r->source[i]);
        free(r->detail[i]);
    }
    memset(r, 0, sizeof(*r));
}

/* The reason reported for a source ending in suffix, or NULL. */
static const char *failure_of(const struct ingest_result *r, const char *suffix)
{
    for (size_t i = 0; i < r->n; i++) {
        size_t ls = strlen(r->source[i]), lx = strlen(suffix);
        if (r->ev[i] == KB_INGEST_FAILED && ls >= lx && strcmp(r->source[i] + ls - lx, suffix) == 0)
            return r->detail[i];
    }
    return NULL;
}

static void ingest(long long kb_id, const char *const *roots, size_t n, int prune,
                   struct http_client *http, struct ingest_result *out)
{
    struct kb_ingest_opts o = {.pool = pool, .http = http, .kb_id = kb_id, .prune = prune};
    kb_chunk_opts_default(&o.chunk);
    memset(out, 0, sizeof(*out));
    cr_assert(kb_ingest_run(&loop, &o, roots, n, on_report, on_ingested, out) == 0);
    cr_assert(!out->done, "done_cb ran inside kb_ingest_run");
    run_until(&out->done);
}

static void ingest_docs(long long kb_id, int prune, struct ingest_result *out)
{
    char root[300];
    snprintf(root, sizeof root, "%s/docs", tmpdir);
    const char *roots[] = {root};
    ingest(kb_id, roots, 1, prune, NULL, out);
}

#define MAX_HITS 10

struct search_result {
    int done;
    char *err;
    size_t n;
    struct {
        char *source, *heading;
        double score;
    } h[MAX_HITS];
};

static void on_hits(const char *err, const struct kb_hit *hits, size_t n, void *arg)
{
    struct search_result *r = arg;
    r->done = 1;
    r->err = err ? strdup(err) : NULL;
    r->n = n < MAX_HITS ? n : MAX_HITS;
    for (size_t i = 0; i < r->n; i++) {
        r->h[i].source = strdup(hits[i].source);
        r->h[i].heading = strdup(hits[i].heading_path);
        r->h[i].score = hits[i].score;
    }
}

static void search_free(struct search_result *r)
{
    for (size_t i = 0; i < r->n; i++) {
        free(r->h[i].source);
        free(r->h[i].heading);
    }
    free(r->err);
    memset(r, 0, sizeof(*r));
}

static void search(const char *kb, const char *question, size_t k, double min_score,
                   struct search_result *out)
{
    memset(out, 0, sizeof(*out));
    struct kb_search_request req = {.kb = kb, .question = question, .k = k, .min_score = min_score};
    cr_assert(kb_search(pool, &req, on_hits, out) == 0);
    run_until(&out->done);
    cr_assert(!out->err, "search: %s", out->err);
}

static int ends_with(const char *s, const char *suffix)
{
    size_t ls = strlen(s), lx = strlen(suffix);
    return ls >= lx && strcmp(s + ls - lx, suffix) == 0;
}

/* ---- ingest -------------------------------------------------------------------------- */

Test(kb, ingest_tree_then_unchanged_reingest_writes_nothing)
{
    long long kb = ensure_kb("default", NULL);
    struct ingest_result r;
    ingest_docs(kb, 0, &r);
    cr_assert_eq(r.sum.failed, 0, "first failure: %s", r.n ? r.detail[0] : "");
    cr_assert_eq(r.sum.added, 8);
    cr_assert_eq(r.sum.documents, 8);
    cr_assert_eq(qint("SELECT count(*) FROM kb_documents"), 8);
    cr_assert_eq(qint("SELECT count(*) FROM kb_chunks"), (long long)r.sum.chunks);
    cr_assert_eq(qint("SELECT sum(chunk_count) FROM kb_documents"), (long long)r.sum.chunks);
    /* Chunks carry their heading path, are in order, and their tsvector has both weights. */
    cr_assert_eq(qint("SELECT count(*) FROM kb_chunks c JOIN kb_documents d ON d.id ="
                      " c.document_id WHERE d.source LIKE '%/account/password.md' AND"
                      " c.heading_path = 'Account > Reset your password'"
                      " AND c.tsv @@ 'reset:A & password:A & link:B'::tsquery"),
                 1);
    cr_assert_eq(qint("SELECT count(*) FROM kb_documents WHERE title = 'Deploy with Helm'"
                      " AND content_type = 'markdown' AND length(content_hash) = 64"),
                 1);
    char *before = snapshot();
    ingest_result_free(&r);

    ingest_docs(kb, 0, &r);
    cr_assert_eq(r.sum.unchanged, 8);
    cr_assert_eq(r.sum.added + r.sum.replaced + r.sum.failed, 0);
    char *after = snapshot();
    cr_assert_str_eq(after, before, "an unchanged re-ingest wrote to the database");
    free(before);
    free(after);
    ingest_result_free(&r);
}

Test(kb, changed_file_replaces_only_its_chunks)
{
    long long kb = ensure_kb("default", NULL);
    struct ingest_result r;
    ingest_docs(kb, 0, &r);
    ingest_result_free(&r);
    char *others = q1("SELECT string_agg(c.id || '@' || c.ctid || c.xmin, ',' ORDER BY c.id)"
                      " FROM kb_chunks c JOIN kb_documents d ON d.id = c.document_id"
                      " WHERE d.source NOT LIKE '%/faq.txt'");
    char *old_ids = q1("SELECT string_agg(c.id::text, ',') FROM kb_chunks c JOIN kb_documents"
                       " d ON d.id = c.document_id WHERE d.source LIKE '%/faq.txt'");
    char *old_doc = q1("SELECT id || '/' || created_at FROM kb_documents"
                       " WHERE source LIKE '%/faq.txt'");
    char path[400];
    snprintf(path, sizeof path, "%s/docs/faq.txt", tmpdir);
    FILE *f = fopen(path, "a");
    cr_assert(f);
    fputs("\nCan I export my conversations?\nYes, as CSV from the reports page.\n", f);
    fclose(f);

    ingest_docs(kb, 0, &r);
    cr_assert_eq(r.sum.replaced, 1);
    cr_assert_eq(r.sum.unchanged, 7);
    for (size_t i = 0; i < r.n; i++)
        cr_assert(r.ev[i] == KB_INGEST_UNCHANGED ||
                      (r.ev[i] == KB_INGEST_REPLACED && ends_with(r.source[i], "/faq.txt")),
                  "unexpected event %d for %s", r.ev[i], r.source[i]);
    char *others_after = q1("SELECT string_agg(c.id || '@' || c.ctid || c.xmin, ',' ORDER BY"
                            " c.id) FROM kb_chunks c JOIN kb_documents d ON d.id ="
                            " c.document_id WHERE d.source NOT LIKE '%/faq.txt'");
    cr_assert_str_eq(others_after, others, "chunks of unchanged documents were touched");
    /* The document row is the same (id, created_at) but its chunks are all new. */
    char *new_doc = q1("SELECT id || '/' || created_at FROM kb_documents"
                       " WHERE source LIKE '%/faq.txt'");
    cr_assert_str_eq(new_doc, old_doc);
    char sql[600];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM kb_chunks WHERE id = ANY ('{%s}'::bigint[])",
             old_ids);
    cr_assert_eq(qint(sql), 0, "old chunks of the changed document remain");
    cr_assert_eq(qint("SELECT count(*) FROM kb_chunks c JOIN kb_documents d ON d.id ="
                      " c.document_id WHERE d.source LIKE '%/faq.txt' AND c.content LIKE"
                      " '%export my conversations%' AND d.updated_at > d.created_at"),
                 1);
    /* Re-chunking with other parameters replaces the chunks even with the same bytes. */
    ingest_result_free(&r);
    char root[300];
    snprintf(root, sizeof root, "%s/docs", tmpdir);
    const char *roots[] = {root};
    struct kb_ingest_opts o = {.pool = pool, .kb_id = kb};
    kb_chunk_opts_default(&o.chunk);
    o.chunk.size = 200;
    o.chunk.overlap = 40;
    cr_assert(kb_ingest_run(&loop, &o, roots, 1, on_report, on_ingested, &r) == 0);
    run_until(&r.done);
    cr_assert_eq(r.sum.replaced, 8);
    cr_assert_eq(qint("SELECT count(*) FROM kb_documents WHERE chunking = 'chars:200:40'"), 8);
    cr_assert_eq(qint("SELECT count(*) FROM kb_chunks WHERE char_length(content) > 200"), 0);
    ingest_result_free(&r);
    free(others);
    free(others_after);
    free(old_ids);
    free(old_doc);
    free(new_doc);
}

Test(kb, prune_removes_only_vanished_sources_of_the_same_root)
{
    long long kb = ensure_kb("default", NULL);
    long long other_kb = ensure_kb("other", "simple");
    struct ingest_result r;
    ingest_docs(kb, 0, &r);
    ingest_result_free(&r);
    ingest_docs(other_kb, 0, &r);
    ingest_result_free(&r);
    /* A second root in the same knowledge base: one file on its own. */
    char lone[400];
    snprintf(lone, sizeof lone, "%s/lone.md", tmpdir);
    FILE *f = fopen(lone, "w");
    fputs("# Lone\n\nA document under a root of its own.\n", f);
    fclose(f);
    const char *lone_root[] = {lone};
    ingest(kb, lone_root, 1, 0, NULL, &r);
    cr_assert_eq(r.sum.added, 1);
    ingest_result_free(&r);

    char path[400];
    snprintf(path, sizeof path, "%s/docs/deploy/docker.md", tmpdir);
    cr_assert(unlink(path) == 0);
    ingest_docs(kb, 0, &r); /* without --prune: nothing removed */
    cr_assert_eq(r.sum.pruned, 0);
    cr_assert_eq(qint("SELECT count(*) FROM kb_documents WHERE source LIKE '%/docker.md'"), 2);
    ingest_result_free(&r);

    ingest_docs(kb, 1, &r);
    cr_assert_eq(r.sum.pruned, 1);
    cr_assert_eq(r.sum.unchanged, 7);
    cr_assert_eq(qint("SELECT count(*) FROM kb_documents d JOIN knowledge_bases k ON k.id ="
                      " d.kb_id WHERE k.name = 'default'"),
                 8, "7 under docs/ and lone.md");
    cr_assert_eq(qint("SELECT count(*) FROM kb_documents d JOIN knowledge_bases k ON k.id ="
                      " d.kb_id WHERE k.name = 'default' AND d.source LIKE '%/docker.md'"),
                 0);
    cr_assert_eq(qint("SELECT count(*) FROM kb_documents d JOIN knowledge_bases k ON k.id ="
                      " d.kb_id WHERE k.name = 'other'"),
                 8, "another knowledge base was pruned");
    cr_assert_eq(qint("SELECT count(*) FROM kb_chunks c WHERE NOT EXISTS (SELECT 1 FROM"
                      " kb_documents d WHERE d.id = c.document_id)"),
                 0);
    ingest_result_free(&r);
}

Test(kb, bad_documents_are_reported_one_by_one_and_the_rest_lands)
{
    long long kb = ensure_kb("default", NULL);
    char p[400];
    snprintf(p, sizeof p, "%s/docs/binary.md", tmpdir);
    FILE *f = fopen(p, "wb");
    fwrite("PK\x03\x04\0\0\x01\x02", 1, 8, f);
    fclose(f);
    snprintf(p, sizeof p, "%s/docs/latin1.md", tmpdir);
    f = fopen(p, "wb");
    fputs("# Caf\xe9\n\nna\xefve\n", f);
    fclose(f);
    snprintf(p, sizeof p, "%s/docs/empty.md", tmpdir);
    f = fopen(p, "w");
    fputs("  \n\n", f);
    fclose(f);
    char png[400];
    snprintf(png, sizeof png, "%s/logo.png", tmpdir);
    f = fopen(png, "wb");
    fputs("\x89PNG", f);
    fclose(f);
    char docs[300], missing[300];
    snprintf(docs, sizeof docs, "%s/docs", tmpdir);
    snprintf(missing, sizeof missing, "%s/missing.md", tmpdir);
    struct http_client *http = http_client_new(&loop, NULL, NULL);
    cr_assert(http);
    const char *roots[] = {docs, png, "http://127.0.0.1:1/gone.html", missing};
    struct ingest_result r;
    ingest(kb, roots, 4, 0, http, &r);
    cr_assert_eq(r.sum.added, 8);
    cr_assert_eq(r.sum.failed, 6);
    cr_assert_str_eq(failure_of(&r, "/binary.md"), "binary file");
    cr_assert_str_eq(failure_of(&r, "/latin1.md"), "invalid UTF-8 at byte 5");
    cr_assert_str_eq(failure_of(&r, "/empty.md"), "empty document");
    cr_assert_str_eq(failure_of(&r, "/logo.png"), "unsupported document type");
    cr_assert(failure_of(&r, "/gone.html") &&
                  strncmp(failure_of(&r, "/gone.html"), "unreachable: ", 13) == 0,
              "%s", failure_of(&r, "/gone.html"));
    cr_assert_str_eq(failure_of(&r, "/missing.md"), "cannot read: No such file or directory");
    cr_assert_eq(qint("SELECT count(*) FROM kb_documents"), 8);
    ingest_result_free(&r);
    int closed = 0;
    http_client_close(http, on_pool_closed, &closed);
    run_until(&closed);
}

static const char PAGE[] =
    "<!doctype html><html><head><title>Status page</title><script>var x = 1;</script></head>"
    "<body><nav>Home | Docs</nav><main><h1>Service status</h1>"
    "<h2>Planned maintenance</h2><p>The database cluster is upgraded every first Sunday of "
    "the month between 02:00 and 04:00 UTC; the bot queues answers meanwhile.</p>"
    "<h2>Incidents</h2><p>Past incidents are listed with their postmortems.</p></main>"
    "</body></html>";

Test(kb, html_page_by_url)
{
    struct fake_http *web = fake_http_start(NULL);
    cr_assert(web);
    fake_http_route_static(web, "GET", "/status", 200, "text/html; charset=utf-8", PAGE);
    fake_http_route_static(web, "GET", "/gone.html", 404, "text/html", "<p>no</p>");
    struct http_client *http = http_client_new(&loop, NULL, NULL);
    long long kb = ensure_kb("default", NULL);
    char url[200], gone[200];
    snprintf(url, sizeof url, "%s/status", fake_http_url(web));
    snprintf(gone, sizeof gone, "%s/gone.html", fake_http_url(web));
    const char *roots[] = {url, gone};
    struct ingest_result r;
    ingest(kb, roots, 2, 0, http, &r);
    cr_assert_eq(r.sum.added, 1);
    cr_assert_eq(r.sum.failed, 1);
    cr_assert_str_eq(failure_of(&r, "/gone.html"), "HTTP 404");
    char sql[400];
    snprintf(sql, sizeof sql,
             "SELECT title || '|' || content_type FROM kb_documents WHERE source = '%s'", url);
    char *v = q1(sql);
    cr_assert_str_eq(v, "Status page|html");
    free(v);
    cr_assert_eq(qint("SELECT count(*) FROM kb_chunks WHERE content LIKE '%var x%'"
                      " OR content LIKE '%Home | Docs%'"),
                 0, "script or nav text was indexed");
    struct search_result s;
    search("default", "when is the planned maintenance?", 3, 0, &s);
    cr_assert(s.n >= 1);
    cr_assert_str_eq(s.h[0].source, url);
    cr_assert_str_eq(s.h[0].heading, "Service status > Planned maintenance");
    search_free(&s);
    ingest_result_free(&r);
    int closed = 0;
    http_client_close(http, on_pool_closed, &closed);
    run_until(&closed);
    fake_http_free(web);
}

/* ---- search -------------------------------------------------------------------------- */

static void expect_top(const char *question, const char *source_suffix, const char *heading)
{
    struct search_result s;
    search("default", question, 5, 0, &s);
    cr_assert(s.n >= 1, "%s: nothing found", question);
    cr_expect(ends_with(s.h[0].source, source_suffix) && strcmp(s.h[0].heading, heading) == 0,
              "%s: top is %s [%s] (%.3f), want %s [%s]", question, s.h[0].source, s.h[0].heading,
              s.h[0].score, source_suffix, heading);
    for (size_t i = 0; i < s.n; i++) {
        cr_expect(s.h[i].score >= 0 && s.h[i].score <= 1, "score %f out of [0,1]", s.h[i].score);
        if (i)
            cr_expect(s.h[i].score <= s.h[i - 1].score, "not ordered by score");
    }
    search_free(&s);
}

Test(kb, search_ranks_the_answer_above_near_misses)
{
    long long kb = ensure_kb("default", NULL);
    struct ingest_result r;
    ingest_docs(kb, 0, &r);
    ingest_result_free(&r);
    /* "password" also appears under Billing and Troubleshooting; "scale" and "workers"
     * under Docker; "change" under e-mail and payment method. */
    expect_top("How do I reset my password?", "/account/password.md",
               "Account > Reset your password");
    expect_top("How do I scale the workers with Helm?", "/deploy/helm.md",
               "Deploy with Helm > Scaling");
    expect_top("run several workers with docker compose", "/deploy/docker.md",
               "Docker > Running several workers with Compose");
    expect_top("How do I change the credit card?", "/billing/invoices.md",
               "Billing > Change the payment method");
    expect_top("password authentication failed for the database", "/troubleshooting.md",
               "Troubleshooting > Database connection errors");
    /* Any-word pass: not every word is in the passage, it is still found. */
    expect_top("what does the Retry-After header mean when I get 429", "/api/rate-limits.md",
               "API > Rate limits");

    /* Scores mean the same across questions: every word present -> >= 0.6; a threshold
     * drops passages that share only a word. */
    struct search_result s;
    search("default", "reset password", 5, 0, &s);
    cr_assert(s.n >= 2);
    cr_assert_geq(s.h[0].score, 0.6);
    cr_assert_lt(s.h[1].score, 0.6, "a near miss scores like an answer");
    search_free(&s);
    search("default", "reset password", 5, 0.6, &s);
    cr_assert_eq(s.n, 1);
    search_free(&s);
    /* Negation, stop words only, an unknown knowledge base. */
    search("default", "password -reset", 5, 0, &s);
    for (size_t i = 0; i < s.n; i++)
        cr_expect(strcmp(s.h[i].heading, "Account > Reset your password") != 0);
    search_free(&s);
    search("default", "how do I", 5, 0, &s);
    cr_assert_eq(s.n, 0);
    search_free(&s);
    search("nope", "reset password", 5, 0, &s);
    cr_assert_eq(s.n, 0);
    search_free(&s);
}

Test(kb, knowledge_bases_are_separate_and_simple_config_does_not_stem)
{
    long long en = ensure_kb("default", NULL);
    long long simple = ensure_kb("de", "simple");
    struct ingest_result r;
    ingest_docs(en, 0, &r);
    ingest_result_free(&r);
    char p[400];
    snprintf(p, sizeof p, "%s/de.md", tmpdir);
    FILE *f = fopen(p, "w");
    fputs("# Passwort\n\n## Passwort zurücksetzen\n\nKlicken Sie auf Passwort vergessen.\n", f);
    fclose(f);
    const char *roots[] = {p};
    ingest(simple, roots, 1, 0, NULL, &r);
    ingest_result_free(&r);
    cr_assert_eq(qint("SELECT count(*) FROM kb_chunks c JOIN knowledge_bases k ON k.id ="
                      " c.kb_id WHERE k.name = 'de' AND c.ts_config = 'simple'::regconfig"),
                 1);
    struct search_result s;
    search("de", "passwort zurücksetzen", 5, 0, &s);
    cr_assert_eq(s.n, 1);
    cr_assert_str_eq(s.h[0].heading, "Passwort > Passwort zurücksetzen");
    search_free(&s);
    search("de", "reset password", 5, 0, &s);
    cr_assert_eq(s.n, 0, "a search crossed into another knowledge base");
    search_free(&s);
    search("default", "passwort", 5, 0, &s);
    cr_assert_eq(s.n, 0);
    search_free(&s);
}

/* EXPLAIN of the search statement (bound parameters, like the pool's unnamed statements)
 * on a few thousand chunks after ANALYZE: the GIN index, never a sequential scan of
 * kb_chunks. */
Test(kb, search_plan_uses_the_gin_index)
{
    long long kb = ensure_kb("default", NULL);
    struct ingest_result r;
    ingest_docs(kb, 0, &r);
    ingest_result_free(&r);
    qexec("INSERT INTO kb_documents (kb_id, source, root, content_hash)"
          " SELECT 1, 'gen/' || g, 'gen', 'x' FROM generate_series(1, 400) g");
    qexec("INSERT INTO kb_chunks (document_id, kb_id, ordinal, heading_path, content, ts_config)"
          " SELECT d.id, 1, o, 'Section ' || (d.id * 10 + o),"
          " 'word' || (d.id * 7 + o) % 997 || ' lorem ipsum dolor sit amet ' || (SELECT"
          " string_agg(md5(d.id::text || o::text || i), ' ') FROM generate_series(1, 12) i)"
          " || ' token' || (o * 13 + d.id) % 501, 'english'"
          " FROM kb_documents d, generate_series(0, 9) o WHERE d.source LIKE 'gen/%'");
    /* What an ingest run does after writing: GIN pending list into the index, ANALYZE. */
    struct countw m = {0};
    cr_assert(kb_store_maintain(pool, on_count, &m) == 0);
    run_until(&m.done);
    cr_assert_gt(m.n, 0, "no pending-list pages were cleaned");
    cr_assert_geq(qint("SELECT count(*) FROM kb_chunks"), 4000);
    const char *questions[] = {"How do I reset my password?", "token42 word17",
                               "autoscaler queue latency -docker", "\"reset link\""};
    for (size_t i = 0; i < sizeof(questions) / sizeof(questions[0]); i++) {
        char *any = NULL, *neg = NULL, *sql = NULL;
        kb_search_any_words(questions[i], &any, &neg);
        const char *lp[] = {"default", any};
        PGresult *lk = PQexecParams(db, kb_search_lookup_sql(), 2, NULL, lp, NULL, NULL, 0);
        cr_assert(PQresultStatus(lk) == PGRES_TUPLES_OK && PQntuples(lk) == 1, "%s",
                  PQerrorMessage(db));
        cr_assert(asprintf(&sql, "EXPLAIN %s", kb_search_fulltext_sql()) > 0);
        char *and_text = kb_search_and_text(questions[i]);
        const char *params[] = {PQgetvalue(lk, 0, 0),
                                PQgetvalue(lk, 0, 1),
                                and_text,
                                PQgetisnull(lk, 0, 2) ? NULL : PQgetvalue(lk, 0, 2),
                                neg,
                                "5",
                                PQgetisnull(lk, 0, 3) ? NULL : PQgetvalue(lk, 0, 3),
                                PQgetisnull(lk, 0, 4) ? NULL : PQgetvalue(lk, 0, 4)};
        PGresult *res = PQexecParams(db, sql, 8, NULL, params, NULL, NULL, 0);
        free(and_text);
        cr_assert(PQresultStatus(res) == PGRES_TUPLES_OK, "%s", PQerrorMessage(db));
        PQclear(lk);
        struct buf plan = BUF_INIT;
        for (int row = 0; row < PQntuples(res); row++) {
            buf_puts(&plan, PQgetvalue(res, row, 0));
            buf_puts(&plan, "\n");
        }
        cr_expect(strstr(plan.data, "Bitmap Index Scan on kb_chunks_tsv"), "%s: no GIN scan:\n%s",
                  questions[i], plan.data);
        cr_expect(!strstr(plan.data, "Seq Scan on kb_chunks"), "%s: sequential scan:\n%s",
                  questions[i], plan.data);
        buf_free(&plan);
        PQclear(res);
        free(sql);
        free(any);
        free(neg);
    }
    /* The hot statements of ingest and embed use their indexes too. */
    char *plan = explain("SELECT content_hash, chunking FROM kb_documents WHERE kb_id = 1"
                         " AND source = 'gen/7'");
    cr_expect(strstr(plan, "Index Scan using kb_documents_kb_id_source_key"), "%s", plan);
    free(plan);
    plan = explain("SELECT c.id FROM kb_chunks c WHERE c.kb_id = 1 AND c.embedding IS NULL"
                   " ORDER BY c.id LIMIT 64");
    cr_expect(strstr(plan, "Index Scan") && !strstr(plan, "Seq Scan"), "%s", plan);
    free(plan);
    plan = explain("DELETE FROM kb_chunks WHERE document_id = 7");
    cr_expect(strstr(plan, "kb_chunks_document_id_ordinal_key"), "%s", plan);
    free(plan);
}

struct listw {
    int done;
    size_t n;
    long long chunks;
    char first_kb[32];
};

static void on_list(const char *err, const struct kb_store_entry *e, size_t n, void *arg)
{
    struct listw *w = arg;
    cr_assert(!err, "%s", err);
    w->done = 1;
    w->n = n;
    for (size_t i = 0; i < n; i++)
        w->chunks += e[i].chunks;
    if (n)
        snprintf(w->first_kb, sizeof w->first_kb, "%s", e[0].kb);
}

Test(kb, list_and_remove)
{
    long long kb = ensure_kb("default", NULL);
    struct ingest_result r;
    ingest_docs(kb, 0, &r);
    ingest_result_free(&r);
    struct listw l = {0};
    cr_assert(kb_store_list(pool, "default", on_list, &l) == 0);
    run_until(&l.done);
    cr_assert_eq(l.n, 8);
    cr_assert_eq(l.chunks, qint("SELECT count(*) FROM kb_chunks"));
    cr_assert_str_eq(l.first_kb, "default");
    struct listw none = {0};
    cr_assert(kb_store_list(pool, "nope", on_list, &none) == 0);
    run_until(&none.done);
    cr_assert_eq(none.n, 0);

    char source[400];
    snprintf(source, sizeof source, "%s/docs/faq.txt", tmpdir);
    char *real = realpath(source, NULL);
    cr_assert(real);
    struct countw c = {0};
    cr_assert(kb_store_remove(pool, "default", real, on_count, &c) == 0);
    run_until(&c.done);
    cr_assert_eq(c.n, 1);
    c.done = 0;
    cr_assert(kb_store_remove(pool, "default", real, on_count, &c) == 0);
    run_until(&c.done);
    cr_assert_eq(c.n, 0);
    cr_assert_eq(qint("SELECT count(*) FROM kb_documents"), 7);
    cr_assert_eq(qint("SELECT count(*) FROM kb_chunks c WHERE NOT EXISTS (SELECT 1 FROM"
                      " kb_documents d WHERE d.id = c.document_id)"),
                 0);
    free(real);
}

/* ---- embeddings ---------------------------------------------------------------------- */

struct embedw {
    int done;
    char *err;
    struct kb_embed_stats stats;
};

static void on_embedded(const char *err, const struct kb_embed_stats *stats, void *arg)
{
    struct embedw *w = arg;
    w->done = 1;
    w->err = err ? strdup(err) : NULL;
    w->stats = *stats;
}

static void embed_run(struct llm *llm, size_t batch, unsigned retries, struct embedw *w)
{
    memset(w, 0, sizeof(*w));
    struct kb_embed_opts o = {.pool = pool,
                              .llm = llm,
                              .kb = "default",
                              .model = "fake-embed",
                              .batch = batch,
                              .max_retries = retries,
                              .backoff_ms = 5};
    cr_assert(kb_embed_run(&loop, &o, on_embedded, w) == 0);
    cr_assert(!w->done);
    run_until(&w->done);
}

/* Inputs sent in embeddings requests from request index from on. */
static size_t inputs_sent(struct fake_llm *f, size_t from)
{
    size_t n = 0;
    for (size_t i = from; i < fake_llm_count(f); i++) {
        json_t *body = fake_llm_request_json(f, i);
        if (body && json_is_array(json_object_get(body, "input")))
            n += json_array_size(json_object_get(body, "input"));
        json_decref(body);
    }
    return n;
}

Test(kb, embeddings_batched_retried_and_resumed)
{
    struct fake_llm *fake = fake_llm_start(&(struct fake_llm_opts){.dim = 8});
    cr_assert(fake);
    struct http_client *http = http_client_new(&loop, NULL, NULL);
    struct llm_opts lo = {.http = http,
                          .base_url = fake_llm_url(fake),
                          .embedding_model = "fake-embed",
                          .embedding_batch = 2,
                          .temperature = LLM_TEMPERATURE_UNSET};
    char *err = NULL;
    struct llm *llm = llm_new(&lo, &err);
    cr_assert(llm, "%s", err);
    long long kb = ensure_kb("default", NULL);
    struct ingest_result r;
    ingest_docs(kb, 0, &r);
    ingest_result_free(&r);
    long long chunks = qint("SELECT count(*) FROM kb_chunks");
    cr_assert_geq(chunks, 10);

    /* Batching: rounds of 4 chunks, each sent as requests of 2 inputs. */
    struct embedw w;
    embed_run(llm, 4, 0, &w);
    cr_assert(!w.err, "%s", w.err);
    cr_assert_eq((long long)w.stats.embedded, chunks);
    cr_assert_eq((long long)w.stats.rounds, (chunks + 3) / 4);
    cr_assert_eq((long long)fake_llm_embedding_count(fake), (chunks + 1) / 2 + (chunks % 4 == 1));
    cr_assert_eq(qint("SELECT count(*) FROM kb_chunks WHERE embedding IS NULL"
                      " OR array_length(embedding, 1) <> 8 OR embedding_model <> 'fake-embed'"),
                 0);
    /* The stored vector is the fake's deterministic embedding of "heading\n\ntext". */
    PGresult *res = PQexec(db, "SELECT heading_path, content, embedding::text FROM kb_chunks"
                               " WHERE heading_path <> '' ORDER BY id LIMIT 1");
    cr_assert(PQntuples(res) == 1);
    char *text = NULL;
    cr_assert(asprintf(&text, "%s\n\n%s", PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1)) > 0);
    float want[8];
    fake_llm_embedding(text, 8, want);
    float got[8];
    cr_assert_eq(sscanf(PQgetvalue(res, 0, 2), "{%f,%f,%f,%f,%f,%f,%f,%f}", &got[0], &got[1],
                        &got[2], &got[3], &got[4], &got[5], &got[6], &got[7]),
                 8);
    for (int i = 0; i < 8; i++)
        cr_expect_float_eq(got[i], want[i], 1e-5, "component %d", i);
    free(text);
    PQclear(res);
    /* Nothing left: a second run sends nothing. */
    size_t before = fake_llm_count(fake);
    embed_run(llm, 4, 0, &w);
    cr_assert(!w.err);
    cr_assert_eq(w.stats.embedded, 0);
    cr_assert_eq(fake_llm_count(fake), before);

    /* Retry on 429 (Retry-After: 0): the round is sent again and the run completes. */
    qexec("UPDATE kb_chunks SET embedding = NULL");
    fake_faults_push(
        fake_llm_faults(fake),
        &(struct fake_fault){.status = 429,
                             .retry_after = "0",
                             .body = "{\"error\":{\"message\":\"Rate limit reached\","
                                     "\"type\":\"requests\",\"code\":\"rate_limit_exceeded\"}}"},
        1);
    embed_run(llm, 4, 0, &w);
    cr_assert(!w.err, "%s", w.err);
    cr_assert_eq(w.stats.retries, 1);
    cr_assert_eq((long long)w.stats.embedded, chunks);
    cr_assert_eq(qint("SELECT count(*) FROM kb_chunks WHERE embedding IS NULL"), 0);

    /* Interrupted: the third request fails for good (400); the two rounds before it are
     * stored. Resuming sends only the chunks still without an embedding. */
    qexec("UPDATE kb_chunks SET embedding = NULL");
    fake_faults_push(fake_llm_faults(fake), &(struct fake_fault){.pass_through = 1}, 2);
    fake_faults_push(fake_llm_faults(fake),
                     &(struct fake_fault){.status = 400,
                                          .body = "{\"error\":{\"message\":\"bad\","
                                                  "\"type\":\"invalid_request_error\"}}"},
                     1);
    embed_run(llm, 2, KB_EMBED_NO_RETRY, &w);
    cr_assert(w.err, "the interrupted run reported success");
    free(w.err);
    cr_assert_eq(w.stats.embedded, 4);
    cr_assert_eq(qint("SELECT count(*) FROM kb_chunks WHERE embedding IS NOT NULL"), 4);
    size_t from = fake_llm_count(fake);
    embed_run(llm, 64, 0, &w);
    cr_assert(!w.err, "%s", w.err);
    cr_assert_eq((long long)w.stats.embedded, chunks - 4);
    cr_assert_eq((long long)inputs_sent(fake, from), chunks - 4, "resume re-sent done chunks");
    cr_assert_eq(qint("SELECT count(*) FROM kb_chunks WHERE embedding IS NULL"), 0);

    llm_free(llm);
    int closed = 0;
    http_client_close(http, on_pool_closed, &closed);
    run_until(&closed);
    fake_llm_free(fake);
}

struct modew {
    int done;
    enum kb_search_mode_kind mode;
};

static void on_mode(const char *err, enum kb_search_mode_kind mode, void *arg)
{
    struct modew *w = arg;
    cr_assert(!err, "%s", err);
    w->mode = mode;
    w->done = 1;
}

Test(kb, search_mode_says_which_path_is_on)
{
    struct modew w = {0};
    cr_assert(kb_search_mode(pool, 0, on_mode, &w) == 0);
    run_until(&w.done);
    cr_assert_eq(w.mode, KB_MODE_FULLTEXT_NO_ENDPOINT);
    int has_vector =
        (int)qint("SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'");
    memset(&w, 0, sizeof w);
    cr_assert(kb_search_mode(pool, 1, on_mode, &w) == 0);
    run_until(&w.done);
    if (has_vector) {
        cr_assert_eq(w.mode, KB_MODE_HYBRID);
    } else {
        cr_assert_eq(w.mode, KB_MODE_FULLTEXT_NO_EXTENSION);
        fprintf(stderr, "test_kb: the `vector` extension is not installed on this server: "
                        "the hybrid (vector + RRF) search path is not exercised; full text "
                        "is\n");
    }
}

/* ---- the command --------------------------------------------------------------------- */

static char *read_stderr(void)
{
    char path[300];
    snprintf(path, sizeof path, "%s/stderr", tmpdir);
    FILE *f = fopen(path, "r");
    cr_assert(f);
    struct buf b = BUF_INIT;
    char tmp[4096];
    size_t n;
    while ((n = fread(tmp, 1, sizeof tmp, f)) > 0)
        buf_append(&b, tmp, n);
    fclose(f);
    char *s = b.data ? buf_steal(&b) : strdup("");
    buf_free(&b);
    return s;
}

/* Run `tierone kb ARGS` (or $TIERONE_KB_CMD ARGS) against the scratch database; stdout
 * into *out (caller frees). Returns the exit status. */
static int run_cli(const char *args, char **out)
{
    const char *cmd = getenv("TIERONE_KB_CMD");
    char bin[512];
    if (!cmd) {
        const char *dir = getenv("TIERONE_BIN_DIR");
        cr_assert(dir, "TIERONE_BIN_DIR is not set (run through ctest)");
        snprintf(bin, sizeof bin, "%s/tierone", dir);
        cr_assert(access(bin, X_OK) == 0, "%s is missing", bin);
        cmd = bin;
    }
    char *line = NULL;
    cr_assert(asprintf(&line, "TIERONE_DATABASE_URL='%s' TIERONE_LLM_URL= %s kb %s 2>%s/stderr",
                       scratch_url, cmd, args, tmpdir) > 0);
    FILE *p = popen(line, "r");
    cr_assert(p);
    struct buf b = BUF_INIT;
    char tmp[4096];
    size_t n;
    while ((n = fread(tmp, 1, sizeof tmp, p)) > 0)
        buf_append(&b, tmp, n);
    int st = pclose(p);
    free(line);
    *out = b.data ? buf_steal(&b) : strdup("");
    buf_free(&b);
    char *err = read_stderr();
    cr_assert(!strstr(err, "Sanitizer") && !strstr(err, "runtime error:"), "kb %s:\n%s", args, err);
    free(err);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

Test(kb, command_ingest_search_eval_list_rm)
{
    char *out = NULL, *err = NULL, args[1024];
    /* Bad documents: reported on stderr, exit 1, the rest landed. */
    char bad[400];
    snprintf(bad, sizeof bad, "%s/docs/bad.md", tmpdir);
    FILE *f = fopen(bad, "wb");
    fputs("ok \xc3\x28 broken", f);
    fclose(f);
    snprintf(args, sizeof args, "ingest '%s/docs' --chunk-size 800 --overlap 100", tmpdir);
    cr_assert_eq(run_cli(args, &out), 1, "%s", out);
    err = read_stderr();
    cr_assert(strstr(err, "bad.md: invalid UTF-8 at byte 3"), "%s", err);
    cr_assert(strstr(out, "8 added, 0 replaced, 0 unchanged, 1 failed"), "%s", out);
    free(out);
    free(err);
    cr_assert_eq(unlink(bad), 0);
    snprintf(args, sizeof args, "ingest '%s/docs' --chunk-size 800 --overlap 100 --prune", tmpdir);
    cr_assert_eq(run_cli(args, &out), 0, "%s", out);
    cr_assert(strstr(out, "0 added, 0 replaced, 8 unchanged, 0 failed"), "%s", out);
    free(out);

    /* Eval on the fixture questions. */
    snprintf(args, sizeof args, "eval '%s/tests/fixtures/kb-eval.jsonl' --json",
             getenv("TIERONE_SOURCE_DIR"));
    cr_assert_eq(run_cli(args, &out), 0, "%s", out);
    json_error_t je;
    json_t *doc = json_loads(out, 0, &je);
    cr_assert(doc, "eval --json printed no JSON: %s", out);
    json_t *overall = json_object_get(doc, "overall");
    cr_assert_eq(json_integer_value(json_object_get(overall, "questions")), 18);
    double r1 = json_real_value(json_object_get(overall, "recall@1"));
    double r5 = json_real_value(json_object_get(overall, "recall@5"));
    double mrr = json_real_value(json_object_get(overall, "mrr"));
    cr_assert_geq(r1, 0.75, "recall@1 %.3f", r1);
    cr_assert_geq(r5, 0.9, "recall@5 %.3f", r5);
    cr_assert(mrr >= r1 && mrr <= r5 + 1e-9, "mrr %.3f", mrr);
    cr_assert(json_object_get(json_object_get(doc, "per_source"), "deploy/helm.md"));
    json_decref(doc);
    free(out);

    /* Search output. */
    cr_assert_eq(run_cli("search 'How do I reset my password?' -k 2 --json", &out), 0);
    doc = json_loads(out, 0, &je);
    cr_assert(json_array_size(doc) == 2, "%s", out);
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(doc, 0), "heading_path")),
                     "Account > Reset your password");
    json_decref(doc);
    free(out);
    err = read_stderr();
    cr_assert(strstr(err, "full-text only (no embeddings endpoint configured)"), "no mode line: %s",
              err);
    free(err);

    /* list, rm. */
    cr_assert_eq(run_cli("list", &out), 0);
    cr_assert(strstr(out, "8 documents"), "%s", out);
    free(out);
    snprintf(args, sizeof args, "rm '%s/docs/faq.txt'", tmpdir);
    cr_assert_eq(run_cli(args, &out), 0, "%s", out);
    free(out);
    cr_assert_eq(run_cli(args, &out), 1, "removing twice succeeded");
    free(out);
    cr_assert_eq(run_cli("list --json", &out), 0);
    doc = json_loads(out, 0, &je);
    cr_assert_eq(json_array_size(doc), 7);
    json_decref(doc);
    free(out);
    /* Usage errors exit 2. */
    cr_assert_eq(run_cli("search", &out), 2);
    free(out);
    cr_assert_eq(run_cli("ingest x --unit words", &out), 2);
    free(out);
}
