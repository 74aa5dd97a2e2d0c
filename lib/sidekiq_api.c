/* sidekiq_api: Sidekiq::API's reads and Web UI actions over a blocking Redis connection. */
#include "sidekiq_api.h"

#include "buf.h"
#include "clock.h"
#include "json_edit.h"
#include "xalloc.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- plumbing ------------------------------------------------------------------------ */

static void api_error(char **err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void api_error(char **err, const char *fmt, ...)
{
    if (!err)
        return;
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(err, fmt, ap) < 0)
        *err = NULL;
    va_end(ap);
}

/* r, or NULL (reason in err, r freed) when the command failed or Redis answered an error. */
static redisReply *api_check(redisContext *c, redisReply *r, char **err)
{
    if (!r) {
        api_error(err, "redis: %s", c->errstr[0] ? c->errstr : "connection lost");
        return NULL;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        api_error(err, "redis: %s", r->str);
        freeReplyObject(r);
        return NULL;
    }
    return r;
}

/* Run a command; NULL (reason in err) on I/O failure or an error reply. */
static redisReply *api_cmd(redisContext *c, char **err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    return api_check(c, r, err);
}

static redisReply *api_argv(redisContext *c, char **err, int argc, const char **argv,
                            const size_t *lens)
{
    return api_check(c, redisCommandArgv(c, argc, argv, lens), err);
}

static long long reply_ll(const redisReply *r)
{
    if (!r)
        return 0;
    if (r->type == REDIS_REPLY_INTEGER)
        return r->integer;
    if (r->type == REDIS_REPLY_STRING)
        return atoll(r->str);
    return 0;
}

/* A top-level string field of a job as a new string, or NULL. */
static char *field_string(const char *raw, size_t len, const char *key)
{
    struct json_span sp;
    if (json_edit_find(raw, len, key, &sp, NULL, 0) != 1 || raw[sp.off] != '"')
        return NULL;
    return json_edit_string_decode(raw, sp, NULL);
}

/* A top-level numeric field (or numeric string) read as a time in seconds; 0 if none. */
static double field_time(const char *raw, size_t len, const char *key)
{
    struct json_span sp;
    if (json_edit_find(raw, len, key, &sp, NULL, 0) != 1)
        return 0;
    json_t *v = json_loadb(raw + sp.off, sp.len, JSON_DECODE_ANY, NULL);
    double t = v ? job_time_seconds(v) : 0;
    json_decref(v);
    return t;
}

/* Latency of a queue: now - enqueued_at of its oldest job (LRANGE q -1 -1), 0 if empty. */
static double queue_latency(redisContext *c, const char *name)
{
    redisReply *r = redisCommand(c, "LRANGE queue:%s -1 -1", name);
    double lat = 0;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 1) {
        double at = field_time(r->element[0]->str, r->element[0]->len, "enqueued_at");
        if (at > 0)
            lat = clock_wall_s() - at;
    }
    freeReplyObject(r);
    return lat;
}

/* ---- stats and queues ---------------------------------------------------------------- */

int sidekiq_api_stats(redisContext *c, struct sidekiq_stats *out, char **err)
{
    memset(out, 0, sizeof *out);
    redisReply *r = api_cmd(c, err, "MGET stat:processed stat:failed");
    if (!r)
        return -1;
    out->processed = reply_ll(r->element[0]);
    out->failed = reply_ll(r->element[1]);
    freeReplyObject(r);
    const char *sets[3] = {"schedule", "retry", "dead"};
    long long *dst[3] = {&out->scheduled, &out->retries, &out->dead};
    for (int i = 0; i < 3; i++) {
        if (!(r = api_cmd(c, err, "ZCARD %s", sets[i])))
            return -1;
        *dst[i] = r->integer;
        freeReplyObject(r);
    }
    if (sidekiq_api_queues(c, &out->queues, &out->nqueues, err) != 0)
        goto fail;
    for (size_t i = 0; i < out->nqueues; i++)
        out->enqueued += out->queues[i].size;
    if (!(r = api_cmd(c, err, "SCARD processes")))
        goto fail;
    out->processes = r->integer;
    freeReplyObject(r);
    if (sidekiq_api_processes(c, &out->process_list, &out->nprocesses, err) != 0)
        goto fail;
    for (size_t i = 0; i < out->nprocesses; i++) {
        out->busy += out->process_list[i].busy;
        out->concurrency += out->process_list[i].concurrency;
    }
    out->default_queue_latency = queue_latency(c, "default");
    return 0;
fail:
    sidekiq_api_stats_free(out);
    return -1;
}

