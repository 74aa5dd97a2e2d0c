/* signature: authenticity of Chatwoot webhook deliveries (APIS.md §1.3).
 *
 * Chatwoot (account webhooks from 4.11.2, API inboxes and Agent Bots from 4.13.0) sends
 *
 *   X-Chatwoot-Timestamp: <unix seconds>
 *   X-Chatwoot-Signature: sha256=<lowercase hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>
 *
 * A delivery is authentic when the signature matches one of the configured secrets (a
 * list, so that secrets can be rotated and so that one shim serves several webhooks, API
 * inboxes and bots) and the timestamp is within the tolerance of the local clock, both
 * ways. Digests are compared in constant time (CRYPTO_memcmp); every secret is tried, so
 * the time taken does not depend on which secret matched.
 *
 * Older Chatwoot versions sign nothing; for those the shim accepts unsigned deliveries on
 * a path that carries a long random token (signature_token_eq compares it in constant
 * time). */
#ifndef TIERONE_INGEST_SIGNATURE_H
#define TIERONE_INGEST_SIGNATURE_H

#include <stddef.h>
#include <stdint.h>

#define SIGNATURE_HEX_LEN 64 /* hex digits of an HMAC-SHA256 */

/* The configured secrets with a keyed HMAC context each. Owned; free with
 * signature_keys_free. */
struct signature_mac;

struct signature_keys {
    size_t n;
    char **secrets;
    struct signature_mac **macs; /* each secret's HMAC key schedule (signature.c) */
};

/* Why a delivery was refused (or SIGNATURE_OK). */
enum signature_result {
    SIGNATURE_OK = 0,
    SIGNATURE_MISSING,      /* no X-Chatwoot-Signature header */
    SIGNATURE_MALFORMED,    /* not "sha256=" + 64 hex digits */
    SIGNATURE_NO_TIMESTAMP, /* X-Chatwoot-Timestamp missing or not a decimal integer */
    SIGNATURE_STALE,        /* timestamp outside the tolerance */
    SIGNATURE_MISMATCH,     /* no secret produces this signature */
    SIGNATURE_NO_SECRETS,   /* no secret configured: nothing can be verified */
};

/* Parse a comma-separated list of secrets (blanks around each are trimmed, empty entries
 * skipped) into keys. csv may be NULL (no secrets). Returns 0, or -1 with a reason in err
 * when OpenSSL cannot set up HMAC-SHA256 (keys is then empty). */
int signature_keys_init(struct signature_keys *keys, const char *csv, char *err, size_t errcap);
/* Free the secrets (wiped first) and contexts. Safe on a zeroed struct and to repeat. */
void signature_keys_free(struct signature_keys *keys);

/* Check one delivery. sig and ts are the header values (NULL when absent); body is the raw
 * request body; now_s the wall clock; tolerance_s how far (either way) the timestamp may be
 * from now. The parsed timestamp goes to *ts_out (may be NULL) whenever it could be read,
 * also when the result is not OK. */
enum signature_result signature_verify(const struct signature_keys *keys, const char *sig,
                                       const char *ts, const char *body, size_t body_len,
                                       int64_t now_s, int64_t tolerance_s, int64_t *ts_out);

/* Short name of a result for log lines, response bodies and metric labels ("stale"...). */
const char *signature_result_name(enum signature_result r);

/* Parse a decimal timestamp header (digits only, at most 15): 0 and the value, or -1. */
int signature_parse_timestamp(const char *ts, int64_t *out);

/* HMAC-SHA256(secret, "<ts>.<body>") as 64 lowercase hex digits and a NUL (for clients,
 * tests and the benchmark). */
void signature_compute(const char *secret, const char *ts, const char *body, size_t body_len,
                       char out[SIGNATURE_HEX_LEN + 1]);

/* 1 if given equals expected, in time independent of where they differ and of given's
 * length (both are hashed first). Either may be NULL (never equal then). */
int signature_token_eq(const char *expected, const char *given, size_t given_len);

#endif
