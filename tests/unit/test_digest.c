/* digest and buf_read_file: the checksum and file reading that migrations and the knowledge
 * base share. */
#include "buf.h"
#include "digest.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

Test(digest, sha256_hex_matches_the_standard_vectors)
{
    char out[65];
    digest_sha256_hex("abc", 3, out);
    cr_assert_str_eq(out, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    digest_sha256_hex("", 0, out);
    cr_assert_str_eq(out, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

Test(digest, buf_read_file_reads_all_bytes_and_reports_errors)
{
    char path[] = "/tmp/tierone-test-digest-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    static char data[200000];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (char)(i * 7);
    cr_assert_eq(write(fd, data, sizeof data), (ssize_t)sizeof data);
    close(fd);
    struct buf b = BUF_INIT;
    cr_assert_eq(buf_read_file(&b, path), 0);
    cr_assert_eq(b.len, sizeof data);
    cr_assert_arr_eq(b.data, data, sizeof data);
    unlink(path);
    buf_reset(&b);
    cr_assert_eq(buf_read_file(&b, path), -1);
    cr_assert_eq(errno, ENOENT);
    buf_free(&b);
}
