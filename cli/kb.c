/* kb: `tierone kb ingest|list|rm|search|eval|embed`. See kb.h.
 *
 * The library calls are asynchronous (pg.h, http_client.h, llm.h); a command is a short
 * script, so each step submits its call and runs the loop until that call's callback has
 * set a flag (kb_wait). The work itself lives in lib/: kb_ingest (with up to
 * KB_INGEST_WINDOW documents in flight), kb_store, kb_search, kb_embed. */
#include "kb.h"

#include "buf.h"
#include "clock.h"
#include "http_client.h"
#include "kb_chunk.h"
#include "kb_doc.h"
#include "kb_embed.h"
#include "kb_ingest.h"
#include "kb_search.h"
#include "kb_store.h"
#include "llm.h"
#include "log.h"
#include "pg.h"
#include "xalloc.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define KB_INGEST_WINDOW 4
#define KB_URL_MAX_BODY  (32u << 20)

enum { KB_EXIT_OK = 0, KB_EXIT_FAILED = 1, KB_EXIT_USAGE = 2 };

/* Everything a command uses. */
struct kb_cli {
    uv_loop_t loop;
    struct pg_pool *pool;
    struct http_client *http;
    struct llm *llm;
    const char *kb;
    const char *database_url;
    const char *embedding_model;
    int json;
};

/* ---- plumbing ------------------------------------------------------------------------ */

/* Run the loop until *flag is set. */
static void kb_wait(struct kb_cli *c, const int *flag)
{
    while (!*flag)
        if (uv_run(&c->loop, UV_RUN_ONCE) == 0 && !*flag)
            break;
}

static int kb_is_url(const char *s)
{
    return strncmp(s, "http://", 7) == 0 || strncmp(s, "https://", 8) == 0;
}

static int kb_open(struct kb_cli *c)
{
    if (!c->database_url || !*c->database_url) {
        fprintf(stderr, "kb: no database: set TIERONE_DATABASE_URL or pass --database-url\n");
        return -1;
    }
    uv_loop_init(&c->loop);
    struct pg_pool_opts po = {
        .conninfo = c->database_url,
        .size = KB_INGEST_WINDOW,
        .wait_timeout_ms = 15000,
        .query_timeout_ms = 300000,
        .application_name = "tierone-kb",
    };
    char *err = NULL;
    c->pool = pg_pool_new(&c->loop, &po, &err);
    if (!c->pool) {
        fprintf(stderr, "kb: database URL: %s\n", err ? err : "invalid");
        free(err);
        uv_loop_close(&c->loop);
        return -1;
    }
    return 0;
}

static struct http_client *kb_http(struct kb_cli *c)
{
    if (!c->http) {
        char *err = NULL;
        c->http = http_client_new(&c->loop, NULL, &err);
        if (!c->http) {
            fprintf(stderr, "kb: HTTP client: %s\n", err ? err : "cannot start");
            free(err);
        }
    }
    return c->http;
}

/* The embeddings client, when TIERONE_LLM_URL and TIERONE_EMBEDDING_MODEL are set. */
static struct llm *kb_llm(struct kb_cli *c)
{
    const char *url = getenv("TIERONE_LLM_URL");
    const char *model = getenv("TIERONE_EMBEDDING_MODEL");
    if (c->llm || !url || !*url || !model || !*model)
        return c->llm;
    if (!kb_http(c))
        return NULL;
    struct llm_opts o = {
        .http = c->http,
        .base_url = url,
        .api_key = getenv("TIERONE_LLM_API_KEY"),
        .embedding_model = model,
        .temperature = LLM_TEMPERATURE_UNSET,
        .timeout_ms = 60000,
    };
    char *err = NULL;
    c->llm = llm_new(&o, &err);
    if (!c->llm) {
        fprintf(stderr, "kb: embeddings client: %s\n", err ? err : "invalid settings");
        free(err);
    }
    c->embedding_model = model;
    return c->llm;
}

static void kb_on_pool_closed(void *arg)
{
    *(int *)arg = 1;
}

static void kb_on_http_closed(void *arg)
{
    *(int *)arg = 1;
}

static void kb_close(struct kb_cli *c)
{
    int pool_done = 0, http_done = 1;
    llm_free(c->llm);
    c->llm = NULL;
    if (c->http) {
        http_done = 0;
        http_client_close(c->http, kb_on_http_closed, &http_done);
    }
    kb_search_forget_stats(c->pool);
    pg_pool_close(c->pool, kb_on_pool_closed, &pool_done);
    kb_wait(c, &pool_done);
    kb_wait(c, &http_done);
    uv_run(&c->loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&c->loop) != 0)
        log_warn("kb: loop still has handles at exit");
}

/* Look up (or with create, make) the knowledge base. */
struct kb_ensure_wait {
    int done;
    char *err;
    long long id;
    char config[64];
};

