/* fuzz_ingest: libFuzzer target over tierone-ingest's request path, without sockets or
 * Redis: raw bytes go through http_server's socket-less session (parser, limits, headers,
 * chunked bodies, pipelining) into the shim's real handler (routing, signature check, JSON
 * sniff, delivery id check, job building), whose jobs go to a fake submit function.
 *
 * Input layout: byte 0 picks the mode and a few switches, byte 1 a chunk size; the rest is
 *   mode 0 (raw):    bytes fed as they are, in chunks (the client's side of a connection)
 *   mode 1 (signed): a request body, wrapped in a correctly signed POST (so the fuzzer gets
 *                    past the HMAC check and exercises the JSON sniff and job building)
 * The fake submit answers in the order of byte 0's switches: queued, duplicate, spooled,
 * failed later, or refused at once. Every job it receives is checked to be one valid JSON
 * object. See fuzz/README.md for building and running. */
#include "http_server.h"
#include "json_edit.h"
#include "log.h"
#include "metrics.h"
#include "shim.h"
#include "signature.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_SECRET "fuzz-secret"
#define FUZZ_TOKEN  "fuzz-token-0123456789"
#define FUZZ_NOW    1700000000

struct fuzz_pending {
    outbox_cb cb;
    void *data;
};

static struct shim *shim;
static struct signature_keys keys;
static struct metrics_registry *reg;
static struct fuzz_pending pending[64];
static size_t npending;
static unsigned mode_bits;

static double fuzz_now(void)
{
    return FUZZ_NOW;
}

/* Like outbox_submit, it takes the payload over: freed here whatever the answer (ASan
 * reports a leak or a double free if the shim gets the ownership wrong). */
static int fuzz_submit(void *ud, const char *delivery, char *payload, size_t len, outbox_cb cb,
                       void *data, char *err, size_t errcap)
{
    (void)ud;
    (void)delivery;
    if (json_edit_validate(payload, len, NULL, 0) != 0)
        abort(); /* the shim built a job that is not JSON */
    free(payload);
    if ((mode_bits & 0x30) == 0x30 || npending == sizeof pending / sizeof pending[0]) {
        snprintf(err, errcap, "spool full");
        return -1;
    }
    pending[npending++] = (struct fuzz_pending){cb, data};
    return 0;
}

/* Answer everything submitted; answering may let the session dispatch the next pipelined
 * request, which may submit again. */
static void fuzz_complete(void)
{
    static const enum outbox_result results[] = {OUTBOX_QUEUED, OUTBOX_DUPLICATE, OUTBOX_SPOOLED,
                                                 OUTBOX_FAILED};
    unsigned i = 0;
    while (npending) {
        struct fuzz_pending p = pending[--npending];
        enum outbox_result r = results[(mode_bits >> 4 & 3) + i++ & 3];
        p.cb(r, r == OUTBOX_FAILED ? "disk full" : NULL, p.data);
    }
}

static void fuzz_init(void)
{
    log_init("fuzz", LOG_OFF);
    char err[128];
    if (signature_keys_init(&keys, "old," FUZZ_SECRET, err, sizeof err) != 0)
        abort();
    reg = metrics_registry_new();
    struct shim_opts o = {
        .keys = &keys,
        .unsigned_token = FUZZ_TOKEN,
        .tolerance_s = 300,
        .metrics = reg,
        .serve_metrics = 1,
        .submit = fuzz_submit,
        .now = fuzz_now,
    };
    shim = shim_new(&o);
}

/* Feed len bytes in chunks of `chunk` (0 = all at once). */
static void fuzz_feed(struct http_session *s, const char *data, size_t len, size_t chunk)
{
    if (!chunk)
        chunk = len ? len : 1;
    for (size_t off = 0; off < len; off += chunk) {
        size_t n = len - off < chunk ? len - off : chunk;
        int rc = http_session_feed(s, data + off, n);
        fuzz_complete();
        if (rc != 0)
            break;
    }
}

/* A correctly signed POST around body. */
static char *fuzz_signed(const char *body, size_t blen, size_t *out_len)
{
    const char *path = mode_bits & 2 ? "/webhooks/agent-bot" : "/webhooks/chatwoot";
    const char *ts = mode_bits & 8 ? "1699999000" : "1700000000"; /* the first is stale */
    char hex[SIGNATURE_HEX_LEN + 1];
    signature_compute(FUZZ_SECRET, ts, body, blen, hex);
    char head[512];
    int n = snprintf(head, sizeof head,
                     "POST %s HTTP/1.1\r\nHost: f\r\nContent-Length: %zu\r\n"
                     "X-Chatwoot-Timestamp: %s\r\nX-Chatwoot-Signature: sha256=%s\r\n%s\r\n",
                     path, blen, ts, hex,
                     mode_bits & 4 ? "X-Chatwoot-Delivery: 0b8f2f9e-fuzz\r\n" : "");
    char *req = malloc((size_t)n + blen);
    memcpy(req, head, (size_t)n);
    memcpy(req + n, body, blen);
    *out_len = (size_t)n + blen;
    return req;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!shim)
        fuzz_init();
    if (size < 2)
        return 0;
    mode_bits = data[0];
    size_t chunk = data[1];
    const char *rest = (const char *)data + 2;
    size_t len = size - 2;

    struct http_server_opts o;
    http_server_opts_default(&o);
    o.max_body_bytes = 64 * 1024;
    o.max_header_bytes = 4096;
    struct http_session *s = http_session_new(&o, shim_handle, shim);
    if (mode_bits & 1) {
        size_t rlen;
        char *req = fuzz_signed(rest, len, &rlen);
        fuzz_feed(s, req, rlen, chunk);
        free(req);
    } else {
        fuzz_feed(s, rest, len, chunk);
    }
    if (mode_bits & 0x40)
        http_session_expire(s);
    if (mode_bits & 0x80)
        http_session_eof(s);
    fuzz_complete();
    http_session_free(s);
    if (shim_in_flight(shim) != 0)
        abort(); /* a request was never answered */
    return 0;
}
