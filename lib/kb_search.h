/* kb_search: ranked passages of a knowledge base for a question, through the async pool of
 * pg.h.
 *
 * Full text (always). The question goes through websearch_to_tsquery with the knowledge
 * base's text search configuration (so "quoted phrases", `or` and -negation work for
 * operators), against kb_chunks.tsv (GIN index), in which the heading path has weight A
 * and the body weight B. Two statements per question: a lookup of the knowledge base (its
 * id, its configuration, the question's lexemes as a tsquery), then one statement of up to
 * three passes, each a GIN bitmap scan (below). In between, in C, the lexemes get their
 * frequencies from ANALYZE's statistics of kb_chunks.tsv (pg_stats.most_common_elems, and
 * the table's rows), which the process caches per pool. A third statement reads them: on
 * a pool's first search, after kb_search_forget_stats, when the lookup names another
 * kb_chunks (its oid changed), and when the copy is older than a TTL
 * (kb_search_set_stats_ttl, default 60 s; that read runs in the background, searches go on
 * with the old copy meanwhile). Searches without a usable copy wait for the one read in
 * flight; if it fails they all fail, and the next search reads again. So an ANALYZE (an
 * ingest, autovacuum) reaches searches up to a TTL later. Passes:
 *   1. the websearch query itself (every word must match), ranked by ts_rank_cd;
 *   2. only when pass 1 found fewer than k: passages with two of the question's telling
 *      words (every pair of not-too-common lexemes);
 *   3. only when passes 1 and 2 together found fewer than k: passages with one of its
 *      rarest words.
 * Negated words stay excluded in every pass. Common words never select candidates on a
 * big table (they still count in the score): ranking costs 10-25 us a candidate row, and
 * "use" matches half of a documentation set (see KB_LOOKUP_SQL in kb_search.c for the
 * thresholds). At most 50 candidates of each pass are scored and the best k returned.
 *
 * Score (full text), in [0,1], the same scale for every question:
 *     score    = 0.6 * coverage + 0.2 * heading + 0.2 * density
 *     coverage = (question lexemes found in the chunk, heading path or body) / (question lexemes)
 *     heading  = (question lexemes found in the chunk's heading path) / (question lexemes)
 *     density  = r / (r + 1),  r = ts_rank_cd({0.1, 0.2, 0.4, 1.0}, tsv, any-word query)
 * Lexemes are the question's words after the text search configuration (stemmed, stop
 * words dropped: "How do I reset my password?" has two, reset and password). Since
 * heading <= coverage and density < 1, a score pins the coverage down for any question:
 *     0.6 * coverage <= score < 0.8 * coverage + 0.2
 * e.g. a passage with every word scores at least 0.6; a score of 0.6 or more needs at
 * least half of the words; a score of 0.2 or less means at most a third of them.
 * The heading term is what puts the passage under "Account > Password reset" above one
 * that merely mentions both words, and density (how close together and how heavily
 * weighted the matches are: heading matches count 2.5 times body matches) orders passages
 * of equal coverage. A threshold (e.g. the retrieval-only answer threshold) therefore
 * means "this much of the question is in the passage" for every question.
 *
 * Vector (optional). When the caller passes the question's embedding and the server has
 * the `vector` extension (column kb_chunks.embedding_vec, see the migration), the 50
 * nearest chunks by cosine distance form a second ranking, and both rankings are fused
 * with reciprocal rank fusion (kb_rrf_fuse, k0 = 60). Passages are then ordered by fused
 * rank, and score = max(full-text score, cosine similarity clamped to [0,1]), so a
 * threshold still compares absolute measures. kb_search_mode says which mode applies.
 *
 * Callback contract: pg.h's (0 = cb runs exactly once later; -1 = never). */
#ifndef TIERONE_KB_SEARCH_H
#define TIERONE_KB_SEARCH_H

#include "pg.h"

#include <stddef.h>
#include <stdint.h>

#define KB_SEARCH_MAX_K      50
#define KB_SEARCH_CANDIDATES 50
#define KB_RRF_K0            60

/* One passage. Strings are valid during the callback only. */
struct kb_hit {
    long long chunk_id;
    const char *source;
    const char *title;
    const char *heading_path;
    const char *content;
    double score;     /* [0,1], see above */
    double fts_score; /* full-text score, or -1 when full text did not find it */
    double vec_score; /* cosine similarity, or -1 when the vector ranking did not have it */
    int fts_rank;     /* 1-based rank in each list; 0 when absent */
    int vec_rank;
};

struct kb_search_request {
    const char *kb;       /* knowledge base name */
    const char *question; /* the text to search for */
    size_t k;             /* passages wanted, 1..KB_SEARCH_MAX_K; 0: 5 */
    double min_score;     /* drop passages scoring below this (0: keep all) */
    const float *vec;     /* the question's embedding (NULL: full text only) */
    size_t dim;           /* floats in vec */
    int vector_enabled;   /* 1 when kb_search_mode found the vector column (else vec is ignored) */
};

enum kb_search_mode_kind {
    KB_MODE_FULLTEXT_NO_ENDPOINT = 0, /* no embeddings endpoint configured */
    KB_MODE_FULLTEXT_NO_EXTENSION,    /* an endpoint, but no `vector` extension */
    KB_MODE_HYBRID,                   /* full text + vector, fused */
};

/* err NULL: hits[0..n) best first. err set: n is 0. */
typedef void (*kb_search_cb)(const char *err, const struct kb_hit *hits, size_t n, void *arg);
typedef void (*kb_search_mode_cb)(const char *err, enum kb_search_mode_kind mode, void *arg);

