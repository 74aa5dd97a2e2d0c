/* kb_ingest: ingest a batch of paths and URLs into one knowledge base: read or fetch each
 * document, parse it (kb_doc.h), chunk it (kb_chunk.h) and store it (kb_store.h), a few
 * documents at a time, then optionally prune. What `tierone kb ingest` runs.
 *
 * Arguments ("roots"):
 *  - an http:// or https:// URL: fetched with GET through the HTTP client (up to 5
 *    redirects, 30 s, 32 MiB); the format comes from the URL's extension, else the
 *    Content-Type; a transport failure is "unreachable: ...", a status other than 200 is
 *    "HTTP <status>";
 *  - a file: taken whatever its extension (an unknown one fails "unsupported document
 *    type");
 *  - a directory: walked recursively in name order, entries starting with "." skipped,
 *    symlinked directories not followed, and only files with a known extension taken (the
 *    others are counted in `skipped`, not reported as failures).
 * Sources are stored as absolute paths (realpath) or as the URL given, and each document
 * remembers its root for pruning.
 *
 * Every document fails or lands on its own: a bad one (unreadable, binary, invalid UTF-8,
 * empty, unsupported, unreachable, a database error) is reported through report_cb with
 * its reason and the others still land.
 *
 * Prune (opts.prune), after every document is done: for each root, the documents stored
 * under that root whose source was not enumerated this time are deleted. Sources that
 * were enumerated but failed are kept (a document that failed to parse has not
 * disappeared). A root that could not be fully walked (a directory it could not read) is
 * not pruned and counts as a failure; a root that no longer exists prunes everything
 * stored under it.
 *
 * After a run that wrote anything, kb_store_maintain cleans the GIN pending list and
 * analyzes kb_chunks, so the next search plans with the index (a failure there is logged,
 * not reported: the documents landed).
 *
 * Callback contract: if kb_ingest_run returns 0, report_cb runs once per document event
 * and done_cb exactly once after the last, always later from the loop (never inside
 * kb_ingest_run), after the run's own handle has closed. */
#ifndef TIERONE_KB_INGEST_H
#define TIERONE_KB_INGEST_H

#include "http_client.h"
#include "kb_chunk.h"
#include "pg.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct kb_ingest_opts {
    struct pg_pool *pool;     /* borrowed */
    struct http_client *http; /* borrowed; NULL: URLs fail ("no HTTP client") */
    long long kb_id;          /* from kb_store_kb_ensure */
    struct kb_chunk_opts chunk;
    int prune;
    unsigned window; /* documents in flight at once; 0: 4 */
};

enum kb_ingest_event {
    KB_INGEST_ADDED,
    KB_INGEST_REPLACED,
    KB_INGEST_UNCHANGED,
    KB_INGEST_FAILED, /* detail: the reason */
    KB_INGEST_PRUNED, /* source: the root; detail: how many documents were removed */
};

struct kb_ingest_summary {
    size_t documents; /* enumerated (landed + failed) */
    size_t added, replaced, unchanged, failed, pruned;
    size_t skipped; /* files of other types met in directories */
    size_t chunks;  /* chunks of the documents that parsed */
    uint64_t bytes; /* raw bytes of the documents read */
    double seconds; /* from start to the last document (prune excluded) */
};

/* source and detail are valid during the call only. */
typedef void (*kb_ingest_report_cb)(enum kb_ingest_event ev, const char *source, const char *detail,
                                    void *arg);
typedef void (*kb_ingest_done_cb)(const struct kb_ingest_summary *s, void *arg);

/* Ingest roots[0..nroots) (copied). Returns 0 (callbacks as above), or -1 when an
 * argument is missing or the chunk options are invalid (kb_chunk_opts_check). */
int kb_ingest_run(uv_loop_t *loop, const struct kb_ingest_opts *opts, const char *const *roots,
                  size_t nroots, kb_ingest_report_cb report_cb, kb_ingest_done_cb done_cb,
                  void *arg);

/* The chunking parameters as stored with each document: "chars:1200:200". Writes at most
 * cap bytes into out. */
void kb_ingest_chunking(const struct kb_chunk_opts *o, char *out, size_t cap);

#endif
