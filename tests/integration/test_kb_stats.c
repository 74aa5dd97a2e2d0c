/* kb_stats: kb_search's cache of the lexeme statistics, against the real PostgreSQL in
 * TIERONE_TEST_DATABASE_URL (a scratch database per test, migrated).
 *
 * The corpus: one knowledge base whose chunks carry words of fixed shares (alpha in every
 * chunk, bravo in every second, ... kilo in one of 400) and one unique word each, first
 * 5,000 chunks, then 25,000 (so the two-word cutoff is first 2,000 rows, then 10 % of the
 * table), analysed (autovacuum off for the table so the statistics change only when the
 * test says so).
 *  - The texts kb_search_terms computes in C from the cached statistics equal those of the
 *    statement kb_search ran per question before the cache (kb_search_lookup_sql(), kept
 *    in the library as the reference), as sets of OR-ed terms, for a set of questions, at
 *    both sizes; and the cutoffs bite (common words left out of the rare-word and
 *    two-word texts).
 *  - The cache is used: N searches read the statistics once; an ANALYZE is not seen until
 *    kb_search_forget_stats; with a TTL of 0 every search reads them.
 *  - Concurrent searches during the first read all complete with one read (a pool of one
 *    connection, whose queue is FIFO, makes "during" certain).
 *  - A failing read (the session's search_path puts public before pg_catalog and a view
 *    public.pg_stats raises; the pool does not prepare, so the view takes effect at once)
 *    fails every waiting search with its error; the next search reads again. A failing
 *    read for age leaves the searches on the old statistics. */
#include "clock.h"
#include "kb_search.h"
#include "pg.h"
#include "test_loop.h"
#include "test_pg.h"
#include "xalloc.h"

#include <criterion/criterion.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

static uv_loop_t loop;
static struct pg_pool *pool;
static PGconn *db;
static char dbname[64];
static char *scratch_url;

static struct pg_pool *pool_open(unsigned size, int no_prepare)
{
    char *err = NULL;
    struct pg_pool_opts o = {.conninfo = scratch_url, .size = size, .no_prepare = no_prepare};
    struct pg_pool *p = pg_pool_new(&loop, &o, &err);
    cr_assert(p, "pool: %s", err);
    return p;
}

static void on_pool_closed(void *arg)
{
    *(int *)arg = 1;
}

static void pool_close(struct pg_pool *p)
{
    int closed = 0;
    kb_search_forget_stats(p);
    pg_pool_close(p, on_pool_closed, &closed);
    cr_assert(test_loop_until_flag(&loop, &closed, 10000), "the pool did not close");
}

static void setup(void)
{
    static int seq;
    snprintf(dbname, sizeof dbname, "tierone_kb_stats_%d_%d", (int)getpid(), seq++);
    scratch_url = xstrdup(test_pg_fresh(dbname));
    db = test_pg_connect(scratch_url);
    cr_assert(uv_loop_init(&loop) == 0);
    pool = pool_open(4, 0);
    kb_search_set_stats_ttl(60000);
}

