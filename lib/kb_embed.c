/* kb_embed: embeddings for knowledge-base chunks, resumable. See kb_embed.h. */
#include "kb_embed.h"

#include "buf.h"
#include "clock.h"
#include "kb_store.h"
#include "log.h"
#include "xalloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char PENDING_SQL[] =
    "SELECT c.id, c.heading_path, c.content FROM kb_chunks c"
    " WHERE c.kb_id = (SELECT id FROM knowledge_bases WHERE name = $1)"
    " AND c.embedding IS NULL ORDER BY c.id LIMIT $2::int";

static const char WRITE_SQL[] =
    "UPDATE kb_chunks c SET embedding = v.e::real[], embedding_model = $3"
    " FROM unnest($1::bigint[], $2::text[]) AS v(id, e)"
    " WHERE c.id = v.id AND c.embedding IS NULL";

struct kb_embed {
    uv_timer_t timer;
    struct kb_embed_opts o;
    char *kb;
    char *model;
    char *batch_text;
    kb_embed_cb cb;
    void *arg;
    struct kb_embed_stats stats;
    char *err;
    /* the current round */
    char **ids;
    char **texts;
    size_t n;
    unsigned attempt;
    uint64_t last_start_ms;
    int started;
};

static void kb_embed_next(struct kb_embed *e);
static void kb_embed_send(struct kb_embed *e);

void kb_embed_float_array(struct buf *b, const float *v, size_t n)
{
    buf_puts(b, "{");
    for (size_t i = 0; i < n; i++)
        buf_printf(b, "%s%.9g", i ? "," : "", (double)v[i]);
    buf_puts(b, "}");
}

static void kb_embed_round_free(struct kb_embed *e)
{
    for (size_t i = 0; i < e->n; i++) {
        free(e->ids[i]);
        free(e->texts[i]);
    }
    free(e->ids);
    free(e->texts);
    e->ids = e->texts = NULL;
    e->n = 0;
}

static void kb_embed_on_close(uv_handle_t *h)
{
    struct kb_embed *e = h->data;
    e->cb(e->err, &e->stats, e->arg);
    kb_embed_round_free(e);
    free(e->err);
    free(e->kb);
    free(e->model);
    free(e->batch_text);
    free(e);
}

/* End the run (err NULL: done), after closing the timer. */
static void kb_embed_finish(struct kb_embed *e, const char *err)
{
    if (err)
        e->err = xstrdup(err);
    uv_close((uv_handle_t *)&e->timer, kb_embed_on_close);
}

static void kb_embed_on_timer(uv_timer_t *t)
{
    struct kb_embed *e = t->data;
    if (e->n)
        kb_embed_send(e);
    else
        kb_embed_next(e);
}

static void kb_embed_on_written(const struct pg_result *r, void *arg)
{
    struct kb_embed *e = arg;
    if (!pg_result_ok(r)) {
        char *why = xasprintf("writing embeddings: %s", pg_result_message(r));
        kb_embed_finish(e, why);
        free(why);
        return;
    }
    e->stats.embedded += (size_t)pg_result_affected(r);
    e->stats.rounds++;
    log_debug("kb embed: %s: round %zu wrote %lld", e->kb, e->stats.rounds, pg_result_affected(r));
    kb_embed_round_free(e);
    kb_embed_next(e);
}

