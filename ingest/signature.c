/* signature: HMAC-SHA256 verification of Chatwoot deliveries (see signature.h).
 *
 * HMAC is computed from SHA-256 states that already absorbed the key's inner and outer pad
 * (RFC 2104), kept per secret: a delivery copies them (plain structs, no allocation) and
 * hashes its bytes. That is what EVP_MAC does inside, without its per-call context
 * duplication, provider dispatch and frees, which cost a sizeable part of a request. The
 * low-level SHA256_* functions are deprecated in OpenSSL 3 but still provided (and use the
 * same SHA extensions / AVX code); the test vectors in tests/unit/test_signature.c pin the
 * result to `openssl dgst -hmac`. */
#define OPENSSL_SUPPRESS_DEPRECATED /* SHA256_CTX, SHA256_Init/Update/Final */
#include "signature.h"
#include "xalloc.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SIGNATURE_PREFIX     "sha256="
#define SIGNATURE_DIGEST_LEN 32
#define SIGNATURE_TS_MAX     15

/* One secret's HMAC-SHA256 key schedule: SHA-256 after (key ^ ipad) and after (key ^ opad). */
struct signature_mac {
    SHA256_CTX inner, outer;
};

static void signature_mac_free(struct signature_mac *m)
{
    if (!m)
        return;
    OPENSSL_cleanse(m, sizeof *m);
    free(m);
}

/* The key schedule of secret, or NULL if OpenSSL fails. */
static struct signature_mac *signature_mac_new(const char *secret)
{
    unsigned char key[SHA256_CBLOCK] = {0}, pad[SHA256_CBLOCK];
    size_t len = strlen(secret);
    if (len > SHA256_CBLOCK) /* longer keys are hashed first */
        SHA256((const unsigned char *)secret, len, key);
    else
        memcpy(key, secret, len);
    struct signature_mac *m = xmalloc(sizeof *m);
    for (size_t i = 0; i < SHA256_CBLOCK; i++)
        pad[i] = key[i] ^ 0x36;
    int ok = SHA256_Init(&m->inner) == 1 && SHA256_Update(&m->inner, pad, sizeof pad) == 1;
    for (size_t i = 0; i < SHA256_CBLOCK; i++)
        pad[i] = key[i] ^ 0x5c;
    ok = ok && SHA256_Init(&m->outer) == 1 && SHA256_Update(&m->outer, pad, sizeof pad) == 1;
    OPENSSL_cleanse(key, sizeof key);
    OPENSSL_cleanse(pad, sizeof pad);
    if (!ok) {
        signature_mac_free(m);
        return NULL;
    }
    return m;
}

/* Append one trimmed, non-empty entry of the list. */
static int signature_keys_add(struct signature_keys *k, const char *s, size_t len)
{
    while (len && (*s == ' ' || *s == '\t')) {
        s++;
        len--;
    }
    while (len && (s[len - 1] == ' ' || s[len - 1] == '\t'))
        len--;
    if (!len)
        return 0;
    char *secret = xstrndup(s, len);
    struct signature_mac *ctx = signature_mac_new(secret);
    if (!ctx) {
        OPENSSL_cleanse(secret, len);
        free(secret);
        return -1;
    }
    k->secrets = xrealloc(k->secrets, (k->n + 1) * sizeof *k->secrets);
    k->macs = xrealloc(k->macs, (k->n + 1) * sizeof *k->macs);
    k->secrets[k->n] = secret;
    k->macs[k->n] = ctx;
    k->n++;
    return 0;
}

int signature_keys_init(struct signature_keys *keys, const char *csv, char *err, size_t errcap)
{
    memset(keys, 0, sizeof *keys);
    const char *p = csv ? csv : "";
    while (*p) {
        size_t len = strcspn(p, ",");
        if (signature_keys_add(keys, p, len) != 0) {
            snprintf(err, errcap, "OpenSSL cannot set up HMAC-SHA256");
            signature_keys_free(keys);
            return -1;
        }
        p += len;
        if (*p == ',')
            p++;
    }
    return 0;
}

void signature_keys_free(struct signature_keys *keys)
{
    for (size_t i = 0; i < keys->n; i++) {
        OPENSSL_cleanse(keys->secrets[i], strlen(keys->secrets[i]));
        free(keys->secrets[i]);
        signature_mac_free(keys->macs[i]);
    }
    free(keys->secrets);
    free(keys->macs);
    memset(keys, 0, sizeof *keys);
}

int signature_parse_timestamp(const char *ts, int64_t *out)
{
    if (!ts)
        return -1;
    size_t n = strspn(ts, "0123456789");
    if (n == 0 || n > SIGNATURE_TS_MAX || ts[n] != '\0')
        return -1;
    int64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v = v * 10 + (ts[i] - '0');
    *out = v;
    return 0;
}

