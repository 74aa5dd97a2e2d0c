/* kb_store: documents and chunks in PostgreSQL. See kb_store.h. */
#include "kb_store.h"

#include "xalloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- array literals ------------------------------------------------------------------ */

void kb_store_text_array(struct buf *b, const char *const *strs, size_t n)
{
    buf_puts(b, "{");
    for (size_t i = 0; i < n; i++) {
        const char *s = strs[i] ? strs[i] : "";
        buf_puts(b, i ? ",\"" : "\"");
        for (const char *p = s; *p; p++) {
            size_t run = strcspn(p, "\"\\");
            buf_append(b, p, run);
            p += run;
            if (!*p)
                break;
            buf_append(b, "\\", 1);
            buf_append(b, p, 1);
        }
        buf_puts(b, "\"");
    }
    buf_puts(b, "}");
}

/* ---- knowledge bases ----------------------------------------------------------------- */

struct kb_ensure {
    struct pg_pool *pool;
    char *name;
    char *ts_config;
    int create;
    kb_store_kb_cb cb;
    void *arg;
};

static const char KB_SELECT_SQL[] =
    "SELECT id, name, ts_config::text FROM knowledge_bases WHERE name = $1";
/* Concurrent creators: the loser's insert does nothing and it reads the winner's row. */
static const char KB_INSERT_SQL[] =
    "WITH ins AS (INSERT INTO knowledge_bases (name, ts_config) VALUES ($1, $2::regconfig) "
    "ON CONFLICT (name) DO NOTHING RETURNING id, name, ts_config::text) "
    "SELECT * FROM ins UNION ALL "
    "SELECT id, name, ts_config::text FROM knowledge_bases WHERE name = $1";

static void kb_ensure_finish(struct kb_ensure *e, const char *err, const struct kb_store_kb *kb)
{
    e->cb(err, kb, e->arg);
    free(e->name);
    free(e->ts_config);
    free(e);
}

static void kb_ensure_on_row(const struct pg_result *r, void *arg);

static void kb_ensure_on_select(const struct pg_result *r, void *arg)
{
    struct kb_ensure *e = arg;
    if (!pg_result_ok(r) || pg_result_nrows(r) > 0 || !e->create) {
        kb_ensure_on_row(r, e);
        return;
    }
    const char *params[] = {e->name, e->ts_config};
    if (pg_query(e->pool, KB_INSERT_SQL, 2, params, kb_ensure_on_row, e) != 0)
        kb_ensure_finish(e, "the database pool is closing", NULL);
}

static void kb_ensure_on_row(const struct pg_result *r, void *arg)
{
    struct kb_ensure *e = arg;
    if (!pg_result_ok(r)) {
        char *why = xasprintf("knowledge base %s: %s", e->name, pg_result_message(r));
        kb_ensure_finish(e, why, NULL);
        free(why);
        return;
    }
    if (pg_result_nrows(r) == 0) {
        char *why = xasprintf("no knowledge base named \"%s\"", e->name);
        kb_ensure_finish(e, why, NULL);
        free(why);
        return;
    }
    struct kb_store_kb kb = {
        .id = strtoll(pg_result_value(r, 0, 0), NULL, 10),
        .name = pg_result_value(r, 0, 1),
        .ts_config = pg_result_value(r, 0, 2),
    };
    kb_ensure_finish(e, NULL, &kb);
}

int kb_store_kb_ensure(struct pg_pool *pool, const char *name, int create, const char *ts_config,
                       kb_store_kb_cb cb, void *arg)
{
    if (!pool || !name || !*name || !cb)
        return -1;
    struct kb_ensure *e = xcalloc(1, sizeof(*e));
    e->pool = pool;
    e->name = xstrdup(name);
    e->ts_config = xstrdup(ts_config ? ts_config : KB_STORE_DEFAULT_CONFIG);
    e->create = create;
    e->cb = cb;
    e->arg = arg;
    const char *params[] = {e->name};
    if (pg_query(pool, KB_SELECT_SQL, 1, params, kb_ensure_on_select, e) != 0) {
        free(e->name);
        free(e->ts_config);
        free(e);
        return -1;
    }
    return 0;
}

