/* buf: growable NUL-terminated byte buffer (see buf.h). */
#include "buf.h"
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "xalloc.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

void buf_reserve(struct buf *b, size_t extra)
{
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap *= 2;
    b->data = xrealloc(b->data, cap);
    b->cap = cap;
}

void buf_append(struct buf *b, const void *p, size_t len)
{
    buf_reserve(b, len);
    if (len)
        memcpy(b->data + b->len, p, len);
    b->len += len;
    b->data[b->len] = '\0';
}

void buf_puts(struct buf *b, const char *s)
{
    buf_append(b, s, strlen(s));
}

void buf_printf(struct buf *b, const char *fmt, ...)
{
    va_list ap, ap2;
    va_start(ap, fmt);
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n > 0) {
        buf_reserve(b, (size_t)n);
        vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap2);
        b->len += (size_t)n;
    }
    va_end(ap2);
}

/* 1 when one of the 8 bytes of w is below 0x20, '"' or '\\' (bit tricks: a byte b < n
 * iff b - n borrows with b's top bit clear; a byte equals c iff (b ^ c) is zero). */
static inline int buf_word_needs_escape(uint64_t w)
{
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    uint64_t ctl = (w - ones * 0x20) & ~w & highs;
    uint64_t q = w ^ (ones * '"'), bs = w ^ (ones * '\\');
    return ((ctl | ((q - ones) & ~q & highs) | ((bs - ones) & ~bs & highs)) != 0);
}

size_t buf_json_plain_words(const char *s, size_t len)
{
    size_t i = 0;
    uint64_t w;
#if defined(__SSE2__)
    /* 16 bytes at a time: a byte needs an escape when it equals '"' or '\\' or
     * min(byte, 0x1f) == byte (unsigned: below 0x20). Stops at the 16-byte block holding
     * one, a multiple of 8; the word loop below then stops at its 8-byte word. */
    const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\');
    const __m128i ctl = _mm_set1_epi8(0x1f);
    for (; i + 16 <= len; i += 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(s + i));
        __m128i m = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, bslash)),
                                 _mm_cmpeq_epi8(_mm_min_epu8(v, ctl), v));
        if (_mm_movemask_epi8(m))
            break;
    }
#endif
    while (i + 8 <= len && (memcpy(&w, s + i, 8), !buf_word_needs_escape(w)))
        i += 8;
    return i;
}

/* Runs that need no escape (nearly all of a webhook body) are skipped 8 bytes at a time. */
void buf_json_string(struct buf *b, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    buf_reserve(b, len + 2);
    buf_append(b, "\"", 1);
    size_t start = 0, i = 0;
    for (;;) {
        i += buf_json_plain_words(s + i, len - i);
        if (i >= len)
            break;
        unsigned char c = (unsigned char)s[i++];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        buf_append(b, s + start, i - 1 - start);
        start = i;
        switch (c) {
        case '"':
            buf_append(b, "\\\"", 2);
            break;
        case '\\':
            buf_append(b, "\\\\", 2);
            break;
        case '\n':
            buf_append(b, "\\n", 2);
            break;
        case '\r':
            buf_append(b, "\\r", 2);
            break;
        case '\t':
            buf_append(b, "\\t", 2);
            break;
        default: {
            char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            buf_append(b, u, 6);
        }
        }
    }
    buf_append(b, s + start, len - start);
    buf_append(b, "\"", 1);
}

void buf_reset(struct buf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

char *buf_steal(struct buf *b)
{
    char *p = b->data ? b->data : xstrdup("");
    b->data = NULL;
    b->len = b->cap = 0;
    return p;
}

void buf_free(struct buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

void buf_json_real(struct buf *b, double v, int digits)
{
    if (!isfinite(v))
        v = 0;
    if (digits < 1 || digits > 17)
        digits = 17;
    char tmp[40];
    snprintf(tmp, sizeof tmp, "%.*g", digits, v);
    char *e = strchr(tmp, 'e');
    if (e) { /* "1e+300" -> "1e300", "1e-07" -> "1e-7" */
        char *to = e + 1 + (e[1] == '-'), *from = to + (*to == '+');
        while (*from == '0' && from[1])
            from++;
        memmove(to, from, strlen(from) + 1);
    }
    buf_puts(b, tmp);
    if (!strpbrk(tmp, ".e"))
        buf_append(b, ".0", 2);
}

int buf_read_file(struct buf *b, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        buf_append(b, chunk, n);
    int failed = ferror(f);
    fclose(f);
    if (failed) {
        errno = EIO;
        return -1;
    }
    return 0;
}
