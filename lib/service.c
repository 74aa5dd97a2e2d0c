/* service: the life of one call to an outside service.
 *
 *   new --limit?--> waiting_token --granted--> in_flight --done--> callback, freed
 *          \                      \--denied/Redis down--> deferred --> callback, freed
 *           \--no limit-----------> in_flight
 *
 * A call that ends without reaching the network (no token, Redis down, the HTTP client
 * refused it) is finished from a zero-delay timer so the callback never runs inside
 * service_call(). The request itself is copied only when it must wait for a token: without
 * a limit it goes straight to http_client_request, which makes its own copy. */
#include "service.h"

#include "clock.h"
#include "xalloc.h"

#include <stdlib.h>
#include <string.h>

struct service_call {
    struct service *s;
    service_cb cb;
    void *arg;
    char *what, *jid;
    /* While waiting for a token: a copy of the request (all fields owned). */
    struct service_request held;
    struct job_error *deferred_err; /* with the timer: the verdict to deliver */
    uv_timer_t timer;
};

static void call_hold(struct service_call *c, const struct service_request *req)
{
    struct service_request *h = &c->held;
    h->method = xstrdup(req->method);
    h->url = xstrdup(req->url);
    char **hdrs = xcalloc(req->nheaders + 1, sizeof *hdrs);
    for (size_t i = 0; i < req->nheaders; i++)
        hdrs[i] = xstrdup(req->headers[i]);
    h->headers = (const char *const *)hdrs;
    h->nheaders = req->nheaders;
    if (req->body) {
        char *body = xmalloc(req->body_len + 1);
        memcpy(body, req->body, req->body_len);
        body[req->body_len] = '\0';
        h->body = body;
        h->body_len = req->body_len;
    }
}

static void call_free(struct service_call *c)
{
    struct service_request *h = &c->held;
    free((char *)h->method);
    free((char *)h->url);
    for (size_t i = 0; i < h->nheaders; i++)
        free((char *)h->headers[i]);
    free((char **)h->headers);
    free((void *)h->body);
    free(c->what);
    free(c->jid);
    free(c);
}

static void call_timer_closed(uv_handle_t *h)
{
    struct service_call *c = h->data;
    c->cb(c->deferred_err, NULL, c->arg);
    call_free(c);
}

static void call_timer_fired(uv_timer_t *t)
{
    uv_close((uv_handle_t *)t, call_timer_closed);
}

/* Finish the call with err on a later loop turn. */
static void call_defer(struct service_call *c, struct job_error *err)
{
    c->deferred_err = err;
    uv_timer_init(http_client_loop(c->s->http), &c->timer);
    c->timer.data = c;
    uv_timer_start(&c->timer, call_timer_fired, 0, 0);
}

static void call_on_response(struct http_response *resp, void *arg)
{
    struct service_call *c = arg;
    struct job_error *err = http_failure_classify(resp, &c->s->policy, c->what, clock_wall_s());
    c->cb(err, resp, c->arg);
    call_free(c);
}

static void call_send(struct service_call *c, const struct service_request *r)
{
    struct http_request req = {
        .method = r->method,
        .url = r->url,
        .headers = r->headers,
        .nheaders = r->nheaders,
        .body = r->body,
        .body_len = r->body_len,
        .timeout_ms = c->s->timeout_ms,
        .max_body = c->s->max_body,
    };
    char *why = NULL;
    if (http_client_request(c->s->http, &req, call_on_response, c, &why) != 0) {
        char *cls = xasprintf("Tierone::%s::TransportError", c->s->policy.service);
        struct job_error *e = job_error_new(JOB_ERR_PERMANENT, cls, "%s -> request refused: %s",
                                            c->what, why ? why : "unknown reason");
        free(cls);
        free(why);
        call_defer(c, e);
    }
}

static void call_on_token(int granted, double at_s, void *arg)
{
    struct service_call *c = arg;
    if (granted == 1) {
        call_send(c, &c->held);
        return;
    }
    if (granted == 0) {
        call_defer(c, rate_limit_job_error(c->s->limit, at_s));
        return;
    }
    call_defer(c, job_error_new(JOB_ERR_RETRY, "Tierone::RateLimit::Unavailable",
                                "%s: Redis did not answer the rate limit %s", c->what,
                                rate_limit_name(c->s->limit)));
}

int service_call(struct service *s, const struct service_request *req, service_cb cb, void *arg)
{
    struct service_call *c = xcalloc(1, sizeof *c);
    c->s = s;
    c->cb = cb;
    c->arg = arg;
    c->what = req->what ? xstrdup(req->what)
                        : xasprintf("%s %s", req->method ? req->method : "GET", req->url);
    c->jid = xstrdup(req->jid);
    if (!s->limit) {
        call_send(c, req);
        return 0;
    }
    call_hold(c, req);
    if (rate_limit_take(s->limit, c->jid, call_on_token, c) != 0)
        call_on_token(-1, 0, c);
    return 0;
}

json_t *service_parse_json(const struct service *s, const struct http_response *resp,
                           const char *what, struct job_error **err)
{
    json_error_t je;
    json_t *j = json_loadb(resp->body, resp->body_len, JSON_DECODE_ANY, &je);
    if (j)
        return j;
    char *cls = xasprintf("Tierone::%s::BadResponse", s->policy.service);
    *err = job_error_new(JOB_ERR_RETRY, cls, "%s -> HTTP %ld with a body that is not JSON: %s",
                         what ? what : "response", resp->status, je.text);
    free(cls);
    return NULL;
}
