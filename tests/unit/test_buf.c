/* buf: buf_json_string skips 16 (SSE2) or 8 bytes at a time over runs that need no escape; its
 * output must be the plain byte-at-a-time escaping (reference below) wherever the characters to
 * escape fall. */
#include "buf.h"

#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
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

Test(buf, json_real_reads_back_as_the_same_real_through_jansson)
{
    const double vals[] = {0,   1,      -2, 0.1, 0.56666666666666665, 1e-7, 123456789012345678.0,
                           0.7, 2.5e300};
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
        struct buf b = BUF_INIT;
        buf_json_real(&b, vals[i], 17);
        json_t *j = json_loads(b.data, JSON_DECODE_ANY, NULL);
        cr_assert(json_is_real(j), "%s reads back as a real", b.data);
        cr_assert_eq(json_real_value(j), vals[i], "%s", b.data);
        /* Exactly what jansson writes for the same value. */
        char *want = json_dumps(j, JSON_ENCODE_ANY | JSON_REAL_PRECISION(17));
        cr_assert_str_eq(b.data, want);
        free(want);
        json_decref(j);
        buf_free(&b);
    }
    struct buf b = BUF_INIT;
    buf_json_real(&b, 0.123456789012, 3);
    buf_puts(&b, " ");
    buf_json_real(&b, NAN, 17);
    buf_puts(&b, " ");
    buf_json_real(&b, 2, 10);
    cr_assert_str_eq(b.data, "0.123 0.0 2.0");
    buf_free(&b);
}
