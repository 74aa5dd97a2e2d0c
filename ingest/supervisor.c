/* supervisor: fork N children, restart the ones that die, stop them all on SIGTERM. */
#include "supervisor.h"
#include "log.h"
#include "xalloc.h"

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SUPERVISOR_DELAY_MS     1000
#define SUPERVISOR_DELAY_MAX_MS 30000
#define SUPERVISOR_QUICK_MS     60000

static sigset_t supervisor_old_mask;

struct supervisor_child {
    pid_t pid;           /* 0 = not running */
    uint64_t started_ms; /* when forked */
    uint64_t restart_ms; /* when to fork again; 0 = not waiting */
    uint32_t delay_ms;   /* the next restart delay */
    int status;          /* last wait status */
};

static uint64_t supervisor_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void supervisor_unblock_signals(void)
{
    sigprocmask(SIG_SETMASK, &supervisor_old_mask, NULL);
}

static void supervisor_fork(const struct supervisor_opts *o, struct supervisor_child *c,
                            unsigned index)
{
    pid_t parent = getpid();
    c->restart_ms = 0;
    c->started_ms = supervisor_now_ms();
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent) /* the parent died before prctl */
            _exit(1);
        exit(o->child(index, o->ud));
    }
    if (pid < 0) {
        log_error("ingest: cannot start process %u: %s", index, strerror(errno));
        c->pid = 0;
        c->restart_ms = c->started_ms + c->delay_ms;
        return;
    }
    c->pid = pid;
    log_info("ingest: process %u started (pid %d)", index, (int)pid);
}

static void supervisor_describe(int status, char *out, size_t cap)
{
    if (WIFEXITED(status))
        snprintf(out, cap, "exited with status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(out, cap, "killed by %s", strsignal(WTERMSIG(status)));
    else
        snprintf(out, cap, "ended (wait status %d)", status);
}

int supervisor_run(const struct supervisor_opts *o)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &set, &supervisor_old_mask);

    unsigned n = o->processes ? o->processes : 1, live = 0;
    struct supervisor_child *kids = xcalloc(n, sizeof *kids);
    int stopping = 0, rc = 0;
    for (unsigned i = 0; i < n; i++) {
        kids[i].delay_ms = SUPERVISOR_DELAY_MS;
        supervisor_fork(o, &kids[i], i + 1);
        live += kids[i].pid != 0;
    }
    for (;;) {
        /* reap */
        int st;
        pid_t pid;
        while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
            unsigned i;
            for (i = 0; i < n && kids[i].pid != pid; i++)
                ;
            if (i == n)
                continue;
            kids[i].pid = 0;
            kids[i].status = st;
            live--;
            char how[96];
            supervisor_describe(st, how, sizeof how);
            int clean = WIFEXITED(st) && WEXITSTATUS(st) == 0;
            if (stopping) {
                if (!clean && rc == 0)
                    rc = 1;
                log_info("ingest: process %u (pid %d) %s", i + 1, (int)pid, how);
                continue;
            }
            if (WIFEXITED(st) && WEXITSTATUS(st) == 2) {
                log_error("ingest: process %u (pid %d) cannot start (%s); stopping the others",
                          i + 1, (int)pid, how);
                rc = 2;
                stopping = 1;
                if (o->stopping)
                    o->stopping(o->ud);
                for (unsigned j = 0; j < n; j++)
                    if (kids[j].pid)
                        kill(kids[j].pid, SIGTERM);
                continue;
            }
            uint64_t now = supervisor_now_ms();
            if (now - kids[i].started_ms >= SUPERVISOR_QUICK_MS)
                kids[i].delay_ms = SUPERVISOR_DELAY_MS;
            kids[i].restart_ms = now + kids[i].delay_ms;
            log_warn("ingest: process %u (pid %d) %s; starting it again in %u ms", i + 1, (int)pid,
                     how, kids[i].delay_ms);
            kids[i].delay_ms = kids[i].delay_ms * 2 > SUPERVISOR_DELAY_MAX_MS
                                   ? SUPERVISOR_DELAY_MAX_MS
                                   : kids[i].delay_ms * 2;
        }
        /* restarts due */
        uint64_t now = supervisor_now_ms(), next = 0;
        for (unsigned i = 0; i < n && !stopping; i++) {
            if (!kids[i].restart_ms)
                continue;
            if (kids[i].restart_ms <= now) {
                supervisor_fork(o, &kids[i], i + 1);
                live += kids[i].pid != 0;
            }
            if (kids[i].restart_ms && (!next || kids[i].restart_ms < next))
                next = kids[i].restart_ms;
        }
        if (stopping && live == 0)
            break;
        /* wait */
        siginfo_t info;
        int sig;
        if (next) {
            uint64_t ms = next > now ? next - now : 0;
            struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
            sig = sigtimedwait(&set, &info, &ts);
        } else {
            sig = sigwaitinfo(&set, &info);
        }
        if (sig == SIGTERM || sig == SIGINT) {
            if (!stopping) {
                log_info("ingest: %s: stopping %u process(es)", strsignal(sig), live);
                stopping = 1;
                if (o->stopping)
                    o->stopping(o->ud);
            }
            for (unsigned i = 0; i < n; i++)
                if (kids[i].pid)
                    kill(kids[i].pid, SIGTERM);
        }
    }
    free(kids);
    sigprocmask(SIG_SETMASK, &supervisor_old_mask, NULL);
    return rc;
}
