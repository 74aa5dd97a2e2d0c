/* kb: `tierone kb`, the operator's commands for the knowledge base.
 *
 *   tierone kb ingest PATH|URL... [--kb NAME] [--prune] [--chunk-size N] [--overlap N]
 *                                 [--unit chars|tokens] [--config english|simple]
 *   tierone kb list [--kb NAME] [--json]
 *   tierone kb rm SOURCE... [--kb NAME]
 *   tierone kb search "question" [-k N] [--kb NAME] [--min-score X] [--json] [--explain]
 *   tierone kb eval FILE.jsonl [--kb NAME] [--json]
 *   tierone kb embed [--kb NAME]
 *
 * Every command takes --database-url URL (default: $TIERONE_DATABASE_URL); --kb defaults
 * to "default" (ingest creates it, with --config as its text search configuration).
 * Embeddings are used when $TIERONE_LLM_URL and $TIERONE_EMBEDDING_MODEL are set
 * ($TIERONE_LLM_API_KEY optional, $TIERONE_EMBEDDING_INTERVAL_MS the least time between
 * two embeddings requests): ingest then embeds the new chunks, `embed` resumes an
 * interrupted run, search fuses the vector ranking when the server has pgvector. Output
 * goes to stdout; per-document failures, warnings and the search-mode line to stderr.
 *
 * Exit status: 0 success; 1 some documents failed to ingest (each reported on stderr
 * as "kb ingest: SOURCE: REASON"; the others landed), embeddings failed, `rm` found no
 * such document, or `search`/`eval` failed; 2 bad usage or setup (no database URL,
 * unknown knowledge base for embed, schema missing). */
#ifndef TIERONE_CLI_KB_H
#define TIERONE_CLI_KB_H

#include <stdio.h>

/* Run `tierone kb ...`: argv[0] is "kb". Returns the exit status (above). */
int cli_kb(int argc, char **argv);

/* Print the usage (for `tierone help kb`). */
void cli_kb_usage(FILE *out);

#endif
