/* shim: route, authenticate, sniff, wrap and submit one webhook (see shim.h).
 *
 * Reading order: routing, answers and their metrics, the checks (signature, JSON,
 * delivery id), the job, the submit callback, the handler, life cycle. */
#include "shim.h"
#include "clock.h"
#include "json_edit.h"
#include "log.h"
#include "sidekiq_client.h"
#include "xalloc.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SHIM_PREFIX "/webhooks/"

enum shim_path { SP_CHATWOOT, SP_AGENT_BOT, SP_HEALTH, SP_OTHER, SP_COUNT };

static const char *const shim_path_names[SP_COUNT] = {"chatwoot", "agent-bot", "health", "other"};

/* Statuses whose request counters are looked up once; others are looked up per use. */
static const int shim_statuses[] = {200, 202, 400, 401, 404, 405, 408, 411, 413, 431, 500, 503};
#define SHIM_NSTATUS (sizeof shim_statuses / sizeof shim_statuses[0])

/* Event names Chatwoot sends (APIS.md §1.2): the event label takes only these values. */
static const char *const shim_events[] = {
    "message_created",
    "message_updated",
    "conversation_created",
    "conversation_updated",
    "conversation_status_changed",
    "conversation_opened",
    "conversation_resolved",
    "conversation_typing_on",
    "conversation_typing_off",
    "contact_created",
    "contact_updated",
    "inbox_created",
    "inbox_updated",
    "webwidget_triggered",
};
#define SHIM_NEVENTS (sizeof shim_events / sizeof shim_events[0])

struct shim {
    struct shim_opts o;
    char *token;
    uint64_t in_flight;
    int stopping;
    struct metrics_family *requests;
    struct metrics_family *sigfail;
    struct metrics_series *req_series[SP_COUNT][SHIM_NSTATUS];
    struct metrics_series *event_series[2][SHIM_NEVENTS + 2]; /* + other, none */
};

/* A webhook waiting for its submit callback. */
struct shim_call {
    struct shim *s;
    struct http_request *req;
    enum shim_path path;
    char jid[SIDEKIQ_JID_SIZE];
};

/* ---- routing ---------------------------------------------------------------------------- */

struct shim_route {
    enum shim_path path;
    int unsigned_ok; /* the token in the path matched */
    int known;       /* a path we serve (else 404) */
};

static struct shim_route shim_route(const struct shim *s, const char *p)
{
    struct shim_route r = {SP_OTHER, 0, 0};
    if (strcmp(p, "/healthz") == 0 || strcmp(p, "/readyz") == 0 ||
        (s->o.serve_metrics && strcmp(p, "/metrics") == 0)) {
        r.path = SP_HEALTH;
        r.known = 1;
        return r;
    }
    if (strncmp(p, SHIM_PREFIX, strlen(SHIM_PREFIX)) != 0)
        return r;
    p += strlen(SHIM_PREFIX);
    for (int i = SP_CHATWOOT; i <= SP_AGENT_BOT; i++) {
        size_t n = strlen(shim_path_names[i]);
        if (strncmp(p, shim_path_names[i], n) != 0 || (p[n] != '\0' && p[n] != '/'))
            continue;
        r.path = (enum shim_path)i;
        if (p[n] == '\0') {
            r.known = 1;
        } else if (s->token) {
            const char *tok = p + n + 1;
            r.unsigned_ok = signature_token_eq(s->token, tok, strlen(tok));
            r.known = r.unsigned_ok;
        }
        return r;
    }
    return r;
}

/* ---- answers ------------------------------------------------------------------------------- */

static struct metrics_series *shim_req_series(struct shim *s, enum shim_path path, int status)
{
    if (!s->requests)
        return NULL;
    for (size_t i = 0; i < SHIM_NSTATUS; i++) {
        if (shim_statuses[i] != status)
            continue;
        if (!s->req_series[path][i]) {
            char st[8];
            snprintf(st, sizeof st, "%d", status);
            s->req_series[path][i] = metrics_series_get(s->requests, shim_path_names[path], st);
        }
        return s->req_series[path][i];
    }
    char st[8];
    snprintf(st, sizeof st, "%d", status);
    return metrics_series_get(s->requests, shim_path_names[path], st);
}

