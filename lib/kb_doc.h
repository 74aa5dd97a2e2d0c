/* kb_doc: reading one knowledge-base document (Markdown, HTML or plain text) into a title,
 * a content hash and an ordered list of sections of plain-text blocks. Pure: no I/O, no
 * database; the caller reads the file or fetches the URL and hands over the bytes.
 *
 *   struct kb_doc d;
 *   char *err = NULL;
 *   enum kb_format fmt = kb_format_guess(path, NULL);
 *   if (kb_doc_parse(bytes, len, fmt, path, &d, &err) != 0) {
 *       log_warn("kb: %s: %s", path, err);   // reported per document; go on with the batch
 *       free(err);
 *   } else {
 *       ... kb_chunk_doc(&d, &opts, &chunks) ...
 *       kb_doc_free(&d);
 *   }
 *
 * Checks, before any parsing and in this order (the message is exactly as quoted):
 *   - unknown format                       -> "unsupported document type"
 *   - no bytes, or only ASCII whitespace   -> "empty document"
 *   - a NUL byte, or more than 10% control characters in the first 4 KiB
 *                                          -> "binary file"
 *   - bytes that are not strict UTF-8 (overlong forms, surrogates and code points above
 *     U+10FFFF are invalid)                -> "invalid UTF-8 at byte N" (N counts from 0)
 *   - parsing finds no text at all (e.g. a page that is all script, or Markdown that is
 *     only a thematic break)               -> "empty document"
 * A leading UTF-8 byte order mark is ignored.
 *
 * Structure. Headings are structural: they are not blocks but open a new section whose
 * heading path is the list of enclosing heading texts, outermost first ("Deploy", "Helm",
 * "Scaling"). A skipped level leaves no gap: "# A" then "### C" gives ["A", "C"]; a heading
 * closes every open heading of the same or a deeper level. Blocks before the first heading
 * form a section with an empty path. Sections without blocks are not kept. Empty headings
 * are ignored.
 *
 * Markdown is parsed with libcmark (CommonMark 0.30). Inline markup becomes plain text: a
 * link or image keeps its text, a code span its content, emphasis its words, raw inline
 * HTML tags are dropped, a soft line break is a space and a hard one a newline. Code blocks
 * keep their content byte for byte (without the fence and the final newline) and their
 * info string. CommonMark has no tables, so a paragraph that is a GitHub-style pipe table
 * (a header row, then a delimiter row like "|---|:--:|" with as many cells) becomes a table
 * block. Lists are one block, one line per item ("- text" or "3. text"), nested items and
 * continuation lines indented by two spaces per level. A block quote is one block. Quotes
 * and lists nested deeper than 32 levels are flattened to their text. An HTML block
 * becomes a paragraph of its visible text (as for HTML documents, on one line). YAML front matter
 * ("---" first line up to a "---" or "..." line) is skipped; its "title:" key, when present, is the
 * title.
 *
 * HTML is parsed with libxml2's HTML parser (recovering from errors, no network, the bytes
 * taken as UTF-8). Dropped with their content: <head> (but see the title), script, style,
 * noscript, template, svg, iframe, nav, aside, any element with a `hidden` attribute, and
 * header/footer unless they sit inside article, main or section (there they hold the
 * content's own heading). h1-h6 build the heading path; <pre> becomes a code block with
 * its text kept exactly (one leading and any trailing newlines dropped); <table> becomes a
 * table block, its caption then one line per row with cells joined by " | "; <ul>/<ol> a
 * list block as for Markdown; <blockquote> a quote; other text (p, div, dd, ...) becomes
 * paragraphs, broken at block-level elements. Entities are decoded; whitespace (including
 * U+00A0) is collapsed to single spaces in everything but <pre>. libxml2 stops at 256
 * levels of nesting; what lies deeper is lost (a page that is nothing but deeper nesting
 * gives "empty document").
 *
 * Plain text: blocks are the paragraphs separated by blank lines, each kept with its line
 * breaks (CRLF becomes LF, trailing spaces dropped); there are no headings.
 *
 * Title: a front-matter title, else the first level-1 heading, else the first heading,
 * else the file name (Markdown); <title>, else the first <h1>, else the file name (HTML);
 * the first non-empty line if it is at most 120 characters, else the file name (text).
 * The file name is the last segment of the path or URL without query, fragment and
 * extension ("docs/deploy/helm.md" -> "helm"; the whole source when that is empty). */
#ifndef TIERONE_KB_DOC_H
#define TIERONE_KB_DOC_H

#include <stddef.h>

enum kb_format {
    KB_FORMAT_UNKNOWN = 0,
    KB_FORMAT_MARKDOWN,
    KB_FORMAT_HTML,
    KB_FORMAT_TEXT,
};

enum kb_block_kind {
    KB_BLOCK_PARAGRAPH,
    KB_BLOCK_CODE,  /* exact content; never cut when it fits a chunk */
    KB_BLOCK_TABLE, /* one line per row, cells joined by " | "; never cut when it fits */
    KB_BLOCK_LIST,  /* one line per item */
    KB_BLOCK_QUOTE,
};

struct kb_block {
    enum kb_block_kind kind;
    char *text; /* valid UTF-8, non-empty, no leading/trailing blank lines */
    char *info; /* code blocks: the fence's info string ("yaml"), else NULL */
};

/* The blocks under one heading. Two headings with the same text are two sections. */
struct kb_section {
    char **path;  /* heading texts, outermost first; NULL when depth == 0 */
    size_t depth; /* number of entries in path */
    struct kb_block *blocks;
    size_t nblocks; /* >= 1 */
};

struct kb_doc {
    enum kb_format format;
    char *source;  /* as given to kb_doc_parse (path or URL) */
    char *title;   /* never NULL, may be "" only if the source name is empty */
    char hash[65]; /* sha256 of the raw bytes, lowercase hex */
    struct kb_section *sections;
    size_t nsections; /* >= 1 */
};

/* Guess the format from a file name or URL (its extension, case-insensitive, ignoring
 * "?query" and "#fragment") and, failing that, from an HTTP Content-Type (parameters such
 * as "; charset=utf-8" ignored). Either may be NULL. Extensions: .md .markdown .mdown .mkd
 * -> Markdown; .html .htm .xhtml -> HTML; .txt .text -> text. Types: text/markdown,
 * text/x-markdown -> Markdown; text/html, application/xhtml+xml -> HTML; text/plain -> text.
 * Anything else is KB_FORMAT_UNKNOWN, which kb_doc_parse reports as "unsupported document
 * type". */
enum kb_format kb_format_guess(const char *name_or_url, const char *content_type);

/* "markdown", "html", "text" or "unknown". */
const char *kb_format_name(enum kb_format fmt);

/* Parse len bytes of a document of format fmt that came from source (a path or URL, used
 * for the fallback title and copied into out->source; may be NULL). On success fills *out
 * (the caller frees it with kb_doc_free) and returns 0. On failure returns -1, leaves *out
 * empty (safe to kb_doc_free) and sets *err to a heap message (see the list above) that
 * the caller frees. Deterministic. */
int kb_doc_parse(const char *bytes, size_t len, enum kb_format fmt, const char *source,
                 struct kb_doc *out, char **err);

/* Release everything *d owns and zero it. NULL and zeroed docs are fine. */
void kb_doc_free(struct kb_doc *d);

/* Join a section's heading path with " > " into a new heap string ("" for an empty path). */
char *kb_section_path_join(const struct kb_section *s);

#endif
