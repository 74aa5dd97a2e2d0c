/* kb_chunk: sections never mixed, whole blocks packed, big blocks split at paragraph /
 * sentence / word (prose) or line (code, tables) boundaries, code and tables kept whole
 * when they fit, size always respected (a word longer than the size is cut at a code
 * point), overlap present, bounded and a true tail of the previous chunk, token units,
 * UTF-8 never cut inside a code point, determinism, and a sweep over the fixtures that
 * checks nothing is lost or duplicated. */
#include "kb_chunk.h"
#include "kb_doc.h"
#include "utf8.h"

#include <criterion/criterion.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- building documents ---- */

static void parse(const char *src, enum kb_format fmt, struct kb_doc *d)
{
    char *err = NULL;
    int rc = kb_doc_parse(src, strlen(src), fmt, "test.md", d, &err);
    cr_assert_eq(rc, 0, "parse failed: %s", err ? err : "");
}

/* A doc with one section (path given, may be NULL) holding the given blocks. */
static void doc_of(struct kb_doc *d, const char *path, size_t n, const enum kb_block_kind *kinds,
                   const char *const *texts)
{
    memset(d, 0, sizeof(*d));
    d->format = KB_FORMAT_TEXT;
    d->title = strdup("t");
    d->source = strdup("t.txt");
    d->sections = calloc(1, sizeof(*d->sections));
    d->nsections = 1;
    if (path) {
        d->sections[0].path = calloc(1, sizeof(char *));
        d->sections[0].path[0] = strdup(path);
        d->sections[0].depth = 1;
    }
    d->sections[0].blocks = calloc(n, sizeof(struct kb_block));
    d->sections[0].nblocks = n;
    for (size_t i = 0; i < n; i++) {
        d->sections[0].blocks[i].kind = kinds[i];
        d->sections[0].blocks[i].text = strdup(texts[i]);
    }
}

static void doc1(struct kb_doc *d, enum kb_block_kind kind, const char *text)
{
    doc_of(d, "Section", 1, &kind, &text);
}

/* Deterministic prose: sentences of 4-14 words from a small vocabulary. */
static char *prose(size_t chars, unsigned seed, bool periods)
{
    static const char *const words[] = {
        "the",     "worker",   "exports", "billing", "invoice",  "password", "reset",
        "scaling", "replicas", "limit",   "token",   "database", "email",    "request",
        "plan",    "refund",   "chart",   "upgrade", "a",        "retries",  "dashboard"};
    char *s = malloc(chars + 64);
    size_t len = 0, left = 0;
    unsigned x = seed * 2654435761u + 1;
    s[0] = '\0';
    while (len < chars) {
        if (left == 0)
            left = 4 + (x >> 7) % 11;
        x = x * 1103515245u + 12345u;
        const char *w = words[(x >> 9) % (sizeof(words) / sizeof(words[0]))];
        len += (size_t)sprintf(s + len, "%s%s", len ? " " : "", w);
        if (--left == 0 && periods)
            s[len++] = '.', s[len] = '\0';
    }
    if (periods && s[len - 1] != '.')
        s[len++] = '.', s[len] = '\0';
    return s;
}

/* ---- checking chunks ---- */

static bool is_ws(char c)
{
    return c == ' ' || c == '\n' || c == '\t' || c == '\r';
}

/* Byte length of the first n code points of s. */
static size_t cp_bytes(const char *s, size_t n)
{
    size_t i = 0;
    while (n && s[i]) {
        i++;
        while ((s[i] & 0xC0) == 0x80)
            i++;
        n--;
    }
    return i;
}

