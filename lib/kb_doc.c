/* kb_doc: input checks, format guessing, the section builder, plain text, titles (see
 * kb_doc.h). Markdown and HTML readers live in kb_markdown.c and kb_html.c. */
#include "kb_doc.h"
#include "digest.h"
#include "kb_doc_internal.h"
#include "xalloc.h"
#include "utf8.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define KB_TITLE_MAX_CHARS 120
#define KB_BINARY_PROBE    4096

/* ---- formats ---- */

static const struct {
    const char *ext;
    enum kb_format fmt;
} kb_exts[] = {
    {"md", KB_FORMAT_MARKDOWN},  {"markdown", KB_FORMAT_MARKDOWN}, {"mdown", KB_FORMAT_MARKDOWN},
    {"mkd", KB_FORMAT_MARKDOWN}, {"html", KB_FORMAT_HTML},         {"htm", KB_FORMAT_HTML},
    {"xhtml", KB_FORMAT_HTML},   {"txt", KB_FORMAT_TEXT},          {"text", KB_FORMAT_TEXT},
};

static const struct {
    const char *type;
    enum kb_format fmt;
} kb_types[] = {
    {"text/markdown", KB_FORMAT_MARKDOWN}, {"text/x-markdown", KB_FORMAT_MARKDOWN},
    {"text/html", KB_FORMAT_HTML},         {"application/xhtml+xml", KB_FORMAT_HTML},
    {"text/plain", KB_FORMAT_TEXT},
};

/* The last path segment of a path or URL, without query and fragment: [*start, *end). */
static void kb_doc_basename(const char *name, const char **start, const char **end)
{
    const char *e = name + strcspn(name, "?#");
    const char *s = e;
    while (s > name && s[-1] != '/' && s[-1] != '\\')
        s--;
    *start = s;
    *end = e;
}

static enum kb_format kb_format_from_name(const char *name)
{
    const char *s, *e;
    kb_doc_basename(name, &s, &e);
    const char *dot = NULL;
    for (const char *p = s; p < e; p++)
        if (*p == '.')
            dot = p;
    if (!dot || dot == s)
        return KB_FORMAT_UNKNOWN;
    size_t n = (size_t)(e - dot - 1);
    for (size_t i = 0; i < sizeof(kb_exts) / sizeof(kb_exts[0]); i++)
        if (strlen(kb_exts[i].ext) == n && strncasecmp(dot + 1, kb_exts[i].ext, n) == 0)
            return kb_exts[i].fmt;
    return KB_FORMAT_UNKNOWN;
}

static enum kb_format kb_format_from_type(const char *type)
{
    while (*type == ' ' || *type == '\t')
        type++;
    size_t n = strcspn(type, "; \t");
    for (size_t i = 0; i < sizeof(kb_types) / sizeof(kb_types[0]); i++)
        if (strlen(kb_types[i].type) == n && strncasecmp(type, kb_types[i].type, n) == 0)
            return kb_types[i].fmt;
    return KB_FORMAT_UNKNOWN;
}

enum kb_format kb_format_guess(const char *name_or_url, const char *content_type)
{
    enum kb_format f = KB_FORMAT_UNKNOWN;
    if (name_or_url)
        f = kb_format_from_name(name_or_url);
    if (f == KB_FORMAT_UNKNOWN && content_type)
        f = kb_format_from_type(content_type);
    return f;
}

const char *kb_format_name(enum kb_format fmt)
{
    switch (fmt) {
    case KB_FORMAT_MARKDOWN:
        return "markdown";
    case KB_FORMAT_HTML:
        return "html";
    case KB_FORMAT_TEXT:
        return "text";
    default:
        return "unknown";
    }
}

/* ---- whitespace helpers ---- */

static bool kb_is_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

void kb_text_collapse(struct buf *out, const char *s, size_t len)
{
    bool space = out->len == 0 || out->data[out->len - 1] == ' ' || out->data[out->len - 1] == '\n';
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        bool ws = kb_is_space(c);
        if (!ws && c == 0xC2 && i + 1 < len && (unsigned char)s[i + 1] == 0xA0) {
            ws = true;
            i++;
        }
        if (ws) {
            if (!space)
                buf_append(out, " ", 1);
            space = true;
        } else {
            buf_append(out, &s[i], 1);
            space = false;
        }
    }
}

void kb_text_trim(struct buf *b)
{
    if (!b->data)
        return;
    size_t s = 0, e = b->len;
    while (s < e && kb_is_space((unsigned char)b->data[s]))
        s++;
    while (e > s && kb_is_space((unsigned char)b->data[e - 1]))
        e--;
    memmove(b->data, b->data + s, e - s);
    b->len = e - s;
    b->data[b->len] = '\0';
}

/* ---- builder ---- */

