/* outbox: Redis push with dedupe, spool fallback and in-order drain (see outbox.h).
 *
 * Reading order: the push script, job records, the batch (submit -> batch -> flush ->
 * script -> reply), the spool path (append -> durable), the drain (peek -> script -> pop),
 * Redis state changes, metrics, life cycle. */
#include "outbox.h"
#include "buf.h"
#include "clock.h"
#include "defer.h"
#include "log.h"
#include "redis.h"
#include "spool.h"
#include "wake.h"
#include "xalloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Stands in for a repeat delivery between the LSET and the LREM below; never a job (jobs
 * are JSON objects). */
#define OUTBOX_TOMBSTONE "tierone:duplicate"

/* A batch of n jobs goes to Redis as one transaction (one write, one reply):
 *
 *   MULTI
 *   SADD queues <queue>
 *   LPUSH queue:<queue> <payload 1> ... <payload n>
 *   LPUSH tierone:wake:<queue> 1    a token that wakes one idle worker (lib/wake.h)
 *   LTRIM tierone:wake:<queue> 0 7
 *   EVAL <dedupe script> ...        only when a job of the batch has a delivery id
 *   EXEC
 *
 * The payloads never pass through Lua (Redis hashes every byte of every string it hands a
 * script, which cost more than everything else Redis did per job). Instead the script,
 * which runs right after the LPUSH inside the same transaction, sets each delivery's
 * dedupe key (SET NX EX, which works on every Redis Sidekiq 6 supports; SET NX GET would
 * need 7.0) and removes the jobs whose key already existed (a repeat within the TTL, or the
 * same id twice in the batch) from the head of the list again, by position. So a dedupe
 * key exists exactly when its job was pushed; a transaction that failed left neither.
 *
 * KEYS: the queue list, then the batch's dedupe keys in job order.
 * ARGV: dedupe TTL (s), n, then, only when some job has no delivery id, for each dedupe key
 * the position (1..n) of its job (without them, key k is job k).
 * Returns the positions of the repeat deliveries (removed again); the other jobs are queued.
 * (Per job the script makes one call and builds no result of its own: the Lua side of a job
 * costs less than its SET.) Its first check fails when the push did not happen: LLEN raises
 * WRONGTYPE for a key that is not a list, and a missing or short list is refused, so the
 * script then sets no key. */
static const char outbox_dedupe_script[] =
    "local call, q, n = redis.call, KEYS[1], tonumber(ARGV[2])\n"
    "if call('LLEN', q) < n then\n"
    "  return redis.error_reply('ERR tierone: the push to ' .. q .. ' did not happen')\n"
    "end\n"
    "local dups, ttl, pos = {}, ARGV[1], #ARGV > 2\n"
    "for k = 2, #KEYS do\n"
    "  if not call('SET', KEYS[k], '1', 'NX', 'EX', ttl) then\n"
    "    dups[#dups + 1] = pos and tonumber(ARGV[k + 1]) or k - 1\n"
    "  end\n"
    "end\n"
    "for _, i in ipairs(dups) do call('LSET', q, n - i, '" OUTBOX_TOMBSTONE "') end\n"
    "if #dups > 0 then call('LREM', q, #dups, '" OUTBOX_TOMBSTONE "') end\n"
    "return dups\n";

#define OUTBOX_BATCH_MAX   128           /* jobs in one transaction */
#define OUTBOX_BATCH_BYTES (1024 * 1024) /* ... or fewer, once their records hold this much */
/* Batch transactions in flight at once. While one is, the jobs accepted meanwhile wait for
 * its reply and then go together (at most one Redis round trip later): under load batches
 * grow, and Redis and the shim pay the per-transaction costs (MULTI/EXEC, the script call,
 * a write and a read on each side) for many jobs instead of a few. */
#define OUTBOX_BATCH_TX_MAX 1

enum outbox_stat {
    OS_QUEUED,
    OS_DUPLICATE,
    OS_SPOOLED,
    OS_FAILED,
    OS_DRAINED,
    OS_DRAINED_DUPLICATE,
    OS_COUNT
};

