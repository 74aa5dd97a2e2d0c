/* kb_doc_internal: what kb_doc.c shares with its format readers (kb_markdown.c,
 * kb_html.c). Not part of the module's contract; only those three files include it. */
#ifndef TIERONE_KB_DOC_INTERNAL_H
#define TIERONE_KB_DOC_INTERNAL_H

#include <stddef.h>

#include "buf.h"
#include "kb_doc.h"

/* Builds a doc's sections from a stream of headings and blocks, in document order. */
struct kb_builder {
    struct kb_doc *doc;
    char **heads; /* open headings, outermost first */
    int *levels;
    size_t nheads, capheads;
    int path_changed; /* a heading came since the last section was opened */
    size_t capsections, capblocks;
    char *first_h1, *first_heading;
};

void kb_builder_init(struct kb_builder *b, struct kb_doc *d);
/* A heading of level 1..6; text is whitespace-collapsed; an empty one is ignored. */
void kb_builder_heading(struct kb_builder *b, int level, const char *text, size_t len);
/* A block; takes ownership of text (heap, NUL-terminated). Code keeps its content except
 * leading blank lines and trailing whitespace; other kinds are trimmed. An empty result is
 * dropped. info (may be NULL or "") is copied. */
void kb_builder_block(struct kb_builder *b, enum kb_block_kind kind, char *text, const char *info);
/* Free the builder's own state (not the doc). */
void kb_builder_done(struct kb_builder *b);

/* Append s collapsed: runs of ASCII whitespace and U+00A0 become one space; no leading
 * space when out is empty or already ends in a space or newline. */
void kb_text_collapse(struct buf *out, const char *s, size_t len);
/* Trim ASCII whitespace from both ends of b in place. */
void kb_text_trim(struct buf *b);

/* Readers: feed b from len bytes of checked UTF-8. *title gets the format's own title
 * (front-matter title, HTML <title>) or stays NULL. Return 0, or -1 with *err set. */
int kb_markdown_read(const char *s, size_t len, struct kb_builder *b, char **title, char **err);
int kb_html_read(const char *s, size_t len, struct kb_builder *b, char **title, char **err);
/* Append the visible text of an HTML fragment, collapsed to one line. */
void kb_html_fragment_text(const char *s, size_t len, struct buf *out);

#endif
