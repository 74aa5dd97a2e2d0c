/* worker: the context of one tierone-worker process (STYLE.md habit 20: one named context
 * passed explicitly). It owns the loop's long-lived parts: the Redis connection, the job
 * slots, the fetcher, poller, heartbeat, recovery, the admin server and the HTTP client.
 *
 * Life: worker_init -> worker_start -> uv_run -> (SIGTERM) worker_stop -> ... -> the loop
 * ends by itself when everything is closed -> worker_free. */
#ifndef TIERONE_WORKER_H
#define TIERONE_WORKER_H

#include "job.h"
#include "job_type.h"
#include "redis.h"

#include <stdint.h>
#include <uv.h>

struct http_client;
struct metrics_registry;
struct admin;

/* Settings, filled from the config table in main.c (see worker_config.c). */
struct worker_settings {
    char *redis_url;
    char *queues; /* "events,ai:2,actions" — name or name:weight */
    long long concurrency;
    long long shutdown_timeout_ms;
    long long admin_port; /* 0 = no admin server */
    char *admin_host;
    int timestamp_format;       /* enum job_ts_format */
    long long max_retries;      /* Sidekiq's default 25 */
    long long dead_max_jobs;    /* 10,000 */
    long long dead_timeout_s;   /* 180 days */
    long long poll_interval_ms; /* 0 = Sidekiq's scaled interval */
    long long beat_interval_ms; /* 5000 */
    long long lease_ttl_s;      /* in-progress lease; expired = crashed process */
    long long recovery_interval_ms;
    long long max_recoveries;    /* orphaned this many times -> dead */
    long long fetch_idle_max_ms; /* longest pause between fetches when queues are empty */
    char *tag;
    int log_level; /* enum log_level */
    int diagnostic_jobs;
};

/* One queue in fetch order. */
struct worker_queue {
    char *name;
    int weight;
};

struct job_ctx;

struct worker {
    uv_loop_t *loop;
    struct worker_settings *cfg;
    char identity[300];
    char store_key[340]; /* tierone:inprogress:<identity>, formatted once */
    char lease_key[340]; /* tierone:lease:<identity> */
    char hostname[256];
    double started_at;

    struct redis *redis;
    struct http_client *http;
    struct metrics_registry *metrics;
    struct admin *admin;

    /* job types */
    const struct job_type **types;
    size_t ntypes;

    /* queues */
    struct worker_queue *queues;
    size_t nqueues;
    int weighted;

    /* slots */
    struct job_ctx *slots;      /* concurrency entries */
    struct job_ctx *free_slots; /* singly linked through ctx->next_free */
    size_t busy;
    uint64_t seq; /* in-progress field counter */

    /* fetcher */
    int fetch_in_flight;
    unsigned long long lost_fetches[32]; /* prefixes of fetches whose reply never came */
    size_t nlost;
    uint32_t idle_ms; /* current idle backoff */
    int fetch_again;  /* woken while a fetch was in flight: no idle pause after it */
    uv_timer_t fetch_timer;

    /* waker: BRPOP on the queues' wake lists while the fetcher pauses (waker.c) */
    struct redis *wake_redis;
    const char **wake_argv; /* BRPOP tierone:wake:<queue>... <timeout> */
    size_t wake_argc;
    int wake_waiting;
    int wake_off; /* an error reply: polling only */
    unsigned long long wakeups;

    /* outcomes waiting to be written to Redis (acks, retries, deaths) */
    struct outcome *out_head, *out_tail;
    size_t out_count;
    int out_in_flight;
    uv_check_t flush_check;

    /* poller, heartbeat, recovery */
    uv_timer_t poll_timer;
    int poll_in_flight;
    long long process_count;
    uv_timer_t beat_timer;
    uv_timer_t lease_timer;
    int beat_in_flight;
    uint64_t rtt_us;
    uv_timer_t recovery_timer;
    int recovery_in_flight;

    /* stats not yet flushed to stat:* */
    long long stat_processed, stat_failed;
    /* lifetime counters for /metrics */
    long long total_processed, total_failed, total_retried, total_dead, total_recovered;
    long long total_rescheduled;

    /* shutdown */
    int quiet;
    int stopping;     /* SIGTERM seen */
    int hard_stopped; /* deadline passed, leftovers requeued */
    int closing;
    uv_timer_t stop_timer;
    uv_signal_t sig_term, sig_int, sig_tstp;
    /* the application on top of the engine (the support pipeline): job types reach it
     * through job_ctx_worker(ctx)->app; app_close runs when the worker closes */
    void *app;
    void (*app_close)(void *app);
};

/* Build the worker on loop from cfg (borrowed; must outlive the worker). Returns 0, or -1
 * with a reason in err. */
int worker_init(struct worker *w, uv_loop_t *loop, struct worker_settings *cfg, char *err,
                size_t errcap);
/* Register a job type (before worker_start). */
void worker_register(struct worker *w, const struct job_type *type);
/* Start fetching, polling, heartbeats and signal handling. */
int worker_start(struct worker *w);
/* Begin a graceful stop (as SIGTERM does). */
void worker_stop(struct worker *w);
/* Stop fetching new jobs (as SIGTSTP or the Web UI's "quiet" do). */
void worker_quiet(struct worker *w);
/* Free what is left after the loop has ended. */
void worker_free(struct worker *w);
/* A job was just pushed (the push's reply came back) onto a queue this process may serve:
 * end the fetcher's idle pause and fetch now, or, with a fetch in flight that may have run
 * before the push, fetch again right after it instead of pausing. Job types that enqueue
 * the next step of a chain call it, so a chain does not wait out an idle pause (up to
 * TIERONE_FETCH_IDLE_MAX) at every step. */
void worker_fetch_wake(struct worker *w);
/* The HTTP client shared by job types (created lazily). */
struct http_client *worker_http(struct worker *w);

#endif