static void kb_on_ensure(const char *err, const struct kb_store_kb *kb, void *arg)
{
    struct kb_ensure_wait *w = arg;
    if (err)
        w->err = xstrdup(err);
    else {
        w->id = kb->id;
        snprintf(w->config, sizeof(w->config), "%s", kb->ts_config);
    }
    w->done = 1;
}

static int kb_ensure(struct kb_cli *c, int create, const char *config, long long *id)
{
    struct kb_ensure_wait w = {0};
    if (kb_store_kb_ensure(c->pool, c->kb, create, config, kb_on_ensure, &w) != 0) {
        fprintf(stderr, "kb: bad knowledge base name\n");
        return -1;
    }
    kb_wait(c, &w.done);
    if (w.err) {
        fprintf(stderr, "kb: %s\n", w.err);
        free(w.err);
        return -1;
    }
    *id = w.id;
    return 0;
}

struct kb_count_wait {
    int done;
    char *err;
    long long n;
};

static void kb_on_count(const char *err, long long n, void *arg)
{
    struct kb_count_wait *w = arg;
    if (err)
        w->err = xstrdup(err);
    w->n = n;
    w->done = 1;
}

struct kb_embed_wait {
    int done;
    char *err;
    struct kb_embed_stats stats;
};

static void kb_on_embedded(const char *err, const struct kb_embed_stats *stats, void *arg)
{
    struct kb_embed_wait *w = arg;
    if (err)
        w->err = xstrdup(err);
    w->stats = *stats;
    w->done = 1;
}

/* Embed the chunks still without an embedding, when an endpoint is configured. Returns 0
 * (also when there is none), -1 on failure (reported). */
static int kb_embed_pending(struct kb_cli *c)
{
    struct llm *llm = kb_llm(c);
    if (!llm)
        return 0;
    struct kb_embed_opts o = {
        .pool = c->pool, .llm = llm, .kb = c->kb, .model = c->embedding_model, .batch = 64};
    const char *rate = getenv("TIERONE_EMBEDDING_INTERVAL_MS");
    if (rate)
        o.min_interval_ms = strtoull(rate, NULL, 10);
    struct kb_embed_wait w = {0};
    if (kb_embed_run(&c->loop, &o, kb_on_embedded, &w) != 0)
        return -1;
    kb_wait(c, &w.done);
    fprintf(stderr, "kb embed: %zu chunks embedded in %zu rounds (%zu retries)\n", w.stats.embedded,
            w.stats.rounds, w.stats.retries);
    if (w.err) {
        fprintf(stderr, "kb embed: %s (run `tierone kb embed` to resume)\n", w.err);
        free(w.err);
        return -1;
    }
    return 0;
}

/* ---- options ------------------------------------------------------------------------- */

static const char KB_USAGE[] =
    "usage: tierone kb COMMAND [options]\n"
    "  ingest PATH|URL... [--kb NAME] [--prune] [--chunk-size N] [--overlap "
    "N]\n"
    "                     [--unit chars|tokens] [--config english|simple]\n"
    "  list [--kb NAME] [--json]\n"
    "  rm SOURCE... [--kb NAME]\n"
    "  search \"question\" [-k N] [--kb NAME] [--min-score X] [--json] "
    "[--explain]\n"
    "  eval FILE.jsonl [--kb NAME] [--json]\n"
    "  embed [--kb NAME]\n"
    "common: --database-url URL (default $TIERONE_DATABASE_URL), --kb NAME "
    "(default\n"
    "\"default\"). Embeddings: $TIERONE_LLM_URL, $TIERONE_EMBEDDING_MODEL,\n"
    "$TIERONE_LLM_API_KEY, $TIERONE_EMBEDDING_INTERVAL_MS.\n"
    "exit status: 0 ok; 1 some documents failed (reported on stderr, the rest "
    "landed),\n"
    "nothing removed, or a search failed; 2 usage or setup error.\n";

struct kb_args {
    int prune, explain;
    size_t k;
    double min_score;
    const char *config;
    struct kb_chunk_opts copts;
};