static void shim_respond(struct shim *s, struct http_request *req, enum shim_path path, int status,
                         const char *ctype, const char *extra, const char *body)
{
    struct metrics_series *m = shim_req_series(s, path, status);
    if (m)
        metrics_inc(m);
    http_respond(req, status, ctype, extra, body, strlen(body));
}

static void shim_text(struct shim *s, struct http_request *req, enum shim_path path, int status,
                      const char *fmt, const char *detail)
{
    char body[512];
    snprintf(body, sizeof body, fmt, detail ? detail : "");
    shim_respond(s, req, path, status, "text/plain; charset=utf-8", NULL, body);
}

static void shim_serve_health(struct shim *s, struct http_request *req)
{
    int get = strcmp(req->method, "GET") == 0 || strcmp(req->method, "HEAD") == 0;
    if (!get) {
        shim_respond(s, req, SP_HEALTH, 405, "text/plain", "Allow: GET, HEAD\r\n",
                     "method not allowed\n");
        return;
    }
    if (strcmp(req->path, "/healthz") == 0) {
        shim_respond(s, req, SP_HEALTH, 200, "text/plain", NULL, "ok\n");
    } else if (strcmp(req->path, "/readyz") == 0) {
        const char *why = s->stopping ? "shutting down" : NULL;
        if (!why && s->o.ready)
            why = s->o.ready(s->o.ready_ud);
        if (why)
            shim_text(s, req, SP_HEALTH, 503, "%s\n", why);
        else
            shim_respond(s, req, SP_HEALTH, 200, "text/plain", NULL, "ready\n");
    } else {
        struct buf out = BUF_INIT;
        metrics_render(s->o.metrics, &out);
        struct metrics_series *m = shim_req_series(s, SP_HEALTH, 200);
        if (m)
            metrics_inc(m);
        http_respond(req, 200, METRICS_CONTENT_TYPE, NULL, out.data ? out.data : "", out.len);
        buf_free(&out);
    }
}

/* ---- checks -------------------------------------------------------------------------------- */

/* 0 if authentic, else answered 401. *ts gets the timestamp when there is one. */
static int shim_authenticate(struct shim *s, struct http_request *req, enum shim_path path,
                             int unsigned_ok, int64_t *ts, int *has_ts)
{
    const char *ts_hdr = http_request_header(req, "X-Chatwoot-Timestamp");
    if (unsigned_ok) {
        *has_ts = signature_parse_timestamp(ts_hdr, ts) == 0;
        return 0;
    }
    enum signature_result r =
        signature_verify(s->o.keys, http_request_header(req, "X-Chatwoot-Signature"), ts_hdr,
                         req->body, req->body_len, (int64_t)s->o.now(), s->o.tolerance_s, ts);
    *has_ts = r != SIGNATURE_MISSING && r != SIGNATURE_NO_TIMESTAMP;
    if (r == SIGNATURE_OK)
        return 0;
    if (s->sigfail)
        metrics_counter_add(s->sigfail, 1, shim_path_names[path], signature_result_name(r));
    log_info("ingest: %s %s from %s refused: signature %s", req->method, shim_path_names[path],
             req->peer, signature_result_name(r));
    shim_text(s, req, path, 401, "signature check failed: %s\n", signature_result_name(r));
    return -1;
}

/* The event label: one of shim_events, "other" or "none". */
static size_t shim_event_index(const char *body, const struct json_span *v, int found)
{
    if (!found)
        return SHIM_NEVENTS + 1;
    if (v->len < 2 || body[v->off] != '"')
        return SHIM_NEVENTS;
    const char *name = body + v->off + 1;
    size_t n = v->len - 2;
    for (size_t i = 0; i < SHIM_NEVENTS; i++)
        if (strlen(shim_events[i]) == n && memcmp(shim_events[i], name, n) == 0)
            return i;
    return SHIM_NEVENTS;
}