/* "sha256=<64 hex>" into 32 bytes. */
static int signature_parse(const char *sig, unsigned char out[SIGNATURE_DIGEST_LEN])
{
    size_t plen = sizeof SIGNATURE_PREFIX - 1;
    if (strncmp(sig, SIGNATURE_PREFIX, plen) != 0 || strlen(sig + plen) != SIGNATURE_HEX_LEN)
        return -1;
    const char *h = sig + plen;
    for (size_t i = 0; i < SIGNATURE_DIGEST_LEN; i++) {
        int hi = OPENSSL_hexchar2int((unsigned char)h[2 * i]),
            lo = OPENSSL_hexchar2int((unsigned char)h[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        out[i] = (unsigned char)(hi << 4 | lo);
    }
    return 0;
}

/* HMAC of "<ts>.<body>" with a key schedule (copied, so it stays reusable). */
static int signature_mac(const struct signature_mac *m, const char *ts, const char *body,
                         size_t body_len, unsigned char out[SIGNATURE_DIGEST_LEN])
{
    unsigned char inner[SIGNATURE_DIGEST_LEN];
    SHA256_CTX c = m->inner;
    int ok = SHA256_Update(&c, ts, strlen(ts)) == 1 && SHA256_Update(&c, ".", 1) == 1 &&
             SHA256_Update(&c, body, body_len) == 1 && SHA256_Final(inner, &c) == 1;
    c = m->outer;
    ok = ok && SHA256_Update(&c, inner, sizeof inner) == 1 && SHA256_Final(out, &c) == 1;
    OPENSSL_cleanse(&c, sizeof c);
    OPENSSL_cleanse(inner, sizeof inner);
    return ok ? 0 : -1;
}

enum signature_result signature_verify(const struct signature_keys *keys, const char *sig,
                                       const char *ts, const char *body, size_t body_len,
                                       int64_t now_s, int64_t tolerance_s, int64_t *ts_out)
{
    int64_t t;
    unsigned char want[SIGNATURE_DIGEST_LEN];
    if (signature_parse_timestamp(ts, &t) != 0)
        return sig ? SIGNATURE_NO_TIMESTAMP : SIGNATURE_MISSING;
    if (ts_out)
        *ts_out = t;
    if (!sig)
        return SIGNATURE_MISSING;
    if (signature_parse(sig, want) != 0)
        return SIGNATURE_MALFORMED;
    if (t < now_s - tolerance_s || t > now_s + tolerance_s)
        return SIGNATURE_STALE;
    if (keys->n == 0)
        return SIGNATURE_NO_SECRETS;
    int match = 0;
    for (size_t i = 0; i < keys->n; i++) {
        unsigned char got[SIGNATURE_DIGEST_LEN];
        if (signature_mac(keys->macs[i], ts, body, body_len, got) != 0)
            continue;
        match |= CRYPTO_memcmp(got, want, sizeof got) == 0;
    }
    return match ? SIGNATURE_OK : SIGNATURE_MISMATCH;
}

const char *signature_result_name(enum signature_result r)
{
    switch (r) {
    case SIGNATURE_OK:
        return "ok";
    case SIGNATURE_MISSING:
        return "missing";
    case SIGNATURE_MALFORMED:
        return "malformed";
    case SIGNATURE_NO_TIMESTAMP:
        return "bad_timestamp";
    case SIGNATURE_STALE:
        return "stale";
    case SIGNATURE_MISMATCH:
        return "mismatch";
    case SIGNATURE_NO_SECRETS:
        return "no_secrets";
    }
    return "unknown";
}

void signature_compute(const char *secret, const char *ts, const char *body, size_t body_len,
                       char out[SIGNATURE_HEX_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char d[SIGNATURE_DIGEST_LEN] = {0};
    struct signature_mac *ctx = signature_mac_new(secret);
    if (ctx)
        signature_mac(ctx, ts, body, body_len, d);
    signature_mac_free(ctx);
    for (size_t i = 0; i < sizeof d; i++) {
        out[2 * i] = hex[d[i] >> 4];
        out[2 * i + 1] = hex[d[i] & 15];
    }
    out[SIGNATURE_HEX_LEN] = '\0';
}

int signature_token_eq(const char *expected, const char *given, size_t given_len)
{
    if (!expected || !*expected || !given)
        return 0;
    unsigned char a[SHA256_DIGEST_LENGTH], b[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)expected, strlen(expected), a);
    SHA256((const unsigned char *)given, given_len, b);
    return CRYPTO_memcmp(a, b, sizeof a) == 0;
}
