/* sidekiq_client: Sidekiq::Client's push, push_bulk and scheduled push in C (see header). */
#include "sidekiq_client.h"
#include "buf.h"
#include "clock.h"
#include "json_edit.h"
#include "xalloc.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/random.h>

/* Keys the client writes itself; extra fields may not set them. */
static const char *const sidekiq_reserved[] = {
    "class", "queue", "args", "retry", "jid", "created_at", "enqueued_at", "at",
};

/* The commands of one push: SADD (not for scheduled jobs) and LPUSH or ZADD. */
struct sidekiq_batch {
    int scheduled;
    char *queues_key; /* <prefix>queues */
    char *queue;      /* queue name */
    char *key;        /* <prefix>queue:NAME or <prefix>schedule */
    char score[40];   /* at, as Ruby's Float#to_s */
    size_t n;
    char **payloads;
    size_t *lens;
};

static void sidekiq_seterr(char *err, size_t errcap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void sidekiq_seterr(char *err, size_t errcap, const char *fmt, ...)
{
    if (!err || !errcap)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errcap, fmt, ap);
    va_end(ap);
}

/* Random bytes are drawn 4 KiB at a time, so most jids need no system call. The pool is per
 * thread and emptied in a forked child (pthread_atfork; the child's one thread is the one
 * that forked), so two processes never hand out the same jids. */
#define SIDEKIQ_JID_POOL 4096

static _Thread_local unsigned char jid_pool[SIDEKIQ_JID_POOL];
static _Thread_local size_t jid_pool_left;
static pthread_once_t jid_pool_once = PTHREAD_ONCE_INIT;

static void jid_pool_forget(void)
{
    jid_pool_left = 0;
}

static void jid_pool_register(void)
{
    pthread_atfork(NULL, NULL, jid_pool_forget);
}

void sidekiq_jid_new(char out[SIDEKIQ_JID_SIZE])
{
    static const char hex[] = "0123456789abcdef";
    enum { BYTES = SIDEKIQ_JID_LEN / 2 };
    pthread_once(&jid_pool_once, jid_pool_register);
    if (jid_pool_left < BYTES) {
        size_t got = 0;
        while (got < sizeof jid_pool) {
            ssize_t n = getrandom(jid_pool + got, sizeof jid_pool - got, 0);
            if (n > 0)
                got += (size_t)n;
        }
        jid_pool_left = sizeof jid_pool;
    }
    unsigned char *b = jid_pool + sizeof jid_pool - jid_pool_left;
    for (size_t i = 0; i < BYTES; i++) {
        out[2 * i] = hex[b[i] >> 4];
        out[2 * i + 1] = hex[b[i] & 15];
    }
    out[SIDEKIQ_JID_LEN] = '\0';
    memset(b, 0, BYTES); /* used bytes do not linger */
    jid_pool_left -= BYTES;
}

static const char *sidekiq_queue_name(const struct sidekiq_job_spec *spec)
{
    return spec->queue ? spec->queue : "default";
}

/* args without surrounding whitespace, checked to be one JSON array. */
static int sidekiq_args(const struct sidekiq_job_spec *spec, const char **out, size_t *out_len,
                        char *err, size_t errcap)
{
    const char *a = spec->args ? spec->args : "[]";
    size_t len = spec->args && spec->args_len ? spec->args_len : strlen(a);
    char why[128];
    if (json_edit_validate(a, len, why, sizeof why)) {
        sidekiq_seterr(err, errcap, "args: %s", why);
        return -1;
    }
    while (len && (*a == ' ' || *a == '\t' || *a == '\n' || *a == '\r')) {
        a++;
        len--;
    }
    while (len &&
           (a[len - 1] == ' ' || a[len - 1] == '\t' || a[len - 1] == '\n' || a[len - 1] == '\r'))
        len--;
    if (*a != '[') {
        sidekiq_seterr(err, errcap, "args must be a JSON array");
        return -1;
    }
    *out = a;
    *out_len = len;
    return 0;
}

