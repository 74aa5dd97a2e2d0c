/* kb_markdown: Markdown to kb_doc sections through libcmark (see kb_doc.h for the rules:
 * inline markup flattened, code kept exact, pipe tables recognised, lists one line per
 * item, YAML front matter skipped). */
#include "kb_doc_internal.h"
#include "xalloc.h"

#include <cmark.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define KB_MD_MAX_DEPTH 32 /* nested quotes / lists rendered structurally */

static void kb_md_blocks(cmark_node *parent, struct buf *out, int indent, int depth);

/* ---- inlines ---- */

/* Append the plain text of node's inline descendants; a soft break becomes `soft`.
 * Iterative (cmark_iter), so deeply nested emphasis or links cannot exhaust the stack. */
static void kb_md_inlines(cmark_node *node, struct buf *out, char soft)
{
    cmark_iter *it = cmark_iter_new(node);
    cmark_event_type ev;
    while ((ev = cmark_iter_next(it)) != CMARK_EVENT_DONE) {
        if (ev != CMARK_EVENT_ENTER)
            continue;
        cmark_node *c = cmark_iter_get_node(it);
        switch (cmark_node_get_type(c)) {
        case CMARK_NODE_TEXT:
        case CMARK_NODE_CODE:
            buf_puts(out, cmark_node_get_literal(c));
            break;
        case CMARK_NODE_SOFTBREAK:
            buf_append(out, &soft, 1);
            break;
        case CMARK_NODE_LINEBREAK:
            buf_append(out, "\n", 1);
            break;
        default: /* containers (emphasis, links, images: their text follows); raw HTML */
            break;
        }
    }
    cmark_iter_free(it);
}

/* All text under a block, one line per leaf block, without recursion: the fallback for
 * containers nested deeper than KB_MD_MAX_DEPTH. */
static void kb_md_flat(cmark_node *node, struct buf *out)
{
    cmark_iter *it = cmark_iter_new(node);
    cmark_event_type ev;
    while ((ev = cmark_iter_next(it)) != CMARK_EVENT_DONE) {
        cmark_node *c = cmark_iter_get_node(it);
        cmark_node_type t = cmark_node_get_type(c);
        if (ev == CMARK_EVENT_ENTER &&
            (t == CMARK_NODE_TEXT || t == CMARK_NODE_CODE || t == CMARK_NODE_CODE_BLOCK)) {
            buf_puts(out, cmark_node_get_literal(c));
        } else if (ev == CMARK_EVENT_ENTER &&
                   (t == CMARK_NODE_SOFTBREAK || t == CMARK_NODE_LINEBREAK)) {
            buf_append(out, " ", 1);
        } else if ((ev == CMARK_EVENT_EXIT &&
                    (t == CMARK_NODE_PARAGRAPH || t == CMARK_NODE_HEADING)) ||
                   (ev == CMARK_EVENT_ENTER && t == CMARK_NODE_CODE_BLOCK)) {
            buf_append(out, "\n", 1);
        }
    }
    cmark_iter_free(it);
}

/* ---- pipe tables (GitHub style; CommonMark itself has none) ---- */

struct kb_md_cells {
    char **v;
    size_t n;
};

static void kb_md_cells_free(struct kb_md_cells *c)
{
    for (size_t i = 0; i < c->n; i++)
        free(c->v[i]);
    free(c->v);
    c->v = NULL;
    c->n = 0;
}

static void kb_md_split_row(const char *line, size_t len, struct kb_md_cells *out)
{
    struct buf t = BUF_INIT;
    buf_append(&t, line, len);
    kb_text_trim(&t);
    const char *s = t.data ? t.data : "";
    size_t n = t.len;
    if (n && s[0] == '|') {
        s++;
        n--;
    }
    if (n && s[n - 1] == '|')
        n--;
    out->v = NULL;
    out->n = 0;
    size_t i = 0;
    for (;;) {
        size_t e = i;
        while (e < n && s[e] != '|')
            e++;
        struct buf cell = BUF_INIT;
        buf_append(&cell, s + i, e - i);
        kb_text_trim(&cell);
        out->v = xrealloc(out->v, (out->n + 1) * sizeof(*out->v));
        out->v[out->n++] = buf_steal(&cell);
        buf_free(&cell);
        if (e >= n)
            break;
        i = e + 1;
    }
    buf_free(&t);
}

static bool kb_md_is_delimiter(const struct kb_md_cells *c)
{
    for (size_t i = 0; i < c->n; i++) {
        const char *p = c->v[i];
        if (*p == ':')
            p++;
        size_t dashes = strspn(p, "-");
        if (dashes == 0)
            return false;
        p += dashes;
        if (*p == ':')
            p++;
        if (*p)
            return false;
    }
    return true;
}

/* If the paragraph text (soft breaks as newlines) is a pipe table, render it as rows of
 * cells joined by " | " and return true. */
