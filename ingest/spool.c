/* spool: crash-safe FIFO file with group-committed appends (see spool.h).
 *
 * Offsets: [SPOOL_HEADER_LEN, head) is removed, [head, durable_end) holds durable records
 * (durable_records of them), and a batch being written covers [durable_end, ...). At most
 * one batch is written at a time (inflight); appends made meanwhile collect in `next`. */
#include "spool.h"
#include "buf.h"
#include "log.h"
#include "xalloc.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

static const char spool_magic[8] = {'T', 'R', 'S', 'P', 'O', 'O', 'L', '1'};

struct spool_waiter {
    spool_append_cb cb;
    void *data;
};

/* Records appended together and written with one pwrite + fdatasync. */
struct spool_batch {
    uv_work_t work;
    struct spool *sp;
    struct buf bytes;
    uint64_t offset; /* where the batch goes */
    int status;      /* 0 or -errno, set by the worker thread */
    size_t n;
    struct spool_waiter *waiters;
};

struct spool {
    uv_loop_t *loop;
    char *path;
    int fd;
    uint64_t max_bytes;
    uint64_t head;
    uint64_t durable_end;
    uint64_t durable_records;
    struct spool_batch *inflight;
    struct spool_batch *next;
    struct buf peek;     /* the records the last peek returned, back to back */
    uint64_t peek_total; /* their size on disk, headers included; 0 = no peek */
    uint64_t peek_count; /* records the last peek returned */
    int closing;
    spool_closed_cb closed_cb;
    void *closed_data;
    uv_fs_t close_req;
};

static void spool_start_batch(struct spool *sp);
static void spool_finish_close(struct spool *sp);

/* ---- CRC-32 ----------------------------------------------------------------------------- */

uint32_t spool_crc32(uint32_t crc, const void *data, size_t len)
{
    static uint32_t table[256];
    static int ready;
    if (!ready) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++)
                c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            table[i] = c;
        }
        ready = 1;
    }
    const unsigned char *p = data;
    crc = ~crc;
    while (len--)
        crc = table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

/* ---- little-endian helpers -------------------------------------------------------------- */

static void spool_put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t spool_get32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void spool_put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t spool_get64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* The record header's CRC covers the 4 length bytes and the payload. */
static uint32_t spool_record_crc(const unsigned char lenbytes[4], const void *payload, size_t len)
{
    return spool_crc32(spool_crc32(0, lenbytes, 4), payload, len);
}

/* ---- blocking file I/O (open, scan, head updates) ----------------------------------------- */

static int spool_pread_full(int fd, void *buf, size_t len, uint64_t off)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = pread(fd, (char *)buf + got, len - got, (off_t)(off + got));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        got += (size_t)n;
    }
    return 0;
}

static int spool_pwrite_full(int fd, const void *buf, size_t len, uint64_t off)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = pwrite(fd, (const char *)buf + done, len - done, (off_t)(off + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        done += (size_t)n;
    }
    return 0;
}

static int spool_write_head(struct spool *sp, uint64_t head)
{
    unsigned char b[8];
    spool_put64(b, head);
    return spool_pwrite_full(sp->fd, b, sizeof b, 8);
}

/* fsync the directory holding path, so a newly created file survives a power loss. */
static void spool_sync_dir(const char *path)
{
    char *copy = xstrdup(path);
    int dfd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    free(copy);
}

/* A new or empty file gets a header. */
static int spool_init_file(struct spool *sp, char *err, size_t errcap)
{
    unsigned char h[SPOOL_HEADER_LEN];
    memcpy(h, spool_magic, sizeof spool_magic);
    spool_put64(h + 8, SPOOL_HEADER_LEN);
    if (spool_pwrite_full(sp->fd, h, sizeof h, 0) != 0 || fdatasync(sp->fd) != 0) {
        snprintf(err, errcap, "spool %s: cannot write header: %s", sp->path, strerror(errno));
        return -1;
    }
    spool_sync_dir(sp->path);
    sp->head = sp->durable_end = SPOOL_HEADER_LEN;
    return 0;
}

