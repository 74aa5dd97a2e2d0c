/* test_loop: run a test's libuv loop until something happened, safely.
 *
 * The naive `while (!done) uv_run(loop, UV_RUN_ONCE);` can hang: when the completion runs
 * in the timer phase (a curl timeout, a deferred error), UV_RUN_ONCE goes on to poll, and
 * with no timer left and a live handle (a Redis connection) it blocks forever. These
 * helpers keep an unreferenced 10 ms ticker running while they wait, which bounds every
 * poll without keeping the loop alive, and give up at a deadline. */
#ifndef TIERONE_TEST_LOOP_H
#define TIERONE_TEST_LOOP_H

#include "redis.h"

#include <uv.h>

/* Run loop until cond(arg) is true or timeout_ms passes. Returns cond's last value. The
 * ticker is closed before returning, so the loop holds nothing of ours afterwards. */
int test_loop_until(uv_loop_t *loop, int (*cond)(void *arg), void *arg, unsigned timeout_ms);

/* Until *flag != 0 (a callback's "done" counter). */
int test_loop_until_flag(uv_loop_t *loop, const int *flag, unsigned timeout_ms);

/* Until the connection is up (AUTH and SELECT done). */
int test_loop_until_redis_up(uv_loop_t *loop, struct redis *r, unsigned timeout_ms);

#endif
