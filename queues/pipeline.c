/* pipeline: see pipeline.h. The context is built once per worker process; everything in it
 * lives until the worker closes (pipeline_close, through worker->app_close). */
#include "pipeline.h"

#include "chatwoot.h"
#include "clock.h"
#include "digest.h"
#include "engine.h"
#include "kb_search.h"
#include "linear.h"
#include "llm.h"
#include "log.h"
#include "metrics.h"
#include "pg.h"
#include "rate_limit.h"
#include "sidekiq_client.h"
#include "slack.h"
#include "xalloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One Slack client per webhook URL in use. */
struct pipeline_slack {
    char *url;
    struct slack *client;
    struct rate_limit *limit;
    struct pipeline_slack *next;
};

/* Where each class goes. */
static const struct {
    const char *klass;
    const char *queue;
    int ai; /* retried ai_retries times, then the fail-safe */
} pipeline_classes[] = {
    {PIPELINE_EVENT, "events", 0},
    {PIPELINE_RETRIEVE, "ai", 1},
    {PIPELINE_DECIDE, "ai", 1},
    {PIPELINE_REPLY, "actions", 0},
    {PIPELINE_ESCALATE, "actions", 0},
    {PIPELINE_LINEAR_ISSUE, "linear", 0},
    {PIPELINE_PRIVATE_NOTE, "actions", 0},
    {PIPELINE_CONTACT_SYNC, "sync", 0},
};

static void pipeline_app_close(void *app)
{
    pipeline_close(app);
}

/* A fleet-wide bucket of `count` requests per `period_s`, bursting `burst_s` seconds'
 * worth (at least one); none when count is 0. */
static int pipeline_limit(struct pipeline *p, struct rate_limit **out, const char *name,
                          double count, double period_s, double burst_s, char *err, size_t errcap)
{
    if (count <= 0)
        return 0;
    const char *why = NULL;
    double rate = count / period_s;
    double burst = rate * burst_s < 1 ? 1 : rate * burst_s;
    *out = rate_limit_new(p->w->redis, name, rate, burst, &why);
    if (!*out) {
        snprintf(err, errcap, "rate limit %s: %s", name, why ? why : "?");
        return -1;
    }
    return 0;
}

/* ---- /metrics: the PostgreSQL pool, read at each scrape ----------------------------------
 * A pool that is too small shows as busy == open with requests waiting; a database that
 * refuses or times out as errors rising. After pipeline_close every value reads 0. */

static struct pg_pool_stats pipeline_pg_stats(void *arg)
{
    const struct pipeline *p = arg;
    struct pg_pool_stats st = {0};
    if (p->pg)
        pg_pool_stats(p->pg, &st);
    return st;
}
static double pipeline_pg_open(void *arg)
{
    return pipeline_pg_stats(arg).open;
}
static double pipeline_pg_busy(void *arg)
{
    return pipeline_pg_stats(arg).busy;
}
static double pipeline_pg_waiting(void *arg)
{
    return pipeline_pg_stats(arg).waiting;
}
static double pipeline_pg_queries(void *arg)
{
    return (double)pipeline_pg_stats(arg).queries_total;
}
static double pipeline_pg_errors(void *arg)
{
    return (double)pipeline_pg_stats(arg).errors_total;
}
static double pipeline_pg_pipelined(void *arg)
{
    return (double)pipeline_pg_stats(arg).pipelined_total;
}

/* Adds the pool's series to the worker's registry (none when /metrics is off). */
static void pipeline_metrics(struct pipeline *p)
{
    struct metrics_registry *reg = p->w->metrics;
    if (!reg)
        return;
    static const struct {
        const char *name, *help;
        metrics_value_fn fn;
        int counter;
    } series[] = {
        {"tierone_db_connections_open", "PostgreSQL connections up.", pipeline_pg_open, 0},
        {"tierone_db_connections_busy", "Of those, running statements or held by a job.",
         pipeline_pg_busy, 0},
        {"tierone_db_requests_waiting", "Statements waiting for a connection.", pipeline_pg_waiting,
         0},
        {"tierone_db_queries_total", "Statements completed (success or error).",
         pipeline_pg_queries, 1},
        {"tierone_db_errors_total", "Statements and connection waits that failed.",
         pipeline_pg_errors, 1},
        {"tierone_db_pipelined_total", "Statements sent behind another on the same connection.",
         pipeline_pg_pipelined, 1},
    };
    for (size_t i = 0; i < sizeof series / sizeof series[0]; i++)
        (series[i].counter ? metrics_counter_fn_new : metrics_gauge_fn_new)(
            reg, series[i].name, series[i].help, series[i].fn, p);
}

