/* waker: while the fetcher pauses between polls of empty queues, one more Redis connection
 * blocks in BRPOP on the wake lists of this process's queues (lib/wake.h). A producer's
 * token ends the pause at once: the fetch runs now instead of up to fetch_idle_max later.
 *
 * The BRPOP is sent when a pause starts and not already waiting; it ends with a token
 * (fetch now; if that fetch finds nothing the next pause sends it again), with a timeout
 * while still pausing (sent again), or with the connection's loss (the next pause sends it
 * again once Redis is back; lib/redis logs the loss, and a failover reply such as READONLY
 * counts as one). Any other error reply (a wake key that is not a list) is logged once and
 * turns the waker off: the polling alone still fetches every job. */
#include "engine.h"
#include "log.h"
#include "wake.h"
#include "xalloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* BRPOP's timeout: whole seconds work on every Redis version. */
#define WAKER_BLOCK_S 2
#define WAKER_STR(x)  #x
#define WAKER_XSTR(x) WAKER_STR(x)

static void waker_on_reply(struct redis *r, redisReply *reply, void *data)
{
    struct worker *w = data;
    (void)r;
    w->wake_waiting = 0;
    if (!reply || redis_reply_is_failover(reply) || w->stopping || w->closing)
        return; /* lost, closed or failing over: the next pause sends it again */
    if (reply->type == REDIS_REPLY_ERROR) {
        log_warn("wake-ups off, polling only: BRPOP of the wake lists failed: %s", reply->str);
        w->wake_off = 1;
        return;
    }
    if (reply->type == REDIS_REPLY_ARRAY) {
        w->wakeups++;
        worker_fetch_wake(w); /* ends the pause; the next one sends the BRPOP again */
        return;
    }
    waker_arm(w); /* the timeout (a nil reply): send it again if still pausing */
}

void waker_arm(struct worker *w)
{
    if (!w->wake_redis || w->wake_waiting || w->wake_off || w->quiet || w->stopping || w->closing ||
        !uv_is_active((uv_handle_t *)&w->fetch_timer))
        return;
    if (redis_command_argv(w->wake_redis, waker_on_reply, w, (int)w->wake_argc, w->wake_argv,
                           NULL) == 0)
        w->wake_waiting = 1;
}

void waker_init(struct worker *w)
{
    w->wake_argc = w->nqueues + 2;
    w->wake_argv = xcalloc(w->wake_argc, sizeof *w->wake_argv);
    w->wake_argv[0] = "BRPOP";
    for (size_t i = 0; i < w->nqueues; i++)
        w->wake_argv[i + 1] = xasprintf(WAKE_KEY_PREFIX "%s", w->queues[i].name);
    w->wake_argv[w->wake_argc - 1] = WAKER_XSTR(WAKER_BLOCK_S);
    const char *why = NULL;
    struct redis_opts ro = {.url = w->cfg->redis_url,
                            .name = "tierone-worker-wake",
                            .command_timeout_ms = WAKER_BLOCK_S * 1000 + 10000}; /* + the usual */
    w->wake_redis = redis_new(w->loop, &ro, &why);
    if (!w->wake_redis) /* the worker's own connection took the same URL, so not expected */
        log_error("wake-ups off, polling only: TIERONE_REDIS_URL %s", why);
}

void waker_close(struct worker *w)
{
    if (w->wake_redis)
        redis_close(w->wake_redis, NULL, NULL); /* a BRPOP in flight completes with NULL */
    w->wake_redis = NULL;
    for (size_t i = 1; w->wake_argv && i + 1 < w->wake_argc; i++)
        free((char *)w->wake_argv[i]);
    free(w->wake_argv);
    w->wake_argv = NULL;
}