static void shim_count_event(struct shim *s, enum shim_path path, size_t idx)
{
    if (path <= SP_AGENT_BOT && s->event_series[path][idx])
        metrics_inc(s->event_series[path][idx]);
}

/* 0 if the body is one JSON object (event counted), else answered 400. */
static int shim_sniff(struct shim *s, struct http_request *req, enum shim_path path)
{
    struct json_span v;
    char why[160];
    int found = json_edit_find(req->body, req->body_len, "event", &v, why, sizeof why);
    if (found < 0) {
        log_info("ingest: %s from %s refused: body is not a JSON object: %s", shim_path_names[path],
                 req->peer, why);
        shim_text(s, req, path, 400, "body is not a JSON object: %s\n", why);
        return -1;
    }
    shim_count_event(s, path, shim_event_index(req->body, &v, found));
    return 0;
}

/* NULL (no id), the id, or answered 400 and *bad set. */
static const char *shim_delivery(struct shim *s, struct http_request *req, enum shim_path path,
                                 int *bad)
{
    const char *d = http_request_header(req, "X-Chatwoot-Delivery");
    *bad = 0;
    if (!d || !*d)
        return NULL;
    size_t n = strlen(d);
    int ok = n <= OUTBOX_MAX_DELIVERY;
    for (size_t i = 0; ok && i < n; i++)
        ok = d[i] > 0x20 && d[i] < 0x7f;
    if (ok)
        return d;
    *bad = 1;
    shim_text(s, req, path, 400, "invalid X-Chatwoot-Delivery%s\n", "");
    return NULL;
}

/* ---- the job ------------------------------------------------------------------------------- */

/* Wall time in seconds as Ruby's Float#to_s prints a microsecond-resolution time
 * ("1712345678.123456", "1712345678.5", "1712345678.0"), with integer arithmetic: at this
 * magnitude six decimals identify the double, so these are its shortest digits. (The
 * general float formatter costs several percent of a request.) */
static void shim_format_time(char *out, size_t cap, double t)
{
    if (!(t >= 0 && t < 4e9)) { /* beyond 2096 six decimals stop being exact */
        job_format_time(out, cap, JOB_TS_FLOAT_SECONDS, t);
        return;
    }
    long long us = llround(t * 1e6);
    long long sec = us / 1000000, frac = us % 1000000;
    int digits = 6;
    while (digits > 1 && frac % 10 == 0) {
        frac /= 10;
        digits--;
    }
    char tmp[48];
    size_t n = 0;
    for (int d = 0; d < digits; d++, frac /= 10) /* written backwards */
        tmp[n++] = (char)('0' + frac % 10);
    tmp[n++] = '.';
    do {
        tmp[n++] = (char)('0' + sec % 10);
        sec /= 10;
    } while (sec);
    if (n >= cap) { /* never with the 40 bytes the callers give */
        job_format_time(out, cap, JOB_TS_FLOAT_SECONDS, t);
        return;
    }
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    out[n] = '\0';
}

void shim_job_arg(struct buf *out, const char *body, size_t body_len, const char *delivery,
                  const int64_t *ts, const char *path, double received_at)
{
    char t[40];
    buf_reserve(out, body_len + body_len / 8 + 160);
    buf_puts(out, "{\"body\":");
    buf_json_string(out, body, body_len);
    buf_puts(out, ",\"delivery\":");
    if (delivery)
        buf_json_string(out, delivery, strlen(delivery));
    else
        buf_puts(out, "null");
    if (ts) {
        snprintf(t, sizeof t, ",\"timestamp\":%lld", (long long)*ts);
        buf_puts(out, t);
    } else {
        buf_puts(out, ",\"timestamp\":null");
    }
    buf_puts(out, ",\"path\":");
    buf_json_string(out, path, strlen(path));
    shim_format_time(t, sizeof t, received_at);
    buf_puts(out, ",\"received_at\":");
    buf_puts(out, t);
    buf_puts(out, "}");
}