int pipeline_init(struct pipeline *p, struct worker *w, const struct pipeline_settings *cfg,
                  char *err, size_t errcap)
{
    memset(p, 0, sizeof *p);
    p->w = w;
    p->cfg = cfg;
    char *why = NULL;
    struct inbox_env_defaults env = {.debounce_ms = cfg->debounce_ms,
                                     .model = cfg->llm_model,
                                     .slack_webhook_url = cfg->slack_webhook_url,
                                     .linear_team_id = cfg->linear_team_id,
                                     .shadow = cfg->shadow};
    p->inboxes = inbox_config_load(cfg->inbox_config_path, &env, &why);
    if (!p->inboxes)
        goto fail;
    /* Every running job may wait for a connection at once (one statement at a time each):
     * the wait queue must hold them all, or a busy worker fails its own jobs. */
    long long waiters = w->cfg->concurrency * 2 > 1000 ? w->cfg->concurrency * 2 : 1000;
    struct pg_pool_opts po = {.conninfo = cfg->database_url,
                              .size = (unsigned)(cfg->database_pool > 0 ? cfg->database_pool : 8),
                              .max_waiters = (unsigned)waiters,
                              .query_timeout_ms = 30000,
                              .application_name = "tierone-worker",
                              .no_prepare = !cfg->database_prepare,
                              .pipeline_depth = (unsigned)cfg->database_pipeline};
    p->pg = pg_pool_new(w->loop, &po, &why);
    if (!p->pg)
        goto fail;
    pipeline_metrics(p);
    if (!cfg->chatwoot_base_url && !cfg->shadow) {
        why = xstrdup("CHATWOOT_BASE_URL is required unless TIERONE_SHADOW is on");
        goto fail;
    }
    /* Chatwoot's rack-attack counts fixed minutes: a burst of one second's worth keeps any
     * minute under rate + burst. Linear's budget is hourly: a minute's worth of burst. */
    if (pipeline_limit(p, &p->chatwoot_limit, "chatwoot", (double)cfg->chatwoot_rate_per_min, 60, 1,
                       err, errcap) != 0 ||
        pipeline_limit(p, &p->llm_limit, "llm", (double)cfg->llm_rate_per_min, 60, 1, err,
                       errcap) != 0 ||
        pipeline_limit(p, &p->linear_limit, "linear", (double)cfg->linear_rate_per_hour, 3600, 60,
                       err, errcap) != 0)
        goto fail_err;
    if (cfg->chatwoot_base_url) {
        struct chatwoot_opts co = {.http = worker_http(w),
                                   .limit = p->chatwoot_limit,
                                   .base_url = cfg->chatwoot_base_url,
                                   .bot_token = cfg->chatwoot_bot_token,
                                   .user_token = cfg->chatwoot_user_token};
        p->chatwoot = chatwoot_new(&co, &why);
        if (!p->chatwoot)
            goto fail;
    }
    if (cfg->llm_base_url) {
        struct llm_opts lo = {.http = worker_http(w),
                              .limit = p->llm_limit,
                              .base_url = cfg->llm_base_url,
                              .api_key = cfg->llm_api_key,
                              .model = cfg->llm_model,
                              .format = (enum llm_format)cfg->llm_format,
                              .token_param = (enum llm_token_param)cfg->llm_token_param,
                              .max_tokens = (unsigned)cfg->llm_max_tokens,
                              .temperature = LLM_TEMPERATURE_UNSET,
                              .timeout_ms = (uint64_t)cfg->llm_timeout_ms};
        p->llm = llm_new(&lo, &why);
        if (!p->llm)
            goto fail;
    }
    if (cfg->linear_api_key) {
        struct linear_opts lo = {.http = worker_http(w),
                                 .limit = p->linear_limit,
                                 .api_url = cfg->linear_api_url,
                                 .api_key = cfg->linear_api_key,
                                 .team_id = cfg->linear_team_id};
        p->linear = linear_new(&lo, &why);
        if (!p->linear)
            goto fail;
    }
    worker_register(w, &chatwoot_event_type);
    worker_register(w, &retrieve_type);
    worker_register(w, &decide_type);
    worker_register(w, &reply_type);
    worker_register(w, &escalate_type);
    worker_register(w, &linear_issue_type);
    worker_register(w, &private_note_type);
    worker_register(w, &contact_sync_type);
    w->app = p;
    w->app_close = pipeline_app_close;
    if (contact_sync_start(p, err, errcap) != 0)
        return -1; /* the worker closes the pipeline with itself */
    const struct inbox_settings *d = inbox_config_get(p->inboxes, 0);
    log_info("pipeline: %s, %s, Chatwoot %s, Slack %s, Linear %s, inbox config %s",
             p->llm ? "LLM answers" : "retrieval-only (no LLM_BASE_URL)",
             cfg->shadow ? "shadow mode (effects recorded, not sent)" : "live",
             p->chatwoot ? "on" : "off", d->slack_webhook_url ? "on" : "off",
             p->linear ? "on" : "off", cfg->inbox_config_path ? cfg->inbox_config_path : "none");
    return 0;
fail:
    snprintf(err, errcap, "%s", why ? why : "pipeline setup failed");
    free(why);
fail_err:
    pipeline_close(p);
    return -1;
}

