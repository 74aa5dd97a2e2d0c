/* json_edit: a JSON scanner that finds top-level members and splices values (json_edit.h). */
#include "json_edit.h"
#include "buf.h"
#include "xalloc.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct scan {
    const char *s;
    size_t len;
    size_t pos;
    char *err;
    size_t errcap;
    int failed;
};

/* The scanned top-level object. With want set, members are not listed: only the value of
 * the last member whose key is want is kept (json_edit_find allocates nothing). */
struct object {
    struct json_member *members;
    size_t n;
    size_t cap;
    size_t close_off; /* offset of the closing '}' */
    const char *want; /* NULL, or the key looked for (want_len bytes) */
    size_t want_len;
    int found;
    struct json_span found_value;
};

static int scan_value(struct scan *sc, int depth);

static void scan_fail(struct scan *sc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void scan_fail(struct scan *sc, const char *fmt, ...)
{
    if (sc->failed)
        return;
    sc->failed = 1;
    if (!sc->err || !sc->errcap)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sc->err, sc->errcap, fmt, ap);
    va_end(ap);
}

/* "unexpected 'x'" or "unexpected end of input" at the current position. */
static int scan_unexpected(struct scan *sc)
{
    if (sc->pos >= sc->len) {
        scan_fail(sc, "invalid JSON at byte %zu: unexpected end of input", sc->pos);
    } else {
        unsigned char c = (unsigned char)sc->s[sc->pos];
        if (c >= 0x20 && c < 0x7f)
            scan_fail(sc, "invalid JSON at byte %zu: unexpected '%c'", sc->pos, c);
        else
            scan_fail(sc, "invalid JSON at byte %zu: unexpected byte 0x%02x", sc->pos, c);
    }
    return -1;
}

