/* supervisor: runs `processes` copies of a child function, each in its own forked process,
 * keeps them running, and stops them together.
 *
 * The parent only supervises: no event loop, no sockets of its own. It blocks SIGTERM,
 * SIGINT and SIGCHLD and waits for them (sigtimedwait):
 *   - a child that exits while the parent is not stopping is forked again, with the same
 *     index, after a delay: 1 s, doubled after each exit of a child that ran less than
 *     60 s, at most 30 s. A child that exits with status 2 (it cannot start: a setting, a
 *     file, a port) is not restarted: the others get SIGTERM and the supervisor returns 2;
 *   - SIGTERM or SIGINT: sent on to every child as SIGTERM, no more restarts; when every
 *     child has exited the supervisor returns 0 if each exited with status 0, else 1.
 * Each child has PR_SET_PDEATHSIG = SIGTERM, so it stops gracefully if the parent dies.
 *
 * A child starts with SIGTERM, SIGINT and SIGCHLD blocked (a signal sent before it handles
 * them waits instead of killing it): it calls supervisor_unblock_signals() once its
 * handlers are installed. Its result is its exit status (exit(), so atexit handlers run). */
#ifndef TIERONE_INGEST_SUPERVISOR_H
#define TIERONE_INGEST_SUPERVISOR_H

struct supervisor_opts {
    unsigned processes;                     /* >= 1 */
    int (*child)(unsigned index, void *ud); /* in the child, index 1..processes */
    void (*stopping)(void *ud);             /* optional: in the parent, once, when it stops */
    void *ud;
};

/* Run the children until they are all stopped (see above). Returns the parent's exit
 * status: 0, 1 or 2. Never returns in a child. */
int supervisor_run(const struct supervisor_opts *o);

/* In a child: restore the signal mask the process had before supervisor_run. */
void supervisor_unblock_signals(void);

#endif
