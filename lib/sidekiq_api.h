/* sidekiq_api: what Sidekiq's Web UI and Sidekiq::API read and do, for the operator CLI
 * (`tierone stats`, `queues`, `dead`, `retry`, `kill`, `quiet`, `stop`).
 *
 * Each function does to Redis exactly what the equivalent Web UI action does in Sidekiq
 * 6.4.1 (lib/sidekiq/api.rb; ../shared/SIDEKIQ.md sections 2.5, 2.8, 2.9), so the CLI and
 * the Web UI never disagree: stats from the same keys, "retry now" decrements retry_count
 * and pushes the job like Client.push (enqueued_at set to now), "kill" moves an entry to
 * the dead set with Sidekiq's trim, quiet/stop LPUSH TSTP/TERM onto <identity>-signals with
 * a 60 s expiry. Payloads are edited byte-faithfully (json_edit.h), never re-encoded.
 *
 * Synchronous (hiredis blocking context): these run in a CLI, not on the worker's loop.
 * Errors: -1 with a reason in *err (caller frees). */
#ifndef TIERONE_SIDEKIQ_API_H
#define TIERONE_SIDEKIQ_API_H

#include "job.h"

#include <hiredis/hiredis.h>
#include <stddef.h>

/* One queue (Sidekiq::Queue): name, size, latency in seconds (0 when empty). */
struct sidekiq_queue_info {
    char *name;
    long long size;
    double latency;
};

/* One entry of retry / schedule / dead (Sidekiq::SortedEntry). */
struct sidekiq_entry {
    char *raw; /* the member, exact bytes */
    size_t len;
    double score;
    char *jid, *klass, *queue;         /* NULL when missing */
    char *error_class, *error_message; /* NULL when missing */
    long long retry_count;             /* -1 when missing */
};

/* One live process (Sidekiq::Process). */
struct sidekiq_process_info {
    char *identity, *hostname, *tag, *queues; /* queues: comma-separated */
    long long pid, busy, concurrency, rss_kib;
    int quiet;
    double beat, started_at;
};

struct sidekiq_stats {
    long long processed, failed;       /* stat:processed, stat:failed */
    long long scheduled, retries;      /* ZCARD schedule, ZCARD retry */
    long long dead, processes;         /* ZCARD dead, SCARD processes */
    long long enqueued;                /* sum of the queues' sizes */
    long long busy;                    /* sum of busy over live processes */
    long long concurrency;             /* sum of concurrency over live processes */
    double default_queue_latency;      /* seconds, 0 when queue:default is empty */
    struct sidekiq_queue_info *queues; /* every queue, sorted by name */
    size_t nqueues;
    struct sidekiq_process_info *process_list; /* live processes, sorted by identity */
    size_t nprocesses;
};

/* The dashboard's numbers (Sidekiq::Stats), with the queue and process lists they were
 * summed from (owned by the struct: sidekiq_api_stats_free). On failure nothing is left
 * to free. */
int sidekiq_api_stats(redisContext *c, struct sidekiq_stats *out, char **err);
void sidekiq_api_stats_free(struct sidekiq_stats *st);

/* Every queue in the `queues` set, sorted by name. *out is a new array (free with
 * sidekiq_api_queues_free). */
int sidekiq_api_queues(redisContext *c, struct sidekiq_queue_info **out, size_t *n, char **err);
void sidekiq_api_queues_free(struct sidekiq_queue_info *q, size_t n);

/* Entries of sorted set `set` ("retry", "schedule" or "dead"), newest score first (as the
 * Web UI's Dead page; pass ascending=1 for the Retries/Scheduled order), only class klass
 * when not NULL, at most limit (0: all). */
int sidekiq_api_entries(redisContext *c, const char *set, const char *klass, size_t limit,
                        int ascending, struct sidekiq_entry **out, size_t *n, char **err);
void sidekiq_api_entries_free(struct sidekiq_entry *e, size_t n);

/* "Retry now" on the entry of `set` whose jid is jid (SortedEntry#retry): remove it,
 * decrement retry_count if present, set enqueued_at, SADD queues + LPUSH its queue, all in
 * one atomic step (another process moving it first makes this a no-op). Returns 1 when
 * done, 0 when no entry has that jid, -1 on error. */
int sidekiq_api_retry(redisContext *c, const char *set, const char *jid, enum job_ts_format fmt,
                      char **err);

/* "Retry all" (SortedSet#retry_all): every entry of set; the count retried in *count. */
int sidekiq_api_retry_all(redisContext *c, const char *set, enum job_ts_format fmt,
                          long long *count, char **err);

/* "Kill" (SortedEntry#kill, DeadSet#kill): move the entry of set with this jid to `dead`
 * unchanged, score now, then trim dead like Sidekiq (older than dead_timeout_s, beyond
 * dead_max_jobs). Returns 1 done, 0 not found, -1 error. */
int sidekiq_api_kill(redisContext *c, const char *set, const char *jid, long long dead_max_jobs,
                     long long dead_timeout_s, char **err);

/* Live processes (members of `processes` whose hash still has info), sorted by identity. */
int sidekiq_api_processes(redisContext *c, struct sidekiq_process_info **out, size_t *n,
                          char **err);
void sidekiq_api_processes_free(struct sidekiq_process_info *p, size_t n);

/* Process#quiet! / #stop!: LPUSH <identity>-signals sig ("TSTP" or "TERM"), EXPIRE 60.
 * Returns 1, or 0 when no live process has that identity, -1 on error. */
int sidekiq_api_signal(redisContext *c, const char *identity, const char *sig, char **err);

#endif