void sidekiq_api_stats_free(struct sidekiq_stats *st)
{
    sidekiq_api_queues_free(st->queues, st->nqueues);
    sidekiq_api_processes_free(st->process_list, st->nprocesses);
    st->queues = NULL;
    st->process_list = NULL;
    st->nqueues = st->nprocesses = 0;
}

static int queue_cmp(const void *a, const void *b)
{
    return strcmp(((const struct sidekiq_queue_info *)a)->name,
                  ((const struct sidekiq_queue_info *)b)->name);
}

int sidekiq_api_queues(redisContext *c, struct sidekiq_queue_info **out, size_t *n, char **err)
{
    *out = NULL;
    *n = 0;
    redisReply *r = api_cmd(c, err, "SMEMBERS queues");
    if (!r)
        return -1;
    struct sidekiq_queue_info *q = xcalloc(r->elements + 1, sizeof *q);
    for (size_t i = 0; i < r->elements; i++) {
        q[i].name = xstrndup(r->element[i]->str, r->element[i]->len);
        redisReply *l = redisCommand(c, "LLEN queue:%s", q[i].name);
        q[i].size = reply_ll(l);
        freeReplyObject(l);
        q[i].latency = queue_latency(c, q[i].name);
    }
    *n = r->elements;
    freeReplyObject(r);
    qsort(q, *n, sizeof *q, queue_cmp);
    *out = q;
    return 0;
}

void sidekiq_api_queues_free(struct sidekiq_queue_info *q, size_t n)
{
    for (size_t i = 0; q && i < n; i++)
        free(q[i].name);
    free(q);
}

/* ---- sorted sets --------------------------------------------------------------------- */

static void entry_clear(struct sidekiq_entry *e)
{
    free(e->raw);
    free(e->jid);
    free(e->klass);
    free(e->queue);
    free(e->error_class);
    free(e->error_message);
    memset(e, 0, sizeof *e);
}

static void entry_fill(struct sidekiq_entry *e, const char *raw, size_t len, double score)
{
    e->raw = xmalloc(len + 1);
    memcpy(e->raw, raw, len);
    e->raw[len] = '\0';
    e->len = len;
    e->score = score;
    e->jid = field_string(raw, len, "jid");
    e->klass = field_string(raw, len, "class");
    e->queue = field_string(raw, len, "queue");
    e->error_class = field_string(raw, len, "error_class");
    e->error_message = field_string(raw, len, "error_message");
    struct json_span sp;
    e->retry_count = json_edit_find(raw, len, "retry_count", &sp, NULL, 0) == 1
                         ? strtoll(raw + sp.off, NULL, 10)
                         : -1;
}

int sidekiq_api_entries(redisContext *c, const char *set, const char *klass, size_t limit,
                        int ascending, struct sidekiq_entry **out, size_t *n, char **err)
{
    *out = NULL;
    *n = 0;
    redisReply *r =
        api_cmd(c, err, "%s %s 0 -1 WITHSCORES", ascending ? "ZRANGE" : "ZREVRANGE", set);
    if (!r)
        return -1;
    size_t total = r->elements / 2, k = 0;
    struct sidekiq_entry *e = xcalloc(total + 1, sizeof *e);
    for (size_t i = 0; i < total && (!limit || k < limit); i++) {
        const redisReply *m = r->element[2 * i];
        entry_fill(&e[k], m->str, m->len, atof(r->element[2 * i + 1]->str));
        if (klass && (!e[k].klass || strcmp(e[k].klass, klass) != 0)) {
            entry_clear(&e[k]);
            continue;
        }
        k++;
    }
    freeReplyObject(r);
    *out = e;
    *n = k;
    return 0;
}

void sidekiq_api_entries_free(struct sidekiq_entry *e, size_t n)
{
    for (size_t i = 0; e && i < n; i++)
        entry_clear(&e[i]);
    free(e);
}

/* The member of set whose jid is jid (new copy, length in *len), or NULL (*failed says
 * whether Redis failed). Like SortedSet#find_job: ZSCAN with a MATCH on the jid, so the
 * server filters and the set is not read whole; each candidate's jid is then compared. */
static char *entry_find(redisContext *c, const char *set, const char *jid, size_t *len, char **err,
                        int *failed)
{
    struct buf pat = BUF_INIT;
    buf_puts(&pat, "*");
    for (const char *p = jid; *p; p++) {
        if (strchr("*?[]\\", *p))
            buf_append(&pat, "\\", 1);
        buf_append(&pat, p, 1);
    }
    buf_puts(&pat, "*");
    char cursor[32] = "0";
    char *found = NULL;
    *failed = 0;
    do {
        redisReply *r = api_cmd(c, err, "ZSCAN %s %s MATCH %s COUNT 100", set, cursor, pat.data);
        if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
            if (r)
                api_error(err, "redis: unexpected ZSCAN reply");
            freeReplyObject(r);
            *failed = 1;
            break;
        }
        snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
        const redisReply *items = r->element[1];
        for (size_t i = 0; i + 1 < items->elements && !found; i += 2) {
            const redisReply *m = items->element[i];
            char *mj = field_string(m->str, m->len, "jid");
            if (mj && strcmp(mj, jid) == 0) {
                found = xstrndup(m->str, m->len);
                *len = m->len;
            }
            free(mj);
        }
        freeReplyObject(r);
    } while (!found && strcmp(cursor, "0") != 0);
    buf_free(&pat);
    return found;
}