/* ---- documents ----------------------------------------------------------------------- */

struct kb_put {
    struct pg_pool *pool;
    char *params[12];
    char *hash;
    char *chunking;
    kb_store_put_cb cb;
    void *arg;
};

static const char PUT_CHECK_SQL[] =
    "SELECT content_hash, chunking FROM kb_documents WHERE kb_id = $1 AND source = $2";

/* One statement: upsert the document, delete its old chunks, insert the new ones. The
 * insert waits for the delete (it reads old's count), so (document_id, ordinal) never
 * collides. */
static const char PUT_WRITE_SQL[] =
    "WITH doc AS ("
    " INSERT INTO kb_documents (kb_id, source, root, title, content_type, content_hash,"
    "  chunking, bytes, chunk_count)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
    " ON CONFLICT (kb_id, source) DO UPDATE SET root = EXCLUDED.root, title = EXCLUDED.title,"
    "  content_type = EXCLUDED.content_type, content_hash = EXCLUDED.content_hash,"
    "  chunking = EXCLUDED.chunking, bytes = EXCLUDED.bytes,"
    "  chunk_count = EXCLUDED.chunk_count, updated_at = now()"
    " RETURNING id, (xmax = 0) AS inserted),"
    " old AS (DELETE FROM kb_chunks WHERE document_id = (SELECT id FROM doc) RETURNING 1),"
    " ins AS (INSERT INTO kb_chunks (document_id, kb_id, ordinal, heading_path, content,"
    "  ts_config)"
    "  SELECT (SELECT id FROM doc), $1, t.ord - 1, t.h, t.c,"
    "   (SELECT ts_config FROM knowledge_bases WHERE id = $1)"
    "  FROM unnest($10::text[], $11::text[]) WITH ORDINALITY AS t(h, c, ord)"
    "  WHERE (SELECT count(*) FROM old) >= 0 RETURNING 1)"
    " SELECT (SELECT inserted FROM doc), (SELECT count(*) FROM ins)";

static void kb_put_free(struct kb_put *p)
{
    for (size_t i = 0; i < sizeof(p->params) / sizeof(p->params[0]); i++)
        free(p->params[i]);
    free(p->hash);
    free(p->chunking);
    free(p);
}

static void kb_put_fail(struct kb_put *p, const char *what, const struct pg_result *r)
{
    char *why = xasprintf("%s: %s", what, r ? pg_result_message(r) : "the pool is closing");
    p->cb(why, KB_STORE_UNCHANGED, p->arg);
    free(why);
    kb_put_free(p);
}

static void kb_put_on_write(const struct pg_result *r, void *arg)
{
    struct kb_put *p = arg;
    if (!pg_result_ok(r) || pg_result_nrows(r) != 1) {
        kb_put_fail(p, "storing the document", r);
        return;
    }
    const char *inserted = pg_result_value(r, 0, 0);
    p->cb(NULL, inserted && inserted[0] == 't' ? KB_STORE_ADDED : KB_STORE_REPLACED, p->arg);
    kb_put_free(p);
}

static void kb_put_on_check(const struct pg_result *r, void *arg)
{
    struct kb_put *p = arg;
    if (!pg_result_ok(r)) {
        kb_put_fail(p, "reading the document", r);
        return;
    }
    if (pg_result_nrows(r) == 1 && strcmp(pg_result_value(r, 0, 0), p->hash) == 0 &&
        strcmp(pg_result_value(r, 0, 1), p->chunking) == 0) {
        p->cb(NULL, KB_STORE_UNCHANGED, p->arg);
        kb_put_free(p);
        return;
    }
    if (pg_query(p->pool, PUT_WRITE_SQL, 11, (const char *const *)p->params, kb_put_on_write, p) !=
        0)
        kb_put_fail(p, "storing the document", NULL);
}

