/* kb_search: full-text (and optionally vector) search over knowledge-base chunks. See
 * kb_search.h for the ranking and the score. */
#include "kb_search.h"

#include "buf.h"
#include "log.h"
#include "xalloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* $1 knowledge base id, $2 its text search configuration, $3 the question, $4 the
 * any-word query (a tsquery's text: every lexeme of the question OR-ed; NULL when it has
 * none), $5 the negated words ("a or b"; NULL when none), $6 k, $7 and $8 the rare-word
 * and two-word queries (see KB_LOOKUP_SQL).
 * Every tsquery an index scan compares against is an expression of parameters only, so
 * with the values bound (libpq's unnamed statements are planned with them) the planner
 * folds it to a constant and estimates it from the column's statistics: bitmap scans of
 * kb_chunks_tsv. hits_and is skipped when the question has no positive word (a pure
 * negation would need a full scan). q: the any-word query, its lexemes one tsquery each (parts) and
 * the same restricted to weight A (parts_a), taken from the tsquery's text form in which every
 * lexeme is a quoted token ('it''s'). Passes: hits_and (every word), then only when it
 * came back short hits_pair (two telling words), then only when both came back short
 * hits_or (a rare word). */
static const char FULLTEXT_SQL[] =
    "WITH q AS MATERIALIZED ("
    " SELECT coalesce(array_agg(t.m[1]::tsquery), '{}') AS parts,"
    "  coalesce(array_agg((t.m[1] || ':A')::tsquery), '{}') AS parts_a,"
    "  $4::tsquery AS qor"
    " FROM regexp_matches($4, '''(?:[^'']|'''')*''', 'g') AS t(m)),"
    " hits_and AS ("
    " SELECT c.id FROM kb_chunks c"
    " WHERE c.kb_id = $1::bigint AND $4::text IS NOT NULL"
    "  AND c.tsv @@ websearch_to_tsquery($2::regconfig, $3)"
    " ORDER BY ts_rank_cd(c.tsv, websearch_to_tsquery($2::regconfig, $3)) DESC, c.id"
    " LIMIT 50),"
    " hits_pair AS ("
    " SELECT c.id FROM kb_chunks c"
    " WHERE c.kb_id = $1::bigint AND (SELECT count(*) FROM hits_and) < $6::int"
    "  AND c.tsv @@ $8::tsquery"
    "  AND NOT coalesce(c.tsv @@ websearch_to_tsquery($2::regconfig, $5), false)"
    " ORDER BY ts_rank_cd(c.tsv, $4::tsquery) DESC, c.id"
    " LIMIT 50),"
    " hits_or AS ("
    " SELECT c.id FROM kb_chunks c"
    " WHERE c.kb_id = $1::bigint"
    "  AND (SELECT count(*) FROM (SELECT id FROM hits_and UNION SELECT id FROM hits_pair) u)"
    "   < $6::int"
    "  AND c.tsv @@ $7::tsquery"
    "  AND NOT coalesce(c.tsv @@ websearch_to_tsquery($2::regconfig, $5), false)"
    " ORDER BY ts_rank_cd(c.tsv, $4::tsquery) DESC, c.id"
    " LIMIT 50)"
    " SELECT c.id, d.source, d.title, c.heading_path, c.content,"
    "  0.6 * s.cov + 0.2 * s.head + 0.2 * s.dens AS score"
    " FROM (SELECT id FROM hits_and UNION SELECT id FROM hits_pair"
    "  UNION SELECT id FROM hits_or) h"
    " JOIN kb_chunks c ON c.id = h.id"
    " JOIN kb_documents d ON d.id = c.document_id"
    " CROSS JOIN q"
    " CROSS JOIN LATERAL (SELECT"
    "  (SELECT count(*) FROM unnest(q.parts) p WHERE c.tsv @@ p)::float8"
    "   / greatest(cardinality(q.parts), 1) AS cov,"
    "  (SELECT count(*) FROM unnest(q.parts_a) p WHERE c.tsv @@ p)::float8"
    "   / greatest(cardinality(q.parts), 1) AS head,"
    "  coalesce(ts_rank_cd(c.tsv, q.qor, 32), 0)::float8 AS dens) s"
    " ORDER BY score DESC, c.id LIMIT $6::int";

/* $1 knowledge base name, $2 the question's any-word text ("a or b or c"). Returns the
 * knowledge base's id and text search configuration, then three tsquery texts made of the
 * question's lexemes. Each lexeme's row estimate is its frequency (the share of all
 * chunks that contain it, from ANALYZE's pg_stats.most_common_elems of kb_chunks.tsv; 0
 * when it is not among them) times the table's rows (pg_class.reltuples):
 *   any-word   every lexeme OR-ed (for coverage and density: every word counts);
 *   rare-word  the rarest lexemes OR-ed while their estimates add up to at most 2,000
 *              rows (at least the rarest one): the last resort, cheap because rare;
 *   two-word   every pair of lexemes each estimated at most max(2,000, 10 % of the
 *              table) rows, each pair AND-ed, the pairs OR-ed: passages with two of the
 *              question's telling words.
 * Ranking costs about 10-25 us a candidate row, so on a big table a common word ("use",
 * "file") never selects candidates on its own; on a small one (a few thousand chunks)
 * every word does, exactly as a plain any-word search. */
static const char KB_LOOKUP_SQL[] =
    "WITH kb AS MATERIALIZED ("
    " SELECT id, ts_config FROM knowledge_bases WHERE name = $1),"
    " mce AS MATERIALIZED ("
    " SELECT e.l, e.f FROM pg_stats s,"
    "  unnest(s.most_common_elems::text::text[], s.most_common_elem_freqs) AS e(l, f)"
    " WHERE s.schemaname = current_schema() AND s.tablename = 'kb_chunks'"
    "  AND s.attname = 'tsv'),"
    " w AS MATERIALIZED ("
    " SELECT DISTINCT t.m[1] AS tok, coalesce(mce.f, 0) AS freq"
    " FROM kb, regexp_matches(websearch_to_tsquery(kb.ts_config, $2)::text,"
    "  '''(?:[^'']|'''')*''', 'g') AS t(m)"
    " LEFT JOIN mce ON quote_literal(mce.l) = t.m[1]),"
    " n AS (SELECT greatest(reltuples, 0) AS n FROM pg_class"
    "  WHERE oid = 'kb_chunks'::regclass),"
    " r AS (SELECT tok, freq, sum(freq) OVER (ORDER BY freq, tok) AS cum,"
    "  row_number() OVER (ORDER BY freq, tok) AS rn FROM w)"
    " SELECT kb.id, kb.ts_config::text,"
    "  (SELECT string_agg(tok, ' | ') FROM w),"
    "  (SELECT string_agg(tok, ' | ') FROM r, n WHERE cum * n.n <= 2000 OR rn = 1),"
    "  (SELECT string_agg('(' || a.tok || ' & ' || b.tok || ')', ' | ')"
    "   FROM w a JOIN w b ON a.tok < b.tok, n"
    "   WHERE greatest(a.freq, b.freq) * n.n <= greatest(2000, 0.1 * n.n))"
    " FROM kb";

/* The vector ranking: only issued when the embedding_vec column exists. Chunks embedded
 * with another dimension (a model change) are skipped rather than failing the query.
 * $1 knowledge base id, $2 limit, $3 the question's vector, $4 its dimension. */
static const char VECTOR_SQL[] =
    "SELECT c.id, d.source, d.title, c.heading_path, c.content,"
    " 1 - (c.embedding_vec <=> $3::vector) AS sim"
    " FROM kb_chunks c JOIN kb_documents d ON d.id = c.document_id"
    " WHERE c.kb_id = $1::bigint"
    "  AND c.embedding_vec IS NOT NULL AND vector_dims(c.embedding_vec) = $4::int"
    " ORDER BY c.embedding_vec <=> $3::vector LIMIT $2::int";

const char *kb_search_fulltext_sql(void)
{
    return FULLTEXT_SQL;
}

const char *kb_search_lookup_sql(void)
{
    return KB_LOOKUP_SQL;
}

/* ---- reciprocal rank fusion ---------------------------------------------------------- */

static int kb_rrf_best(const struct kb_rrf_item *x)
{
    int a = x->rank_a ? x->rank_a : 1 << 30;
    int b = x->rank_b ? x->rank_b : 1 << 30;
    return a < b ? a : b;
}

static int kb_rrf_cmp(const void *pa, const void *pb)
{
    const struct kb_rrf_item *a = pa, *b = pb;
    if (a->fused != b->fused)
        return a->fused > b->fused ? -1 : 1;
    int ra = kb_rrf_best(a), rb = kb_rrf_best(b);
    if (ra != rb)
        return ra < rb ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id;
}

size_t kb_rrf_fuse(const long long *a, size_t na, const long long *b, size_t nb, unsigned k0,
                   struct kb_rrf_item *out)
{
    size_t n = 0;
    for (size_t i = 0; i < na; i++) {
        out[n] = (struct kb_rrf_item){.id = a[i], .rank_a = (int)i + 1};
        out[n].fused = 1.0 / (double)(k0 + i + 1);
        n++;
    }
    for (size_t j = 0; j < nb; j++) {
        size_t at = n;
        for (size_t i = 0; i < na; i++) {
            if (out[i].id == b[j]) {
                at = i;
                break;
            }
        }
        if (at == n)
            out[n++] = (struct kb_rrf_item){.id = b[j]};
        out[at].rank_b = (int)j + 1;
        out[at].fused += 1.0 / (double)(k0 + j + 1);
    }
    qsort(out, n, sizeof(*out), kb_rrf_cmp);
    return n;
}

/* ---- search -------------------------------------------------------------------------- */

void kb_search_any_words(const char *question, char **any, char **neg)
{
    struct buf a = BUF_INIT, n = BUF_INIT;
    const char *p = question;
    while (*p) {
        p += strspn(p, " \t\r\n\f\v");
        size_t len = strcspn(p, " \t\r\n\f\v");
        if (!len)
            break;
        const char *w = p;
        p += len;
        /* "-word" is a negation; "--word" is an option name (searched for as word). */
        int negated = w[0] == '-' && (len < 2 || w[1] != '-');
        while (len && w[0] == '-') {
            w++;
            len--;
        }
        struct buf *to = negated ? &n : &a;
        size_t start = to->len;
        if (to->len)
            buf_puts(to, " or ");
        size_t word_at = to->len;
        for (size_t i = 0; i < len; i++)
            if (w[i] != '"')
                buf_append(to, &w[i], 1);
        size_t wl = to->len - word_at;
        /* Nothing left, or the word "or" (an operator to websearch_to_tsquery): drop. */
        if (wl == 0 || (wl == 2 && strncasecmp(to->data + word_at, "or", 2) == 0)) {
            to->len = start;
            if (to->data)
                to->data[start] = '\0';
        }
    }
    *any = a.len ? buf_steal(&a) : NULL;
    *neg = n.len ? buf_steal(&n) : NULL;
    buf_free(&a);
    buf_free(&n);
}

char *kb_search_and_text(const char *question)
{
    struct buf b = BUF_INIT;
    const char *p = question;
    while (*p) {
        size_t sp = strspn(p, " \t\r\n\f\v");
        buf_append(&b, p, sp);
        p += sp;
        size_t len = strcspn(p, " \t\r\n\f\v");
        size_t skip = len >= 2 && p[0] == '-' && p[1] == '-' ? strspn(p, "-") : 0;
        if (skip > len)
            skip = len;
        buf_append(&b, p + skip, len - skip);
        p += len;
    }
    char *out = b.data ? buf_steal(&b) : xstrdup("");
    buf_free(&b);
    return out;
}

struct kb_row {
    long long id;
    char *source, *title, *heading_path, *content;
    double score;
};

struct kb_search {
    struct pg_pool *pool;
    kb_search_cb cb;
    void *arg;
    size_t k;
    double min_score;
    char *kb;
    char *question;
    char *limit; /* k, or the candidate count when fusing */
    char *vec_text;
    char *dim_text;
    struct kb_row *fts;
    size_t nfts;
    struct kb_row *vec;
    size_t nvec;
    char *kb_id;
};

static void kb_rows_free(struct kb_row *rows, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(rows[i].source);
        free(rows[i].title);
        free(rows[i].heading_path);
        free(rows[i].content);
    }
    free(rows);
}

