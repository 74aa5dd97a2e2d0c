/* kb_ingest: a batch of paths and URLs into one knowledge base. See kb_ingest.h. */
#include "kb_ingest.h"

#include "buf.h"
#include "clock.h"
#include "kb_doc.h"
#include "kb_search.h"
#include "kb_store.h"
#include "log.h"
#include "xalloc.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define KB_URL_MAX_BODY (32u << 20)

struct kb_run;

struct kb_item {
    char *source; /* absolute path or URL */
    size_t root;  /* index into roots */
    struct kb_run *run;
};

struct kb_root {
    char *root;
    int walk_failed; /* part of it could not be read: not pruned */
};

struct kb_run {
    uv_timer_t timer;
    struct kb_ingest_opts o;
    char chunking[64];
    kb_ingest_report_cb report_cb;
    kb_ingest_done_cb done_cb;
    void *arg;
    char **args;
    size_t nargs;
    struct kb_root *roots;
    size_t nroots;
    struct kb_item *items;
    size_t nitems, capitems;
    size_t next;     /* next item to start */
    size_t prune_at; /* next root to prune */
    unsigned in_flight;
    int pumping;
    uint64_t t0;
    struct kb_ingest_summary sum;
};

static void kb_run_pump(struct kb_run *g);
static void kb_run_prune_next(struct kb_run *g);

void kb_ingest_chunking(const struct kb_chunk_opts *o, char *out, size_t cap)
{
    snprintf(out, cap, "%s:%zu:%zu", o->unit == KB_UNIT_TOKENS ? "tokens" : "chars", o->size,
             o->overlap);
}

static int kb_is_url(const char *s)
{
    return strncmp(s, "http://", 7) == 0 || strncmp(s, "https://", 8) == 0;
}

static void kb_run_fail(struct kb_run *g, const char *source, const char *why)
{
    g->sum.failed++;
    g->report_cb(KB_INGEST_FAILED, source, why, g->arg);
}

/* ---- enumeration --------------------------------------------------------------------- */

static void kb_run_add(struct kb_run *g, char *source, size_t root)
{
    if (g->nitems == g->capitems) {
        g->capitems = g->capitems ? 2 * g->capitems : 64;
        g->items = xrealloc(g->items, g->capitems * sizeof(*g->items));
    }
    g->items[g->nitems++] = (struct kb_item){.source = source, .root = root, .run = g};
}

static int kb_cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void kb_run_walk(struct kb_run *g, const char *dir, size_t root)
{
    DIR *d = opendir(dir);
    if (!d) {
        char *why = xasprintf("cannot read directory: %s", strerror(errno));
        kb_run_fail(g, dir, why);
        free(why);
        g->roots[root].walk_failed = 1;
        return;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 32;
            names = xrealloc(names, cap * sizeof(*names));
        }
        names[n++] = xasprintf("%s/%s", dir, de->d_name);
    }
    closedir(d);
    if (n)
        qsort(names, n, sizeof(*names), kb_cmp_str);
    for (size_t i = 0; i < n; i++) {
        struct stat lst, st;
        if (lstat(names[i], &lst) != 0 || stat(names[i], &st) != 0) {
            free(names[i]); /* vanished, or a dangling symlink */
            continue;
        }
        if (S_ISDIR(st.st_mode)) {
            if (!S_ISLNK(lst.st_mode))
                kb_run_walk(g, names[i], root);
            free(names[i]);
        } else if (S_ISREG(st.st_mode) && kb_format_guess(names[i], NULL) != KB_FORMAT_UNKNOWN) {
            kb_run_add(g, names[i], root);
        } else {
            g->sum.skipped++;
            free(names[i]);
        }
    }
    free(names);
}

static void kb_run_add_root(struct kb_run *g, const char *arg)
{
    size_t root = g->nroots++;
    g->roots[root] = (struct kb_root){0};
    if (kb_is_url(arg)) {
        g->roots[root].root = xstrdup(arg);
        kb_run_add(g, xstrdup(arg), root);
        return;
    }
    char *abs = realpath(arg, NULL);
    if (!abs) {
        int e = errno;
        char cwd[PATH_MAX];
        g->roots[root].root = arg[0] == '/'
                                  ? xstrdup(arg)
                                  : xasprintf("%s/%s", getcwd(cwd, sizeof(cwd)) ? cwd : ".", arg);
        char *why = xasprintf("cannot read: %s", strerror(e));
        kb_run_fail(g, g->roots[root].root, why);
        free(why);
        g->sum.documents++;
        /* Gone: everything stored under it has disappeared. Anything else: keep. */
        if (e != ENOENT && e != ENOTDIR)
            g->roots[root].walk_failed = 1;
        return;
    }
    g->roots[root].root = abs;
    struct stat st;
    if (stat(abs, &st) == 0 && S_ISDIR(st.st_mode))
        kb_run_walk(g, abs, root);
    else
        kb_run_add(g, xstrdup(abs), root);
}

