/* Tests for ingest/spool: durable appends in order, group commit, peek/pop across reopen,
 * cut-back when empty, torn and corrupt tails, a failing disk (RLIMIT_FSIZE standing in
 * for a full one), the size cap. Every test closes its loop with uv_loop_close() == 0. */
#include "log.h"
#include "spool.h"

#include <criterion/criterion.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

static uv_loop_t loop;
static char dir[64];
static char path[128];

/* Completed appends, in callback order. */
static int done_status[1024];
static intptr_t done_order[1024];
static int ndone;
static int closed;

static void setup(void)
{
    log_init("test", LOG_ERROR);
    cr_assert_eq(uv_loop_init(&loop), 0);
    snprintf(dir, sizeof dir, "/tmp/tierone-spool-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/ingest.spool", dir);
    ndone = 0;
    closed = 0;
}

static void teardown(void)
{
    unlink(path);
    rmdir(dir);
}

TestSuite(spool, .init = setup, .fini = teardown);

static void on_append(int status, void *data)
{
    done_status[ndone] = status;
    done_order[ndone] = (intptr_t)data;
    ndone++;
}

static void on_closed(void *data)
{
    closed++;
}

static struct spool *open_spool(uint64_t max, struct spool_open_info *info)
{
    char err[256] = "";
    struct spool *sp = spool_open(&loop, path, max, info, err, sizeof err);
    cr_assert_not_null(sp, "spool_open: %s", err);
    return sp;
}

static void close_spool(struct spool *sp)
{
    int before = closed;
    spool_close(sp, on_closed, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(closed, before + 1);
}

static void finish(void)
{
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&loop), 0);
}

static void append(struct spool *sp, const char *rec, intptr_t tag)
{
    char err[256] = "";
    cr_assert_eq(spool_append(sp, rec, strlen(rec), on_append, (void *)tag, err, sizeof err), 0,
                 "spool_append: %s", err);
}

/* Peek, compare, pop. */
static void expect_next(struct spool *sp, const char *want)
{
    const char *rec;
    size_t len;
    char err[256] = "";
    cr_assert_eq(spool_peek(sp, &rec, &len, err, sizeof err), 1, "peek: %s", err);
    cr_assert_eq(len, strlen(want));
    cr_assert_eq(memcmp(rec, want, len), 0, "got %.*s, want %s", (int)len, rec, want);
    cr_assert_eq(spool_pop(sp, err, sizeof err), 0, "pop: %s", err);
}

static void expect_empty(struct spool *sp)
{
    const char *rec;
    size_t len;
    char err[64];
    cr_assert_eq(spool_peek(sp, &rec, &len, err, sizeof err), 0);
}

static off_t file_size(void)
{
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    return st.st_size;
}

Test(spool, crc32_is_zlibs)
{
    cr_assert_eq(spool_crc32(0, "123456789", 9), 0xCBF43926u);
    cr_assert_eq(spool_crc32(spool_crc32(0, "1234", 4), "56789", 5), 0xCBF43926u);
    cr_assert_eq(spool_crc32(0, "", 0), 0u);
    finish();
}

Test(spool, new_file_has_only_a_header)
{
    struct spool *sp = open_spool(0, NULL);
    cr_assert_eq(file_size(), SPOOL_HEADER_LEN);
    cr_assert(spool_empty(sp));
    cr_assert_eq(spool_depth(sp), 0);
    expect_empty(sp);
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0600);
    close_spool(sp);
    finish();
}

Test(spool, appends_are_durable_in_order_and_group_committed)
{
    struct spool *sp = open_spool(0, NULL);
    char rec[32];
    for (int i = 0; i < 200; i++) {
        snprintf(rec, sizeof rec, "record-%03d", i);
        append(sp, rec, i);
    }
    cr_assert_eq(spool_depth(sp), 200, "pending appends count in the depth");
    cr_assert_not(spool_empty(sp));
    expect_empty(sp); /* nothing is durable before the loop ran */
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(ndone, 200);
    for (int i = 0; i < 200; i++) {
        cr_assert_eq(done_status[i], 0);
        cr_assert_eq(done_order[i], i, "callbacks run in append order");
    }
    cr_assert_eq(file_size(), SPOOL_HEADER_LEN + 200 * (SPOOL_RECORD_OVERHEAD + 10));
    for (int i = 0; i < 200; i++) {
        snprintf(rec, sizeof rec, "record-%03d", i);
        expect_next(sp, rec);
    }
    expect_empty(sp);
    cr_assert(spool_empty(sp));
    cr_assert_eq(file_size(), SPOOL_HEADER_LEN, "cut back to the header once empty");
    close_spool(sp);
    finish();
}

