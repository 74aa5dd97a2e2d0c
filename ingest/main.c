/* tierone-ingest: receives Chatwoot webhooks, checks them and pushes each as one Sidekiq job
 * (Tierone::ChatwootEvent on queue:events), spooling to disk while Redis is down.
 * main() reads top to bottom: config, log, secrets, outbox, shim, servers, signals, run,
 * close. */
#include "admin.h"
#include "clock.h"
#include "common_settings.h"
#include "config.h"
#include "http_server.h"
#include "log.h"
#include "metrics.h"
#include "outbox.h"
#include "shim.h"
#include "signature.h"
#include "xalloc.h"

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

/* The daemon: everything main() starts, in one place. */
struct ingest {
    uv_loop_t loop;
    struct ingest_settings cfg;
    struct signature_keys keys;
    struct metrics_registry *metrics;
    struct outbox *outbox;
    struct shim *shim;
    struct http_server *http;
    struct admin *admin;
    uv_signal_t sig_term;
    uv_signal_t sig_int;
    uv_timer_t deadline;
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

static int ingest_submit(void *ud, const char *delivery, const char *payload, size_t len,
                         outbox_cb cb, void *data, char *err, size_t errcap)
{
    return outbox_submit(ud, delivery, payload, len, cb, data, err, errcap);
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
    uint64_t depth = outbox_spool_depth(in->outbox);
    if (depth)
        log_info("ingest: %llu job(s) stay in the spool for the next start",
                 (unsigned long long)depth);
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

static int ingest_start_servers(struct ingest *in, char *err, size_t errcap)
{
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
    in->http = http_server_start(&in->loop, &ho, shim_handle, in->shim, err, errcap);
    if (!in->http)
        return -1;
    if (in->cfg.admin_port > 0) {
        struct admin_opts ao = {.host = in->cfg.admin_host,
                                .port = (int)in->cfg.admin_port,
                                .ready = ingest_ready,
                                .metrics = ingest_metrics,
                                .ud = in};
        in->admin = admin_start(&in->loop, &ao, err, errcap);
        if (!in->admin)
            return -1;
    }
    return 0;
}

static int ingest_init(struct ingest *in, char *err, size_t errcap)
{
    if (signature_keys_init(&in->keys, in->cfg.webhook_secrets, err, errcap) != 0)
        return -1;
    in->metrics = metrics_registry_new();
    metrics_gauge_fn_new(in->metrics, "process_resident_memory_bytes",
                         "Resident memory size in bytes.", metrics_rss_bytes_fn, NULL);
    struct outbox_opts oo = {
        .redis_url = in->cfg.redis_url,
        .spool_path = in->cfg.spool_path,
        .spool_max_bytes = (uint64_t)in->cfg.spool_max_bytes,
        .redis_timeout_ms = (uint32_t)in->cfg.redis_timeout_ms,
        .dedupe_ttl_s = (uint32_t)in->cfg.dedupe_ttl_s,
        .metrics = in->metrics,
    };
    in->outbox = outbox_new(&in->loop, &oo, err, errcap);
    if (!in->outbox)
        return -1;
    struct shim_opts so = {
        .keys = &in->keys,
        .unsigned_token = in->cfg.unsigned_token,
        .tolerance_s = in->cfg.signature_tolerance_s,
        .ts_format = (enum job_ts_format)in->cfg.timestamp_format,
        .metrics = in->metrics,
        .serve_metrics = in->cfg.admin_port == 0,
        .submit = ingest_submit,
        .submit_ud = in->outbox,
        .ready = ingest_ready,
        .ready_ud = in,
    };
    in->shim = shim_new(&so);
    uv_timer_init(&in->loop, &in->deadline);
    in->deadline.data = in;
    uv_signal_init(&in->loop, &in->sig_term);
    uv_signal_init(&in->loop, &in->sig_int);
    in->sig_term.data = in->sig_int.data = in;
    uv_signal_start(&in->sig_term, ingest_on_signal, SIGTERM);
    uv_signal_start(&in->sig_int, ingest_on_signal, SIGINT);
    return 0;
}

/* After a failed start: close whatever was opened, then run the loop to let it finish. */
static void ingest_abort(struct ingest *in)
{
    if (in->admin)
        admin_force_close(in->admin);
    if (in->http)
        http_server_force_close(in->http);
    if (in->outbox)
        outbox_close(in->outbox, NULL, NULL);
    if (in->shim) {
        uv_close((uv_handle_t *)&in->deadline, ingest_on_handle_closed);
        uv_close((uv_handle_t *)&in->sig_term, ingest_on_handle_closed);
        uv_close((uv_handle_t *)&in->sig_int, ingest_on_handle_closed);
    }
    uv_run(&in->loop, UV_RUN_DEFAULT);
}

int main(int argc, char **argv)
{
    static struct ingest in; /* big (settings, keys) and alive for the whole run */
    enum config_action act = config_main(&ingest_spec, &in.cfg, argc, argv, NULL);
    if (act != CONFIG_RUN)
        return act;
    log_init("ingest", (enum log_level)in.cfg.log_level);
    signal(SIGPIPE, SIG_IGN);
    uv_loop_init(&in.loop);
    char err[512];
    int rc = 2;
    if (ingest_init(&in, err, sizeof err) != 0 || ingest_start_servers(&in, err, sizeof err) != 0) {
        fprintf(stderr, "tierone-ingest: %s\n", err);
        log_error("ingest: cannot start: %s", err);
        ingest_abort(&in);
        goto out;
    }
    log_info("ingest: accepting webhooks on %s:%d (%zu secret(s), unsigned path %s)",
             in.cfg.listen_host, http_server_port(in.http), in.keys.n,
             in.cfg.unsigned_token ? "on" : "off");
    uv_run(&in.loop, UV_RUN_DEFAULT);
    rc = 0;
out:
    if (uv_loop_close(&in.loop) != 0) {
        log_error("ingest: event loop closed with handles still open");
        rc = 1;
    }
    shim_free(in.shim);
    if (in.metrics)
        metrics_registry_free(in.metrics);
    signature_keys_free(&in.keys);
    config_free(&ingest_spec, &in.cfg);
    return rc;
}