int kb_store_put(struct pg_pool *pool, long long kb_id, const struct kb_store_doc *doc,
                 kb_store_put_cb cb, void *arg)
{
    if (!pool || !doc || !doc->source || !doc->root || !doc->content_hash || !doc->chunking ||
        !doc->chunks || doc->nchunks == 0 || !cb)
        return -1;
    struct kb_put *p = xcalloc(1, sizeof(*p));
    p->pool = pool;
    p->cb = cb;
    p->arg = arg;
    p->hash = xstrdup(doc->content_hash);
    p->chunking = xstrdup(doc->chunking);
    p->params[0] = xasprintf("%lld", kb_id);
    p->params[1] = xstrdup(doc->source);
    p->params[2] = xstrdup(doc->root);
    p->params[3] = xstrdup(doc->title ? doc->title : "");
    p->params[4] = xstrdup(doc->content_type ? doc->content_type : "");
    p->params[5] = xstrdup(doc->content_hash);
    p->params[6] = xstrdup(doc->chunking);
    p->params[7] = xasprintf("%lld", doc->bytes);
    p->params[8] = xasprintf("%zu", doc->nchunks);
    const char **heads = xcalloc(doc->nchunks, sizeof(*heads));
    const char **texts = xcalloc(doc->nchunks, sizeof(*texts));
    for (size_t i = 0; i < doc->nchunks; i++) {
        heads[i] = doc->chunks[i].heading_path ? doc->chunks[i].heading_path : "";
        texts[i] = doc->chunks[i].content;
    }
    struct buf b = BUF_INIT;
    kb_store_text_array(&b, heads, doc->nchunks);
    p->params[9] = buf_steal(&b);
    kb_store_text_array(&b, texts, doc->nchunks);
    p->params[10] = buf_steal(&b);
    buf_free(&b);
    free(heads);
    free(texts);
    const char *check[] = {p->params[0], p->params[1]};
    if (pg_query(pool, PUT_CHECK_SQL, 2, check, kb_put_on_check, p) != 0) {
        kb_put_free(p);
        return -1;
    }
    return 0;
}

/* ---- prune, remove ------------------------------------------------------------------- */

struct kb_count {
    kb_store_count_cb cb;
    void *arg;
    const char *what;
};

static void kb_count_on_result(const struct pg_result *r, void *arg)
{
    struct kb_count *c = arg;
    if (!pg_result_ok(r)) {
        char *why = xasprintf("%s: %s", c->what, pg_result_message(r));
        c->cb(why, 0, c->arg);
        free(why);
    } else {
        c->cb(NULL, pg_result_affected(r), c->arg);
    }
    free(c);
}

static int kb_count_query(struct pg_pool *pool, const char *what, const char *sql, int nparams,
                          const char *const *params, kb_store_count_cb cb, void *arg)
{
    struct kb_count *c = xcalloc(1, sizeof(*c));
    c->cb = cb;
    c->arg = arg;
    c->what = what;
    if (pg_query(pool, sql, nparams, params, kb_count_on_result, c) != 0) {
        free(c);
        return -1;
    }
    return 0;
}

int kb_store_prune(struct pg_pool *pool, long long kb_id, const char *root, const char *const *keep,
                   size_t nkeep, kb_store_count_cb cb, void *arg)
{
    if (!pool || !root || (nkeep && !keep) || !cb)
        return -1;
    char *id = xasprintf("%lld", kb_id);
    struct buf b = BUF_INIT;
    kb_store_text_array(&b, keep, nkeep);
    const char *params[] = {id, root, b.data};
    int rc = kb_count_query(pool, "pruning",
                            "DELETE FROM kb_documents WHERE kb_id = $1 AND root = $2"
                            " AND source <> ALL ($3::text[])",
                            3, params, cb, arg);
    free(id);
    buf_free(&b);
    return rc;
}

int kb_store_remove(struct pg_pool *pool, const char *kb, const char *source, kb_store_count_cb cb,
                    void *arg)
{
    if (!pool || !kb || !source || !cb)
        return -1;
    const char *params[] = {kb, source};
    return kb_count_query(pool, "removing the document",
                          "DELETE FROM kb_documents WHERE source = $2"
                          " AND kb_id = (SELECT id FROM knowledge_bases WHERE name = $1)",
                          2, params, cb, arg);
}

/* ---- maintenance --------------------------------------------------------------------- */