static void kb_search_free(struct kb_search *s)
{
    free(s->kb);
    free(s->question);
    free(s->limit);
    free(s->vec_text);
    free(s->dim_text);
    free(s->kb_id);
    kb_rows_free(s->fts, s->nfts);
    kb_rows_free(s->vec, s->nvec);
    free(s);
}

static void kb_search_fail(struct kb_search *s, const struct pg_result *r)
{
    char *why = xasprintf("kb search: %s", r ? pg_result_message(r) : "the pool is closing");
    s->cb(why, NULL, 0, s->arg);
    free(why);
    kb_search_free(s);
}

static struct kb_row *kb_rows_copy(const struct pg_result *r, size_t *n)
{
    *n = (size_t)pg_result_nrows(r);
    struct kb_row *rows = xcalloc(*n ? *n : 1, sizeof(*rows));
    for (size_t i = 0; i < *n; i++) {
        int row = (int)i;
        rows[i].id = strtoll(pg_result_value(r, row, 0), NULL, 10);
        rows[i].source = xstrdup(pg_result_value(r, row, 1));
        rows[i].title = xstrdup(pg_result_value(r, row, 2));
        rows[i].heading_path = xstrdup(pg_result_value(r, row, 3));
        rows[i].content = xstrdup(pg_result_value(r, row, 4));
        rows[i].score = strtod(pg_result_value(r, row, 5), NULL);
    }
    return rows;
}