static void pipeline_pg_closed(void *arg)
{
    (void)arg;
}

void pipeline_close(struct pipeline *p)
{
    if (p->w && p->w->app == p) {
        p->w->app = NULL;
        p->w->app_close = NULL;
    }
    contact_sync_stop(p);
    if (p->pg) {
        kb_search_forget_stats(p->pg);
        pg_pool_close(p->pg, pipeline_pg_closed, NULL);
    }
    p->pg = NULL;
    chatwoot_free(p->chatwoot);
    llm_free(p->llm);
    linear_free(p->linear);
    p->chatwoot = NULL;
    p->llm = NULL;
    p->linear = NULL;
    while (p->slacks) {
        struct pipeline_slack *s = p->slacks;
        p->slacks = s->next;
        slack_free(s->client);
        rate_limit_free(s->limit);
        free(s->url);
        free(s);
    }
    rate_limit_free(p->chatwoot_limit);
    rate_limit_free(p->llm_limit);
    rate_limit_free(p->slack_limit);
    rate_limit_free(p->linear_limit);
    p->chatwoot_limit = p->llm_limit = p->slack_limit = p->linear_limit = NULL;
    inbox_config_free(p->inboxes);
    p->inboxes = NULL;
}

struct pipeline *pipeline_of(struct job_ctx *ctx)
{
    return job_ctx_worker(ctx)->app;
}

long long pipeline_turn_arg(struct job_ctx *ctx, const char *klass)
{
    const struct job *j = job_ctx_job(ctx);
    json_t *id = json_array_get(j->args, 0);
    if (json_array_size(j->args) != 1 || !json_is_integer(id) || json_integer_value(id) <= 0) {
        job_done(ctx, job_error_new(JOB_ERR_PERMANENT, "ArgumentError",
                                    "%s expects args [turn_id] (a positive integer)", klass));
        return -1;
    }
    return (long long)json_integer_value(id);
}

int pipeline_last_attempt(const struct pipeline *p, const struct job *j)
{
    long long max;
    switch (j->retry_mode) {
    case JOB_RETRY_MAX:
        max = j->retry_max;
        break;
    case JOB_RETRY_DISCARD:
        return 1;
    default:
        max = p->w->cfg->max_retries;
        break;
    }
    long long count = j->has_retry_count ? j->retry_count : -1;
    return count + 1 >= max;
}

/* ---- enqueue ------------------------------------------------------------------------- */

struct pipeline_push {
    pipeline_enqueue_cb cb;
    void *arg;
    struct worker *w;
    int now; /* pushed onto its queue (not scheduled) */
    char klass[40];
    char why[256]; /* a push that could not start: reported from a timer */
    uv_timer_t timer;
};

static void pipeline_push_on_done(const char *error, void *data)
{
    struct pipeline_push *push = data;
    struct job_error *err = NULL;
    if (error)
        err = job_error_new(JOB_ERR_RETRY, "Tierone::EnqueueFailed", "enqueue %s: %s", push->klass,
                            error);
    else if (push->now)
        worker_fetch_wake(push->w); /* the next step runs without waiting out an idle pause */
    push->cb(err, push->arg);
    free(push);
}

