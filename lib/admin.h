/* admin: a daemon's admin HTTP endpoints, on top of http_server:
 *
 *   GET /healthz  200 "ok" while the process is alive (the loop answers)
 *   GET /readyz   200 "ready", or 503 with the reason from the readiness callback
 *                 (e.g. "redis down")
 *   GET /metrics  200 text/plain; version=0.0.4, body written by the metrics callback
 *
 * HEAD works wherever GET does. Other methods on these paths get 405 with
 * `Allow: GET, HEAD`; other paths get 404. The query string is ignored. Answers are
 * synchronous, so the callbacks run on the loop thread and must not block.
 * This module knows nothing about which metrics exist: the caller's callback renders them. */
#ifndef TIERONE_ADMIN_H
#define TIERONE_ADMIN_H

#include <stddef.h>
#include <uv.h>

#include "buf.h"

struct admin;

/* NULL when ready, otherwise a short reason ("redis down"); the string only has to stay
 * valid until the callback returns (it is copied). */
typedef const char *(*admin_ready_fn)(void *ud);
/* Append the Prometheus text exposition to out (which starts empty). */
typedef void (*admin_metrics_fn)(struct buf *out, void *ud);
typedef void (*admin_done_fn)(void *arg);

struct admin_opts {
    const char *host;         /* default "0.0.0.0" (scraped from outside the pod) */
    int port;                 /* 0 = ephemeral (see admin_port) */
    admin_ready_fn ready;     /* NULL = always ready */
    admin_metrics_fn metrics; /* NULL = empty body */
    void *ud;                 /* passed to both callbacks */
    unsigned max_connections; /* default 16 */
};

/* Listen and serve. Returns the admin server, or NULL with a reason in err (errcap bytes);
 * after a failure, run the loop once so the listener handle closes. */
struct admin *admin_start(uv_loop_t *loop, const struct admin_opts *opts, char *err, size_t errcap);
/* The bound port. */
int admin_port(const struct admin *a);
/* Stop gracefully: no new connections, answered ones close. done(arg) (may be NULL) runs
 * once every handle is closed; the admin server is then freed. Call at most once. */
void admin_stop(struct admin *a, admin_done_fn done, void *arg);
/* Close every connection now (e.g. at a shutdown deadline), starting admin_stop(a, NULL,
 * NULL) first if it was not called. a must not be used afterwards. */
void admin_force_close(struct admin *a);

#endif