/* The invariants every chunk list must hold. limit/olimit in code points. */
static void check_invariants(const struct kb_doc *d, const struct kb_chunk_list *l, size_t limit,
                             size_t olimit)
{
    for (size_t i = 0; i < l->len; i++) {
        const struct kb_chunk *c = &l->items[i];
        size_t n = strlen(c->text);
        cr_assert_eq(c->ordinal, i);
        cr_assert_lt(c->section, d->nsections);
        char *path = kb_section_path_join(&d->sections[c->section]);
        cr_assert_str_eq(c->heading_path, path);
        free(path);
        cr_assert_gt(n, 0, "chunk %zu empty", i);
        cr_assert_eq(utf8_check(c->text, n, NULL), 0, "chunk %zu not UTF-8", i);
        cr_assert_eq(c->chars, utf8_count(c->text, n));
        cr_assert_leq(c->chars, limit, "chunk %zu has %zu > %zu chars:\n%s", i, c->chars, limit,
                      c->text);
        cr_assert_eq(c->tokens, (c->chars + 3) / 4);
        cr_assert(!is_ws(c->text[n - 1]), "chunk %zu ends in whitespace", i);
        cr_assert_leq(c->overlap, olimit, "chunk %zu overlap %zu", i, c->overlap);
        if (i > 0)
            cr_assert_geq(c->section, l->items[i - 1].section, "sections in order");
        if (c->overlap) {
            const struct kb_chunk *p = &l->items[i - 1];
            cr_assert_eq(p->section, c->section, "overlap only within a section");
            size_t ob = cp_bytes(c->text, c->overlap), pn = strlen(p->text);
            cr_assert_leq(ob, pn);
            cr_assert(memcmp(c->text, p->text + pn - ob, ob) == 0,
                      "chunk %zu does not start with a tail of chunk %zu:\n%s\n----\n%s", i, i - 1,
                      p->text, c->text);
            size_t at = pn - ob;
            cr_assert(at == 0 || is_ws(p->text[at - 1]) || (p->text[at - 1] & 0x80),
                      "overlap of chunk %zu starts inside a word", i);
        }
    }
}

/* All non-whitespace bytes of s appended to out. */
static void strip_ws(const char *s, size_t n, char *out, size_t *len)
{
    for (size_t i = 0; i < n; i++)
        if (!is_ws(s[i]))
            out[(*len)++] = s[i];
    out[*len] = '\0';
}

/* Nothing lost, nothing repeated: the chunks of each section without their overlap equal
 * the section's blocks, whitespace aside. */
static void check_coverage(const struct kb_doc *d, const struct kb_chunk_list *l)
{
    for (size_t s = 0; s < d->nsections; s++) {
        size_t cap = 1;
        for (size_t k = 0; k < d->sections[s].nblocks; k++)
            cap += strlen(d->sections[s].blocks[k].text);
        char *want = malloc(cap), *got = malloc(cap * 2 + 1);
        size_t wl = 0, gl = 0;
        want[0] = got[0] = '\0';
        for (size_t k = 0; k < d->sections[s].nblocks; k++) {
            const char *t = d->sections[s].blocks[k].text;
            strip_ws(t, strlen(t), want, &wl);
        }
        for (size_t i = 0; i < l->len; i++) {
            const struct kb_chunk *c = &l->items[i];
            if (c->section != s)
                continue;
            size_t ob = cp_bytes(c->text, c->overlap);
            cr_assert_leq(gl + strlen(c->text) - ob, cap * 2);
            strip_ws(c->text + ob, strlen(c->text) - ob, got, &gl);
        }
        cr_assert_str_eq(got, want, "section %zu text lost or repeated", s);
        free(want);
        free(got);
    }
}

static void chunk_ok(const struct kb_doc *d, size_t size, size_t overlap, enum kb_unit unit,
                     struct kb_chunk_list *l)
{
    struct kb_chunk_opts o = {size, overlap, unit};
    cr_assert_eq(kb_chunk_doc(d, &o, l), 0);
    size_t mul = unit == KB_UNIT_TOKENS ? 4 : 1;
    check_invariants(d, l, size * mul, overlap * mul);
    check_coverage(d, l);
}

/* ---- options ---- */