static void kb_hit_from(struct kb_hit *h, const struct kb_row *row)
{
    h->chunk_id = row->id;
    h->source = row->source;
    h->title = row->title;
    h->heading_path = row->heading_path;
    h->content = row->content;
}

/* Full text only: the statement already ordered and scored. */
static void kb_search_deliver_fts(struct kb_search *s)
{
    struct kb_hit *hits = xcalloc(s->nfts ? s->nfts : 1, sizeof(*hits));
    size_t n = 0;
    for (size_t i = 0; i < s->nfts && n < s->k; i++) {
        if (s->fts[i].score < s->min_score)
            continue;
        kb_hit_from(&hits[n], &s->fts[i]);
        hits[n].score = hits[n].fts_score = s->fts[i].score;
        hits[n].vec_score = -1;
        hits[n].fts_rank = (int)i + 1;
        n++;
    }
    s->cb(NULL, hits, n, s->arg);
    free(hits);
    kb_search_free(s);
}

static double kb_clamp01(double x)
{
    return x < 0 ? 0 : x > 1 ? 1 : x;
}

/* Hybrid: fuse the two rankings. */
static void kb_search_deliver_fused(struct kb_search *s)
{
    long long *a = xcalloc(s->nfts + 1, sizeof(*a));
    long long *b = xcalloc(s->nvec + 1, sizeof(*b));
    for (size_t i = 0; i < s->nfts; i++)
        a[i] = s->fts[i].id;
    for (size_t i = 0; i < s->nvec; i++)
        b[i] = s->vec[i].id;
    struct kb_rrf_item *items = xcalloc(s->nfts + s->nvec + 1, sizeof(*items));
    size_t ni = kb_rrf_fuse(a, s->nfts, b, s->nvec, KB_RRF_K0, items);
    struct kb_hit *hits = xcalloc(ni + 1, sizeof(*hits));
    size_t n = 0;
    for (size_t i = 0; i < ni && n < s->k; i++) {
        struct kb_hit *h = &hits[n];
        h->fts_rank = items[i].rank_a;
        h->vec_rank = items[i].rank_b;
        h->fts_score = h->fts_rank ? s->fts[h->fts_rank - 1].score : -1;
        h->vec_score = h->vec_rank ? s->vec[h->vec_rank - 1].score : -1;
        kb_hit_from(h, h->fts_rank ? &s->fts[h->fts_rank - 1] : &s->vec[h->vec_rank - 1]);
        double fts = h->fts_score < 0 ? 0 : h->fts_score;
        double vec = h->vec_score < 0 ? 0 : kb_clamp01(h->vec_score);
        h->score = fts > vec ? fts : vec;
        if (h->score >= s->min_score)
            n++;
    }
    s->cb(NULL, hits, n, s->arg);
    free(hits);
    free(items);
    free(a);
    free(b);
    kb_search_free(s);
}

