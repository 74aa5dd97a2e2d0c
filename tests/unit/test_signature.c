/* Tests for ingest/signature: Chatwoot's X-Chatwoot-Signature scheme, rotation, the
 * timestamp window and malformed headers. Expected digests come from
 * `printf '%s' "<ts>.<body>" | openssl dgst -sha256 -hmac <secret>`. */
#include "signature.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#define TS   "1700000000"
#define NOW  1700000000
#define BODY "{\"event\":\"message_created\",\"content\":\"\\u003cb\\u003e caf\xc3\xa9\"}"
#define HEX  "ce25b120ec9e8e394f36b298eefd847a3afd4767f16ef122ff1bb1d4480f6d11"

static struct signature_keys keys;

static void keys_init(const char *csv)
{
    char err[128] = "";
    cr_assert_eq(signature_keys_init(&keys, csv, err, sizeof err), 0, "%s", err);
}

static void keys_fini(void)
{
    signature_keys_free(&keys);
}

static enum signature_result verify(const char *sig, const char *ts, int64_t now)
{
    return signature_verify(&keys, sig, ts, BODY, strlen(BODY), now, 300, NULL);
}

TestSuite(signature, .fini = keys_fini);

Test(signature, compute_matches_openssl)
{
    char hex[SIGNATURE_HEX_LEN + 1];
    signature_compute("whsec-one", TS, BODY, strlen(BODY), hex);
    cr_assert_str_eq(hex, HEX);
    signature_compute("k", TS, "", 0, hex);
    cr_assert_str_eq(hex, "5c2999a43333a6877f49c8003f235c4f6de40f85b1b7414b70bd470a8db53d97");
}

/* Secrets around the SHA-256 block size (64 bytes; longer ones are hashed first), and a
 * verify with such a secret among others. */
Test(signature, secrets_of_any_length_match_openssl)
{
    static const struct {
        char c;
        size_t n;
        const char *hex;
    } cases[] = {
        {'x', 63, "2f5aa5ab83c7397109e7e4a7d3b24fe4674f70ddb448a7a027dcab8b95d340e1"},
        {'a', 64, "e56a65638e2b8144e04b75488f5dc3c1c14c8e614efe230271626579962d3fc8"},
        {'b', 65, "703fb8b18f6f6f3c7ba7a6d21dbf084a20c7a7d5b27cbda16a0c1446821d830b"},
        {'k', 200, "3a385c90c27bb3926e7df1e9a3e0d67b84ab2f6897414478c4f611dd496d75af"},
    };
    const char *body = "{\"event\":\"x\"}";
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char secret[256], hex[SIGNATURE_HEX_LEN + 1], csv[300], sig[80];
        memset(secret, cases[i].c, cases[i].n);
        secret[cases[i].n] = '\0';
        signature_compute(secret, TS, body, strlen(body), hex);
        cr_assert_str_eq(hex, cases[i].hex, "%zu-byte secret", cases[i].n);
        snprintf(csv, sizeof csv, "other,%s", secret);
        keys_init(csv);
        snprintf(sig, sizeof sig, "sha256=%s", cases[i].hex);
        cr_assert_eq(signature_verify(&keys, sig, TS, body, strlen(body), NOW, 300, NULL),
                     SIGNATURE_OK, "%zu-byte secret", cases[i].n);
        /* the same signature twice: the key schedules are reused, not used up */
        cr_assert_eq(signature_verify(&keys, sig, TS, body, strlen(body), NOW, 300, NULL),
                     SIGNATURE_OK);
        signature_keys_free(&keys);
    }
}

Test(signature, accepts_any_configured_secret)
{
    keys_init(" old-secret , whsec-one,,third ");
    cr_assert_eq(keys.n, 3);
    cr_assert_str_eq(keys.secrets[0], "old-secret");
    cr_assert_str_eq(keys.secrets[1], "whsec-one");
    int64_t ts = 0;
    cr_assert_eq(signature_verify(&keys, "sha256=" HEX, TS, BODY, strlen(BODY), NOW, 300, &ts),
                 SIGNATURE_OK);
    cr_assert_eq(ts, NOW);
}

Test(signature, uppercase_hex_is_accepted)
{
    keys_init("whsec-one");
    char up[] = "sha256=" HEX;
    for (char *p = up + 7; *p; p++)
        if (*p >= 'a' && *p <= 'f')
            *p = (char)(*p - 'a' + 'A');
    cr_assert_eq(verify(up, TS, NOW), SIGNATURE_OK);
}

Test(signature, wrong_secret_or_changed_body_is_a_mismatch)
{
    keys_init("another");
    cr_assert_eq(verify("sha256=" HEX, TS, NOW), SIGNATURE_MISMATCH);
    signature_keys_free(&keys);
    keys_init("whsec-one");
    /* the body without the timestamp prefix (chatwoot/chatwoot#13809's mistake) */
    cr_assert_eq(
        signature_verify(&keys, "sha256=" HEX, "1700000001", BODY, strlen(BODY), NOW, 300, NULL),
        SIGNATURE_MISMATCH);
    cr_assert_eq(signature_verify(&keys, "sha256=" HEX, TS, BODY, strlen(BODY) - 1, NOW, 300, NULL),
                 SIGNATURE_MISMATCH);
}