static void kb_embed_on_vectors(struct job_error *err, struct llm_embeddings *res, void *arg)
{
    struct kb_embed *e = arg;
    if (err) {
        int retryable = err->kind != JOB_ERR_PERMANENT;
        if (!retryable || e->o.max_retries == KB_EMBED_NO_RETRY || e->attempt >= e->o.max_retries) {
            char *why = xasprintf("embeddings: %s", err->error_message);
            job_error_free(err);
            kb_embed_finish(e, why);
            free(why);
            return;
        }
        uint64_t wait = e->o.backoff_ms << (e->attempt < 16 ? e->attempt : 16);
        if (err->kind == JOB_ERR_RETRY_AT || err->kind == JOB_ERR_RESCHEDULE) {
            double d = (err->retry_at - clock_wall_s()) * 1000.0;
            wait = d > 0 ? (uint64_t)d : 0;
        }
        if (wait > e->o.max_wait_ms)
            wait = e->o.max_wait_ms;
        log_info("kb embed: %s: retrying in %llu ms: %s", e->kb, (unsigned long long)wait,
                 err->error_message);
        job_error_free(err);
        e->attempt++;
        e->stats.retries++;
        uv_timer_start(&e->timer, kb_embed_on_timer, wait, 0);
        return;
    }
    if (res->n != e->n) {
        kb_embed_finish(e, "embeddings: wrong number of vectors");
        return;
    }
    struct buf vecs = BUF_INIT, one = BUF_INIT;
    char **lits = xcalloc(e->n, sizeof(*lits));
    for (size_t i = 0; i < e->n; i++) {
        kb_embed_float_array(&one, res->data + i * res->dim, res->dim);
        lits[i] = buf_steal(&one);
    }
    kb_store_text_array(&vecs, (const char *const *)lits, e->n);
    struct buf ids = BUF_INIT;
    kb_store_text_array(&ids, (const char *const *)e->ids, e->n);
    const char *params[] = {ids.data, vecs.data, e->model};
    int rc = pg_query(e->o.pool, WRITE_SQL, 3, params, kb_embed_on_written, e);
    for (size_t i = 0; i < e->n; i++)
        free(lits[i]);
    free(lits);
    buf_free(&vecs);
    buf_free(&one);
    buf_free(&ids);
    if (rc != 0)
        kb_embed_finish(e, "writing embeddings: the pool is closing");
}

static void kb_embed_send(struct kb_embed *e)
{
    uint64_t now = clock_mono_ms();
    if (e->started && e->o.min_interval_ms && now < e->last_start_ms + e->o.min_interval_ms) {
        uv_timer_start(&e->timer, kb_embed_on_timer, e->last_start_ms + e->o.min_interval_ms - now,
                       0);
        return;
    }
    e->started = 1;
    e->last_start_ms = now;
    if (llm_embed(e->o.llm, NULL, (const char *const *)e->texts, e->n, kb_embed_on_vectors, e) != 0)
        kb_embed_finish(e, "embeddings: the client refused the request (no embedding model?)");
}

static void kb_embed_on_pending(const struct pg_result *r, void *arg)
{
    struct kb_embed *e = arg;
    if (!pg_result_ok(r)) {
        char *why = xasprintf("reading chunks: %s", pg_result_message(r));
        kb_embed_finish(e, why);
        free(why);
        return;
    }
    e->n = (size_t)pg_result_nrows(r);
    if (e->n == 0) {
        kb_embed_finish(e, NULL);
        return;
    }
    e->ids = xcalloc(e->n, sizeof(*e->ids));
    e->texts = xcalloc(e->n, sizeof(*e->texts));
    for (size_t i = 0; i < e->n; i++) {
        int row = (int)i;
        const char *h = pg_result_value(r, row, 1);
        e->ids[i] = xstrdup(pg_result_value(r, row, 0));
        e->texts[i] = h && *h ? xasprintf("%s\n\n%s", h, pg_result_value(r, row, 2))
                              : xstrdup(pg_result_value(r, row, 2));
    }
    e->attempt = 0;
    kb_embed_send(e);
}

static void kb_embed_next(struct kb_embed *e)
{
    const char *params[] = {e->kb, e->batch_text};
    if (pg_query(e->o.pool, PENDING_SQL, 2, params, kb_embed_on_pending, e) != 0)
        kb_embed_finish(e, "reading chunks: the pool is closing");
}

int kb_embed_run(uv_loop_t *loop, const struct kb_embed_opts *opts, kb_embed_cb cb, void *arg)
{
    if (!loop || !opts || !opts->pool || !opts->llm || !opts->kb || !cb)
        return -1;
    struct kb_embed *e = xcalloc(1, sizeof(*e));
    e->o = *opts;
    e->kb = xstrdup(opts->kb);
    e->model = xstrdup(opts->model ? opts->model : "");
    e->o.kb = e->kb;
    e->o.model = e->model;
    if (!e->o.batch)
        e->o.batch = 64;
    if (!e->o.max_retries)
        e->o.max_retries = 5;
    if (!e->o.backoff_ms)
        e->o.backoff_ms = 1000;
    if (!e->o.max_wait_ms)
        e->o.max_wait_ms = 60000;
    e->batch_text = xasprintf("%zu", e->o.batch);
    e->cb = cb;
    e->arg = arg;
    uv_timer_init(loop, &e->timer);
    e->timer.data = e;
    /* Start from the loop, so cb never runs from inside this call. */
    uv_timer_start(&e->timer, kb_embed_on_timer, 0, 0);
    return 0;
}
