/* redis: one asynchronous Redis connection on a libuv loop (hiredis + its libuv adapter),
 * with the things every tierone daemon needs around it:
 *
 *  - a URL: redis://[[user]:password@]host[:port][/db] (AUTH and SELECT run before the
 *    connection counts as up);
 *  - reconnect with backoff (100 ms doubling to 5 s) after a lost connection or a failover
 *    reply (READONLY, NOREPLICAS, UNBLOCKED, LOADING, MASTERDOWN), logged once per change;
 *  - a per-command timeout: a reply that does not arrive in time fails the command and
 *    drops the connection (a hung Redis looks like a down Redis);
 *  - Lua scripts by SHA with a transparent NOSCRIPT fallback to EVAL.
 *
 * Callback contract (libuv's): if a submit function returns 0, its callback runs exactly
 * once, later, from the loop: with the reply, or with reply == NULL when the connection
 * was lost or closed first (the command may or may not have run). If it returns -1
 * (connection not up), the callback never runs. A reply is valid only inside the callback. */
#ifndef TIERONE_REDIS_H
#define TIERONE_REDIS_H

#include <hiredis/hiredis.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct redis;

/* reply is NULL when the connection failed before a reply arrived. */
typedef void (*redis_reply_cb)(struct redis *r, redisReply *reply, void *data);
/* Called on every up/down change (up = 1 after AUTH/SELECT succeeded, 0 on loss). */
typedef void (*redis_state_cb)(struct redis *r, int up, void *data);

struct redis_opts {
    const char *url;             /* required */
    const char *name;            /* for log lines and CLIENT SETNAME, e.g. "worker-fetch" */
    uint32_t connect_timeout_ms; /* default 2000 */
    uint32_t command_timeout_ms; /* default 5000; 0 = none */
    redis_state_cb on_state;     /* optional */
    void *data;                  /* passed to on_state */
};

/* A Lua script. Initialise with REDIS_SCRIPT(src); the SHA is computed on first use. */
struct redis_script {
    const char *src;
    char sha[41];
};
#define REDIS_SCRIPT(source)                                                                       \
    {                                                                                              \
        (source),                                                                                  \
        {                                                                                          \
            0                                                                                      \
        }                                                                                          \
    }

/* Parsed form of a Redis URL. Strings are owned by the struct (redis_url_free). */
struct redis_url {
    char *host;
    int port;
    char *user;
    char *password;
    int db;
};
/* Parse url into out; returns 0, or -1 with a reason in err (static string). */
int redis_url_parse(const char *url, struct redis_url *out, const char **err);
void redis_url_free(struct redis_url *u);

/* Create a connection and start connecting. Returns NULL only if the URL is invalid
 * (reason in *err). A Redis that is down is not an error: it is retried in the background. */
struct redis *redis_new(uv_loop_t *loop, const struct redis_opts *opts, const char **err);
/* 1 when connected, authenticated and the db selected. */
int redis_is_up(const struct redis *r);
/* Submit a command built from a printf-like format (hiredis's redisvFormatCommand). */
int redis_command(struct redis *r, redis_reply_cb cb, void *data, const char *fmt, ...);
/* Submit a command from an argument vector (lens may be NULL for NUL-terminated args). */
int redis_command_argv(struct redis *r, redis_reply_cb cb, void *data, int argc, const char **argv,
                       const size_t *lens);
/* Run script s with nkeys keys followed by the other arguments. */
int redis_eval(struct redis *r, struct redis_script *s, redis_reply_cb cb, void *data, int nkeys,
               int argc, const char **argv, const size_t *lens);
/* Commands sent but not yet answered. */
size_t redis_pending(const struct redis *r);
/* Close: pending callbacks run with NULL, no reconnect; closed_cb (optional) runs once
 * every handle is closed, after which the struct is freed. */
void redis_close(struct redis *r, void (*closed_cb)(void *data), void *data);

/* 1 if the reply says this server cannot take writes now (READONLY, NOREPLICAS, UNBLOCKED,
 * LOADING, MASTERDOWN): a failover is under way. The connection drops itself and
 * reconnects; callers treat the command like one whose connection was lost. */
int redis_reply_is_failover(const redisReply *reply);
/* 1 if the reply is an error whose text starts with prefix (e.g. "NOSCRIPT"). */
int redis_reply_is_error(const redisReply *reply, const char *prefix);

#endif
