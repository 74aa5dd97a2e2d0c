/* json_edit: byte-exact fixtures for replace / append / delete, lookups, validation. */
#include "json_edit.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define F(k, v)                                                                                    \
    {                                                                                              \
        (k), (v), sizeof(v) - 1                                                                    \
    }
#define DEL(k)                                                                                     \
    {                                                                                              \
        (k), NULL, 0                                                                               \
    }
#define MAXF 4

struct set_case {
    const char *name;
    const char *in;
    struct json_edit_field fields[MAXF];
    size_t n;
    const char *out;
};

static const struct set_case set_cases[] = {
    {"replace", "{\"a\":1,\"b\":\"x\"}", {F("b", "\"y\"")}, 1, "{\"a\":1,\"b\":\"y\"}"},
    {"append", "{\"a\":1}", {F("c", "2")}, 1, "{\"a\":1,\"c\":2}"},
    {"append in order",
     "{\"x\":1}",
     {F("b", "true"), F("a", "null")},
     2,
     "{\"x\":1,\"b\":true,\"a\":null}"},
    {"replace and append like Ruby's retry",
     "{\"queue\":\"default\",\"class\":\"K\",\"args\":[]}",
     {F("queue", "\"low\""), F("error_message", "\"boom\""), F("retry_count", "0")},
     3,
     "{\"queue\":\"low\",\"class\":\"K\",\"args\":[],\"error_message\":\"boom\",\"retry_count\":"
     "0}"},
    {"big ints and floats untouched",
     "{\"big\":123456789012345678901234567890,\"f\":1712345678.0,\"e\":1.5e3,"
     "\"n\":-0,\"enqueued_at\":1.0,\"z\":1E+2}",
     {F("enqueued_at", "1712345999.5")},
     1,
     "{\"big\":123456789012345678901234567890,\"f\":1712345678.0,\"e\":1.5e3,"
     "\"n\":-0,\"enqueued_at\":1712345999.5,\"z\":1E+2}"},
    {"whitespace kept (replace)",
     "{ \"a\" : 1 ,\n \"b\":2 }",
     {F("a", "3")},
     1,
     "{ \"a\" : 3 ,\n \"b\":2 }"},
    {"whitespace kept (append)",
     "\n{ \"a\" : 1 ,\n \"b\":2 }\n",
     {F("c", "3")},
     1,
     "\n{ \"a\" : 1 ,\n \"b\":2,\"c\":3 }\n"},
    {"escaped key matches",
     "{\"\\u0063lass\":\"X\",\"a\":1}",
     {F("class", "\"Y\"")},
     1,
     "{\"\\u0063lass\":\"Y\",\"a\":1}"},
    {"escapes in other values untouched",
     "{\"s\":\"caf\\u00e9 \\\"q\\\" \\/\",\"a\":1}",
     {F("a", "2")},
     1,
     "{\"s\":\"caf\\u00e9 \\\"q\\\" \\/\",\"a\":2}"},
    {"raw UTF-8 untouched",
     "{\"m\":\"h\xc3\xa9llo \xe2\x9c\x93\",\"a\":1}",
     {F("a", "2")},
     1,
     "{\"m\":\"h\xc3\xa9llo \xe2\x9c\x93\",\"a\":2}"},
    {"duplicate key: last replaced",
     "{\"a\":1,\"b\":2,\"a\":3}",
     {F("a", "9")},
     1,
     "{\"a\":1,\"b\":2,\"a\":9}"},
    {"nested same names untouched",
     "{\"args\":[{\"enqueued_at\":1}],\"o\":{\"enqueued_at\":2,\"x\":{\"enqueued_at\":3}}}",
     {F("enqueued_at", "5")},
     1,
     "{\"args\":[{\"enqueued_at\":1}],\"o\":{\"enqueued_at\":2,\"x\":{\"enqueued_at\":3}},"
     "\"enqueued_at\":5}"},
    {"key text inside a string value",
     "{\"a\":\"\\\"b\\\":1\",\"b\":2}",
     {F("b", "3")},
     1,
     "{\"a\":\"\\\"b\\\":1\",\"b\":3}"},
    {"empty object", "{}", {F("a", "1")}, 1, "{\"a\":1}"},
    {"empty object with space", "{ }", {F("a", "1")}, 1, "{ \"a\":1}"},
    {"appended key is escaped", "{}", {F("we\"ird", "1")}, 1, "{\"we\\\"ird\":1}"},
    {"later field wins",
     "{\"a\":1}",
     {F("a", "2"), F("a", "3"), F("b", "4"), F("b", "5")},
     4,
     "{\"a\":3,\"b\":5}"},
    {"delete middle", "{\"a\":1,\"at\":2,\"b\":3}", {DEL("at")}, 1, "{\"a\":1,\"b\":3}"},
    {"delete last", "{\"a\":1, \"at\":2 }", {DEL("at")}, 1, "{\"a\":1 }"},
    {"delete first", "{\"at\":2, \"a\":1}", {DEL("at")}, 1, "{\"a\":1}"},
    {"delete only", "{\"at\":2}", {DEL("at")}, 1, "{}"},
    {"delete duplicates", "{\"at\":1,\"a\":1,\"at\":2}", {DEL("at")}, 1, "{\"a\":1}"},
    {"delete absent", "{\"a\":1}", {DEL("at")}, 1, "{\"a\":1}"},
    {"delete two adjacent at the end",
     "{\"a\":1,\"b\":2,\"c\":3}",
     {DEL("b"), DEL("c")},
     2,
     "{\"a\":1}"},
    {"delete and append",
     "{\"enqueued_at\":1,\"at\":2,\"a\":1}",
     {DEL("enqueued_at"), DEL("at"), F("x", "1")},
     3,
     "{\"a\":1,\"x\":1}"},
    {"delete then set appends",
     "{\"a\":1,\"b\":2}",
     {DEL("a"), F("a", "3")},
     2,
     "{\"b\":2,\"a\":3}"},
    {"no fields", "{\"a\" :1}", {{0}}, 0, "{\"a\" :1}"},
};

