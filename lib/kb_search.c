/* kb_search: full-text (and optionally vector) search over knowledge-base chunks. See
 * kb_search.h for the ranking and the score. */
#include "kb_search.h"

#include "buf.h"
#include "clock.h"
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
 * $4, $7 and $8 are only ever written $N::tsquery, so PostgreSQL types the parameters
 * themselves tsquery: their text is parsed once, at bind, not once a row (a cast of a text
 * parameter is evaluated per row in the generic plan a prepared statement ends up with).
 * The negated words' query is made once too (qnot), not per row in the filters.
 * hits_and is skipped when the question has no positive word (a pure negation would need a
 * full scan). q: the any-word query, its lexemes one tsquery each (parts) and the same
 * restricted to weight A (parts_a), taken from the tsquery's text form in which every
 * lexeme is a quoted token ('it''s'). Passes: hits_and (every word), then only when it
 * came back short hits_pair (two telling words), then only when both came back short
 * hits_or (a rare word). hits_pair and hits_or rank by r = ts_rank_cd(any-word query) and
 * pass r on: a chunk's density r / (r + 1) is computed from it rather than ranked again
 * (ts_rank_cd zeroes a 32 KB block per query item on every call); only hits_and's chunks,
 * ranked by the websearch query, are ranked by the any-word query in the final select. */
static const char FULLTEXT_SQL[] =
    "WITH q AS MATERIALIZED ("
    " SELECT coalesce(array_agg(t.m[1]::tsquery), '{}') AS parts,"
    "  coalesce(array_agg((t.m[1] || ':A')::tsquery), '{}') AS parts_a,"
    "  $4::tsquery AS qor"
    " FROM regexp_matches($4::tsquery::text, '''(?:[^'']|'''')*''', 'g') AS t(m)),"
    " qnot AS MATERIALIZED (SELECT websearch_to_tsquery($2::regconfig, $5::text) AS qn),"
    " hits_and AS ("
    " SELECT c.id, NULL::real AS r FROM kb_chunks c"
    " WHERE c.kb_id = $1::bigint AND $4::tsquery IS NOT NULL"
    "  AND c.tsv @@ websearch_to_tsquery($2::regconfig, $3::text)"
    " ORDER BY ts_rank_cd(c.tsv, websearch_to_tsquery($2::regconfig, $3::text)) DESC, c.id"
    " LIMIT 50),"
    " hits_pair AS ("
    " SELECT c.id, ts_rank_cd(c.tsv, $4::tsquery) AS r FROM kb_chunks c"
    " WHERE c.kb_id = $1::bigint AND (SELECT count(*) FROM hits_and) < $6::int"
    "  AND c.tsv @@ $8::tsquery"
    "  AND NOT coalesce(c.tsv @@ (SELECT qn FROM qnot), false)"
    " ORDER BY 2 DESC, c.id"
    " LIMIT 50),"
    " hits_or AS ("
    " SELECT c.id, ts_rank_cd(c.tsv, $4::tsquery) AS r FROM kb_chunks c"
    " WHERE c.kb_id = $1::bigint"
    "  AND (SELECT count(*) FROM (SELECT id FROM hits_and UNION SELECT id FROM hits_pair) u)"
    "   < $6::int"
    "  AND c.tsv @@ $7::tsquery"
    "  AND NOT coalesce(c.tsv @@ (SELECT qn FROM qnot), false)"
    " ORDER BY 2 DESC, c.id"
    " LIMIT 50)"
    " SELECT c.id, d.source, d.title, c.heading_path, c.content,"
    "  0.6 * s.cov + 0.2 * s.head + 0.2 * s.dens AS score"
    " FROM (SELECT id, max(r) AS r FROM (SELECT id, r FROM hits_and UNION ALL"
    "  SELECT id, r FROM hits_pair UNION ALL SELECT id, r FROM hits_or) a GROUP BY id) h"
    " JOIN kb_chunks c ON c.id = h.id"
    " JOIN kb_documents d ON d.id = c.document_id"
    " CROSS JOIN q"
    " CROSS JOIN LATERAL (SELECT"
    "  (SELECT count(*) FROM unnest(q.parts) p WHERE c.tsv @@ p)::float8"
    "   / greatest(cardinality(q.parts), 1) AS cov,"
    "  (SELECT count(*) FROM unnest(q.parts_a) p WHERE c.tsv @@ p)::float8"
    "   / greatest(cardinality(q.parts), 1) AS head,"
    "  CASE WHEN h.r IS NOT NULL THEN h.r::float8 / (h.r::float8 + 1)"
    "  ELSE coalesce(ts_rank_cd(c.tsv, q.qor, 32), 0)::float8 END AS dens) s"
    " ORDER BY score DESC, c.id LIMIT $6::int";