static void kb_search_on_vec(const struct pg_result *r, void *arg)
{
    struct kb_search *s = arg;
    if (!pg_result_ok(r)) {
        kb_search_fail(s, r);
        return;
    }
    s->vec = kb_rows_copy(r, &s->nvec);
    kb_search_deliver_fused(s);
}

static void kb_search_on_fts(const struct pg_result *r, void *arg)
{
    struct kb_search *s = arg;
    if (!pg_result_ok(r)) {
        kb_search_fail(s, r);
        return;
    }
    s->fts = kb_rows_copy(r, &s->nfts);
    if (!s->vec_text) {
        kb_search_deliver_fts(s);
        return;
    }
    const char *params[] = {s->kb_id, s->limit, s->vec_text, s->dim_text};
    if (pg_query(s->pool, VECTOR_SQL, 4, params, kb_search_on_vec, s) != 0)
        kb_search_fail(s, NULL);
}

static void kb_search_on_kb(const struct pg_result *r, void *arg)
{
    struct kb_search *s = arg;
    if (!pg_result_ok(r)) {
        kb_search_fail(s, r);
        return;
    }
    if (pg_result_nrows(r) == 0) { /* no such knowledge base: nothing found */
        s->cb(NULL, NULL, 0, s->arg);
        kb_search_free(s);
        return;
    }
    s->kb_id = xstrdup(pg_result_value(r, 0, 0));
    char *any = NULL, *neg = NULL;
    kb_search_any_words(s->question, &any, &neg);
    char *and_text = kb_search_and_text(s->question);
    const char *params[] = {s->kb_id,
                            pg_result_value(r, 0, 1),
                            and_text,
                            pg_result_value(r, 0, 2),
                            neg,
                            s->limit,
                            pg_result_value(r, 0, 3),
                            pg_result_value(r, 0, 4)};
    int rc = pg_query(s->pool, FULLTEXT_SQL, 8, params, kb_search_on_fts, s);
    free(and_text);
    free(any);
    free(neg);
    if (rc != 0)
        kb_search_fail(s, NULL);
}