Test(json_edit, set_fixtures)
{
    for (size_t i = 0; i < sizeof set_cases / sizeof set_cases[0]; i++) {
        const struct set_case *c = &set_cases[i];
        char err[128] = "";
        size_t out_len = 0;
        char *out = json_edit_set(c->in, strlen(c->in), c->fields, c->n, &out_len, err, sizeof err);
        cr_assert_not_null(out, "%s: %s", c->name, err);
        cr_expect_str_eq(out, c->out, "%s", c->name);
        cr_expect_eq(out_len, strlen(c->out), "%s", c->name);
        cr_expect_eq(json_edit_validate(out, out_len, err, sizeof err), 0, "%s: %s", c->name, err);
        free(out);
    }
}

Test(json_edit, set_does_not_need_nul_terminated_input)
{
    const char text[] = "{\"a\":1}garbage";
    struct json_edit_field f = F("b", "2");
    size_t n;
    char *out = json_edit_set(text, 7, &f, 1, &n, NULL, 0);
    cr_assert_str_eq(out, "{\"a\":1,\"b\":2}");
    free(out);
}

struct err_case {
    const char *in;
    const char *err; /* expected reason */
};

static const struct err_case obj_errors[] = {
    {"[1,2]", "JSON value is an array, not an object"},
    {" \"s\" ", "JSON value is a string, not an object"},
    {"12", "JSON value is a number, not an object"},
    {"null", "JSON value is null, not an object"},
    {"", "invalid JSON at byte 0: unexpected end of input"},
    {"   ", "invalid JSON at byte 3: unexpected end of input"},
    {"{\"a\":1", "invalid JSON at byte 6: unexpected end of input"},
    {"{\"a\":1}}", "invalid JSON at byte 7: unexpected '}'"},
    {"{\"a\":1} x", "invalid JSON at byte 8: unexpected 'x'"},
    {"{\"a\":}", "invalid JSON at byte 5: unexpected '}'"},
    {"{\"class\":\"Foo\",}", "invalid JSON at byte 15: unexpected '}'"},
    {"{a:1}", "invalid JSON at byte 1: unexpected 'a'"},
    {"{\"a\" 1}", "invalid JSON at byte 5: unexpected '1'"},
    {"{\"a\":01}", "invalid JSON at byte 6: unexpected '1'"},
    {"{\"a\":-}", "invalid JSON at byte 6: unexpected '}'"},
    {"{\"a\":1.}", "invalid JSON at byte 7: unexpected '}'"},
    {"{\"a\":.5}", "invalid JSON at byte 5: unexpected '.'"},
    {"{\"a\":1e}", "invalid JSON at byte 7: unexpected '}'"},
    {"{\"a\":tru}", "invalid JSON at byte 8: unexpected '}'"},
    {"{\"a\":NaN}", "invalid JSON at byte 5: unexpected 'N'"},
    {"{\"a\":\"x\\u12\"}", "invalid JSON at byte 11: unexpected '\"'"},
    {"{\"a\":\"x\ny\"}", "invalid JSON at byte 7: control character 0x0a in string"},
    {"{\"a\":\"abc", "invalid JSON at byte 9: unexpected end of input"},
    {"{\"a\":[1,]}", "invalid JSON at byte 8: unexpected ']'"},
    {"{\"a\":[1 2]}", "invalid JSON at byte 8: unexpected '2'"},
    {"{\"a\":1}\x01", "invalid JSON at byte 7: unexpected byte 0x01"},
    {"{\"a\":1 /* c */}", "invalid JSON at byte 7: unexpected '/'"},
};