static const char *const outbox_stat_names[OS_COUNT] = {
    "queued", "duplicate", "spooled", "failed", "drained", "drained_duplicate",
};

struct outbox_job;

struct outbox {
    uv_loop_t *loop;
    struct redis *redis;
    struct spool *spool;
    char *queue;
    char *queues_key;
    char *queue_key;
    char *wake_key;
    char wake_last[12]; /* LTRIM's stop index: WAKE_TOKENS_MAX - 1 */
    char ttl[24];
    uint32_t drain_interval_ms;
    uv_timer_t drain_timer;
    /* The batch: jobs submitted since the last flush, in order. It is flushed at the end
     * of the loop iteration (lib/defer.h), or after the reply of the transaction in flight. */
    struct defer flush;
    struct outbox_job *batch_head, *batch_tail;
    size_t batch_txs;   /* batch transactions in flight (their reply not yet in) */
    struct buf keys;    /* scratch: the dedupe keys of the call being built */
    size_t drain_busy;  /* records in the drain push in flight (0 = none) */
    int drain_warned;   /* a "draining paused" line was written since the last success */
    int redis_warned;   /* a "falling back to the spool" line was written for this outage */
    uint64_t in_flight; /* submitted jobs whose callback has not run */
    int closing;
    int closes_left; /* timer, flush defer + redis/spool chain */
    outbox_closed_cb closed_cb;
    void *closed_data;
    /* metrics (NULL without a registry) */
    struct metrics_series *stat[OS_COUNT];
    struct metrics_series *push_redis;
    struct metrics_series *push_spool;
    struct metrics_series *redis_up;
    struct metrics_series *transactions;
};

/* One submitted job, alive until its callback ran: its payload (owned) and delivery id
 * (dlen bytes, NUL-terminated, empty for none). Its spool record is built only when it
 * goes to the spool. */
struct outbox_job {
    struct outbox *ob;
    struct outbox_job *next; /* in the batch, or in a call in flight */
    outbox_cb cb;
    void *data;
    char *payload;
    size_t len;
    uint64_t t0_ns;
    size_t dlen;
    char delivery[];
};

/* What one job of a transaction pushes: a job's fields or a spool record's parts. */
struct outbox_item {
    const char *delivery; /* dlen bytes */
    size_t dlen;
    const char *payload;
    size_t len;
};

/* One script call in flight for a list of jobs. */
struct outbox_call {
    struct outbox *ob;
    struct outbox_job *head;
    size_t n;
};

static void outbox_drain(struct outbox *ob);
static void outbox_flush(struct outbox *ob);
static int outbox_spool_job(struct outbox *ob, struct outbox_job *job, char *err, size_t errcap);

static void outbox_count(struct outbox *ob, enum outbox_stat s)
{
    if (ob->stat[s])
        metrics_inc(ob->stat[s]);
}

/* ---- records ------------------------------------------------------------------------------ */

/* u16 delivery length | delivery | payload */
static char *outbox_record(const char *delivery, size_t dlen, const char *payload, size_t len,
                           size_t *out_len)
{
    char *rec = xmalloc(2 + dlen + len);
    rec[0] = (char)(dlen & 0xff);
    rec[1] = (char)(dlen >> 8);
    if (dlen)
        memcpy(rec + 2, delivery, dlen);
    memcpy(rec + 2 + dlen, payload, len);
    *out_len = 2 + dlen + len;
    return rec;
}

/* Split a record back; -1 if it is too short to be one. */
static int outbox_record_split(const char *rec, size_t len, const char **delivery, size_t *dlen,
                               const char **payload, size_t *plen)
{
    if (len < 2)
        return -1;
    size_t d = (size_t)(unsigned char)rec[0] | (size_t)(unsigned char)rec[1] << 8;
    if (len - 2 < d || len - 2 - d == 0)
        return -1;
    *delivery = rec + 2;
    *dlen = d;
    *payload = rec + 2 + d;
    *plen = len - 2 - d;
    return 0;
}

/* Send the transaction for n (1..OUTBOX_BATCH_MAX) items; cb gets EXEC's reply. 0 if
 * sent (cb runs once), -1 if Redis is not up (cb never runs). */
