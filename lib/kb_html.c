/* kb_html: HTML to kb_doc sections by walking libxml2's HTML tree (see kb_doc.h for what
 * is dropped and how headings, pre, tables and lists map to blocks). */
#include "kb_doc_internal.h"
#include "xalloc.h"

#include <libxml/HTMLparser.h>
#include <libxml/tree.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KB_HTML_OPTS                                                                               \
    (HTML_PARSE_RECOVER | HTML_PARSE_NONET | HTML_PARSE_NOERROR | HTML_PARSE_NOWARNING)

struct kb_html {
    struct kb_builder *b;
    struct buf para; /* inline text not yet flushed as a paragraph */
};

static bool kb_html_is(const xmlNode *n, const char *name)
{
    return n->type == XML_ELEMENT_NODE && n->name && strcmp((const char *)n->name, name) == 0;
}

static bool kb_html_in(const char *name, const char *const *set)
{
    for (; *set; set++)
        if (strcmp(name, *set) == 0)
            return true;
    return false;
}

static const char *const kb_html_dropped[] = {"head",  "script", "style", "noscript", "template",
                                              "svg",   "iframe", "nav",   "aside",    "object",
                                              "embed", "canvas", NULL};

static const char *const kb_html_blocks[] = {
    "html",   "body",    "main",       "article", "section", "div",     "p",        "dl",   "dt",
    "dd",     "figure",  "figcaption", "address", "details", "summary", "fieldset", "form", "hr",
    "center", "caption", "header",     "footer",  "li",      "tr",      "td",       "th",   NULL};

/* Whether an element and its content are left out. header/footer are page chrome unless
 * inside article, main or section. */
static bool kb_html_dropped_el(const xmlNode *n, bool in_content)
{
    const char *name = (const char *)n->name;
    if (kb_html_in(name, kb_html_dropped))
        return true;
    if (!in_content && (strcmp(name, "header") == 0 || strcmp(name, "footer") == 0))
        return true;
    return xmlHasProp(n, BAD_CAST "hidden") != NULL;
}

static int kb_html_heading_level(const xmlNode *n)
{
    const char *name = (const char *)n->name;
    if (name[0] == 'h' && name[1] >= '1' && name[1] <= '6' && name[2] == '\0')
        return name[1] - '0';
    return 0;
}

/* Append the collapsed visible text under n. Nested lists go to *lists instead when lists
 * is not NULL (list items render them as their own lines). */
static void kb_html_gather(const xmlNode *n, struct buf *out, const xmlNode ***lists,
                           size_t *nlists)
{
    for (const xmlNode *c = n->children; c; c = c->next) {
        if (c->type == XML_TEXT_NODE || c->type == XML_CDATA_SECTION_NODE) {
            if (c->content)
                kb_text_collapse(out, (const char *)c->content, strlen((const char *)c->content));
            continue;
        }
        if (c->type != XML_ELEMENT_NODE || kb_html_dropped_el(c, true))
            continue;
        if (lists && (kb_html_is(c, "ul") || kb_html_is(c, "ol"))) {
            *lists = xrealloc(*lists, (*nlists + 1) * sizeof(**lists));
            (*lists)[(*nlists)++] = c;
            continue;
        }
        bool block = kb_html_in((const char *)c->name, kb_html_blocks) || kb_html_is(c, "br") ||
                     kb_html_heading_level(c) || kb_html_is(c, "pre") || kb_html_is(c, "table");
        if (block)
            kb_text_collapse(out, " ", 1);
        kb_html_gather(c, out, lists, nlists);
        if (block)
            kb_text_collapse(out, " ", 1);
    }
}