Test(spool, reopen_resumes_after_the_last_pop)
{
    struct spool *sp = open_spool(0, NULL);
    append(sp, "one", 1);
    append(sp, "two", 2);
    append(sp, "three", 3);
    uv_run(&loop, UV_RUN_DEFAULT);
    expect_next(sp, "one");
    close_spool(sp);

    struct spool_open_info info;
    sp = open_spool(0, &info);
    cr_assert_eq(info.records, 2);
    cr_assert_eq(info.torn_bytes, 0);
    cr_assert_eq(spool_depth(sp), 2);
    expect_next(sp, "two");
    append(sp, "four", 4);
    uv_run(&loop, UV_RUN_DEFAULT);
    expect_next(sp, "three");
    expect_next(sp, "four");
    expect_empty(sp);
    close_spool(sp);
    finish();
}

Test(spool, peek_without_pop_returns_the_same_record)
{
    struct spool *sp = open_spool(0, NULL);
    append(sp, "a", 1);
    append(sp, "b", 2);
    uv_run(&loop, UV_RUN_DEFAULT);
    const char *rec;
    size_t len;
    char err[64];
    cr_assert_eq(spool_peek(sp, &rec, &len, err, sizeof err), 1);
    cr_assert_eq(spool_peek(sp, &rec, &len, err, sizeof err), 1);
    cr_assert_eq(*rec, 'a', "a failed push leaves the record at the head");
    close_spool(sp);
    sp = open_spool(0, NULL);
    expect_next(sp, "a");
    expect_next(sp, "b");
    close_spool(sp);
    finish();
}

/* Write records, close, then damage the end of the file with fn. */
static void write_three(void)
{
    struct spool *sp = open_spool(0, NULL);
    append(sp, "first record", 1);
    append(sp, "second record", 2);
    append(sp, "third record", 3);
    uv_run(&loop, UV_RUN_DEFAULT);
    close_spool(sp);
}

Test(spool, torn_last_record_is_skipped_never_replayed)
{
    write_three();
    off_t full = file_size();
    cr_assert_eq(truncate(path, full - 3), 0); /* a write cut short by a crash */
    struct spool_open_info info;
    struct spool *sp = open_spool(0, &info);
    cr_assert_eq(info.records, 2);
    cr_assert_eq(info.torn_bytes, SPOOL_RECORD_OVERHEAD + strlen("third record") - 3);
    cr_assert_eq(file_size(), full - (off_t)(SPOOL_RECORD_OVERHEAD + strlen("third record")));
    append(sp, "fourth", 4); /* goes where the torn record was */
    uv_run(&loop, UV_RUN_DEFAULT);
    expect_next(sp, "first record");
    expect_next(sp, "second record");
    expect_next(sp, "fourth");
    expect_empty(sp);
    close_spool(sp);
    finish();
}

Test(spool, torn_record_header_is_skipped)
{
    write_three();
    int fd = open(path, O_WRONLY | O_APPEND);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, "\x05\x00\x00", 3), 3); /* half a record header */
    close(fd);
    struct spool_open_info info;
    struct spool *sp = open_spool(0, &info);
    cr_assert_eq(info.records, 3);
    cr_assert_eq(info.torn_bytes, 3);
    close_spool(sp);
    finish();
}

Test(spool, corrupt_last_record_is_skipped)
{
    write_three();
    off_t full = file_size();
    int fd = open(path, O_WRONLY);
    cr_assert_geq(fd, 0);
    cr_assert_eq(pwrite(fd, "X", 1, full - 2), 1); /* garbage where a page was not written */
    close(fd);
    struct spool_open_info info;
    struct spool *sp = open_spool(0, &info);
    cr_assert_eq(info.records, 2);
    expect_next(sp, "first record");
    expect_next(sp, "second record");
    expect_empty(sp);
    close_spool(sp);
    finish();
}