int kb_search(struct pg_pool *pool, const struct kb_search_request *req, kb_search_cb cb, void *arg)
{
    if (!pool || !req || !req->kb || !req->question || !cb || req->k > KB_SEARCH_MAX_K)
        return -1;
    struct kb_search *s = xcalloc(1, sizeof(*s));
    s->pool = pool;
    s->cb = cb;
    s->arg = arg;
    s->k = req->k ? req->k : 5;
    s->min_score = req->min_score;
    s->kb = xstrdup(req->kb);
    s->question = xstrdup(req->question);
    int hybrid = req->vector_enabled && req->vec && req->dim > 0;
    /* Hybrid: fetch a full candidate list from each side, cut to k after fusing. */
    s->limit = xasprintf("%zu", hybrid ? (size_t)KB_SEARCH_CANDIDATES : s->k);
    if (hybrid) {
        struct buf b = BUF_INIT;
        buf_puts(&b, "[");
        for (size_t i = 0; i < req->dim; i++)
            buf_printf(&b, "%s%.9g", i ? "," : "", (double)req->vec[i]);
        buf_puts(&b, "]");
        s->vec_text = buf_steal(&b);
        buf_free(&b);
        s->dim_text = xasprintf("%zu", req->dim);
    }
    char *any = NULL, *neg = NULL;
    kb_search_any_words(s->question, &any, &neg);
    const char *params[] = {s->kb, any};
    int rc = pg_query(pool, KB_LOOKUP_SQL, 2, params, kb_search_on_kb, s);
    free(any);
    free(neg);
    if (rc != 0) {
        kb_search_free(s);
        return -1;
    }
    return 0;
}

