/* tierone-ingest: receives Chatwoot webhooks, checks them and pushes each as one Sidekiq job
 * (Tierone::ChatwootEvent on queue:events), spooling to disk while Redis is down.
 * main() reads top to bottom: config (or --healthcheck), log, the front (secrets, shim,
 * listeners), then either this process's back (orphaned spools, outbox, signals) and the
 * loop, or - with TIERONE_INGEST_PROCESSES = N > 1 - a supervisor forking N processes that
 * each run their back on the inherited listeners (see struct ingest); close.
 *
 * Several processes: one listening socket per port, opened before the fork and shared (the
 * kernel hands each connection to whichever process accepts it first), so no
 * SO_REUSEPORT is needed within one supervisor. Process n spools to spool_path.<n>, and
 * process 1 (or the only process) first moves the jobs of spool files no process owns
 * (spool_adopt.h). admin_port is shared like the webhook port (whichever process accepts
 * answers /healthz, /readyz and its own /metrics); process n also serves its admin on
 * admin_port + n, the port to scrape for per-process metrics. SIGTERM to the parent stops
 * every process gracefully; it exits 0 when they all did (supervisor.h). Jobs reach Redis
 * in order of acceptance per process (so per connection); deliveries taken by different
 * processes were accepted concurrently and have no common order.
 *
 * Several containers (not processes of one supervisor) sharing one port would need
 * SO_REUSEPORT on the listener, which lib/http_server does not set. */
#include "admin.h"
#include "clock.h"
#include "common_settings.h"
#include "config.h"
#include "healthcheck.h"
#include "http_server.h"
#include "log.h"
#include "metrics.h"
#include "outbox.h"
#include "shim.h"
#include "signature.h"
#include "spool_adopt.h"
#include "supervisor.h"
#include "xalloc.h"

#include <malloc.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ingest_settings {
    char *redis_url;
    char *listen_host;
    long long listen_port;
    char *admin_host;
    long long admin_port;
    char *webhook_secrets;
    char *unsigned_token;
    long long max_body;
    long long max_header_bytes;
    long long max_connections;
    long long header_timeout_ms;
    long long body_timeout_ms;
    long long idle_timeout_ms;
    char *spool_path;
    long long spool_max_bytes;
    long long redis_timeout_ms;
    long long signature_tolerance_s;
    long long dedupe_ttl_s;
    long long shutdown_timeout_ms;
    long long processes;
    int timestamp_format;
    int log_level;
};

#define S(field) offsetof(struct ingest_settings, field)