static const struct option KB_OPTIONS[] = {
    {"kb", required_argument, NULL, 'K'},
    {"database-url", required_argument, NULL, 'D'},
    {"json", no_argument, NULL, 'J'},
    {"prune", no_argument, NULL, 'P'},
    {"chunk-size", required_argument, NULL, 'S'},
    {"overlap", required_argument, NULL, 'O'},
    {"unit", required_argument, NULL, 'U'},
    {"config", required_argument, NULL, 'C'},
    {"min-score", required_argument, NULL, 'M'},
    {"explain", no_argument, NULL, 'E'},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

static int kb_parse_size(const char *s, size_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-')
        return -1;
    *out = (size_t)v;
    return 0;
}

/* Parse options (argv[0] is the command); the positional arguments end up in
 * argv[optind..argc). Returns 0, 1 for --help, -1 on a usage error (reported). */
static int kb_parse(struct kb_cli *c, struct kb_args *a, int argc, char **argv)
{
    kb_chunk_opts_default(&a->copts);
    optind = 0;
    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, "+k:h", KB_OPTIONS, NULL)) != -1) {
        switch (ch) {
        case 'K':
            c->kb = optarg;
            break;
        case 'D':
            c->database_url = optarg;
            break;
        case 'J':
            c->json = 1;
            break;
        case 'P':
            a->prune = 1;
            break;
        case 'E':
            a->explain = 1;
            break;
        case 'C':
            a->config = optarg;
            break;
        case 'S':
        case 'O':
        case 'k':
            if (kb_parse_size(optarg, ch == 'S'   ? &a->copts.size
                                      : ch == 'O' ? &a->copts.overlap
                                                  : &a->k) != 0) {
                fprintf(stderr, "kb: not a number: %s\n", optarg);
                return -1;
            }
            break;
        case 'U':
            if (strcmp(optarg, "chars") == 0)
                a->copts.unit = KB_UNIT_CHARS;
            else if (strcmp(optarg, "tokens") == 0)
                a->copts.unit = KB_UNIT_TOKENS;
            else {
                fprintf(stderr, "kb: --unit must be chars or tokens\n");
                return -1;
            }
            break;
        case 'M': {
            char *end;
            a->min_score = strtod(optarg, &end);
            if (end == optarg || *end || a->min_score < 0 || a->min_score > 1) {
                fprintf(stderr, "kb: --min-score must be a number in [0,1]\n");
                return -1;
            }
            break;
        }
        case 'h':
            fputs(KB_USAGE, stdout);
            return 1;
        default:
            fprintf(stderr, "kb %s: unknown or incomplete option %s\n", argv[0], argv[optind - 1]);
            return -1;
        }
    }
    /* GNU getopt with "+" stops at the first positional; allow options after it
     * too. */
    return 0;
}

/* Options first, then "--", then the positionals (so options may follow them, as GNU
 * tools allow): a new argv the caller frees (not its strings). */
static char **kb_permute(int argc, char **argv)
{
    char **out = xcalloc((size_t)argc + 2, sizeof(*out));
    int n = 0;
    out[n++] = argv[0];
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 1; i < argc; i++) {
            int is_opt = argv[i][0] == '-' && argv[i][1] != '\0';
            if (strcmp(argv[i], "--") == 0) {
                if (pass == 1)
                    for (int j = i + 1; j < argc; j++)
                        out[n++] = argv[j];
                break;
            }
            int takes = 0;
            if (is_opt && !strchr(argv[i], '=')) {
                const char *name = argv[i] + (argv[i][1] == '-' ? 2 : 1);
                takes = strcmp(argv[i], "-k") == 0;
                for (const struct option *o = KB_OPTIONS; o->name; o++)
                    if (argv[i][1] == '-' && strcmp(o->name, name) == 0)
                        takes = o->has_arg == required_argument;
            }
            if (pass == 0 && is_opt) {
                out[n++] = argv[i];
                if (takes && i + 1 < argc)
                    out[n++] = argv[++i];
            } else if (pass == 0 && takes) {
                i++;
            } else if (pass == 1 && !is_opt) {
                out[n++] = argv[i];
            } else if (pass == 1 && takes) {
                i++;
            }
        }
        if (pass == 0)
            out[n++] = "--";
    }
    out[n] = NULL;
    return out;
}

/* ---- ingest -------------------------------------------------------------------------- */

struct kb_ingest_wait {
    int done;
    struct kb_ingest_summary sum;
};

static void kb_on_ingest_report(enum kb_ingest_event ev, const char *source, const char *detail,
                                void *arg)
{
    (void)arg;
    switch (ev) {
    case KB_INGEST_FAILED:
        fprintf(stderr, "kb ingest: %s: %s\n", source, detail);
        break;
    case KB_INGEST_ADDED:
        printf("added     %s\n", source);
        break;
    case KB_INGEST_REPLACED:
        printf("replaced  %s\n", source);
        break;
    case KB_INGEST_PRUNED:
        printf("pruned    %s documents under %s\n", detail, source);
        break;
    case KB_INGEST_UNCHANGED:
        break;
    }
}

static void kb_on_ingest_done(const struct kb_ingest_summary *s, void *arg)
{
    struct kb_ingest_wait *w = arg;
    w->sum = *s;
    w->done = 1;
}

