/* worker: the process context and its life (see worker.h).
 *
 * Stop sequence (SIGTERM, SIGINT, or TERM from the Web UI):
 *   stopping: no more fetches; running jobs get up to shutdown_timeout_ms to finish
 *   -> (all done, or the deadline: running jobs are cancelled and abandoned)
 *   -> requeue: whatever is left in our in-progress store goes back to the head of its queue
 *   -> clear: stats flushed, process removed from `processes`, work hashes and lease deleted
 *   -> close: every handle closed; the loop ends by itself; main() runs uv_loop_close(). */
#include "engine.h"
#include "http_client.h"
#include "metrics.h"
#include "clock.h"
#include "log.h"
#include "xalloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

static void worker_finish_stop(struct worker *w);

const struct job_type *worker_find_type(const struct worker *w, const char *klass)
{
    for (size_t i = 0; i < w->ntypes; i++)
        if (strcmp(w->types[i]->klass, klass) == 0)
            return w->types[i];
    return NULL;
}

void worker_register(struct worker *w, const struct job_type *type)
{
    w->types = xrealloc(w->types, (w->ntypes + 1) * sizeof *w->types);
    w->types[w->ntypes++] = type;
}

static void worker_on_redis_state(struct redis *r, int up, void *data)
{
    struct worker *w = data;
    (void)r;
    if (up) {
        fetcher_reclaim(w);
        heartbeat_beat(w);
        runner_flush(w);
        fetcher_kick(w);
        if (w->stopping)
            worker_job_finished(w); /* outcomes waiting for Redis may now complete the stop */
    }
}

static void worker_make_identity(struct worker *w)
{
    const char *dyno = getenv("DYNO");
    if (dyno && *dyno)
        snprintf(w->hostname, sizeof w->hostname, "%s", dyno);
    else if (gethostname(w->hostname, sizeof w->hostname) != 0)
        snprintf(w->hostname, sizeof w->hostname, "localhost");
    w->hostname[sizeof w->hostname - 1] = '\0';
    unsigned char nonce[6];
    if (getrandom(nonce, sizeof nonce, 0) != sizeof nonce)
        for (size_t i = 0; i < sizeof nonce; i++)
            nonce[i] = (unsigned char)random();
    snprintf(w->identity, sizeof w->identity, "%s:%d:%02x%02x%02x%02x%02x%02x", w->hostname,
             (int)getpid(), nonce[0], nonce[1], nonce[2], nonce[3], nonce[4], nonce[5]);
    snprintf(w->store_key, sizeof w->store_key, KEY_INPROGRESS_FMT, w->identity);
    snprintf(w->lease_key, sizeof w->lease_key, KEY_LEASE_FMT, w->identity);
}

int worker_init(struct worker *w, uv_loop_t *loop, struct worker_settings *cfg, char *err,
                size_t errcap)
{
    memset(w, 0, sizeof *w);
    w->loop = loop;
    w->cfg = cfg;
    w->started_at = clock_wall_s();
    worker_make_identity(w);
    if (fetcher_parse_queues(w, cfg->queues, err, errcap) != 0)
        return -1;
    if (monitor_start(w, err, errcap) != 0)
        return -1;
    const char *why = NULL;
    struct redis_opts ro = {.url = cfg->redis_url,
                            .name = "tierone-worker",
                            .command_timeout_ms = 10000,
                            .on_state = worker_on_redis_state,
                            .data = w};
    w->redis = redis_new(loop, &ro, &why);
    if (!w->redis) {
        snprintf(err, errcap, "TIERONE_REDIS_URL %s", why);
        return -1;
    }
    runner_init(w);
    fetcher_init(w);
    return 0;
}

static void worker_on_signal(uv_signal_t *s, int signum)
{
    struct worker *w = s->data;
    if (signum == SIGTSTP) {
        log_info("SIGTSTP: quiet, no new jobs will be fetched");
        worker_quiet(w);
    } else if (w->stopping) {
        log_warn("%s again: stopping now", strsignal(signum));
        if (!w->closing) {
            runner_abandon_all(w);
            w->hard_stopped = 1;
            worker_finish_stop(w);
        }
    } else {
        worker_stop(w);
    }
}

