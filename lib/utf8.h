/* utf8: strict UTF-8, as JSON, PostgreSQL and every API we call require it. */
#ifndef TIERONE_UTF8_H
#define TIERONE_UTF8_H

#include <stddef.h>

/* Check that len bytes are strict UTF-8 (no overlong forms, surrogates or code points past
 * U+10FFFF). Returns 0, or -1 with *bad_at (when not NULL) set to the offset of the first
 * byte of the first invalid sequence. */
int utf8_check(const char *s, size_t len, size_t *bad_at);

/* Number of code points in len bytes of valid UTF-8 (continuation bytes not counted). */
size_t utf8_count(const char *s, size_t len);

#endif