static const struct config_def ingest_defs[] = {
    COMMON_SETTING_REDIS_URL(struct ingest_settings, redis_url),
    {.key = "listen_host",
     .env = "TIERONE_LISTEN_HOST",
     .type = CONFIG_STRING,
     .def = "0.0.0.0",
     .help = "address the webhook server listens on",
     .offset = S(listen_host)},
    {.key = "listen_port",
     .env = "TIERONE_LISTEN_PORT",
     .type = CONFIG_INT,
     .def = "8080",
     .min = 0,
     .max = 65535,
     .bounded = true,
     .help = "webhook port (also answers /healthz and /readyz); 0 = any free port",
     .offset = S(listen_port)},
    COMMON_SETTING_ADMIN_HOST(struct ingest_settings, admin_host),
    {.key = "admin_port",
     .env = "TIERONE_ADMIN_PORT",
     .type = CONFIG_INT,
     .def = "9092",
     .min = 0,
     .max = 65535,
     .bounded = true,
     .help = "admin port; 0 = no admin server (/metrics is then served on the webhook port)",
     .offset = S(admin_port)},
    {.key = "webhook_secrets",
     .env = "TIERONE_WEBHOOK_SECRETS",
     .type = CONFIG_STRING,
     .secret = true,
     .help = "comma-separated webhook / API inbox / agent bot secrets (X-Chatwoot-Signature)",
     .offset = S(webhook_secrets)},
    {.key = "unsigned_token",
     .env = "TIERONE_UNSIGNED_TOKEN",
     .type = CONFIG_STRING,
     .secret = true,
     .help = "if set (>= 16 chars), POST /webhooks/{chatwoot,agent-bot}/<token> accepts unsigned "
             "deliveries (Chatwoot < 4.11.2 / 4.13.0); empty = refused",
     .offset = S(unsigned_token)},
    {.key = "max_body",
     .env = "TIERONE_MAX_BODY",
     .type = CONFIG_INT,
     .def = "1048576",
     .min = 1024,
     .max = 16 * 1024 * 1024,
     .bounded = true,
     .help = "largest request body in bytes (413 above)",
     .offset = S(max_body)},
    {.key = "max_header_bytes",
     .env = "TIERONE_MAX_HEADER_BYTES",
     .type = CONFIG_INT,
     .def = "16384",
     .min = 1024,
     .max = 1024 * 1024,
     .bounded = true,
     .help = "largest request line + headers in bytes (431 above)",
     .offset = S(max_header_bytes)},
    {.key = "max_connections",
     .env = "TIERONE_MAX_CONNECTIONS",
     .type = CONFIG_INT,
     .def = "256",
     .min = 1,
     .max = 100000,
     .bounded = true,
     .help = "open client connections (more get 503)",
     .offset = S(max_connections)},
    {.key = "header_timeout",
     .env = "TIERONE_HEADER_TIMEOUT",
     .type = CONFIG_DURATION,
     .def = "10s",
     .min = 100,
     .max = 600000,
     .bounded = true,
     .help = "time to receive the request line and headers (408 after)",
     .offset = S(header_timeout_ms)},
    {.key = "body_timeout",
     .env = "TIERONE_BODY_TIMEOUT",
     .type = CONFIG_DURATION,
     .def = "30s",
     .min = 100,
     .max = 600000,
     .bounded = true,
     .help = "time to receive the body after the headers (408 after)",
     .offset = S(body_timeout_ms)},
    {.key = "idle_timeout",
     .env = "TIERONE_IDLE_TIMEOUT",
     .type = CONFIG_DURATION,
     .def = "60s",
     .min = 100,
     .max = 3600000,
     .bounded = true,
     .help = "keep-alive connection idle time before it is closed",
     .offset = S(idle_timeout_ms)},
    {.key = "spool_path",
     .env = "TIERONE_SPOOL_PATH",
     .type = CONFIG_STRING,
     .def = "tierone-ingest.spool",
     .help = "spool file for jobs accepted while Redis is down (put it on a persistent volume)",
     .offset = S(spool_path)},
    {.key = "spool_max_bytes",
     .env = "TIERONE_SPOOL_MAX_BYTES",
     .type = CONFIG_INT,
     .def = "1073741824",
     .min = 0,
     .max = 1e15,
     .bounded = true,
     .help = "spool size cap in bytes (500 beyond it); 0 = only the disk's size",
     .offset = S(spool_max_bytes)},
    {.key = "redis_timeout",
     .env = "TIERONE_REDIS_TIMEOUT",
     .type = CONFIG_DURATION,
     .def = "1s",
     .min = 50,
     .max = 4000,
     .bounded = true,
     .help = "a Redis reply slower than this counts as Redis down (the job is spooled)",
     .offset = S(redis_timeout_ms)},
    {.key = "signature_tolerance",
     .env = "TIERONE_SIGNATURE_TOLERANCE",
     .type = CONFIG_INT,
     .def = "300",
     .min = 1,
     .max = 86400,
     .bounded = true,
     .help = "seconds X-Chatwoot-Timestamp may be off the local clock, either way",
     .offset = S(signature_tolerance_s)},
    {.key = "dedupe_ttl",
     .env = "TIERONE_DEDUPE_TTL",
     .type = CONFIG_INT,
     .def = "86400",
     .min = 1,
     .max = 30 * 86400,
     .bounded = true,
     .help = "seconds a repeat X-Chatwoot-Delivery is recognised (and not queued again)",
     .offset = S(dedupe_ttl_s)},
    {.key = "shutdown_timeout",
     .env = "TIERONE_SHUTDOWN_TIMEOUT",
     .type = CONFIG_DURATION,
     .def = "20s",
     .min = 0,
     .max = 3600000,
     .bounded = true,
     .help = "on SIGTERM, how long in-flight requests may take before connections are closed",
     .offset = S(shutdown_timeout_ms)},
    {.key = "processes",
     .env = "TIERONE_INGEST_PROCESSES",
     .type = CONFIG_INT,
     .def = "1",
     .min = 1,
     .max = 64,
     .bounded = true,
     .help = "webhook processes sharing the listen port (forked and supervised by this one); "
             "process n spools to spool_path.<n> and serves its own admin on admin_port + n",
     .offset = S(processes)},
    COMMON_SETTING_TIMESTAMP_FORMAT(struct ingest_settings, timestamp_format),
    COMMON_SETTING_LOG_LEVEL(struct ingest_settings, log_level),
};