Test(json_edit, invalid_objects)
{
    for (size_t i = 0; i < sizeof obj_errors / sizeof obj_errors[0]; i++) {
        const struct err_case *c = &obj_errors[i];
        char err[128] = "";
        struct json_span sp;
        cr_expect_eq(json_edit_find(c->in, strlen(c->in), "a", &sp, err, sizeof err), -1, "%s",
                     c->in);
        cr_expect_str_eq(err, c->err, "input %s", c->in);
        size_t n;
        struct json_edit_field f = F("a", "1");
        err[0] = '\0';
        cr_expect_null(json_edit_set(c->in, strlen(c->in), &f, 1, &n, err, sizeof err));
        cr_expect_str_eq(err, c->err, "input %s", c->in);
    }
}

static char *nested(const char *open, const char *close, int depth)
{
    size_t lo = strlen(open), lc = strlen(close);
    char *s = malloc((lo + lc) * (size_t)depth + 1);
    char *p = s;
    for (int i = 0; i < depth; i++, p += lo)
        memcpy(p, open, lo);
    for (int i = 0; i < depth; i++, p += lc)
        memcpy(p, close, lc);
    *p = '\0';
    return s;
}

Test(json_edit, nesting_limit)
{
    char err[128];
    char *ok = nested("[", "]", JSON_EDIT_MAX_DEPTH);
    cr_expect_eq(json_edit_validate(ok, strlen(ok), err, sizeof err), 0, "%s", err);
    free(ok);
    char *deep = nested("[", "]", JSON_EDIT_MAX_DEPTH + 1);
    cr_expect_eq(json_edit_validate(deep, strlen(deep), err, sizeof err), -1);
    cr_expect_str_eq(err, "invalid JSON at byte 512: nesting deeper than 512");
    free(deep);
    /* The top-level object counts as one level: 512 nested objects are fine. */
    struct {
        char *s;
    } b;
    size_t d = JSON_EDIT_MAX_DEPTH;
    b.s = malloc(d * 6 + 16);
    char *p = b.s;
    for (size_t i = 0; i < d; i++)
        p += sprintf(p, "{\"a\":");
    p += sprintf(p, "1");
    for (size_t i = 0; i < d; i++)
        *p++ = '}';
    *p = '\0';
    struct json_span sp;
    cr_expect_eq(json_edit_find(b.s, strlen(b.s), "a", &sp, err, sizeof err), 1, "%s", err);
    /* one more level fails */
    size_t len = strlen(b.s);
    char *more = malloc(len + 8);
    sprintf(more, "{\"a\":%s}", b.s);
    cr_expect_eq(json_edit_find(more, strlen(more), "a", &sp, err, sizeof err), -1);
    cr_expect(strstr(err, "nesting deeper than 512") != NULL, "%s", err);
    free(more);
    free(b.s);
}