static void teardown(void)
{
    if (pool)
        pool_close(pool);
    pool = NULL;
    kb_search_forget_stats(NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_expect(uv_loop_close(&loop) == 0, "loop has open handles");
    PQfinish(db);
    db = NULL;
    test_pg_drop(dbname);
    free(scratch_url);
}

TestSuite(kb_stats, .init = setup, .fini = teardown, .timeout = 240);

/* ---- the corpus ---------------------------------------------------------------------- */

/* Knowledge bases "default" (english) and "plain" (simple), one document. */
static void corpus_init(void)
{
    test_pg_exec(db, "ALTER TABLE kb_chunks SET (autovacuum_enabled = false)");
    test_pg_exec(db, "INSERT INTO knowledge_bases (name, ts_config) VALUES"
                     " ('default', 'english'), ('plain', 'simple')");
    test_pg_exec(db, "INSERT INTO kb_documents (kb_id, source, root, content_hash)"
                     " SELECT id, 'gen', 'gen', 'x' FROM knowledge_bases WHERE name = 'default'");
}

/* Chunks from..to-1 of the corpus, then ANALYZE. */
static void corpus_add(int from, int to)
{
    char sql[2048];
    snprintf(sql, sizeof sql,
             "INSERT INTO kb_chunks (document_id, kb_id, ordinal, heading_path, content,"
             " ts_config)"
             " SELECT d.id, d.kb_id, i, 'Section ' || (i %% 7),"
             " concat_ws(' ', 'alpha',"
             "  CASE WHEN i %% 2 = 0 THEN 'bravo' END,"
             "  CASE WHEN i %% 3 = 0 THEN 'charlie' END,"
             "  CASE WHEN i %% 10 = 0 THEN 'delta' END,"
             "  CASE WHEN i %% 12 = 0 THEN 'echo' END,"
             "  CASE WHEN i %% 20 = 0 THEN 'foxtrot' END,"
             "  CASE WHEN i %% 25 = 0 THEN 'golf' END,"
             "  CASE WHEN i %% 25 = 1 THEN 'hotel' END,"
             "  CASE WHEN i %% 50 = 0 THEN 'india' END,"
             "  CASE WHEN i %% 100 = 0 THEN 'juliet' END,"
             "  CASE WHEN i %% 400 = 0 THEN 'kilo' END,"
             "  CASE WHEN i %% 6 = 0 THEN 'lima' END,"
             "  'uniq' || i), 'english'"
             " FROM kb_documents d, generate_series(%d, %d) i WHERE d.source = 'gen'",
             from, to - 1);
    test_pg_exec(db, sql);
    test_pg_exec(db, "ANALYZE kb_chunks");
}

/* ---- terms: computed and reference ---------------------------------------------------- */

struct terms {
    int done;
    char *err;
    int found;
    char *v[5]; /* kb_id, ts_config, any, rare, two */
};

static void terms_free(struct terms *t)
{
    free(t->err);
    for (int i = 0; i < 5; i++)
        free(t->v[i]);
    memset(t, 0, sizeof(*t));
}

static char *dup_or_null(const char *s)
{
    return s ? xstrdup(s) : NULL;
}

static void on_terms(const char *err, const struct kb_terms *t, void *arg)
{
    struct terms *w = arg;
    w->done = 1;
    w->err = dup_or_null(err);
    w->found = t != NULL;
    if (t) {
        w->v[0] = dup_or_null(t->kb_id);
        w->v[1] = dup_or_null(t->ts_config);
        w->v[2] = dup_or_null(t->any);
        w->v[3] = dup_or_null(t->rare);
        w->v[4] = dup_or_null(t->two);
    }
}

static void terms_c(struct pg_pool *p, const char *kb, const char *question, struct terms *out)
{
    memset(out, 0, sizeof(*out));
    cr_assert(kb_search_terms(p, kb, question, on_terms, out) == 0);
    cr_assert(!out->done, "the callback ran inside kb_search_terms");
    cr_assert(test_loop_until_flag(&loop, &out->done, 30000), "kb_search_terms: no callback");
}

static void terms_ref(const char *kb, const char *question, struct terms *out)
{
    memset(out, 0, sizeof(*out));
    char *any = NULL, *neg = NULL;
    kb_search_any_words(question, &any, &neg);
    const char *params[] = {kb, any};
    PGresult *r = PQexecParams(db, kb_search_lookup_sql(), 2, NULL, params, NULL, NULL, 0);
    cr_assert(PQresultStatus(r) == PGRES_TUPLES_OK, "%s", PQerrorMessage(db));
    out->done = 1;
    out->found = PQntuples(r) == 1;
    for (int i = 0; out->found && i < 5; i++)
        out->v[i] = PQgetisnull(r, 0, i) ? NULL : xstrdup(PQgetvalue(r, 0, i));
    PQclear(r);
    free(any);
    free(neg);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A tsquery text of terms OR-ed with " | " in a canonical order: the terms sorted, and in
 * pairs "(a & b)" the two lexemes sorted. NULL stays NULL. */
static char *canon(const char *s)
{
    if (!s)
        return NULL;
    size_t n = 0, cap = 16;
    char **items = xcalloc(cap, sizeof(*items));
    const char *p = s;
    for (;;) {
        const char *e = strstr(p, " | ");
        size_t len = e ? (size_t)(e - p) : strlen(p);
        char *item = xstrndup(p, len);
        char *amp = item[0] == '(' ? strstr(item, " & ") : NULL;
        if (amp) {
            char *a = xstrndup(item + 1, (size_t)(amp - item - 1));
            char *b = xstrndup(amp + 3, strlen(amp + 3) - 1);
            char *pair =
                strcmp(a, b) <= 0 ? xasprintf("(%s & %s)", a, b) : xasprintf("(%s & %s)", b, a);
            free(a);
            free(b);
            free(item);
            item = pair;
        }
        if (n == cap) {
            cap *= 2;
            items = xrealloc(items, cap * sizeof(*items));
        }
        items[n++] = item;
        if (!e)
            break;
        p = e + 3;
    }
    qsort(items, n, sizeof(*items), cmp_str);
    size_t total = 1;
    for (size_t i = 0; i < n; i++)
        total += strlen(items[i]) + 3;
    char *out = xcalloc(1, total);
    for (size_t i = 0; i < n; i++) {
        if (i)
            strcat(out, " | ");
        strcat(out, items[i]);
        free(items[i]);
    }
    free(items);
    return out;
}

static int same_terms(const char *a, const char *b)
{
    char *ca = canon(a), *cb = canon(b);
    int same = (!ca && !cb) || (ca && cb && strcmp(ca, cb) == 0);
    free(ca);
    free(cb);
    return same;
}

static const char *const QUESTIONS[] = {
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima uniq7 nothere",
    "golf hotel",
    "hotel golf india",
    "alpha",
    "alpha bravo",
    "alpha bravo section",
    "How do I reset my password?",
    "how do I",
    "",
    "-delta echo juliet",
    "\"juliet kilo\" or india",
    "delta delta delta echo echo",
    "foxtrots golfing hotels Charlie's",
    "it's O'Brien's \"don't\" a\\b",
    "--echo --golf kilo",
    "uniq1 uniq2 uniq3 uniq4 nothing else matters here at all",
};
#define NQUESTIONS (sizeof(QUESTIONS) / sizeof(QUESTIONS[0]))

/* Every question on both knowledge bases and an unknown one: C equals the reference. */
static void expect_same_as_reference(void)
{
    const char *kbs[] = {"default", "plain", "nope"};
    for (size_t k = 0; k < 3; k++) {
        for (size_t i = 0; i < NQUESTIONS; i++) {
            struct terms c, r;
            terms_c(pool, kbs[k], QUESTIONS[i], &c);
            terms_ref(kbs[k], QUESTIONS[i], &r);
            cr_assert(!c.err, "%s: %s", QUESTIONS[i], c.err);
            cr_assert_eq(c.found, r.found, "%s/%s: found %d, reference %d", kbs[k], QUESTIONS[i],
                         c.found, r.found);
            if (r.found) {
                cr_assert_str_eq(c.v[0], r.v[0]);
                cr_assert_str_eq(c.v[1], r.v[1]);
                static const char *const what[] = {"", "", "any-word", "rare-word", "two-word"};
                for (int col = 2; col < 5; col++)
                    cr_expect(same_terms(c.v[col], r.v[col]), "%s/%s: %s: C %s, reference %s",
                              kbs[k], QUESTIONS[i], what[col], c.v[col] ? c.v[col] : "NULL",
                              r.v[col] ? r.v[col] : "NULL");
            }
            terms_free(&c);
            terms_free(&r);
        }
    }
}

static int has_term(const char *text, const char *term)
{
    return text && strstr(text, term) != NULL;
}

/* ---- (a) the texts ------------------------------------------------------------------- */

Test(kb_stats, texts_equal_the_reference_statement_and_cutoffs_bite)
{
    corpus_init();
    corpus_add(0, 5000);
    expect_same_as_reference();
    /* 5,000 rows: a lexeme selects pairs up to 2,000 rows (a share of 0.4); the rare words
     * add up to 2,000 rows. */
    struct terms t;
    terms_c(pool, "default", QUESTIONS[0], &t);
    cr_assert(has_term(t.v[4], "'charli' & 'delta'") || has_term(t.v[4], "'delta' & 'charli'"),
              "%s", t.v[4]);
    cr_assert(!has_term(t.v[4], "'bravo'") && !has_term(t.v[4], "'alpha'"), "%s", t.v[4]);
    cr_assert(has_term(t.v[3], "'nother'") || has_term(t.v[3], "'nothere'"), "%s", t.v[3]);
    cr_assert(!has_term(t.v[3], "'alpha'") && !has_term(t.v[3], "'bravo'") &&
                  !has_term(t.v[3], "'charli'"),
              "%s", t.v[3]);
    cr_assert(has_term(t.v[2], "'alpha'") && has_term(t.v[2], "'bravo'"), "%s", t.v[2]);
    terms_free(&t);
    /* Only common words: the rarest one still forms the rare-word query; no pair. */
    terms_c(pool, "default", "alpha bravo", &t);
    cr_assert_str_eq(t.v[3], "'bravo'");
    cr_assert_null(t.v[4], "%s", t.v[4]);
    terms_free(&t);

    /* 25,000 rows: the pair limit is 10 % of the table (2,500 rows), so echo (one in 12,
     * 2,083 rows) pairs, lima (one in 6, 4,167 rows) and charlie no longer do. */
    corpus_add(5000, 25000);
    kb_search_forget_stats(pool);
    expect_same_as_reference();
    terms_c(pool, "default", QUESTIONS[0], &t);
    cr_assert(has_term(t.v[4], "'echo'"), "%s", t.v[4]);
    cr_assert(!has_term(t.v[4], "'charli'") && !has_term(t.v[4], "'lima'"), "%s", t.v[4]);
    terms_free(&t);
}

/* ---- (b) the cache is used ----------------------------------------------------------- */

struct search {
    int done;
    char *err;
    size_t n;
    long long ids[8];
};

static void on_hits(const char *err, const struct kb_hit *hits, size_t n, void *arg)
{
    struct search *s = arg;
    s->done = 1;
    s->err = dup_or_null(err);
    s->n = n;
    for (size_t i = 0; i < n && i < 8; i++)
        s->ids[i] = hits[i].chunk_id;
}

static void search_start(struct pg_pool *p, const char *question, struct search *s)
{
    memset(s, 0, sizeof(*s));
    struct kb_search_request req = {.kb = "default", .question = question, .k = 5};
    cr_assert(kb_search(p, &req, on_hits, s) == 0);
}

static void search_one(struct pg_pool *p, const char *question, struct search *s)
{
    search_start(p, question, s);
    cr_assert(test_loop_until_flag(&loop, &s->done, 30000), "kb_search: no callback");
}

Test(kb_stats, searches_share_one_read_until_forgotten_or_ttl_0)
{
    corpus_init();
    corpus_add(0, 3000);
    uint64_t r0 = kb_search_stats_refreshes();
    for (int i = 0; i < 5; i++) {
        struct search s;
        search_one(pool, QUESTIONS[i], &s);
        cr_assert(!s.err, "%s", s.err);
        free(s.err);
    }
    cr_assert_eq(kb_search_stats_refreshes() - r0, 1, "5 searches read the statistics %llu times",
                 (unsigned long long)(kb_search_stats_refreshes() - r0));

    /* An ANALYZE that changes the statistics is not seen while cached... */
    struct terms before, after, ref;
    terms_c(pool, "default", QUESTIONS[0], &before);
    corpus_add(3000, 8000);
    terms_ref("default", QUESTIONS[0], &ref);
    cr_assert(!same_terms(before.v[4], ref.v[4]), "the corpus change did not change the texts");
    terms_c(pool, "default", QUESTIONS[0], &after);
    cr_assert_str_eq(after.v[4], before.v[4], "the statistics were read again");
    cr_assert_eq(kb_search_stats_refreshes() - r0, 1);
    terms_free(&after);
    /* ...until forgotten. */
    kb_search_forget_stats(pool);
    terms_c(pool, "default", QUESTIONS[0], &after);
    cr_assert(same_terms(after.v[4], ref.v[4]), "C %s, reference %s", after.v[4], ref.v[4]);
    cr_assert_eq(kb_search_stats_refreshes() - r0, 2);
    terms_free(&after);
    terms_free(&before);
    terms_free(&ref);

    /* TTL 0: every search reads them. */
    kb_search_set_stats_ttl(0);
    for (int i = 0; i < 3; i++) {
        struct search s;
        search_one(pool, QUESTIONS[i], &s);
        cr_assert(!s.err, "%s", s.err);
        free(s.err);
    }
    cr_assert_eq(kb_search_stats_refreshes() - r0, 5);

    /* Another pool has a cache of its own. */
    kb_search_set_stats_ttl(60000);
    struct pg_pool *other = pool_open(1, 0);
    struct search s;
    search_one(other, QUESTIONS[0], &s);
    cr_assert(!s.err, "%s", s.err);
    free(s.err);
    search_one(pool, QUESTIONS[0], &s);
    free(s.err);
    search_one(other, QUESTIONS[1], &s);
    free(s.err);
    cr_assert_eq(kb_search_stats_refreshes() - r0, 6, "%llu",
                 (unsigned long long)(kb_search_stats_refreshes() - r0));
    pool_close(other);
}

/* ---- (c) concurrent searches during the first read ---------------------------------- */

#define NCONC 8

static int all_done(void *arg)
{
    struct search *s = arg;
    for (int i = 0; i < NCONC; i++)
        if (!s[i].done)
            return 0;
    return 1;
}

Test(kb_stats, concurrent_searches_wait_for_one_read)
{
    corpus_init();
    corpus_add(0, 3000);
    /* One connection: the queries run in order, so every question statement completes
     * before the statistics statement the first one issued. */
    struct pg_pool *one = pool_open(1, 0);
    uint64_t r0 = kb_search_stats_refreshes();
    struct search s[NCONC];
    for (int i = 0; i < NCONC; i++)
        search_start(one, QUESTIONS[i % 6], &s[i]);
    cr_assert(test_loop_until(&loop, all_done, s, 30000), "searches did not complete");
    cr_assert_eq(kb_search_stats_refreshes() - r0, 1, "%llu reads",
                 (unsigned long long)(kb_search_stats_refreshes() - r0));
    /* The same hits as the same searches on a warm cache. */
    for (int i = 0; i < NCONC; i++) {
        cr_assert(!s[i].err, "%s", s[i].err);
        struct search again;
        search_one(one, QUESTIONS[i % 6], &again);
        cr_assert(!again.err);
        cr_assert_eq(again.n, s[i].n, "%s", QUESTIONS[i % 6]);
        for (size_t j = 0; j < again.n && j < 8; j++)
            cr_assert_eq(again.ids[j], s[i].ids[j]);
        free(s[i].err);
    }
    cr_assert_eq(kb_search_stats_refreshes() - r0, 1);
    pool_close(one);
}

/* ---- (d) a failing read -------------------------------------------------------------- */

static void stats_trap(int on)
{
    if (on)
        test_pg_exec(db, "CREATE VIEW public.pg_stats AS SELECT * FROM public.kb_stats_boom()");
    else
        test_pg_exec(db, "DROP VIEW public.pg_stats");
}

/* New sessions resolve unqualified names in public before pg_catalog; public.pg_stats,
 * while it exists, raises. */
static void stats_trap_init(void)
{
    char sql[256];
    snprintf(sql, sizeof sql, "ALTER DATABASE \"%s\" SET search_path = public, pg_catalog", dbname);
    test_pg_exec(db, sql);
    test_pg_exec(db, "CREATE FUNCTION public.kb_stats_boom() RETURNS TABLE (schemaname name,"
                     " tablename name, attname name, most_common_elems text[],"
                     " most_common_elem_freqs real[]) LANGUAGE plpgsql AS"
                     " $$BEGIN RAISE EXCEPTION 'kb test: statistics unavailable'; END$$");
}

/* Let ms pass on the clock the TTL is measured with (there is no event to wait for). */
static void wait_ms(uint64_t ms)
{
    uint64_t until = clock_mono_ms() + ms + 1;
    while (clock_mono_ms() < until)
        uv_run(&loop, UV_RUN_NOWAIT);
}

Test(kb_stats, failing_read_fails_its_waiters_and_the_next_search_retries)
{
    corpus_init();
    corpus_add(0, 3000);
    stats_trap_init();
    stats_trap(1);
    struct pg_pool *one = pool_open(1, 1);
    uint64_t r0 = kb_search_stats_refreshes();
    struct search s[NCONC];
    for (int i = 0; i < NCONC; i++)
        search_start(one, QUESTIONS[i % 6], &s[i]);
    cr_assert(test_loop_until(&loop, all_done, s, 30000), "searches did not complete");
    cr_assert_eq(kb_search_stats_refreshes() - r0, 1);
    for (int i = 0; i < NCONC; i++) {
        cr_assert(s[i].err && strstr(s[i].err, "kb search: ") == s[i].err &&
                      strstr(s[i].err, "statistics unavailable"),
                  "search %d: %s", i, s[i].err ? s[i].err : "no error");
        free(s[i].err);
    }
    /* Still failing: the next search reads again (and fails again). */
    struct search one_more;
    search_one(one, QUESTIONS[0], &one_more);
    cr_assert(one_more.err && strstr(one_more.err, "statistics unavailable"));
    free(one_more.err);
    cr_assert_eq(kb_search_stats_refreshes() - r0, 2);
    /* Fixed: the next search reads them and succeeds. */
    stats_trap(0);
    search_one(one, QUESTIONS[0], &one_more);
    cr_assert(!one_more.err, "%s", one_more.err);
    cr_assert_gt(one_more.n, 0);
    cr_assert_eq(kb_search_stats_refreshes() - r0, 3);

    /* A read for age that fails: searches go on with the statistics they have, and each
     * search after the failure tries again. */
    stats_trap(1);
    kb_search_set_stats_ttl(1);
    wait_ms(2);
    struct search b;
    search_one(one, QUESTIONS[0], &b); /* issues the read, runs on the cached statistics */
    cr_assert(!b.err, "%s", b.err);
    cr_assert_eq(b.n, one_more.n);
    cr_assert_eq(kb_search_stats_refreshes() - r0, 4);
    wait_ms(2);
    search_one(one, QUESTIONS[0], &b); /* queued behind the failing read, then reads again */
    cr_assert(!b.err, "%s", b.err);
    cr_assert_eq(kb_search_stats_refreshes() - r0, 5);
    stats_trap(0);
    kb_search_set_stats_ttl(60000);
    pool_close(one);
}
