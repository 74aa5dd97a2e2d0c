/* Black-box tests of the tierone-ingest binary (TIERONE_BIN_DIR) against the real Redis
 * (database 3 of TIERONE_TEST_REDIS_URL), driven with blocking sockets:
 *
 *   - a signed delivery becomes exactly the documented Sidekiq job (both paths);
 *   - rotated secrets, the unsigned-token path, int_millis timestamps;
 *   - every bad input gets its status and nothing is queued;
 *   - repeat deliveries are queued once;
 *   - keep-alive, pipelining and chunked bodies work;
 *   - slow clients get 408;
 *   - Redis down: 202 from the spool, drained by the next start; disk full: 500;
 *   - /healthz, /readyz, /metrics; SIGTERM exits 0; config errors exit 2; --healthcheck;
 *   - TIERONE_INGEST_PROCESSES=2: both processes take deliveries on the one port, each
 *     spooling to its own file; SIGTERM to the parent stops both with nothing lost; spool
 *     files no process owns (a larger N before) are drained; no two processes share a spool.
 *
 * Each test stops its shim with SIGTERM and asserts exit status 0 and a log free of
 * sanitizer reports (the binary is instrumented in the ASan build). */
#include "job.h"
#include "outbox.h"
#include "shim.h"
#include "signature.h"
#include "test_port.h"
#include "test_redis.h"
#include "wake.h"
#include "xalloc.h"

#include <arpa/inet.h>
#include <fcntl.h>

#include <criterion/criterion.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SECRET  "whsec-test-secret"
#define TOKEN   "unsigned-token-0123456789"
#define REDISDB 3

/* ---------------------------------------------------------------------------------------
 * The shim process */

struct shim_proc {
    pid_t pid;
    int port;
    int out; /* read end of the child's stdout/stderr pipe */
    char log[256];
};

/* Shims this test started and has not reaped: teardown kills them, so a failed
 * assertion never leaves a process behind. */
static pid_t live[8];

static void live_add(pid_t pid)
{
    for (size_t i = 0; i < sizeof live / sizeof live[0]; i++)
        if (!live[i]) {
            live[i] = pid;
            return;
        }
}

static void live_remove(pid_t pid)
{
    for (size_t i = 0; i < sizeof live / sizeof live[0]; i++)
        if (live[i] == pid)
            live[i] = 0;
}

static char tmpdir[64];
static char spool[128];
static redisContext *rc;

static void setup(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/tierone-ingest-XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir));
    snprintf(spool, sizeof spool, "%s/ingest.spool", tmpdir);
    rc = test_redis_connect(REDISDB);
}

static void teardown(void)
{
    for (size_t i = 0; i < sizeof live / sizeof live[0]; i++) {
        if (live[i]) {
            kill(live[i], SIGKILL);
            waitpid(live[i], NULL, 0);
            live[i] = 0;
        }
    }
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", tmpdir);
    if (rc)
        redisFree(rc);
}

TestSuite(ingest, .init = setup, .fini = teardown);

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return strdup("");
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = calloc(1, (size_t)n + 1);
    if (fread(s, 1, (size_t)n, f) != (size_t)n)
        s[0] = '\0';
    fclose(f);
    return s;
}

/* Copy what the child wrote so far from its pipe to its log file. The pipe is used only when
 * the child has a file size limit, which would otherwise cut its log file short. */
