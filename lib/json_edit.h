/* json_edit: byte-faithful reading and editing of a JSON object's top-level members.
 *
 * Sidekiq jobs are JSON objects that other programs (Ruby Sidekiq 6/7/8, Chatwoot) wrote.
 * Redis identifies them by their exact bytes, and a JSON library would lose what Ruby keeps
 * (integers beyond 64 bits, 1712345678.0 vs 1712345678, key order, escapes). So tierone
 * never re-encodes a job: this small scanner finds where each top-level member sits and
 * splices new values in, leaving every other byte alone. Values are skipped, never
 * converted; a caller that needs one parses just that span (json_loadb with
 * JSON_DECODE_ANY).
 *
 * Grammar: RFC 8259 as Ruby's JSON 2.x parser reads it: strings may hold any byte >= 0x20
 * (invalid UTF-8 passes, as in Ruby), a backslash may precede any such byte ("\x" is
 * "x"), \u needs four hex digits. Nesting deeper than JSON_EDIT_MAX_DEPTH, control bytes in
 * strings, truncated input and trailing non-whitespace are errors. Comments (which Ruby's
 * parser skips) are not accepted.
 *
 * Keys are compared decoded: "\u0063lass" is the key "class". When a key occurs twice,
 * Ruby keeps the last value, so lookups and replacements use the last occurrence. */
#ifndef TIERONE_JSON_EDIT_H
#define TIERONE_JSON_EDIT_H

#include <stddef.h>

#define JSON_EDIT_MAX_DEPTH 512

/* A range of bytes inside the text: [off, off + len). */
struct json_span {
    size_t off;
    size_t len;
};

/* One top-level member: the key with its quotes, and the value's raw text. */
struct json_member {
    struct json_span key;
    struct json_span value;
};

/* One change for json_edit_set. key is the decoded key (NUL-terminated UTF-8); value is
 * raw JSON text (value_len bytes, trusted: it is not validated), or NULL to delete every
 * occurrence of the key. */
struct json_edit_field {
    const char *key;
    const char *value;
    size_t value_len;
};

/* Check that text (len bytes) is exactly one JSON value with only whitespace around it.
 * Returns 0, or -1 with a reason like "invalid JSON at byte 17: unexpected '}'" in err
 * (errcap bytes; err may be NULL). */
int json_edit_validate(const char *text, size_t len, char *err, size_t errcap);

/* Scan an object and list its top-level members in text order (duplicates included).
 * Returns 0 with a new array in *out (caller frees; NULL when the object is empty) and its
 * length in *n, or -1 with a reason in err when text is not one valid JSON object. */
int json_edit_members(const char *text, size_t len, struct json_member **out, size_t *n, char *err,
                      size_t errcap);

/* 1 if the key span (quotes included) of text decodes to key (keylen bytes). */
int json_edit_key_eq(const char *text, struct json_span keyspan, const char *key, size_t keylen);

/* Find the value of the top-level key (the last occurrence) in an object. Returns 1 with the
 * value's span in *out, 0 when the key is absent, -1 (reason in err) when text is not one
 * valid JSON object. */
int json_edit_find(const char *text, size_t len, const char *key, struct json_span *out, char *err,
                   size_t errcap);

/* A new object text where, for each field in order: the value of an existing key (its last
 * occurrence) is replaced in place, an absent key is appended before the closing brace
 * (with a comma, no added whitespace, as JSON.generate writes), and a NULL value deletes
 * the key. Every other byte is kept. Returns a new NUL-terminated string (caller frees)
 * with its length in *out_len, or NULL with a reason in err when text is not one valid
 * JSON object. */
char *json_edit_set(const char *text, size_t len, const struct json_edit_field *fields, size_t n,
                    size_t *out_len, char *err, size_t errcap);

/* Decode the JSON string whose span (quotes included) is given into a new NUL-terminated
 * UTF-8 string (caller frees), length in *out_len (may be NULL; the string may hold NUL
 * bytes from \u0000). Invalid surrogate escapes become U+FFFD. Returns NULL when the span is
 * not a string. */
char *json_edit_string_decode(const char *text, struct json_span span, size_t *out_len);

#endif