static void kb_html_list(const xmlNode *list, struct buf *out, int indent)
{
    bool ordered = kb_html_is(list, "ol");
    int num = 1;
    xmlChar *start = xmlGetProp(list, BAD_CAST "start");
    if (start) {
        num = atoi((const char *)start);
        xmlFree(start);
    }
    for (const xmlNode *c = list->children; c; c = c->next) {
        if (kb_html_is(c, "ul") || kb_html_is(c, "ol")) { /* sloppy nesting: ul > ul */
            kb_html_list(c, out, indent + 2);
            continue;
        }
        if (!kb_html_is(c, "li") || kb_html_dropped_el(c, true))
            continue;
        struct buf t = BUF_INIT;
        const xmlNode **lists = NULL;
        size_t nlists = 0;
        kb_html_gather(c, &t, &lists, &nlists);
        kb_text_trim(&t);
        if (out->len)
            buf_append(out, "\n", 1);
        if (ordered)
            buf_printf(out, "%*s%d. %s", indent, "", num++, t.data ? t.data : "");
        else
            buf_printf(out, "%*s- %s", indent, "", t.data ? t.data : "");
        for (size_t i = 0; i < nlists; i++)
            kb_html_list(lists[i], out, indent + 2);
        free(lists);
        buf_free(&t);
    }
}

static void kb_html_row(const xmlNode *tr, struct buf *out)
{
    struct buf row = BUF_INIT;
    bool any = false;
    int ncells = 0;
    for (const xmlNode *c = tr->children; c; c = c->next) {
        if (!kb_html_is(c, "td") && !kb_html_is(c, "th"))
            continue;
        struct buf cell = BUF_INIT;
        kb_html_gather(c, &cell, NULL, NULL);
        kb_text_trim(&cell);
        if (ncells++)
            buf_puts(&row, " | ");
        if (cell.len) {
            buf_append(&row, cell.data, cell.len);
            any = true;
        }
        buf_free(&cell);
    }
    if (any) {
        if (out->len)
            buf_append(out, "\n", 1);
        buf_append(out, row.data, row.len);
    }
    buf_free(&row);
}

/* Rows of a table, found through thead/tbody/tfoot but not inside nested tables. */
static void kb_html_rows(const xmlNode *n, struct buf *out)
{
    for (const xmlNode *c = n->children; c; c = c->next) {
        if (c->type != XML_ELEMENT_NODE || kb_html_is(c, "table") || kb_html_dropped_el(c, true))
            continue;
        if (kb_html_is(c, "tr"))
            kb_html_row(c, out);
        else if (kb_html_is(c, "caption")) {
            struct buf cap = BUF_INIT;
            kb_html_gather(c, &cap, NULL, NULL);
            kb_text_trim(&cap);
            if (cap.len) {
                if (out->len)
                    buf_append(out, "\n", 1);
                buf_append(out, cap.data, cap.len);
            }
            buf_free(&cap);
        } else
            kb_html_rows(c, out);
    }
}

/* The language of a code block from class="language-x" (or "lang-x") on pre or its code. */
static char *kb_html_code_lang(const xmlNode *pre)
{
    const xmlNode *cands[2] = {pre, NULL};
    for (const xmlNode *c = pre->children; c; c = c->next)
        if (kb_html_is(c, "code")) {
            cands[1] = c;
            break;
        }
    for (int i = 0; i < 2; i++) {
        if (!cands[i])
            continue;
        xmlChar *cls = xmlGetProp(cands[i], BAD_CAST "class");
        if (!cls)
            continue;
        const char *p = (const char *)cls, *hit = NULL;
        size_t skip = 0;
        if ((hit = strstr(p, "language-")))
            skip = 9;
        else if ((hit = strstr(p, "lang-")))
            skip = 5;
        char *lang = hit ? xstrndup(hit + skip, strcspn(hit + skip, " \t\n")) : NULL;
        xmlFree(cls);
        if (lang && *lang)
            return lang;
        free(lang);
    }
    return NULL;
}

static void kb_html_flush(struct kb_html *h)
{
    if (h->para.len)
        kb_builder_block(h->b, KB_BLOCK_PARAGRAPH, buf_steal(&h->para), NULL);
}

static void kb_html_pre(struct kb_html *h, const xmlNode *n)
{
    xmlChar *content = xmlNodeGetContent(n);
    const char *s = content ? (const char *)content : "";
    if (*s == '\n')
        s++;
    char *lang = kb_html_code_lang(n);
    kb_builder_block(h->b, KB_BLOCK_CODE, xstrdup(s), lang);
    free(lang);
    xmlFree(content);
}