/* The statement kb_search ran for every question until the lexeme statistics were cached
 * (see "question terms" below). kb_search no longer sends it: it computes the same three
 * texts in C from QUESTION_SQL and the cached STATS_SQL; kept for kb_search_lookup_sql.
 * $1 knowledge base name, $2 the question's any-word text ("a or b or c"). Returns the
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

/* Per question: $1 knowledge base name, $2 the question's any-word text. The knowledge
 * base (looked up every time, so a dropped or recreated one is never stale), the
 * question's lexemes as a tsquery text (NULL when $2 is NULL), and the oid of kb_chunks:
 * the cached statistics are of one table, and another oid (another database behind a
 * pool at a reused address, a recreated table) makes them unusable. */
static const char QUESTION_SQL[] =
    "SELECT id, ts_config::text, websearch_to_tsquery(ts_config, $2)::text,"
    " 'kb_chunks'::regclass::oid::text"
    " FROM knowledge_bases WHERE name = $1";

/* The lexeme statistics (cached per pool): one row per element of
 * pg_stats.most_common_elems of kb_chunks.tsv (lexeme, frequency), each with the table's
 * oid and rows (pg_class.reltuples: -1 before the first ANALYZE, clamped to 0); a single
 * row with NULL lexeme and frequency when there are no statistics. most_common_elem_freqs
 * has three more entries than most_common_elems (min, max, null frequency): unnest pads
 * their lexemes with NULL, and they are left out. */
static const char STATS_SQL[] =
    "SELECT c.oid::text, greatest(c.reltuples, 0), e.l, e.f FROM pg_class c"
    " LEFT JOIN LATERAL (SELECT u.l, u.f FROM pg_stats s,"
    "  unnest(s.most_common_elems::text::text[], s.most_common_elem_freqs) AS u(l, f)"
    "  WHERE s.schemaname = current_schema() AND s.tablename = 'kb_chunks'"
    "   AND s.attname = 'tsv' AND u.l IS NOT NULL) e ON true"
    " WHERE c.oid = 'kb_chunks'::regclass";

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

const char *kb_search_question_sql(void)
{
    return QUESTION_SQL;
}