/* Append the members of spec->extra (",key:value" each, verbatim) to b. */
static int sidekiq_extra(struct buf *b, const char *extra, char *err, size_t errcap)
{
    struct json_member *m = NULL;
    size_t n = 0;
    char why[128];
    if (json_edit_members(extra, strlen(extra), &m, &n, why, sizeof why)) {
        sidekiq_seterr(err, errcap, "extra fields: %s", why);
        return -1;
    }
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        for (size_t k = 0; k < sizeof sidekiq_reserved / sizeof sidekiq_reserved[0]; k++) {
            const char *key = sidekiq_reserved[k];
            if (json_edit_key_eq(extra, m[i].key, key, strlen(key))) {
                sidekiq_seterr(err, errcap, "extra fields may not set \"%s\"", key);
                rc = -1;
                break;
            }
        }
        buf_append(b, ",", 1);
        buf_append(b, extra + m[i].key.off, m[i].key.len);
        buf_append(b, ":", 1);
        buf_append(b, extra + m[i].value.off, m[i].value.len);
    }
    free(m);
    return rc;
}

char *sidekiq_payload(const struct sidekiq_job_spec *spec, const struct sidekiq_opts *opts,
                      double now_s, char jid_out[SIDEKIQ_JID_SIZE], size_t *out_len, char *err,
                      size_t errcap)
{
    enum job_ts_format fmt = opts ? opts->ts_format : JOB_TS_FLOAT_SECONDS;
    const char *queue = sidekiq_queue_name(spec);
    const char *args;
    size_t args_len;
    if (!spec->klass || !*spec->klass) {
        sidekiq_seterr(err, errcap, "job has no class");
        return NULL;
    }
    if (!*queue) {
        sidekiq_seterr(err, errcap, "job must include a valid queue name");
        return NULL;
    }
    if (sidekiq_args(spec, &args, &args_len, err, errcap))
        return NULL;
    char jid[SIDEKIQ_JID_SIZE];
    if (spec->jid && (!*spec->jid || strlen(spec->jid) > SIDEKIQ_JID_LEN)) {
        sidekiq_seterr(err, errcap, "jid must have 1 to %d characters", SIDEKIQ_JID_LEN);
        return NULL;
    }
    if (spec->jid)
        snprintf(jid, sizeof jid, "%s", spec->jid);
    else
        sidekiq_jid_new(jid);

    struct buf b = BUF_INIT;
    buf_reserve(&b, args_len + 256);
    if (spec->retry == SIDEKIQ_RETRY_MAX)
        buf_printf(&b, "{\"retry\":%lld,\"queue\":", spec->retry_max);
    else
        buf_printf(
            &b, "{\"retry\":%s,\"queue\":", spec->retry == SIDEKIQ_RETRY_FALSE ? "false" : "true");
    buf_json_string(&b, queue, strlen(queue));
    buf_puts(&b, ",\"class\":");
    buf_json_string(&b, spec->klass, strlen(spec->klass));
    buf_puts(&b, ",\"args\":");
    buf_append(&b, args, args_len);
    if (spec->extra && sidekiq_extra(&b, spec->extra, err, errcap)) {
        buf_free(&b);
        return NULL;
    }
    buf_puts(&b, ",\"jid\":");
    buf_json_string(&b, jid, strlen(jid));
    char now[40];
    job_format_time(now, sizeof now, fmt, now_s);
    buf_printf(&b, ",\"created_at\":%s", now);
    if (!(spec->at > 0))
        buf_printf(&b, ",\"enqueued_at\":%s", now);
    buf_puts(&b, "}");
    if (jid_out)
        memcpy(jid_out, jid, SIDEKIQ_JID_SIZE);
    *out_len = b.len;
    return buf_steal(&b);
}

static void sidekiq_batch_free(struct sidekiq_batch *b)
{
    for (size_t i = 0; i < b->n; i++)
        free(b->payloads[i]);
    free(b->payloads);
    free(b->lens);
    free(b->queues_key);
    free(b->queue);
    free(b->key);
    memset(b, 0, sizeof *b);
}

/* Build the payloads and keys of a push of n jobs (args[i], or spec->args when args is
 * NULL and n == 1). */