static int ingest_validate(const void *settings, char **cause)
{
    const struct ingest_settings *s = settings;
    int has_secret =
        s->webhook_secrets && strspn(s->webhook_secrets, ", \t") < strlen(s->webhook_secrets);
    if (s->unsigned_token && strlen(s->unsigned_token) < 16) {
        *cause = xasprintf("TIERONE_UNSIGNED_TOKEN must have at least 16 characters "
                           "(use a long random string)");
        return -1;
    }
    if (s->unsigned_token && strchr(s->unsigned_token, '/')) {
        *cause = xasprintf("TIERONE_UNSIGNED_TOKEN must not contain '/'");
        return -1;
    }
    if (!has_secret && !s->unsigned_token) {
        *cause = xasprintf("set TIERONE_WEBHOOK_SECRETS (signed deliveries) or "
                           "TIERONE_UNSIGNED_TOKEN (unsigned ones): otherwise every delivery "
                           "would be refused");
        return -1;
    }
    return 0;
}

static const struct config_spec ingest_spec = {
    .program = "tierone-ingest",
    .summary = "Receives Chatwoot webhooks and queues each as a Sidekiq job in Redis.",
    .defs = ingest_defs,
    .ndefs = CONFIG_COUNT(ingest_defs),
    .validate = ingest_validate,
};

/* The daemon: everything main() starts, in one place. With several processes, the parent
 * opens the listeners (the "front": keys, metrics, shim, webhook server, admin_port) and
 * forks; each child then opens the rest (the "back": its spool, Redis, its own admin port,
 * signals) and serves on the inherited listeners. With one process there is no fork. */
struct ingest {
    uv_loop_t loop;
    struct ingest_settings cfg;
    struct signature_keys keys;
    struct metrics_registry *metrics;
    struct outbox *outbox;
    struct shim *shim;
    struct http_server *http;
    struct admin *admin;     /* admin_port; shared by all processes when there are several */
    struct admin *own_admin; /* process n of several: admin_port + n */
    unsigned index;          /* this process, 1..processes */
    char *spool;             /* this process's spool file */
    uv_signal_t sig_term;
    uv_signal_t sig_int;
    uv_timer_t deadline;
    int handles; /* deadline and signal handles initialised */
    int stopping;
};

static void ingest_metrics(struct buf *out, void *ud)
{
    metrics_render(((struct ingest *)ud)->metrics, out);
}

static const char *ingest_ready(void *ud)
{
    struct ingest *in = ud;
    return in->stopping ? "shutting down" : NULL;
}

static double ingest_process_index(void *ud)
{
    return ((struct ingest *)ud)->index;
}

static int ingest_submit(void *ud, const char *delivery, char *payload, size_t len, outbox_cb cb,
                         void *data, char *err, size_t errcap)
{
    return outbox_submit(((struct ingest *)ud)->outbox, delivery, payload, len, cb, data, err,
                         errcap);
}

/* ---- shutdown: stop intake, finish requests, then close Redis and the spool ---- */

static void ingest_on_outbox_closed(void *arg)
{
    struct ingest *in = arg;
    in->outbox = NULL;
    log_info("ingest: stopped; %s", "bye");
}

static void ingest_on_handle_closed(uv_handle_t *h)
{
    (void)h;
}