static int outbox_send(struct outbox *ob, const struct outbox_item *items, size_t n,
                       redis_reply_cb cb, void *data)
{
    enum { CAP = 6 + 2 * OUTBOX_BATCH_MAX };
    const char *argv[CAP];
    size_t lens[CAP];
    size_t koff[OUTBOX_BATCH_MAX], klen[OUTBOX_BATCH_MAX];
    char pos[OUTBOX_BATCH_MAX][12], count[24], nstr[24];
    size_t prefix = strlen(OUTBOX_DEDUPE_PREFIX), nkeys = 0, a = 0;
    if (n == 0 || n > OUTBOX_BATCH_MAX)
        return -1;
    buf_reset(&ob->keys);
    argv[a] = "LPUSH";
    lens[a++] = 5;
    argv[a] = ob->queue_key;
    lens[a++] = strlen(ob->queue_key);
    for (size_t i = 0; i < n; i++) {
        argv[a] = items[i].payload;
        lens[a++] = items[i].len;
        klen[i] = 0;
        if (!items[i].dlen)
            continue;
        koff[i] = ob->keys.len;
        klen[i] = prefix + items[i].dlen;
        buf_append(&ob->keys, OUTBOX_DEDUPE_PREFIX, prefix);
        buf_append(&ob->keys, items[i].delivery, items[i].dlen);
        nkeys++;
    }
    const char *sadd[3] = {"SADD", ob->queues_key, ob->queue};
    const char *wake[3] = {"LPUSH", ob->wake_key, "1"};
    const char *trim[4] = {"LTRIM", ob->wake_key, "0", ob->wake_last};
    if (redis_command_argv(ob->redis, NULL, NULL, 1, (const char *[]){"MULTI"}, NULL) != 0)
        return -1;
    if (redis_command_argv(ob->redis, NULL, NULL, 3, sadd, NULL) != 0 ||
        redis_command_argv(ob->redis, NULL, NULL, (int)a, argv, lens) != 0 ||
        redis_command_argv(ob->redis, NULL, NULL, 3, wake, NULL) != 0 ||
        redis_command_argv(ob->redis, NULL, NULL, 4, trim, NULL) != 0)
        goto discard;
    if (nkeys) {
        a = 0;
        snprintf(count, sizeof count, "%zu", nkeys + 1);
        argv[a] = "EVAL";
        lens[a++] = 4;
        argv[a] = outbox_dedupe_script;
        lens[a++] = sizeof outbox_dedupe_script - 1;
        argv[a] = count;
        lens[a++] = strlen(count);
        argv[a] = ob->queue_key;
        lens[a++] = strlen(ob->queue_key);
        for (size_t i = 0; i < n; i++) {
            if (klen[i]) {
                argv[a] = ob->keys.data + koff[i];
                lens[a++] = klen[i];
            }
        }
        argv[a] = ob->ttl;
        lens[a++] = strlen(ob->ttl);
        snprintf(nstr, sizeof nstr, "%zu", n);
        argv[a] = nstr;
        lens[a++] = strlen(nstr);
        for (size_t i = 0; nkeys < n && i < n; i++) { /* positions, unless key k is job k */
            if (!klen[i])
                continue;
            snprintf(pos[i], sizeof pos[i], "%u", (unsigned)(i + 1)); /* i < OUTBOX_BATCH_MAX */
            argv[a] = pos[i];
            lens[a++] = strlen(pos[i]);
        }
        if (redis_command_argv(ob->redis, NULL, NULL, (int)a, argv, lens) != 0)
            goto discard;
    }
    if (redis_command_argv(ob->redis, cb, data, 1, (const char *[]){"EXEC"}, NULL) != 0)
        goto discard;
    if (ob->transactions)
        metrics_inc(ob->transactions);
    return 0;
discard:
    (void)redis_command_argv(ob->redis, NULL, NULL, 1, (const char *[]){"DISCARD"}, NULL);
    return -1;
}