/* Check the record at off (file size `size`); returns its size on disk, or 0 if torn. */
static uint64_t spool_check_record(struct spool *sp, uint64_t off, uint64_t size, struct buf *tmp)
{
    unsigned char h[SPOOL_RECORD_OVERHEAD];
    if (size - off < sizeof h || spool_pread_full(sp->fd, h, sizeof h, off) != 0)
        return 0;
    uint32_t len = spool_get32(h);
    if (len == 0 || len > SPOOL_MAX_RECORD || size - off - sizeof h < len)
        return 0;
    buf_reset(tmp);
    buf_reserve(tmp, len);
    if (spool_pread_full(sp->fd, tmp->data, len, off + sizeof h) != 0)
        return 0;
    if (spool_record_crc(h, tmp->data, len) != spool_get32(h + 4))
        return 0;
    return sizeof h + (uint64_t)len;
}

/* Walk the records from head; cut off a torn tail. */
static int spool_scan(struct spool *sp, uint64_t size, struct spool_open_info *info, char *err,
                      size_t errcap)
{
    struct buf tmp = BUF_INIT;
    uint64_t off = sp->head;
    uint64_t n = 0;
    for (;;) {
        if (off == size)
            break;
        uint64_t rec = spool_check_record(sp, off, size, &tmp);
        if (!rec) {
            log_warn("spool %s: torn or corrupt record at byte %llu; skipping the last %llu "
                     "bytes (a write cut short by a crash is never replayed)",
                     sp->path, (unsigned long long)off, (unsigned long long)(size - off));
            info->torn_bytes = size - off;
            if (ftruncate(sp->fd, (off_t)off) != 0 || fdatasync(sp->fd) != 0) {
                snprintf(err, errcap, "spool %s: cannot cut off torn record: %s", sp->path,
                         strerror(errno));
                buf_free(&tmp);
                return -1;
            }
            break;
        }
        off += rec;
        n++;
    }
    buf_free(&tmp);
    sp->durable_end = off;
    sp->durable_records = n;
    info->records = n;
    return 0;
}

/* Read the header of an existing file and scan it. */
static int spool_load(struct spool *sp, uint64_t size, struct spool_open_info *info, char *err,
                      size_t errcap)
{
    unsigned char h[SPOOL_HEADER_LEN];
    if (size < SPOOL_HEADER_LEN || spool_pread_full(sp->fd, h, sizeof h, 0) != 0 ||
        memcmp(h, spool_magic, sizeof spool_magic) != 0) {
        snprintf(err, errcap, "spool %s: not a tierone spool file (refusing to overwrite it)",
                 sp->path);
        return -1;
    }
    sp->head = spool_get64(h + 8);
    if (sp->head < SPOOL_HEADER_LEN || sp->head > size) {
        /* Only a crash between the cut-back and the head rewrite leaves head past the end:
         * everything had been removed. */
        log_warn("spool %s: head %llu beyond the file (%llu bytes); nothing left to drain",
                 sp->path, (unsigned long long)sp->head, (unsigned long long)size);
        if (ftruncate(sp->fd, SPOOL_HEADER_LEN) != 0 ||
            spool_write_head(sp, SPOOL_HEADER_LEN) != 0) {
            snprintf(err, errcap, "spool %s: cannot reset: %s", sp->path, strerror(errno));
            return -1;
        }
        sp->head = SPOOL_HEADER_LEN;
        size = SPOOL_HEADER_LEN;
    }
    return spool_scan(sp, size, info, err, errcap);
}