Test(kb_chunk_opts, defaults_and_checks)
{
    struct kb_chunk_opts o;
    kb_chunk_opts_default(&o);
    cr_assert_eq(o.size, 1200);
    cr_assert_eq(o.overlap, 200);
    cr_assert_eq(o.unit, KB_UNIT_CHARS);
    char *err = NULL;
    cr_assert_eq(kb_chunk_opts_check(&o, &err), 0);
    struct kb_chunk_opts bad = {200, 300, KB_UNIT_CHARS};
    cr_assert_eq(kb_chunk_opts_check(&bad, &err), -1);
    cr_assert_str_eq(err, "chunk overlap (300) must be smaller than the chunk size (200)");
    free(err);
    bad = (struct kb_chunk_opts){0, 0, KB_UNIT_TOKENS};
    cr_assert_eq(kb_chunk_opts_check(&bad, &err), -1);
    cr_assert_str_eq(err, "chunk size (0) must be between 1 and 10000000");
    free(err);
    bad = (struct kb_chunk_opts){100, 100, KB_UNIT_CHARS};
    cr_assert_eq(kb_chunk_opts_check(&bad, &err), -1);
    free(err);

    struct kb_doc d;
    doc1(&d, KB_BLOCK_PARAGRAPH, "Some text.");
    struct kb_chunk_list l = {(void *)1, 7};
    cr_assert_eq(kb_chunk_doc(&d, &bad, &l), -1);
    cr_assert_eq(l.len, 0);
    cr_assert_null(l.items);
    cr_assert_eq(kb_chunk_doc(&d, NULL, &l), 0, "NULL means the defaults");
    cr_assert_eq(l.len, 1);
    kb_chunk_list_free(&l);
    kb_chunk_list_free(&l);
    kb_doc_free(&d);
}

/* ---- sections and packing ---- */

Test(kb_chunk, sections_are_never_mixed)
{
    struct kb_doc d;
    parse("# Billing\n\nInvoices are monthly.\n\n## Refunds\n\nYearly plans only.\n\n"
          "## Refunds\n\nA second section with the same name.\n\n# Export\n\nCSV or NDJSON.\n",
          KB_FORMAT_MARKDOWN, &d);
    struct kb_chunk_list l;
    chunk_ok(&d, 1200, 200, KB_UNIT_CHARS, &l);
    cr_assert_eq(l.len, 4, "one chunk per section even though all would fit in one");
    static const char *const want[][2] = {
        {"Billing", "Invoices are monthly."},
        {"Billing > Refunds", "Yearly plans only."},
        {"Billing > Refunds", "A second section with the same name."},
        {"Export", "CSV or NDJSON."}};
    for (size_t i = 0; i < l.len; i++) {
        cr_assert_str_eq(l.items[i].heading_path, want[i][0]);
        cr_assert_str_eq(l.items[i].text, want[i][1]);
        cr_assert_eq(l.items[i].section, i);
        cr_assert_eq(l.items[i].overlap, 0);
    }
    kb_chunk_list_free(&l);
    kb_doc_free(&d);
}

Test(kb_chunk, whole_blocks_are_packed)
{
    struct kb_doc d;
    parse("Intro without a heading.\n\n- one\n- two\n\nLast paragraph.\n", KB_FORMAT_MARKDOWN, &d);
    struct kb_chunk_list l;
    chunk_ok(&d, 1200, 200, KB_UNIT_CHARS, &l);
    cr_assert_eq(l.len, 1);
    cr_assert_str_eq(l.items[0].heading_path, "");
    cr_assert_str_eq(l.items[0].text,
                     "Intro without a heading.\n\n- one\n- two\n\nLast paragraph.");
    cr_assert_eq(l.items[0].chars, strlen(l.items[0].text));
    kb_chunk_list_free(&l);
    kb_doc_free(&d);
}

/* ---- splitting prose ---- */

Test(kb_chunk, long_paragraph_split_at_sentences_with_overlap)
{
    char *text = prose(3000, 1, true);
    struct kb_doc d;
    doc1(&d, KB_BLOCK_PARAGRAPH, text);
    struct kb_chunk_list l;
    chunk_ok(&d, 300, 60, KB_UNIT_CHARS, &l);
    cr_assert_geq(l.len, 11);
    for (size_t i = 0; i < l.len; i++) {
        const struct kb_chunk *c = &l.items[i];
        cr_assert_eq(c->text[strlen(c->text) - 1], '.', "chunk %zu ends at a sentence: %s", i,
                     c->text);
        if (i > 0) {
            cr_assert_gt(c->overlap, 0, "chunk %zu has overlap", i);
            cr_assert_leq(c->overlap, 60);
        } else {
            cr_assert_eq(c->overlap, 0);
        }
        if (i + 1 < l.len)
            cr_assert_geq(c->chars, 150, "chunk %zu uses at least half the room", i);
    }
    kb_chunk_list_free(&l);
    kb_doc_free(&d);
    free(text);
}