static void shim_pump(struct shim_proc *p)
{
    char buf[4096];
    ssize_t n;
    if (p->out < 0)
        return; /* the child writes its log file itself */
    FILE *f = fopen(p->log, "a");
    while ((n = read(p->out, buf, sizeof buf)) > 0)
        fwrite(buf, 1, (size_t)n, f);
    fclose(f);
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Start the binary with the common environment plus extra "KEY=VALUE" strings (NULL
 * terminated); fsize > 0 caps the size of files it writes (a full disk). */
static void shim_start_ex(struct shim_proc *p, const char *redis_url, rlim_t fsize,
                          const char *const *extra)
{
    static int n;
    const char *bindir = getenv("TIERONE_BIN_DIR");
    cr_assert_not_null(bindir, "TIERONE_BIN_DIR is not set (run through ctest)");
    char bin[512];
    snprintf(bin, sizeof bin, "%s/tierone-ingest", bindir);
    cr_assert_eq(access(bin, X_OK), 0, "%s not built", bin);
    snprintf(p->log, sizeof p->log, "%s/ingest-%d.log", tmpdir, ++n);
    p->port = 0;
    int fds[2];
    cr_assert_eq(pipe2(fds, O_CLOEXEC), 0);
    p->pid = fork();
    cr_assert_geq(p->pid, 0);
    if (p->pid == 0) {
        setenv("TIERONE_REDIS_URL", redis_url, 1);
        setenv("TIERONE_LISTEN_HOST", "127.0.0.1", 1);
        setenv("TIERONE_LISTEN_PORT", "0", 1);
        setenv("TIERONE_ADMIN_PORT", "0", 1);
        setenv("TIERONE_WEBHOOK_SECRETS", "old-secret," SECRET, 1);
        setenv("TIERONE_SPOOL_PATH", spool, 1);
        setenv("TIERONE_LOG_LEVEL", "info", 1);
        for (size_t i = 0; extra && extra[i]; i++)
            putenv((char *)extra[i]);
        if (fsize) {
            struct rlimit lim = {fsize, fsize};
            signal(SIGXFSZ, SIG_IGN);
            setrlimit(RLIMIT_FSIZE, &lim);
        }
        int fd = fsize ? fds[1] : open(p->log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        dup2(fd, 1);
        dup2(fd, 2);
        execl(bin, bin, (char *)NULL);
        _exit(127);
    }
    live_add(p->pid);
    close(fds[1]);
    p->out = fds[0];
    fcntl(p->out, F_SETFL, O_NONBLOCK);
    if (!fsize) {
        close(p->out);
        p->out = -1;
    }
    const char *key = "accepting webhooks on 127.0.0.1:";
    uint64_t deadline = now_ms() + 15000;
    while (now_ms() < deadline) {
        shim_pump(p);
        char *log = slurp(p->log);
        char *at = strstr(log, key);
        if (at)
            p->port = atoi(at + strlen(key));
        int status;
        int exited = waitpid(p->pid, &status, WNOHANG) == p->pid;
        if (exited)
            live_remove(p->pid);
        if (exited || p->port) {
            if (exited)
                cr_assert_fail("tierone-ingest exited at start (status %d):\n%s", status, log);
            free(log);
            return;
        }
        free(log);
        usleep(10000);
    }
    kill(p->pid, SIGKILL);
    cr_assert_fail("tierone-ingest did not start:\n%s", slurp(p->log));
}

static int metrics_has(int port, const char *needle);

/* Start a shim on the test Redis and wait until it is connected to it, so that a delivery
 * posted next goes straight to Redis (not to the spool while the connection is still being
 * set up). */
static void shim_start(struct shim_proc *p, const char *const *extra)
{
    shim_start_ex(p, test_redis_url(REDISDB), 0, extra);
    uint64_t deadline = now_ms() + 15000;
    while (!metrics_has(p->port, "\ntierone_ingest_redis_up 1\n")) {
        cr_assert_lt(now_ms(), deadline, "tierone-ingest did not connect to Redis");
        usleep(5000);
    }
}

/* Wait for the process; returns its exit status (128+sig if signalled). */
static int shim_wait(struct shim_proc *p, int timeout_ms)
{
    uint64_t deadline = now_ms() + (uint64_t)timeout_ms;
    int status;
    int rcode = -1;
    while (now_ms() < deadline) {
        shim_pump(p);
        pid_t r = waitpid(p->pid, &status, WNOHANG);
        if (r == p->pid) {
            rcode = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            break;
        }
        usleep(10000);
    }
    if (rcode < 0) {
        kill(p->pid, SIGKILL);
        waitpid(p->pid, &status, 0);
    }
    live_remove(p->pid);
    shim_pump(p);
    if (p->out >= 0)
        close(p->out);
    p->out = -1;
    return rcode;
}

static void shim_check_log(struct shim_proc *p)
{
    char *log = slurp(p->log);
    cr_assert_null(strstr(log, "ERROR: AddressSanitizer"), "%s", log);
    cr_assert_null(strstr(log, "ERROR: LeakSanitizer"), "%s", log);
    cr_assert_null(strstr(log, "runtime error:"), "%s", log);
    free(log);
}

/* SIGTERM: graceful exit with status 0. */
static void shim_stop(struct shim_proc *p)
{
    kill(p->pid, SIGTERM);
    int st = shim_wait(p, 20000);
    char *log = slurp(p->log);
    cr_assert_eq(st, 0, "exit status %d after SIGTERM:\n%s", st, log);
    free(log);
    shim_check_log(p);
}

/* ---------------------------------------------------------------------------------------
 * HTTP over blocking sockets */

struct conn {
    int fd;
    char buf[1 << 17];
    size_t len;
};

struct resp {
    int status;
    char headers[4096];
    char body[8192];
    size_t body_len;
};

static struct conn *conn_open(int port)
{
    struct conn *c = calloc(1, sizeof *c);
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(0x7f000001);
    cr_assert_eq(connect(c->fd, (struct sockaddr *)&a, sizeof a), 0, "connect: %s",
                 strerror(errno));
    struct timeval tv = {15, 0};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return c;
}

static void conn_close(struct conn *c)
{
    close(c->fd);
    free(c);
}

static void conn_send(struct conn *c, const char *data, size_t len)
{
    size_t off = 0;
    while (off < len) {
        ssize_t n = send(c->fd, data + off, len - off, MSG_NOSIGNAL);
        cr_assert_gt(n, 0, "send: %s", strerror(errno));
        off += (size_t)n;
    }
}

static void conn_sends(struct conn *c, const char *s)
{
    conn_send(c, s, strlen(s));
}

/* Read more bytes; 0 on EOF. */
static ssize_t conn_fill(struct conn *c)
{
    cr_assert_lt(c->len, sizeof c->buf - 1);
    ssize_t n = recv(c->fd, c->buf + c->len, sizeof c->buf - 1 - c->len, 0);
    cr_assert_geq(n, 0, "recv: %s", strerror(errno));
    c->len += (size_t)n;
    c->buf[c->len] = '\0';
    return n;
}

/* Read one response (Content-Length framed). */
static void conn_read(struct conn *c, struct resp *r)
{
    char *end;
    while (!(end = strstr(c->buf, "\r\n\r\n")))
        cr_assert_gt(conn_fill(c), 0, "EOF before a response; got: %s", c->buf);
    size_t hlen = (size_t)(end - c->buf) + 4;
    memset(r, 0, sizeof *r);
    cr_assert_eq(sscanf(c->buf, "HTTP/1.1 %d", &r->status), 1, "%s", c->buf);
    snprintf(r->headers, sizeof r->headers, "%.*s", (int)hlen, c->buf);
    const char *cl = strcasestr(r->headers, "\r\nContent-Length:");
    cr_assert_not_null(cl);
    size_t blen = strtoul(cl + 17, NULL, 10);
    while (c->len < hlen + blen)
        cr_assert_gt(conn_fill(c), 0, "EOF inside a body");
    cr_assert_lt(blen, sizeof r->body);
    memcpy(r->body, c->buf + hlen, blen);
    r->body_len = blen;
    memmove(c->buf, c->buf + hlen + blen, c->len - hlen - blen);
    c->len -= hlen + blen;
    c->buf[c->len] = '\0';
}

/* 1 if the server closed the connection (after any unread bytes). */
static int conn_eof(struct conn *c)
{
    return c->len == 0 && conn_fill(c) == 0;
}

/* One request on a new connection. */
static void roundtrip(int port, const char *req, size_t len, struct resp *r)
{
    struct conn *c = conn_open(port);
    conn_send(c, req, len);
    conn_read(c, r);
    conn_close(c);
}

static char *xfmt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static char *xfmt(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    cr_assert_geq(vasprintf(&s, fmt, ap), 0);
    va_end(ap);
    return s;
}

/* A signed POST; delivery NULL for none; extra: more header lines ("" for none). */
static char *signed_req(const char *path, const char *body, size_t blen, const char *secret,
                        long ts, const char *delivery, const char *extra)
{
    char tss[32], hex[SIGNATURE_HEX_LEN + 1];
    snprintf(tss, sizeof tss, "%ld", ts);
    signature_compute(secret, tss, body, blen, hex);
    char *dh = delivery ? xfmt("X-Chatwoot-Delivery: %s\r\n", delivery) : strdup("");
    char *head = xfmt("POST %s HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                      "Content-Length: %zu\r\nX-Chatwoot-Timestamp: %s\r\n"
                      "X-Chatwoot-Signature: sha256=%s\r\n%s%s\r\n",
                      path, blen, tss, hex, dh, extra);
    char *req = malloc(strlen(head) + blen + 1);
    memcpy(req, head, strlen(head));
    memcpy(req + strlen(head), body, blen);
    req[strlen(head) + blen] = '\0';
    free(dh);
    free(head);
    return req;
}

/* POST a signed body; return the response. */
static void post(int port, const char *path, const char *body, const char *delivery, struct resp *r)
{
    char *req = signed_req(path, body, strlen(body), SECRET, (long)time(NULL), delivery, "");
    roundtrip(port, req, strlen(req), r);
    free(req);
}

/* The jid in a 202 body. */
static void resp_jid(const struct resp *r, char out[32])
{
    const char *j = strstr(r->body, "\"jid\":\"");
    cr_assert_not_null(j, "%s", r->body);
    snprintf(out, 25, "%s", j + 7);
}

/* 1 if the shim's /metrics text contains needle. */
static int metrics_has(int port, const char *needle)
{
    struct conn *c = conn_open(port);
    conn_sends(c, "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    while (conn_fill(c) > 0)
        ;
    int found = strstr(c->buf, needle) != NULL;
    conn_close(c);
    return found;
}

/* The newest job in queue:events (LINDEX 0) parsed, and its raw text in *raw. */
static json_t *job_at(long idx, char **raw)
{
    char *s = test_redis_str(rc, "LINDEX queue:events %ld", idx);
    cr_assert_not_null(s, "no job at %ld", idx);
    json_error_t e;
    json_t *j = json_loads(s, 0, &e);
    cr_assert_not_null(j, "job is not JSON: %s: %s", e.text, s);
    if (raw)
        *raw = s;
    else
        free(s);
    return j;
}

static long long llen(void)
{
    return test_redis_int(rc, "LLEN queue:events");
}

/* ---------------------------------------------------------------------------------------
 * Tests */

#define CW_BODY                                                                                    \
    "{\"event\":\"message_created\",\"id\":42,\"content\":\"Hi \\u003cb\\u003e caf\xc3\xa9 "       \
    "\xf0\x9f\x98\x80\",\n \"note\":\"quote \\\" backslash \\\\ tab\\t\"}"

Test(ingest, signed_delivery_becomes_the_documented_job)
{
    struct shim_proc p;
    shim_start(&p, NULL);
    struct resp r;
    double before = (double)time(NULL);
    long ts = (long)time(NULL);
    char *req = signed_req("/webhooks/chatwoot", CW_BODY, strlen(CW_BODY), SECRET, ts,
                           "3f1c9a5e-1b2c-4d5e-8f90-0a1b2c3d4e5f", "");
    roundtrip(p.port, req, strlen(req), &r);
    free(req);
    cr_assert_eq(r.status, 202, "%d %s", r.status, r.body);
    cr_assert(strstr(r.headers, "application/json"));
    cr_assert(strstr(r.body, "\"status\":\"queued\""), "%s", r.body);
    char jid[32];
    resp_jid(&r, jid);

    cr_assert_eq(llen(), 1);
    cr_assert_eq(test_redis_int(rc, "SISMEMBER queues events"), 1);
    char *raw;
    json_t *job = job_at(0, &raw);
    const char *prefix =
        "{\"retry\":true,\"queue\":\"events\",\"class\":\"Tierone::ChatwootEvent\","
        "\"args\":[{\"body\":";
    cr_assert_eq(strncmp(raw, prefix, strlen(prefix)), 0, "key order: %s", raw);
    cr_assert_str_eq(json_string_value(json_object_get(job, "jid")), jid);
    cr_assert(json_is_real(json_object_get(job, "created_at")));
    cr_assert(json_is_real(json_object_get(job, "enqueued_at")));
    json_t *args = json_object_get(job, "args");
    cr_assert_eq(json_array_size(args), 1);
    json_t *a = json_array_get(args, 0);
    cr_assert_eq(json_object_size(a), 5);
    json_t *body = json_object_get(a, "body");
    cr_assert_eq(json_string_length(body), strlen(CW_BODY));
    cr_assert_eq(memcmp(json_string_value(body), CW_BODY, strlen(CW_BODY)), 0,
                 "the body round-trips byte for byte");
    cr_assert_str_eq(json_string_value(json_object_get(a, "delivery")),
                     "3f1c9a5e-1b2c-4d5e-8f90-0a1b2c3d4e5f");
    cr_assert(json_is_integer(json_object_get(a, "timestamp")));
    cr_assert_eq(json_integer_value(json_object_get(a, "timestamp")), ts);
    cr_assert_str_eq(json_string_value(json_object_get(a, "path")), "chatwoot");
    json_t *recv = json_object_get(a, "received_at");
    cr_assert(json_is_real(recv));
    cr_assert_geq(json_real_value(recv), before - 1);
    cr_assert_leq(json_real_value(recv), (double)time(NULL) + 1);
    json_decref(job);
    free(raw);

    post(p.port, "/webhooks/agent-bot", "{\"event\":\"conversation_status_changed\"}", NULL, &r);
    cr_assert_eq(r.status, 202);
    job = job_at(0, NULL);
    a = json_array_get(json_object_get(job, "args"), 0);
    cr_assert_str_eq(json_string_value(json_object_get(a, "path")), "agent-bot");
    cr_assert(json_is_null(json_object_get(a, "delivery")));
    json_decref(job);
    cr_assert_eq(test_redis_int(rc, "SCARD queues"), 1);
    shim_stop(&p);
}

Test(ingest, any_configured_secret_is_accepted)
{
    struct shim_proc p;
    shim_start(&p, NULL);
    struct resp r;
    const char *body = "{\"event\":\"contact_updated\"}";
    char *req = signed_req("/webhooks/chatwoot", body, strlen(body), "old-secret", (long)time(NULL),
                           NULL, "");
    roundtrip(p.port, req, strlen(req), &r);
    free(req);
    cr_assert_eq(r.status, 202, "%s", r.body);
    cr_assert_eq(llen(), 1);
    shim_stop(&p);
}

struct bad_case {
    const char *name;
    char *req;
    size_t len;
    int status;
    const char *body_part;
};

Test(ingest, bad_inputs_get_their_status_and_nothing_is_queued)
{
    static const char *const env[] = {"TIERONE_MAX_BODY=4096", "TIERONE_MAX_HEADER_BYTES=2048",
                                      NULL};
    struct shim_proc p;
    shim_start(&p, env);
    long now = (long)time(NULL);
    const char *ok = "{\"event\":\"message_created\"}";
    char big_header[3000];
    memset(big_header, 'h', sizeof big_header);
    memcpy(big_header, "X-Big: ", 7);
    memcpy(big_header + sizeof big_header - 3, "\r\n", 3);
    char long_id[OUTBOX_MAX_DELIVERY + 2];
    memset(long_id, 'd', sizeof long_id - 1);
    long_id[sizeof long_id - 1] = '\0';
    char *wrong = signed_req("/webhooks/chatwoot", ok, strlen(ok), "not-the-secret", now, "d1", "");
    char *unsig = xfmt("POST /webhooks/chatwoot HTTP/1.1\r\nHost: t\r\nContent-Length: %zu\r\n"
                       "X-Chatwoot-Delivery: d2\r\n\r\n%s",
                       strlen(ok), ok);
    struct bad_case cases[] = {
        {"unsigned", unsig, 0, 401, "missing"},
        {"wrong secret", wrong, 0, 401, "mismatch"},
        {"stale", signed_req("/webhooks/chatwoot", ok, strlen(ok), SECRET, now - 400, "d3", ""), 0,
         401, "stale"},
        {"future", signed_req("/webhooks/chatwoot", ok, strlen(ok), SECRET, now + 400, "d4", ""), 0,
         401, "stale"},
        {"not json", signed_req("/webhooks/chatwoot", "event=x", 7, SECRET, now, "d5", ""), 0, 400,
         "not a JSON object"},
        {"json array", signed_req("/webhooks/agent-bot", "[1,2]", 5, SECRET, now, "d6", ""), 0, 400,
         "not a JSON object"},
        {"truncated json", signed_req("/webhooks/chatwoot", "{\"a\":", 5, SECRET, now, "d7", ""), 0,
         400, "not a JSON object"},
        {"empty body", signed_req("/webhooks/chatwoot", "", 0, SECRET, now, "d8", ""), 0, 400,
         "not a JSON object"},
        {"long delivery id",
         signed_req("/webhooks/chatwoot", ok, strlen(ok), SECRET, now, long_id, ""), 0, 400,
         "X-Chatwoot-Delivery"},
        {"GET", xfmt("GET /webhooks/chatwoot HTTP/1.1\r\nHost: t\r\n\r\n"), 0, 405, ""},
        {"unknown path", signed_req("/webhooks/other", ok, strlen(ok), SECRET, now, "d9", ""), 0,
         404, ""},
        {"token path without a token configured",
         signed_req("/webhooks/chatwoot/" TOKEN, ok, strlen(ok), SECRET, now, "d10", ""), 0, 404,
         ""},
        {"no length", xfmt("POST /webhooks/chatwoot HTTP/1.1\r\nHost: t\r\n\r\n"), 0, 411, ""},
        {"body too large",
         xfmt("POST /webhooks/chatwoot HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n{}"), 0,
         413, ""},
        {"headers too large",
         xfmt("POST /webhooks/chatwoot HTTP/1.1\r\nHost: t\r\n%s\r\n", big_header), 0, 431, ""},
        {"garbage", xfmt("HELLO\r\n\r\n"), 0, 400, ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct bad_case *b = &cases[i];
        const char *blank = strstr(b->req, "\r\n\r\n");
        b->len = strlen(b->req);
        (void)blank;
        struct resp r;
        roundtrip(p.port, b->req, b->len, &r);
        cr_assert_eq(r.status, b->status, "%s: got %d (%s), want %d", b->name, r.status, r.body,
                     b->status);
        cr_assert(strstr(r.body, b->body_part), "%s: body %s", b->name, r.body);
        if (b->status == 405)
            cr_assert(strstr(r.headers, "Allow: POST"), "%s", r.headers);
        free(b->req);
    }
    cr_assert_eq(llen(), 0, "nothing queued");
    cr_assert_eq(test_redis_int(rc, "DBSIZE"), 0, "no dedupe key was set either");
    shim_stop(&p);
}

Test(ingest, repeat_deliveries_are_queued_once)
{
    struct shim_proc p;
    shim_start(&p, NULL);
    struct resp r;
    const char *body = "{\"event\":\"message_created\",\"id\":1}";
    for (int i = 0; i < 3; i++) {
        /* Agent-bot retries re-send with the same delivery id and a new timestamp. */
        char *req = signed_req("/webhooks/agent-bot", body, strlen(body), SECRET,
                               (long)time(NULL) - i, "dup-1", "");
        roundtrip(p.port, req, strlen(req), &r);
        free(req);
        cr_assert_eq(r.status, 202);
        cr_assert(strstr(r.body, i == 0 ? "\"queued\"" : "\"duplicate\""), "%d: %s", i, r.body);
    }
    cr_assert_eq(llen(), 1);
    long long ttl = test_redis_int(rc, "TTL tierone:delivery:dup-1");
    cr_assert(ttl > 86000 && ttl <= 86400, "ttl %lld", ttl);
    post(p.port, "/webhooks/agent-bot", body, "dup-2", &r);
    cr_assert_eq(llen(), 2);
    post(p.port, "/webhooks/chatwoot", body, NULL, &r);
    post(p.port, "/webhooks/chatwoot", body, NULL, &r);
    cr_assert_eq(llen(), 4, "without a delivery id there is no dedupe");
    shim_stop(&p);
}

Test(ingest, keep_alive_and_pipelining)
{
    struct shim_proc p;
    shim_start(&p, NULL);
    struct conn *c = conn_open(p.port);
    struct resp r;
    char id[32];
    for (int i = 0; i < 3; i++) {
        snprintf(id, sizeof id, "ka-%d", i);
        char *req =
            signed_req("/webhooks/chatwoot", "{\"n\":1}", 7, SECRET, (long)time(NULL), id, "");
        conn_sends(c, req);
        free(req);
        conn_read(c, &r);
        cr_assert_eq(r.status, 202);
        cr_assert_null(strstr(r.headers, "Connection: close"));
    }
    /* five requests in one write; answers come back in order */
    char all[16384] = "";
    for (int i = 0; i < 5; i++) {
        snprintf(id, sizeof id, "pl-%d", i);
        char *req =
            signed_req("/webhooks/chatwoot", "{\"n\":2}", 7, SECRET, (long)time(NULL), id, "");
        strcat(all, req);
        free(req);
    }
    conn_sends(c, all);
    char jids[5][32];
    for (int i = 0; i < 5; i++) {
        conn_read(c, &r);
        cr_assert_eq(r.status, 202, "%d: %s", i, r.body);
        resp_jid(&r, jids[i]);
    }
    cr_assert_eq(llen(), 8);
    for (int i = 0; i < 5; i++) { /* LPUSH: the newest is at index 0 */
        json_t *job = job_at(4 - i, NULL);
        cr_assert_str_eq(json_string_value(json_object_get(job, "jid")), jids[i]);
        json_t *a = json_array_get(json_object_get(job, "args"), 0);
        snprintf(id, sizeof id, "pl-%d", i);
        cr_assert_str_eq(json_string_value(json_object_get(a, "delivery")), id);
        json_decref(job);
    }
    conn_close(c);
    shim_stop(&p);
}

/* Several connections, each with requests pipelined in one write: the shim batches what
 * arrives together into one Redis transaction. Every request is answered in order on its
 * connection, each delivery id is queued once (across connections, and when a connection
 * repeats one), and each connection's jobs keep their order in the queue. */
Test(ingest, pipelined_requests_on_several_connections_are_queued_once_in_order)
{
    enum { NC = 4, NR = 4 };
    struct shim_proc p;
    shim_start(&p, NULL);
    struct conn *c[NC];
    char ids[NC][NR][32];
    for (int k = 0; k < NC; k++) {
        c[k] = conn_open(p.port);
        struct buf all = BUF_INIT;
        for (int j = 0; j < NR; j++) {
            snprintf(ids[k][j], sizeof ids[k][j], "m-%d-%d", k, j);
            if (j == 1 && k <= 1)
                snprintf(ids[k][j], sizeof ids[k][j], "shared"); /* on two connections */
            if (k == 2 && j == 2)
                snprintf(ids[k][j], sizeof ids[k][j], "m-2-0"); /* repeated on its own */
            char body[64];
            snprintf(body, sizeof body, "{\"event\":\"message_created\",\"n\":\"%d-%d\"}", k, j);
            char *req = signed_req("/webhooks/chatwoot", body, strlen(body), SECRET,
                                   (long)time(NULL), ids[k][j], "");
            buf_puts(&all, req);
            free(req);
        }
        conn_send(c[k], all.data, all.len);
        buf_free(&all);
    }
    int queued_shared = 0, dups = 0;
    char jids[NC][NR][32];
    for (int k = 0; k < NC; k++) {
        for (int j = 0; j < NR; j++) {
            struct resp r;
            conn_read(c[k], &r);
            cr_assert_eq(r.status, 202, "%d-%d: %s", k, j, r.body);
            jids[k][j][0] = '\0';
            if (strstr(r.body, "\"duplicate\"")) {
                dups++;
                cr_assert(strcmp(ids[k][j], "shared") == 0 || (k == 2 && j == 2), "%d-%d", k, j);
                continue;
            }
            cr_assert(strstr(r.body, "\"queued\""), "%d-%d: %s", k, j, r.body);
            resp_jid(&r, jids[k][j]);
            queued_shared += strcmp(ids[k][j], "shared") == 0;
        }
        conn_close(c[k]);
    }
    cr_assert_eq(dups, 2);
    cr_assert_eq(queued_shared, 1);
    long long n = llen();
    cr_assert_eq(n, NC * NR - 2);
    /* Oldest first: every delivery once, each connection's jobs in its order. */
    int next[NC] = {0};
    int seen_shared = 0;
    for (long long i = n - 1; i >= 0; i--) {
        json_t *job = job_at((long)i, NULL);
        json_t *a = json_array_get(json_object_get(job, "args"), 0);
        const char *d = json_string_value(json_object_get(a, "delivery"));
        const char *jid = json_string_value(json_object_get(job, "jid"));
        int found = 0;
        for (int k = 0; k < NC && !found; k++) {
            while (next[k] < NR && !jids[k][next[k]][0])
                next[k]++; /* answered "duplicate": not in the queue */
            if (next[k] < NR && strcmp(jids[k][next[k]], jid) == 0) {
                cr_assert_str_eq(d, ids[k][next[k]]);
                seen_shared += strcmp(d, "shared") == 0;
                next[k]++;
                found = 1;
            }
        }
        cr_assert(found, "job %s (%s) is not the next one of any connection", jid, d);
        json_decref(job);
    }
    cr_assert_eq(seen_shared, 1);
    shim_stop(&p);
}

/* Errors the HTTP layer answers itself reach the per-path, per-status request counter. */
Test(ingest, http_layer_errors_are_counted_by_path_and_status)
{
    struct shim_proc p;
    shim_start(&p, NULL);
    struct resp r;
    const char *big =
        "POST /webhooks/chatwoot HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999\r\n\r\n";
    roundtrip(p.port, big, strlen(big), &r);
    cr_assert_eq(r.status, 413);
    const char *nolen = "POST /webhooks/agent-bot HTTP/1.1\r\nHost: t\r\n\r\n";
    roundtrip(p.port, nolen, strlen(nolen), &r);
    cr_assert_eq(r.status, 411);
    roundtrip(p.port, "BAD\r\n\r\n", 7, &r);
    cr_assert_eq(r.status, 400);
    cr_assert(
        metrics_has(p.port, "tierone_ingest_requests_total{path=\"chatwoot\",status=\"413\"} 1\n"));
    cr_assert(metrics_has(p.port,
                          "tierone_ingest_requests_total{path=\"agent-bot\",status=\"411\"} 1\n"));
    cr_assert(
        metrics_has(p.port, "tierone_ingest_requests_total{path=\"other\",status=\"400\"} 1\n"));
    shim_stop(&p);
}

Test(ingest, chunked_body_is_decoded_and_verified)
{
    struct shim_proc p;
    shim_start(&p, NULL);
    const char *body = "{\"event\":\"message_updated\",\"content\":\"chunked\"}";
    char tss[32], hex[SIGNATURE_HEX_LEN + 1];
    snprintf(tss, sizeof tss, "%ld", (long)time(NULL));
    signature_compute(SECRET, tss, body, strlen(body), hex);
    char *req = xfmt("POST /webhooks/chatwoot HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                     "X-Chatwoot-Timestamp: %s\r\nX-Chatwoot-Signature: sha256=%s\r\n\r\n"
                     "a\r\n%.10s\r\n%zx\r\n%s\r\n0\r\n\r\n",
                     tss, hex, body, strlen(body) - 10, body + 10);
    struct resp r;
    roundtrip(p.port, req, strlen(req), &r);
    free(req);
    cr_assert_eq(r.status, 202, "%s", r.body);
    json_t *job = job_at(0, NULL);
    json_t *a = json_array_get(json_object_get(job, "args"), 0);
    cr_assert_str_eq(json_string_value(json_object_get(a, "body")), body);
    json_decref(job);
    shim_stop(&p);
}

Test(ingest, slow_clients_are_cut_off)
{
    static const char *const env[] = {"TIERONE_HEADER_TIMEOUT=300ms", "TIERONE_BODY_TIMEOUT=300ms",
                                      NULL};
    struct shim_proc p;
    shim_start(&p, env);
    struct resp r;
    struct conn *c = conn_open(p.port);
    conn_sends(c, "POST /webhooks/chatwoot HTTP/1.1\r\nHost: t\r\nX-Chatwoot-Time");
    conn_read(c, &r);
    cr_assert_eq(r.status, 408);
    cr_assert(conn_eof(c));
    conn_close(c);

    c = conn_open(p.port);
    conn_sends(c, "POST /webhooks/chatwoot HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n"
                  "{\"event\":");
    conn_read(c, &r);
    cr_assert_eq(r.status, 408);
    cr_assert(conn_eof(c));
    conn_close(c);
    cr_assert_eq(llen(), 0);
    shim_stop(&p);
}

Test(ingest, unsigned_token_path)
{
    static const char *const env[] = {"TIERONE_UNSIGNED_TOKEN=" TOKEN, NULL};
    struct shim_proc p;
    shim_start(&p, env);
    struct resp r;
    const char *body = "{\"event\":\"message_created\"}";
    char *req = xfmt("POST /webhooks/agent-bot/" TOKEN " HTTP/1.1\r\nHost: t\r\n"
                     "Content-Length: %zu\r\nX-Chatwoot-Delivery: u-1\r\n\r\n%s",
                     strlen(body), body);
    roundtrip(p.port, req, strlen(req), &r);
    free(req);
    cr_assert_eq(r.status, 202, "%s", r.body);
    json_t *job = job_at(0, NULL);
    json_t *a = json_array_get(json_object_get(job, "args"), 0);
    cr_assert_str_eq(json_string_value(json_object_get(a, "path")), "agent-bot");
    cr_assert(json_is_null(json_object_get(a, "timestamp")));
    cr_assert_str_eq(json_string_value(json_object_get(a, "delivery")), "u-1");
    json_decref(job);

    req = xfmt("POST /webhooks/chatwoot/wrong-token-0123456789 HTTP/1.1\r\nHost: t\r\n"
               "Content-Length: %zu\r\n\r\n%s",
               strlen(body), body);
    roundtrip(p.port, req, strlen(req), &r);
    free(req);
    cr_assert_eq(r.status, 404);
    req = xfmt("POST /webhooks/chatwoot HTTP/1.1\r\nHost: t\r\nContent-Length: %zu\r\n\r\n%s",
               strlen(body), body);
    roundtrip(p.port, req, strlen(req), &r);
    free(req);
    cr_assert_eq(r.status, 401, "the plain path still needs a signature");
    /* a signed delivery on the plain path works alongside */
    post(p.port, "/webhooks/chatwoot", body, NULL, &r);
    cr_assert_eq(r.status, 202);
    cr_assert_eq(llen(), 2);
    shim_stop(&p);
}

Test(ingest, int_millis_timestamps)
{
    static const char *const env[] = {"TIERONE_TIMESTAMP_FORMAT=int_millis", NULL};
    struct shim_proc p;
    shim_start(&p, env);
    struct resp r;
    post(p.port, "/webhooks/chatwoot", "{}", NULL, &r);
    cr_assert_eq(r.status, 202);
    json_t *job = job_at(0, NULL);
    json_t *ca = json_object_get(job, "created_at");
    cr_assert(json_is_integer(ca));
    cr_assert_gt(json_integer_value(ca), 100000000000LL);
    json_t *a = json_array_get(json_object_get(job, "args"), 0);
    cr_assert(json_is_real(json_object_get(a, "received_at")), "received_at stays float seconds");
    json_decref(job);
    shim_stop(&p);
}

/* A port p such that p .. p + n - 1 were all free a moment ago (held together while
 * looking, so none of them is a port something else already listens on). */
static int free_port_run(int n)
{
    cr_assert_leq(n, 8);
    for (int attempt = 0; attempt < 100; attempt++) {
        int base = test_port_free(), fds[8], ok = 1, k;
        if (base + n - 1 > 65535)
            continue;
        for (k = 0; k < n && ok; k++) {
            fds[k] = socket(AF_INET, SOCK_STREAM, 0);
            struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)(base + k))};
            a.sin_addr.s_addr = htonl(0x7f000001);
            ok = bind(fds[k], (struct sockaddr *)&a, sizeof a) == 0;
        }
        while (k-- > 0)
            close(fds[k]);
        if (ok)
            return base;
    }
    cr_assert_fail("no run of %d free ports", n);
    return 0;
}

Test(ingest, redis_down_spools_and_the_next_start_drains)
{
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/%d", test_port_free(), REDISDB);
    struct shim_proc p;
    shim_start_ex(&p, url, 0, NULL);
    struct resp r;
    post(p.port, "/webhooks/chatwoot", "{\"n\":1}", "sp-1", &r);
    cr_assert_eq(r.status, 202, "%s", r.body);
    cr_assert(strstr(r.body, "\"spooled\""), "%s", r.body);
    post(p.port, "/webhooks/chatwoot", "{\"n\":2}", "sp-2", &r);
    post(p.port, "/webhooks/chatwoot", "{\"n\":2}", "sp-2", &r); /* a repeat, spooled too */
    post(p.port, "/webhooks/chatwoot", "{\"n\":3}", NULL, &r);
    cr_assert_eq(r.status, 202);
    shim_stop(&p);
    cr_assert_eq(llen(), 0);

    shim_start(&p, NULL); /* same spool, Redis reachable */
    uint64_t deadline = now_ms() + 15000;
    while (llen() < 3 && now_ms() < deadline)
        usleep(10000);
    cr_assert_eq(llen(), 3, "spooled jobs drained, the repeat deduped");
    const char *order[] = {"{\"n\":1}", "{\"n\":2}", "{\"n\":3}"};
    for (int i = 0; i < 3; i++) {
        json_t *job = job_at(2 - i, NULL);
        json_t *a = json_array_get(json_object_get(job, "args"), 0);
        cr_assert_str_eq(json_string_value(json_object_get(a, "body")), order[i]);
        json_decref(job);
    }
    /* once drained (the shim saw the last reply), new deliveries go straight to Redis */
    deadline = now_ms() + 15000;
    while (!metrics_has(p.port, "\ntierone_ingest_spool_depth 0\n") && now_ms() < deadline)
        usleep(10000);
    post(p.port, "/webhooks/chatwoot", "{\"n\":4}", NULL, &r);
    cr_assert(strstr(r.body, "\"queued\""), "%s", r.body);
    shim_stop(&p);
    struct stat st;
    cr_assert_eq(stat(spool, &st), 0);
    cr_assert_eq(st.st_size, 16, "the spool is cut back to its header");
}

Test(ingest, disk_full_and_redis_down_answers_500)
{
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/%d", test_port_free(), REDISDB);
    struct shim_proc p;
    shim_start_ex(&p, url, 200, NULL); /* room for the header, not for a job */
    struct resp r;
    post(p.port, "/webhooks/agent-bot", "{\"event\":\"message_created\"}", "full-1", &r);
    cr_assert_eq(r.status, 500, "%s", r.body);
    cr_assert(strstr(r.body, "cannot queue"), "%s", r.body);
    shim_stop(&p);
}

Test(ingest, health_endpoints_and_metrics)
{
    struct shim_proc p;
    shim_start(&p, NULL);
    struct resp r;
    const char *get = "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";
    roundtrip(p.port, get, strlen(get), &r);
    cr_assert_eq(r.status, 200);
    get = "GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n";
    roundtrip(p.port, get, strlen(get), &r);
    cr_assert_eq(r.status, 200);
    post(p.port, "/webhooks/chatwoot", "{\"event\":\"message_created\"}", NULL, &r);
    post(p.port, "/webhooks/chatwoot", "nope", NULL, &r);
    struct conn *c = conn_open(p.port);
    conn_sends(c, "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    while (conn_fill(c) > 0) /* the whole exposition, up to the server's close */
        ;
    cr_assert(strstr(c->buf, "HTTP/1.1 200"), "%s", c->buf);
    cr_assert(strstr(c->buf, "tierone_ingest_requests_total{path=\"chatwoot\",status=\"202\"} 1"),
              "%s", c->buf);
    cr_assert(strstr(c->buf, "tierone_ingest_requests_total{path=\"chatwoot\",status=\"400\"} 1"));
    cr_assert(strstr(c->buf,
                     "tierone_ingest_events_total{path=\"chatwoot\",event=\"message_created\"} 1"));
    cr_assert(strstr(c->buf, "tierone_ingest_jobs_total{result=\"queued\"} 1"));
    cr_assert(strstr(c->buf, "tierone_ingest_redis_up 1"));
    conn_close(c);
    shim_stop(&p);
}

Test(ingest, configuration_errors_exit_2)
{
    const char *bindir = getenv("TIERONE_BIN_DIR");
    cr_assert_not_null(bindir);
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "env -u TIERONE_WEBHOOK_SECRETS -u TIERONE_UNSIGNED_TOKEN %s/tierone-ingest "
             ">%s/cfg.out 2>&1",
             bindir, tmpdir);
    int st = system(cmd);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2, "status %d", st);
    snprintf(cmd, sizeof cmd, "%s/cfg.out", tmpdir);
    char *out = slurp(cmd);
    cr_assert(strstr(out, "TIERONE_WEBHOOK_SECRETS"), "%s", out);
    free(out);
    snprintf(cmd, sizeof cmd,
             "TIERONE_WEBHOOK_SECRETS=topsecret %s/tierone-ingest --check-config >%s/cfg.out 2>&1",
             bindir, tmpdir);
    st = system(cmd);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %d", st);
    snprintf(cmd, sizeof cmd, "%s/cfg.out", tmpdir);
    out = slurp(cmd);
    cr_assert_null(strstr(out, "topsecret"), "secrets are masked: %s", out);
    cr_assert(strstr(out, "configuration OK"), "%s", out);
    free(out);
}

