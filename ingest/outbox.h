/* outbox: gets each accepted job into Redis exactly once, in order, or onto the local spool
 * when Redis is unreachable, and drains the spool when Redis is back.
 *
 * Batching: jobs submitted during one loop iteration (all the requests the HTTP server read
 * in it) collect in a batch that is sent after the iteration's I/O callbacks (libuv check
 * phase; or prepare phase, before the loop next waits, for jobs submitted later), as ONE
 * Redis transaction of up to 128 jobs (while a batch transaction is in flight, the jobs
 * accepted meanwhile wait for its reply and then go as one: batches grow with the load, at
 * most one Redis round trip later): `MULTI, SADD queues events, LPUSH queue:events
 * <payload 1> ... <payload n>, [EVAL dedupe], EXEC`. The dedupe script (only when a job has a
 * delivery id) runs right after the LPUSH, inside the transaction: it does `SET
 * tierone:delivery:<id> 1 NX EX <ttl>` per job and takes the jobs whose key existed (a
 * repeat within the TTL, or the same id twice in one batch) off the head of the list again,
 * returning their positions (the others are queued). Payloads never pass through Lua (Redis
 * hashes every byte of every string a script receives). The transaction is atomic: a
 * dedupe key exists exactly when its job was pushed; one that failed (error reply, lost
 * connection, timeout) left neither, and every job of its batch goes to the spool in order.
 * Without a delivery id there is no dedupe. Callbacks run from the loop, never inside
 * outbox_submit.
 *
 * Routing, decided per job when it is submitted:
 *   - spool empty (nothing stored, nothing being written) and Redis up, or a batch is
 *     already waiting: into the batch. When the batch is sent and Redis cannot take it
 *     then (down, closing, or jobs were spooled meanwhile), or its transaction fails, its
 *     jobs go to the spool, in order;
 *   - otherwise: append to the spool. Once anything is spooled, later jobs follow it into
 *     the spool until the spool has drained, so jobs reach Redis in order of acceptance.
 * A drain step runs when Redis comes up, after each spool write, and on a timer: it pushes
 * the oldest spooled records (up to 128) in one transaction of the same shape, removes them
 * once Redis confirmed, and continues until the spool is empty. Records whose push failed
 * are retried later; records Redis executed but whose reply was lost are pushed again
 * (at-least-once), which the dedupe key turns into exactly-once for deliveries with an id.
 *
 * Spool record payload: u16 delivery-id length (little-endian) | delivery id | job payload.
 * The job payload (jid, created_at, enqueued_at) is built once, at acceptance. */
#ifndef TIERONE_INGEST_OUTBOX_H
#define TIERONE_INGEST_OUTBOX_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "metrics.h"

#define OUTBOX_DEDUPE_PREFIX "tierone:delivery:"
#define OUTBOX_MAX_DELIVERY  200 /* longest delivery id kept (bytes) */

enum outbox_result {
    OUTBOX_QUEUED,    /* in queue:events */
    OUTBOX_DUPLICATE, /* the delivery id was seen within the dedupe TTL; nothing pushed */
    OUTBOX_SPOOLED,   /* durable in the local spool; will reach Redis later */
    OUTBOX_FAILED,    /* neither Redis nor the spool took it */
};

/* Completion of a submit: error is NULL unless result is OUTBOX_FAILED (valid only during
 * the call). */
typedef void (*outbox_cb)(enum outbox_result result, const char *error, void *data);
typedef void (*outbox_closed_cb)(void *data);

struct outbox_opts {
    const char *redis_url;      /* required */
    const char *spool_path;     /* required */
    uint64_t spool_max_bytes;   /* 0 = no cap */
    uint32_t redis_timeout_ms;  /* per command; a slower reply counts as Redis down; 0 = 1000 */
    uint32_t dedupe_ttl_s;      /* 0 = 86400 */
    uint32_t drain_interval_ms; /* retry period while the spool is not empty; 0 = 250 */
    const char *queue;          /* NULL = "events" */
    struct metrics_registry *metrics; /* optional: the outbox registers its families here */
};

struct outbox;

/* Open the spool (resuming what is on disk) and start connecting to Redis. Returns the
 * outbox, or NULL with a reason in err (invalid Redis URL, spool cannot be opened). */
struct outbox *outbox_new(uv_loop_t *loop, const struct outbox_opts *opts, char *err,
                          size_t errcap);

/* Submit one job payload (len bytes in a malloc'ed buffer, which the outbox takes over in
 * every case: it frees it, also when this returns -1; no copy is made) with its delivery id
 * (NULL or "" for none; at most OUTBOX_MAX_DELIVERY bytes; copied). Returns 0 and
 * cb(result, error, data) runs exactly once later, from the loop; or -1 with a reason in err
 * (empty payload, delivery id too long, or Redis cannot be used and the spool refuses the
 * record: full, or closing) and cb never runs. */
int outbox_submit(struct outbox *ob, const char *delivery, char *payload, size_t len, outbox_cb cb,
                  void *data, char *err, size_t errcap);

/* Records waiting in the spool. */
uint64_t outbox_spool_depth(const struct outbox *ob);
/* 1 when Redis is connected. */
int outbox_redis_up(const struct outbox *ob);

/* Close: stop draining, let submitted jobs finish (their callbacks run), close Redis and the
 * spool; then cb(data) (may be NULL) runs and the outbox is freed. What is still spooled
 * stays on disk for the next start. */
void outbox_close(struct outbox *ob, outbox_closed_cb cb, void *data);

#endif
