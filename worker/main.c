/* tierone-worker: consumes Sidekiq jobs from Redis on one libuv loop.
 * main() reads top to bottom: config, log, worker, job types, run, close. */
#include "common_settings.h"
#include "config.h"
#include "diagnostic.h"
#include "healthcheck.h"
#include "engine.h"
#include "http_client.h"
#include "linear.h"
#include "llm.h"
#include "log.h"
#include "pg.h"
#include "pipeline.h"

#include <malloc.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

/* The worker's settings and the pipeline's, parsed by one table. */
struct worker_main_settings {
    struct worker_settings worker;
    struct pipeline_settings pipeline;
};

#define S(field) offsetof(struct worker_main_settings, worker.field)
#define P(field) offsetof(struct worker_main_settings, pipeline.field)
/* The text of a number macro, for a default the library owns. */
#define TEXT_OF(n)  TEXT_OF_(n)
#define TEXT_OF_(n) #n

static const char *const llm_format_names[] = {"json_schema", "json_object", "none", NULL};
static const char *const llm_token_param_names[] = {"max_completion_tokens", "max_tokens", NULL};

static const struct config_def worker_defs[] = {
    COMMON_SETTING_REDIS_URL(struct worker_main_settings, worker.redis_url),
    {.key = "queues",
     .env = "TIERONE_QUEUES",
     .type = CONFIG_STRING,
     .def = "actions:3,ai:2,events:2,linear:1,sync:1",
     .help = "queues to fetch from: name[,name...] (strict order) or name:weight,... (weighted)",
     .offset = S(queues)},
    {.key = "concurrency",
     .env = "TIERONE_CONCURRENCY",
     .type = CONFIG_INT,
     .def = "100",
     .min = 1,
     .max = 10000,
     .bounded = true,
     .help = "jobs in flight in this process",
     .offset = S(concurrency)},
    {.key = "shutdown_timeout",
     .env = "TIERONE_SHUTDOWN_TIMEOUT",
     .type = CONFIG_DURATION,
     .def = "25s",
     .min = 0,
     .max = 3600000,
     .bounded = true,
     .help = "on SIGTERM, how long running jobs may finish before they are put back",
     .offset = S(shutdown_timeout_ms)},
    COMMON_SETTING_ADMIN_HOST(struct worker_main_settings, worker.admin_host),
    {.key = "admin_port",
     .env = "TIERONE_ADMIN_PORT",
     .type = CONFIG_INT,
     .def = "9091",
     .min = 0,
     .max = 65535,
     .bounded = true,
     .help = "port of the admin server; 0 = off",
     .offset = S(admin_port)},
    COMMON_SETTING_TIMESTAMP_FORMAT(struct worker_main_settings, worker.timestamp_format),
    {.key = "max_retries",
     .env = "TIERONE_MAX_RETRIES",
     .type = CONFIG_INT,
     .def = "25",
     .min = 0,
     .max = 1000,
     .bounded = true,
     .help = "retries of a job whose retry field is true (Sidekiq's default 25)",
     .offset = S(max_retries)},
    {.key = "dead_max_jobs",
     .env = "TIERONE_DEAD_MAX_JOBS",
     .type = CONFIG_INT,
     .def = "10000",
     .min = 1,
     .max = 10000000,
     .bounded = true,
     .help = "dead set size cap (Sidekiq's trim)",
     .offset = S(dead_max_jobs)},
    {.key = "dead_timeout_s",
     .env = "TIERONE_DEAD_TIMEOUT_S",
     .type = CONFIG_INT,
     .def = "15552000",
     .min = 60,
     .max = 315360000,
     .bounded = true,
     .help = "seconds a dead job is kept (Sidekiq's 180 days)",
     .offset = S(dead_timeout_s)},
    {.key = "poll_interval",
     .env = "TIERONE_POLL_INTERVAL",
     .type = CONFIG_DURATION,
     .def = "0",
     .min = 0,
     .max = 3600000,
     .bounded = true,
     .help = "average retry/schedule poll interval; 0 = Sidekiq's (5 s x processes)",
     .offset = S(poll_interval_ms)},
    {.key = "beat_interval",
     .env = "TIERONE_BEAT_INTERVAL",
     .type = CONFIG_DURATION,
     .def = "5s",
     .min = 100,
     .max = 30000,
     .bounded = true,
     .help = "heartbeat period",
     .offset = S(beat_interval_ms)},
    {.key = "heartbeat_ttl",
     .env = "TIERONE_HEARTBEAT_TTL",
     .type = CONFIG_INT,
     .def = "60",
     .min = 1,
     .max = 3600,
     .bounded = true,
     .help = "seconds without a heartbeat after which this process's jobs are recovered",
     .offset = S(lease_ttl_s)},
    {.key = "recovery_interval",
     .env = "TIERONE_RECOVERY_INTERVAL",
     .type = CONFIG_DURATION,
     .def = "15s",
     .min = 100,
     .max = 3600000,
     .bounded = true,
     .help = "how often to look for jobs of crashed processes",
     .offset = S(recovery_interval_ms)},
    {.key = "max_recoveries",
     .env = "TIERONE_MAX_RECOVERIES",
     .type = CONFIG_INT,
     .def = "3",
     .min = 1,
     .max = 100,
     .bounded = true,
     .help = "a job orphaned by a crash this many times goes to the dead set",
     .offset = S(max_recoveries)},
    {.key = "fetch_idle_max",
     .env = "TIERONE_FETCH_IDLE_MAX",
     .type = CONFIG_DURATION,
     .def = "50ms",
     .min = 1,
     .max = 2000,
     .bounded = true,
     .help = "longest pause between fetches while every queue is empty",
     .offset = S(fetch_idle_max_ms)},
    {.key = "tag",
     .env = "TIERONE_TAG",
     .type = CONFIG_STRING,
     .def = "tierone",
     .help = "tag shown in Sidekiq's Web UI",
     .offset = S(tag)},
    COMMON_SETTING_LOG_LEVEL(struct worker_main_settings, worker.log_level),
    {.key = "diagnostic_jobs",
     .env = "TIERONE_DIAGNOSTIC_JOBS",
     .type = CONFIG_BOOL,
     .def = "0",
     .help = "register Tierone::Noop, Sleep, Fail, Record and HttpGet",
     .offset = S(diagnostic_jobs)},
    /* ---- the support pipeline (queues/pipeline.h) ---- */
    {.key = "database_url",
     .env = "TIERONE_DATABASE_URL",
     .type = CONFIG_STRING,
     .secret = true,
     .help = "PostgreSQL URL (knowledge base, turn ledger); unset = the pipeline is off",
     .offset = P(database_url)},
    {.key = "database_pool",
     .env = "TIERONE_DATABASE_POOL",
     .type = CONFIG_INT,
     .def = "8",
     .min = 1,
     .max = 200,
     .bounded = true,
     .help = "PostgreSQL connections of this process",
     .offset = P(database_pool)},
    {.key = "database_prepare",
     .env = "TIERONE_DATABASE_PREPARE",
     .type = CONFIG_BOOL,
     .def = "1",
     .help = "prepare statements once per connection; turn off behind PgBouncer < 1.21 in "
             "transaction pooling mode",
     .offset = P(database_prepare)},
    {.key = "database_pipeline",
     .env = "TIERONE_DATABASE_PIPELINE",
     .type = CONFIG_INT,
     .def = TEXT_OF(PG_PIPELINE_DEPTH),
     .min = 1,
     .max = 256,
     .bounded = true,
     .help = "statements in flight on one PostgreSQL connection (pipeline mode); 1 behind a "
             "pooler that cannot pipeline",
     .offset = P(database_pipeline)},
    {.key = "chatwoot_base_url",
     .env = "CHATWOOT_BASE_URL",
     .type = CONFIG_STRING,
     .help = "Chatwoot's URL, e.g. https://chat.example.com (required unless shadow)",
     .offset = P(chatwoot_base_url)},
    {.key = "chatwoot_bot_token",
     .env = "CHATWOOT_BOT_TOKEN",
     .type = CONFIG_STRING,
     .secret = true,
     .help = "the Agent Bot's access token (replies, notes, labels, hand-off)",
     .offset = P(chatwoot_bot_token)},
    {.key = "chatwoot_user_token",
     .env = "CHATWOOT_USER_TOKEN",
     .type = CONFIG_STRING,
     .secret = true,
     .help = "an administrator's access token (list messages, contacts)",
     .offset = P(chatwoot_user_token)},
    {.key = "chatwoot_rate",
     .env = "TIERONE_CHATWOOT_RATE",
     .type = CONFIG_INT,
     .def = "2400",
     .min = 0,
     .max = 1000000,
     .bounded = true,
     .help = "Chatwoot requests per minute for the whole fleet (rack-attack allows 3000 per "
             "IP); 0 = no limit",
     .offset = P(chatwoot_rate_per_min)},
    {.key = "llm_base_url",
     .env = "LLM_BASE_URL",
     .type = CONFIG_STRING,
     .help = "OpenAI-compatible endpoint (OpenAI, LiteLLM, vLLM, Ollama); unset = "
             "retrieval-only answers",
     .offset = P(llm_base_url)},
    {.key = "llm_api_key",
     .env = "LLM_API_KEY",
     .type = CONFIG_STRING,
     .secret = true,
     .help = "bearer key of the LLM endpoint",
     .offset = P(llm_api_key)},
    {.key = "llm_model",
     .env = "LLM_MODEL",
     .type = CONFIG_STRING,
     .def = "gpt-4o-mini",
     .help = "chat model (per-inbox \"model\" overrides it)",
     .offset = P(llm_model)},
    {.key = "llm_response_format",
     .env = "LLM_RESPONSE_FORMAT",
     .type = CONFIG_ENUM,
     .def = "json_schema",
     .choices = llm_format_names,
     .help = "json_schema (structured outputs), json_object (JSON mode) or none",
     .offset = P(llm_format)},
    {.key = "llm_token_param",
     .env = "LLM_TOKEN_PARAM",
     .type = CONFIG_ENUM,
     .def = "max_completion_tokens",
     .choices = llm_token_param_names,
     .help = "name of the token cap: max_completion_tokens or max_tokens (older servers)",
     .offset = P(llm_token_param)},
    {.key = "llm_max_tokens",
     .env = "LLM_MAX_TOKENS",
     .type = CONFIG_INT,
     .def = "1000",
     .min = 0,
     .max = 1000000,
     .bounded = true,
     .help = "token cap of an answer; 0 = none sent",
     .offset = P(llm_max_tokens)},
    {.key = "llm_timeout",
     .env = "LLM_TIMEOUT",
     .type = CONFIG_DURATION,
     .def = "60s",
     .min = 100,
     .max = 600000,
     .bounded = true,
     .help = "deadline of one LLM request",
     .offset = P(llm_timeout_ms)},
    {.key = "llm_rate",
     .env = "TIERONE_LLM_RATE",
     .type = CONFIG_INT,
     .def = "0",
     .min = 0,
     .max = 10000000,
     .bounded = true,
     .help = "LLM requests per minute for the whole fleet; 0 = no limit",
     .offset = P(llm_rate_per_min)},
    {.key = "slack_webhook_url",
     .env = "SLACK_WEBHOOK_URL",
     .type = CONFIG_STRING,
     .secret = true,
     .help = "Slack incoming webhook for escalations; unset = none",
     .offset = P(slack_webhook_url)},
    {.key = "linear_api_key",
     .env = "LINEAR_API_KEY",
     .type = CONFIG_STRING,
     .secret = true,
     .help = "Linear API key (lin_api_...) or OAuth token; unset = no Linear issues",
     .offset = P(linear_api_key)},
    {.key = "linear_team_id",
     .env = "LINEAR_TEAM_ID",
     .type = CONFIG_STRING,
     .help = "Linear team of new issues (per-inbox \"linear_team_id\" overrides it)",
     .offset = P(linear_team_id)},
    {.key = "linear_api_url",
     .env = "LINEAR_API_URL",
     .type = CONFIG_STRING,
     .def = LINEAR_DEFAULT_API_URL,
     .help = "Linear's GraphQL endpoint",
     .offset = P(linear_api_url)},
    {.key = "linear_rate",
     .env = "TIERONE_LINEAR_RATE",
     .type = CONFIG_INT,
     .def = "1200",
     .min = 0,
     .max = 1000000,
     .bounded = true,
     .help = "Linear requests per hour for the whole fleet (Linear allows 1,500 per API key); "
             "0 = no limit",
     .offset = P(linear_rate_per_hour)},
    {.key = "inbox_config",
     .env = "TIERONE_INBOX_CONFIG",
     .type = CONFIG_STRING,
     .help = "per-inbox JSON settings file (queues/inbox_config.h); unset = defaults",
     .offset = P(inbox_config_path)},
    {.key = "shadow",
     .env = "TIERONE_SHADOW",
     .type = CONFIG_BOOL,
     .def = "0",
     .help = "record every outward effect in the effects table instead of sending it",
     .offset = P(shadow)},
    {.key = "debounce",
     .env = "TIERONE_DEBOUNCE",
     .type = CONFIG_DURATION,
     .def = "3s",
     .min = 0,
     .max = 600000,
     .bounded = true,
     .help = "wait after a customer message so a burst gets one answer",
     .offset = P(debounce_ms)},
    {.key = "ai_retries",
     .env = "TIERONE_AI_RETRIES",
     .type = CONFIG_INT,
     .def = "3",
     .min = 0,
     .max = 25,
     .bounded = true,
     .help = "retries of Retrieve and Decide before the turn is escalated (fail-safe)",
     .offset = P(ai_retries)},
    {.key = "contact_sync_sql",
     .env = "TIERONE_CONTACT_SYNC_SQL",
     .type = CONFIG_STRING,
     .help = "SELECT identifier, name, email, phone, attributes ... for ContactSync; unset = off",
     .offset = P(contact_sync_sql)},
    {.key = "contact_sync_database_url",
     .env = "TIERONE_CONTACT_SYNC_DATABASE_URL",
     .type = CONFIG_STRING,
     .secret = true,
     .help = "database the ContactSync query runs on; unset = TIERONE_DATABASE_URL",
     .offset = P(contact_sync_database_url)},
    {.key = "contact_sync_account",
     .env = "TIERONE_CONTACT_SYNC_ACCOUNT",
     .type = CONFIG_INT,
     .def = "1",
     .min = 1,
     .max = 1e12,
     .bounded = true,
     .help = "Chatwoot account the synced contacts belong to",
     .offset = P(contact_sync_account)},
    {.key = "contact_sync_interval",
     .env = "TIERONE_CONTACT_SYNC_INTERVAL",
     .type = CONFIG_DURATION,
     .def = "10m",
     .min = 1000,
     .max = 86400000,
     .bounded = true,
     .help = "how often ContactSync runs (the first run of each UTC day is a full pass)",
     .offset = P(contact_sync_interval_ms)},
};