static void pipeline_push_closed(uv_handle_t *h)
{
    free(h->data);
}

static void pipeline_push_on_timer(uv_timer_t *t)
{
    struct pipeline_push *push = t->data;
    push->cb(job_error_new(JOB_ERR_RETRY, "Tierone::EnqueueFailed", "enqueue %s: %s", push->klass,
                           push->why),
             push->arg);
    uv_close((uv_handle_t *)t, pipeline_push_closed);
}

int pipeline_enqueue(struct pipeline *p, const char *klass, long long turn_id, long long delay_ms,
                     pipeline_enqueue_cb cb, void *arg)
{
    size_t i = 0;
    while (i < sizeof pipeline_classes / sizeof pipeline_classes[0] &&
           strcmp(pipeline_classes[i].klass, klass) != 0)
        i++;
    if (i == sizeof pipeline_classes / sizeof pipeline_classes[0])
        return -1;
    char args[40];
    snprintf(args, sizeof args, "[%lld]", turn_id);
    struct sidekiq_job_spec spec = {
        .klass = klass, .queue = pipeline_classes[i].queue, .args = args};
    if (pipeline_classes[i].ai) {
        spec.retry = SIDEKIQ_RETRY_MAX;
        spec.retry_max = p->cfg->ai_retries;
    }
    if (delay_ms > 0)
        spec.at = clock_wall_s() + (double)delay_ms / 1000.0;
    struct sidekiq_opts so = {.ts_format = (enum job_ts_format)p->w->cfg->timestamp_format};
    struct pipeline_push *push = xcalloc(1, sizeof *push);
    push->cb = cb;
    push->arg = arg;
    push->w = p->w;
    push->now = delay_ms <= 0;
    snprintf(push->klass, sizeof push->klass, "%s", klass);
    if (sidekiq_push(p->w->redis, &so, &spec, NULL, pipeline_push_on_done, push, push->why,
                     sizeof push->why) != 0) {
        /* Redis is down: the callback still runs later, never from inside this call. */
        uv_timer_init(p->w->loop, &push->timer);
        push->timer.data = push;
        uv_timer_start(&push->timer, pipeline_push_on_timer, 0, 0);
    }
    return 0;
}

/* ---- helpers ------------------------------------------------------------------------- */

struct slack *pipeline_slack(struct pipeline *p, const struct inbox_settings *inbox)
{
    const char *url = inbox->slack_webhook_url;
    if (!url || !*url)
        return NULL;
    for (struct pipeline_slack *s = p->slacks; s; s = s->next)
        if (!strcmp(s->url, url))
            return s->client;
    struct pipeline_slack *s = xcalloc(1, sizeof *s);
    const char *why = NULL;
    /* Slack allows about one message per second per webhook (APIS.md §4); the bucket is
     * named by a hash of the URL, which is a secret. */
    char hex[65], name[32];
    digest_sha256_hex(url, strlen(url), hex);
    snprintf(name, sizeof name, "slack:%.16s", hex);
    s->limit = rate_limit_new(p->w->redis, name, 1.0, 3.0, &why);
    char *err = NULL;
    struct slack_opts so = {.http = worker_http(p->w), .limit = s->limit, .webhook_url = url};
    s->client = slack_new(&so, &err);
    if (!s->client) {
        log_error("inbox %lld: Slack webhook unusable: %s", inbox->inbox_id, err ? err : "?");
        free(err);
        rate_limit_free(s->limit);
        free(s);
        return NULL;
    }
    s->url = xstrdup(url);
    s->next = p->slacks;
    p->slacks = s;
    return s->client;
}

char *pipeline_conversation_url(const struct pipeline *p, long long account, long long conversation)
{
    const char *base = p->cfg->chatwoot_base_url ? p->cfg->chatwoot_base_url : "";
    size_t n = strlen(base);
    while (n > 0 && base[n - 1] == '/')
        n--;
    return xasprintf("%.*s/app/accounts/%lld/conversations/%lld", (int)n, base, account,
                     conversation);
}

int pipeline_shadow(const struct pipeline *p, const struct inbox_settings *inbox)
{
    return inbox->shadow || !p->chatwoot; /* without Chatwoot nothing can be sent */
}
