/* xalloc: the one allocation seam. tierone is a daemon: running out of memory is fatal,
 * so every allocation goes through these wrappers, which abort with a message instead of
 * returning NULL. Callers never check for NULL. */
#ifndef TIERONE_XALLOC_H
#define TIERONE_XALLOC_H

#include <stddef.h>

/* malloc that never returns NULL (aborts on OOM). */
void *xmalloc(size_t n);
/* calloc that never returns NULL. */
void *xcalloc(size_t count, size_t size);
/* realloc that never returns NULL. */
void *xrealloc(void *p, size_t n);
/* strdup that never returns NULL; xstrdup(NULL) returns NULL. */
char *xstrdup(const char *s);
/* copy of the first n bytes of s, NUL-terminated. */
char *xstrndup(const char *s, size_t n);
/* printf into a new heap string. */
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