static int kb_cmd_ingest(struct kb_cli *c, struct kb_args *a, int npos, char **pos)
{
    if (npos == 0) {
        fprintf(stderr, "kb ingest: name at least one PATH or URL\n");
        return KB_EXIT_USAGE;
    }
    char *err = NULL;
    if (kb_chunk_opts_check(&a->copts, &err) != 0) {
        fprintf(stderr, "kb ingest: %s\n", err);
        free(err);
        return KB_EXIT_USAGE;
    }
    if (kb_open(c) != 0)
        return KB_EXIT_USAGE;
    int rc = KB_EXIT_USAGE;
    long long kb_id;
    if (kb_ensure(c, 1, a->config, &kb_id) != 0)
        goto out;
    int has_url = 0;
    for (int i = 0; i < npos; i++)
        has_url |= kb_is_url(pos[i]);
    struct kb_ingest_opts o = {
        .pool = c->pool,
        .http = has_url ? kb_http(c) : NULL,
        .kb_id = kb_id,
        .chunk = a->copts,
        .prune = a->prune,
        .window = KB_INGEST_WINDOW,
    };
    struct kb_ingest_wait w = {0};
    if (kb_ingest_run(&c->loop, &o, (const char *const *)pos, (size_t)npos, kb_on_ingest_report,
                      kb_on_ingest_done, &w) != 0)
        goto out;
    kb_wait(c, &w.done);
    const struct kb_ingest_summary *s = &w.sum;
    size_t landed = s->added + s->replaced + s->unchanged;
    double mb = (double)s->bytes / 1e6;
    printf("kb ingest: %zu documents: %zu added, %zu replaced, %zu unchanged, %zu failed; "
           "%zu pruned; %zu chunks; %.2f MB in %.3f s (%.1f documents/s, %.1f chunks/s, "
           "%.2f MB/s)\n",
           s->documents, s->added, s->replaced, s->unchanged, s->failed, s->pruned, s->chunks, mb,
           s->seconds, (double)landed / s->seconds, (double)s->chunks / s->seconds,
           mb / s->seconds);
    if (s->skipped)
        printf("kb ingest: skipped %zu files of other types in directories\n", s->skipped);
    rc = s->failed ? KB_EXIT_FAILED : KB_EXIT_OK;
    if (kb_embed_pending(c) != 0)
        rc = KB_EXIT_FAILED;
out:
    kb_close(c);
    return rc;
}

/* ---- list, rm, embed ----------------------------------------------------------------- */

struct kb_list_wait {
    int done;
    int rc;
    int json;
};

static void kb_on_list(const char *err, const struct kb_store_entry *e, size_t n, void *arg)
{
    struct kb_list_wait *w = arg;
    w->done = 1;
    if (err) {
        fprintf(stderr, "kb list: %s\n", err);
        w->rc = KB_EXIT_FAILED;
        return;
    }
    if (w->json) {
        json_t *arr = json_array();
        for (size_t i = 0; i < n; i++)
            json_array_append_new(
                arr,
                json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:I, s:s}", "kb", e[i].kb, "source",
                          e[i].source, "title", e[i].title, "type", e[i].content_type, "bytes",
                          (json_int_t)e[i].bytes, "chunks", (json_int_t)e[i].chunks, "embedded",
                          (json_int_t)e[i].embedded, "updated_at", e[i].updated_at));
        char *s = json_dumps(arr, JSON_INDENT(2));
        puts(s);
        free(s);
        json_decref(arr);
        return;
    }
    printf("%-12s %7s %8s %9s  %-20s  %s\n", "KB", "CHUNKS", "EMBEDDED", "BYTES", "UPDATED",
           "SOURCE (TITLE)");
    for (size_t i = 0; i < n; i++)
        printf("%-12s %7lld %8lld %9lld  %-20s  %s (%s)\n", e[i].kb, e[i].chunks, e[i].embedded,
               e[i].bytes, e[i].updated_at, e[i].source, e[i].title);
    printf("%zu documents\n", n);
}

static int kb_cmd_list(struct kb_cli *c, int kb_given)
{
    if (kb_open(c) != 0)
        return KB_EXIT_USAGE;
    struct kb_list_wait w = {.json = c->json};
    if (kb_store_list(c->pool, kb_given ? c->kb : NULL, kb_on_list, &w) == 0)
        kb_wait(c, &w.done);
    kb_close(c);
    return w.rc;
}

/* The source as stored: URLs as given, paths absolute (a file that is gone: relative to
 * the working directory). */
static char *kb_source_of(const char *arg)
{
    if (kb_is_url(arg) || arg[0] == '/')
        return xstrdup(arg);
    char *abs = realpath(arg, NULL);
    if (abs)
        return abs;
    char cwd[PATH_MAX];
    return xasprintf("%s/%s", getcwd(cwd, sizeof(cwd)) ? cwd : ".", arg);
}

