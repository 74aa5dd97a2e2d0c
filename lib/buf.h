/* buf: a growable byte buffer, always NUL-terminated. The owner of the struct owns the
 * bytes; buf_free releases them. Used for JSON building, HTTP bodies and metrics text. */
#ifndef TIERONE_BUF_H
#define TIERONE_BUF_H

#include <stddef.h>

struct buf {
    char *data; /* NUL-terminated; NULL until the first append */
    size_t len;
    size_t cap;
};

#define BUF_INIT                                                                                   \
    {                                                                                              \
        NULL, 0, 0                                                                                 \
    }

/* Make room for `extra` more bytes (plus the NUL). */
void buf_reserve(struct buf *b, size_t extra);
/* Append len bytes. */
void buf_append(struct buf *b, const void *p, size_t len);
/* Append a NUL-terminated string. */
void buf_puts(struct buf *b, const char *s);
/* Append printf output. */
void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* How many leading bytes of s[0..len) need no JSON escape, counted 8 at a time: a multiple
 * of 8 that stops before the first 8-byte word holding a '"', a '\\' or a control byte
 * (the caller reads on from there a byte at a time). JSON writers and scanners share it. */
size_t buf_json_plain_words(const char *s, size_t len);
/* Append s as a quoted JSON string (with escapes). */
void buf_json_string(struct buf *b, const char *s, size_t len);
/* Append v as a JSON real with `digits` significant digits (1..17), written as jansson
 * writes one: with a ".0" when it would otherwise read back as an integer. A NaN or an
 * infinity (which JSON cannot hold) appends 0.0. */
void buf_json_real(struct buf *b, double v, int digits);
/* Append the whole file at path. Returns 0, or -1 with errno set (the buffer may then hold
 * part of the file). */
int buf_read_file(struct buf *b, const char *path);
/* Forget the contents but keep the memory. */
void buf_reset(struct buf *b);
/* Hand the bytes to the caller (who frees them); the buffer becomes empty. Never NULL. */
char *buf_steal(struct buf *b);
/* Release the memory. */
void buf_free(struct buf *b);

#endif