Test(kb_chunk, no_sentence_ends_split_at_words)
{
    char *text = prose(2000, 2, false);
    struct kb_doc d;
    doc1(&d, KB_BLOCK_PARAGRAPH, text);
    struct kb_chunk_list l;
    chunk_ok(&d, 100, 0, KB_UNIT_CHARS, &l);
    /* Without overlap the chunks partition the text at spaces. */
    size_t pos = 0;
    for (size_t i = 0; i < l.len; i++) {
        size_t n = strlen(l.items[i].text);
        cr_assert_eq(l.items[i].overlap, 0);
        cr_assert(strncmp(text + pos, l.items[i].text, n) == 0, "chunk %zu in place", i);
        pos += n;
        cr_assert(text[pos] == ' ' || text[pos] == '\0', "chunk %zu ends at a word", i);
        if (i + 1 < l.len)
            cr_assert_geq(l.items[i].chars, 90, "words are short: chunks nearly full");
        pos += text[pos] == ' ';
    }
    cr_assert_eq(pos, strlen(text));
    kb_chunk_list_free(&l);
    kb_doc_free(&d);
    free(text);
}

Test(kb_chunk, paragraph_breaks_preferred_in_quotes)
{
    char *a = prose(150, 3, true), *b = prose(150, 4, true), *c = prose(150, 5, true);
    char *text = malloc(strlen(a) + strlen(b) + strlen(c) + 8);
    sprintf(text, "%s\n\n%s\n\n%s", a, b, c);
    struct kb_doc d;
    doc1(&d, KB_BLOCK_QUOTE, text);
    struct kb_chunk_list l;
    chunk_ok(&d, 350, 0, KB_UNIT_CHARS, &l);
    cr_assert_eq(l.len, 2);
    char *first = malloc(strlen(a) + strlen(b) + 4);
    sprintf(first, "%s\n\n%s", a, b);
    cr_assert_str_eq(l.items[0].text, first, "cut at the paragraph break");
    cr_assert_str_eq(l.items[1].text, c);
    kb_chunk_list_free(&l);
    kb_doc_free(&d);
    free(first);
    free(text);
    free(a);
    free(b);
    free(c);
}

Test(kb_chunk, overlap_is_whole_sentences_or_words_and_bounded)
{
    char *text = prose(5000, 6, true);
    struct kb_doc d;
    doc1(&d, KB_BLOCK_PARAGRAPH, text);
    for (size_t ov = 10; ov <= 150; ov += 35) {
        struct kb_chunk_list l;
        chunk_ok(&d, 400, ov, KB_UNIT_CHARS, &l);
        size_t with = 0;
        for (size_t i = 1; i < l.len; i++)
            with += l.items[i].overlap > 0;
        cr_assert_geq(with, l.len - 2, "overlap %zu: almost every chunk continues with one", ov);
        kb_chunk_list_free(&l);
    }
    kb_doc_free(&d);
    free(text);
}

/* ---- code and tables ---- */

static char *code_lines(size_t nlines)
{
    char *s = malloc(nlines * 64 + 1);
    size_t len = 0;
    for (size_t i = 0; i < nlines; i++)
        len += (size_t)sprintf(s + len, "%s    retries[%zu] = backoff(%zu, base=0.5)  # try %zu",
                               i ? "\n" : "", i, i * 2, i + 1);
    return s;
}

Test(kb_chunk, code_block_that_fits_is_never_cut)
{
    char *intro = prose(200, 7, true), *code = code_lines(5);
    cr_assert_lt(strlen(code), 300);
    const enum kb_block_kind kinds[] = {KB_BLOCK_PARAGRAPH, KB_BLOCK_CODE, KB_BLOCK_PARAGRAPH};
    const char *texts[] = {intro, code, "After the code."};
    struct kb_doc d;
    doc_of(&d, "Retries", 3, kinds, texts);
    struct kb_chunk_list l;
    chunk_ok(&d, 300, 80, KB_UNIT_CHARS, &l);
    /* intro | tail of intro + code | tail of code + "After the code." */
    cr_assert_eq(l.len, 3);
    cr_assert_str_eq(l.items[0].text, intro);
    const char *at = strstr(l.items[1].text, code);
    cr_assert_not_null(at, "code whole in the second chunk:\n%s", l.items[1].text);
    cr_assert_gt(l.items[1].overlap, 0);
    cr_assert_leq(l.items[1].overlap, 300 - strlen(code) - 2, "overlap shortened to fit");
    cr_assert(strstr(l.items[2].text, "After the code."));
    kb_chunk_list_free(&l);
    kb_doc_free(&d);
    free(intro);
    free(code);
}

