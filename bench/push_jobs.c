/* bench_push_jobs: the two Redis-side halves of the worker benchmark (bench/worker.sh).
 *
 *   bench_push_jobs push URL CLASS COUNT [ARG]
 *       LPUSHes COUNT Sidekiq-format jobs of CLASS (args [] or [ARG]) onto queue:default,
 *       1000 values per LPUSH, pipelined, and SADDs "default" to queues. Not timed.
 *
 *   bench_push_jobs run URL COUNT TIMEOUT_S DONE -- COMMAND [ARGS...]
 *       With COUNT jobs already queued, starts COMMAND (the worker; clock starts just
 *       before fork), polls Redis every 5 ms and stops the clock when the jobs are done:
 *         DONE = tierone     queue:default empty and no tierone:inprogress:* hash left
 *                            (tierone deletes a job from its in-progress hash when it
 *                            finished, so this is "every job finished");
 *         DONE = file:PATH   PATH holds the CLOCK_MONOTONIC second at which the last job
 *                            finished (written by bench/ruby_jobs.rb inside Sidekiq).
 *       Then reads the worker's peak RSS (VmHWM) and CPU time so far, sends SIGTERM,
 *       waits for it to exit and checks stat:processed == COUNT, stat:failed == 0, empty
 *       retry and dead sets. Prints one line "result key=value ..." and exits 0 when every
 *       check passed, 1 if not, 2 on a usage or connection error. The worker gets SIGTERM
 *       if this process dies (PR_SET_PDEATHSIG), so an interrupted benchmark never leaves
 *       it running. */
#include "redis.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PUSH_BATCH 1000
#define POLL_NS    5000000L

static double push_mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double push_wall_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static redisContext *push_connect(const char *url)
{
    struct redis_url u;
    const char *why = NULL;
    if (redis_url_parse(url, &u, &why) != 0) {
        fprintf(stderr, "bench_push_jobs: bad URL %s: %s\n", url, why);
        return NULL;
    }
    redisContext *c = redisConnect(u.host, u.port);
    if (c == NULL || c->err) {
        fprintf(stderr, "bench_push_jobs: connect %s:%d: %s\n", u.host, u.port,
                c ? c->errstr : "out of memory");
        redisFree(c);
        redis_url_free(&u);
        return NULL;
    }
    if (u.db != 0) {
        redisReply *r = redisCommand(c, "SELECT %d", u.db);
        freeReplyObject(r);
    }
    redis_url_free(&u);
    return c;
}

/* Integer result of a command, or -1 on an error reply. */
static long long push_int(redisContext *c, const char *fmt, const char *arg)
{
    redisReply *r = redisCommand(c, fmt, arg);
    long long v = -1;
    if (r && r->type == REDIS_REPLY_INTEGER)
        v = r->integer;
    else if (r && r->type == REDIS_REPLY_STRING)
        v = strtoll(r->str, NULL, 10);
    else if (r && r->type == REDIS_REPLY_NIL)
        v = 0;
    freeReplyObject(r);
    return v;
}

static uint64_t push_rng;

static uint64_t push_rand(void)
{
    push_rng ^= push_rng << 13;
    push_rng ^= push_rng >> 7;
    push_rng ^= push_rng << 17;
    return push_rng;
}

