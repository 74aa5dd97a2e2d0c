/* kb_chunk: sections -> chunks, packing whole blocks and splitting big ones at the best
 * boundary, with a bounded overlap (see kb_chunk.h for the rules). All counts are in
 * code points; cuts only ever fall at code point starts. */
#include "kb_chunk.h"
#include "buf.h"
#include "xalloc.h"
#include "utf8.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define KB_PARA_SEP "\n\n"

struct kb_chunker {
    size_t limit, olimit; /* size and overlap in code points */
    struct kb_chunk_list *out;
    size_t cap;
    size_t section;
    char *path;
    struct buf cur; /* the open chunk */
    size_t cur_chars, cur_overlap;
    bool open;
    enum kb_block_kind cur_kind; /* kind of the last block appended to cur */
    char *prev;                  /* the last chunk emitted in this section */
    enum kb_block_kind prev_kind;
};

/* Where a big block is cut: the piece is [0, end), the rest starts at next and is joined
 * to an overlap with sep (the whitespace the text had there). end == 0: no cut. */
struct kb_cut {
    size_t end, next;
    const char *sep;
};

static bool kb_chunk_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

static bool kb_chunk_cont(char c)
{
    return ((unsigned char)c & 0xC0) == 0x80;
}

static bool kb_chunk_by_lines(enum kb_block_kind k)
{
    return k == KB_BLOCK_CODE || k == KB_BLOCK_TABLE || k == KB_BLOCK_LIST;
}

/* Does [0, i) end with 。！or ？ */
static bool kb_chunk_cjk_end(const char *s, size_t i)
{
    if (i < 3)
        return false;
    const char *p = s + i - 3;
    return memcmp(p, "\xE3\x80\x82", 3) == 0 || memcmp(p, "\xEF\xBC\x81", 3) == 0 ||
           memcmp(p, "\xEF\xBC\x9F", 3) == 0;
}

/* Does [0, e) (e just past a non-space) end a sentence: . ! ? possibly followed by closing
 * quotes or brackets, or a CJK terminator. */
static bool kb_chunk_sentence_end(const char *s, size_t e)
{
    if (kb_chunk_cjk_end(s, e))
        return true;
    while (e > 0 && s[e - 1] && strchr("\"')]", s[e - 1]))
        e--;
    return e > 0 && (s[e - 1] == '.' || s[e - 1] == '!' || s[e - 1] == '?');
}

/* Candidate cut positions found while scanning: byte offset and code points before it. */
struct kb_chunk_cand {
    size_t pos, chars;
    bool set;
};

static void kb_chunk_cand_set(struct kb_chunk_cand *c, size_t pos, size_t chars)
{
    c->pos = pos;
    c->chars = chars;
    c->set = true;
}

static struct kb_cut kb_chunk_cut_at(const char *s, size_t len, size_t p, bool by_lines)
{
    struct kb_cut cut = {p, p, ""};
    while (cut.end > 0 && kb_chunk_ws(s[cut.end - 1]))
        cut.end--;
    size_t q = p, nl = 0, last_nl = 0;
    while (q < len && kb_chunk_ws(s[q])) {
        if (s[q] == '\n') {
            nl++;
            last_nl = q + 1;
        }
        q++;
    }
    cut.next = by_lines && nl ? last_nl : q;
    cut.sep = nl >= 2 ? "\n\n" : nl == 1 ? "\n" : q > p ? " " : "";
    return cut;
}

/* The best cut of s (longer than room code points) whose piece fits in room. With
 * allow_hard false, a cut inside a word is not taken (end stays 0). */
static struct kb_cut kb_chunk_find_cut(const char *s, size_t len, size_t room,
                                       enum kb_block_kind kind, bool allow_hard)
{
    struct kb_chunk_cand para = {0}, line = {0}, sent = {0}, word = {0}, hard = {0};
    size_t count = 0;
    bool text = false; /* a non-space before i: a hard cut keeps something */
    for (size_t i = 0; i <= len; i++) {
        if (i < len && kb_chunk_cont(s[i]))
            continue;
        if (count > room)
            break;
        if (text)
            kb_chunk_cand_set(&hard, i, count);
        if (i == len)
            break;
        if (kb_chunk_ws(s[i])) {
            size_t e = i;
            while (e > 0 && kb_chunk_ws(s[e - 1]))
                e--;
            if (e > 0) {
                kb_chunk_cand_set(&word, i, count);
                if (s[i] == '\n')
                    kb_chunk_cand_set(&line, i, count);
                if (s[i] == '\n' && i + 1 < len && s[i + 1] == '\n')
                    kb_chunk_cand_set(&para, i, count);
                if (kb_chunk_sentence_end(s, e))
                    kb_chunk_cand_set(&sent, i, count);
            }
        } else {
            if (kb_chunk_cjk_end(s, i))
                kb_chunk_cand_set(&sent, i, count);
            text = true;
        }
        count++;
    }
    size_t half = room / 2;
    const struct kb_chunk_cand *pick = NULL;
    if (kind == KB_BLOCK_CODE || kind == KB_BLOCK_TABLE) {
        pick = line.set ? &line : word.set ? &word : NULL;
    } else if (kind == KB_BLOCK_LIST) {
        pick = line.set && line.chars >= half   ? &line
               : sent.set && sent.chars >= half ? &sent
               : word.set                       ? &word
               : sent.set                       ? &sent
                                                : NULL;
    } else {
        pick = para.set && para.chars >= half   ? &para
               : sent.set && sent.chars >= half ? &sent
               : word.set                       ? &word
               : sent.set                       ? &sent
                                                : NULL;
    }
    if (!pick && allow_hard && hard.set)
        pick = &hard;
    if (!pick)
        return (struct kb_cut){0, 0, ""};
    return kb_chunk_cut_at(s, len, pick->pos, kb_chunk_by_lines(kind));
}