static void scan_ws(struct scan *sc)
{
    while (sc->pos < sc->len) {
        char c = sc->s[sc->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
            return;
        sc->pos++;
    }
}

static int scan_peek(const struct scan *sc)
{
    return sc->pos < sc->len ? (unsigned char)sc->s[sc->pos] : -1;
}

static int json_edit_hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int scan_string(struct scan *sc)
{
    sc->pos++; /* opening quote */
    while (sc->pos < sc->len) {
        /* Runs of plain bytes (nearly all of a webhook's text) are skipped 8 at a time. */
        sc->pos += buf_json_plain_words(sc->s + sc->pos, sc->len - sc->pos);
        if (sc->pos >= sc->len)
            break;
        unsigned char c = (unsigned char)sc->s[sc->pos];
        if (c == '"') {
            sc->pos++;
            return 0;
        }
        if (c < 0x20) {
            scan_fail(sc, "invalid JSON at byte %zu: control character 0x%02x in string", sc->pos,
                      c);
            return -1;
        }
        if (c != '\\') {
            sc->pos++;
            continue;
        }
        sc->pos++;
        int e = scan_peek(sc);
        if (e < 0x20)
            return scan_unexpected(sc);
        sc->pos++;
        if (e != 'u')
            continue;
        for (int i = 0; i < 4; i++, sc->pos++) {
            if (json_edit_hexval(scan_peek(sc)) < 0)
                return scan_unexpected(sc);
        }
    }
    return scan_unexpected(sc);
}

static int scan_digits(struct scan *sc)
{
    size_t start = sc->pos;
    while (sc->pos < sc->len && sc->s[sc->pos] >= '0' && sc->s[sc->pos] <= '9')
        sc->pos++;
    return sc->pos > start ? 0 : scan_unexpected(sc);
}

static int scan_number(struct scan *sc)
{
    if (scan_peek(sc) == '-')
        sc->pos++;
    if (scan_peek(sc) == '0')
        sc->pos++;
    else if (scan_digits(sc))
        return -1;
    if (scan_peek(sc) == '.') {
        sc->pos++;
        if (scan_digits(sc))
            return -1;
    }
    if (scan_peek(sc) == 'e' || scan_peek(sc) == 'E') {
        sc->pos++;
        if (scan_peek(sc) == '+' || scan_peek(sc) == '-')
            sc->pos++;
        if (scan_digits(sc))
            return -1;
    }
    return 0;
}

static int scan_literal(struct scan *sc, const char *word)
{
    size_t n = strlen(word);
    for (size_t i = 0; i < n; i++, sc->pos++) {
        if (scan_peek(sc) != (unsigned char)word[i])
            return scan_unexpected(sc);
    }
    return 0;
}

static int scan_depth(struct scan *sc, int depth)
{
    if (depth <= JSON_EDIT_MAX_DEPTH)
        return 0;
    scan_fail(sc, "invalid JSON at byte %zu: nesting deeper than %d", sc->pos, JSON_EDIT_MAX_DEPTH);
    return -1;
}

/* One "key": value member; key and value spans go to m when m is not NULL. */
static int scan_member(struct scan *sc, int depth, struct json_member *m)
{
    if (scan_peek(sc) != '"')
        return scan_unexpected(sc);
    size_t key_off = sc->pos;
    if (scan_string(sc))
        return -1;
    size_t key_end = sc->pos;
    scan_ws(sc);
    if (scan_peek(sc) != ':')
        return scan_unexpected(sc);
    sc->pos++;
    scan_ws(sc);
    size_t value_off = sc->pos;
    if (scan_value(sc, depth))
        return -1;
    if (m) {
        m->key = (struct json_span){key_off, key_end - key_off};
        m->value = (struct json_span){value_off, sc->pos - value_off};
    }
    return 0;
}

static void object_add(struct object *obj, const struct json_member *m)
{
    if (obj->n == obj->cap) {
        obj->cap = obj->cap ? obj->cap * 2 : 16;
        obj->members = xrealloc(obj->members, obj->cap * sizeof *obj->members);
    }
    obj->members[obj->n++] = *m;
}

/* An object at the current position ('{'); members are recorded in obj when not NULL. */
static int scan_object(struct scan *sc, int depth, struct object *obj)
{
    if (scan_depth(sc, depth))
        return -1;
    sc->pos++;
    scan_ws(sc);
    if (scan_peek(sc) != '}') {
        for (;;) {
            struct json_member m;
            if (scan_member(sc, depth, &m))
                return -1;
            if (obj && !obj->want) {
                object_add(obj, &m);
            } else if (obj && json_edit_key_eq(sc->s, m.key, obj->want, obj->want_len)) {
                obj->found = 1;
                obj->found_value = m.value;
            }
            scan_ws(sc);
            if (scan_peek(sc) != ',')
                break;
            sc->pos++;
            scan_ws(sc);
        }
        if (scan_peek(sc) != '}')
            return scan_unexpected(sc);
    }
    if (obj)
        obj->close_off = sc->pos;
    sc->pos++;
    return 0;
}

static int scan_array(struct scan *sc, int depth)
{
    if (scan_depth(sc, depth))
        return -1;
    sc->pos++;
    scan_ws(sc);
    if (scan_peek(sc) == ']') {
        sc->pos++;
        return 0;
    }
    for (;;) {
        if (scan_value(sc, depth))
            return -1;
        scan_ws(sc);
        if (scan_peek(sc) != ',')
            break;
        sc->pos++;
        scan_ws(sc);
    }
    if (scan_peek(sc) != ']')
        return scan_unexpected(sc);
    sc->pos++;
    return 0;
}

/* depth = number of containers around the value; a container's own depth is one more. */
static int scan_value(struct scan *sc, int depth)
{
    int c = scan_peek(sc);
    switch (c) {
    case '{':
        return scan_object(sc, depth + 1, NULL);
    case '[':
        return scan_array(sc, depth + 1);
    case '"':
        return scan_string(sc);
    case 't':
        return scan_literal(sc, "true");
    case 'f':
        return scan_literal(sc, "false");
    case 'n':
        return scan_literal(sc, "null");
    default:
        if (c == '-' || (c >= '0' && c <= '9'))
            return scan_number(sc);
        return scan_unexpected(sc);
    }
}

static int scan_end(struct scan *sc)
{
    scan_ws(sc);
    return sc->pos == sc->len ? 0 : scan_unexpected(sc);
}

int json_edit_validate(const char *text, size_t len, char *err, size_t errcap)
{
    struct scan sc = {text, len, 0, err, errcap, 0};
    scan_ws(&sc);
    if (scan_value(&sc, 0))
        return -1;
    return scan_end(&sc);
}

static const char *json_edit_kind(int c)
{
    switch (c) {
    case '[':
        return "an array";
    case '"':
        return "a string";
    case 't':
    case 'f':
        return "a boolean";
    case 'n':
        return "null";
    default:
        return "a number";
    }
}

/* Scan text as one object, recording its members (or, with want, the last value of that
 * key). */
static int object_scan(const char *text, size_t len, struct object *obj, const char *want,
                       char *err, size_t errcap)
{
    struct scan sc = {text, len, 0, err, errcap, 0};
    memset(obj, 0, sizeof *obj);
    obj->want = want;
    obj->want_len = want ? strlen(want) : 0;
    scan_ws(&sc);
    int c = scan_peek(&sc);
    if (c != '{') {
        if (json_edit_validate(text, len, err, errcap) == 0)
            scan_fail(&sc, "JSON value is %s, not an object", json_edit_kind(c));
        return -1;
    }
    if (scan_object(&sc, 1, obj) || scan_end(&sc)) {
        free(obj->members);
        obj->members = NULL;
        return -1;
    }
    return 0;
}

int json_edit_members(const char *text, size_t len, struct json_member **out, size_t *n, char *err,
                      size_t errcap)
{
    struct object obj;
    *out = NULL;
    *n = 0;
    if (object_scan(text, len, &obj, NULL, err, errcap))
        return -1;
    *out = obj.members;
    *n = obj.n;
    return 0;
}

/* Append code point cp as UTF-8 to out; returns the byte count. */
static size_t json_edit_utf8(unsigned cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Read \uXXXX at s[*i] (pointing at the backslash) if there is one before end. */
static int json_edit_u4(const char *s, size_t *i, size_t end, unsigned *cp)
{
    if (*i + 6 > end || s[*i] != '\\' || s[*i + 1] != 'u')
        return -1;
    unsigned v = 0;
    for (size_t k = 2; k < 6; k++) {
        int h = json_edit_hexval((unsigned char)s[*i + k]);
        if (h < 0)
            return -1;
        v = v * 16 + (unsigned)h;
    }
    *cp = v;
    *i += 6;
    return 0;
}

/* Decode the next unit of a scanned string's body s[*i..end) into out (up to 4 bytes). */
static size_t json_edit_unit(const char *s, size_t *i, size_t end, char *out)
{
    if (s[*i] != '\\') {
        out[0] = s[(*i)++];
        return 1;
    }
    char e = s[*i + 1];
    if (e != 'u') {
        *i += 2;
        switch (e) {
        case 'b':
            out[0] = '\b';
            break;
        case 'f':
            out[0] = '\f';
            break;
        case 'n':
            out[0] = '\n';
            break;
        case 'r':
            out[0] = '\r';
            break;
        case 't':
            out[0] = '\t';
            break;
        default:
            out[0] = e; /* \" \\ \/ and Ruby's lenient "\x" = "x" */
        }
        return 1;
    }
    unsigned cp = 0, lo = 0;
    json_edit_u4(s, i, end, &cp); /* the scanner checked the four hex digits */
    if (cp >= 0xd800 && cp < 0xdc00) {
        size_t j = *i;
        if (json_edit_u4(s, &j, end, &lo) == 0 && lo >= 0xdc00 && lo < 0xe000) {
            *i = j;
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        } else {
            cp = 0xfffd;
        }
    } else if (cp >= 0xdc00 && cp < 0xe000) {
        cp = 0xfffd;
    }
    return json_edit_utf8(cp, out);
}

int json_edit_key_eq(const char *text, struct json_span keyspan, const char *key, size_t keylen)
{
    if (keyspan.len < 2 || text[keyspan.off] != '"')
        return 0;
    size_t i = keyspan.off + 1, end = keyspan.off + keyspan.len - 1, k = 0;
    /* Fast path: no escapes, compare directly. */
    if (!memchr(text + i, '\\', end - i))
        return end - i == keylen && memcmp(text + i, key, keylen) == 0;
    while (i < end) {
        char unit[4];
        size_t n = json_edit_unit(text, &i, end, unit);
        if (k + n > keylen || memcmp(key + k, unit, n) != 0)
            return 0;
        k += n;
    }
    return k == keylen;
}

int json_edit_find(const char *text, size_t len, const char *key, struct json_span *out, char *err,
                   size_t errcap)
{
    struct object obj;
    if (object_scan(text, len, &obj, key, err, errcap))
        return -1;
    if (obj.found)
        *out = obj.found_value;
    return obj.found;
}

/* What happens to each member: keep, replace (with field), delete. */
struct member_edit {
    const struct json_edit_field *field; /* replacement; NULL = keep */
    int deleted;
};

/* Fields to append, in first-mention order; a later field for the same key wins. */
static void append_add(const struct json_edit_field **list, size_t *n,
                       const struct json_edit_field *f)
{
    for (size_t i = 0; i < *n; i++) {
        if (strcmp(list[i]->key, f->key) == 0) {
            if (f->value) {
                list[i] = f;
            } else {
                memmove(list + i, list + i + 1, (*n - i - 1) * sizeof *list);
                (*n)--;
            }
            return;
        }
    }
    if (f->value)
        list[(*n)++] = f;
}

static void plan_edits(const struct object *obj, const char *text,
                       const struct json_edit_field *fields, size_t n, struct member_edit *edits,
                       const struct json_edit_field **append, size_t *nappend)
{
    for (size_t f = 0; f < n; f++) {
        size_t keylen = strlen(fields[f].key);
        long last = -1;
        for (size_t i = 0; i < obj->n; i++) {
            if (!json_edit_key_eq(text, obj->members[i].key, fields[f].key, keylen))
                continue;
            if (!fields[f].value)
                edits[i].deleted = 1;
            else if (!edits[i].deleted)
                last = (long)i;
        }
        if (last >= 0)
            edits[last].field = &fields[f];
        else
            append_add(append, nappend, &fields[f]);
    }
}

char *json_edit_set(const char *text, size_t len, const struct json_edit_field *fields, size_t n,
                    size_t *out_len, char *err, size_t errcap)
{
    struct object obj;
    if (object_scan(text, len, &obj, NULL, err, errcap))
        return NULL;
    struct member_edit *edits = xcalloc(obj.n + 1, sizeof *edits);
    const struct json_edit_field **append = xcalloc(n + 1, sizeof *append);
    size_t nappend = 0;
    plan_edits(&obj, text, fields, n, edits, append, &nappend);

    struct buf b = BUF_INIT;
    buf_reserve(&b, len + 64);
    size_t body_end =
        obj.n ? obj.members[obj.n - 1].value.off + obj.members[obj.n - 1].value.len : obj.close_off;
    buf_append(&b, text, obj.n ? obj.members[0].key.off : obj.close_off);
    int emitted = 0;
    for (size_t i = 0; i < obj.n; i++) {
        const struct json_member *m = &obj.members[i];
        if (edits[i].deleted)
            continue;
        if (emitted) {
            size_t sep = m[-1].value.off + m[-1].value.len;
            buf_append(&b, text + sep, m->key.off - sep);
        }
        buf_append(&b, text + m->key.off, m->value.off - m->key.off);
        if (edits[i].field)
            buf_append(&b, edits[i].field->value, edits[i].field->value_len);
        else
            buf_append(&b, text + m->value.off, m->value.len);
        emitted = 1;
    }
    for (size_t i = 0; i < nappend; i++) {
        if (emitted)
            buf_append(&b, ",", 1);
        buf_json_string(&b, append[i]->key, strlen(append[i]->key));
        buf_append(&b, ":", 1);
        buf_append(&b, append[i]->value, append[i]->value_len);
        emitted = 1;
    }
    buf_append(&b, text + body_end, len - body_end);
    free(edits);
    free(append);
    free(obj.members);
    *out_len = b.len;
    return buf_steal(&b);
}

char *json_edit_string_decode(const char *text, struct json_span span, size_t *out_len)
{
    if (span.len < 2 || text[span.off] != '"' || text[span.off + span.len - 1] != '"')
        return NULL;
    size_t i = span.off + 1, end = span.off + span.len - 1;
    char *out = xmalloc(end - i + 1);
    size_t k = 0;
    while (i < end) {
        char unit[4];
        size_t n = json_edit_unit(text, &i, end, unit);
        memcpy(out + k, unit, n); /* a unit never takes more output than input bytes */
        k += n;
    }
    out[k] = '\0';
    if (out_len)
        *out_len = k;
    return out;
}