/* KEYS: set, queues, queue:<q>; ARGV: member, new payload, queue name. */
static const char retry_lua[] = "if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end\n"
                                "redis.call('SADD', KEYS[2], ARGV[3])\n"
                                "redis.call('LPUSH', KEYS[3], ARGV[2])\n"
                                "return 1\n";

/* Retry one member (exact bytes): 1 moved, 0 gone meanwhile, -1 error. */
static int retry_member(redisContext *c, const char *set, const char *raw, size_t len,
                        enum job_ts_format fmt, char **err)
{
    char why[256];
    /* SortedEntry#retry: msg["retry_count"] -= 1 if msg["retry_count"] */
    char *edited = NULL;
    size_t elen = len;
    struct json_span sp;
    if (json_edit_find(raw, len, "retry_count", &sp, NULL, 0) == 1) {
        char num[32];
        snprintf(num, sizeof num, "%lld", strtoll(raw + sp.off, NULL, 10) - 1);
        struct json_edit_field f = {"retry_count", num, strlen(num)};
        edited = json_edit_set(raw, len, &f, 1, &elen, why, sizeof why);
        if (!edited) {
            api_error(err, "cannot edit job: %s", why);
            return -1;
        }
    }
    char *queue = NULL;
    size_t plen = 0;
    char *payload = job_enqueue_payload(edited ? edited : raw, elen, fmt, clock_wall_s(), &plen,
                                        &queue, why, sizeof why);
    free(edited);
    if (!payload) {
        api_error(err, "cannot requeue job: %s", why);
        return -1;
    }
    char *qkey = xasprintf("queue:%s", queue);
    const char *argv[] = {"EVAL", retry_lua, "3", set, "queues", qkey, raw, payload, queue};
    size_t lens[] = {4,    strlen(retry_lua), 1, strlen(set), 6, strlen(qkey), len,
                     plen, strlen(queue)};
    redisReply *r = api_argv(c, err, 9, argv, lens);
    free(qkey);
    free(queue);
    free(payload);
    if (!r)
        return -1;
    int done = (int)r->integer;
    freeReplyObject(r);
    return done;
}

int sidekiq_api_retry(redisContext *c, const char *set, const char *jid, enum job_ts_format fmt,
                      char **err)
{
    size_t len = 0;
    int failed;
    char *raw = entry_find(c, set, jid, &len, err, &failed);
    if (!raw)
        return failed ? -1 : 0;
    int rc = retry_member(c, set, raw, len, fmt, err);
    free(raw);
    return rc;
}

int sidekiq_api_retry_all(redisContext *c, const char *set, enum job_ts_format fmt,
                          long long *count, char **err)
{
    *count = 0;
    struct sidekiq_entry *e;
    size_t n;
    if (sidekiq_api_entries(c, set, NULL, 0, 1, &e, &n, err) != 0)
        return -1;
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        int done = retry_member(c, set, e[i].raw, e[i].len, fmt, err);
        if (done < 0)
            rc = -1;
        else
            *count += done;
    }
    sidekiq_api_entries_free(e, n);
    return rc;
}

/* KEYS: set, dead; ARGV: member, now, cutoff, max jobs. */
static const char kill_lua[] = "if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end\n"
                               "redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])\n"
                               "redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])\n"
                               "redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -tonumber(ARGV[4]))\n"
                               "return 1\n";

int sidekiq_api_kill(redisContext *c, const char *set, const char *jid, long long dead_max_jobs,
                     long long dead_timeout_s, char **err)
{
    if (strcmp(set, "dead") == 0) {
        api_error(err, "the job is already in the dead set");
        return -1;
    }
    size_t len = 0;
    int failed;
    char *raw = entry_find(c, set, jid, &len, err, &failed);
    if (!raw)
        return failed ? -1 : 0;
    double now = clock_wall_s();
    char snow[64], cutoff[64], max[32];
    snprintf(snow, sizeof snow, "%.6f", now);
    snprintf(cutoff, sizeof cutoff, "%.6f", now - (double)dead_timeout_s);
    snprintf(max, sizeof max, "%lld", dead_max_jobs);
    const char *argv[] = {"EVAL", kill_lua, "2", set, "dead", raw, snow, cutoff, max};
    size_t lens[] = {
        4, strlen(kill_lua), 1, strlen(set), 4, len, strlen(snow), strlen(cutoff), strlen(max)};
    redisReply *r = api_argv(c, err, 9, argv, lens);
    free(raw);
    if (!r)
        return -1;
    int done = (int)r->integer;
    freeReplyObject(r);
    return done;
}

