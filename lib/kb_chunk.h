/* kb_chunk: cutting a parsed kb_doc into retrieval chunks. Pure and deterministic: the
 * same document and options always give the same chunks, byte for byte.
 *
 *   struct kb_chunk_opts o;
 *   kb_chunk_opts_default(&o);              // 1200 characters, 200 of overlap
 *   o.size = 300; o.unit = KB_UNIT_TOKENS;  // or approximate tokens
 *   if (kb_chunk_opts_check(&o, &err)) ...  // once, when reading the configuration
 *   struct kb_chunk_list l;
 *   kb_chunk_doc(&doc, &o, &l);
 *   for (size_t i = 0; i < l.len; i++) store(l.items[i].heading_path, l.items[i].text, ...);
 *   kb_chunk_list_free(&l);
 *
 * Units. Characters are Unicode code points of the UTF-8 text (never bytes). Tokens are
 * approximated as 4 characters each (the usual figure for English with BPE tokenizers;
 * code and non-Latin text run denser, so treat token limits as approximate): with
 * KB_UNIT_TOKENS, size and overlap are multiplied by KB_CHARS_PER_TOKEN and everything
 * below works in characters.
 *
 * Rules.
 *  - A chunk never spans two sections (the blocks under one heading path); each chunk
 *    carries its section's heading path joined with " > " ("Deploy > Helm > Scaling", ""
 *    before the first heading), for the store to index and search alongside the text.
 *  - Within a section, whole blocks are packed into a chunk, separated by a blank line,
 *    while the chunk stays within size. A block that fits in size is never cut: when it
 *    does not fit the current chunk it starts the next one. This is what keeps a code
 *    block or a table whole.
 *  - A block larger than size starts a new chunk and is split. Prose (paragraphs, quotes)
 *    is cut at the last paragraph break if that keeps at least half the room, else at the
 *    last sentence end (". ", "! ", "? ", optionally after a closing quote or bracket, or
 *    after 。！？) if that keeps at least half, else at the last space. Lists prefer line
 *    (item) breaks, then sentences, then spaces. Code and tables are cut at the last line
 *    break, then at the last space within a long line. A single word (or line without
 *    spaces) longer than the room left is cut at a code point boundary: so no chunk is
 *    ever over size, and no cut ever falls inside a UTF-8 sequence.
 *  - Overlap: a chunk that continues a section (after a split or after a block that did
 *    not fit) starts with a tail of the previous chunk of that section, at most overlap
 *    characters: for code, tables and lists the longest tail of whole lines (its first
 *    line's indentation dropped); for prose the longest tail that starts at a sentence
 *    start if that is at least half the overlap; else the longest tail of whole words
 *    (empty when the last word is longer than the overlap). When the
 *    next block is not split, the tail is shortened so that tail + block still fit, and
 *    dropped if nothing fits. The tail is joined with the whitespace the text had there.
 *  - Cut points drop the surrounding whitespace, except that code, tables and lists keep
 *    the indentation of the line that follows a line break.
 *
 * Ownership: the list owns its chunks and their strings; free with kb_chunk_list_free. */
#ifndef TIERONE_KB_CHUNK_H
#define TIERONE_KB_CHUNK_H

#include <stddef.h>

#include "kb_doc.h"

#define KB_CHUNK_DEFAULT_SIZE    1200
#define KB_CHUNK_DEFAULT_OVERLAP 200
#define KB_CHARS_PER_TOKEN       4
#define KB_CHUNK_MAX_SIZE        10000000 /* in either unit */

enum kb_unit {
    KB_UNIT_CHARS,
    KB_UNIT_TOKENS,
};

struct kb_chunk_opts {
    size_t size;    /* largest chunk, in unit; >= 1 */
    size_t overlap; /* largest repeated tail, in unit; < size */
    enum kb_unit unit;
};

struct kb_chunk {
    size_t ordinal;     /* 0, 1, ... in document order */
    size_t section;     /* index into the doc's sections */
    char *heading_path; /* "A > B > C", or "" */
    char *text;         /* valid UTF-8, no trailing whitespace; leading only as the
                         * indentation of a code or list line that starts the chunk */
    size_t chars;       /* code points in text */
    size_t tokens;      /* approximate: chars / 4, rounded up */
    size_t overlap;     /* code points at the start of text repeated from the previous chunk */
};

struct kb_chunk_list {
    struct kb_chunk *items;
    size_t len;
};

/* Fill *o with the defaults: 1200 characters, 200 overlap. */
void kb_chunk_opts_default(struct kb_chunk_opts *o);

/* Check options: size between 1 and KB_CHUNK_MAX_SIZE, overlap below size, a known unit.
 * Returns 0, or -1 with *err set to a heap message such as "chunk overlap (300) must be
 * smaller than the chunk size (200)" that the caller frees. */
int kb_chunk_opts_check(const struct kb_chunk_opts *o, char **err);

/* Chunk d with o (NULL for the defaults) into *out (the caller frees it with
 * kb_chunk_list_free). Returns 0, or -1 with *out empty when o fails kb_chunk_opts_check. */
int kb_chunk_doc(const struct kb_doc *d, const struct kb_chunk_opts *o, struct kb_chunk_list *out);

/* Release every chunk and zero the list. NULL and zeroed lists are fine. */
void kb_chunk_list_free(struct kb_chunk_list *l);

#endif
