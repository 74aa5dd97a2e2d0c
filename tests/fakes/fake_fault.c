/* fake_fault: a mutex-protected FIFO of queued misbehaviour for the fake services. */
#include "fake_fault.h"

#include "xalloc.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct fault_item {
    struct fault_item *next;
    struct fake_fault f; /* strings owned */
    unsigned times;
};

struct fake_faults {
    pthread_mutex_t mu;
    struct fault_item *head, *tail;
};

struct fake_faults *fake_faults_new(void)
{
    struct fake_faults *q = xcalloc(1, sizeof *q);
    pthread_mutex_init(&q->mu, NULL);
    return q;
}

static void fault_item_free(struct fault_item *it)
{
    free((char *)it->f.retry_after);
    free((char *)it->f.header);
    free((char *)it->f.content_type);
    free((char *)it->f.body);
    free(it);
}

void fake_faults_free(struct fake_faults *q)
{
    if (!q)
        return;
    while (q->head) {
        struct fault_item *it = q->head;
        q->head = it->next;
        fault_item_free(it);
    }
    pthread_mutex_destroy(&q->mu);
    free(q);
}

void fake_faults_push(struct fake_faults *q, const struct fake_fault *f, unsigned times)
{
    if (times == 0)
        return;
    struct fault_item *it = xcalloc(1, sizeof *it);
    it->f = *f;
    it->f.retry_after = xstrdup(f->retry_after);
    it->f.header = xstrdup(f->header);
    it->f.content_type = xstrdup(f->content_type);
    it->f.body = xstrdup(f->body);
    it->times = times;
    pthread_mutex_lock(&q->mu);
    if (q->tail)
        q->tail->next = it;
    else
        q->head = it;
    q->tail = it;
    pthread_mutex_unlock(&q->mu);
}

/* Fill resp from f; returns 1 unless f only delays. */
static int fault_fill(const struct fake_fault *f, struct fake_http_response *resp)
{
    resp->delay_ms = f->delay_ms;
    if (f->pass_through)
        return 0;
    resp->action = f->action;
    resp->status = f->status ? f->status : 200;
    if (f->retry_after)
        fake_http_response_header(resp, "Retry-After", "%s", f->retry_after);
    if (f->header) {
        buf_append(&resp->headers, f->header, strlen(f->header));
        buf_append(&resp->headers, "\r\n", 2);
    }
    const char *body = f->body ? f->body : "";
    const char *ct = f->content_type;
    if (!ct)
        ct = (body[0] == '{' || body[0] == '[') ? "application/json" : "text/plain";
    if (body[0] || f->content_type)
        fake_http_response_header(resp, "Content-Type", "%s", ct);
    fake_http_response_body(resp, body);
    return 1;
}

int fake_faults_apply(struct fake_faults *q, struct fake_http_response *resp)
{
    int stop = 0;
    pthread_mutex_lock(&q->mu);
    struct fault_item *it = q->head;
    if (it) {
        stop = fault_fill(&it->f, resp);
        if (--it->times == 0) {
            q->head = it->next;
            if (!q->head)
                q->tail = NULL;
            fault_item_free(it);
        }
    }
    pthread_mutex_unlock(&q->mu);
    return stop;
}

unsigned fake_faults_pending(struct fake_faults *q)
{
    unsigned n = 0;
    pthread_mutex_lock(&q->mu);
    for (struct fault_item *it = q->head; it; it = it->next)
        n += it->times;
    pthread_mutex_unlock(&q->mu);
    return n;
}