static void ingest_on_http_done(void *arg)
{
    struct ingest *in = arg;
    in->http = NULL;
    uv_timer_stop(&in->deadline);
    uv_close((uv_handle_t *)&in->deadline, ingest_on_handle_closed);
    if (in->admin) {
        admin_stop(in->admin, NULL, NULL);
        in->admin = NULL;
    }
    if (in->own_admin) {
        admin_stop(in->own_admin, NULL, NULL);
        in->own_admin = NULL;
    }
    uint64_t depth = outbox_spool_depth(in->outbox);
    if (depth)
        log_info("ingest: %llu job(s) stay in the spool %s for the next start",
                 (unsigned long long)depth, in->spool);
    outbox_close(in->outbox, ingest_on_outbox_closed, in);
}

static void ingest_on_deadline(uv_timer_t *t)
{
    struct ingest *in = t->data;
    log_warn("ingest: shutdown timeout; closing %llu request(s) still in flight",
             (unsigned long long)shim_in_flight(in->shim));
    if (in->http)
        http_server_force_close(in->http);
}

static void ingest_stop(struct ingest *in, int signum)
{
    if (in->stopping)
        return;
    in->stopping = 1;
    log_info("ingest: %s: no new connections; finishing requests in flight", strsignal(signum));
    shim_set_stopping(in->shim, 1);
    uv_close((uv_handle_t *)&in->sig_term, ingest_on_handle_closed);
    uv_close((uv_handle_t *)&in->sig_int, ingest_on_handle_closed);
    uv_timer_start(&in->deadline, ingest_on_deadline, (uint64_t)in->cfg.shutdown_timeout_ms, 0);
    http_server_shutdown(in->http, ingest_on_http_done, in);
}

static void ingest_on_signal(uv_signal_t *s, int signum)
{
    ingest_stop(s->data, signum);
}

/* ---- start ---- */

static int ingest_admin_start(struct ingest *in, int port, struct admin **out, char *err,
                              size_t errcap)
{
    struct admin_opts ao = {.host = in->cfg.admin_host,
                            .port = port,
                            .ready = ingest_ready,
                            .metrics = ingest_metrics,
                            .ud = in};
    *out = admin_start(&in->loop, &ao, err, errcap);
    return *out ? 0 : -1;
}

/* Keys, metrics, shim and the listeners: everything the processes share. */
static int ingest_start_front(struct ingest *in, char *err, size_t errcap)
{
    if (signature_keys_init(&in->keys, in->cfg.webhook_secrets, err, errcap) != 0)
        return -1;
    in->metrics = metrics_registry_new();
    metrics_gauge_fn_new(in->metrics, "process_resident_memory_bytes",
                         "Resident memory size in bytes.", metrics_rss_bytes_fn, NULL);
    metrics_gauge_fn_new(in->metrics, "tierone_ingest_process",
                         "Index of this process (1..TIERONE_INGEST_PROCESSES).",
                         ingest_process_index, in);
    struct shim_opts so = {
        .keys = &in->keys,
        .unsigned_token = in->cfg.unsigned_token,
        .tolerance_s = in->cfg.signature_tolerance_s,
        .ts_format = (enum job_ts_format)in->cfg.timestamp_format,
        .metrics = in->metrics,
        .serve_metrics = in->cfg.admin_port == 0,
        .submit = ingest_submit,
        .submit_ud = in,
        .ready = ingest_ready,
        .ready_ud = in,
    };
    in->shim = shim_new(&so);

    struct http_server_opts ho;
    http_server_opts_default(&ho);
    ho.host = in->cfg.listen_host;
    ho.port = (int)in->cfg.listen_port;
    ho.max_connections = (uint32_t)in->cfg.max_connections;
    ho.max_header_bytes = (uint32_t)in->cfg.max_header_bytes;
    ho.max_body_bytes = (uint32_t)in->cfg.max_body;
    ho.header_timeout_ms = (uint32_t)in->cfg.header_timeout_ms;
    ho.body_timeout_ms = (uint32_t)in->cfg.body_timeout_ms;
    ho.idle_timeout_ms = (uint32_t)in->cfg.idle_timeout_ms;
    ho.name = "ingest";
    ho.on_error = shim_count_error;
    ho.error_ud = in->shim;
    /* Several processes accept on this one socket: libuv accepts every pending connection
     * in one go, so the first process to wake would take a whole burst of them. With
     * UV_TCP_SINGLE_ACCEPT (read by libuv when it starts listening) it pauses after each
     * accept, and the other processes get their share. */
    if (in->cfg.processes > 1)
        setenv("UV_TCP_SINGLE_ACCEPT", "1", 0);
    in->http = http_server_start(&in->loop, &ho, shim_handle, in->shim, err, errcap);
    if (!in->http)
        return -1;
    if (in->cfg.admin_port > 0 &&
        ingest_admin_start(in, (int)in->cfg.admin_port, &in->admin, err, errcap) != 0)
        return -1;
    return 0;
}