/* EXEC's reply for n jobs: 0 with res[i] = 1 (queued) or 0 (repeat delivery), or -1 with a
 * reason in why when nothing was pushed (the jobs then go to the spool). When the jobs were
 * pushed but the dedupe script failed (it should not: the reason is in *warn), every job
 * counts as queued: spooling them would push them a second time. */
static int outbox_exec_results(const redisReply *reply, size_t n, int *res, const char **why,
                               const char **warn)
{
    *warn = NULL;
    if (!reply) {
        *why = "connection lost";
        return -1;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        *why = reply->str ? reply->str : "error reply";
        return -1;
    }
    /* SADD, LPUSH, the wake token's LPUSH and LTRIM, then the dedupe script's reply if sent. */
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 4 || reply->elements > 5) {
        *why = "transaction aborted or unexpected reply";
        return -1;
    }
    const redisReply *push = reply->element[1];
    if (push->type != REDIS_REPLY_INTEGER) {
        *why = push->type == REDIS_REPLY_ERROR && push->str ? push->str : "unexpected reply";
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        res[i] = 1;
    if (reply->elements == 4)
        return 0;
    const redisReply *dd = reply->element[4]; /* the positions (1..n) of repeat deliveries */
    if (dd->type != REDIS_REPLY_ARRAY || dd->elements > n) {
        *warn = dd->type == REDIS_REPLY_ERROR && dd->str ? dd->str : "unexpected reply";
        return 0;
    }
    for (size_t i = 0; i < dd->elements; i++) {
        const redisReply *e = dd->element[i];
        if (e->type == REDIS_REPLY_INTEGER && e->integer >= 1 && (size_t)e->integer <= n)
            res[e->integer - 1] = 0;
    }
    return 0;
}

static void outbox_warn_dedupe(const char *warn)
{
    log_warn("outbox: jobs pushed, but the dedupe script failed (%s); they count as queued "
             "and their delivery ids are not remembered",
             warn);
}

/* ---- jobs --------------------------------------------------------------------------------- */

static void outbox_job_finish(struct outbox_job *job, enum outbox_result res, const char *error)
{
    struct outbox *ob = job->ob;
    ob->in_flight--;
    double secs = (double)(clock_mono_ns() - job->t0_ns) / 1e9;
    if (res == OUTBOX_QUEUED || res == OUTBOX_DUPLICATE) {
        if (ob->push_redis)
            metrics_observe(ob->push_redis, secs);
        outbox_count(ob, res == OUTBOX_QUEUED ? OS_QUEUED : OS_DUPLICATE);
    } else if (res == OUTBOX_SPOOLED) {
        if (ob->push_spool)
            metrics_observe(ob->push_spool, secs);
        outbox_count(ob, OS_SPOOLED);
    } else {
        outbox_count(ob, OS_FAILED);
    }
    job->cb(res, error, job->data);
    free(job->payload);
    free(job);
}

/* Spool every job of the list, in order; a job the spool refuses fails. */
static void outbox_spool_list(struct outbox *ob, struct outbox_job *head)
{
    while (head) {
        struct outbox_job *job = head;
        head = job->next;
        job->next = NULL;
        char err[256];
        if (outbox_spool_job(ob, job, err, sizeof err) != 0)
            outbox_job_finish(job, OUTBOX_FAILED, err);
    }
}

static void outbox_on_batch_reply(struct redis *r, redisReply *reply, void *data)
{
    struct outbox_call *call = data;
    struct outbox *ob = call->ob;
    struct outbox_job *head = call->head;
    int res[OUTBOX_BATCH_MAX];
    const char *why = NULL, *warn = NULL;
    int rc = outbox_exec_results(reply, call->n, res, &why, &warn);
    free(call);
    ob->batch_txs--;
    if (warn)
        outbox_warn_dedupe(warn);
    if (rc == 0) {
        for (size_t i = 0; head; i++) {
            struct outbox_job *job = head;
            head = job->next;
            outbox_job_finish(job, res[i] ? OUTBOX_QUEUED : OUTBOX_DUPLICATE, NULL);
        }
    } else {
        if (!ob->redis_warned) {
            log_warn("outbox: push to Redis failed (%s); spooling to %s until Redis is back", why,
                     spool_path(ob->spool));
            ob->redis_warned = 1;
        }
        outbox_spool_list(ob, head);
    }
    /* Jobs that waited for this reply go after this iteration's I/O (with what it reads);
     * when closing, to the spool now, behind this transaction's jobs. */
    if (ob->batch_head && !ob->closing)
        defer_arm(&ob->flush);
    else if (ob->batch_head && !ob->batch_txs)
        outbox_flush(ob);
}