/* ---------------------------------------------------------------------------------------
 * Several processes (TIERONE_INGEST_PROCESSES) */

/* Records waiting in the spool file at path (head to end); -1 when there is no file. */
static long spool_records(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    unsigned char hdr[16];
    long n = 0;
    if (fread(hdr, 1, sizeof hdr, f) == sizeof hdr) {
        uint64_t head = 0;
        for (int i = 7; i >= 0; i--)
            head = head << 8 | hdr[8 + i];
        fseek(f, (long)head, SEEK_SET);
        unsigned char rec[8];
        while (fread(rec, 1, sizeof rec, f) == sizeof rec) {
            uint32_t len = (uint32_t)rec[0] | (uint32_t)rec[1] << 8 | (uint32_t)rec[2] << 16 |
                           (uint32_t)rec[3] << 24;
            if (fseek(f, (long)len, SEEK_CUR) != 0)
                break;
            n++;
        }
    }
    fclose(f);
    return n;
}

/* The value of one series in the /metrics text served on port; -1 when absent or nothing
 * listens there (yet). */
static double metric_value(int port, const char *series)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(0x7f000001);
    int up = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    if (!up)
        return -1;
    struct conn *c = conn_open(port);
    conn_sends(c, "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    while (conn_fill(c) > 0)
        ;
    char *key = xfmt("\n%s ", series);
    const char *at = strstr(c->buf, key);
    double v = at ? strtod(at + strlen(key), NULL) : -1;
    free(key);
    conn_close(c);
    return v;
}