/* This process's own part: orphaned spools, spool and Redis, admin port, signals. */
static int ingest_start_back(struct ingest *in, char *err, size_t errcap)
{
    unsigned n = (unsigned)in->cfg.processes;
    in->spool = spool_adopt_own_path(in->cfg.spool_path, n, in->index);
    if (in->index == 1) {
        char aerr[512];
        if (spool_adopt_orphans(in->cfg.spool_path, n, in->spool, (uint64_t)in->cfg.spool_max_bytes,
                                aerr, sizeof aerr) < 0)
            log_error("ingest: orphaned spool files stay for the next start: %s", aerr);
    }
    struct outbox_opts oo = {
        .redis_url = in->cfg.redis_url,
        .spool_path = in->spool,
        .spool_max_bytes = (uint64_t)in->cfg.spool_max_bytes,
        .redis_timeout_ms = (uint32_t)in->cfg.redis_timeout_ms,
        .dedupe_ttl_s = (uint32_t)in->cfg.dedupe_ttl_s,
        .metrics = in->metrics,
    };
    in->outbox = outbox_new(&in->loop, &oo, err, errcap);
    if (!in->outbox)
        return -1;
    uv_timer_init(&in->loop, &in->deadline);
    in->deadline.data = in;
    uv_signal_init(&in->loop, &in->sig_term);
    uv_signal_init(&in->loop, &in->sig_int);
    in->sig_term.data = in->sig_int.data = in;
    uv_signal_start(&in->sig_term, ingest_on_signal, SIGTERM);
    uv_signal_start(&in->sig_int, ingest_on_signal, SIGINT);
    in->handles = 1;
    if (n > 1 && in->cfg.admin_port > 0 &&
        ingest_admin_start(in, (int)(in->cfg.admin_port + in->index), &in->own_admin, err,
                           errcap) != 0)
        return -1;
    return 0;
}

/* After a failed start: close whatever was opened, then run the loop to let it finish. */
static void ingest_abort(struct ingest *in)
{
    if (in->own_admin)
        admin_force_close(in->own_admin);
    if (in->admin)
        admin_force_close(in->admin);
    if (in->http)
        http_server_force_close(in->http);
    in->own_admin = in->admin = NULL;
    in->http = NULL;
    if (in->outbox)
        outbox_close(in->outbox, NULL, NULL);
    in->outbox = NULL;
    if (in->handles) {
        uv_close((uv_handle_t *)&in->deadline, ingest_on_handle_closed);
        uv_close((uv_handle_t *)&in->sig_term, ingest_on_handle_closed);
        uv_close((uv_handle_t *)&in->sig_int, ingest_on_handle_closed);
        in->handles = 0;
    }
    uv_run(&in->loop, UV_RUN_DEFAULT);
}

/* Close the loop and free everything; returns rc, or 1 when handles were left open. */
static int ingest_finish(struct ingest *in, int rc)
{
    if (uv_loop_close(&in->loop) != 0) {
        log_error("ingest: event loop closed with handles still open");
        rc = 1;
    }
    shim_free(in->shim);
    if (in->metrics)
        metrics_registry_free(in->metrics);
    signature_keys_free(&in->keys);
    free(in->spool);
    config_free(&ingest_spec, &in->cfg);
    return rc;
}

