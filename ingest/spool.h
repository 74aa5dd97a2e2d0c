/* spool: a crash-safe FIFO of records in one local file, where the shim keeps the jobs it
 * accepted while Redis was unreachable.
 *
 * File layout (integers little-endian):
 *
 *   header  "TRSPOOL1" (8 bytes) | u64 head: offset of the oldest record not yet removed
 *   record  u32 length | u32 CRC-32 (IEEE, zlib's) of the length bytes and the payload |
 *           payload (length bytes)
 *
 * Appends are group-committed: records appended while a write is in flight wait and go to
 * disk together in the next write; each write is followed by fdatasync, both on libuv's
 * thread pool, so the loop never blocks on the disk. An append's callback runs only once
 * its record is durable (or the write failed, in which case the partial write is cut off
 * again and the file is as before).
 *
 * Removing the oldest record (spool_pop) rewrites the head offset in place (pwrite, no
 * fsync: it survives a crash of the process; after a power loss the last removals may be
 * replayed, i.e. delivery is at-least-once). When every record is removed and nothing is
 * being written, the file is cut back to its header.
 *
 * Opening scans the records from head to the end. A record whose length runs past the end
 * of the file or whose CRC does not match (a write torn by a crash) ends the spool: it and
 * anything after it are logged and cut off, never replayed.
 *
 * Not thread-safe: everything but the write itself runs on the loop thread. */
#ifndef TIERONE_INGEST_SPOOL_H
#define TIERONE_INGEST_SPOOL_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define SPOOL_HEADER_LEN      16
#define SPOOL_RECORD_OVERHEAD 8
#define SPOOL_MAX_RECORD      (64u * 1024 * 1024)

struct spool;

/* Completion of an append: status 0 when the record is on disk (fdatasync done), else a
 * negative errno (UV_ENOSPC, UV_EFBIG, UV_EIO...), the record then is not in the spool. */
typedef void (*spool_append_cb)(int status, void *data);
typedef void (*spool_closed_cb)(void *data);

/* What spool_open found. */
struct spool_open_info {
    uint64_t records;    /* records waiting (head to end) */
    uint64_t torn_bytes; /* bytes cut off at the end (0 normally) */
};

/* CRC-32 (IEEE 802.3, the polynomial and result zlib's crc32 gives), continuing from crc
 * (0 to start). */
uint32_t spool_crc32(uint32_t crc, const void *data, size_t len);

/* Open or create the spool file at path (with mode 0600) and take an exclusive flock on it
 * for as long as it is open (two processes never share a spool). max_bytes caps the file
 * size (appends beyond it fail at once); 0 = no cap. Returns the spool, or NULL with a
 * reason in err (cannot create, in use by another process, not a spool file, I/O error).
 * info may be NULL. */
struct spool *spool_open(uv_loop_t *loop, const char *path, uint64_t max_bytes,
                         struct spool_open_info *info, char *err, size_t errcap);

/* Append a copy of rec (len bytes, 1..SPOOL_MAX_RECORD). Returns 0 and cb(status, data)
 * runs exactly once later, from the loop, after the record is durable or the write failed;
 * or -1 with a reason in err (record too big, spool full, spool closing) and cb never runs.
 * Records become visible to spool_peek in append order once durable. */
int spool_append(struct spool *sp, const void *rec, size_t len, spool_append_cb cb, void *data,
                 char *err, size_t errcap);

/* The oldest durable record: returns 1 with *rec / *len pointing into a buffer owned by the
 * spool (valid until the next spool call), 0 when there is none, -1 with a reason in err on
 * a read error (or a record that no longer checks; the rest of the file is then dropped
 * with a log line). */
int spool_peek(struct spool *sp, const char **rec, size_t *len, char *err, size_t errcap);

#define SPOOL_PEEK_MAX 256 /* records one spool_peek_n returns at most */

/* The oldest durable records, in order: at most max (<= SPOOL_PEEK_MAX) and, after the
 * first, no more once max_bytes of payload are collected. Returns how many (recs[i] /
 * lens[i] as for spool_peek, valid until the next spool call), 0 when there are none, or
 * -1 as spool_peek for a problem with the first record; a record further on that cannot be
 * read ends the list early and is met as the first of a later peek. */
int spool_peek_n(struct spool *sp, size_t max, size_t max_bytes, const char **recs, size_t *lens,
                 char *err, size_t errcap);

/* Remove the records the last spool_peek / spool_peek_n returned (only after a successful
 * peek). Returns 0, or -1 with a reason in err when the head could not be written (the
 * records then stay and will be returned again). */
int spool_pop(struct spool *sp, char *err, size_t errcap);

/* Records in the spool: durable ones not yet removed plus appends still being written. */
uint64_t spool_depth(const struct spool *sp);
/* 1 when no record is stored or being written. */
int spool_empty(const struct spool *sp);
/* Current file size in bytes (header included), counting writes in flight. */
uint64_t spool_bytes(const struct spool *sp);
/* The path given to spool_open. */
const char *spool_path(const struct spool *sp);

/* Close: appends already accepted are still written (their callbacks run), new ones are
 * refused; then the file is closed and cb(data) (may be NULL) runs from the loop and the
 * spool is freed. */
void spool_close(struct spool *sp, spool_closed_cb cb, void *data);

#endif
