/* bench_http_client: load generator for lib/http_client (bench/http_client.sh).
 *
 * Usage: bench_http_client URL TOTAL CONCURRENCY [RECV_BUFFER_SIZE]
 *
 * Sends TOTAL GETs to URL through one http_client on one libuv loop, keeping CONCURRENCY
 * of them in flight: CONCURRENCY are submitted at the start and every completion callback
 * submits the next one until TOTAL were submitted. No connection limits (each request in
 * flight gets its own keep-alive connection, reused by the next request). RECV_BUFFER_SIZE
 * sets http_client_opts.recv_buffer_size (default 0: curl's 16 KiB).
 *
 * Prints one JSON line on stdout when done:
 *   requests   completed requests (== TOTAL unless the run failed early)
 *   ok         of those, result HTTP_OK with status 200 and body "ok\n"
 *   errors     requests - ok
 *   seconds    first submission to last completion (connection set-up included)
 *   req_s      requests / seconds
 *   rss_start_kb    VmRSS before the client was created
 *   rss_inflight_kb largest VmRSS seen by a 50 ms sampler while exactly CONCURRENCY
 *                   requests were in flight (steady state; the connections all exist)
 *   hwm_kb     VmHWM (peak RSS of the process) after the client has closed
 *   cpu_s      user + system CPU time of this process during the requests
 *   loop_close uv_loop_close() after the client has closed (0: no handle leaked)
 * Exit status 0 if every request was ok and loop_close == 0, else 1 (2: bad usage).
 *
 * Raises RLIMIT_NOFILE to its hard limit: 10,000 connections need 10,000 descriptors. */
#include "clock.h"
#include "http_client.h"
#include "xalloc.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <uv.h>

struct bhc {
    uv_loop_t loop;
    uv_timer_t sampler;
    struct http_client *client;
    struct http_request req;
    uint64_t total, concurrency;
    uint64_t submitted, completed, ok;
    uint64_t start_ns, end_ns;
    long rss_inflight_kb;
    int submit_failed;
    int closed;
};

/* A "Vm...:" line of /proc/self/status in KiB, or -1. */
static long bhc_status_kb(const char *key)
{
    char line[256];
    size_t klen = strlen(key);
    long kb = -1;
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, key, klen) == 0 && line[klen] == ':')
            kb = strtol(line + klen + 1, NULL, 10);
    fclose(f);
    return kb;
}

static double bhc_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void bhc_submit(struct bhc *b);

static void bhc_closed_cb(void *arg)
{
    struct bhc *b = arg;
    b->closed = 1;
}

static void bhc_finish(struct bhc *b)
{
    b->end_ns = clock_mono_ns();
    uv_close((uv_handle_t *)&b->sampler, NULL);

    http_client_close(b->client, bhc_closed_cb, b);
}

static void bhc_done_cb(struct http_response *resp, void *arg)
{
    struct bhc *b = arg;
    b->completed++;
    if (resp->result == HTTP_OK && resp->status == 200 && resp->body_len == 3 &&
        memcmp(resp->body, "ok\n", 3) == 0)
        b->ok++;
    else if (b->completed - b->ok <= 5)
        fprintf(stderr, "bench_http_client: request failed: %s (status %ld): %s\n",
                http_result_name(resp->result), resp->status, resp->error);
    if (b->submitted < b->total && !b->submit_failed)
        bhc_submit(b);
    if (b->completed == b->submitted && (b->submitted == b->total || b->submit_failed))
        bhc_finish(b);
}

static void bhc_submit(struct bhc *b)
{
    char *err = NULL;
    if (http_client_request(b->client, &b->req, bhc_done_cb, b, &err) != 0) {
        fprintf(stderr, "bench_http_client: submit: %s\n", err);
        free(err);
        b->submit_failed = 1;
        return;
    }
    b->submitted++;
}

static void bhc_sample_cb(uv_timer_t *t)
{
    struct bhc *b = t->data;
    struct http_client_stats st;
    http_client_get_stats(b->client, &st);
    if (st.in_flight != b->concurrency)
        return;
    long kb = bhc_status_kb("VmRSS");
    if (kb > b->rss_inflight_kb)
        b->rss_inflight_kb = kb;
}

int main(int argc, char **argv)
{
    if (argc < 4 || argc > 5) {
        fprintf(stderr, "usage: %s URL TOTAL CONCURRENCY [RECV_BUFFER_SIZE]\n", argv[0]);
        return 2;
    }
    static struct bhc b;
    b.req.url = argv[1];
    b.req.timeout_ms = 60000;
    b.total = strtoull(argv[2], NULL, 10);
    b.concurrency = strtoull(argv[3], NULL, 10);
    struct http_client_opts opts = {0};
    if (argc == 5)
        opts.recv_buffer_size = strtol(argv[4], NULL, 10);
    if (b.total == 0 || b.concurrency == 0) {
        fprintf(stderr, "bench_http_client: TOTAL and CONCURRENCY must be positive\n");
        return 2;
    }
    if (b.concurrency > b.total)
        b.concurrency = b.total;

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < b.concurrency + 64)
        fprintf(stderr,
                "bench_http_client: warning: RLIMIT_NOFILE %llu < concurrency %" PRIu64 "\n",
                (unsigned long long)rl.rlim_cur, b.concurrency);

    long rss_start_kb = bhc_status_kb("VmRSS");
    if (uv_loop_init(&b.loop) != 0) {
        fprintf(stderr, "bench_http_client: uv_loop_init failed\n");
        return 1;
    }
    char *err = NULL;
    b.client = http_client_new(&b.loop, &opts, &err);
    if (!b.client) {
        fprintf(stderr, "bench_http_client: http_client_new: %s\n", err);
        free(err);
        return 1;
    }
    uv_timer_init(&b.loop, &b.sampler);
    b.sampler.data = &b;
    uv_timer_start(&b.sampler, bhc_sample_cb, 50, 50);

    double cpu0 = bhc_cpu_s();
    b.start_ns = clock_mono_ns();
    for (uint64_t i = 0; i < b.concurrency && !b.submit_failed; i++)
        bhc_submit(&b);
    if (b.submitted == 0)
        bhc_finish(&b);
    uv_run(&b.loop, UV_RUN_DEFAULT);
    double cpu_s = bhc_cpu_s() - cpu0;
    int loop_close = uv_loop_close(&b.loop);
    http_client_global_cleanup();

    double secs = (double)(b.end_ns - b.start_ns) / 1e9;
    printf("{\"impl\":\"tierone\",\"concurrency\":%" PRIu64 ",\"requests\":%" PRIu64
           ",\"ok\":%" PRIu64 ",\"errors\":%" PRIu64 ",\"seconds\":%.3f,\"req_s\":%.0f"
           ",\"rss_start_kb\":%ld,\"rss_inflight_kb\":%ld,\"hwm_kb\":%ld,\"cpu_s\":%.2f"
           ",\"client_closed\":%d,\"loop_close\":%d}\n",
           b.concurrency, b.completed, b.ok, b.completed - b.ok, secs,
           secs > 0 ? (double)b.completed / secs : 0.0, rss_start_kb, b.rss_inflight_kb,
           bhc_status_kb("VmHWM"), cpu_s, b.closed, loop_close);
    return b.ok == b.total && b.closed && loop_close == 0 ? 0 : 1;
}