Test(signature, timestamp_window_both_ways)
{
    keys_init("whsec-one");
    cr_assert_eq(verify("sha256=" HEX, TS, NOW + 300), SIGNATURE_OK);
    cr_assert_eq(verify("sha256=" HEX, TS, NOW - 300), SIGNATURE_OK);
    cr_assert_eq(verify("sha256=" HEX, TS, NOW + 301), SIGNATURE_STALE);
    cr_assert_eq(verify("sha256=" HEX, TS, NOW - 301), SIGNATURE_STALE);
}

Test(signature, missing_and_malformed_headers)
{
    keys_init("whsec-one");
    int64_t ts = -1;
    cr_assert_eq(signature_verify(&keys, NULL, TS, BODY, strlen(BODY), NOW, 300, &ts),
                 SIGNATURE_MISSING);
    cr_assert_eq(ts, NOW, "the timestamp is reported even without a signature");
    cr_assert_eq(verify(NULL, NULL, NOW), SIGNATURE_MISSING);
    cr_assert_eq(verify("sha256=" HEX, NULL, NOW), SIGNATURE_NO_TIMESTAMP);
    cr_assert_eq(verify("sha256=" HEX, "17e8", NOW), SIGNATURE_NO_TIMESTAMP);
    cr_assert_eq(verify("sha256=" HEX, "-1700000000", NOW), SIGNATURE_NO_TIMESTAMP);
    cr_assert_eq(verify("sha256=" HEX, "1700000000 ", NOW), SIGNATURE_NO_TIMESTAMP);
    cr_assert_eq(verify("sha256=" HEX, "1234567890123456", NOW), SIGNATURE_NO_TIMESTAMP);
    cr_assert_eq(verify("sha1=" HEX, TS, NOW), SIGNATURE_MALFORMED);
    cr_assert_eq(verify(HEX, TS, NOW), SIGNATURE_MALFORMED);
    cr_assert_eq(verify("sha256=" HEX "00", TS, NOW), SIGNATURE_MALFORMED);
    cr_assert_eq(verify("sha256=", TS, NOW), SIGNATURE_MALFORMED);
    char bad[] = "sha256=" HEX;
    bad[10] = 'g';
    cr_assert_eq(verify(bad, TS, NOW), SIGNATURE_MALFORMED);
}

Test(signature, no_secrets_verifies_nothing)
{
    keys_init(NULL);
    cr_assert_eq(keys.n, 0);
    cr_assert_eq(verify("sha256=" HEX, TS, NOW), SIGNATURE_NO_SECRETS);
    signature_keys_free(&keys);
    keys_init(" , ,");
    cr_assert_eq(keys.n, 0);
}

Test(signature, body_bytes_are_signed_raw)
{
    /* NUL bytes and invalid UTF-8 are just bytes */
    static const char body[] = {'{', '"', 'a', '"', ':', '"', 0, '\xff', '"', '}'};
    char hex[SIGNATURE_HEX_LEN + 1], sig[80];
    signature_compute("s3", TS, body, sizeof body, hex);
    snprintf(sig, sizeof sig, "sha256=%s", hex);
    keys_init("s3");
    cr_assert_eq(signature_verify(&keys, sig, TS, body, sizeof body, NOW, 300, NULL), SIGNATURE_OK);
    cr_assert_eq(signature_verify(&keys, sig, TS, body, sizeof body - 1, NOW, 300, NULL),
                 SIGNATURE_MISMATCH);
}

Test(signature, result_names)
{
    cr_assert_str_eq(signature_result_name(SIGNATURE_OK), "ok");
    cr_assert_str_eq(signature_result_name(SIGNATURE_STALE), "stale");
    cr_assert_str_eq(signature_result_name(SIGNATURE_MISMATCH), "mismatch");
    cr_assert_str_eq(signature_result_name(SIGNATURE_MISSING), "missing");
}

Test(signature, token_comparison)
{
    const char *t = "0123456789abcdef0123";
    cr_assert(signature_token_eq(t, t, strlen(t)));
    cr_assert_not(signature_token_eq(t, "0123456789abcdef012", 19));
    cr_assert_not(signature_token_eq(t, "0123456789abcdef01234", 21));
    cr_assert_not(signature_token_eq(t, "x123456789abcdef0123", 20));
    cr_assert(signature_token_eq(t, "0123456789abcdef0123/extra", 20), "given_len bounds it");
    cr_assert_not(signature_token_eq(NULL, t, strlen(t)));
    cr_assert_not(signature_token_eq("", "", 0));
    cr_assert_not(signature_token_eq(t, NULL, 0));
}
