/* spool_adopt: spool file names per process and the start-up move of orphaned spools. */
#include "spool_adopt.h"
#include "log.h"
#include "spool.h"
#include "xalloc.h"

#include <dirent.h>
#include <errno.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

char *spool_adopt_own_path(const char *base, unsigned processes, unsigned index)
{
    if (processes <= 1)
        return xstrdup(base);
    return xasprintf("%s.%u", base, index);
}

int spool_adopt_is_orphan(const char *base, unsigned processes, const char *path)
{
    size_t n = strlen(base);
    if (strncmp(path, base, n) != 0)
        return 0;
    const char *suffix = path + n;
    if (!*suffix)
        return processes > 1;
    if (*suffix != '.' || !suffix[1] || strspn(suffix + 1, "0123456789") != strlen(suffix + 1))
        return 0;
    if (processes <= 1)
        return 1;
    /* owned: exactly the decimal spelling of 1..processes */
    const char *digits = suffix + 1;
    if (digits[0] == '0' || strlen(digits) > 9)
        return 1;
    unsigned long k = strtoul(digits, NULL, 10);
    return k < 1 || k > processes;
}

/* Shorter suffixes first (numeric order for digits without leading zeros), base first. */
static int spool_adopt_cmp(const void *a, const void *b)
{
    const char *x = *(const char *const *)a, *y = *(const char *const *)b;
    size_t lx = strlen(x), ly = strlen(y);
    if (lx != ly)
        return lx < ly ? -1 : 1;
    return strcmp(x, y);
}

/* The orphans of base, sorted; *n of them (heap array of heap strings). */
static char **spool_adopt_list(const char *base, unsigned processes, size_t *n)
{
    char *dcopy = xstrdup(base), *bcopy = xstrdup(base);
    const char *dir = dirname(dcopy), *name = basename(bcopy);
    size_t namelen = strlen(name), cap = 0;
    char **list = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d)
        goto out;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, name, namelen) != 0)
            continue;
        char *path = xasprintf("%s%s", base, e->d_name + namelen);
        if (!spool_adopt_is_orphan(base, processes, path)) {
            free(path);
            continue;
        }
        if (*n == cap) {
            cap = cap ? cap * 2 : 8;
            list = xrealloc(list, cap * sizeof *list);
        }
        list[(*n)++] = path;
    }
    closedir(d);
    if (*n)
        qsort(list, *n, sizeof *list, spool_adopt_cmp);
out:
    free(dcopy);
    free(bcopy);
    return list;
}

struct spool_adopt_wait {
    size_t pending;
    int status; /* first failure (negative errno), else 0 */
};

static void spool_adopt_on_append(int status, void *data)
{
    struct spool_adopt_wait *w = data;
    w->pending--;
    if (status && !w->status)
        w->status = status;
}

static void spool_adopt_on_closed(void *data)
{
    (void)data;
}

/* Move one orphan's records onto own. Returns records moved, or -1 with err set when the
 * own spool failed (the orphan keeps what was not moved); -2 when the orphan was skipped. */
static long long spool_adopt_one(uv_loop_t *loop, struct spool *own, const char *path, char *err,
                                 size_t errcap)
{
    char oerr[512];
    struct spool_open_info info;
    struct spool *o = spool_open(loop, path, 0, &info, oerr, sizeof oerr);
    if (!o) {
        log_warn("ingest: leaving spool %s alone: %s", path, oerr);
        return -2;
    }
    long long moved = 0;
    for (;;) {
        const char *recs[SPOOL_PEEK_MAX];
        size_t lens[SPOOL_PEEK_MAX];
        int n = spool_peek_n(o, SPOOL_PEEK_MAX, 4u << 20, recs, lens, oerr, sizeof oerr);
        if (n < 0) {
            log_warn("ingest: spool %s: %s; the rest of it is left alone", path, oerr);
            moved = moved ? moved : -2;
            goto out;
        }
        if (n == 0) {
            if (unlink(path) != 0)
                log_warn("ingest: cannot remove the drained spool %s: %s", path, strerror(errno));
            goto out;
        }
        struct spool_adopt_wait w = {0, 0};
        for (int i = 0; i < n; i++) {
            if (spool_append(own, recs[i], lens[i], spool_adopt_on_append, &w, err, errcap) != 0) {
                uv_run(loop, UV_RUN_DEFAULT); /* let the accepted appends finish */
                moved = -1;
                goto out;
            }
            w.pending++;
        }
        uv_run(loop, UV_RUN_DEFAULT);
        if (w.pending || w.status) {
            snprintf(err, errcap, "spool %s: cannot write: %s", spool_path(own),
                     uv_strerror(w.status ? w.status : UV_EIO));
            moved = -1;
            goto out;
        }
        if (spool_pop(o, oerr, sizeof oerr) != 0) {
            /* the records are in own now; left in the orphan too, they come again later */
            log_warn("ingest: spool %s: %s", path, oerr);
            goto out;
        }
        moved += n;
    }
out:
    spool_close(o, spool_adopt_on_closed, NULL);
    uv_run(loop, UV_RUN_DEFAULT);
    return moved;
}

long long spool_adopt_orphans(const char *base, unsigned processes, const char *own_path,
                              uint64_t max_bytes, char *err, size_t errcap)
{
    size_t n = 0;
    char **list = spool_adopt_list(base, processes, &n);
    long long total = 0;
    if (!n)
        goto out;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct spool *own = spool_open(&loop, own_path, max_bytes, NULL, err, errcap);
    if (!own) {
        total = -1;
    } else {
        for (size_t i = 0; i < n; i++) {
            long long m = spool_adopt_one(&loop, own, list[i], err, errcap);
            if (m == -1) {
                total = -1;
                break;
            }
            if (m > 0) {
                log_info("ingest: moved %lld job(s) from the spool %s (no process owns it) to %s",
                         m, list[i], own_path);
                total += m;
            }
        }
        spool_close(own, spool_adopt_on_closed, NULL);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop) != 0)
        log_error("ingest: spool adoption left handles open");
out:
    for (size_t i = 0; i < n; i++)
        free(list[i]);
    free(list);
    return total;
}