static int log_has(const struct shim_proc *p, const char *needle)
{
    char *log = slurp(p->log);
    int found = strstr(log, needle) != NULL;
    free(log);
    return found;
}

Test(ingest, several_processes_share_the_port_and_each_spools_to_its_own_file)
{
    char url[64], *sp1 = xfmt("%s.1", spool), *sp2 = xfmt("%s.2", spool);
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/%d", test_port_free(), REDISDB);
    const char *extra[] = {"TIERONE_INGEST_PROCESSES=2", NULL};
    struct shim_proc p;
    shim_start_ex(&p, url, 0, extra);
    /* one connection per delivery until both processes have taken some */
    int posted = 0;
    struct resp r;
    while (posted < 500 && !(spool_records(sp1) > 0 && spool_records(sp2) > 0)) {
        char body[32], id[32];
        snprintf(body, sizeof body, "{\"n\":%d}", posted);
        snprintf(id, sizeof id, "mp-%d", posted);
        post(p.port, "/webhooks/chatwoot", body, id, &r);
        cr_assert_eq(r.status, 202, "%s", r.body);
        cr_assert(strstr(r.body, "\"spooled\""), "%s", r.body);
        posted++;
    }
    long n1 = spool_records(sp1), n2 = spool_records(sp2);
    cr_assert(n1 > 0 && n2 > 0, "after %d deliveries: process 1 spooled %ld, process 2 %ld", posted,
              n1, n2);
    cr_assert_eq(n1 + n2, posted);
    cr_assert_eq(spool_records(spool), -1, "with several processes the plain name is unused");
    shim_stop(&p);
    cr_assert(log_has(&p, "process 1 (pid"));
    cr_assert(log_has(&p, "all processes stopped (exit status 0)"));
    cr_assert_eq(spool_records(sp1) + spool_records(sp2), posted, "nothing lost at SIGTERM");

    /* back to one process, Redis up: it adopts both spools and drains them */
    shim_start(&p, NULL);
    uint64_t deadline = now_ms() + 15000;
    while (llen() < posted && now_ms() < deadline)
        usleep(10000);
    cr_assert_eq(llen(), posted);
    deadline = now_ms() + 15000;
    while (!metrics_has(p.port, "\ntierone_ingest_spool_depth 0\n") && now_ms() < deadline)
        usleep(10000);
    shim_stop(&p);
    cr_assert_eq(llen(), posted, "each delivery once");
    cr_assert_eq(spool_records(sp1), -1, "the adopted spool is removed");
    cr_assert_eq(spool_records(sp2), -1);
    cr_assert_eq(spool_records(spool), 0);
    free(sp1);
    free(sp2);
}