/* Search (see the header comment). Returns 0 (cb runs once) or -1 (no kb or question, k
 * too large, pool closing). An unknown knowledge base gives no hits. */
int kb_search(struct pg_pool *pool, const struct kb_search_request *req, kb_search_cb cb,
              void *arg);

/* Which mode applies given whether an embeddings endpoint is configured; logs one line
 * saying so (info). Returns 0 (cb runs once) or -1. */
int kb_search_mode(struct pg_pool *pool, int have_endpoint, kb_search_mode_cb cb, void *arg);

/* The mode with its reason, as one human-readable phrase (for the log line). */
const char *kb_search_mode_text(enum kb_search_mode_kind mode);

/* ---- the question's terms and the lexeme statistics cache ----------------------------- */

/* What the full-text statement needs of a question besides its text. Strings are valid
 * during the callback only. */
struct kb_terms {
    const char *kb_id;     /* the knowledge base's id */
    const char *ts_config; /* its text search configuration */
    const char *any;       /* any-word tsquery text; NULL when the question has no lexeme */
    const char *rare;      /* rare-word tsquery text; NULL when it has no lexeme */
    const char *two;       /* two-word tsquery text; NULL when no pair qualifies */
    const char *neg;       /* the question's negated words (kb_search_any_words), or NULL */
};

/* err NULL: t is the terms, or NULL when there is no such knowledge base. err set ("kb
 * search: <why>"): t is NULL. */
typedef void (*kb_terms_cb)(const char *err, const struct kb_terms *t, void *arg);

/* The first step of kb_search on its own: one statement (kb_search_question_sql) plus,
 * when the pool's cached statistics are missing or too old, the statistics statement
 * (kb_search_stats_sql), shared with every search waiting for it. The texts are those
 * kb_search_lookup_sql computes in one statement (up to the order of the OR-ed terms and
 * of the two lexemes in a pair). Returns 0 (cb runs once, later) or -1 (an argument NULL,
 * pool closing). */
int kb_search_terms(struct pg_pool *pool, const char *kb, const char *question, kb_terms_cb cb,
                    void *arg);

/* How old the cached statistics of a pool may be before a search refreshes them, in
 * milliseconds; default 60000. 0: every search reads them anew (waiting for it), as before
 * the cache existed (for tests and the benchmark). Process-wide. */
void kb_search_set_stats_ttl(uint64_t ms);

/* Drop the cached statistics of pool (NULL: of every pool); the next search reads them
 * anew. Call it after an ANALYZE in this process that should take effect at once (an
 * ingest), and when closing a pool (before or after pg_pool_close) so its entry is freed
 * rather than kept until it is evicted (at most KB_SEARCH_STATS_POOLS pools are cached,
 * the least recently used idle one goes) or the process exits. A refresh in flight still
 * completes its waiting searches. */
void kb_search_forget_stats(struct pg_pool *pool);

/* Statistics statements issued by this process so far (for tests and metrics). */
uint64_t kb_search_stats_refreshes(void);

#define KB_SEARCH_STATS_POOLS 16

/* The statements, for EXPLAIN and the benchmark.
 * kb_search_question_sql, run for every search: $1 knowledge base name, $2 the question's
 * any-word text (kb_search_any_words); columns: id, ts_config, the question's lexemes as a
 * tsquery text, the oid of kb_chunks. No row: no such knowledge base.
 * kb_search_stats_sql, run when the cache of a pool is refreshed (no parameters): one row
 * per lexeme of kb_chunks.tsv's most common elements; columns: the oid of kb_chunks, its
 * rows (reltuples, >= 0), the lexeme, its frequency (lexeme and frequency NULL in the one
 * row of a table without statistics).
 * kb_search_lookup_sql, no longer run by kb_search: one statement computing what
 * kb_search_terms computes (for blocking callers that want the full-text statement's
 * parameters; it reads the statistics every time): $1 knowledge base name, $2 the
 * question's any-word text; columns: id, ts_config, the any-word, rare-word and two-word
 * tsquery texts.
 * kb_search_fulltext_sql: $1 id, $2 ts_config, $3 kb_search_and_text of the question, $4
 * the any-word tsquery text, $5 the negated words (kb_search_any_words), $6 k, $7 and $8
 * the rare-word and two-word tsquery texts; columns: id, source, title, heading_path,
 * content, score. */
const char *kb_search_question_sql(void);
const char *kb_search_stats_sql(void);
const char *kb_search_lookup_sql(void);
const char *kb_search_fulltext_sql(void);

/* The question as the every-word pass sends it to websearch_to_tsquery: words written
 * --word (command-line options in documentation) lose their dashes, which websearch would
 * read as a double negation that the GIN index cannot serve. New string; caller frees. */
char *kb_search_and_text(const char *question);

/* The question's words for the any-word pass: *any gets them joined with " or " (double
 * quotes and the leading dashes of --word removed, the word "or" dropped), *neg the words
 * written -word (without the dash) joined the same way. Either is NULL when there are none;
 * the caller frees both. */
void kb_search_any_words(const char *question, char **any, char **neg);

/* ---- reciprocal rank fusion (pure) ---------------------------------------------------- */

struct kb_rrf_item {
    long long id;
    int rank_a; /* 1-based rank in list a; 0 when absent */
    int rank_b;
    double fused; /* sum over the lists that have it of 1 / (k0 + rank) */
};

/* Fuse two rankings of ids (best first; ids unique within a list) into out (room for
 * na + nb items): each distinct id once, ordered by fused score descending, ties broken by
 * the better single rank, then by smaller id. Returns the number of items. */
size_t kb_rrf_fuse(const long long *a, size_t na, const long long *b, size_t nb, unsigned k0,
                   struct kb_rrf_item *out);

#endif