/* ---- one document -------------------------------------------------------------------- */

static void kb_item_done(struct kb_item *it)
{
    struct kb_run *g = it->run;
    g->in_flight--;
    kb_run_pump(g);
}

static void kb_item_on_put(const char *err, enum kb_store_outcome outcome, void *arg)
{
    struct kb_item *it = arg;
    struct kb_run *g = it->run;
    if (err) {
        kb_run_fail(g, it->source, err);
    } else {
        enum kb_ingest_event ev = outcome == KB_STORE_ADDED      ? KB_INGEST_ADDED
                                  : outcome == KB_STORE_REPLACED ? KB_INGEST_REPLACED
                                                                 : KB_INGEST_UNCHANGED;
        if (ev == KB_INGEST_ADDED)
            g->sum.added++;
        else if (ev == KB_INGEST_REPLACED)
            g->sum.replaced++;
        else
            g->sum.unchanged++;
        g->report_cb(ev, it->source, "", g->arg);
    }
    kb_item_done(it);
}

/* Parse, chunk and submit one document's bytes; on failure report and finish the item. */
static void kb_item_store(struct kb_item *it, const char *bytes, size_t len, enum kb_format fmt)
{
    struct kb_run *g = it->run;
    struct kb_doc doc;
    struct kb_chunk_list list = {0};
    struct kb_store_chunk *chunks = NULL;
    char *err = NULL;
    g->sum.bytes += len;
    if (kb_doc_parse(bytes, len, fmt, it->source, &doc, &err) != 0) {
        kb_run_fail(g, it->source, err ? err : "cannot parse");
        free(err);
        goto fail;
    }
    if (kb_chunk_doc(&doc, &g->o.chunk, &list) != 0 || list.len == 0) {
        kb_run_fail(g, it->source, "no chunks");
        goto fail;
    }
    chunks = xcalloc(list.len, sizeof(*chunks));
    for (size_t i = 0; i < list.len; i++) {
        chunks[i].heading_path = list.items[i].heading_path;
        chunks[i].content = list.items[i].text;
    }
    struct kb_store_doc sd = {
        .source = it->source,
        .root = g->roots[it->root].root,
        .title = doc.title,
        .content_type = kb_format_name(doc.format),
        .content_hash = doc.hash,
        .chunking = g->chunking,
        .bytes = (long long)len,
        .chunks = chunks,
        .nchunks = list.len,
    };
    g->sum.chunks += list.len;
    if (kb_store_put(g->o.pool, g->o.kb_id, &sd, kb_item_on_put, it) != 0) {
        kb_run_fail(g, it->source, "the database pool is closing");
        goto fail;
    }
    goto out;
fail:
    kb_item_done(it);
out:
    free(chunks);
    kb_chunk_list_free(&list);
    kb_doc_free(&doc);
}

static void kb_item_on_fetch(struct http_response *resp, void *arg)
{
    struct kb_item *it = arg;
    char *why = NULL;
    if (resp->result != HTTP_OK)
        why = xasprintf("unreachable: %s", resp->error);
    else if (resp->status != 200)
        why = xasprintf("HTTP %ld", resp->status);
    if (why) {
        kb_run_fail(it->run, it->source, why);
        free(why);
        kb_item_done(it);
        return;
    }
    enum kb_format fmt = kb_format_guess(it->source, http_response_header(resp, "content-type"));
    kb_item_store(it, resp->body, resp->body_len, fmt);
}

static void kb_item_start(struct kb_item *it)
{
    struct kb_run *g = it->run;
    g->in_flight++;
    if (kb_is_url(it->source)) {
        struct http_request req = {
            .url = it->source,
            .timeout_ms = 30000,
            .max_body = KB_URL_MAX_BODY,
            .max_redirects = 5,
        };
        char *err = NULL;
        if (!g->o.http || http_client_request(g->o.http, &req, kb_item_on_fetch, it, &err) != 0) {
            char *why = xasprintf("unreachable: %s", err ? err : "no HTTP client");
            kb_run_fail(g, it->source, why);
            free(why);
            free(err);
            kb_item_done(it);
        }
        return;
    }
    struct buf b = BUF_INIT;
    if (buf_read_file(&b, it->source) != 0) {
        char *why = xasprintf("cannot read: %s", strerror(errno));
        kb_run_fail(g, it->source, why);
        free(why);
        kb_item_done(it);
    } else {
        kb_item_store(it, b.data ? b.data : "", b.len, kb_format_guess(it->source, NULL));
    }
    buf_free(&b);
}

/* ---- the run ------------------------------------------------------------------------- */

static void kb_run_on_close(uv_handle_t *h)
{
    struct kb_run *g = h->data;
    g->done_cb(&g->sum, g->arg);
    for (size_t i = 0; i < g->nitems; i++)
        free(g->items[i].source);
    free(g->items);
    for (size_t r = 0; r < g->nroots; r++)
        free(g->roots[r].root);
    free(g->roots);
    for (size_t i = 0; i < g->nargs; i++)
        free(g->args[i]);
    free(g->args);
    free(g);
}