Test(json_edit, validate)
{
    static const char *good[] = {
        "\"str\"",
        " [1] ",
        "1",
        "-0.5e-3",
        "true",
        "null",
        "{}",
        "[]",
        "[\"\\x\"]", /* Ruby reads "\x" as "x" */
        "[\"a\xff"
        "b\"]", /* invalid UTF-8 passes, as in Ruby */
        "{\"a\":[1,{\"b\":[true,false,null]}],\"c\":\"\\u00e9\"}\r\n\t ",
        "[123456789012345678901234567890]",
    };
    static const char *bad[] = {"1 2", "[1]x", "", "[", "\"", "tru", "[1,]", "-", "01", "+1"};
    char err[128];
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        cr_expect_eq(json_edit_validate(good[i], strlen(good[i]), err, sizeof err), 0, "%s: %s",
                     good[i], err);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_expect_eq(json_edit_validate(bad[i], strlen(bad[i]), NULL, 0), -1, "%s", bad[i]);
}

static const char *span_text(const char *text, struct json_span sp, char *out)
{
    memcpy(out, text + sp.off, sp.len);
    out[sp.len] = '\0';
    return out;
}

Test(json_edit, find)
{
    const char *job = "{ \"\\u0063lass\" : \"K\", \"args\":[{\"jid\":\"inner\"}],"
                      "\"big\":123456789012345678901234567890,\"jid\":\"a\",\"jid\":\"b\" }";
    char err[128], v[128];
    struct json_span sp;
    cr_assert_eq(json_edit_find(job, strlen(job), "class", &sp, err, sizeof err), 1);
    cr_expect_str_eq(span_text(job, sp, v), "\"K\"");
    cr_assert_eq(json_edit_find(job, strlen(job), "jid", &sp, err, sizeof err), 1);
    cr_expect_str_eq(span_text(job, sp, v), "\"b\"");
    cr_assert_eq(json_edit_find(job, strlen(job), "args", &sp, err, sizeof err), 1);
    cr_expect_str_eq(span_text(job, sp, v), "[{\"jid\":\"inner\"}]");
    cr_assert_eq(json_edit_find(job, strlen(job), "big", &sp, err, sizeof err), 1);
    cr_expect_str_eq(span_text(job, sp, v), "123456789012345678901234567890");
    cr_expect_eq(json_edit_find(job, strlen(job), "missing", &sp, err, sizeof err), 0);
    cr_expect_eq(json_edit_find(job, strlen(job), "clas", &sp, err, sizeof err), 0);
    cr_expect_eq(json_edit_find(job, strlen(job), "classes", &sp, err, sizeof err), 0);
}