Test(ingest, sigterm_to_the_parent_stops_every_process_and_loses_nothing)
{
    int admin = free_port_run(3); /* the shared admin port, then one per process */
    char *admin_env = xfmt("TIERONE_ADMIN_PORT=%d", admin);
    const char *extra[] = {"TIERONE_INGEST_PROCESSES=2", admin_env, NULL};
    struct shim_proc p;
    shim_start_ex(&p, test_redis_url(REDISDB), 0, extra);
    uint64_t deadline = now_ms() + 15000;
    while (metric_value(admin + 1, "tierone_ingest_redis_up") != 1 ||
           metric_value(admin + 2, "tierone_ingest_redis_up") != 1) {
        cr_assert_lt(now_ms(), deadline, "the processes did not connect to Redis");
        usleep(10000);
    }
    cr_assert_eq(metric_value(admin + 1, "tierone_ingest_process"), 1);
    cr_assert_eq(metric_value(admin + 2, "tierone_ingest_process"), 2);
    const char *q = "tierone_ingest_jobs_total{result=\"queued\"}";
    int posted = 0;
    struct resp r;
    while (posted < 500 && !(metric_value(admin + 1, q) > 0 && metric_value(admin + 2, q) > 0)) {
        char body[32], id[32];
        snprintf(body, sizeof body, "{\"n\":%d}", posted);
        snprintf(id, sizeof id, "st-%d", posted);
        post(p.port, "/webhooks/agent-bot", body, id, &r);
        cr_assert_eq(r.status, 202, "%s", r.body);
        posted++;
    }
    double q1 = metric_value(admin + 1, q), q2 = metric_value(admin + 2, q);
    cr_assert(q1 > 0 && q2 > 0, "after %d deliveries: process 1 queued %g, process 2 %g", posted,
              q1, q2);
    cr_assert_eq(q1 + q2, posted);
    /* the shared admin port answers too */
    cr_assert_eq(metric_value(admin, "tierone_ingest_redis_up"), 1);
    /* a request in flight at SIGTERM still gets its answer (the first one on the connection
     * makes sure a process has accepted it) */
    struct conn *c = conn_open(p.port);
    char *req = signed_req("/webhooks/chatwoot", "{\"last\":1}", 10, SECRET, (long)time(NULL),
                           "st-last", "");
    conn_sends(c, "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    conn_read(c, &r);
    cr_assert_eq(r.status, 200);
    conn_send(c, req, strlen(req) - 3);
    kill(p.pid, SIGTERM);
    /* complete the request only once both processes are stopping */
    deadline = now_ms() + 15000;
    while (!(log_has(&p, "ingest.1\",\"msg\":\"ingest: Terminated: no new") &&
             log_has(&p, "ingest.2\",\"msg\":\"ingest: Terminated: no new"))) {
        cr_assert_lt(now_ms(), deadline, "%s", slurp(p.log));
        usleep(5000);
    }
    conn_send(c, req + strlen(req) - 3, 3);
    conn_read(c, &r);
    cr_assert_eq(r.status, 202, "%s", r.body);
    conn_close(c);
    free(req);
    int st = shim_wait(&p, 20000);
    cr_assert_eq(st, 0, "exit status %d:\n%s", st, slurp(p.log));
    shim_check_log(&p);
    cr_assert(log_has(&p, "process 1 (pid"));
    cr_assert(log_has(&p, "process 2 (pid"));
    cr_assert(log_has(&p, "all processes stopped (exit status 0)"));
    cr_assert_eq(llen(), posted + 1, "every answered delivery is in Redis");
    free(admin_env);
}

/* The pids of p's children (the processes the supervisor forked); returns how many. */
static int shim_children(const struct shim_proc *p, pid_t *out, int cap)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task/%d/children", (int)p->pid, (int)p->pid);
    char s[256] = "", *at = s; /* a /proc file: its size reads as 0, so no slurp */
    FILE *f = fopen(path, "r");
    if (f) {
        size_t got = fread(s, 1, sizeof s - 1, f);
        s[got] = '\0';
        fclose(f);
    }
    int n = 0;
    for (long v; n < cap && (v = strtol(at, &at, 10)) > 0;)
        out[n++] = (pid_t)v;
    return n;
}