static bool kb_md_table(const char *text, struct buf *out)
{
    const char *l1 = strchr(text, '\n');
    if (!l1 || !memchr(text, '|', (size_t)(l1 - text)))
        return false;
    const char *l2 = l1 + 1, *l2e = l2 + strcspn(l2, "\n");
    if (!memchr(l2, '|', (size_t)(l2e - l2)))
        return false;
    struct kb_md_cells head = {0}, delim = {0}, row = {0};
    kb_md_split_row(text, (size_t)(l1 - text), &head);
    kb_md_split_row(l2, (size_t)(l2e - l2), &delim);
    bool ok = head.n == delim.n && kb_md_is_delimiter(&delim);
    if (ok) {
        const char *line = text;
        while (*line) {
            size_t n = strcspn(line, "\n");
            if (line != l2) {
                kb_md_split_row(line, n, &row);
                if (out->len)
                    buf_append(out, "\n", 1);
                for (size_t i = 0; i < row.n; i++) {
                    if (i)
                        buf_puts(out, " | ");
                    buf_puts(out, row.v[i]);
                }
                kb_md_cells_free(&row);
            }
            line += n + (line[n] == '\n');
        }
    }
    kb_md_cells_free(&head);
    kb_md_cells_free(&delim);
    return ok;
}

/* ---- lists ---- */

/* Append text's non-blank lines as item lines: the first after the marker, the rest
 * indented under it. */
static void kb_md_item_lines(struct buf *out, const char *text, int indent, const char *marker,
                             bool *first)
{
    const char *line = text;
    while (*line) {
        size_t n = strcspn(line, "\n");
        size_t k = 0;
        while (k < n && (line[k] == ' ' || line[k] == '\t'))
            k++;
        if (k < n) {
            if (out->len)
                buf_append(out, "\n", 1);
            if (*first)
                buf_printf(out, "%*s%s", indent, "", marker);
            else
                buf_printf(out, "%*s", indent + 2, "");
            buf_append(out, line, n);
            *first = false;
        }
        line += n + (line[n] == '\n');
    }
}

static void kb_md_list(cmark_node *list, struct buf *out, int indent, int depth)
{
    if (depth > KB_MD_MAX_DEPTH) {
        kb_md_flat(list, out);
        return;
    }
    bool ordered = cmark_node_get_list_type(list) == CMARK_ORDERED_LIST;
    int num = cmark_node_get_list_start(list);
    for (cmark_node *item = cmark_node_first_child(list); item; item = cmark_node_next(item)) {
        char marker[32];
        if (ordered)
            snprintf(marker, sizeof(marker), "%d. ", num++);
        else
            snprintf(marker, sizeof(marker), "- ");
        bool first = true;
        for (cmark_node *c = cmark_node_first_child(item); c; c = cmark_node_next(c)) {
            if (cmark_node_get_type(c) == CMARK_NODE_LIST) {
                if (first) {
                    if (out->len)
                        buf_append(out, "\n", 1);
                    buf_printf(out, "%*s%s", indent, "", marker);
                    first = false;
                }
                struct buf sub = BUF_INIT;
                kb_md_list(c, &sub, indent + 2, depth + 1);
                if (sub.len) {
                    buf_append(out, "\n", 1);
                    buf_append(out, sub.data, sub.len);
                }
                buf_free(&sub);
                continue;
            }
            struct buf t = BUF_INIT;
            kb_md_blocks(c, &t, indent, depth + 1);
            if (t.len)
                kb_md_item_lines(out, t.data, indent, marker, &first);
            buf_free(&t);
        }
    }
}

/* ---- blocks ---- */

/* The plain text of one block node (not a heading's structure), appended to out. */
static void kb_md_block_text(cmark_node *n, struct buf *out, int indent, int depth)
{
    switch (cmark_node_get_type(n)) {
    case CMARK_NODE_PARAGRAPH:
    case CMARK_NODE_HEADING:
        kb_md_inlines(n, out, ' ');
        break;
    case CMARK_NODE_CODE_BLOCK:
        buf_puts(out, cmark_node_get_literal(n));
        while (out->len && out->data[out->len - 1] == '\n')
            out->data[--out->len] = '\0';
        break;
    case CMARK_NODE_HTML_BLOCK: {
        const char *h = cmark_node_get_literal(n);
        kb_html_fragment_text(h, strlen(h), out);
        break;
    }
    case CMARK_NODE_LIST:
        kb_md_list(n, out, indent, depth);
        break;
    case CMARK_NODE_THEMATIC_BREAK:
        break;
    default: /* block quote, custom block */
        kb_md_blocks(n, out, 0, depth + 1);
        break;
    }
}

/* For containers (quotes, list items): the text of each child block, separated by blank
 * lines; a node that is itself a leaf block is rendered directly. */