void kb_builder_init(struct kb_builder *b, struct kb_doc *d)
{
    memset(b, 0, sizeof(*b));
    b->doc = d;
    b->path_changed = 1;
}

void kb_builder_heading(struct kb_builder *b, int level, const char *text, size_t len)
{
    struct buf t = BUF_INIT;
    kb_text_collapse(&t, text, len);
    kb_text_trim(&t);
    if (t.len == 0) {
        buf_free(&t);
        return;
    }
    if (level == 1 && !b->first_h1)
        b->first_h1 = xstrdup(t.data);
    if (!b->first_heading)
        b->first_heading = xstrdup(t.data);
    while (b->nheads > 0 && b->levels[b->nheads - 1] >= level)
        free(b->heads[--b->nheads]);
    if (b->nheads == b->capheads) {
        b->capheads = b->capheads ? b->capheads * 2 : 8;
        b->heads = xrealloc(b->heads, b->capheads * sizeof(*b->heads));
        b->levels = xrealloc(b->levels, b->capheads * sizeof(*b->levels));
    }
    b->heads[b->nheads] = buf_steal(&t);
    b->levels[b->nheads++] = level;
    b->path_changed = 1;
    buf_free(&t);
}

static void kb_builder_open_section(struct kb_builder *b)
{
    struct kb_doc *d = b->doc;
    if (d->nsections == b->capsections) {
        b->capsections = b->capsections ? b->capsections * 2 : 8;
        d->sections = xrealloc(d->sections, b->capsections * sizeof(*d->sections));
    }
    struct kb_section *s = &d->sections[d->nsections++];
    memset(s, 0, sizeof(*s));
    s->depth = b->nheads;
    if (b->nheads) {
        s->path = xmalloc(b->nheads * sizeof(*s->path));
        for (size_t i = 0; i < b->nheads; i++)
            s->path[i] = xstrdup(b->heads[i]);
    }
    b->capblocks = 0;
    b->path_changed = 0;
}

/* Code: drop leading blank lines and trailing whitespace, keep everything else. */
static void kb_code_trim(struct buf *t)
{
    size_t s = 0, i = 0;
    while (i < t->len && kb_is_space((unsigned char)t->data[i])) {
        if (t->data[i] == '\n')
            s = i + 1;
        i++;
    }
    if (i == t->len)
        s = t->len;
    size_t e = t->len;
    while (e > s && kb_is_space((unsigned char)t->data[e - 1]))
        e--;
    memmove(t->data, t->data + s, e - s);
    t->len = e - s;
    t->data[t->len] = '\0';
}

void kb_builder_block(struct kb_builder *b, enum kb_block_kind kind, char *text, const char *info)
{
    size_t n = strlen(text);
    struct buf t = {text, n, n + 1};
    if (kind == KB_BLOCK_CODE)
        kb_code_trim(&t);
    else
        kb_text_trim(&t);
    if (t.len == 0) {
        buf_free(&t);
        return;
    }
    if (b->path_changed || b->doc->nsections == 0)
        kb_builder_open_section(b);
    struct kb_section *s = &b->doc->sections[b->doc->nsections - 1];
    if (s->nblocks == b->capblocks) {
        b->capblocks = b->capblocks ? b->capblocks * 2 : 8;
        s->blocks = xrealloc(s->blocks, b->capblocks * sizeof(*s->blocks));
    }
    struct kb_block *blk = &s->blocks[s->nblocks++];
    blk->kind = kind;
    blk->text = t.data;
    blk->info = info && *info ? xstrdup(info) : NULL;
}

void kb_builder_done(struct kb_builder *b)
{
    for (size_t i = 0; i < b->nheads; i++)
        free(b->heads[i]);
    free(b->heads);
    free(b->levels);
    free(b->first_h1);
    free(b->first_heading);
    memset(b, 0, sizeof(*b));
}

/* ---- plain text ---- */

static void kb_text_read(const char *s, size_t len, struct kb_builder *b)
{
    struct buf para = BUF_INIT;
    size_t i = 0;
    while (i <= len) {
        size_t e = i;
        while (e < len && s[e] != '\n')
            e++;
        size_t le = e;
        while (le > i && kb_is_space((unsigned char)s[le - 1]))
            le--;
        if (le == i) { /* blank line (or end): close the paragraph */
            if (para.len)
                kb_builder_block(b, KB_BLOCK_PARAGRAPH, buf_steal(&para), NULL);
        } else {
            if (para.len)
                buf_append(&para, "\n", 1);
            buf_append(&para, s + i, le - i);
        }
        i = e + 1;
    }
    if (para.len)
        kb_builder_block(b, KB_BLOCK_PARAGRAPH, buf_steal(&para), NULL);
    buf_free(&para);
}