static void shim_on_submitted(enum outbox_result res, const char *error, void *data)
{
    struct shim_call *c = data;
    struct shim *s = c->s;
    char body[128];
    s->in_flight--;
    switch (res) {
    case OUTBOX_QUEUED:
    case OUTBOX_SPOOLED: {
        /* {"status":"queued","jid":"<jid>"}\n */
        size_t n = 0;
        const char *st = res == OUTBOX_QUEUED ? "{\"status\":\"queued\",\"jid\":\""
                                              : "{\"status\":\"spooled\",\"jid\":\"";
        memcpy(body + n, st, strlen(st));
        n += strlen(st);
        memcpy(body + n, c->jid, SIDEKIQ_JID_LEN);
        n += SIDEKIQ_JID_LEN;
        memcpy(body + n, "\"}\n", 3);
        n += 3;
        body[n] = '\0';
        shim_respond(s, c->req, c->path, 202, "application/json", NULL, body);
        break;
    }
    case OUTBOX_DUPLICATE:
        shim_respond(s, c->req, c->path, 202, "application/json", NULL,
                     "{\"status\":\"duplicate\"}\n");
        break;
    case OUTBOX_FAILED:
    default:
        log_error("ingest: %s delivery from %s lost: cannot queue or spool it: %s",
                  shim_path_names[c->path], c->req->peer, error ? error : "?");
        shim_text(s, c->req, c->path, 500, "cannot queue the delivery: %s\n", error);
        break;
    }
    free(c);
}

/* The job payload (see shim.h), built in one buffer: the same bytes sidekiq_payload()
 * gives for this spec, without its second scan of the argument it did not build. */
static char *shim_payload(struct shim *s, const struct http_request *req, enum shim_path path,
                          const char *delivery, const int64_t *ts, double now,
                          char jid[SIDEKIQ_JID_SIZE], size_t *len)
{
    char t[40];
    struct buf b = BUF_INIT;
    buf_reserve(&b, req->body_len + req->body_len / 8 + 400);
    buf_puts(&b, "{\"retry\":true,\"queue\":\"" SHIM_JOB_QUEUE "\",\"class\":\"" SHIM_JOB_CLASS
                 "\",\"args\":[");
    shim_job_arg(&b, req->body, req->body_len, delivery, ts, shim_path_names[path], now);
    sidekiq_jid_new(jid);
    buf_puts(&b, "],\"jid\":\"");
    buf_append(&b, jid, SIDEKIQ_JID_LEN);
    if (s->o.ts_format == JOB_TS_FLOAT_SECONDS)
        shim_format_time(t, sizeof t, now); /* the same text, without the general formatter */
    else
        job_format_time(t, sizeof t, s->o.ts_format, now);
    buf_puts(&b, "\",\"created_at\":");
    buf_puts(&b, t);
    buf_puts(&b, ",\"enqueued_at\":");
    buf_puts(&b, t);
    buf_puts(&b, "}");
    *len = b.len;
    return buf_steal(&b);
}

/* Wrap the webhook as a job and hand it to the submit function. */
static void shim_enqueue(struct shim *s, struct http_request *req, enum shim_path path,
                         const char *delivery, const int64_t *ts)
{
    struct shim_call *c = xmalloc(sizeof *c);
    c->s = s;
    c->req = req;
    c->path = path;
    char err[256];
    size_t len = 0;
    char *payload = shim_payload(s, req, path, delivery, ts, s->o.now(), c->jid, &len);
    s->in_flight++;
    /* The payload goes to the submit function, which frees it (also on failure). */
    if (s->o.submit(s->o.submit_ud, delivery, payload, len, shim_on_submitted, c, err,
                    sizeof err) != 0) {
        s->in_flight--;
        free(c);
        log_error("ingest: %s delivery from %s lost: %s", shim_path_names[path], req->peer, err);
        shim_text(s, req, path, 500, "cannot queue the delivery: %s\n", err);
    }
}