const char *kb_search_stats_sql(void)
{
    return STATS_SQL;
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

/* ---- the question's words ----------------------------------------------------------- */

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

/* ---- question terms: the lexeme statistics cache ------------------------------------- */

/* One lexeme of the statistics. key is the lexeme as quote_literal writes it, the form the
 * old statement compared the question's tokens against: 'it''s' (a lexeme with a
 * backslash becomes E'...' and so, as before, never matches a token). */
struct kb_lexeme {
    char *key;
    float freq;
};

/* The statistics of one read, immutable once built; shared by the cache entry and a
 * refresh completing its waiters (refs). v sorted by key (strcmp). */
struct kb_lexstats {
    unsigned refs;
    float rows; /* pg_class.reltuples, >= 0: a float4, like the old statement's arithmetic */
    size_t n;
    struct kb_lexeme *v;
};

/* A kb_search_terms call. */
struct kb_terms_req {
    struct pg_pool *pool;
    kb_terms_cb cb;
    void *arg;
    char *kb_id, *ts_config, *tsquery; /* from QUESTION_SQL; tsquery may be NULL */
    char *neg;                         /* the negated words (kb_search_any_words), or NULL */
    struct kb_terms_req *next;         /* in the waiters of a refresh */
};

/* The cache of one pool. The state is process-wide and unlocked: tierone runs every pool on
 * one thread's loop. */
struct kb_stats_entry {
    struct pg_pool *pool;
    struct kb_lexstats *stats; /* NULL until a refresh succeeds */
    char *oid;                 /* of the kb_chunks stats was read from */
    uint64_t loaded_ms;        /* when the refresh that read stats was issued */
    uint64_t refresh_ms;       /* when the refresh in flight was issued */
    uint64_t used;             /* tick of the last use, for eviction */
    int refreshing;            /* a STATS_SQL in flight (its callback owns a reference) */
    int forgotten;             /* unlinked while refreshing: the callback frees it */
    struct kb_terms_req *waiters, **waiters_tail;
    struct kb_stats_entry *next;
};

static struct kb_stats_entry *kb_stats_entries;
static uint64_t kb_stats_ttl_ms = 60000;
static uint64_t kb_stats_refreshes_total;
static uint64_t kb_stats_tick;

void kb_search_set_stats_ttl(uint64_t ms)
{
    kb_stats_ttl_ms = ms;
}

uint64_t kb_search_stats_refreshes(void)
{
    return kb_stats_refreshes_total;
}

static void kb_lexstats_unref(struct kb_lexstats *st)
{
    if (!st || --st->refs > 0)
        return;
    for (size_t i = 0; i < st->n; i++)
        free(st->v[i].key);
    free(st->v);
    free(st);
}

static void kb_terms_req_free(struct kb_terms_req *t)
{
    free(t->kb_id);
    free(t->ts_config);
    free(t->tsquery);
    free(t->neg);
    free(t);
}

static void kb_stats_entry_free(struct kb_stats_entry *e)
{
    kb_lexstats_unref(e->stats);
    free(e->oid);
    free(e);
}

/* Unlink e; free it now, or when its refresh completes. */
static void kb_stats_entry_drop(struct kb_stats_entry *e)
{
    for (struct kb_stats_entry **pp = &kb_stats_entries; *pp; pp = &(*pp)->next) {
        if (*pp == e) {
            *pp = e->next;
            break;
        }
    }
    e->next = NULL;
    if (e->refreshing)
        e->forgotten = 1;
    else
        kb_stats_entry_free(e);
}

void kb_search_forget_stats(struct pg_pool *pool)
{
    struct kb_stats_entry *e = kb_stats_entries;
    while (e) {
        struct kb_stats_entry *next = e->next;
        if (!pool || e->pool == pool)
            kb_stats_entry_drop(e);
        e = next;
    }
}

static struct kb_stats_entry *kb_stats_entry_for(struct pg_pool *pool)
{
    size_t n = 0;
    struct kb_stats_entry *lru = NULL;
    for (struct kb_stats_entry *e = kb_stats_entries; e; e = e->next) {
        if (e->pool == pool) {
            e->used = ++kb_stats_tick;
            return e;
        }
        n++;
        if (!e->refreshing && (!lru || e->used < lru->used))
            lru = e;
    }
    if (n >= KB_SEARCH_STATS_POOLS && lru)
        kb_stats_entry_drop(lru);
    struct kb_stats_entry *e = xcalloc(1, sizeof(*e));
    e->pool = pool;
    e->used = ++kb_stats_tick;
    e->waiters_tail = &e->waiters;
    e->next = kb_stats_entries;
    kb_stats_entries = e;
    return e;
}

/* quote_literal(s) of PostgreSQL: quotes doubled; with a backslash, backslashes doubled
 * too and an E prefix. New string. */
static char *kb_quote_literal(const char *s)
{
    struct buf b = BUF_INIT;
    if (strchr(s, '\\'))
        buf_puts(&b, "E");
    buf_puts(&b, "'");
    for (const char *p = s; *p; p++) {
        if (*p == '\'' || *p == '\\')
            buf_append(&b, p, 1);
        buf_append(&b, p, 1);
    }
    buf_puts(&b, "'");
    char *out = buf_steal(&b);
    buf_free(&b);
    return out;
}

static int kb_lexeme_cmp(const void *pa, const void *pb)
{
    const struct kb_lexeme *a = pa, *b = pb;
    return strcmp(a->key, b->key);
}

static struct kb_lexstats *kb_lexstats_from(const struct pg_result *r)
{
    struct kb_lexstats *st = xcalloc(1, sizeof(*st));
    st->refs = 1;
    int nrows = pg_result_nrows(r);
    st->v = xcalloc(nrows > 0 ? (size_t)nrows : 1, sizeof(*st->v));
    const char *rows = pg_result_value(r, 0, 1);
    st->rows = rows ? strtof(rows, NULL) : 0;
    for (int i = 0; i < nrows; i++) {
        const char *l = pg_result_value(r, i, 2), *f = pg_result_value(r, i, 3);
        if (!l || !f)
            continue;
        st->v[st->n].key = kb_quote_literal(l);
        st->v[st->n].freq = strtof(f, NULL);
        st->n++;
    }
    qsort(st->v, st->n, sizeof(*st->v), kb_lexeme_cmp);
    return st;
}

static float kb_lexstats_freq(const struct kb_lexstats *st, const char *tok)
{
    struct kb_lexeme key = {.key = (char *)tok};
    const struct kb_lexeme *hit = bsearch(&key, st->v, st->n, sizeof(*st->v), kb_lexeme_cmp);
    return hit ? hit->freq : 0;
}

struct kb_tok {
    char *tok; /* quoted, as in the tsquery text: 'it''s' */
    float freq;
};

static int kb_tok_cmp_text(const void *pa, const void *pb)
{
    return strcmp(((const struct kb_tok *)pa)->tok, ((const struct kb_tok *)pb)->tok);
}

static int kb_tok_cmp_freq(const void *pa, const void *pb)
{
    const struct kb_tok *a = pa, *b = pb;
    if (a->freq != b->freq)
        return a->freq < b->freq ? -1 : 1;
    return strcmp(a->tok, b->tok);
}

/* The quoted tokens of a tsquery text, as the old statement's regexp_matches(tsquery,
 * '(?:[^']|'')*', 'g') found them: every lexeme is written '...' with quotes doubled. */
static struct kb_tok *kb_tokens(const char *q, size_t *n)
{
    size_t cap = 8;
    struct kb_tok *v = xcalloc(cap, sizeof(*v));
    *n = 0;
    const char *p = q ? strchr(q, '\'') : NULL;
    while (p) {
        const char *e = p + 1;
        for (;;) {
            if (*e == '\0' || (*e == '\'' && e[1] != '\''))
                break;
            e += *e == '\'' ? 2 : 1;
        }
        if (*e != '\'') /* unterminated: not a token (never in a tsquery's text) */
            break;
        if (*n == cap) {
            cap *= 2;
            v = xrealloc(v, cap * sizeof(*v));
        }
        v[(*n)++].tok = xstrndup(p, (size_t)(e - p + 1));
        p = strchr(e + 1, '\'');
    }
    return v;
}

/* The three texts of KB_LOOKUP_SQL from the question's tsquery text and the statistics
 * (see there). Each new string, or NULL where the statement gives NULL. The arithmetic is
 * the statement's: frequencies, their running sum and its product with the rows are
 * float4 (real); the comparisons are in float8. Ties of equal frequency are ordered by
 * strcmp where the statement used the database's collation on text (they differ only in
 * which of several equally frequent lexemes falls on the rare-word cutoff, and the order
 * of the lexemes written in a pair: the same under the C collation). */
static void kb_terms_compute(const char *tsquery, const struct kb_lexstats *st, char **any,
                             char **rare, char **two)
{
    size_t n = 0;
    struct kb_tok *v = kb_tokens(tsquery, &n);
    /* DISTINCT, in strcmp order. */
    qsort(v, n, sizeof(*v), kb_tok_cmp_text);
    size_t u = 0;
    for (size_t i = 0; i < n; i++) {
        if (u && strcmp(v[u - 1].tok, v[i].tok) == 0) {
            free(v[i].tok);
            continue;
        }
        v[u] = v[i];
        v[u].freq = kb_lexstats_freq(st, v[u].tok);
        u++;
    }
    n = u;
    struct buf a = BUF_INIT, r = BUF_INIT, t = BUF_INIT;
    /* two-word: a pair qualifies when the more frequent of the two does, and a float4
     * product is monotonic in the frequency. */
    double limit = 0.1 * (double)st->rows > 2000 ? 0.1 * (double)st->rows : 2000;
    for (size_t i = 0; i < n; i++) {
        if (a.len)
            buf_puts(&a, " | ");
        buf_puts(&a, v[i].tok);
        float pi = v[i].freq * st->rows;
        if ((double)pi > limit)
            continue;
        for (size_t j = i + 1; j < n; j++) {
            float pj = v[j].freq * st->rows;
            if ((double)pj > limit)
                continue;
            buf_printf(&t, "%s(%s & %s)", t.len ? " | " : "", v[i].tok, v[j].tok);
        }
    }
    /* rare-word: by (frequency, token), while the running sum of estimates is <= 2000, at
     * least the first. */
    qsort(v, n, sizeof(*v), kb_tok_cmp_freq);
    float cum = 0;
    for (size_t i = 0; i < n; i++) {
        cum += v[i].freq;
        float est = cum * st->rows;
        if ((double)est <= 2000 || i == 0)
            buf_printf(&r, "%s%s", r.len ? " | " : "", v[i].tok);
    }
    *any = a.len ? buf_steal(&a) : NULL;
    *rare = r.len ? buf_steal(&r) : NULL;
    *two = t.len ? buf_steal(&t) : NULL;
    buf_free(&a);
    buf_free(&r);
    buf_free(&t);
    for (size_t i = 0; i < n; i++)
        free(v[i].tok);
    free(v);
}

/* Complete t with the terms computed from st (NULL: with the error err), and free it. */
static void kb_terms_deliver(struct kb_terms_req *t, const struct kb_lexstats *st, const char *err)
{
    if (err) {
        t->cb(err, NULL, t->arg);
    } else {
        struct kb_terms out = {.kb_id = t->kb_id, .ts_config = t->ts_config, .neg = t->neg};
        char *any, *rare, *two;
        kb_terms_compute(t->tsquery, st, &any, &rare, &two);
        out.any = any;
        out.rare = rare;
        out.two = two;
        t->cb(NULL, &out, t->arg);
        free(any);
        free(rare);
        free(two);
    }
    kb_terms_req_free(t);
}

static void kb_stats_on_result(const struct pg_result *r, void *arg)
{
    struct kb_stats_entry *e = arg;
    struct kb_terms_req *w = e->waiters;
    e->waiters = NULL;
    e->waiters_tail = &e->waiters;
    e->refreshing = 0;
    struct kb_lexstats *st = NULL;
    char *err = NULL;
    if (!pg_result_ok(r)) {
        err = xasprintf("kb search: %s", pg_result_message(r));
        if (!w) /* a refresh for age: the old statistics stay, the next search retries */
            log_warn("kb search: refreshing the lexeme statistics: %s", pg_result_message(r));
    } else if (pg_result_nrows(r) == 0) { /* cannot happen: the oid was just resolved */
        err = xstrdup("kb search: no statistics row for kb_chunks");
    } else {
        st = kb_lexstats_from(r);
        kb_lexstats_unref(e->stats);
        e->stats = st;
        st->refs++; /* ours, for the waiters below */
        free(e->oid);
        e->oid = xstrdup(pg_result_value(r, 0, 0));
        e->loaded_ms = e->refresh_ms;
    }
    if (e->forgotten)
        kb_stats_entry_free(e);
    /* e may be gone from here on (forgotten above, or by a callback). */
    while (w) {
        struct kb_terms_req *next = w->next;
        kb_terms_deliver(w, st, err);
        w = next;
    }
    kb_lexstats_unref(st);
    free(err);
}

/* Issue the statistics statement for e. Returns 0 or -1 (pool closing). */
static int kb_stats_refresh(struct kb_stats_entry *e)
{
    if (pg_query(e->pool, STATS_SQL, 0, NULL, kb_stats_on_result, e) != 0)
        return -1;
    e->refreshing = 1;
    e->refresh_ms = clock_mono_ms();
    kb_stats_refreshes_total++;
    return 0;
}

static void kb_terms_on_question(const struct pg_result *r, void *arg)
{
    struct kb_terms_req *t = arg;
    if (!pg_result_ok(r)) {
        char *why = xasprintf("kb search: %s", pg_result_message(r));
        kb_terms_deliver(t, NULL, why);
        free(why);
        return;
    }
    if (pg_result_nrows(r) == 0) { /* no such knowledge base */
        t->cb(NULL, NULL, t->arg);
        kb_terms_req_free(t);
        return;
    }
    t->kb_id = xstrdup(pg_result_value(r, 0, 0));
    t->ts_config = xstrdup(pg_result_value(r, 0, 1));
    const char *q = pg_result_value(r, 0, 2);
    t->tsquery = q ? xstrdup(q) : NULL;
    const char *oid = pg_result_value(r, 0, 3);
    struct kb_stats_entry *e = kb_stats_entry_for(t->pool);
    if (e->stats && oid && strcmp(e->oid, oid) == 0 && kb_stats_ttl_ms > 0) {
        /* Present and of this table: used as they are, also while a refresh for age is in
         * flight (or starts here), so no search waits once the cache is warm. */
        if (!e->refreshing && clock_mono_ms() - e->loaded_ms >= kb_stats_ttl_ms &&
            kb_stats_refresh(e) != 0)
            log_warn("kb search: cannot refresh the lexeme statistics: the pool is closing");
        kb_terms_deliver(t, e->stats, NULL);
        return;
    }
    /* Missing, of another table, or a TTL of 0: wait for a refresh (one at a time). */
    if (!e->refreshing && kb_stats_refresh(e) != 0) {
        kb_terms_deliver(t, NULL, "kb search: the pool is closing");
        return;
    }
    t->next = NULL;
    *e->waiters_tail = t;
    e->waiters_tail = &t->next;
}

int kb_search_terms(struct pg_pool *pool, const char *kb, const char *question, kb_terms_cb cb,
                    void *arg)
{
    if (!pool || !kb || !question || !cb)
        return -1;
    struct kb_terms_req *t = xcalloc(1, sizeof(*t));
    t->pool = pool;
    t->cb = cb;
    t->arg = arg;
    char *any = NULL;
    kb_search_any_words(question, &any, &t->neg);
    const char *params[] = {kb, any};
    int rc = pg_query(pool, QUESTION_SQL, 2, params, kb_terms_on_question, t);
    free(any);
    if (rc != 0) {
        kb_terms_req_free(t);
        return -1;
    }
    return 0;
}

/* ---- search -------------------------------------------------------------------------- */

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

static void kb_search_on_terms(const char *err, const struct kb_terms *t, void *arg)
{
    struct kb_search *s = arg;
    if (err) {
        s->cb(err, NULL, 0, s->arg);
        kb_search_free(s);
        return;
    }
    if (!t) { /* no such knowledge base: nothing found */
        s->cb(NULL, NULL, 0, s->arg);
        kb_search_free(s);
        return;
    }
    s->kb_id = xstrdup(t->kb_id);
    char *and_text = kb_search_and_text(s->question);
    const char *params[] = {s->kb_id, t->ts_config, and_text, t->any,
                            t->neg,   s->limit,     t->rare,  t->two};
    int rc = pg_query(s->pool, FULLTEXT_SQL, 8, params, kb_search_on_fts, s);
    free(and_text);
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
    if (kb_search_terms(pool, req->kb, s->question, kb_search_on_terms, s) != 0) {
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