/* The first non-empty line of a text document when short enough to be a title. */
static char *kb_text_title(const char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        size_t e = i;
        while (e < len && s[e] != '\n')
            e++;
        struct buf t = BUF_INIT;
        kb_text_collapse(&t, s + i, e - i);
        kb_text_trim(&t);
        if (t.len) {
            if (utf8_count(t.data, t.len) <= KB_TITLE_MAX_CHARS)
                return buf_steal(&t);
            buf_free(&t);
            return NULL;
        }
        buf_free(&t);
        i = e + 1;
    }
    return NULL;
}

static char *kb_name_title(const char *source)
{
    if (!source)
        return xstrdup("");
    const char *s, *e;
    kb_doc_basename(source, &s, &e);
    const char *dot = NULL;
    for (const char *p = s; p < e; p++)
        if (*p == '.')
            dot = p;
    if (dot && dot > s)
        e = dot;
    if (e == s)
        return xstrdup(source);
    return xstrndup(s, (size_t)(e - s));
}

/* ---- checks and entry point ---- */

static bool kb_is_binary(const char *s, size_t len)
{
    if (memchr(s, '\0', len))
        return true;
    size_t probe = len < KB_BINARY_PROBE ? len : KB_BINARY_PROBE, ctl = 0;
    for (size_t i = 0; i < probe; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c < 0x20 && !kb_is_space(c) && c != 0x1B) || c == 0x7F)
            ctl++;
    }
    return ctl * 10 > probe;
}

static int kb_doc_check(const char *bytes, size_t len, enum kb_format fmt, char **err)
{
    if (fmt != KB_FORMAT_MARKDOWN && fmt != KB_FORMAT_HTML && fmt != KB_FORMAT_TEXT) {
        *err = xstrdup("unsupported document type");
        return -1;
    }
    size_t i = 0;
    while (i < len && kb_is_space((unsigned char)bytes[i]))
        i++;
    if (i == len) {
        *err = xstrdup("empty document");
        return -1;
    }
    if (kb_is_binary(bytes, len)) {
        *err = xstrdup("binary file");
        return -1;
    }
    size_t bad = 0;
    if (utf8_check(bytes, len, &bad) != 0) {
        *err = xasprintf("invalid UTF-8 at byte %zu", bad);
        return -1;
    }
    return 0;
}

int kb_doc_parse(const char *bytes, size_t len, enum kb_format fmt, const char *source,
                 struct kb_doc *out, char **err)
{
    memset(out, 0, sizeof(*out));
    struct kb_builder b;
    char *title = NULL;
    int rc = kb_doc_check(bytes, len, fmt, err);
    if (rc)
        return rc;
    out->format = fmt;
    out->source = xstrdup(source ? source : "");
    digest_sha256_hex(bytes, len, out->hash);
    const char *s = bytes;
    size_t n = len;
    if (n >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0) {
        s += 3;
        n -= 3;
    }
    kb_builder_init(&b, out);
    if (fmt == KB_FORMAT_MARKDOWN)
        rc = kb_markdown_read(s, n, &b, &title, err);
    else if (fmt == KB_FORMAT_HTML)
        rc = kb_html_read(s, n, &b, &title, err);
    else
        kb_text_read(s, n, &b);
    if (rc)
        goto out;
    if (out->nsections == 0) {
        *err = xstrdup("empty document");
        rc = -1;
        goto out;
    }
    if (!title && fmt == KB_FORMAT_TEXT)
        title = kb_text_title(s, n);
    if (!title && fmt == KB_FORMAT_MARKDOWN)
        title = xstrdup(b.first_h1 ? b.first_h1 : b.first_heading);
    if (!title && fmt == KB_FORMAT_HTML)
        title = xstrdup(b.first_h1);
    if (!title)
        title = kb_name_title(source);
    out->title = title;
    title = NULL;
out:
    kb_builder_done(&b);
    free(title);
    if (rc)
        kb_doc_free(out);
    return rc;
}

void kb_doc_free(struct kb_doc *d)
{
    if (!d)
        return;
    for (size_t i = 0; i < d->nsections; i++) {
        struct kb_section *s = &d->sections[i];
        for (size_t k = 0; k < s->depth; k++)
            free(s->path[k]);
        free(s->path);
        for (size_t k = 0; k < s->nblocks; k++) {
            free(s->blocks[k].text);
            free(s->blocks[k].info);
        }
        free(s->blocks);
    }
    free(d->sections);
    free(d->source);
    free(d->title);
    memset(d, 0, sizeof(*d));
}

char *kb_section_path_join(const struct kb_section *s)
{
    struct buf b = BUF_INIT;
    for (size_t i = 0; i < s->depth; i++) {
        if (i)
            buf_puts(&b, " > ");
        buf_puts(&b, s->path[i]);
    }
    return buf_steal(&b);
}