static int push_jobs(const char *url, const char *klass, long count, const char *arg)
{
    redisContext *c = push_connect(url);
    if (c == NULL)
        return 2;
    if (getrandom(&push_rng, sizeof push_rng, 0) != sizeof push_rng || push_rng == 0)
        push_rng = 0x9e3779b97f4a7c15ULL ^ (uint64_t)getpid();
    char args[512];
    if (arg)
        snprintf(args, sizeof args, "[\"%s\"]", arg);
    else
        snprintf(args, sizeof args, "[]");

    static char bodies[PUSH_BATCH][768];
    const char *argv[PUSH_BATCH + 2];
    size_t lens[PUSH_BATCH + 2];
    long sent = 0;
    int batches = 0;
    while (sent < count) {
        int n = (int)(count - sent < PUSH_BATCH ? count - sent : PUSH_BATCH);
        argv[0] = "LPUSH";
        argv[1] = "queue:default";
        lens[0] = 5;
        lens[1] = 13;
        double now = push_wall_s();
        for (int i = 0; i < n; i++) {
            uint64_t a = push_rand(), b = push_rand();
            int len = snprintf(bodies[i], sizeof bodies[i],
                               "{\"class\":\"%s\",\"args\":%s,\"jid\":\"%016llx%08llx\","
                               "\"queue\":\"default\",\"retry\":true,\"created_at\":%.6f,"
                               "\"enqueued_at\":%.6f}",
                               klass, args, (unsigned long long)a,
                               (unsigned long long)(b & 0xffffffffULL), now, now);
            argv[i + 2] = bodies[i];
            lens[i + 2] = (size_t)len;
        }
        /* hiredis copies the arguments into its output buffer, so bodies can be reused. */
        redisAppendCommandArgv(c, n + 2, argv, lens);
        batches++;
        sent += n;
        if (batches == 16 || sent == count) { /* collect replies every 16 batches */
            for (; batches > 0; batches--) {
                redisReply *r = NULL;
                if (redisGetReply(c, (void **)&r) != REDIS_OK || r->type == REDIS_REPLY_ERROR) {
                    fprintf(stderr, "bench_push_jobs: LPUSH failed: %s\n", r ? r->str : c->errstr);
                    freeReplyObject(r);
                    redisFree(c);
                    return 2;
                }
                freeReplyObject(r);
            }
        }
    }
    push_int(c, "SADD queues %s", "default");
    long long len = push_int(c, "LLEN %s", "queue:default");
    redisFree(c);
    if (len < count) {
        fprintf(stderr, "bench_push_jobs: queue:default has %lld jobs, expected %ld\n", len, count);
        return 2;
    }
    return 0;
}

/* 1 once every job finished (see DONE in the header comment); *end is when. */
static int push_done(redisContext *c, const char *done, long long llen, double *end)
{
    if (strcmp(done, "tierone") == 0) {
        if (llen != 0)
            return 0;
        redisReply *r = redisCommand(c, "KEYS tierone:inprogress:*");
        int empty = r && r->type == REDIS_REPLY_ARRAY && r->elements == 0;
        freeReplyObject(r);
        if (empty)
            *end = push_mono_s();
        return empty;
    }
    FILE *f = fopen(done + 5, "r");
    if (f == NULL)
        return 0;
    double t = 0;
    int ok = fscanf(f, "%lf", &t) == 1 && t > 0;
    fclose(f);
    if (ok)
        *end = t;
    return ok;
}

static long push_hwm_kb(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long kb = -1;
    if (f == NULL)
        return -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmHWM:", 6) == 0)
            kb = strtol(line + 6, NULL, 10);
    fclose(f);
    return kb;
}

/* CPU seconds (user + system) the process has used so far, or -1. */
static double push_cpu_s(pid_t pid)
{
    char path[64], line[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    char *ok = fgets(line, sizeof line, f);
    fclose(f);
    char *p = ok ? strrchr(line, ')') : NULL; /* the command name may hold spaces */
    unsigned long long utime, stime;
    /* after ")": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
     */
    if (p == NULL || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime,
                            &stime) != 2)
        return -1;
    return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

static void push_sleep_ns(long ns)
{
    struct timespec ts = {0, ns};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* SIGTERM, then wait up to 60 s (SIGKILL after). Returns the exit code, or 128+signal. */
static int push_stop(pid_t pid, double *stop_s)
{
    double t0 = push_mono_s();
    kill(pid, SIGTERM);
    int status = 0;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            break;
        if (r < 0)
            return 255;
        if (push_mono_s() - t0 > 60) {
            fprintf(stderr, "bench_push_jobs: worker did not exit 60 s after SIGTERM\n");
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            break;
        }
        push_sleep_ns(POLL_NS);
    }
    *stop_s = push_mono_s() - t0;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static pid_t push_spawn(char **cmd)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent)
        _exit(127);
    execvp(cmd[0], cmd);
    fprintf(stderr, "bench_push_jobs: exec %s: %s\n", cmd[0], strerror(errno));
    _exit(127);
}