static int sidekiq_batch_init(struct sidekiq_batch *b, const struct sidekiq_opts *opts,
                              const struct sidekiq_job_spec *spec, const char *const *args,
                              size_t n, char (*jids_out)[SIDEKIQ_JID_SIZE], char *err,
                              size_t errcap)
{
    const char *prefix = opts && opts->key_prefix ? opts->key_prefix : "";
    memset(b, 0, sizeof *b);
    b->scheduled = spec->at > 0;
    b->queue = xstrdup(sidekiq_queue_name(spec));
    b->queues_key = xasprintf("%squeues", prefix);
    b->key =
        b->scheduled ? xasprintf("%sschedule", prefix) : xasprintf("%squeue:%s", prefix, b->queue);
    if (b->scheduled)
        job_format_time(b->score, sizeof b->score, JOB_TS_FLOAT_SECONDS, spec->at);
    b->payloads = xcalloc(n, sizeof *b->payloads);
    b->lens = xcalloc(n, sizeof *b->lens);
    double now = clock_wall_s();
    for (size_t i = 0; i < n; i++) {
        struct sidekiq_job_spec one = *spec;
        if (args) {
            one.args = args[i];
            one.args_len = 0;
            one.jid = NULL;
        }
        b->payloads[i] = sidekiq_payload(&one, opts, now, jids_out ? jids_out[i] : NULL,
                                         &b->lens[i], err, errcap);
        if (!b->payloads[i]) {
            sidekiq_batch_free(b);
            return -1;
        }
        b->n = i + 1;
    }
    return 0;
}

/* argv of LPUSH key p… or ZADD key score p score p…; caller frees both arrays. */
static int sidekiq_batch_argv(const struct sidekiq_batch *b, const char ***argv, size_t **lens)
{
    size_t argc = 2 + (b->scheduled ? 2 * b->n : b->n);
    const char **v = xcalloc(argc, sizeof *v);
    size_t *l = xcalloc(argc, sizeof *l);
    size_t k = 0;
    v[k] = b->scheduled ? "ZADD" : "LPUSH";
    l[k] = strlen(v[k]);
    k++;
    v[k] = b->key;
    l[k] = strlen(b->key);
    k++;
    for (size_t i = 0; i < b->n; i++) {
        if (b->scheduled) {
            v[k] = b->score;
            l[k] = strlen(b->score);
            k++;
        }
        v[k] = b->payloads[i];
        l[k] = b->lens[i];
        k++;
    }
    *argv = v;
    *lens = l;
    return (int)argc;
}

/* ---- asynchronous -------------------------------------------------------------------- */

struct sidekiq_push_req {
    sidekiq_push_cb cb;
    void *data;
    int pending;   /* replies still to come */
    int abandoned; /* submitting failed half-way: the caller was told -1, no callback */
    char *error;   /* the first error */
};

static void sidekiq_on_reply(struct redis *r, redisReply *reply, void *data)
{
    struct sidekiq_push_req *req = data;
    if (!req->error) {
        if (!reply)
            req->error = xstrdup("connection to Redis lost before the push was confirmed");
        else if (reply->type == REDIS_REPLY_ERROR)
            req->error = xstrndup(reply->str, reply->len);
    }
    if (--req->pending > 0)
        return;
    if (!req->abandoned)
        req->cb(req->error, req->data);
    free(req->error);
    free(req);
}

static int sidekiq_submit(struct redis *r, const struct sidekiq_batch *b, sidekiq_push_cb cb,
                          void *data, char *err, size_t errcap)
{
    struct sidekiq_push_req *req = xcalloc(1, sizeof *req);
    req->cb = cb;
    req->data = data;
    if (!b->scheduled) {
        const char *sadd[] = {"SADD", b->queues_key, b->queue};
        if (redis_command_argv(r, sidekiq_on_reply, req, 3, sadd, NULL)) {
            free(req);
            sidekiq_seterr(err, errcap, "Redis is not connected");
            return -1;
        }
        req->pending = 1;
    }
    const char **argv;
    size_t *lens;
    int argc = sidekiq_batch_argv(b, &argv, &lens);
    int rc = redis_command_argv(r, sidekiq_on_reply, req, argc, argv, lens);
    free(argv);
    free(lens);
    if (rc) {
        sidekiq_seterr(err, errcap, "Redis is not connected");
        if (req->pending)
            req->abandoned = 1; /* freed by the SADD reply */
        else
            free(req);
        return -1;
    }
    req->pending++;
    return 0;
}

int sidekiq_push(struct redis *r, const struct sidekiq_opts *opts,
                 const struct sidekiq_job_spec *spec, char jid_out[SIDEKIQ_JID_SIZE],
                 sidekiq_push_cb cb, void *data, char *err, size_t errcap)
{
    struct sidekiq_batch b;
    if (!redis_is_up(r)) {
        sidekiq_seterr(err, errcap, "Redis is not connected");
        return -1;
    }
    char jid[SIDEKIQ_JID_SIZE];
    if (sidekiq_batch_init(&b, opts, spec, NULL, 1, &jid, err, errcap))
        return -1;
    int rc = sidekiq_submit(r, &b, cb, data, err, errcap);
    sidekiq_batch_free(&b);
    if (rc == 0 && jid_out)
        memcpy(jid_out, jid, SIDEKIQ_JID_SIZE);
    return rc;
}