static void kb_html_walk(struct kb_html *h, const xmlNode *n, bool in_content)
{
    for (const xmlNode *c = n->children; c; c = c->next) {
        if (c->type == XML_TEXT_NODE || c->type == XML_CDATA_SECTION_NODE) {
            if (c->content)
                kb_text_collapse(&h->para, (const char *)c->content,
                                 strlen((const char *)c->content));
            continue;
        }
        if (c->type != XML_ELEMENT_NODE || kb_html_dropped_el(c, in_content))
            continue;
        const char *name = (const char *)c->name;
        int level = kb_html_heading_level(c);
        struct buf t = BUF_INIT;
        if (level) {
            kb_html_flush(h);
            kb_html_gather(c, &t, NULL, NULL);
            kb_builder_heading(h->b, level, t.data ? t.data : "", t.len);
        } else if (strcmp(name, "pre") == 0) {
            kb_html_flush(h);
            kb_html_pre(h, c);
        } else if (strcmp(name, "table") == 0) {
            kb_html_flush(h);
            kb_html_rows(c, &t);
            kb_builder_block(h->b, KB_BLOCK_TABLE, buf_steal(&t), NULL);
        } else if (strcmp(name, "ul") == 0 || strcmp(name, "ol") == 0) {
            kb_html_flush(h);
            kb_html_list(c, &t, 0);
            kb_builder_block(h->b, KB_BLOCK_LIST, buf_steal(&t), NULL);
        } else if (strcmp(name, "blockquote") == 0) {
            kb_html_flush(h);
            kb_html_gather(c, &t, NULL, NULL);
            kb_builder_block(h->b, KB_BLOCK_QUOTE, buf_steal(&t), NULL);
        } else if (strcmp(name, "br") == 0) {
            kb_text_collapse(&h->para, " ", 1);
        } else if (kb_html_in(name, kb_html_blocks)) {
            bool content = in_content || strcmp(name, "article") == 0 ||
                           strcmp(name, "main") == 0 || strcmp(name, "section") == 0;
            kb_html_flush(h);
            kb_html_walk(h, c, content);
            kb_html_flush(h);
        } else {
            kb_html_walk(h, c, in_content);
        }
        buf_free(&t);
    }
}

/* The first <title> (not inside svg). */
static const xmlNode *kb_html_find_title(const xmlNode *n)
{
    for (const xmlNode *c = n->children; c; c = c->next) {
        if (c->type != XML_ELEMENT_NODE || kb_html_is(c, "svg") || kb_html_is(c, "body"))
            continue;
        if (kb_html_is(c, "title"))
            return c;
        const xmlNode *t = kb_html_find_title(c);
        if (t)
            return t;
    }
    return NULL;
}

static htmlDocPtr kb_html_parse(const char *s, size_t len)
{
    if (len > INT_MAX)
        return NULL;
    return htmlReadMemory(s, (int)len, NULL, "UTF-8", KB_HTML_OPTS);
}

int kb_html_read(const char *s, size_t len, struct kb_builder *b, char **title, char **err)
{
    htmlDocPtr doc = kb_html_parse(s, len);
    if (!doc) {
        *err = xstrdup(len > INT_MAX ? "document too large" : "HTML parser failed");
        return -1;
    }
    const xmlNode *root = xmlDocGetRootElement(doc);
    if (root) {
        const xmlNode *t = kb_html_find_title((const xmlNode *)doc);
        if (t) {
            struct buf tb = BUF_INIT;
            kb_html_gather(t, &tb, NULL, NULL);
            kb_text_trim(&tb);
            if (tb.len)
                *title = buf_steal(&tb);
            buf_free(&tb);
        }
        struct kb_html h = {.b = b, .para = BUF_INIT};
        kb_html_walk(&h, (const xmlNode *)doc, false);
        kb_html_flush(&h);
        buf_free(&h.para);
    }
    xmlFreeDoc(doc);
    return 0;
}

void kb_html_fragment_text(const char *s, size_t len, struct buf *out)
{
    htmlDocPtr doc = kb_html_parse(s, len);
    if (!doc)
        return;
    struct buf t = BUF_INIT;
    kb_html_gather((const xmlNode *)doc, &t, NULL, NULL);
    kb_text_trim(&t);
    if (t.len) {
        if (out->len && out->data[out->len - 1] != ' ' && out->data[out->len - 1] != '\n')
            buf_append(out, " ", 1);
        buf_append(out, t.data, t.len);
    }
    buf_free(&t);
    xmlFreeDoc(doc);
}