static int kb_cmd_rm(struct kb_cli *c, int npos, char **pos)
{
    if (npos == 0) {
        fprintf(stderr, "kb rm: name at least one SOURCE (see `tierone kb list`)\n");
        return KB_EXIT_USAGE;
    }
    if (kb_open(c) != 0)
        return KB_EXIT_USAGE;
    int rc = KB_EXIT_OK;
    for (int i = 0; i < npos; i++) {
        char *source = kb_source_of(pos[i]);
        struct kb_count_wait w = {0};
        if (kb_store_remove(c->pool, c->kb, source, kb_on_count, &w) == 0)
            kb_wait(c, &w.done);
        if (w.err) {
            fprintf(stderr, "kb rm: %s: %s\n", source, w.err);
            free(w.err);
            rc = KB_EXIT_FAILED;
        } else if (w.n == 0) {
            fprintf(stderr, "kb rm: %s: no such document in knowledge base %s\n", source, c->kb);
            rc = KB_EXIT_FAILED;
        } else {
            printf("removed %s\n", source);
        }
        free(source);
    }
    kb_close(c);
    return rc;
}

static int kb_cmd_embed(struct kb_cli *c)
{
    if (kb_open(c) != 0)
        return KB_EXIT_USAGE;
    int rc = KB_EXIT_OK;
    long long id;
    if (kb_ensure(c, 0, NULL, &id) != 0)
        rc = KB_EXIT_USAGE;
    else if (!kb_llm(c)) {
        fprintf(stderr, "kb embed: no embeddings endpoint: set TIERONE_LLM_URL and "
                        "TIERONE_EMBEDDING_MODEL\n");
        rc = KB_EXIT_USAGE;
    } else if (kb_embed_pending(c) != 0)
        rc = KB_EXIT_FAILED;
    kb_close(c);
    return rc;
}

/* ---- search -------------------------------------------------------------------------- */

/* One search, run to completion; the hits are copied into *out (kb_hits_free). */
struct kb_hits {
    struct kb_hit *v;
    size_t n;
    char *err;
    int done;
};

static void kb_hits_free(struct kb_hits *h)
{
    for (size_t i = 0; i < h->n; i++) {
        free((char *)h->v[i].source);
        free((char *)h->v[i].title);
        free((char *)h->v[i].heading_path);
        free((char *)h->v[i].content);
    }
    free(h->v);
    free(h->err);
    memset(h, 0, sizeof(*h));
}

static void kb_on_hits(const char *err, const struct kb_hit *hits, size_t n, void *arg)
{
    struct kb_hits *h = arg;
    h->done = 1;
    if (err) {
        h->err = xstrdup(err);
        return;
    }
    h->v = xcalloc(n ? n : 1, sizeof(*h->v));
    h->n = n;
    for (size_t i = 0; i < n; i++) {
        h->v[i] = hits[i];
        h->v[i].source = xstrdup(hits[i].source);
        h->v[i].title = xstrdup(hits[i].title);
        h->v[i].heading_path = xstrdup(hits[i].heading_path);
        h->v[i].content = xstrdup(hits[i].content);
    }
}

struct kb_mode_wait {
    int done;
    enum kb_search_mode_kind mode;
    char *err;
};

static void kb_on_mode(const char *err, enum kb_search_mode_kind mode, void *arg)
{
    struct kb_mode_wait *w = arg;
    if (err)
        w->err = xstrdup(err);
    w->mode = mode;
    w->done = 1;
}

struct kb_vec_wait {
    int done;
    float *v;
    size_t dim;
    char *err;
};

static void kb_on_vec(struct job_error *err, struct llm_embeddings *res, void *arg)
{
    struct kb_vec_wait *w = arg;
    w->done = 1;
    if (err) {
        w->err = xstrdup(err->error_message);
        job_error_free(err);
        return;
    }
    w->v = res->data;
    w->dim = res->dim;
    res->data = NULL;
}

/* The search mode (logged once), or -1 when the schema is missing. */
static int kb_mode(struct kb_cli *c, enum kb_search_mode_kind *mode)
{
    struct kb_mode_wait w = {0};
    if (kb_search_mode(c->pool, kb_llm(c) != NULL, kb_on_mode, &w) != 0)
        return -1;
    kb_wait(c, &w.done);
    if (w.err) {
        fprintf(stderr, "kb: %s (did `tierone migrate` run?)\n", w.err);
        free(w.err);
        return -1;
    }
    *mode = w.mode;
    return 0;
}

static int kb_search_one(struct kb_cli *c, enum kb_search_mode_kind mode, const char *question,
                         size_t k, double min_score, struct kb_hits *out)
{
    struct kb_search_request req = {
        .kb = c->kb, .question = question, .k = k, .min_score = min_score};
    struct kb_vec_wait vw = {0};
    if (mode == KB_MODE_HYBRID) {
        const char *texts[] = {question};
        if (llm_embed(c->llm, NULL, texts, 1, kb_on_vec, &vw) == 0)
            kb_wait(c, &vw.done);
        if (vw.err) {
            log_warn("kb search: embedding the question failed (%s); full text only", vw.err);
            free(vw.err);
        } else {
            req.vec = vw.v;
            req.dim = vw.dim;
            req.vector_enabled = 1;
        }
    }
    int rc = kb_search(c->pool, &req, kb_on_hits, out);
    if (rc == 0)
        kb_wait(c, &out->done);
    free(vw.v);
    if (rc != 0) {
        out->err = xstrdup("invalid search request");
        return -1;
    }
    return out->err ? -1 : 0;
}

