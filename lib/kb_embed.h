/* kb_embed: give the chunks of a knowledge base their embeddings, through the LLM client
 * (llm.h) and the async PostgreSQL pool (pg.h).
 *
 * Rounds, one after the other until no chunk is left:
 *   1. read up to `batch` chunks of the knowledge base whose embedding IS NULL (oldest id
 *      first; a partial index serves this);
 *   2. send their texts ("heading path\n\ntext") in one llm_embed call (which may split
 *      them further into its own embedding_batch requests);
 *   3. write the vectors back (one UPDATE per round: embedding real[], embedding_model),
 *      only to chunks whose embedding is still NULL.
 * Resumable and interruption-safe by construction: what is written is committed per round,
 * and a later run sends only the chunks still without an embedding. A chunk replaced by a
 * re-ingest meanwhile has a new id and is picked up by the next run.
 *
 * Rate limiting: at least min_interval_ms between the starts of two rounds (on top of any
 * fleet-wide limit configured in the llm client). Retryable failures (429, 5xx, timeouts;
 * llm.h's classification) retry the same round after the server's Retry-After when it
 * gave one, else after backoff_ms doubling, at most max_retries times; a permanent failure
 * or running out of retries ends the run with the error (rounds already written stay).
 *
 * Callback contract: if kb_embed_run returns 0, cb runs exactly once later from the loop,
 * after the run's timer handle has closed (uv_loop_close can succeed right after). */
#ifndef TIERONE_KB_EMBED_H
#define TIERONE_KB_EMBED_H

#include "buf.h"
#include "llm.h"
#include "pg.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct kb_embed_opts {
    struct pg_pool *pool;     /* borrowed */
    struct llm *llm;          /* borrowed; needs an embedding_model */
    const char *kb;           /* knowledge base name */
    const char *model;        /* stored in kb_chunks.embedding_model; NULL: "" */
    size_t batch;             /* chunks per round; 0: 64 */
    uint64_t min_interval_ms; /* between round starts; 0: none */
    unsigned max_retries;     /* per round; 0: 5 (use KB_EMBED_NO_RETRY for none) */
    uint64_t backoff_ms;      /* first retry delay without Retry-After; 0: 1000 */
    uint64_t max_wait_ms;     /* cap on any one wait; 0: 60000 */
};

#define KB_EMBED_NO_RETRY ((unsigned)-1)

struct kb_embed_stats {
    size_t embedded; /* chunks written */
    size_t rounds;   /* successful rounds */
    size_t retries;  /* rounds retried */
};

/* err NULL: every chunk has an embedding now. Otherwise a reason (valid during the
 * callback); stats says how far it got. */
typedef void (*kb_embed_cb)(const char *err, const struct kb_embed_stats *stats, void *arg);

/* Start a run on loop. Returns 0 (cb runs once), or -1 when an argument is missing. */
int kb_embed_run(uv_loop_t *loop, const struct kb_embed_opts *opts, kb_embed_cb cb, void *arg);

/* Append the n floats as a PostgreSQL array literal ({0.1,-2.5e-05,...}). */
void kb_embed_float_array(struct buf *b, const float *v, size_t n);

#endif
