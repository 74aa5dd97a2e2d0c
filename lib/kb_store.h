/* kb_store: the knowledge base's documents and chunks in PostgreSQL (tables of
 * migrations/0001_knowledge_base.sql), written and read through the async pool of pg.h.
 *
 * A knowledge base is selected by name; kb_store_kb_ensure creates it on first use with a
 * text search configuration ('english' unless told otherwise; 'simple' for languages
 * PostgreSQL has no stemmer for).
 *
 * Writing a document (kb_store_put) is idempotent and atomic:
 *  - first a read (SELECT content_hash, chunking): when the document exists with the same
 *    content hash and the same chunking parameters, nothing is written at all (no row
 *    version, no lock, no sequence value: a re-ingest of an unchanged tree costs one
 *    index lookup per document);
 *  - otherwise ONE statement upserts the document row by (kb, source), deletes its old
 *    chunks and inserts the new ones (data-modifying CTEs; one statement is one
 *    transaction, so a search sees either the old chunks or the new ones, never a mix,
 *    and a failure leaves the old version in place). Other documents are not touched.
 * Pruning removes the documents of one ingest root (the path or URL the operator named)
 * whose source is not among those still present under it; other roots and other
 * knowledge bases are never touched.
 *
 * Callback contract (pg.h's): a function that returns 0 runs its callback exactly once,
 * later, from the loop; one that returns -1 never runs it. err in a callback is NULL on
 * success, else a human-readable reason valid during the callback only; everything else
 * handed to a callback is also valid during the callback only. */
#ifndef TIERONE_KB_STORE_H
#define TIERONE_KB_STORE_H

#include "buf.h"
#include "pg.h"

#include <stddef.h>

#define KB_STORE_DEFAULT_KB     "default"
#define KB_STORE_DEFAULT_CONFIG "english"

/* A knowledge base. */
struct kb_store_kb {
    long long id;
    const char *name;
    const char *ts_config; /* e.g. "english", "simple" */
};

/* One chunk to store, in document order. */
struct kb_store_chunk {
    const char *heading_path; /* "Deploy > Helm > Scaling"; "" or NULL for none */
    const char *content;      /* non-empty UTF-8 */
};

/* One document to store. Borrowed for the duration of kb_store_put (copied into the SQL
 * parameters before it returns). */
struct kb_store_doc {
    const char *source;       /* path or URL; unique within the knowledge base */
    const char *root;         /* the ingest argument it came from (prune scope) */
    const char *title;        /* NULL: "" */
    const char *content_type; /* "markdown", "html", "text"; NULL: "" */
    const char *content_hash; /* sha256 hex of the raw bytes */
    const char *chunking;     /* the chunking parameters, e.g. "chars:1200:150" */
    long long bytes;          /* raw size */
    const struct kb_store_chunk *chunks;
    size_t nchunks; /* >= 1 */
};

enum kb_store_outcome {
    KB_STORE_UNCHANGED = 0, /* same hash and chunking: nothing written */
    KB_STORE_ADDED,         /* new document */
    KB_STORE_REPLACED,      /* existing document, chunks replaced */
};

/* A listed document. */
struct kb_store_entry {
    const char *kb;
    const char *source;
    const char *title;
    const char *content_type;
    const char *updated_at; /* ISO 8601 UTC */
    long long bytes;
    long long chunks;
    long long embedded; /* chunks that have an embedding */
};

typedef void (*kb_store_kb_cb)(const char *err, const struct kb_store_kb *kb, void *arg);
typedef void (*kb_store_put_cb)(const char *err, enum kb_store_outcome outcome, void *arg);
typedef void (*kb_store_count_cb)(const char *err, long long n, void *arg);
typedef void (*kb_store_list_cb)(const char *err, const struct kb_store_entry *entries, size_t n,
                                 void *arg);

/* Look up knowledge base `name` (non-empty); with create, make it when missing, using
 * ts_config (NULL: "english"; must name an installed text search configuration). Without
 * create a missing one is an error ("no knowledge base named ..."). Reads only when it
 * exists. Returns 0 (cb runs once) or -1 (bad arguments, pool closing). */
int kb_store_kb_ensure(struct pg_pool *pool, const char *name, int create, const char *ts_config,
                       kb_store_kb_cb cb, void *arg);

/* Store doc in knowledge base kb_id (see the header comment). Returns 0 (cb runs once) or
 * -1 (bad arguments: a NULL field, no chunks; pool closing). */
int kb_store_put(struct pg_pool *pool, long long kb_id, const struct kb_store_doc *doc,
                 kb_store_put_cb cb, void *arg);

/* Delete the documents of kb_id under root whose source is not in keep[0..nkeep) (with
 * their chunks). cb gets the number removed. Returns 0 (cb runs once) or -1. */
int kb_store_prune(struct pg_pool *pool, long long kb_id, const char *root, const char *const *keep,
                   size_t nkeep, kb_store_count_cb cb, void *arg);

/* Delete document source of knowledge base kb (a name) with its chunks; cb gets 1, or 0
 * when there was no such document. Returns 0 (cb runs once) or -1. */
int kb_store_remove(struct pg_pool *pool, const char *kb, const char *source, kb_store_count_cb cb,
                    void *arg);

/* List the documents of knowledge base kb (a name; NULL: every knowledge base), ordered
 * by knowledge base and source. Returns 0 (cb runs once) or -1. */
int kb_store_list(struct pg_pool *pool, const char *kb, kb_store_list_cb cb, void *arg);

/* After a batch of writes: move the GIN index's pending list into the index proper
 * (gin_clean_pending_list; with fastupdate, freshly inserted chunks sit in an unsorted
 * list that every search scans linearly, and the planner, costing that list, prefers a
 * sequential scan) and ANALYZE kb_chunks. Needs the table's owner (the role that ran
 * the migrations). cb gets the pending-list pages cleaned. Returns 0 (cb runs once) or
 * -1. */
int kb_store_maintain(struct pg_pool *pool, kb_store_count_cb cb, void *arg);

/* Append strs[0..n) to b as a PostgreSQL array literal ({"a","b\"c"}), for a text[]
 * parameter. */
void kb_store_text_array(struct buf *b, const char *const *strs, size_t n);

#endif