static void kb_print_hits(const struct kb_hits *h, int json)
{
    if (json) {
        json_t *arr = json_array();
        for (size_t i = 0; i < h->n; i++) {
            const struct kb_hit *x = &h->v[i];
            json_t *o = json_pack("{s:I, s:f, s:s, s:s, s:s, s:s, s:I}", "rank", (json_int_t)i + 1,
                                  "score", x->score, "source", x->source, "title", x->title,
                                  "heading_path", x->heading_path, "content", x->content,
                                  "chunk_id", (json_int_t)x->chunk_id);
            if (x->fts_rank)
                json_object_set_new(o, "fulltext_rank", json_integer(x->fts_rank));
            if (x->vec_rank)
                json_object_set_new(o, "vector_rank", json_integer(x->vec_rank));
            json_array_append_new(arr, o);
        }
        char *s = json_dumps(arr, JSON_INDENT(2));
        puts(s);
        free(s);
        json_decref(arr);
        return;
    }
    for (size_t i = 0; i < h->n; i++) {
        const struct kb_hit *x = &h->v[i];
        printf("%zu. score %.3f  %s", i + 1, x->score, x->source);
        if (*x->heading_path)
            printf("  [%s]", x->heading_path);
        printf("\n   ");
        for (const char *p = x->content; *p; p++) {
            putchar(*p);
            if (*p == '\n')
                fputs("   ", stdout);
        }
        printf("\n\n");
    }
    if (h->n == 0)
        printf("no passage found\n");
}

struct kb_explain_wait {
    int done;
};

static void kb_on_explain(const struct pg_result *r, void *arg)
{
    struct kb_explain_wait *w = arg;
    w->done = 1;
    if (!pg_result_ok(r)) {
        fprintf(stderr, "kb search --explain: %s\n", pg_result_message(r));
        return;
    }
    for (int i = 0; i < pg_result_nrows(r); i++)
        puts(pg_result_value(r, i, 0));
}

struct kb_terms_wait {
    int done;
    char *v[6]; /* id, ts_config, any, rare, two, neg */
    char *err;
};

static void kb_on_terms(const char *err, const struct kb_terms *t, void *arg)
{
    struct kb_terms_wait *w = arg;
    w->done = 1;
    if (err || !t) {
        w->err = xstrdup(err ? err : "kb search: no such knowledge base");
        return;
    }
    const char *v[] = {t->kb_id, t->ts_config, t->any, t->rare, t->two, t->neg};
    for (int i = 0; i < 6; i++)
        w->v[i] = v[i] ? xstrdup(v[i]) : NULL;
}

/* Print the plans of the two statements a search runs for this question (EXPLAIN
 * ANALYZE): the per-question lookup, then the full-text statement with the terms
 * kb_search_terms computed (the lexeme statistics it read, if any, are not shown). */
static void kb_explain(struct kb_cli *c, const char *question, size_t k)
{
    char *any = NULL, *neg = NULL; /* the lookup's $2 (neg comes with the terms) */
    kb_search_any_words(question, &any, &neg);
    free(neg);
    const char *lp[] = {c->kb, any};
    struct kb_terms_wait l = {0};
    if (kb_search_terms(c->pool, c->kb, question, kb_on_terms, &l) == 0)
        kb_wait(c, &l.done);
    struct kb_explain_wait w = {0};
    char *lsql = xasprintf("EXPLAIN (ANALYZE, BUFFERS) %s", kb_search_question_sql());
    if (!l.err && pg_query(c->pool, lsql, 2, lp, kb_on_explain, &w) == 0)
        kb_wait(c, &w.done);
    free(lsql);
    if (l.err) {
        fprintf(stderr, "%s\n", l.err);
    } else {
        char *sql = xasprintf("EXPLAIN (ANALYZE, BUFFERS) %s", kb_search_fulltext_sql());
        char *kstr = xasprintf("%zu", k);
        char *and_text = kb_search_and_text(question);
        const char *params[] = {l.v[0], l.v[1], and_text, l.v[2], l.v[5], kstr, l.v[3], l.v[4]};
        memset(&w, 0, sizeof(w));
        puts("");
        if (pg_query(c->pool, sql, 8, params, kb_on_explain, &w) == 0)
            kb_wait(c, &w.done);
        free(and_text);
        free(sql);
        free(kstr);
    }
    for (int i = 0; i < 6; i++)
        free(l.v[i]);
    free(l.err);
    free(any);
}

