/* rate_limit and service against the real Redis (database 10) and a fake HTTP server:
 * the fleet-wide token bucket, its reservations, and one service call's whole life. */
#include "clock.h"
#include "fake_http.h"
#include "log.h"
#include "rate_limit.h"
#include "service.h"
#include "test_loop.h"
#include "test_redis.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#define DB        10
#define MAX_TAKES 64

struct h {
    uv_loop_t loop; /* first member: callbacks stop it (see on_take) */
    struct redis *redis[10];
    int nredis;
    redisContext *rc;
    /* rate-limit answers, in callback order */
    int granted[MAX_TAKES];
    double at[MAX_TAKES];
    int ntakes;
};

static void h_init(struct h *h, int nredis)
{
    memset(h, 0, sizeof *h);
    log_init("test", LOG_ERROR);
    uv_loop_init(&h->loop);
    h->rc = test_redis_connect(DB);
    h->nredis = nredis;
    for (int i = 0; i < nredis; i++) {
        struct redis_opts o = {.url = test_redis_url(DB), .name = "test-ratelimit"};
        const char *err = NULL;
        h->redis[i] = redis_new(&h->loop, &o, &err);
        cr_assert_not_null(h->redis[i], "%s", err);
    }
    for (int i = 0; i < nredis; i++)
        cr_assert(test_loop_until_redis_up(&h->loop, h->redis[i], 5000),
                  "redis connection %d did not come up", i);
}

static void h_close(struct h *h)
{
    for (int i = 0; i < h->nredis; i++)
        redis_close(h->redis[i], NULL, NULL);
    uv_run(&h->loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&h->loop), 0, "handles left open");
    redisFree(h->rc);
}

static void on_take(int granted, double at_s, void *arg)
{
    struct h *h = arg;
    if (h->ntakes < MAX_TAKES) {
        h->granted[h->ntakes] = granted;
        h->at[h->ntakes] = at_s;
    }
    h->ntakes++;
}

struct take_wait {
    struct h *h;
    int want;
};

static int take_answered(void *arg)
{
    struct take_wait *w = arg;
    return w->h->ntakes >= w->want;
}

/* Take one token and run the loop until the answer is in; returns its index. */
static int take_one(struct h *h, struct rate_limit *rl, const char *key)
{
    struct take_wait w = {h, h->ntakes + 1};
    cr_assert_eq(rate_limit_take(rl, key, on_take, h), 0);
    cr_assert(test_loop_until(&h->loop, take_answered, &w, 10000), "no answer from Redis");
    return w.want - 1;
}

/* Redis's clock in seconds (TIME). */
static double redis_now(struct h *h)
{
    redisReply *r = test_redis_cmd(h->rc, "TIME");
    double t = atof(r->element[0]->str) + atof(r->element[1]->str) / 1e6;
    freeReplyObject(r);
    return t;
}

Test(rate_limit, burst_then_denied_with_a_wait)
{
    struct h h;
    h_init(&h, 1);
    const char *err = NULL;
    cr_assert_null(rate_limit_new(h.redis[0], "x", 0, 1, &err));
    cr_assert_null(rate_limit_new(h.redis[0], "x", 1, 0.5, &err));
    cr_assert_null(rate_limit_new(h.redis[0], "", 1, 1, &err));
    struct rate_limit *rl = rate_limit_new(h.redis[0], "burst", 0.01, 3, &err);
    cr_assert_not_null(rl, "%s", err);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(h.granted[take_one(&h, rl, NULL)], 1, "take %d", i);
    double before = clock_wall_s();
    int k = take_one(&h, rl, NULL);
    cr_assert_eq(h.granted[k], 0);
    /* 0.01 tokens/s: the next token is about 100 s away. */
    cr_assert(h.at[k] > before + 90 && h.at[k] < clock_wall_s() + 101, "at %f", h.at[k] - before);
    /* A keyless denial takes nothing: asking again gives the same answer, no debt. */
    int k2 = take_one(&h, rl, NULL);
    cr_assert_eq(h.granted[k2], 0);
    cr_assert(h.at[k2] - h.at[k] < 1.0);
    cr_assert(test_redis_int(h.rc, "PTTL tierone:ratelimit:burst") > 0, "bucket key must expire");
    struct job_error *e = rate_limit_job_error(rl, h.at[k]);
    cr_assert_eq(e->kind, JOB_ERR_RESCHEDULE);
    cr_assert_str_eq(e->error_class, "Tierone::RateLimit");
    cr_assert_float_eq(e->retry_at, h.at[k], 1e-9);
    job_error_free(e);
    rate_limit_free(rl);
    h_close(&h);
}

