/* defer: a call put off to the end of the loop iteration (see defer.h). */
#include "defer.h"

static void defer_run(struct defer *d)
{
    defer_disarm(d); /* first: fn may arm it again */
    d->fn(d->arg);
}

static void defer_on_check(uv_check_t *h)
{
    defer_run(h->data);
}

static void defer_on_prepare(uv_prepare_t *h)
{
    defer_run(h->data);
}

void defer_init(struct defer *d, uv_loop_t *loop, void (*fn)(void *arg), void *arg)
{
    uv_check_init(loop, &d->check);
    uv_prepare_init(loop, &d->prepare);
    d->check.data = d->prepare.data = d;
    d->fn = fn;
    d->arg = arg;
    d->closed = NULL;
    d->open = 0;
}

int defer_armed(const struct defer *d)
{
    return uv_is_active((const uv_handle_t *)&d->check);
}

void defer_arm(struct defer *d)
{
    if (defer_armed(d))
        return;
    uv_check_start(&d->check, defer_on_check);
    uv_prepare_start(&d->prepare, defer_on_prepare);
}

void defer_disarm(struct defer *d)
{
    uv_check_stop(&d->check);
    uv_prepare_stop(&d->prepare);
}

static void defer_on_closed(uv_handle_t *h)
{
    struct defer *d = h->data;
    if (--d->open == 0 && d->closed)
        d->closed(d->arg);
}

void defer_close(struct defer *d, void (*closed)(void *arg))
{
    d->closed = closed;
    d->open = 2;
    uv_close((uv_handle_t *)&d->check, defer_on_closed);
    uv_close((uv_handle_t *)&d->prepare, defer_on_closed);
}