static int kb_cmd_search(struct kb_cli *c, struct kb_args *a, int npos, char **pos)
{
    if (npos != 1) {
        fprintf(stderr, "kb search: give one question (quote it)\n");
        return KB_EXIT_USAGE;
    }
    size_t k = a->k ? a->k : 5;
    if (k > KB_SEARCH_MAX_K) {
        fprintf(stderr, "kb search: -k at most %d\n", KB_SEARCH_MAX_K);
        return KB_EXIT_USAGE;
    }
    if (kb_open(c) != 0)
        return KB_EXIT_USAGE;
    int rc = KB_EXIT_OK;
    enum kb_search_mode_kind mode;
    if (kb_mode(c, &mode) != 0) {
        rc = KB_EXIT_USAGE;
        goto out;
    }
    if (a->explain) {
        kb_explain(c, pos[0], k);
        goto out;
    }
    struct kb_hits h = {0};
    if (kb_search_one(c, mode, pos[0], k, a->min_score, &h) != 0) {
        fprintf(stderr, "%s\n", h.err);
        rc = KB_EXIT_FAILED;
    } else {
        kb_print_hits(&h, c->json);
    }
    kb_hits_free(&h);
out:
    kb_close(c);
    return rc;
}

/* ---- eval ---------------------------------------------------------------------------- */

/* Does a hit's source match the expected one? Equal, or the stored path ends with "/" +
 * expected (so an eval file can name "deploy/helm.md" for /srv/docs/deploy/helm.md),
 * ignoring trailing slashes of URLs. */
static int kb_source_matches(const char *stored, const char *want)
{
    size_t ls = strlen(stored), lw = strlen(want);
    while (lw > 1 && want[lw - 1] == '/')
        lw--;
    while (ls > 1 && stored[ls - 1] == '/')
        ls--;
    if (ls == lw)
        return strncmp(stored, want, lw) == 0;
    return ls > lw && stored[ls - lw - 1] == '/' && strncmp(stored + ls - lw, want, lw) == 0;
}

struct kb_eval_row {
    char *source;
    size_t n, at1, at3, at5;
    double rr;
};

static struct kb_eval_row *kb_eval_row(struct kb_eval_row **rows, size_t *n, const char *source)
{
    for (size_t i = 0; i < *n; i++)
        if (strcmp((*rows)[i].source, source) == 0)
            return &(*rows)[i];
    *rows = xrealloc(*rows, (*n + 1) * sizeof(**rows));
    (*rows)[*n] = (struct kb_eval_row){.source = xstrdup(source)};
    return &(*rows)[(*n)++];
}

static void kb_eval_count(struct kb_eval_row *r, size_t rank)
{
    r->n++;
    if (rank == 0)
        return;
    r->at1 += rank <= 1;
    r->at3 += rank <= 3;
    r->at5 += rank <= 5;
    r->rr += 1.0 / (double)rank;
}

static json_t *kb_eval_json(const struct kb_eval_row *r)
{
    double n = r->n ? (double)r->n : 1;
    return json_pack("{s:I, s:f, s:f, s:f, s:f}", "questions", (json_int_t)r->n, "recall@1",
                     (double)r->at1 / n, "recall@3", (double)r->at3 / n, "recall@5",
                     (double)r->at5 / n, "mrr", r->rr / n);
}

static void kb_eval_print(const struct kb_eval_row *r, const char *label)
{
    double n = r->n ? (double)r->n : 1;
    printf("%-40s %5zu  %6.3f  %6.3f  %6.3f  %6.3f\n", label, r->n, (double)r->at1 / n,
           (double)r->at3 / n, (double)r->at5 / n, r->rr / n);
}