static void kb_run_close(struct kb_run *g)
{
    uv_close((uv_handle_t *)&g->timer, kb_run_on_close);
}

static void kb_run_on_maintained(const char *err, long long cleaned, void *arg)
{
    struct kb_run *g = arg;
    if (err)
        log_warn("kb ingest: %s (searches may be slower until autovacuum runs)", err);
    else
        log_debug("kb ingest: %lld GIN pending-list pages cleaned", cleaned);
    kb_search_forget_stats(g->o.pool); /* ANALYZE ran: searches read the new statistics */
    kb_run_close(g);
}

/* After writes: clean the GIN pending list and ANALYZE (kb_store_maintain), then close. */
static void kb_run_finish(struct kb_run *g)
{
    if (g->sum.added + g->sum.replaced + g->sum.pruned == 0 ||
        kb_store_maintain(g->o.pool, kb_run_on_maintained, g) != 0)
        kb_run_close(g);
}

/* Start documents while there is room; when the last one is done, prune or finish. */
static void kb_run_pump(struct kb_run *g)
{
    if (g->pumping)
        return;
    g->pumping = 1;
    while (g->in_flight < g->o.window && g->next < g->nitems)
        kb_item_start(&g->items[g->next++]);
    g->pumping = 0;
    if (g->in_flight > 0 || g->next < g->nitems)
        return;
    if (g->next == g->nitems && g->sum.seconds == 0) {
        g->sum.seconds = (double)(clock_mono_ns() - g->t0) / 1e9;
        if (g->sum.seconds == 0)
            g->sum.seconds = 1e-9;
        if (g->o.prune) {
            kb_run_prune_next(g);
            return;
        }
        kb_run_finish(g);
    }
}

static void kb_run_on_pruned(const char *err, long long n, void *arg)
{
    struct kb_run *g = arg;
    const char *root = g->roots[g->prune_at].root;
    if (err) {
        kb_run_fail(g, root, err);
    } else if (n > 0) {
        char detail[32];
        snprintf(detail, sizeof(detail), "%lld", n);
        g->sum.pruned += (size_t)n;
        g->report_cb(KB_INGEST_PRUNED, root, detail, g->arg);
    }
    g->prune_at++;
    kb_run_prune_next(g);
}

static void kb_run_prune_next(struct kb_run *g)
{
    while (g->prune_at < g->nroots && g->roots[g->prune_at].walk_failed) {
        kb_run_fail(g, g->roots[g->prune_at].root, "not pruned: part of it could not be read");
        g->prune_at++;
    }
    if (g->prune_at == g->nroots) {
        kb_run_finish(g);
        return;
    }
    size_t r = g->prune_at;
    const char **keep = xcalloc(g->nitems + 1, sizeof(*keep));
    size_t n = 0;
    for (size_t i = 0; i < g->nitems; i++)
        if (g->items[i].root == r)
            keep[n++] = g->items[i].source;
    int rc = kb_store_prune(g->o.pool, g->o.kb_id, g->roots[r].root, keep, n, kb_run_on_pruned, g);
    free(keep);
    if (rc != 0) {
        kb_run_fail(g, g->roots[r].root, "not pruned: the database pool is closing");
        g->prune_at = g->nroots;
        kb_run_finish(g);
    }
}

static void kb_run_on_start(uv_timer_t *t)
{
    struct kb_run *g = t->data;
    g->t0 = clock_mono_ns();
    g->roots = xcalloc(g->nargs + 1, sizeof(*g->roots));
    for (size_t i = 0; i < g->nargs; i++)
        kb_run_add_root(g, g->args[i]);
    g->sum.documents += g->nitems;
    kb_run_pump(g);
}

int kb_ingest_run(uv_loop_t *loop, const struct kb_ingest_opts *opts, const char *const *roots,
                  size_t nroots, kb_ingest_report_cb report_cb, kb_ingest_done_cb done_cb,
                  void *arg)
{
    if (!loop || !opts || !opts->pool || (nroots && !roots) || !report_cb || !done_cb)
        return -1;
    char *err = NULL;
    if (kb_chunk_opts_check(&opts->chunk, &err) != 0) {
        free(err);
        return -1;
    }
    struct kb_run *g = xcalloc(1, sizeof(*g));
    g->o = *opts;
    if (!g->o.window)
        g->o.window = 4;
    kb_ingest_chunking(&opts->chunk, g->chunking, sizeof(g->chunking));
    g->report_cb = report_cb;
    g->done_cb = done_cb;
    g->arg = arg;
    g->args = xcalloc(nroots + 1, sizeof(*g->args));
    for (size_t i = 0; i < nroots; i++)
        g->args[i] = xstrdup(roots[i]);
    g->nargs = nroots;
    uv_timer_init(loop, &g->timer);
    g->timer.data = g;
    uv_timer_start(&g->timer, kb_run_on_start, 0, 0);
    return 0;
}
