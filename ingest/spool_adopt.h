/* spool_adopt: which spool file each tierone-ingest process owns, and moving the jobs of
 * spool files no process owns any more ("orphans") into a live one at start.
 *
 * Naming, for base = the configured spool_path and N = the number of processes:
 *   N = 1: the only process owns base itself;
 *   N > 1: process n (1..N) owns base.<n>.
 * Orphans of base (what the adopting process - the only one, or process 1 - takes over):
 * base.<k> (k all digits) for every k > N when N > 1 or every k when N = 1, and base
 * itself when N > 1. So shrinking or growing N, or switching between one process and
 * several, never strands a job on disk.
 *
 * Moving is crash-safe but at-least-once: each batch of records is appended to the own
 * spool and made durable before it is removed from the orphan, so a crash in between
 * replays that batch (the dedupe key makes it exactly-once for deliveries with an id).
 * Synchronous (a private libuv loop): meant for start-up, before anything is served. */
#ifndef TIERONE_INGEST_SPOOL_ADOPT_H
#define TIERONE_INGEST_SPOOL_ADOPT_H

#include <stddef.h>
#include <stdint.h>

/* The spool file process index (1..processes) owns: base or base.<index>. Heap string the
 * caller frees. */
char *spool_adopt_own_path(const char *base, unsigned processes, unsigned index);

/* 1 when path (a file name as listed in base's directory, joined to it) is an orphan of
 * base for this number of processes (see above), else 0. */
int spool_adopt_is_orphan(const char *base, unsigned processes, const char *path);

/* Move every record of every orphan of base (see above), oldest orphan suffix first, onto
 * the end of the spool file own (opened with max_bytes as its cap, and closed again), and
 * delete each orphan once it is empty. An orphan that another process holds, or that is
 * not a spool file, is skipped with a warning (and left alone). Returns the number of
 * records moved (>= 0), or -1 with a reason in err when own cannot be opened or a write to
 * it failed (orphans not yet moved stay on disk for the next start). */
long long spool_adopt_orphans(const char *base, unsigned processes, const char *own,
                              uint64_t max_bytes, char *err, size_t errcap);

#endif