int sidekiq_push_bulk(struct redis *r, const struct sidekiq_opts *opts,
                      const struct sidekiq_job_spec *spec, const char *const *args, size_t n,
                      char (*jids_out)[SIDEKIQ_JID_SIZE], sidekiq_push_cb cb, void *data, char *err,
                      size_t errcap)
{
    struct sidekiq_batch b;
    if (n == 0) {
        sidekiq_seterr(err, errcap, "no jobs to push");
        return -1;
    }
    if (!redis_is_up(r)) {
        sidekiq_seterr(err, errcap, "Redis is not connected");
        return -1;
    }
    if (sidekiq_batch_init(&b, opts, spec, args, n, jids_out, err, errcap))
        return -1;
    int rc = sidekiq_submit(r, &b, cb, data, err, errcap);
    sidekiq_batch_free(&b);
    return rc;
}

/* ---- blocking ------------------------------------------------------------------------- */

/* Read one reply; 0 if it is not an error. */
static int sidekiq_sync_reply(redisContext *c, int *failed, char *err, size_t errcap)
{
    redisReply *reply = NULL;
    if (redisGetReply(c, (void **)&reply) != REDIS_OK) {
        sidekiq_seterr(err, errcap, "Redis: %s", c->errstr[0] ? c->errstr : "connection error");
        return -1;
    }
    if (reply->type == REDIS_REPLY_ERROR && !*failed) {
        sidekiq_seterr(err, errcap, "Redis: %.*s", (int)reply->len, reply->str);
        *failed = 1;
    }
    freeReplyObject(reply);
    return 0;
}

static int sidekiq_sync_send(redisContext *c, const struct sidekiq_batch *b, char *err,
                             size_t errcap)
{
    int sent = 0, failed = 0;
    if (!b->scheduled) {
        const char *sadd[] = {"SADD", b->queues_key, b->queue};
        if (redisAppendCommandArgv(c, 3, sadd, NULL) != REDIS_OK)
            goto io_error;
        sent++;
    }
    const char **argv;
    size_t *lens;
    int argc = sidekiq_batch_argv(b, &argv, &lens);
    int rc = redisAppendCommandArgv(c, argc, argv, lens);
    free(argv);
    free(lens);
    if (rc != REDIS_OK)
        goto io_error;
    sent++;
    for (int i = 0; i < sent; i++) {
        if (sidekiq_sync_reply(c, &failed, err, errcap))
            return -1;
    }
    return failed ? -1 : 0;
io_error:
    sidekiq_seterr(err, errcap, "Redis: %s", c->errstr[0] ? c->errstr : "cannot send");
    return -1;
}

int sidekiq_push_sync(redisContext *c, const struct sidekiq_opts *opts,
                      const struct sidekiq_job_spec *spec, char jid_out[SIDEKIQ_JID_SIZE],
                      char *err, size_t errcap)
{
    struct sidekiq_batch b;
    char jid[SIDEKIQ_JID_SIZE];
    if (sidekiq_batch_init(&b, opts, spec, NULL, 1, &jid, err, errcap))
        return -1;
    int rc = sidekiq_sync_send(c, &b, err, errcap);
    sidekiq_batch_free(&b);
    if (jid_out)
        memcpy(jid_out, jid, SIDEKIQ_JID_SIZE);
    return rc;
}

int sidekiq_push_bulk_sync(redisContext *c, const struct sidekiq_opts *opts,
                           const struct sidekiq_job_spec *spec, const char *const *args, size_t n,
                           char (*jids_out)[SIDEKIQ_JID_SIZE], char *err, size_t errcap)
{
    struct sidekiq_batch b;
    if (n == 0)
        return 0;
    if (sidekiq_batch_init(&b, opts, spec, args, n, jids_out, err, errcap))
        return -1;
    int rc = sidekiq_sync_send(c, &b, err, errcap);
    sidekiq_batch_free(&b);
    return rc;
}

int sidekiq_push_at_sync(redisContext *c, const struct sidekiq_opts *opts,
                         const struct sidekiq_job_spec *spec, double at_s,
                         char jid_out[SIDEKIQ_JID_SIZE], char *err, size_t errcap)
{
    struct sidekiq_job_spec s = *spec;
    s.at = at_s;
    return sidekiq_push_sync(c, opts, &s, jid_out, err, errcap);
}