Test(rate_limit, denied_keys_line_up_and_are_granted_on_return)
{
    struct h h;
    h_init(&h, 1);
    const char *err = NULL;
    struct rate_limit *rl = rate_limit_new(h.redis[0], "queue", 10, 1, &err);
    cr_assert_eq(h.granted[take_one(&h, rl, "j0")], 1);
    int first = h.ntakes;
    for (int i = 1; i <= 5; i++) {
        char key[8];
        snprintf(key, sizeof key, "j%d", i);
        take_one(&h, rl, key);
    }
    /* Five reservations, one token (0.1 s) apart, in arrival order. */
    for (int i = first; i < first + 5; i++) {
        cr_assert_eq(h.granted[i], 0);
        if (i > first) {
            double gap = h.at[i] - h.at[i - 1];
            cr_assert(gap > 0.05 && gap < 0.2, "gap %f between reservations", gap);
        }
    }
    double last = h.at[first + 4];
    /* Coming back early keeps the place in line and adds no debt. */
    int again = take_one(&h, rl, "j5");
    cr_assert_eq(h.granted[again], 0);
    cr_assert(h.at[again] <= last + 0.05, "an early return must not queue again");
    int newcomer = take_one(&h, rl, "j6");
    cr_assert(h.at[newcomer] > last + 0.05, "a newcomer lines up behind j5");
    /* Poll until j1's reservation is due: it is granted without a new token, once. */
    double due = h.at[first];
    int granted;
    do {
        int k = take_one(&h, rl, "j1");
        granted = h.granted[k];
        h.ntakes = k; /* reuse the slot while polling */
        if (!granted)
            uv_sleep(10); /* poll interval: the condition is Redis's clock passing `due` */
    } while (!granted && clock_wall_s() < due + 5);
    cr_assert_eq(granted, 1);
    cr_assert(clock_wall_s() >= due - 0.05, "granted %f s before its reservation",
              due - clock_wall_s());
    cr_assert_eq(test_redis_int(h.rc, "EXISTS tierone:ratelimit:queue:r:j1"), 0);
    rate_limit_free(rl);
    h_close(&h);
}

struct fleet {
    struct h *h;
    struct rate_limit *rl;
    int granted;
    int outstanding;
    uint64_t end_ms;
};

static void fleet_take(struct fleet *f);
static void fleet_on_take(int granted, double at_s, void *arg)
{
    struct fleet *f = arg;
    f->outstanding--;
    cr_assert_neq(granted, -1);
    f->granted += granted == 1;
    if (clock_mono_ms() < f->end_ms)
        fleet_take(f);
}
static void fleet_take(struct fleet *f)
{
    if (rate_limit_take(f->rl, NULL, fleet_on_take, f) == 0)
        f->outstanding++;
}

/* All ten fleets have their answers in (f: an array of 10). */
static int fleet_idle(void *arg)
{
    const struct fleet *f = arg;
    for (int i = 0; i < 10; i++)
        if (f[i].outstanding)
            return 0;
    return 1;
}

Test(rate_limit, ten_processes_share_one_bucket)
{
    struct h h;
    h_init(&h, 10);
    struct fleet f[10];
    const double rate = 20, burst = 5;
    double t0 = redis_now(&h);
    for (int i = 0; i < 10; i++) {
        const char *err = NULL;
        f[i] = (struct fleet){.h = &h, .end_ms = clock_mono_ms() + 1000};
        f[i].rl = rate_limit_new(h.redis[i], "fleet", rate, burst, &err);
        fleet_take(&f[i]);
    }
    cr_assert(test_loop_until(&h.loop, fleet_idle, f, 30000), "takes still outstanding");
    double elapsed = redis_now(&h) - t0;
    int total = 0;
    for (int i = 0; i < 10; i++) {
        total += f[i].granted;
        rate_limit_free(f[i].rl);
    }
    cr_assert(total >= burst, "at least the burst is granted (%d)", total);
    cr_assert(total <= burst + rate * elapsed + 1, "%d grants in %.3f s exceed the limit", total,
              elapsed);
    h_close(&h);
}

/* ---- service_call ------------------------------------------------------------------------ */

struct outcome {
    int done;
    struct job_error *err;
    long status;
    char body[256];
};

static void on_call(struct job_error *err, struct http_response *resp, void *arg)
{
    struct outcome *o = arg;
    o->done = 1;
    o->err = err;
    o->status = resp ? resp->status : -1;
    if (resp)
        snprintf(o->body, sizeof o->body, "%s", resp->body);
}

static void run_until_done(struct h *h, struct outcome *o)
{
    cr_assert(test_loop_until_flag(&h->loop, &o->done, 10000), "the call never finished");
}

static void client_closed(void *arg)
{
    *(int *)arg = 1;
}