static int log_count(const struct shim_proc *p, const char *needle)
{
    char *log = slurp(p->log);
    int n = 0;
    for (const char *at = log; (at = strstr(at, needle)) != NULL; at++)
        n++;
    free(log);
    return n;
}

Test(ingest, a_process_that_dies_is_started_again)
{
    const char *extra[] = {"TIERONE_INGEST_PROCESSES=2", NULL};
    struct shim_proc p;
    shim_start(&p, extra);
    pid_t kids[4];
    uint64_t deadline = now_ms() + 15000;
    while (shim_children(&p, kids, 4) < 2 || log_count(&p, "accepting webhooks") < 2) {
        cr_assert_lt(now_ms(), deadline, "%s", slurp(p.log));
        usleep(5000);
    }
    cr_assert_eq(kill(kids[0], SIGKILL), 0);
    deadline = now_ms() + 15000;
    while (log_count(&p, "accepting webhooks") < 3) { /* restarted after about 1 s */
        cr_assert_lt(now_ms(), deadline, "%s", slurp(p.log));
        usleep(10000);
    }
    cr_assert(log_has(&p, "killed by Killed; starting it again"), "%s", slurp(p.log));
    pid_t now_kids[4];
    cr_assert_eq(shim_children(&p, now_kids, 4), 2);
    cr_assert(now_kids[0] != kids[0] && now_kids[1] != kids[0]);
    struct resp r;
    for (int i = 0; i < 10; i++) {
        post(p.port, "/webhooks/chatwoot", "{\"after\":\"restart\"}", NULL, &r);
        cr_assert_eq(r.status, 202, "%s", r.body);
    }
    deadline = now_ms() + 15000;
    while (llen() < 10 && now_ms() < deadline)
        usleep(10000);
    cr_assert_eq(llen(), 10);
    shim_stop(&p); /* the last exit of each process counts: 0 */
}

Test(ingest, a_stranded_spool_of_a_larger_n_is_drained)
{
    char url[64], *sp3 = xfmt("%s.3", spool), *sp3_env = xfmt("TIERONE_SPOOL_PATH=%s", sp3);
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/%d", test_port_free(), REDISDB);
    /* what process 3 of 3 would leave: a spool named <spool>.3 */
    const char *as_third[] = {sp3_env, NULL};
    struct shim_proc p;
    shim_start_ex(&p, url, 0, as_third);
    struct resp r;
    const char *bodies[] = {"{\"n\":1}", "{\"n\":2}", "{\"n\":3}"};
    for (int i = 0; i < 3; i++) {
        post(p.port, "/webhooks/chatwoot", bodies[i], NULL, &r);
        cr_assert(strstr(r.body, "\"spooled\""), "%s", r.body);
    }
    shim_stop(&p);
    cr_assert_eq(spool_records(sp3), 3);

    const char *two[] = {"TIERONE_INGEST_PROCESSES=2", NULL};
    shim_start(&p, two);
    uint64_t deadline = now_ms() + 15000;
    while (llen() < 3 && now_ms() < deadline)
        usleep(10000);
    cr_assert_eq(llen(), 3);
    for (int i = 0; i < 3; i++) {
        json_t *job = job_at(2 - i, NULL);
        json_t *a = json_array_get(json_object_get(job, "args"), 0);
        cr_assert_str_eq(json_string_value(json_object_get(a, "body")), bodies[i]);
        json_decref(job);
    }
    cr_assert_eq(spool_records(sp3), -1, "the stranded spool is removed once moved");
    cr_assert(log_has(&p, "moved 3 job(s) from the spool"));
    shim_stop(&p);
    free(sp3);
    free(sp3_env);
}

Test(ingest, two_processes_never_share_a_spool_file)
{
    struct shim_proc p;
    shim_start(&p, NULL);
    const char *bindir = getenv("TIERONE_BIN_DIR");
    char *cmd = xfmt("TIERONE_LISTEN_HOST=127.0.0.1 TIERONE_LISTEN_PORT=0 TIERONE_ADMIN_PORT=0 "
                     "TIERONE_WEBHOOK_SECRETS=x TIERONE_SPOOL_PATH='%s' timeout 10 "
                     "%s/tierone-ingest >%s/second.out 2>&1",
                     spool, bindir, tmpdir);
    int st = system(cmd);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2, "status %d", st);
    free(cmd);
    char *path = xfmt("%s/second.out", tmpdir);
    char *out = slurp(path);
    cr_assert(strstr(out, "in use by another process"), "%s", out);
    free(out);
    free(path);
    shim_stop(&p);
}

Test(ingest, healthcheck_flag_checks_the_running_daemon)
{
    struct shim_proc p;
    shim_start(&p, NULL);
    const char *bindir = getenv("TIERONE_BIN_DIR");
    char *cmd = xfmt("TIERONE_LISTEN_HOST=0.0.0.0 TIERONE_LISTEN_PORT=%d TIERONE_ADMIN_PORT=0 "
                     "TIERONE_WEBHOOK_SECRETS=x %s/tierone-ingest --healthcheck >%s/hc.out 2>&1",
                     p.port, bindir, tmpdir);
    int st = system(cmd);
    char *path = xfmt("%s/hc.out", tmpdir);
    char *out = slurp(path);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %d: %s", st, out);
    cr_assert(strstr(out, "healthy: 200"), "%s", out);
    free(out);
    shim_stop(&p);
    st = system(cmd);
    out = slurp(path);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 1, "status %d: %s", st, out);
    cr_assert(strstr(out, "unhealthy"), "%s", out);
    free(out);
    free(path);
    free(cmd);
}

/* shim_job_arg writes the body as buf_json_string does (tests/unit/test_buf.c checks that
 * escaping against the byte-at-a-time rule), then the other fields: random bodies of every
 * length from 0 to 300, mostly plain text with quotes, backslashes, controls and UTF-8. */
Test(ingest_arg, body_escaping_matches_buf_json_string)
{
    const char pool[] = "abcxyz \"\\\n\t\x01\x1f\x7f\xc3\xa9\xf0\x9f\x98\x80/<>";
    srand(12345);
    char body[300];
    for (int round = 0; round < 2000; round++) {
        size_t len = (size_t)(round % 301);
        int density = 1 + round % 7; /* 1 in 2^density bytes is from the whole pool */
        for (size_t i = 0; i < len; i++)
            body[i] = rand() % (1 << density) ? (char)('a' + rand() % 26)
                                              : pool[rand() % (int)(sizeof pool - 1)];
        struct buf want = {0}, got = {0};
        buf_puts(&want, "{\"body\":");
        buf_json_string(&want, body, len);
        shim_job_arg(&got, body, len, NULL, NULL, "chatwoot", 1.5);
        cr_assert_geq(got.len, want.len);
        cr_assert_eq(memcmp(got.data, want.data, want.len), 0, "round %d:\n%s\n%s", round,
                     want.data, got.data);
        cr_assert_eq(strncmp(got.data + want.len, ",\"delivery\":", 12), 0, "%s", got.data);
        buf_free(&want);
        buf_free(&got);
    }
}