struct spool *spool_open(uv_loop_t *loop, const char *path, uint64_t max_bytes,
                         struct spool_open_info *info, char *err, size_t errcap)
{
    struct spool_open_info scratch;
    if (!info)
        info = &scratch;
    memset(info, 0, sizeof *info);
    struct spool *sp = xcalloc(1, sizeof *sp);
    sp->loop = loop;
    sp->path = xstrdup(path);
    sp->max_bytes = max_bytes;
    sp->fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (sp->fd < 0) {
        snprintf(err, errcap, "spool %s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    if (flock(sp->fd, LOCK_EX | LOCK_NB) != 0) {
        snprintf(err, errcap, "spool %s: %s", path,
                 errno == EWOULDBLOCK ? "in use by another process (one spool file per process)"
                                      : strerror(errno));
        goto fail;
    }
    struct stat st;
    if (fstat(sp->fd, &st) != 0) {
        snprintf(err, errcap, "spool %s: stat: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, errcap, "spool %s: not a regular file", path);
        goto fail;
    }
    int rc = st.st_size == 0 ? spool_init_file(sp, err, errcap)
                             : spool_load(sp, (uint64_t)st.st_size, info, err, errcap);
    if (rc != 0)
        goto fail;
    return sp;
fail:
    if (sp->fd >= 0)
        close(sp->fd);
    free(sp->path);
    free(sp);
    return NULL;
}

/* ---- appends ----------------------------------------------------------------------------- */

static uint64_t spool_batch_bytes(const struct spool_batch *b)
{
    return b ? b->bytes.len : 0;
}

uint64_t spool_bytes(const struct spool *sp)
{
    return sp->durable_end + spool_batch_bytes(sp->inflight) + spool_batch_bytes(sp->next);
}

int spool_append(struct spool *sp, const void *rec, size_t len, spool_append_cb cb, void *data,
                 char *err, size_t errcap)
{
    if (sp->closing) {
        snprintf(err, errcap, "spool is closing");
        return -1;
    }
    if (len == 0 || len > SPOOL_MAX_RECORD) {
        snprintf(err, errcap, "spool record of %zu bytes (1 to %u allowed)", len, SPOOL_MAX_RECORD);
        return -1;
    }
    if (sp->max_bytes && spool_bytes(sp) + SPOOL_RECORD_OVERHEAD + len > sp->max_bytes) {
        snprintf(err, errcap, "spool full (%llu bytes)", (unsigned long long)sp->max_bytes);
        return -1;
    }
    if (!sp->next) {
        sp->next = xcalloc(1, sizeof *sp->next);
        sp->next->sp = sp;
    }
    struct spool_batch *b = sp->next;
    unsigned char h[SPOOL_RECORD_OVERHEAD];
    spool_put32(h, (uint32_t)len);
    spool_put32(h + 4, spool_record_crc(h, rec, len));
    buf_append(&b->bytes, h, sizeof h);
    buf_append(&b->bytes, rec, len);
    b->waiters = xrealloc(b->waiters, (b->n + 1) * sizeof *b->waiters);
    b->waiters[b->n++] = (struct spool_waiter){cb, data};
    spool_start_batch(sp);
    return 0;
}

/* Worker thread: write the batch, make it durable, or undo a partial write. */
static void spool_batch_work(uv_work_t *w)
{
    struct spool_batch *b = w->data;
    int fd = b->sp->fd;
    if (spool_pwrite_full(fd, b->bytes.data, b->bytes.len, b->offset) != 0 || fdatasync(fd) != 0) {
        b->status = -errno;
        /* Best effort: a partial record left behind is skipped as torn when read. */
        if (ftruncate(fd, (off_t)b->offset) != 0)
            b->status = b->status ? b->status : -errno;
    }
}

static void spool_batch_free(struct spool_batch *b)
{
    buf_free(&b->bytes);
    free(b->waiters);
    free(b);
}

/* Loop thread: account for the batch, tell its waiters, start the next one. */
static void spool_batch_done(uv_work_t *w, int status)
{
    struct spool_batch *b = w->data;
    struct spool *sp = b->sp;
    if (status != 0 && b->status == 0)
        b->status = status; /* cancelled: cannot happen (never cancelled), but be safe */
    sp->inflight = NULL;
    if (b->status == 0) {
        sp->durable_end += b->bytes.len;
        sp->durable_records += b->n;
    } else {
        log_error("spool %s: write of %zu record(s) failed: %s", sp->path, b->n,
                  uv_strerror(b->status));
    }
    for (size_t i = 0; i < b->n; i++)
        b->waiters[i].cb(b->status, b->waiters[i].data);
    spool_batch_free(b);
    spool_start_batch(sp);
    if (sp->closing && !sp->inflight)
        spool_finish_close(sp);
}

static void spool_start_batch(struct spool *sp)
{
    if (sp->inflight || !sp->next)
        return;
    struct spool_batch *b = sp->next;
    sp->next = NULL;
    b->offset = sp->durable_end;
    b->work.data = b;
    sp->inflight = b;
    int rc = uv_queue_work(sp->loop, &b->work, spool_batch_work, spool_batch_done);
    if (rc != 0) { /* cannot happen with a valid loop; fail the batch inline */
        b->status = rc;
        spool_batch_done(&b->work, 0);
    }
}

/* ---- draining ---------------------------------------------------------------------------- */

/* A record that checked at open or at write time no longer does: the disk lied. Drop the
 * rest rather than replay garbage. */
static void spool_drop_rest(struct spool *sp, const char *why)
{
    log_error("spool %s: %s at byte %llu; dropping the %llu record(s) left", sp->path, why,
              (unsigned long long)sp->head, (unsigned long long)sp->durable_records);
    sp->head = sp->durable_end;
    sp->durable_records = 0;
    (void)spool_write_head(sp, sp->head);
}

/* Read the record at off into sp->peek (appended); its payload length to *len. 1 if read,
 * 0 if it does not check (dropped with the rest of the file when drop is set), -1 on a read
 * error (reason in err). */
static int spool_read_record(struct spool *sp, uint64_t off, size_t *len, int drop, char *err,
                             size_t errcap)
{
    unsigned char h[SPOOL_RECORD_OVERHEAD];
    if (spool_pread_full(sp->fd, h, sizeof h, off) != 0) {
        snprintf(err, errcap, "spool %s: read: %s", sp->path, strerror(errno));
        return -1;
    }
    uint32_t n = spool_get32(h);
    if (n == 0 || n > SPOOL_MAX_RECORD || sp->durable_end - off - sizeof h < n) {
        if (drop) {
            spool_drop_rest(sp, "bad record length");
            snprintf(err, errcap, "spool %s: bad record length", sp->path);
        }
        return 0;
    }
    buf_reserve(&sp->peek, n);
    char *data = sp->peek.data + sp->peek.len;
    if (spool_pread_full(sp->fd, data, n, off + sizeof h) != 0) {
        snprintf(err, errcap, "spool %s: read: %s", sp->path, strerror(errno));
        return -1;
    }
    if (spool_record_crc(h, data, n) != spool_get32(h + 4)) {
        if (drop) {
            spool_drop_rest(sp, "CRC mismatch");
            snprintf(err, errcap, "spool %s: CRC mismatch", sp->path);
        }
        return 0;
    }
    sp->peek.len += n;
    sp->peek.data[sp->peek.len] = '\0';
    *len = n;
    return 1;
}

int spool_peek_n(struct spool *sp, size_t max, size_t max_bytes, const char **recs, size_t *lens,
                 char *err, size_t errcap)
{
    size_t k = 0, off[SPOOL_PEEK_MAX];
    uint64_t pos = sp->head;
    sp->peek_total = 0;
    sp->peek_count = 0;
    buf_reset(&sp->peek);
    if (max > SPOOL_PEEK_MAX)
        max = SPOOL_PEEK_MAX;
    while (k < max && k < sp->durable_records && (k == 0 || sp->peek.len < max_bytes)) {
        size_t at = sp->peek.len, n = 0;
        /* A problem with the first record is reported (and a bad one dropped); one further
         * on ends this peek and is met as the first record of a later one. */
        int rc = spool_read_record(sp, pos, &n, k == 0, err, errcap);
        if (rc <= 0) {
            if (k == 0)
                return -1;
            break;
        }
        off[k] = at;
        lens[k++] = n;
        pos += SPOOL_RECORD_OVERHEAD + (uint64_t)n;
    }
    for (size_t i = 0; i < k; i++)
        recs[i] = sp->peek.data + off[i];
    sp->peek_total = pos - sp->head;
    sp->peek_count = k;
    return (int)k;
}

int spool_peek(struct spool *sp, const char **rec, size_t *len, char *err, size_t errcap)
{
    return spool_peek_n(sp, 1, 0, rec, len, err, errcap);
}

/* Everything removed and nothing being written: cut the file back to its header. The cut
 * comes first, so a crash in between leaves head past the end (read as "all removed"),
 * never an old head in front of old records. */
static void spool_compact(struct spool *sp)
{
    if (sp->head != sp->durable_end || sp->inflight || sp->next || sp->closing)
        return;
    if (sp->head == SPOOL_HEADER_LEN)
        return;
    if (ftruncate(sp->fd, SPOOL_HEADER_LEN) != 0 || spool_write_head(sp, SPOOL_HEADER_LEN) != 0) {
        log_warn("spool %s: cannot cut back: %s", sp->path, strerror(errno));
        return;
    }
    sp->head = sp->durable_end = SPOOL_HEADER_LEN;
}

int spool_pop(struct spool *sp, char *err, size_t errcap)
{
    if (!sp->peek_total || sp->durable_records < sp->peek_count) {
        snprintf(err, errcap, "spool_pop without a record");
        return -1;
    }
    uint64_t head = sp->head + sp->peek_total;
    if (spool_write_head(sp, head) != 0) {
        snprintf(err, errcap, "spool %s: cannot write head: %s", sp->path, strerror(errno));
        return -1;
    }
    sp->head = head;
    sp->durable_records -= sp->peek_count;
    sp->peek_total = 0;
    sp->peek_count = 0;
    spool_compact(sp);
    return 0;
}

uint64_t spool_depth(const struct spool *sp)
{
    uint64_t n = sp->durable_records;
    if (sp->inflight)
        n += sp->inflight->n;
    if (sp->next)
        n += sp->next->n;
    return n;
}

int spool_empty(const struct spool *sp)
{
    return spool_depth(sp) == 0;
}

const char *spool_path(const struct spool *sp)
{
    return sp->path;
}

/* ---- close -------------------------------------------------------------------------------- */

static void spool_on_closed(uv_fs_t *req)
{
    struct spool *sp = req->data;
    spool_closed_cb cb = sp->closed_cb;
    void *data = sp->closed_data;
    uv_fs_req_cleanup(req);
    buf_free(&sp->peek);
    free(sp->path);
    free(sp);
    if (cb)
        cb(data);
}

static void spool_finish_close(struct spool *sp)
{
    if (sp->inflight || sp->next)
        return;
    sp->close_req.data = sp;
    if (uv_fs_close(sp->loop, &sp->close_req, sp->fd, spool_on_closed) != 0) {
        close(sp->fd); /* cannot happen; finish anyway (cb then runs inline) */
        spool_on_closed(&sp->close_req);
    }
}

void spool_close(struct spool *sp, spool_closed_cb cb, void *data)
{
    if (sp->closing)
        return;
    spool_compact(sp);
    sp->closing = 1;
    sp->closed_cb = cb;
    sp->closed_data = data;
    if (!sp->inflight)
        spool_finish_close(sp);
}