/* ---- mode ---------------------------------------------------------------------------- */

struct kb_mode {
    kb_search_mode_cb cb;
    void *arg;
};

const char *kb_search_mode_text(enum kb_search_mode_kind mode)
{
    switch (mode) {
    case KB_MODE_FULLTEXT_NO_ENDPOINT:
        return "full-text only (no embeddings endpoint configured)";
    case KB_MODE_FULLTEXT_NO_EXTENSION:
        return "full-text only (an embeddings endpoint is configured but the PostgreSQL "
               "`vector` extension is not installed)";
    case KB_MODE_HYBRID:
        return "hybrid: full-text and vector rankings fused (reciprocal rank fusion, k=60)";
    }
    abort();
}

static void kb_mode_on_result(const struct pg_result *r, void *arg)
{
    struct kb_mode *m = arg;
    if (!pg_result_ok(r)) {
        char *why = xasprintf("kb search mode: %s", pg_result_message(r));
        m->cb(why, KB_MODE_FULLTEXT_NO_ENDPOINT, m->arg);
        free(why);
        free(m);
        return;
    }
    const char *v = pg_result_value(r, 0, 0);
    enum kb_search_mode_kind mode =
        v && v[0] == 't' ? KB_MODE_HYBRID : KB_MODE_FULLTEXT_NO_EXTENSION;
    log_info("kb search mode: %s", kb_search_mode_text(mode));
    m->cb(NULL, mode, m->arg);
    free(m);
}

static void kb_mode_on_skip(const struct pg_result *r, void *arg)
{
    struct kb_mode *m = arg;
    log_info("kb search mode: %s", kb_search_mode_text(KB_MODE_FULLTEXT_NO_ENDPOINT));
    if (!pg_result_ok(r)) {
        char *why = xasprintf("kb search mode: %s", pg_result_message(r));
        m->cb(why, KB_MODE_FULLTEXT_NO_ENDPOINT, m->arg);
        free(why);
    } else {
        m->cb(NULL, KB_MODE_FULLTEXT_NO_ENDPOINT, m->arg);
    }
    free(m);
}

int kb_search_mode(struct pg_pool *pool, int have_endpoint, kb_search_mode_cb cb, void *arg)
{
    if (!pool || !cb)
        return -1;
    struct kb_mode *m = xcalloc(1, sizeof(*m));
    m->cb = cb;
    m->arg = arg;
    /* Without an endpoint the answer is known, but the callback must still run later:
     * the query also checks that the schema is there. */
    int rc = have_endpoint
                 ? pg_query(pool,
                            "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid ="
                            " 'kb_chunks'::regclass AND attname = 'embedding_vec'"
                            " AND NOT attisdropped)",
                            0, NULL, kb_mode_on_result, m)
                 : pg_query(pool, "SELECT 'kb_chunks'::regclass", 0, NULL, kb_mode_on_skip, m);
    if (rc != 0) {
        free(m);
        return -1;
    }
    return 0;
}