Test(spool, huge_length_is_torn_not_allocated)
{
    write_three();
    int fd = open(path, O_WRONLY | O_APPEND);
    cr_assert_eq(write(fd, "\xff\xff\xff\x7f\0\0\0\0abc", 11), 11);
    close(fd);
    struct spool_open_info info;
    struct spool *sp = open_spool(0, &info);
    cr_assert_eq(info.records, 3);
    cr_assert_eq(info.torn_bytes, 11);
    close_spool(sp);
    finish();
}

Test(spool, refuses_a_file_that_is_not_a_spool)
{
    FILE *f = fopen(path, "w");
    fputs("precious data that is not a spool\n", f);
    fclose(f);
    off_t size = file_size();
    char err[256] = "";
    cr_assert_null(spool_open(&loop, path, 0, NULL, err, sizeof err));
    cr_assert(strstr(err, "not a tierone spool file"), "%s", err);
    cr_assert_eq(file_size(), size, "left untouched");
    finish();
}

Test(spool, head_past_the_end_means_everything_was_removed)
{
    write_three();
    /* a crash between cutting the file back and rewriting the head */
    cr_assert_eq(truncate(path, SPOOL_HEADER_LEN), 0);
    struct spool_open_info info;
    struct spool *sp = open_spool(0, &info);
    cr_assert_eq(info.records, 0);
    expect_empty(sp);
    append(sp, "x", 1);
    uv_run(&loop, UV_RUN_DEFAULT);
    expect_next(sp, "x");
    close_spool(sp);
    finish();
}

Test(spool, size_cap_refuses_at_once)
{
    struct spool *sp = open_spool(SPOOL_HEADER_LEN + SPOOL_RECORD_OVERHEAD + 10, NULL);
    char err[256] = "";
    append(sp, "0123456789", 1);
    cr_assert_eq(spool_append(sp, "x", 1, on_append, NULL, err, sizeof err), -1);
    cr_assert(strstr(err, "spool full"), "%s", err);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(ndone, 1, "the refused append never calls back");
    expect_next(sp, "0123456789");
    append(sp, "0123456789", 2); /* room again once removed */
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(ndone, 2);
    cr_assert_eq(spool_append(sp, "", 0, on_append, NULL, err, sizeof err), -1);
    close_spool(sp);
    finish();
}

Test(spool, failed_write_reports_and_leaves_the_file_as_it_was)
{
    signal(SIGXFSZ, SIG_IGN);
    struct spool *sp = open_spool(0, NULL);
    append(sp, "fits", 1);
    uv_run(&loop, UV_RUN_DEFAULT);
    off_t size = file_size();
    struct rlimit old, lim;
    cr_assert_eq(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = (rlim_t)size + 20; /* the disk is full after 20 more bytes */
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
    char big[200];
    memset(big, 'b', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    append(sp, big, 2);
    append(sp, "small", 3); /* same batch or the next: fails or succeeds on its own */
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(ndone, 3);
    cr_assert_eq(done_status[1], UV_EFBIG, "status %d", done_status[1]);
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &old), 0);
    off_t after = file_size();
    cr_assert(after == size || (done_status[2] == 0 && after == size + 13),
              "partial write cut off (size %lld -> %lld)", (long long)size, (long long)after);
    append(sp, "later", 4);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(done_status[ndone - 1], 0);
    close_spool(sp);

    struct spool_open_info info;
    sp = open_spool(0, &info);
    cr_assert_eq(info.torn_bytes, 0, "nothing torn was left behind");
    expect_next(sp, "fits");
    if (done_status[2] == 0)
        expect_next(sp, "small");
    expect_next(sp, "later");
    expect_empty(sp);
    close_spool(sp);
    finish();
}

Test(spool, close_writes_pending_appends_first)
{
    struct spool *sp = open_spool(0, NULL);
    append(sp, "pending", 1);
    spool_close(sp, on_closed, NULL);
    char err[64];
    cr_assert_eq(spool_append(sp, "refused", 7, on_append, NULL, err, sizeof err), -1);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(ndone, 1);
    cr_assert_eq(done_status[0], 0);
    cr_assert_eq(closed, 1);
    sp = open_spool(0, NULL);
    expect_next(sp, "pending");
    close_spool(sp);
    finish();
}