/* Is s a good start for an overlap tail: a sentence start (prose) or line start. */
static bool kb_chunk_pref_start(const char *s, size_t i, bool by_lines)
{
    if (i == 0)
        return true;
    if (by_lines) {
        size_t k = i;
        while (k > 0 && (s[k - 1] == ' ' || s[k - 1] == '\t'))
            k--;
        return k == 0 || s[k - 1] == '\n';
    }
    if (kb_chunk_cjk_end(s, i))
        return true;
    size_t e = i;
    while (e > 0 && kb_chunk_ws(s[e - 1]))
        e--;
    if (e == 0)
        return true;
    return kb_chunk_sentence_end(s, e) || (i >= 2 && s[i - 1] == '\n' && s[i - 2] == '\n');
}

/* Byte offset where the overlap tail of prev starts (strlen(prev) for none). */
static size_t kb_chunk_tail(const char *prev, size_t budget, enum kb_block_kind kind)
{
    size_t len = strlen(prev);
    if (budget == 0)
        return len;
    size_t total = utf8_count(prev, len), count = 0;
    bool by_lines = kb_chunk_by_lines(kind);
    struct kb_chunk_cand pref = {0}, word = {0};
    for (size_t i = 0; i < len && !(pref.set && word.set); i++) {
        if (kb_chunk_cont(prev[i]))
            continue;
        size_t tail = total - count;
        count++;
        if (tail > budget || kb_chunk_ws(prev[i]))
            continue;
        bool word_start = i == 0 || kb_chunk_ws(prev[i - 1]) || kb_chunk_cjk_end(prev, i);
        if (!word_start)
            continue;
        if (!word.set)
            kb_chunk_cand_set(&word, i, tail);
        if (!pref.set && kb_chunk_pref_start(prev, i, by_lines))
            kb_chunk_cand_set(&pref, i, tail);
    }
    if (pref.set && (by_lines || pref.chars * 2 >= budget))
        return pref.pos;
    if (word.set)
        return word.pos;
    return len;
}

/* ---- the open chunk ---- */

static void kb_chunk_emit(struct kb_chunker *ch)
{
    if (!ch->open)
        return;
    struct kb_chunk_list *l = ch->out;
    if (l->len == ch->cap) {
        ch->cap = ch->cap ? ch->cap * 2 : 16;
        l->items = xrealloc(l->items, ch->cap * sizeof(*l->items));
    }
    struct kb_chunk *c = &l->items[l->len];
    c->ordinal = l->len++;
    c->section = ch->section;
    c->heading_path = xstrdup(ch->path);
    c->text = xstrdup(ch->cur.data);
    c->chars = ch->cur_chars;
    c->tokens = (ch->cur_chars + KB_CHARS_PER_TOKEN - 1) / KB_CHARS_PER_TOKEN;
    c->overlap = ch->cur_overlap;
    free(ch->prev);
    ch->prev = buf_steal(&ch->cur);
    ch->prev_kind = ch->cur_kind;
    ch->open = false;
    ch->cur_chars = ch->cur_overlap = 0;
}

static void kb_chunk_reset(struct kb_chunker *ch)
{
    buf_reset(&ch->cur);
    ch->cur_chars = ch->cur_overlap = 0;
}

/* Open a chunk, starting with the overlap tail of the previous chunk of the section. When
 * need > 0, the tail leaves room for need more code points after the joint. */
static void kb_chunk_start(struct kb_chunker *ch, size_t need, const char *joint)
{
    kb_chunk_reset(ch);
    ch->open = true;
    if (!ch->prev || ch->olimit == 0)
        return;
    size_t budget = ch->olimit;
    if (need) {
        size_t used = need + strlen(joint);
        size_t fit = ch->limit > used ? ch->limit - used : 0;
        budget = budget < fit ? budget : fit;
    }
    size_t at = kb_chunk_tail(ch->prev, budget, ch->prev_kind);
    size_t n = strlen(ch->prev + at);
    if (n == 0)
        return;
    buf_append(&ch->cur, ch->prev + at, n);
    ch->cur_chars = ch->cur_overlap = utf8_count(ch->prev + at, n);
}