/* ---- the batch ------------------------------------------------------------------------------ */

/* Send the first jobs of the batch (OUTBOX_BATCH_MAX, or fewer once they hold
 * OUTBOX_BATCH_BYTES) as one transaction, taking them off the batch. Returns 0, or -1 with
 * the batch as it was when the transaction could not be sent. */
static int outbox_send_batch(struct outbox *ob)
{
    struct outbox_item items[OUTBOX_BATCH_MAX];
    size_t n = 0, bytes = 0;
    struct outbox_job *head = ob->batch_head, *last = NULL;
    for (struct outbox_job *j = head;
         j && n < OUTBOX_BATCH_MAX && (n == 0 || bytes + j->len <= OUTBOX_BATCH_BYTES);
         j = j->next) {
        items[n++] = (struct outbox_item){j->delivery, j->dlen, j->payload, j->len};
        bytes += j->len;
        last = j;
    }
    struct outbox_call *call = xmalloc(sizeof *call);
    call->ob = ob;
    call->head = head;
    call->n = n;
    struct outbox_job *rest = last->next;
    last->next = NULL;
    if (outbox_send(ob, items, n, outbox_on_batch_reply, call) != 0) {
        last->next = rest;
        free(call);
        return -1;
    }
    ob->batch_head = rest;
    if (!rest)
        ob->batch_tail = NULL;
    ob->batch_txs++;
    return 0;
}

/* Send the batch, in order, while fewer than OUTBOX_BATCH_TX_MAX transactions are in
 * flight; what is left waits for a reply (which flushes again). When Redis cannot be used
 * (down, closing, or jobs are spooled ahead of these) the rest of the batch goes to the
 * spool, in order. */
static void outbox_flush(struct outbox *ob)
{
    defer_disarm(&ob->flush);
    while (ob->batch_head && ob->batch_txs < OUTBOX_BATCH_TX_MAX) {
        if (ob->closing || !spool_empty(ob->spool) || !redis_is_up(ob->redis) ||
            outbox_send_batch(ob) != 0) {
            struct outbox_job *rest = ob->batch_head;
            ob->batch_head = ob->batch_tail = NULL;
            outbox_spool_list(ob, rest);
            return;
        }
    }
}

static void outbox_flush_deferred(void *arg)
{
    outbox_flush(arg);
}

static void outbox_batch_add(struct outbox *ob, struct outbox_job *job)
{
    if (ob->batch_tail)
        ob->batch_tail->next = job;
    else
        ob->batch_head = job;
    ob->batch_tail = job;
    /* While a transaction is in flight its reply arms the flush. */
    if (ob->batch_txs < OUTBOX_BATCH_TX_MAX)
        defer_arm(&ob->flush);
}

/* ---- spool path ----------------------------------------------------------------------------- */

static void outbox_on_spooled(int status, void *data)
{
    struct outbox_job *job = data;
    struct outbox *ob = job->ob;
    if (status == 0)
        outbox_job_finish(job, OUTBOX_SPOOLED, NULL);
    else
        outbox_job_finish(job, OUTBOX_FAILED, uv_strerror(status));
    outbox_drain(ob);
}

static int outbox_spool_job(struct outbox *ob, struct outbox_job *job, char *err, size_t errcap)
{
    size_t rec_len;
    char *rec = outbox_record(job->delivery, job->dlen, job->payload, job->len, &rec_len);
    int rc = spool_append(ob->spool, rec, rec_len, outbox_on_spooled, job, err, errcap);
    free(rec); /* the spool took a copy */
    return rc;
}