Test(kb_chunk, code_block_larger_than_size_split_at_lines)
{
    char *code = code_lines(40);
    struct kb_doc d;
    doc1(&d, KB_BLOCK_CODE, code);
    for (size_t ov = 0; ov <= 100; ov += 100) {
        struct kb_chunk_list l;
        chunk_ok(&d, 300, ov, KB_UNIT_CHARS, &l);
        cr_assert_gt(l.len, 5);
        for (size_t i = 0; i < l.len; i++) {
            /* every line of every chunk is a whole line of the code (indentation aside for
             * an overlap's first line) */
            char *copy = strdup(l.items[i].text), *save = NULL;
            for (char *line = strtok_r(copy, "\n", &save); line;
                 line = strtok_r(NULL, "\n", &save)) {
                char needle[128];
                snprintf(needle, sizeof(needle), "%s\n", line);
                char *whole = malloc(strlen(code) + 3);
                sprintf(whole, "\n%s\n", code);
                cr_assert(strstr(whole, needle), "chunk %zu line is not a whole line: '%s'", i,
                          line);
                free(whole);
            }
            free(copy);
            if (ov == 0)
                cr_assert(strncmp(l.items[i].text, "    retries[", 12) == 0,
                          "indentation kept after a line cut");
        }
        kb_chunk_list_free(&l);
    }
    kb_doc_free(&d);
    free(code);
}

Test(kb_chunk, table_kept_whole_or_split_by_rows)
{
    char table[4096] = "Plan | Requests per minute | Burst";
    for (int i = 0; i < 30; i++)
        sprintf(table + strlen(table), "\nPlan %02d | %d | %d", i, 60 * (i + 1), 10 * (i + 1));
    const enum kb_block_kind kinds[] = {KB_BLOCK_PARAGRAPH, KB_BLOCK_TABLE};
    const char *texts[] = {"Limits per plan:", table};
    struct kb_doc d;
    doc_of(&d, "Limits", 2, kinds, texts);
    struct kb_chunk_list l;
    size_t tl = strlen(table);
    chunk_ok(&d, tl + 10, 40, KB_UNIT_CHARS, &l);
    cr_assert_eq(l.len, 2, "the table does not fit after the intro: it starts a chunk");
    cr_assert(strstr(l.items[1].text, table));
    kb_chunk_list_free(&l);

    chunk_ok(&d, 200, 0, KB_UNIT_CHARS, &l);
    for (size_t i = 1; i < l.len; i++) {
        const char *t = l.items[i].text;
        cr_assert(strncmp(t, "Plan ", 5) == 0, "chunk %zu starts at a row: %s", i, t);
        size_t n = strlen(t);
        cr_assert(strncmp(table + (strstr(table, t) - table) + n, "\n", 1) == 0 ||
                      strstr(table, t) + n == table + tl,
                  "chunk %zu ends at a row", i);
    }
    kb_chunk_list_free(&l);
    kb_doc_free(&d);
}

Test(kb_chunk, long_code_line_split_at_spaces)
{
    char line[1200] = "    curl";
    while (strlen(line) < 1000)
        strcat(line, " -H 'X-Orbit-Header: value'");
    struct kb_doc d;
    doc1(&d, KB_BLOCK_CODE, line);
    struct kb_chunk_list l;
    chunk_ok(&d, 200, 0, KB_UNIT_CHARS, &l);
    cr_assert_gt(l.len, 5);
    char joined[1400] = "";
    for (size_t i = 0; i < l.len; i++) {
        cr_assert_geq(l.items[i].chars, i + 1 < l.len ? 180 : 1);
        sprintf(joined + strlen(joined), "%s%s", i ? " " : "", l.items[i].text);
    }
    cr_assert_str_eq(joined, line, "cut at single spaces, indentation kept");
    kb_chunk_list_free(&l);
    kb_doc_free(&d);
}

/* ---- the size limit and UTF-8 ---- */