static void kb_chunk_append(struct kb_chunker *ch, const char *s, size_t n, const char *sep,
                            enum kb_block_kind kind)
{
    if (ch->cur.len) {
        buf_puts(&ch->cur, sep);
        ch->cur_chars += utf8_count(sep, strlen(sep));
    }
    buf_append(&ch->cur, s, n);
    ch->cur_chars += utf8_count(s, n);
    ch->cur_kind = kind;
}

/* A block longer than the limit: cut it into pieces, each in its own chunk. The last
 * piece stays open so that following blocks can join it. */
static void kb_chunk_split(struct kb_chunker *ch, const struct kb_block *b)
{
    const char *s = b->text;
    size_t len = strlen(s), pos = 0;
    size_t rest = utf8_count(s, len); /* code points in s + pos */
    const char *joint = KB_PARA_SEP;
    while (pos < len) {
        if (rest <= ch->limit) {
            kb_chunk_start(ch, rest, joint);
            kb_chunk_append(ch, s + pos, len - pos, joint, b->kind);
            return;
        }
        kb_chunk_start(ch, 0, joint);
        size_t used = ch->cur.len ? ch->cur_chars + strlen(joint) : 0;
        size_t room = used < ch->limit ? ch->limit - used : 0;
        struct kb_cut cut = kb_chunk_find_cut(s + pos, len - pos, room, b->kind, !ch->cur.len);
        if (cut.end == 0) { /* nothing fits beside the overlap: drop it */
            kb_chunk_reset(ch);
            cut = kb_chunk_find_cut(s + pos, len - pos, ch->limit, b->kind, true);
        }
        if (cut.end == 0) { /* indentation longer than the limit: drop it */
            while (pos < len && kb_chunk_ws(s[pos])) {
                pos++;
                rest--;
            }
            continue;
        }
        kb_chunk_append(ch, s + pos, cut.end, joint, b->kind);
        kb_chunk_emit(ch);
        joint = cut.sep;
        rest -= utf8_count(s + pos, cut.next);
        pos += cut.next;
    }
}

static void kb_chunk_block(struct kb_chunker *ch, const struct kb_block *b)
{
    size_t n = utf8_count(b->text, strlen(b->text));
    if (ch->open && ch->cur_chars + strlen(KB_PARA_SEP) + n <= ch->limit) {
        kb_chunk_append(ch, b->text, strlen(b->text), KB_PARA_SEP, b->kind);
        return;
    }
    kb_chunk_emit(ch);
    if (n <= ch->limit) {
        kb_chunk_start(ch, n, KB_PARA_SEP);
        kb_chunk_append(ch, b->text, strlen(b->text), KB_PARA_SEP, b->kind);
        return;
    }
    kb_chunk_split(ch, b);
}

/* ---- options and entry point ---- */

void kb_chunk_opts_default(struct kb_chunk_opts *o)
{
    o->size = KB_CHUNK_DEFAULT_SIZE;
    o->overlap = KB_CHUNK_DEFAULT_OVERLAP;
    o->unit = KB_UNIT_CHARS;
}

int kb_chunk_opts_check(const struct kb_chunk_opts *o, char **err)
{
    if (o->unit != KB_UNIT_CHARS && o->unit != KB_UNIT_TOKENS) {
        *err = xstrdup("chunk unit must be characters or tokens");
        return -1;
    }
    if (o->size < 1 || o->size > KB_CHUNK_MAX_SIZE) {
        *err = xasprintf("chunk size (%zu) must be between 1 and %d", o->size, KB_CHUNK_MAX_SIZE);
        return -1;
    }
    if (o->overlap >= o->size) {
        *err = xasprintf("chunk overlap (%zu) must be smaller than the chunk size (%zu)",
                         o->overlap, o->size);
        return -1;
    }
    return 0;
}

int kb_chunk_doc(const struct kb_doc *d, const struct kb_chunk_opts *o, struct kb_chunk_list *out)
{
    memset(out, 0, sizeof(*out));
    struct kb_chunk_opts def;
    if (!o) {
        kb_chunk_opts_default(&def);
        o = &def;
    }
    char *err = NULL;
    if (kb_chunk_opts_check(o, &err)) {
        free(err);
        return -1;
    }
    size_t mul = o->unit == KB_UNIT_TOKENS ? KB_CHARS_PER_TOKEN : 1;
    struct kb_chunker ch = {.limit = o->size * mul, .olimit = o->overlap * mul, .out = out};
    for (size_t i = 0; i < d->nsections; i++) {
        const struct kb_section *s = &d->sections[i];
        ch.section = i;
        ch.path = kb_section_path_join(s);
        for (size_t k = 0; k < s->nblocks; k++)
            kb_chunk_block(&ch, &s->blocks[k]);
        kb_chunk_emit(&ch);
        free(ch.prev);
        ch.prev = NULL;
        free(ch.path);
        ch.path = NULL;
    }
    buf_free(&ch.cur);
    return 0;
}

void kb_chunk_list_free(struct kb_chunk_list *l)
{
    if (!l)
        return;
    for (size_t i = 0; i < l->len; i++) {
        free(l->items[i].heading_path);
        free(l->items[i].text);
    }
    free(l->items);
    memset(l, 0, sizeof(*l));
}
