/* defer: a call put off to the end of the loop iteration runs once however often it was
 * armed, runs before the loop blocks when armed from a timer, can be disarmed, and closes
 * with one callback. */
#include "defer.h"

#include <criterion/criterion.h>

struct counts {
    int runs, closed;
    struct defer *d;
    int rearm; /* arm again from inside the run, this many times */
};

static void on_run(void *arg)
{
    struct counts *c = arg;
    c->runs++;
    if (c->rearm > 0) {
        c->rearm--;
        defer_arm(c->d);
    }
}

static void on_closed(void *arg)
{
    ((struct counts *)arg)->closed++;
}

static void on_timer(uv_timer_t *t)
{
    struct counts *c = t->data;
    defer_arm(c->d);
    defer_arm(c->d);
}

static void finish(uv_loop_t *loop, struct defer *d, struct counts *c)
{
    defer_close(d, on_closed);
    uv_run(loop, UV_RUN_DEFAULT);
    cr_expect_eq(c->closed, 1);
    cr_assert_eq(uv_loop_close(loop), 0);
}

Test(defer, armed_twice_from_a_timer_runs_once_in_the_same_iteration, .timeout = 10)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct defer d;
    struct counts c = {.d = &d};
    defer_init(&d, &loop, on_run, &c);
    uv_timer_t t;
    uv_timer_init(&loop, &t);
    t.data = &c;
    uv_timer_start(&t, on_timer, 0, 0);
    /* One iteration: timers run first, then the prepare phase, before the loop would block
     * with nothing else to wait for: the run happens there, once. */
    uv_run(&loop, UV_RUN_ONCE);
    cr_expect_eq(c.runs, 1);
    cr_expect_not(defer_armed(&d));
    uv_run(&loop, UV_RUN_NOWAIT);
    cr_expect_eq(c.runs, 1, "once per arming");
    uv_close((uv_handle_t *)&t, NULL);
    finish(&loop, &d, &c);
}

Test(defer, arming_from_its_own_run_runs_it_again_later)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct defer d;
    struct counts c = {.d = &d, .rearm = 2};
    defer_init(&d, &loop, on_run, &c);
    defer_arm(&d);
    for (int i = 0; i < 10 && c.runs < 3; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
    cr_expect_eq(c.runs, 3);
    cr_expect_not(defer_armed(&d));
    finish(&loop, &d, &c);
}

Test(defer, disarmed_it_does_not_run)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct defer d;
    struct counts c = {.d = &d};
    defer_init(&d, &loop, on_run, &c);
    defer_arm(&d);
    defer_disarm(&d);
    uv_run(&loop, UV_RUN_NOWAIT);
    cr_expect_eq(c.runs, 0);
    defer_arm(&d); /* closing an armed defer does not run it either */
    finish(&loop, &d, &c);
    cr_expect_eq(c.runs, 0);
}