static int kb_cmd_eval(struct kb_cli *c, int npos, char **pos)
{
    if (npos != 1) {
        fprintf(stderr, "kb eval: give one FILE.jsonl\n");
        return KB_EXIT_USAGE;
    }
    FILE *f = fopen(pos[0], "r");
    if (!f) {
        fprintf(stderr, "kb eval: %s: %s\n", pos[0], strerror(errno));
        return KB_EXIT_USAGE;
    }
    if (kb_open(c) != 0) {
        fclose(f);
        return KB_EXIT_USAGE;
    }
    int rc = KB_EXIT_OK;
    struct kb_eval_row total = {.source = "overall"};
    struct kb_eval_row *rows = NULL;
    size_t nrows = 0;
    struct buf misses = BUF_INIT;
    enum kb_search_mode_kind mode;
    char *line = NULL;
    size_t cap = 0;
    long lineno = 0;
    if (kb_mode(c, &mode) != 0) {
        rc = KB_EXIT_USAGE;
        goto out;
    }
    while (getline(&line, &cap, f) != -1) {
        lineno++;
        if (strspn(line, " \t\r\n") == strlen(line))
            continue;
        json_error_t jerr;
        json_t *o = json_loads(line, 0, &jerr);
        const char *q = NULL, *src = NULL, *heading = NULL;
        if (!o || json_unpack(o, "{s:s, s:s, s?s}", "question", &q, "source", &src, "heading",
                              &heading) != 0) {
            fprintf(stderr,
                    "kb eval: %s:%ld: want {\"question\": ..., \"source\": ..., "
                    "\"heading\"?: ...}\n",
                    pos[0], lineno);
            json_decref(o);
            rc = KB_EXIT_FAILED;
            continue;
        }
        struct kb_hits h = {0};
        if (kb_search_one(c, mode, q, 5, 0, &h) != 0) {
            fprintf(stderr, "kb eval: %s:%ld: %s\n", pos[0], lineno, h.err);
            rc = KB_EXIT_FAILED;
        } else {
            size_t rank = 0;
            for (size_t i = 0; i < h.n && !rank; i++)
                if (kb_source_matches(h.v[i].source, src) &&
                    (!heading || strcasestr(h.v[i].heading_path, heading)))
                    rank = i + 1;
            kb_eval_count(&total, rank);
            kb_eval_count(kb_eval_row(&rows, &nrows, src), rank);
            if (rank != 1)
                buf_printf(
                    &misses, "  %s %s -> want %s%s%s; got %s%s%s\n", rank ? "rank" : "miss", q, src,
                    heading ? " > " : "", heading ? heading : "", h.n ? h.v[0].source : "nothing",
                    h.n && *h.v[0].heading_path ? " > " : "", h.n ? h.v[0].heading_path : "");
        }
        kb_hits_free(&h);
        json_decref(o);
    }
    if (c->json) {
        json_t *per = json_object();
        for (size_t i = 0; i < nrows; i++)
            json_object_set_new(per, rows[i].source, kb_eval_json(&rows[i]));
        json_t *doc =
            json_pack("{s:s, s:s, s:o, s:o}", "kb", c->kb, "mode", kb_search_mode_text(mode),
                      "overall", kb_eval_json(&total), "per_source", per);
        char *s = json_dumps(doc, JSON_INDENT(2));
        puts(s);
        free(s);
        json_decref(doc);
    } else {
        printf("kb eval: %zu questions on knowledge base %s, %s\n", total.n, c->kb,
               kb_search_mode_text(mode));
        printf("%-40s %5s  %6s  %6s  %6s  %6s\n", "", "n", "R@1", "R@3", "R@5", "MRR");
        kb_eval_print(&total, "overall");
        for (size_t i = 0; i < nrows; i++)
            kb_eval_print(&rows[i], rows[i].source);
        if (misses.len)
            printf("not ranked first:\n%s", misses.data);
    }
out:
    for (size_t i = 0; i < nrows; i++)
        free(rows[i].source);
    free(rows);
    free(line);
    buf_free(&misses);
    fclose(f);
    kb_close(c);
    return rc;
}

void cli_kb_usage(FILE *out)
{
    fputs(KB_USAGE, out);
}

/* ---- dispatch ------------------------------------------------------------------------ */

int cli_kb(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
        fputs(KB_USAGE, argc < 2 ? stderr : stdout);
        return argc < 2 ? KB_EXIT_USAGE : KB_EXIT_OK;
    }
    const char *cmd = argv[1];
    struct kb_cli c = {
        .kb = KB_STORE_DEFAULT_KB,
        .database_url = getenv("TIERONE_DATABASE_URL"),
    };
    struct kb_args a = {0};
    char **av = kb_permute(argc - 1, argv + 1);
    int ac = 0;
    while (av[ac])
        ac++;
    int prc = kb_parse(&c, &a, ac, av);
    if (prc != 0) {
        free(av);
        return prc > 0 ? KB_EXIT_OK : KB_EXIT_USAGE;
    }
    if (optind < ac && strcmp(av[optind], "--") == 0)
        optind++;
    int npos = ac - optind;
    char **pos = av + optind;
    int kb_given = 0;
    for (int i = 1; i < argc; i++)
        kb_given |= strcmp(argv[i], "--kb") == 0 || strncmp(argv[i], "--kb=", 5) == 0;
    /* Log lines (the search mode, warnings) go to stderr: stdout is the command's output.
     * The search mode line is info. */
    log_set_stream(stderr);
    if (log_min_level > LOG_INFO)
        log_min_level = LOG_INFO;
    int rc;
    if (strcmp(cmd, "ingest") == 0)
        rc = kb_cmd_ingest(&c, &a, npos, pos);
    else if (strcmp(cmd, "list") == 0)
        rc = kb_cmd_list(&c, kb_given);
    else if (strcmp(cmd, "rm") == 0)
        rc = kb_cmd_rm(&c, npos, pos);
    else if (strcmp(cmd, "search") == 0)
        rc = kb_cmd_search(&c, &a, npos, pos);
    else if (strcmp(cmd, "eval") == 0)
        rc = kb_cmd_eval(&c, npos, pos);
    else if (strcmp(cmd, "embed") == 0)
        rc = kb_cmd_embed(&c);
    else {
        fprintf(stderr, "kb: unknown command %s\n%s", cmd, KB_USAGE);
        rc = KB_EXIT_USAGE;
    }
    fflush(stdout);
    free(av);
    return rc;
}
