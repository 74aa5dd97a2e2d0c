/* monitor: what the worker tells its operators over HTTP: /healthz (the loop answers),
 * /readyz (503 with a reason while Redis is unreachable or the process is stopping) and
 * /metrics (Prometheus text: job counts by outcome, slots, Redis state, memory). */
#include "engine.h"
#include "admin.h"
#include "http_client.h"
#include "metrics.h"

#include <stdio.h>

static double mon_processed(void *arg)
{
    return (double)((struct worker *)arg)->total_processed;
}
static double mon_failed(void *arg)
{
    return (double)((struct worker *)arg)->total_failed;
}
static double mon_retried(void *arg)
{
    return (double)((struct worker *)arg)->total_retried;
}
static double mon_rescheduled(void *arg)
{
    return (double)((struct worker *)arg)->total_rescheduled;
}
static double mon_dead(void *arg)
{
    return (double)((struct worker *)arg)->total_dead;
}
static double mon_recovered(void *arg)
{
    return (double)((struct worker *)arg)->total_recovered;
}
static double mon_wakeups(void *arg)
{
    return (double)((struct worker *)arg)->wakeups;
}
static double mon_busy(void *arg)
{
    return (double)((struct worker *)arg)->busy;
}
static double mon_concurrency(void *arg)
{
    return (double)((struct worker *)arg)->cfg->concurrency;
}
static double mon_pending_outcomes(void *arg)
{
    struct worker *w = arg;
    return (double)w->out_count;
}
static double mon_redis_up(void *arg)
{
    struct worker *w = arg;
    return w->redis && redis_is_up(w->redis) ? 1 : 0;
}
static double mon_quiet(void *arg)
{
    return ((struct worker *)arg)->quiet ? 1 : 0;
}
static double mon_http_in_flight(void *arg)
{
    struct worker *w = arg;
    if (!w->http)
        return 0;
    struct http_client_stats st;
    http_client_get_stats(w->http, &st);
    return (double)st.in_flight;
}

static const char *mon_ready(void *ud)
{
    struct worker *w = ud;
    if (w->stopping)
        return "stopping";
    if (!w->redis || !redis_is_up(w->redis))
        return "redis down";
    return NULL;
}

static void mon_metrics(struct buf *out, void *ud)
{
    struct worker *w = ud;
    metrics_render(w->metrics, out);
}

int monitor_start(struct worker *w, char *err, size_t errcap)
{
    if (w->cfg->admin_port <= 0)
        return 0;
    w->metrics = metrics_registry_new();
    metrics_counter_fn_new(w->metrics, "tierone_jobs_processed_total",
                           "Jobs finished (success or failure).", mon_processed, w);
    metrics_counter_fn_new(w->metrics, "tierone_jobs_failed_total", "Jobs that failed.", mon_failed,
                           w);
    metrics_counter_fn_new(w->metrics, "tierone_jobs_retried_total",
                           "Failures scheduled for a retry.", mon_retried, w);
    metrics_counter_fn_new(w->metrics, "tierone_jobs_dead_total", "Jobs sent to the dead set.",
                           mon_dead, w);
    metrics_counter_fn_new(w->metrics, "tierone_jobs_rescheduled_total",
                           "Jobs put back on the schedule by a rate limit (not failures).",
                           mon_rescheduled, w);
    metrics_counter_fn_new(w->metrics, "tierone_jobs_recovered_total",
                           "Jobs of crashed processes put back on their queues.", mon_recovered, w);
    metrics_counter_fn_new(w->metrics, "tierone_fetch_wakeups_total",
                           "Idle pauses ended early by a producer's wake token.", mon_wakeups, w);
    metrics_gauge_fn_new(w->metrics, "tierone_jobs_busy", "Jobs running now.", mon_busy, w);
    metrics_gauge_fn_new(w->metrics, "tierone_concurrency", "Job slots.", mon_concurrency, w);
    metrics_gauge_fn_new(w->metrics, "tierone_outcomes_pending",
                         "Job outcomes waiting to be written to Redis.", mon_pending_outcomes, w);
    metrics_gauge_fn_new(w->metrics, "tierone_redis_up", "1 when Redis is reachable.", mon_redis_up,
                         w);
    metrics_gauge_fn_new(w->metrics, "tierone_quiet", "1 when no new jobs are fetched.", mon_quiet,
                         w);
    metrics_gauge_fn_new(w->metrics, "tierone_http_requests_in_flight",
                         "Outgoing HTTP requests in flight.", mon_http_in_flight, w);
    metrics_gauge_fn_new(w->metrics, "process_resident_memory_bytes", "Resident memory.",
                         metrics_rss_bytes_fn, NULL);
    struct admin_opts ao = {.host = w->cfg->admin_host,
                            .port = (int)w->cfg->admin_port,
                            .ready = mon_ready,
                            .metrics = mon_metrics,
                            .ud = w};
    w->admin = admin_start(w->loop, &ao, err, errcap);
    return w->admin ? 0 : -1;
}

void monitor_close(struct worker *w)
{
    if (w->admin) {
        admin_force_close(w->admin);
        w->admin = NULL;
    }
}
