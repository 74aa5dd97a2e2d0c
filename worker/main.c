/* tierone-worker: consumes Sidekiq jobs from Redis on one libuv loop.
 * main() reads top to bottom: config, log, worker, job types, run, close. */
#include "common_settings.h"
#include "config.h"
#include "diagnostic.h"
#include "engine.h"
#include "http_client.h"
#include "log.h"

#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#define S(field) offsetof(struct worker_settings, field)

static const struct config_def worker_defs[] = {
    COMMON_SETTING_REDIS_URL(struct worker_settings, redis_url),
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
    COMMON_SETTING_ADMIN_HOST(struct worker_settings, admin_host),
    {.key = "admin_port",
     .env = "TIERONE_ADMIN_PORT",
     .type = CONFIG_INT,
     .def = "9091",
     .min = 0,
     .max = 65535,
     .bounded = true,
     .help = "port of the admin server; 0 = off",
     .offset = S(admin_port)},
    COMMON_SETTING_TIMESTAMP_FORMAT(struct worker_settings, timestamp_format),
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
    COMMON_SETTING_LOG_LEVEL(struct worker_settings, log_level),
    {.key = "diagnostic_jobs",
     .env = "TIERONE_DIAGNOSTIC_JOBS",
     .type = CONFIG_BOOL,
     .def = "0",
     .help = "register Tierone::Noop, Sleep, Fail, Record and HttpGet",
     .offset = S(diagnostic_jobs)},
};

static const struct config_spec worker_spec = {
    .program = "tierone-worker",
    .summary = "Runs Sidekiq-compatible jobs from Redis on one event loop.",
    .defs = worker_defs,
    .ndefs = CONFIG_COUNT(worker_defs),
};

int main(int argc, char **argv)
{
    struct worker_settings cfg = {0};
    enum config_action act = config_main(&worker_spec, &cfg, argc, argv, NULL);
    if (act != CONFIG_RUN)
        return act;
    log_init("worker", (enum log_level)cfg.log_level);
    /* A peer that resets a socket (an admin client, a dying Redis) must not kill us. */
    signal(SIGPIPE, SIG_IGN);

    uv_loop_t loop;
    uv_loop_init(&loop);
    struct worker w;
    char err[256];
    if (worker_init(&w, &loop, &cfg, err, sizeof err) != 0) {
        fprintf(stderr, "tierone-worker: %s\n", err);
        uv_run(&loop, UV_RUN_NOWAIT); /* let a failed listener close */
        worker_free(&w);
        config_free(&worker_spec, &cfg);
        return 2;
    }
    if (cfg.diagnostic_jobs)
        diagnostic_register(&w);
    worker_start(&w);
    uv_run(&loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(&loop);
    if (rc != 0)
        log_error("event loop closed with handles still open: %s", uv_strerror(rc));
    worker_free(&w);
    http_client_global_cleanup();
    config_free(&worker_spec, &cfg);
    return rc == 0 ? 0 : 1;
}