static int push_run(const char *url, long count, double timeout_s, const char *done, char **cmd)
{
    redisContext *c = push_connect(url);
    if (c == NULL)
        return 2;
    if (strcmp(done, "tierone") != 0 && strncmp(done, "file:", 5) != 0) {
        fprintf(stderr, "bench_push_jobs: DONE must be tierone or file:PATH\n");
        redisFree(c);
        return 2;
    }
    long long queued = push_int(c, "LLEN %s", "queue:default");
    if (queued != count) {
        fprintf(stderr, "bench_push_jobs: queue:default has %lld jobs, expected %ld\n", queued,
                count);
        redisFree(c);
        return 2;
    }
    double t0 = push_mono_s(), first = 0, end = 0;
    pid_t pid = push_spawn(cmd);
    if (pid < 0) {
        perror("bench_push_jobs: fork");
        redisFree(c);
        return 2;
    }
    int finished = 0, died = 0, lost = 0;
    while (!finished) {
        push_sleep_ns(POLL_NS);
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            died = 1;
            break;
        }
        double now = push_mono_s();
        long long llen = push_int(c, "LLEN %s", "queue:default");
        if (first == 0 && llen >= 0 && llen < count)
            first = now;
        finished = push_done(c, done, llen, &end);
        if (c->err) {
            fprintf(stderr, "bench_push_jobs: lost Redis: %s\n", c->errstr);
            lost = 1;
            break;
        }
        if (!finished && now - t0 > timeout_s)
            break;
    }
    long hwm = died ? -1 : push_hwm_kb(pid);
    double cpu = died ? -1 : push_cpu_s(pid);
    double stop_s = 0;
    int code = died ? 255 : push_stop(pid, &stop_s);
    long long processed = push_int(c, "GET %s", "stat:processed");
    long long failed = push_int(c, "GET %s", "stat:failed");
    long long retry = push_int(c, "ZCARD %s", "retry");
    long long dead = push_int(c, "ZCARD %s", "dead");
    long long left = push_int(c, "LLEN %s", "queue:default");
    redisFree(c);

    int ok = finished && !died && code == 0 && processed == count && failed == 0 && retry == 0 &&
             dead == 0 && left == 0;
    double elapsed = finished ? end - t0 : 0;
    double busy = finished && first > 0 ? end - first : 0;
    printf(
        "result ok=%d n=%ld elapsed_s=%.4f boot_s=%.4f jobs_s=%.1f jobs_s_after_boot=%.1f "
        "hwm_kb=%ld cpu_s=%.2f processed=%lld failed=%lld retry=%lld dead=%lld left=%lld exit=%d "
        "stop_s=%.3f%s\n",
        ok, count, elapsed, first > 0 ? first - t0 : 0, elapsed > 0 ? count / elapsed : 0,
        busy > 0 ? count / busy : 0, hwm, cpu, processed, failed, retry, dead, left, code, stop_s,
        died        ? " error=worker-died"
        : lost      ? " error=redis-lost"
        : !finished ? " error=timeout"
                    : "");
    fflush(stdout);
    return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc >= 5 && strcmp(argv[1], "push") == 0)
        return push_jobs(argv[2], argv[3], atol(argv[4]), argc > 5 ? argv[5] : NULL);
    if (argc >= 8 && strcmp(argv[1], "run") == 0 && strcmp(argv[6], "--") == 0)
        return push_run(argv[2], atol(argv[3]), atof(argv[4]), argv[5], argv + 7);
    fprintf(stderr,
            "usage: %s push URL CLASS COUNT [ARG]\n"
            "       %s run URL COUNT TIMEOUT_S tierone|file:PATH -- COMMAND [ARGS...]\n",
            argv[0], argv[0]);
    return 2;
}