Test(kb_chunk, word_longer_than_size_is_cut_at_code_points)
{
    /* The one case no boundary helps: a single 250-character word. It is cut into pieces
     * of exactly `size` code points (never bytes), so even here no chunk is over size. */
    char word[1024] = "";
    for (int i = 0; i < 250; i++)
        strcat(word, i % 2 ? "é" : "ß");
    struct kb_doc d;
    doc1(&d, KB_BLOCK_PARAGRAPH, word);
    struct kb_chunk_list l;
    chunk_ok(&d, 100, 20, KB_UNIT_CHARS, &l);
    cr_assert_eq(l.len, 3);
    cr_assert_eq(l.items[0].chars, 100);
    cr_assert_eq(strlen(l.items[0].text), 200, "100 code points, 200 bytes");
    cr_assert_eq(l.items[2].chars, 50);
    char joined[1024] = "";
    for (size_t i = 0; i < l.len; i++) {
        cr_assert_eq(l.items[i].overlap, 0, "no whole word fits the overlap");
        strcat(joined, l.items[i].text);
    }
    cr_assert_str_eq(joined, word);
    kb_chunk_list_free(&l);

    /* Inside prose, a long token is cut only when it is longer than the room. */
    char text[2048] = "Send the token ";
    for (int i = 0; i < 150; i++)
        strcat(text, "Ω");
    strcat(text, " with every request. Tokens expire after an hour.");
    kb_doc_free(&d);
    doc1(&d, KB_BLOCK_PARAGRAPH, text);
    chunk_ok(&d, 60, 15, KB_UNIT_CHARS, &l);
    cr_assert_str_eq(l.items[0].text, "Send the token");
    kb_chunk_list_free(&l);
    kb_doc_free(&d);
}

Test(kb_chunk, multibyte_text_counted_in_code_points)
{
    const char *para = "Żółta łódź płynie po jeziorze. Κάθε τιμολόγιο στέλνεται μηνιαίως. "
                       "Счёт приходит первого числа. Ünïcödé wörds 🚀 and emoji 🎉 too. "
                       "Żółta łódź płynie po jeziorze. Κάθε τιμολόγιο στέλνεται μηνιαίως.";
    struct kb_doc d;
    doc1(&d, KB_BLOCK_PARAGRAPH, para);
    for (size_t size = 10; size <= 80; size += 7) {
        struct kb_chunk_list l;
        chunk_ok(&d, size, size / 4, KB_UNIT_CHARS, &l);
        bool more_bytes = false;
        for (size_t i = 0; i < l.len; i++)
            more_bytes |= strlen(l.items[i].text) > size;
        cr_assert(more_bytes, "size %zu: some chunk has more bytes than size", size);
        kb_chunk_list_free(&l);
    }
    kb_doc_free(&d);
}

Test(kb_chunk, cjk_split_after_sentence_marks)
{
    const char *text = "パスワードをリセットするには、サインインページを開いてください。"
                       "メールに記載されたリンクは六十分間有効です。"
                       "届かない場合は迷惑メールフォルダを確認してください！"
                       "それでも届かない場合はサポートへ連絡してください。";
    struct kb_doc d;
    doc1(&d, KB_BLOCK_PARAGRAPH, text);
    struct kb_chunk_list l;
    chunk_ok(&d, 40, 0, KB_UNIT_CHARS, &l);
    cr_assert_geq(l.len, 3);
    for (size_t i = 0; i < l.len; i++) {
        const char *t = l.items[i].text;
        size_t n = strlen(t);
        cr_assert(n >= 3 && (strcmp(t + n - 3, "。") == 0 || strcmp(t + n - 3, "！") == 0),
                  "chunk %zu ends at a sentence mark: %s", i, t);
    }
    kb_chunk_list_free(&l);
    kb_doc_free(&d);
}

/* ---- units, determinism ---- */