Test(json_edit, members)
{
    const char *t = "{\"a\":1, \"b\" : [2] ,\"a\":\"x\"}";
    struct json_member *m;
    size_t n;
    char err[64];
    cr_assert_eq(json_edit_members(t, strlen(t), &m, &n, err, sizeof err), 0);
    cr_assert_eq(n, 3);
    char v[32];
    cr_expect_str_eq(span_text(t, m[0].key, v), "\"a\"");
    cr_expect_str_eq(span_text(t, m[1].key, v), "\"b\"");
    cr_expect_str_eq(span_text(t, m[1].value, v), "[2]");
    cr_expect_str_eq(span_text(t, m[2].value, v), "\"x\"");
    free(m);
    cr_assert_eq(json_edit_members("{}", 2, &m, &n, err, sizeof err), 0);
    cr_expect_eq(n, 0);
    free(m);
}

struct decode_case {
    const char *json;
    const char *out;
    size_t out_len;
};

static const struct decode_case decode_cases[] = {
    {"\"plain\"", "plain", 5},
    {"\"caf\\u00e9\"", "caf\xc3\xa9", 5},
    {"\"\\u20AC\"", "\xe2\x82\xac", 3},
    {"\"\\ud83d\\ude00\"", "\xf0\x9f\x98\x80", 4},
    {"\"\\ud800x\"", "\xef\xbf\xbdx", 4},
    {"\"\\udc00\"", "\xef\xbf\xbd", 3},
    {"\"a\\u0000b\"", "a\0b", 3},
    {"\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", "\"\\/\b\f\n\r\t", 8},
    {"\"\\x\"", "x", 1},
    {"\"raw \xc3\xa9\"", "raw \xc3\xa9", 6},
};

Test(json_edit, string_decode)
{
    for (size_t i = 0; i < sizeof decode_cases / sizeof decode_cases[0]; i++) {
        const struct decode_case *c = &decode_cases[i];
        cr_assert_eq(json_edit_validate(c->json, strlen(c->json), NULL, 0), 0, "%s", c->json);
        size_t n = 0;
        char *s = json_edit_string_decode(c->json, (struct json_span){0, strlen(c->json)}, &n);
        cr_assert_not_null(s, "%s", c->json);
        cr_expect_eq(n, c->out_len, "%s", c->json);
        cr_expect(memcmp(s, c->out, n) == 0, "%s", c->json);
        cr_expect_eq(s[n], '\0');
        free(s);
    }
    cr_expect_null(json_edit_string_decode("123", (struct json_span){0, 3}, NULL));
}

Test(json_edit, key_eq)
{
    const char *t = "\"\\u0063l\\u0061ss\"";
    struct json_span k = {0, strlen(t)};
    cr_expect(json_edit_key_eq(t, k, "class", 5));
    cr_expect(!json_edit_key_eq(t, k, "clas", 4));
    cr_expect(!json_edit_key_eq(t, k, "classy", 6));
    cr_expect(!json_edit_key_eq(t, k, "clasS", 5));
}

/* The string scanner skips 8 bytes at a time while none is '"', '\\' or a control byte.
 * Each special sequence at every offset 0..15 of strings of 0..24 plain bytes (so across
 * one and two 8-byte words, and at their ends): the string's span, its decoded value and
 * the member after it must come out as a byte-by-byte scan gives them. Texts are copied
 * into buffers of exactly their length so a read past the end is caught under ASan. */
struct scan_special {
    const char *name;
    const char *raw;     /* as it appears inside the JSON string */
    const char *decoded; /* what it decodes to (NULL: the text is invalid) */
    size_t decoded_len;
};

static const struct scan_special scan_specials[] = {
    {"escaped quote", "\\\"", "\"", 1},
    {"escaped backslash", "\\\\", "\\", 1},
    {"\\n", "\\n", "\n", 1},
    {"\\u0041", "\\u0041", "A", 1},
    {"\\u0000", "\\u0000", "\0", 1},
    {"DEL byte", "\x7f", "\x7f", 1},
    {"UTF-8 e-acute", "\xc3\xa9", "\xc3\xa9", 2},
    {"byte 0xff", "\xff", "\xff", 1},
    {"space", " ", " ", 1},
    {"byte 0x1f", "\x1f", NULL, 0},
    {"byte 0x01", "\x01", NULL, 0},
    {"tab", "\t", NULL, 0},
};