static void kb_md_blocks(cmark_node *parent, struct buf *out, int indent, int depth)
{
    if (depth > KB_MD_MAX_DEPTH) {
        kb_md_flat(parent, out);
        return;
    }
    cmark_node_type t = cmark_node_get_type(parent);
    if (t != CMARK_NODE_BLOCK_QUOTE && t != CMARK_NODE_ITEM && t != CMARK_NODE_CUSTOM_BLOCK &&
        t != CMARK_NODE_DOCUMENT) {
        kb_md_block_text(parent, out, indent, depth);
        return;
    }
    for (cmark_node *c = cmark_node_first_child(parent); c; c = cmark_node_next(c)) {
        struct buf b = BUF_INIT;
        kb_md_block_text(c, &b, 0, depth + 1);
        kb_text_trim(&b);
        if (b.len) {
            if (out->len)
                buf_puts(out, "\n\n");
            buf_append(out, b.data, b.len);
        }
        buf_free(&b);
    }
}

static void kb_md_top_block(cmark_node *n, struct kb_builder *b)
{
    struct buf t = BUF_INIT;
    switch (cmark_node_get_type(n)) {
    case CMARK_NODE_HEADING:
        kb_md_inlines(n, &t, ' ');
        kb_builder_heading(b, cmark_node_get_heading_level(n), t.data ? t.data : "", t.len);
        break;
    case CMARK_NODE_PARAGRAPH: {
        struct buf lines = BUF_INIT;
        kb_md_inlines(n, &lines, '\n');
        if (lines.len && kb_md_table(lines.data, &t)) {
            kb_builder_block(b, KB_BLOCK_TABLE, buf_steal(&t), NULL);
        } else {
            kb_md_inlines(n, &t, ' ');
            kb_builder_block(b, KB_BLOCK_PARAGRAPH, buf_steal(&t), NULL);
        }
        buf_free(&lines);
        break;
    }
    case CMARK_NODE_CODE_BLOCK:
        kb_md_block_text(n, &t, 0, 0);
        kb_builder_block(b, KB_BLOCK_CODE, buf_steal(&t), cmark_node_get_fence_info(n));
        break;
    case CMARK_NODE_LIST:
        kb_md_list(n, &t, 0, 0);
        kb_builder_block(b, KB_BLOCK_LIST, buf_steal(&t), NULL);
        break;
    case CMARK_NODE_BLOCK_QUOTE:
        kb_md_blocks(n, &t, 0, 0);
        kb_builder_block(b, KB_BLOCK_QUOTE, buf_steal(&t), NULL);
        break;
    case CMARK_NODE_THEMATIC_BREAK:
        break;
    default: /* HTML block, custom block */
        kb_md_block_text(n, &t, 0, 0);
        kb_builder_block(b, KB_BLOCK_PARAGRAPH, buf_steal(&t), NULL);
        break;
    }
    buf_free(&t);
}

/* ---- front matter ---- */

/* If s starts with YAML front matter, return the offset just past it (else 0) and set
 * *title from its "title:" key. */
static size_t kb_md_front_matter(const char *s, size_t len, char **title)
{
    size_t i;
    if (len >= 4 && memcmp(s, "---\n", 4) == 0)
        i = 4;
    else if (len >= 5 && memcmp(s, "---\r\n", 5) == 0)
        i = 5;
    else
        return 0;
    char *found = NULL;
    while (i < len) {
        size_t e = i;
        while (e < len && s[e] != '\n')
            e++;
        size_t le = e;
        while (le > i && (s[le - 1] == '\r' || s[le - 1] == ' ' || s[le - 1] == '\t'))
            le--;
        size_t n = le - i;
        if ((n == 3 && memcmp(s + i, "---", 3) == 0) || (n == 3 && memcmp(s + i, "...", 3) == 0)) {
            *title = found;
            return e < len ? e + 1 : len;
        }
        if (!found && n > 6 && memcmp(s + i, "title:", 6) == 0) {
            struct buf t = BUF_INIT;
            buf_append(&t, s + i + 6, n - 6);
            kb_text_trim(&t);
            if (t.len >= 2 && (t.data[0] == '"' || t.data[0] == '\'') &&
                t.data[t.len - 1] == t.data[0]) {
                memmove(t.data, t.data + 1, t.len - 2);
                t.len -= 2;
                t.data[t.len] = '\0';
            }
            if (t.len)
                found = buf_steal(&t);
            buf_free(&t);
        }
        i = e + 1;
    }
    free(found); /* never closed: not front matter */
    return 0;
}

int kb_markdown_read(const char *s, size_t len, struct kb_builder *b, char **title, char **err)
{
    size_t skip = kb_md_front_matter(s, len, title);
    cmark_node *root = cmark_parse_document(s + skip, len - skip, CMARK_OPT_DEFAULT);
    if (!root) {
        *err = xstrdup("markdown parser failed");
        return -1;
    }
    for (cmark_node *n = cmark_node_first_child(root); n; n = cmark_node_next(n))
        kb_md_top_block(n, b);
    cmark_node_free(root);
    return 0;
}