Test(service, call_classifies_and_respects_the_rate_limit)
{
    struct h h;
    h_init(&h, 1);
    struct fake_http *fake = fake_http_start(NULL);
    fake_http_route_static(fake, "POST", "/ok", 200, "application/json", "{\"id\":7}");
    fake_http_route_static(fake, "GET", "/busy", 429, "text/plain", "Retry later\n");
    fake_http_route_static(fake, "GET", "/html", 200, "text/html", "<html>");
    char *err = NULL;
    struct http_client *http = http_client_new(&h.loop, NULL, &err);
    cr_assert_not_null(http, "%s", err);
    struct service s = {.http = http, .policy = {"Chatwoot", 60}, .timeout_ms = 5000};
    char url[256];
    const char *hdr[] = {"Content-Type: application/json"};

    snprintf(url, sizeof url, "%s/ok", fake_http_url(fake));
    struct service_request rq = {.method = "POST",
                                 .url = url,
                                 .headers = hdr,
                                 .nheaders = 1,
                                 .body = "{}",
                                 .body_len = 2,
                                 .what = "POST /ok"};
    struct outcome o = {0};
    cr_assert_eq(service_call(&s, &rq, on_call, &o), 0);
    cr_assert_eq(o.done, 0, "the callback must not run inside service_call");
    run_until_done(&h, &o);
    cr_assert_null(o.err);
    cr_assert_eq(o.status, 200);
    cr_assert_str_eq(o.body, "{\"id\":7}");
    cr_assert_str_eq(fake_http_request_at(fake, 0)->body, "{}");

    snprintf(url, sizeof url, "%s/busy", fake_http_url(fake));
    struct service_request busy = {.url = url, .what = "GET /busy"};
    o = (struct outcome){0};
    double before = clock_wall_s();
    service_call(&s, &busy, on_call, &o);
    run_until_done(&h, &o);
    cr_assert_eq(o.err->kind, JOB_ERR_RETRY_AT);
    cr_assert_float_eq(o.err->retry_at, http_failure_window_end(60, before), 1.0);
    cr_assert_str_eq(o.err->error_message, "GET /busy -> HTTP 429: Retry later");
    job_error_free(o.err);

    /* service_parse_json turns a proxy's HTML into a retryable BadResponse. */
    struct http_response html = {.result = HTTP_OK, .status = 200, .body = "<html>", .body_len = 6};
    struct job_error *perr = NULL;
    cr_assert_null(service_parse_json(&s, &html, "GET /html", &perr));
    cr_assert_eq(perr->kind, JOB_ERR_RETRY);
    cr_assert_str_eq(perr->error_class, "Tierone::Chatwoot::BadResponse");
    job_error_free(perr);

    /* With a limit whose bucket is empty: rescheduled, nothing sent. */
    const char *rerr = NULL;
    s.limit = rate_limit_new(h.redis[0], "svc", 0.001, 1, &rerr);
    snprintf(url, sizeof url, "%s/ok", fake_http_url(fake));
    o = (struct outcome){0};
    service_call(&s, &rq, on_call, &o); /* takes the only token */
    run_until_done(&h, &o);
    cr_assert_null(o.err);
    size_t sent = fake_http_count(fake);
    o = (struct outcome){0};
    rq.jid = "abc";
    service_call(&s, &rq, on_call, &o);
    run_until_done(&h, &o);
    cr_assert_eq(o.err->kind, JOB_ERR_RESCHEDULE);
    cr_assert(o.err->retry_at > clock_wall_s() + 100);
    cr_assert_eq(o.status, -1, "no response when nothing was sent");
    cr_assert_eq(fake_http_count(fake), sent, "a request went out without a token");
    job_error_free(o.err);
    rate_limit_free(s.limit);

    /* Redis down for the limit: retry later, nothing sent. */
    struct redis_opts ro = {.url = "redis://127.0.0.1:1/0", .name = "down"};
    const char *uerr = NULL;
    struct redis *down = redis_new(&h.loop, &ro, &uerr);
    s.limit = rate_limit_new(down, "svc", 1, 1, &rerr);
    o = (struct outcome){0};
    service_call(&s, &rq, on_call, &o);
    run_until_done(&h, &o);
    cr_assert_eq(o.err->kind, JOB_ERR_RETRY);
    cr_assert_str_eq(o.err->error_class, "Tierone::RateLimit::Unavailable");
    cr_assert_eq(fake_http_count(fake), sent);
    job_error_free(o.err);
    rate_limit_free(s.limit);
    redis_close(down, NULL, NULL);

    int closed = 0;
    http_client_close(http, client_closed, &closed);
    h_close(&h);
    cr_assert(closed);
    fake_http_free(fake);
}