int worker_start(struct worker *w)
{
    poller_init(w);
    waker_init(w);
    heartbeat_init(w);
    recovery_init(w);
    uv_timer_init(w->loop, &w->stop_timer);
    w->stop_timer.data = w;
    uv_signal_init(w->loop, &w->sig_term);
    uv_signal_init(w->loop, &w->sig_int);
    uv_signal_init(w->loop, &w->sig_tstp);
    w->sig_term.data = w->sig_int.data = w->sig_tstp.data = w;
    uv_signal_start(&w->sig_term, worker_on_signal, SIGTERM);
    uv_signal_start(&w->sig_int, worker_on_signal, SIGINT);
    uv_signal_start(&w->sig_tstp, worker_on_signal, SIGTSTP);
    char qlist[512] = "";
    for (size_t i = 0; i < w->nqueues; i++) {
        size_t len = strlen(qlist);
        snprintf(qlist + len, sizeof qlist - len, "%s%s", i ? "," : "", w->queues[i].name);
        if (w->weighted) {
            len = strlen(qlist);
            snprintf(qlist + len, sizeof qlist - len, ":%d", w->queues[i].weight);
        }
    }
    log_info("tierone-worker %s starting as %s: queues %s (%s), concurrency %lld, %zu job "
             "types",
             TIERONE_VERSION, w->identity, qlist, w->weighted ? "weighted" : "strict",
             w->cfg->concurrency, w->ntypes);
    return 0;
}

void worker_quiet(struct worker *w)
{
    if (w->quiet)
        return;
    w->quiet = 1;
    uv_timer_stop(&w->fetch_timer);
    heartbeat_beat(w);
}

static void worker_on_deadline(uv_timer_t *t)
{
    struct worker *w = t->data;
    log_warn("shutdown timeout: %zu job(s) still running are put back on their queues", w->busy);
    runner_abandon_all(w);
    w->hard_stopped = 1;
    worker_finish_stop(w);
}

void worker_stop(struct worker *w)
{
    if (w->stopping)
        return;
    w->stopping = 1;
    w->quiet = 1;
    uv_timer_stop(&w->fetch_timer);
    log_info("shutting down: waiting up to %lld ms for %zu running job(s)",
             w->cfg->shutdown_timeout_ms, w->busy);
    heartbeat_beat(w);
    uv_timer_start(&w->stop_timer, worker_on_deadline, (uint64_t)w->cfg->shutdown_timeout_ms, 0);
    worker_job_finished(w);
}

void worker_job_finished(struct worker *w)
{
    if (w->stopping && !w->closing && !w->hard_stopped) {
        if (w->busy == 0 && w->out_count == 0 && w->out_in_flight == 0 && !w->fetch_in_flight)
            worker_finish_stop(w);
        return;
    }
    if (!w->stopping)
        fetcher_kick(w);
}

struct http_client *worker_http(struct worker *w)
{
    if (!w->http) {
        char *err = NULL;
        /* 1 KiB receive buffers (curl's least) instead of its 16 KiB: job responses are small, a
         * read of a larger one is a cheap loop, and 2,000 requests in flight would otherwise
         * hold 32 MB of buffers (bench/pipeline.sh). */
        struct http_client_opts opts = {.recv_buffer_size = 1024};
        w->http = http_client_new(w->loop, &opts, &err);
        if (!w->http) {
            log_error("cannot start the HTTP client: %s", err ? err : "?");
            abort();
        }
    }
    return w->http;
}

static void worker_close_all(struct worker *w)
{
    if (w->http) {
        http_client_close(w->http, NULL, NULL); /* in-flight requests complete as cancelled */
        w->http = NULL;
    }
    monitor_close(w);
    fetcher_close(w);
    waker_close(w);
    poller_close(w);
    heartbeat_close(w);
    recovery_close(w);
    runner_close(w);
    uv_timer_stop(&w->stop_timer);
    uv_close((uv_handle_t *)&w->stop_timer, NULL);
    uv_close((uv_handle_t *)&w->sig_term, NULL);
    uv_close((uv_handle_t *)&w->sig_int, NULL);
    uv_close((uv_handle_t *)&w->sig_tstp, NULL);
    redis_close(w->redis, NULL, NULL);
    w->redis = NULL;
    /* Last: the application's clients borrow the HTTP client and Redis, whose requests in
     * flight have just completed as cancelled. */
    if (w->app_close)
        w->app_close(w->app);
    log_info("stopped");
}

static void worker_after_clear(struct worker *w)
{
    worker_close_all(w);
}

static void worker_after_requeue(struct worker *w, int ok)
{
    (void)ok;
    heartbeat_clear(w, worker_after_clear);
}

static void worker_finish_stop(struct worker *w)
{
    if (w->closing)
        return;
    w->closing = 1;
    uv_timer_stop(&w->stop_timer);
    if (redis_is_up(w->redis))
        fetcher_requeue_all(w, worker_after_requeue);
    else {
        log_error("redis is unavailable at shutdown: unfinished jobs stay in %s and are "
                  "recovered by another process when this one's lease expires",
                  w->identity);
        worker_close_all(w);
    }
}

void worker_free(struct worker *w)
{
    if (w->metrics)
        metrics_registry_free(w->metrics);
    for (size_t i = 0; i < w->nqueues; i++)
        free(w->queues[i].name);
    free(w->queues);
    free(w->types);
    free(w->slots);
}