/* shim_job_arg writes received_at with its own integer formatting: it must match Ruby's
 * Float#to_s (job_format_time) for every microsecond-resolution wall time. */
Test(ingest_arg, received_at_matches_ruby_float_format)
{
    const double samples[] = {1712345678.123456, 1712345678.5,     1712345678.0, 1700000000.000001,
                              1799999999.999999, 1712345678.10002, 0.25};
    unsigned seed = 12345;
    for (int i = 0; i < 20000; i++) {
        double t;
        if (i < (int)(sizeof samples / sizeof samples[0])) {
            t = samples[i];
        } else {
            seed = seed * 1103515245u + 12345u;
            long long sec = 1600000000LL + (seed % 400000000u);
            seed = seed * 1103515245u + 12345u;
            t = (double)sec + (double)(seed % 1000000u) / 1e6; /* as clock_wall_s does */
        }
        struct buf b = BUF_INIT;
        shim_job_arg(&b, "{}", 2, NULL, NULL, "chatwoot", t);
        char want[64];
        job_format_time(want, sizeof want, JOB_TS_FLOAT_SECONDS, t);
        const char *got = strstr(b.data, "\"received_at\":") + 14;
        cr_assert_eq(strncmp(got, want, strlen(want)), 0, "%.6f: got %s want %s", t, got, want);
        cr_assert_eq(got[strlen(want)], '}', "%s vs %s", got, want);
        buf_free(&b);
    }
}

/* ---------------------------------------------------------------------------------------
 * The outbox in process: what one loop iteration's batch does in Redis */

struct ob_slot {
    int done;
    enum outbox_result res;
    int *count;
};

static void ob_on_result(enum outbox_result res, const char *error, void *data)
{
    struct ob_slot *s = data;
    (void)error;
    cr_assert_not(s->done, "callback ran twice");
    s->done = 1;
    s->res = res;
    (*s->count)++;
}

struct ob_env {
    uv_loop_t loop;
    struct metrics_registry *reg;
    struct outbox *ob;
    int closed;
};

static void ob_on_closed(void *data)
{
    ((struct ob_env *)data)->closed = 1;
}

/* Run the loop until *flag reaches want, with a deadline. */
static void ob_run_until(struct ob_env *e, const int *flag, int want, const char *what)
{
    uint64_t deadline = now_ms() + 15000;
    while (*flag < want) {
        cr_assert_lt(now_ms(), deadline, "timed out waiting for %s", what);
        uv_run(&e->loop, UV_RUN_ONCE);
    }
}

static void ob_open(struct ob_env *e)
{
    memset(e, 0, sizeof *e);
    cr_assert_eq(uv_loop_init(&e->loop), 0);
    e->reg = metrics_registry_new();
    struct outbox_opts o = {
        .redis_url = test_redis_url(REDISDB),
        .spool_path = spool,
        .drain_interval_ms = 20,
        .metrics = e->reg,
    };
    char err[256];
    e->ob = outbox_new(&e->loop, &o, err, sizeof err);
    cr_assert_not_null(e->ob, "%s", err);
    uint64_t deadline = now_ms() + 15000;
    while (!outbox_redis_up(e->ob)) {
        cr_assert_lt(now_ms(), deadline, "Redis did not come up");
        uv_run(&e->loop, UV_RUN_ONCE);
    }
}

static void ob_close(struct ob_env *e)
{
    outbox_close(e->ob, ob_on_closed, e);
    ob_run_until(e, &e->closed, 1, "the outbox to close");
    uv_run(&e->loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&e->loop), 0);
    metrics_registry_free(e->reg);
}

/* Value of a metrics line (exact series text), or -1 when absent. */
static double ob_metric(struct ob_env *e, const char *series)
{
    struct buf b = BUF_INIT;
    metrics_render(e->reg, &b);
    double v = -1;
    char *line = b.data;
    while (line && *line) {
        char *nl = strchr(line, '\n');
        if (strncmp(line, series, strlen(series)) == 0 && line[strlen(series)] == ' ')
            v = strtod(line + strlen(series) + 1, NULL);
        line = nl ? nl + 1 : NULL;
    }
    buf_free(&b);
    return v;
}

/* queue:events from oldest to newest, as delivery ids ("-" for none) joined by spaces. */
static char *queue_deliveries(void)
{
    redisReply *r = test_redis_cmd(rc, "LRANGE queue:events 0 -1");
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
    struct buf b = BUF_INIT;
    for (size_t i = r->elements; i-- > 0;) {
        json_error_t e;
        json_t *j = json_loads(r->element[i]->str, 0, &e);
        cr_assert_not_null(j, "not JSON: %s", r->element[i]->str);
        const char *d = json_string_value(json_object_get(j, "d"));
        buf_printf(&b, "%s%s", b.len ? " " : "", d ? d : "-");
        json_decref(j);
    }
    freeReplyObject(r);
    buf_puts(&b, "");
    return buf_steal(&b);
}

struct ob_case {
    const char *delivery; /* NULL = none */
    enum outbox_result want;
};

/* Submit the cases in a row (one loop iteration: one batch); payloads {"d":"<id>"}. */
static void ob_submit_all(struct ob_env *e, const struct ob_case *cases, size_t n,
                          struct ob_slot *slots, int *count)
{
    for (size_t i = 0; i < n; i++) {
        char payload[128], err[256];
        snprintf(payload, sizeof payload, "{\"d\":\"%s\",\"i\":%zu}",
                 cases[i].delivery ? cases[i].delivery : "-", i);
        slots[i] = (struct ob_slot){.count = count};
        cr_assert_eq(outbox_submit(e->ob, cases[i].delivery, xstrdup(payload), strlen(payload),
                                   ob_on_result, &slots[i], err, sizeof err),
                     0, "%s", err);
        cr_assert_not(slots[i].done, "a callback ran inside outbox_submit");
    }
}

/* Submit the cases as one batch, run the loop until every callback ran, and check each
 * result against its case. */
static void ob_batch(struct ob_env *e, const struct ob_case *cases, size_t n, struct ob_slot *slots,
                     const char *what)
{
    int count = 0;
    ob_submit_all(e, cases, n, slots, &count);
    ob_run_until(e, &count, (int)n, what);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(slots[i].res, cases[i].want, "%s: job %zu (%s): %d", what, i,
                     cases[i].delivery ? cases[i].delivery : "-", slots[i].res);
}

/* Each of ids has its dedupe key, with a day's TTL. */
static void expect_dedupe_keys(const char *const *ids, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        long long ttl = test_redis_int(rc, "TTL " OUTBOX_DEDUPE_PREFIX "%s", ids[i]);
        cr_assert(ttl > 86000 && ttl <= 86400, "%s: ttl %lld", ids[i], ttl);
    }
}

Test(outbox, one_iteration_is_one_transaction_in_order_with_dedupe, .init = setup, .fini = teardown)
{
    freeReplyObject(test_redis_cmd(rc, "SET " OUTBOX_DEDUPE_PREFIX "seen 1 EX 60"));
    struct ob_env e;
    ob_open(&e);
    double tx0 = ob_metric(&e, "tierone_ingest_redis_transactions_total");
    const struct ob_case cases[] = {
        {"a", OUTBOX_QUEUED},       {NULL, OUTBOX_QUEUED}, {"b", OUTBOX_QUEUED},
        {"a", OUTBOX_DUPLICATE},    /* the same id twice in one batch */
        {"seen", OUTBOX_DUPLICATE}, /* already delivered */
        {NULL, OUTBOX_QUEUED},      {"c", OUTBOX_QUEUED},  {"b", OUTBOX_DUPLICATE},
        {"d", OUTBOX_QUEUED},       {"e", OUTBOX_QUEUED},  {"d", OUTBOX_DUPLICATE},
        {"f", OUTBOX_QUEUED},
    };
    struct ob_slot slots[sizeof cases / sizeof cases[0]];
    ob_batch(&e, cases, sizeof cases / sizeof cases[0], slots, "the batch");
    char *q = queue_deliveries();
    cr_assert_str_eq(q, "a - b - c d e f");
    free(q);
    cr_assert_eq(ob_metric(&e, "tierone_ingest_redis_transactions_total") - tx0, 1,
                 "one loop iteration's jobs go to Redis in one transaction");
    cr_assert_eq(ob_metric(&e, "tierone_ingest_jobs_total{result=\"queued\"}"), 8);
    cr_assert_eq(ob_metric(&e, "tierone_ingest_jobs_total{result=\"duplicate\"}"), 4);
    const char *ids[] = {"a", "b", "c", "d", "e", "f"};
    expect_dedupe_keys(ids, sizeof ids / sizeof ids[0]);
    cr_assert_eq(test_redis_int(rc, "SISMEMBER queues events"), 1);
    cr_assert_eq(test_redis_int(rc, "LLEN " WAKE_KEY_PREFIX "events"), 1,
                 "a transaction leaves one token that wakes an idle worker (lib/wake.h)");

    /* A second batch: repeats of the first are recognised, new ids are queued. */
    const struct ob_case again[] = {
        {"a", OUTBOX_DUPLICATE}, {"g", OUTBOX_QUEUED}, {"f", OUTBOX_DUPLICATE}};
    struct ob_slot slots2[3];
    ob_batch(&e, again, 3, slots2, "the second batch");
    q = queue_deliveries();
    cr_assert_str_eq(q, "a - b - c d e f g");
    free(q);
    cr_assert_eq(test_redis_int(rc, "LLEN " WAKE_KEY_PREFIX "events"), 2);

    /* While no worker takes them, the tokens stop at WAKE_TOKENS_MAX. */
    for (int i = 0; i < WAKE_TOKENS_MAX; i++) {
        const struct ob_case one[] = {{NULL, OUTBOX_QUEUED}};
        struct ob_slot slot[1];
        ob_batch(&e, one, 1, slot, "a one-job batch");
    }
    cr_assert_eq(test_redis_int(rc, "LLEN " WAKE_KEY_PREFIX "events"), WAKE_TOKENS_MAX);
    ob_close(&e);
}