/* Start this process's back and serve until stopped. Returns the exit status. */
static int ingest_serve(struct ingest *in)
{
    char err[512];
    if (ingest_start_back(in, err, sizeof err) != 0) {
        fprintf(stderr, "tierone-ingest: %s\n", err);
        log_error("ingest: cannot start: %s", err);
        ingest_abort(in);
        return ingest_finish(in, 2);
    }
    if (in->cfg.processes > 1)
        supervisor_unblock_signals();
    log_info("ingest: accepting webhooks on %s:%d (%zu secret(s), unsigned path %s, "
             "process %u of %lld, spool %s)",
             in->cfg.listen_host, http_server_port(in->http), in->keys.n,
             in->cfg.unsigned_token ? "on" : "off", in->index, in->cfg.processes, in->spool);
    uv_run(&in->loop, UV_RUN_DEFAULT);
    return ingest_finish(in, 0);
}

/* supervisor child: a copy of the parent's front, on a loop of its own. */
static int ingest_child(unsigned index, void *ud)
{
    static char component[32];
    struct ingest *in = ud;
    in->index = index;
    snprintf(component, sizeof component, "ingest.%u", index);
    log_init(component, (enum log_level)in->cfg.log_level);
    int rc = uv_loop_fork(&in->loop);
    if (rc != 0) {
        log_error("ingest: process %u: uv_loop_fork: %s", index, uv_strerror(rc));
        return 1;
    }
    return ingest_serve(in);
}

/* supervisor is stopping: the parent lets go of its copies of the listeners. */
static void ingest_parent_stopping(void *ud)
{
    struct ingest *in = ud;
    ingest_abort(in);
}

int main(int argc, char **argv)
{
    static struct ingest in; /* big (settings, keys) and alive for the whole run */
    bool hc = healthcheck_take_flag(&argc, argv);
    enum config_action act = config_main(&ingest_spec, &in.cfg, argc, argv, NULL);
    if (act != CONFIG_RUN)
        return hc && act == CONFIG_EXIT_USAGE ? HEALTHCHECK_UNHEALTHY : (int)act;
    if (hc) {
        /* admin_port: with several processes, whichever one accepts answers */
        int rc = healthcheck_daemon(in.cfg.admin_host, in.cfg.admin_port, in.cfg.listen_host,
                                    in.cfg.listen_port);
        config_free(&ingest_spec, &in.cfg);
        return rc;
    }
    log_init("ingest", (enum log_level)in.cfg.log_level);
    signal(SIGPIPE, SIG_IGN);
    /* Each loop iteration builds a batch for Redis (hiredis's output buffer, the payloads)
     * and frees it once written and answered. With glibc's 128 KB trim threshold that
     * returned the heap top to the kernel about once per iteration under load (brk, then
     * page faults to get it back: 3,000 brk and 8,000 faults a second at 50k req/s). Keep
     * up to 1 MB of free heap top instead; peak RSS is set by the peak batch either way. */
    mallopt(M_TRIM_THRESHOLD, 1 << 20);
    mallopt(M_TOP_PAD, 256 << 10);
    uv_loop_init(&in.loop);
    in.index = 1;
    char err[512];
    if (ingest_start_front(&in, err, sizeof err) != 0) {
        fprintf(stderr, "tierone-ingest: %s\n", err);
        log_error("ingest: cannot start: %s", err);
        ingest_abort(&in);
        return ingest_finish(&in, 2);
    }
    if (in.cfg.processes <= 1)
        return ingest_serve(&in);
    log_info("ingest: listening on %s:%d; starting %lld processes", in.cfg.listen_host,
             http_server_port(in.http), in.cfg.processes);
    struct supervisor_opts so = {.processes = (unsigned)in.cfg.processes,
                                 .child = ingest_child,
                                 .stopping = ingest_parent_stopping,
                                 .ud = &in};
    int rc = supervisor_run(&so);
    ingest_abort(&in); /* nothing left when stopping already did it */
    rc = ingest_finish(&in, rc);
    log_info("ingest: all processes stopped (exit status %d)", rc);
    return rc;
}