/* A heap copy of exactly n bytes (no terminator). */
static char *exact_copy(const char *p, size_t n)
{
    char *c = malloc(n ? n : 1);
    memcpy(c, p, n);
    return c;
}

Test(json_edit, string_scan_fast_path_offsets)
{
    for (size_t sp = 0; sp < sizeof scan_specials / sizeof scan_specials[0]; sp++) {
        const struct scan_special *x = &scan_specials[sp];
        for (size_t len = 0; len <= 24; len++) {
            for (size_t k = 0; k <= len && k <= 15; k++) {
                /* {"s":"<k plain><special><len-k plain>","t":7} */
                char text[128], want[64];
                size_t n = 0, w = 0;
                n += (size_t)sprintf(text, "{\"s\":\"");
                for (size_t i = 0; i < k; i++)
                    text[n++] = want[w++] = (char)('a' + i % 26);
                size_t special_off = n;
                memcpy(text + n, x->raw, strlen(x->raw));
                n += strlen(x->raw);
                if (x->decoded) {
                    memcpy(want + w, x->decoded, x->decoded_len);
                    w += x->decoded_len;
                }
                for (size_t i = k; i < len; i++)
                    text[n++] = want[w++] = (char)('A' + i % 26);
                text[n++] = '"';
                size_t s_end = n;
                memcpy(text + n, ",\"t\":7}", 7);
                n += 7;
                char *t = exact_copy(text, n);
                char err[160] = "", v[160];
                struct json_span span;
                int rc = json_edit_find(t, n, "t", &span, err, sizeof err);
                if (!x->decoded) {
                    char msg[160];
                    snprintf(msg, sizeof msg,
                             "invalid JSON at byte %zu: control character 0x%02x in string",
                             special_off, (unsigned char)x->raw[0]);
                    cr_expect_eq(rc, -1, "%s at %zu of %zu", x->name, k, len);
                    cr_expect_str_eq(err, msg, "%s at %zu of %zu", x->name, k, len);
                    free(t);
                    continue;
                }
                cr_assert_eq(rc, 1, "%s at %zu of %zu: %s", x->name, k, len, err);
                cr_expect_str_eq(span_text(t, span, v), "7", "%s at %zu of %zu", x->name, k, len);
                cr_assert_eq(json_edit_find(t, n, "s", &span, err, sizeof err), 1);
                cr_expect_eq(span.off, 5);
                cr_expect_eq(span.len, s_end - 5, "%s at %zu of %zu", x->name, k, len);
                size_t dn = 0;
                char *d = json_edit_string_decode(t, span, &dn);
                cr_expect_eq(dn, w, "%s at %zu of %zu", x->name, k, len);
                cr_expect(memcmp(d, want, w) == 0, "%s at %zu of %zu", x->name, k, len);
                free(d);
                free(t);
            }
        }
    }
}

/* Strings cut short anywhere (also right after a backslash or inside \u) end in an error
 * at the end of input, never a read past it. */
Test(json_edit, string_scan_truncated)
{
    char full[64];
    size_t n = (size_t)sprintf(full, "\"abcdefghijklmn\\\"opq\\u00e9rstuvwxyz0123\\\\\"");
    for (size_t cut = 1; cut < n; cut++) {
        char *t = exact_copy(full, cut);
        char err[160] = "", msg[160];
        cr_expect_eq(json_edit_validate(t, cut, err, sizeof err), -1, "cut at %zu", cut);
        snprintf(msg, sizeof msg, "invalid JSON at byte %zu: unexpected end of input", cut);
        cr_expect_str_eq(err, msg, "cut at %zu", cut);
        free(t);
    }
    char *t = exact_copy(full, n);
    cr_expect_eq(json_edit_validate(t, n, NULL, 0), 0);
    free(t);
}
