/* defer: a call put off to the end of the current libuv loop iteration, so the work of
 * every callback of the iteration is done once, together (write a batch, flush a buffer).
 *
 * An armed defer runs its function once: in the check phase, right after the iteration's
 * I/O callbacks (where most work is submitted); or, when armed after that (from a check,
 * close or timer callback), in the prepare phase, before the loop next blocks. So armed
 * work never waits for the loop to wake up for something else. A uv_check_t and a
 * uv_prepare_t, embedded; the owner closes them with defer_close. */
#ifndef TIERONE_DEFER_H
#define TIERONE_DEFER_H

#include <uv.h>

struct defer {
    uv_check_t check;
    uv_prepare_t prepare;
    void (*fn)(void *arg);
    void *arg;
    void (*closed)(void *arg);
    int open; /* handles not yet closed, while closing */
};

/* Set up d on loop: fn(arg) is what it runs. Nothing is armed. */
void defer_init(struct defer *d, uv_loop_t *loop, void (*fn)(void *arg), void *arg);
/* Run fn once, by the end of this iteration (see above); nothing if already armed. */
void defer_arm(struct defer *d);
/* Forget the pending run, if any (fn does not run). */
void defer_disarm(struct defer *d);
/* 1 while a run is pending. */
int defer_armed(const struct defer *d);
/* Close both handles (disarmed); closed(arg) runs once both are closed (may be NULL). d
 * must stay valid until then. */
void defer_close(struct defer *d, void (*closed)(void *arg));

#endif