/* ---- processes ----------------------------------------------------------------------- */

static int process_cmp(const void *a, const void *b)
{
    return strcmp(((const struct sidekiq_process_info *)a)->identity,
                  ((const struct sidekiq_process_info *)b)->identity);
}

static char *json_str_dup(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? xstrdup(json_string_value(v)) : NULL;
}

/* Fill p from the HMGET info busy beat quiet rss reply; 0 when the process is gone. */
static int process_fill(struct sidekiq_process_info *p, const char *identity, const redisReply *h)
{
    if (h->element[0]->type != REDIS_REPLY_STRING)
        return 0;
    json_t *info = json_loadb(h->element[0]->str, h->element[0]->len, 0, NULL);
    p->identity = xstrdup(identity);
    p->hostname = json_str_dup(info, "hostname");
    p->tag = json_str_dup(info, "tag");
    p->pid = json_integer_value(json_object_get(info, "pid"));
    p->concurrency = json_integer_value(json_object_get(info, "concurrency"));
    p->started_at = json_number_value(json_object_get(info, "started_at"));
    struct buf qs = {0};
    size_t i;
    json_t *q;
    json_array_foreach(json_object_get(info, "queues"), i, q)
    {
        if (!json_is_string(q))
            continue;
        if (qs.len)
            buf_append(&qs, ",", 1);
        buf_puts(&qs, json_string_value(q));
    }
    p->queues = xstrndup(qs.data ? qs.data : "", qs.len);
    buf_free(&qs);
    json_decref(info);
    p->busy = reply_ll(h->element[1]);
    p->beat = h->element[2]->type == REDIS_REPLY_STRING ? atof(h->element[2]->str) : 0;
    p->quiet = h->element[3]->type == REDIS_REPLY_STRING && strcmp(h->element[3]->str, "true") == 0;
    p->rss_kib = reply_ll(h->element[4]);
    return 1;
}

int sidekiq_api_processes(redisContext *c, struct sidekiq_process_info **out, size_t *n, char **err)
{
    *out = NULL;
    *n = 0;
    redisReply *r = api_cmd(c, err, "SMEMBERS processes");
    if (!r)
        return -1;
    struct sidekiq_process_info *p = xcalloc(r->elements + 1, sizeof *p);
    size_t k = 0;
    for (size_t i = 0; i < r->elements; i++) {
        const char *id = r->element[i]->str;
        redisReply *h = redisCommand(c, "HMGET %s info busy beat quiet rss", id);
        if (h && h->type == REDIS_REPLY_ARRAY && h->elements == 5 && process_fill(&p[k], id, h))
            k++;
        freeReplyObject(h);
    }
    freeReplyObject(r);
    qsort(p, k, sizeof *p, process_cmp);
    *out = p;
    *n = k;
    return 0;
}

void sidekiq_api_processes_free(struct sidekiq_process_info *p, size_t n)
{
    for (size_t i = 0; p && i < n; i++) {
        free(p[i].identity);
        free(p[i].hostname);
        free(p[i].tag);
        free(p[i].queues);
    }
    free(p);
}

int sidekiq_api_signal(redisContext *c, const char *identity, const char *sig, char **err)
{
    redisReply *r = api_cmd(c, err, "SISMEMBER processes %s", identity);
    if (!r)
        return -1;
    long long member = r->integer;
    freeReplyObject(r);
    if (!member)
        return 0;
    /* Process#signal: LPUSH + EXPIRE 60 in one MULTI. */
    char *key = xasprintf("%s-signals", identity);
    int rc = 1;
    redisAppendCommand(c, "MULTI");
    redisAppendCommand(c, "LPUSH %s %s", key, sig);
    redisAppendCommand(c, "EXPIRE %s 60", key);
    redisAppendCommand(c, "EXEC");
    for (int i = 0; i < 4; i++) {
        redisReply *x = NULL;
        if (redisGetReply(c, (void **)&x) != REDIS_OK || !x || x->type == REDIS_REPLY_ERROR) {
            api_error(err, "redis: %s", x ? x->str : c->errstr);
            rc = -1;
        }
        freeReplyObject(x);
        if (rc < 0)
            break;
    }
    free(key);
    return rc;
}