int outbox_submit(struct outbox *ob, const char *delivery, char *payload, size_t len, outbox_cb cb,
                  void *data, char *err, size_t errcap)
{
    size_t dlen = delivery ? strlen(delivery) : 0;
    if (dlen > OUTBOX_MAX_DELIVERY) {
        snprintf(err, errcap, "delivery id longer than %d bytes", OUTBOX_MAX_DELIVERY);
        free(payload);
        return -1;
    }
    if (len == 0) {
        snprintf(err, errcap, "empty payload");
        free(payload);
        return -1;
    }
    struct outbox_job *job = xmalloc(sizeof *job + dlen + 1);
    *job = (struct outbox_job){
        .ob = ob, .cb = cb, .data = data, .payload = payload, .len = len, .dlen = dlen};
    job->t0_ns = clock_mono_ns();
    memcpy(job->delivery, dlen ? delivery : "", dlen + 1);
    /* Behind a batch that is not flushed yet, a job waits in it whatever its route, so the
     * flush keeps acceptance order. */
    if (!ob->closing && (ob->batch_head || (spool_empty(ob->spool) && redis_is_up(ob->redis)))) {
        outbox_batch_add(ob, job);
        ob->in_flight++;
        return 0;
    }
    if (outbox_spool_job(ob, job, err, errcap) != 0) {
        outbox_count(ob, OS_FAILED);
        free(job->payload);
        free(job);
        return -1;
    }
    ob->in_flight++;
    return 0;
}

/* ---- drain ---------------------------------------------------------------------------------- */

static void outbox_on_drain_reply(struct redis *r, redisReply *reply, void *data)
{
    struct outbox *ob = data;
    size_t n = ob->drain_busy;
    ob->drain_busy = 0;
    const char *why = NULL, *warn = NULL;
    int res[OUTBOX_BATCH_MAX];
    int rc = outbox_exec_results(reply, n, res, &why, &warn);
    if (warn)
        outbox_warn_dedupe(warn);
    if (rc != 0) {
        if (!ob->closing && !ob->drain_warned)
            log_warn("outbox: draining the spool paused (%s); %llu record(s) left; retrying "
                     "every %u ms",
                     why, (unsigned long long)spool_depth(ob->spool), ob->drain_interval_ms);
        ob->drain_warned = 1;
        return; /* the timer retries */
    }
    char err[256];
    if (spool_pop(ob->spool, err, sizeof err) != 0) {
        log_error("outbox: %s", err);
        return;
    }
    ob->drain_warned = 0;
    for (size_t i = 0; i < n; i++)
        outbox_count(ob, res[i] ? OS_DRAINED : OS_DRAINED_DUPLICATE);
    if (spool_empty(ob->spool)) {
        log_info("outbox: spool drained; pushing to Redis directly again");
        ob->redis_warned = 0;
    }
    outbox_drain(ob);
}

/* Split the spool records recs[0..n) into items; returns how many leading ones are jobs. */
static int outbox_items_split(const char *const *recs, const size_t *lens, int n,
                              struct outbox_item *items)
{
    int i = 0;
    for (; i < n; i++) {
        struct outbox_item *it = &items[i];
        if (outbox_record_split(recs[i], lens[i], &it->delivery, &it->dlen, &it->payload,
                                &it->len) != 0)
            break;
    }
    return i;
}

/* Push the oldest spooled records (one transaction of up to OUTBOX_BATCH_MAX), if Redis is
 * up and no drain push is in flight. */
