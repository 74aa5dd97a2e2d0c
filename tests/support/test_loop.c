/* test_loop: bounded waits on a test's loop (see the header). */
#include "test_loop.h"

#include "clock.h"

static void test_loop_tick(uv_timer_t *t)
{
    (void)t;
}

static void test_loop_closed(uv_handle_t *h)
{
    *(int *)h->data = 1;
}

int test_loop_until(uv_loop_t *loop, int (*cond)(void *arg), void *arg, unsigned timeout_ms)
{
    uv_timer_t ticker;
    int closed = 0;
    uv_timer_init(loop, &ticker);
    ticker.data = &closed;
    uv_timer_start(&ticker, test_loop_tick, 10, 10);
    uv_unref((uv_handle_t *)&ticker);
    uint64_t end = clock_mono_ms() + timeout_ms;
    int ok = cond(arg);
    while (!ok && clock_mono_ms() < end) {
        uv_run(loop, UV_RUN_ONCE);
        ok = cond(arg);
    }
    uv_close((uv_handle_t *)&ticker, test_loop_closed);
    while (!closed)
        uv_run(loop, UV_RUN_NOWAIT);
    return ok;
}

static int test_loop_flag_set(void *arg)
{
    return *(const int *)arg != 0;
}

int test_loop_until_flag(uv_loop_t *loop, const int *flag, unsigned timeout_ms)
{
    return test_loop_until(loop, test_loop_flag_set, (void *)flag, timeout_ms);
}

static int test_loop_redis_is_up(void *arg)
{
    return redis_is_up(arg);
}

int test_loop_until_redis_up(uv_loop_t *loop, struct redis *r, unsigned timeout_ms)
{
    return test_loop_until(loop, test_loop_redis_is_up, r, timeout_ms);
}