/* Every job with a delivery id: the script gets no positions (key k is job k). Repeats at
 * the start, middle and end of the batch, the same id three times, and a repeat of an
 * earlier batch are all taken out again; the payload of a refused submit is freed (ASan). */
Test(outbox, a_batch_where_every_job_has_an_id, .init = setup, .fini = teardown)
{
    freeReplyObject(test_redis_cmd(rc, "SET " OUTBOX_DEDUPE_PREFIX "seen 1 EX 60"));
    struct ob_env e;
    ob_open(&e);
    const struct ob_case cases[] = {
        {"seen", OUTBOX_DUPLICATE}, {"p", OUTBOX_QUEUED},       {"q", OUTBOX_QUEUED},
        {"p", OUTBOX_DUPLICATE},    {"r", OUTBOX_QUEUED},       {"p", OUTBOX_DUPLICATE},
        {"s", OUTBOX_QUEUED},       {"seen", OUTBOX_DUPLICATE},
    };
    size_t n = sizeof cases / sizeof cases[0];
    struct ob_slot slots[sizeof cases / sizeof cases[0]];
    int count = 0;
    ob_submit_all(&e, cases, n, slots, &count); /* the refused submits below join its loop */
    char err[256], id[OUTBOX_MAX_DELIVERY + 2];
    memset(id, 'x', sizeof id - 1);
    id[sizeof id - 1] = '\0';
    cr_assert_eq(outbox_submit(e.ob, id, xstrdup("{}"), 2, ob_on_result, NULL, err, sizeof err),
                 -1);
    cr_assert(strstr(err, "delivery id longer than"), "%s", err);
    cr_assert_eq(outbox_submit(e.ob, NULL, xstrdup(""), 0, ob_on_result, NULL, err, sizeof err),
                 -1);
    ob_run_until(&e, &count, (int)n, "the batch");
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(slots[i].res, cases[i].want, "job %zu (%s): %d", i, cases[i].delivery,
                     slots[i].res);
    char *q = queue_deliveries();
    cr_assert_str_eq(q, "p q r s");
    free(q);
    const char *ids[] = {"p", "q", "r", "s"};
    expect_dedupe_keys(ids, sizeof ids / sizeof ids[0]);
    cr_assert(test_redis_int(rc, "TTL " OUTBOX_DEDUPE_PREFIX "seen") <= 60,
              "a repeat does not renew the key");

    const struct ob_case again[] = {{"q", OUTBOX_DUPLICATE}, {"t", OUTBOX_QUEUED}};
    struct ob_slot slots2[2];
    ob_batch(&e, again, 2, slots2, "the second batch");
    q = queue_deliveries();
    cr_assert_str_eq(q, "p q r s t");
    free(q);
    ob_close(&e);
}

Test(outbox, a_failed_transaction_spools_the_whole_batch_and_leaves_no_dedupe_key, .init = setup,
     .fini = teardown)
{
    /* The push fails inside the transaction (WRONGTYPE): nothing of the batch may stay in
     * Redis, in particular no dedupe key, or the retry from the spool would be taken for a
     * repeat and the job lost. */
    freeReplyObject(test_redis_cmd(rc, "SET queue:events not-a-list"));
    freeReplyObject(test_redis_cmd(rc, "SET " OUTBOX_DEDUPE_PREFIX "old 1 EX 60"));
    struct ob_env e;
    ob_open(&e);
    const struct ob_case cases[] = {
        {"x1", OUTBOX_SPOOLED}, {"x2", OUTBOX_SPOOLED},  {"x1", OUTBOX_SPOOLED},
        {NULL, OUTBOX_SPOOLED}, {"old", OUTBOX_SPOOLED}, {"x3", OUTBOX_SPOOLED},
    };
    size_t n = sizeof cases / sizeof cases[0];
    struct ob_slot slots[sizeof cases / sizeof cases[0]];
    ob_batch(&e, cases, n, slots, "the batch"); /* every case wants OUTBOX_SPOOLED */
    cr_assert_eq(outbox_spool_depth(e.ob), n);
    /* Drain attempts keep failing the same way meanwhile: still no key, nothing pushed. */
    for (int i = 0; i < 5; i++)
        uv_run(&e.loop, UV_RUN_ONCE);
    const char *ids[] = {"x1", "x2", "x3"};
    for (size_t i = 0; i < 3; i++)
        cr_assert_eq(test_redis_int(rc, "EXISTS " OUTBOX_DEDUPE_PREFIX "%s", ids[i]), 0, "%s",
                     ids[i]);
    char *v = test_redis_str(rc, "GET queue:events");
    cr_assert_str_eq(v, "not-a-list");
    free(v);

    /* Redis is fixed: the spool drains in order, each delivery id once. */
    freeReplyObject(test_redis_cmd(rc, "DEL queue:events"));
    uint64_t deadline = now_ms() + 15000;
    while (outbox_spool_depth(e.ob) > 0) {
        cr_assert_lt(now_ms(), deadline, "the spool did not drain");
        uv_run(&e.loop, UV_RUN_ONCE);
    }
    char *q = queue_deliveries();
    cr_assert_str_eq(q, "x1 x2 - x3");
    free(q);
    cr_assert_eq(ob_metric(&e, "tierone_ingest_jobs_total{result=\"drained\"}"), 4);
    cr_assert_eq(ob_metric(&e, "tierone_ingest_jobs_total{result=\"drained_duplicate\"}"), 2);
    ob_close(&e);
}

/* e's outbox has closed: finish its loop, then a new outbox on the same spool drains it;
 * queue:events must then hold want (queue_deliveries). */
static void expect_drained_in_order(struct ob_env *e, const char *want)
{
    uv_run(&e->loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&e->loop), 0);
    metrics_registry_free(e->reg);
    ob_open(e);
    uint64_t deadline = now_ms() + 15000;
    while (outbox_spool_depth(e->ob) > 0) {
        cr_assert_lt(now_ms(), deadline, "the spool did not drain");
        uv_run(&e->loop, UV_RUN_ONCE);
    }
    char *q = queue_deliveries();
    cr_assert_str_eq(q, want);
    free(q);
    ob_close(e);
}

Test(outbox, closing_spools_a_batch_not_sent_yet, .init = setup, .fini = teardown)
{
    struct ob_env e;
    ob_open(&e);
    const struct ob_case cases[] = {{"k1", OUTBOX_SPOOLED}, {NULL, OUTBOX_SPOOLED}};
    struct ob_slot slots[2];
    int count = 0;
    ob_submit_all(&e, cases, 2, slots, &count);
    outbox_close(e.ob, ob_on_closed, &e); /* before the loop ran: the batch is not sent */
    ob_run_until(&e, &e.closed, 1, "the outbox to close");
    cr_assert_eq(count, 2);
    for (size_t i = 0; i < 2; i++)
        cr_assert_eq(slots[i].res, OUTBOX_SPOOLED, "job %zu: %d", i, slots[i].res);
    cr_assert_eq(llen(), 0);
    expect_drained_in_order(&e, "k1 -");
}

Test(outbox, closing_keeps_the_order_of_a_transaction_in_flight_and_the_jobs_behind_it,
     .init = setup, .fini = teardown)
{
    /* Redis holds the first transaction (CLIENT PAUSE WRITE); the next jobs wait for its
     * reply. The close spools both, the transaction's first. */
    struct ob_env e;
    ob_open(&e);
    redisReply *r = test_redis_cmd(rc, "CLIENT PAUSE 20000 WRITE");
    freeReplyObject(r);
    const struct ob_case first[] = {{"a1", OUTBOX_SPOOLED}, {"a2", OUTBOX_SPOOLED}};
    const struct ob_case then[] = {{"b1", OUTBOX_SPOOLED}, {"b2", OUTBOX_SPOOLED}};
    struct ob_slot slots[4];
    int count = 0;
    ob_submit_all(&e, first, 2, slots, &count);
    uv_run(&e.loop, UV_RUN_NOWAIT); /* the first transaction goes */
    ob_submit_all(&e, then, 2, slots + 2, &count);
    outbox_close(e.ob, ob_on_closed, &e);
    ob_run_until(&e, &e.closed, 1, "the outbox to close");
    r = test_redis_cmd(rc, "CLIENT UNPAUSE");
    freeReplyObject(r);
    cr_assert_eq(count, 4);
    for (size_t i = 0; i < 4; i++)
        cr_assert_eq(slots[i].res, OUTBOX_SPOOLED, "job %zu: %d", i, slots[i].res);
    expect_drained_in_order(&e, "a1 a2 b1 b2");
}