static void outbox_drain(struct outbox *ob)
{
    if (ob->drain_busy || ob->closing || !redis_is_up(ob->redis))
        return;
    const char *recs[OUTBOX_BATCH_MAX];
    size_t lens[OUTBOX_BATCH_MAX];
    char err[256];
    int n =
        spool_peek_n(ob->spool, OUTBOX_BATCH_MAX, OUTBOX_BATCH_BYTES, recs, lens, err, sizeof err);
    if (n < 0)
        log_error("outbox: %s", err);
    if (n <= 0)
        return;
    /* A record that is not a job ends the list; alone at its head it is dropped. */
    struct outbox_item items[OUTBOX_BATCH_MAX];
    int good = outbox_items_split(recs, lens, n, items);
    if (good == 0) {
        log_error("outbox: spool record of %zu bytes is not a job; dropping it", lens[0]);
        if (spool_peek(ob->spool, &recs[0], &lens[0], err, sizeof err) == 1 &&
            spool_pop(ob->spool, err, sizeof err) == 0)
            outbox_drain(ob);
        return;
    }
    if (good < n) {
        /* The spool removes what its last peek returned: peek the jobs alone, and split them
         * again (a peek may move the records). */
        n = spool_peek_n(ob->spool, (size_t)good, OUTBOX_BATCH_BYTES, recs, lens, err, sizeof err);
        if (n > 0)
            n = outbox_items_split(recs, lens, n, items);
    }
    if (n > 0 && outbox_send(ob, items, (size_t)n, outbox_on_drain_reply, ob) == 0)
        ob->drain_busy = (size_t)n;
}

static void outbox_on_drain_timer(uv_timer_t *t)
{
    outbox_drain(t->data);
}

/* ---- Redis state ---------------------------------------------------------------------------- */

static void outbox_on_redis_state(struct redis *r, int up, void *data)
{
    struct outbox *ob = data;
    if (ob->redis_up)
        metrics_set(ob->redis_up, up);
    if (up) {
        uint64_t depth = spool_depth(ob->spool);
        if (depth)
            log_info("outbox: Redis is up; draining %llu spooled record(s)",
                     (unsigned long long)depth);
        outbox_drain(ob);
    }
}

/* ---- metrics -------------------------------------------------------------------------------- */

static double outbox_depth_fn(void *arg)
{
    return (double)spool_depth(((struct outbox *)arg)->spool);
}

static double outbox_bytes_fn(void *arg)
{
    return (double)spool_bytes(((struct outbox *)arg)->spool);
}

static void outbox_metrics_init(struct outbox *ob, struct metrics_registry *reg)
{
    static const double bounds[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                    0.05,   0.1,     0.25,   0.5,   1,      2.5,   5};
    if (!reg)
        return;
    struct metrics_family *jobs =
        metrics_counter_new(reg, "tierone_ingest_jobs_total",
                            "Jobs by outcome: queued, duplicate (dedupe hit), spooled, failed "
                            "(neither Redis nor spool), drained(_duplicate) from the spool.",
                            1, "result");
    for (int i = 0; i < OS_COUNT; i++)
        ob->stat[i] = metrics_series_get(jobs, outbox_stat_names[i]);
    struct metrics_family *push = metrics_histogram_new(
        reg, "tierone_ingest_push_seconds",
        "Time from acceptance to the job being in Redis (target=redis) or durable in the "
        "spool (target=spool).",
        bounds, sizeof bounds / sizeof bounds[0], 1, "target");
    ob->push_redis = metrics_series_get(push, "redis");
    ob->push_spool = metrics_series_get(push, "spool");
    struct metrics_family *up =
        metrics_gauge_new(reg, "tierone_ingest_redis_up", "1 while Redis is connected.", 0);
    ob->redis_up = metrics_series_get(up);
    struct metrics_family *tx = metrics_counter_new(
        reg, "tierone_ingest_redis_transactions_total",
        "Transactions sent to Redis: one per loop iteration's batch of accepted jobs (up to "
        "128) and one per drain step; jobs divided by this is the mean batch size.",
        0);
    ob->transactions = metrics_series_get(tx);
    metrics_gauge_fn_new(reg, "tierone_ingest_spool_depth", "Jobs waiting in the local spool.",
                         outbox_depth_fn, ob);
    metrics_gauge_fn_new(reg, "tierone_ingest_spool_bytes", "Size of the spool file in bytes.",
                         outbox_bytes_fn, ob);
}

/* ---- life cycle ----------------------------------------------------------------------------- */

