/* healthcheck: the `--healthcheck` mode of the daemons, so a container image needs no curl
 * (Docker/Podman HEALTHCHECK, or an exec probe).
 *
 * One blocking HTTP/1.1 GET on the daemon's own port, with one overall deadline (name
 * lookup, connect, send and the status line all count against it); no libuv, no curl.
 * The answer is healthy when its status is 2xx. The process exit status follows Docker's
 * HEALTHCHECK contract: 0 healthy, 1 unhealthy (never 2, which Docker reserves).
 *
 * Flag semantics (both daemons wire it the same way, see healthcheck_daemon):
 *
 *   tierone-worker --healthcheck [other flags]
 *   tierone-ingest --healthcheck [other flags]
 *
 * read the normal configuration (defaults < environment < the other flags, exactly as a
 * normal start, so the container's env decides the port), then, instead of starting the
 * daemon, GET /healthz on the daemon's own admin server (TIERONE_ADMIN_HOST and
 * TIERONE_ADMIN_PORT); when the admin port is 0 (admin server off) the ingest checks its
 * webhook server (TIERONE_LISTEN_HOST, TIERONE_LISTEN_PORT), which also answers /healthz;
 * the worker has no other server, so with TIERONE_ADMIN_PORT=0 it reports unhealthy. A
 * listen host of "0.0.0.0", "" or NULL is checked on 127.0.0.1 and "::" on ::1. The check
 * waits at most HEALTHCHECK_TIMEOUT_MS. It prints one line: "healthy: ..." to stdout or
 * "unhealthy: ..." to stderr, and exits with healthcheck_main's status. A configuration
 * error exits 1 too (map config_main's 2), so Docker never sees the reserved 2.
 *
 * Wiring, in main() before anything else (no log_init, no loop):
 *
 *     bool hc = healthcheck_take_flag(&argc, argv);
 *     enum config_action act = config_main(&spec, &cfg, argc, argv, NULL);
 *     if (act != CONFIG_RUN)
 *         return hc && act == CONFIG_EXIT_USAGE ? 1 : act;
 *     if (hc) {
 *         int rc = healthcheck_daemon(cfg.admin_host, cfg.admin_port, NULL, 0);   // worker
 *         // ingest: healthcheck_daemon(cfg.admin_host, cfg.admin_port,
 *         //                            cfg.listen_host, cfg.listen_port);
 *         config_free(&spec, &cfg);
 *         return rc;
 *     }
 */
#ifndef TIERONE_HEALTHCHECK_H
#define TIERONE_HEALTHCHECK_H

#include <stdbool.h>
#include <stddef.h>

/* The flag and the overall deadline used by healthcheck_daemon. The Dockerfile's
 * HEALTHCHECK --timeout (5s) is above it, so Docker sees our verdict, not its own kill. */
#define HEALTHCHECK_FLAG       "--healthcheck"
#define HEALTHCHECK_TIMEOUT_MS 3000
#define HEALTHCHECK_PATH       "/healthz"

/* Exit statuses (Docker's HEALTHCHECK contract). */
#define HEALTHCHECK_HEALTHY   0
#define HEALTHCHECK_UNHEALTHY 1

/* GET `path` (NULL or "": "/healthz") on host:port within timeout_ms (<= 0: 3000) and
 * describe the outcome in msg (msgcap bytes, always NUL-terminated when msgcap > 0), e.g.
 * "healthy: 200 from 127.0.0.1:9091/healthz",
 * "unhealthy: connection refused by 127.0.0.1:9091/healthz",
 * "unhealthy: no answer within 3000 ms from [::1]:9091/healthz",
 * "unhealthy: 503 from 127.0.0.1:8080/healthz",
 * "unhealthy: not an HTTP answer from 127.0.0.1:8080/healthz".
 * host: NULL, "", "0.0.0.0" mean 127.0.0.1; "::" means ::1; an IPv6 literal may be written
 * with or without brackets ("[::1]" or "::1"); a name is resolved with getaddrinfo (every
 * address is tried in turn until one connects). port must be 1..65535 (0, e.g. an admin
 * server that is off, is unhealthy: "nothing to check"). Only the status line is read;
 * the body is ignored. Returns HEALTHCHECK_HEALTHY (0) for a 2xx answer, otherwise
 * HEALTHCHECK_UNHEALTHY (1). Never blocks longer than the timeout except in a name lookup
 * of a non-numeric host (getaddrinfo has no timeout). Thread-safe; no signals raised
 * (MSG_NOSIGNAL). */
int healthcheck_probe(const char *host, long long port, const char *path, long long timeout_ms,
                      char *msg, size_t msgcap);

/* healthcheck_probe, then print its message as one line: to stdout when healthy, to
 * stderr otherwise. Returns the process exit status (0 healthy, 1 unhealthy). */
int healthcheck_main(const char *host, long long port, const char *path, long long timeout_ms);

/* The daemons' --healthcheck: healthcheck_main on admin_host:admin_port, or, when
 * admin_port is 0, on listen_host:listen_port (pass NULL, 0 when there is no other
 * server), path "/healthz", timeout HEALTHCHECK_TIMEOUT_MS. Returns the exit status. */
int healthcheck_daemon(const char *admin_host, long long admin_port, const char *listen_host,
                       long long listen_port);

/* Remove every "--healthcheck" from argv[1..] (up to a "--", which ends the options) and
 * shift the rest down, updating *argc and keeping argv[*argc] == NULL. Returns true when
 * the flag was there. Call before config_main, which rejects unknown flags. */
bool healthcheck_take_flag(int *argc, char **argv);

#endif