struct kb_maint {
    struct pg_pool *pool;
    kb_store_count_cb cb;
    void *arg;
    long long cleaned;
};

static void kb_maint_on_analyze(const struct pg_result *r, void *arg)
{
    struct kb_maint *m = arg;
    if (!pg_result_ok(r)) {
        char *why = xasprintf("ANALYZE kb_chunks: %s", pg_result_message(r));
        m->cb(why, m->cleaned, m->arg);
        free(why);
    } else {
        m->cb(NULL, m->cleaned, m->arg);
    }
    free(m);
}

static void kb_maint_on_clean(const struct pg_result *r, void *arg)
{
    struct kb_maint *m = arg;
    if (!pg_result_ok(r)) {
        char *why = xasprintf("cleaning the GIN pending list: %s", pg_result_message(r));
        m->cb(why, 0, m->arg);
        free(why);
        free(m);
        return;
    }
    m->cleaned = strtoll(pg_result_value(r, 0, 0), NULL, 10);
    if (pg_query(m->pool, "ANALYZE kb_chunks", 0, NULL, kb_maint_on_analyze, m) != 0) {
        m->cb("ANALYZE kb_chunks: the pool is closing", m->cleaned, m->arg);
        free(m);
    }
}

int kb_store_maintain(struct pg_pool *pool, kb_store_count_cb cb, void *arg)
{
    if (!pool || !cb)
        return -1;
    struct kb_maint *m = xcalloc(1, sizeof(*m));
    m->pool = pool;
    m->cb = cb;
    m->arg = arg;
    if (pg_query(pool, "SELECT gin_clean_pending_list('kb_chunks_tsv'::regclass)", 0, NULL,
                 kb_maint_on_clean, m) != 0) {
        free(m);
        return -1;
    }
    return 0;
}

/* ---- list ---------------------------------------------------------------------------- */

struct kb_list {
    kb_store_list_cb cb;
    void *arg;
};

static void kb_list_on_result(const struct pg_result *r, void *arg)
{
    struct kb_list *l = arg;
    if (!pg_result_ok(r)) {
        char *why = xasprintf("listing documents: %s", pg_result_message(r));
        l->cb(why, NULL, 0, l->arg);
        free(why);
        free(l);
        return;
    }
    size_t n = (size_t)pg_result_nrows(r);
    struct kb_store_entry *e = xcalloc(n ? n : 1, sizeof(*e));
    for (size_t i = 0; i < n; i++) {
        int row = (int)i;
        e[i].kb = pg_result_value(r, row, 0);
        e[i].source = pg_result_value(r, row, 1);
        e[i].title = pg_result_value(r, row, 2);
        e[i].content_type = pg_result_value(r, row, 3);
        e[i].updated_at = pg_result_value(r, row, 4);
        e[i].bytes = strtoll(pg_result_value(r, row, 5), NULL, 10);
        e[i].chunks = strtoll(pg_result_value(r, row, 6), NULL, 10);
        e[i].embedded = strtoll(pg_result_value(r, row, 7), NULL, 10);
    }
    l->cb(NULL, e, n, l->arg);
    free(e);
    free(l);
}

int kb_store_list(struct pg_pool *pool, const char *kb, kb_store_list_cb cb, void *arg)
{
    if (!pool || !cb)
        return -1;
    static const char sql[] =
        "SELECT k.name, d.source, d.title, d.content_type,"
        " to_char(d.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),"
        " d.bytes, d.chunk_count,"
        " (SELECT count(*) FROM kb_chunks c WHERE c.document_id = d.id"
        "  AND c.embedding IS NOT NULL)"
        " FROM kb_documents d JOIN knowledge_bases k ON k.id = d.kb_id"
        " WHERE $1::text IS NULL OR k.name = $1 ORDER BY k.name, d.source";
    struct kb_list *l = xcalloc(1, sizeof(*l));
    l->cb = cb;
    l->arg = arg;
    const char *params[] = {kb};
    if (pg_query(pool, sql, 1, params, kb_list_on_result, l) != 0) {
        free(l);
        return -1;
    }
    return 0;
}