/* ---- the handler --------------------------------------------------------------------------- */

void shim_handle(struct http_request *req, void *ud)
{
    struct shim *s = ud;
    struct shim_route r = shim_route(s, req->path);
    if (!r.known) {
        shim_respond(s, req, SP_OTHER, 404, "text/plain", NULL, "not found\n");
        return;
    }
    if (r.path == SP_HEALTH) {
        shim_serve_health(s, req);
        return;
    }
    if (strcmp(req->method, "POST") != 0) {
        shim_respond(s, req, r.path, 405, "text/plain", "Allow: POST\r\n", "method not allowed\n");
        return;
    }
    int64_t ts = 0;
    int has_ts = 0, bad = 0;
    if (shim_authenticate(s, req, r.path, r.unsigned_ok, &ts, &has_ts) != 0)
        return;
    if (shim_sniff(s, req, r.path) != 0)
        return;
    const char *delivery = shim_delivery(s, req, r.path, &bad);
    if (bad)
        return;
    shim_enqueue(s, req, r.path, delivery, has_ts ? &ts : NULL);
}

void shim_count_error(int status, const char *path, void *ud)
{
    struct shim *s = ud;
    enum shim_path p = SP_OTHER;
    if (path) {
        struct shim_route r = shim_route(s, path);
        if (r.known)
            p = r.path;
    }
    struct metrics_series *m = shim_req_series(s, p, status);
    if (m)
        metrics_inc(m);
}

/* ---- life cycle ---------------------------------------------------------------------------- */

static void shim_metrics_init(struct shim *s)
{
    struct metrics_registry *reg = s->o.metrics;
    if (!reg)
        return;
    s->requests = metrics_counter_new(reg, "tierone_ingest_requests_total",
                                      "Requests answered, by path and status, including the errors "
                                      "the HTTP layer answers itself (400, 408, 411, 413, 431, and "
                                      "503 for connections over the cap, path other).",
                                      2, "path", "status");
    s->sigfail = metrics_counter_new(reg, "tierone_ingest_signature_failures_total",
                                     "Deliveries refused with 401, by path and reason.", 2, "path",
                                     "reason");
    struct metrics_family *events = metrics_counter_new(
        reg, "tierone_ingest_events_total", "Accepted-for-checking webhooks by Chatwoot event.", 2,
        "path", "event");
    for (int p = SP_CHATWOOT; p <= SP_AGENT_BOT; p++) {
        for (size_t i = 0; i < SHIM_NEVENTS; i++)
            s->event_series[p][i] = metrics_series_get(events, shim_path_names[p], shim_events[i]);
        s->event_series[p][SHIM_NEVENTS] = metrics_series_get(events, shim_path_names[p], "other");
        s->event_series[p][SHIM_NEVENTS + 1] =
            metrics_series_get(events, shim_path_names[p], "none");
    }
}

struct shim *shim_new(const struct shim_opts *opts)
{
    struct shim *s = xcalloc(1, sizeof *s);
    s->o = *opts;
    if (!s->o.tolerance_s)
        s->o.tolerance_s = 300;
    if (!s->o.now)
        s->o.now = clock_wall_s;
    s->token = opts->unsigned_token && *opts->unsigned_token ? xstrdup(opts->unsigned_token) : NULL;
    s->o.unsigned_token = s->token;
    shim_metrics_init(s);
    return s;
}

void shim_free(struct shim *s)
{
    if (!s)
        return;
    free(s->token);
    free(s);
}

void shim_set_stopping(struct shim *s, int stopping)
{
    s->stopping = stopping;
}

uint64_t shim_in_flight(const struct shim *s)
{
    return s->in_flight;
}