struct outbox *outbox_new(uv_loop_t *loop, const struct outbox_opts *opts, char *err, size_t errcap)
{
    struct redis_url url;
    const char *why = NULL;
    if (redis_url_parse(opts->redis_url, &url, &why) != 0) {
        snprintf(err, errcap, "Redis URL %s", why);
        return NULL;
    }
    redis_url_free(&url);
    struct spool_open_info info;
    struct spool *sp =
        spool_open(loop, opts->spool_path, opts->spool_max_bytes, &info, err, errcap);
    if (!sp)
        return NULL;
    struct outbox *ob = xcalloc(1, sizeof *ob);
    ob->loop = loop;
    ob->spool = sp;
    ob->queue = xstrdup(opts->queue ? opts->queue : "events");
    ob->queues_key = xstrdup("queues");
    ob->queue_key = xasprintf("queue:%s", ob->queue);
    ob->wake_key = xasprintf(WAKE_KEY_PREFIX "%s", ob->queue);
    snprintf(ob->wake_last, sizeof ob->wake_last, "%d", WAKE_TOKENS_MAX - 1);
    snprintf(ob->ttl, sizeof ob->ttl, "%u", opts->dedupe_ttl_s ? opts->dedupe_ttl_s : 86400);
    ob->drain_interval_ms = opts->drain_interval_ms ? opts->drain_interval_ms : 250;
    outbox_metrics_init(ob, opts->metrics);
    if (info.records)
        log_info("outbox: spool %s holds %llu job(s) from an earlier run; they drain first",
                 opts->spool_path, (unsigned long long)info.records);
    struct redis_opts ro = {
        .url = opts->redis_url,
        .name = "tierone-ingest",
        .command_timeout_ms = opts->redis_timeout_ms ? opts->redis_timeout_ms : 1000,
        .connect_timeout_ms = opts->redis_timeout_ms ? opts->redis_timeout_ms : 1000,
        .on_state = outbox_on_redis_state,
        .data = ob,
    };
    ob->redis = redis_new(loop, &ro, &why); /* cannot fail: the URL was checked above */
    uv_timer_init(loop, &ob->drain_timer);
    ob->drain_timer.data = ob;
    uv_timer_start(&ob->drain_timer, outbox_on_drain_timer, ob->drain_interval_ms,
                   ob->drain_interval_ms);
    defer_init(&ob->flush, loop, outbox_flush_deferred, ob);
    return ob;
}

uint64_t outbox_spool_depth(const struct outbox *ob)
{
    return spool_depth(ob->spool);
}

int outbox_redis_up(const struct outbox *ob)
{
    return redis_is_up(ob->redis);
}

static void outbox_close_step(struct outbox *ob)
{
    if (--ob->closes_left > 0)
        return;
    outbox_closed_cb cb = ob->closed_cb;
    void *data = ob->closed_data;
    free(ob->queue);
    free(ob->queues_key);
    free(ob->queue_key);
    free(ob->wake_key);
    buf_free(&ob->keys);
    free(ob);
    if (cb)
        cb(data);
}

static void outbox_on_spool_closed(void *data)
{
    outbox_close_step(data);
}

static void outbox_on_redis_closed(void *data)
{
    struct outbox *ob = data;
    spool_close(ob->spool, outbox_on_spool_closed, ob);
}

static void outbox_on_handle_closed(uv_handle_t *h)
{
    outbox_close_step(h->data);
}

static void outbox_on_flush_closed(void *data)
{
    outbox_close_step(data);
}

void outbox_close(struct outbox *ob, outbox_closed_cb cb, void *data)
{
    if (ob->closing)
        return;
    ob->closing = 1;
    ob->closed_cb = cb;
    ob->closed_data = data;
    ob->closes_left = 3;
    /* The batch goes to the spool (closing routes there), in order: now, or once the
     * transactions in flight have given back their jobs (their replies come with the
     * redis_close below), behind them. */
    defer_disarm(&ob->flush);
    if (!ob->batch_txs)
        outbox_flush(ob);
    uv_timer_stop(&ob->drain_timer);
    uv_close((uv_handle_t *)&ob->drain_timer, outbox_on_handle_closed);
    defer_close(&ob->flush, outbox_on_flush_closed);
    /* Jobs still waiting on Redis get a NULL reply now and go to the spool, which stays
     * open until Redis is closed. */
    redis_close(ob->redis, outbox_on_redis_closed, ob);
}