static const struct config_spec worker_spec = {
    .program = "tierone-worker",
    .summary = "Runs Sidekiq-compatible jobs from Redis on one event loop.",
    .defs = worker_defs,
    .ndefs = CONFIG_COUNT(worker_defs),
};

int main(int argc, char **argv)
{
    struct worker_main_settings all = {0};
    struct worker_settings *cfg = &all.worker;
    bool healthcheck = healthcheck_take_flag(&argc, argv);
    enum config_action act = config_main(&worker_spec, &all, argc, argv, NULL);
    if (act != CONFIG_RUN)
        return healthcheck && act == CONFIG_EXIT_USAGE ? 1 : act;
    if (healthcheck) { /* --healthcheck: is the running worker's /healthz answering? */
        int rc = healthcheck_daemon(cfg->admin_host, cfg->admin_port, NULL, 0);
        config_free(&worker_spec, &all);
        return rc;
    }
    log_init("worker", (enum log_level)cfg->log_level);
    /* A peer that resets a socket (an admin client, a dying Redis) must not kill us. */
    signal(SIGPIPE, SIG_IGN);
    /* No fastbins (tcache still serves small blocks). Job payloads, result rows and HTTP
     * bodies are larger than a fastbin, and each such request consolidated every fastbin
     * first: malloc_consolidate and unlink_chunk were a tenth of the worker's CPU in the
     * pipeline's burst; without fastbins its CPU a turn fell by 4 % (bench/README.md). */
    mallopt(M_MXFAST, 0);

    uv_loop_t loop;
    uv_loop_init(&loop);
    struct worker w;
    struct pipeline pipeline;
    char err[256];
    int failed = worker_init(&w, &loop, cfg, err, sizeof err) != 0;
    if (!failed && cfg->diagnostic_jobs)
        diagnostic_register(&w);
    if (!failed && all.pipeline.database_url)
        failed = pipeline_init(&pipeline, &w, &all.pipeline, err, sizeof err) != 0;
    else if (!failed)
        log_warn("TIERONE_DATABASE_URL is not set: the support pipeline's job types are off");
    if (failed) {
        fprintf(stderr, "tierone-worker: %s\n", err);
        if (w.app_close)
            w.app_close(w.app);
        uv_run(&loop, UV_RUN_NOWAIT); /* let a failed listener close */
        worker_free(&w);
        config_free(&worker_spec, &all);
        return 2;
    }
    worker_start(&w);
    uv_run(&loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(&loop);
    if (rc != 0)
        log_error("event loop closed with handles still open: %s", uv_strerror(rc));
    worker_free(&w);
    http_client_global_cleanup();
    config_free(&worker_spec, &all);
    return rc == 0 ? 0 : 1;
}
