/* buf: buf_json_string skips 16 (SSE2) or 8 bytes at a time over runs that need no escape; its
 * output must be the plain byte-at-a-time escaping (reference below) wherever the characters to
 * escape fall. */
#include "buf.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The specification: each byte on its own. */
static void reference(struct buf *b, const char *s, size_t len)
{
    buf_puts(b, "\"");
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"')
            buf_puts(b, "\\\"");
        else if (c == '\\')
            buf_puts(b, "\\\\");
        else if (c == '\n')
            buf_puts(b, "\\n");
        else if (c == '\r')
            buf_puts(b, "\\r");
        else if (c == '\t')
            buf_puts(b, "\\t");
        else if (c < 0x20)
            buf_printf(b, "\\u%04x", c);
        else
            buf_append(b, &s[i], 1);
    }
    buf_puts(b, "\"");
}

Test(buf, json_string_matches_byte_at_a_time_escaping)
{
    const char pool[] = "abcxyz \"\\\n\t\r\x01\x1f\x7f\xc3\xa9\xf0\x9f\x98\x80/<>";
    srand(12345);
    char body[300];
    for (int round = 0; round < 2000; round++) {
        size_t len = (size_t)(round % 301);
        int density = 1 + round % 7; /* 1 in 2^density bytes is from the whole pool */
        for (size_t i = 0; i < len; i++)
            body[i] = rand() % (1 << density) ? (char)('a' + rand() % 26)
                                              : pool[rand() % (int)(sizeof pool - 1)];
        struct buf want = BUF_INIT, got = BUF_INIT;
        reference(&want, body, len);
        buf_json_string(&got, body, len);
        cr_assert_eq(got.len, want.len, "round %d", round);
        cr_assert_eq(memcmp(got.data, want.data, want.len), 0, "round %d:\n%s\n%s", round,
                     want.data, got.data);
        buf_free(&want);
        buf_free(&got);
    }
}

Test(buf, json_string_escapes_every_control_and_keeps_utf8)
{
    char all[256];
    for (int i = 0; i < 256; i++)
        all[i] = (char)i;
    struct buf want = BUF_INIT, got = BUF_INIT;
    reference(&want, all + 1, 255);
    buf_json_string(&got, all + 1, 255);
    cr_assert_str_eq(got.data, want.data);
    cr_assert(strstr(got.data, "\\u001f") && strstr(got.data, "\\u0001"));
    buf_free(&want);
    buf_free(&got);
}

Test(buf, json_string_finds_each_byte_at_every_position_of_the_wide_scan)
{
    /* The scan goes 16 bytes, then 8, then 1 at a time: a byte to escape (and a byte that
     * needs none) at each offset of a 70-byte run, for every byte value. */
    char body[70];
    for (int c = 0; c < 256; c++) {
        for (size_t at = 0; at < sizeof body; at++) {
            memset(body, 'a', sizeof body);
            body[at] = (char)c;
            struct buf want = BUF_INIT, got = BUF_INIT;
            reference(&want, body, sizeof body);
            buf_json_string(&got, body, sizeof body);
            cr_assert_eq(got.len, want.len, "byte %d at %zu", c, at);
            cr_assert_eq(memcmp(got.data, want.data, want.len), 0, "byte %d at %zu", c, at);
            buf_free(&want);
            buf_free(&got);
        }
    }
}