Test(kb_chunk, tokens_are_four_characters)
{
    char *text = prose(4000, 8, true);
    struct kb_doc d;
    doc1(&d, KB_BLOCK_PARAGRAPH, text);
    struct kb_chunk_list lt, lc;
    chunk_ok(&d, 75, 15, KB_UNIT_TOKENS, &lt);
    chunk_ok(&d, 300, 60, KB_UNIT_CHARS, &lc);
    cr_assert_eq(lt.len, lc.len);
    size_t maxtok = 0;
    for (size_t i = 0; i < lt.len; i++) {
        cr_assert_str_eq(lt.items[i].text, lc.items[i].text);
        cr_assert_eq(lt.items[i].tokens, (lt.items[i].chars + 3) / 4);
        maxtok = lt.items[i].tokens > maxtok ? lt.items[i].tokens : maxtok;
    }
    cr_assert_leq(maxtok, 75);
    cr_assert_geq(maxtok, 60, "chunks are filled in token terms too");
    kb_chunk_list_free(&lt);
    kb_chunk_list_free(&lc);
    kb_doc_free(&d);
    free(text);
}

Test(kb_chunk, deterministic)
{
    char *text = prose(6000, 9, true);
    struct kb_doc d;
    doc1(&d, KB_BLOCK_PARAGRAPH, text);
    struct kb_chunk_list a, b;
    chunk_ok(&d, 250, 50, KB_UNIT_CHARS, &a);
    chunk_ok(&d, 250, 50, KB_UNIT_CHARS, &b);
    cr_assert_eq(a.len, b.len);
    for (size_t i = 0; i < a.len; i++) {
        cr_assert_str_eq(a.items[i].text, b.items[i].text);
        cr_assert_eq(a.items[i].overlap, b.items[i].overlap);
    }
    kb_chunk_list_free(&a);
    kb_chunk_list_free(&b);
    kb_doc_free(&d);
    free(text);
}

/* ---- the fixtures ---- */

static const char *const fixtures[] = {
    "docs/deploy.md",      "docs/billing.md",         "docs/account/password-reset.md",
    "docs/data/export.md", "docs/api/rate-limits.md", "faq.html",
    "release-notes.txt"};

static void load_fixture(const char *rel, struct kb_doc *d)
{
    const char *root = getenv("TIERONE_SOURCE_DIR");
    char path[4096];
    snprintf(path, sizeof(path), "%s/tests/fixtures/kb/%s", root ? root : ".", rel);
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "cannot open %s", path);
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    char *err = NULL;
    cr_assert_eq(kb_doc_parse(buf, n, kb_format_guess(rel, NULL), rel, d, &err), 0, "%s: %s", rel,
                 err ? err : "");
}

Test(kb_chunk_fixtures, invariants_at_many_sizes)
{
    static const struct kb_chunk_opts opts[] = {
        {1200, 200, KB_UNIT_CHARS}, {300, 60, KB_UNIT_CHARS}, {100, 20, KB_UNIT_CHARS},
        {40, 10, KB_UNIT_CHARS},    {60, 0, KB_UNIT_CHARS},   {75, 15, KB_UNIT_TOKENS},
        {7, 3, KB_UNIT_CHARS},      {1, 0, KB_UNIT_CHARS},    {20, 19, KB_UNIT_CHARS},
    };
    for (size_t f = 0; f < sizeof(fixtures) / sizeof(fixtures[0]); f++) {
        struct kb_doc d;
        load_fixture(fixtures[f], &d);
        for (size_t o = 0; o < sizeof(opts) / sizeof(opts[0]); o++) {
            struct kb_chunk_list l;
            chunk_ok(&d, opts[o].size, opts[o].overlap, opts[o].unit, &l);
            kb_chunk_list_free(&l);
        }
        kb_doc_free(&d);
    }
}

Test(kb_chunk_fixtures, deploy_with_defaults)
{
    struct kb_doc d;
    load_fixture("docs/deploy.md", &d);
    struct kb_chunk_list l;
    cr_assert_eq(kb_chunk_doc(&d, NULL, &l), 0);
    check_invariants(&d, &l, 1200, 200);
    check_coverage(&d, &l);
    const struct kb_chunk *scaling = NULL;
    for (size_t i = 0; i < l.len; i++)
        if (strcmp(l.items[i].heading_path, "Deploy > Helm > Scaling") == 0)
            scaling = &l.items[i];
    cr_assert_not_null(scaling);
    cr_assert(strstr(scaling->text, "worker:\n  replicas: 3\n  autoscaling:\n    enabled: true\n"),
              "the yaml block is whole:\n%s", scaling->text);
    kb_chunk_list_free(&l);
    kb_doc_free(&d);
}
