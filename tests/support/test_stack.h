/* test_stack: the whole product for end-to-end tests and the pipeline benchmark: the fake
 * Chatwoot, LLM, Slack and Linear in this process; a fresh migrated PostgreSQL database with
 * a knowledge base; a Redis database; and the real tierone-ingest and tierone-worker
 * binaries ($TIERONE_BIN_DIR) as child processes, configured against all of it.
 *
 * The account is 1 and every conversation is in inbox 1 unless a test says otherwise.
 * Functions fail the test (test_check.h) when the stack cannot be built. */
#ifndef TIERONE_TEST_STACK_H
#define TIERONE_TEST_STACK_H

#include <curl/curl.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <stddef.h>
#include <sys/types.h>

struct fake_chatwoot;
struct fake_llm;
struct fake_slack;
struct fake_linear;

#define TEST_STACK_SECRET  "whsec-e2e-secret"
#define TEST_STACK_MAX_ENV 32

struct test_stack_opts {
    int redis_db;           /* Redis database of the test */
    const char *pg_name;    /* PostgreSQL database name (dropped and recreated) */
    int llm;                /* 1: LLM_BASE_URL points at the fake LLM; 0: retrieval-only */
    int shadow;             /* TIERONE_SHADOW */
    const char *kb_dir;     /* ingested as knowledge base "default"; NULL: tests/fixtures/kb */
    const char *const *env; /* extra "KEY=VALUE" for the worker (NULL-terminated), or NULL */
    /* The worker's command line (NULL-terminated, argv[0] a path) in place of
     * $TIERONE_BIN_DIR/tierone-worker, e.g. Ruby Sidekiq in the pipeline benchmark; it gets
     * the same environment. NULL: tierone-worker. */
    const char *const *worker_argv;
};

struct test_stack {
    struct fake_chatwoot *cw;
    struct fake_llm *llm;
    struct fake_slack *slack;
    struct fake_linear *linear;
    char redis_url[256];
    char db_url[1024];
    char dir[256]; /* scratch directory (logs, spool) */
    pid_t shim, worker;
    int shim_port;
    int workers_started;
    char *env[TEST_STACK_MAX_ENV];  /* the worker's environment additions */
    const char *const *worker_argv; /* opts.worker_argv */
    size_t nenv;
    PGconn *pg;   /* a blocking connection for assertions */
    CURL *poster; /* test_stack_post's handle, made on the first post */
};

/* Build the stack (fakes, database, knowledge base, shim, worker). */
void test_stack_start(struct test_stack *s, const struct test_stack_opts *o);
/* Stop the processes (SIGTERM, then SIGKILL after 10 s), the fakes, and free everything. */
void test_stack_stop(struct test_stack *s);

/* Start another worker process (after the previous one exited). */
void test_stack_start_worker(struct test_stack *s);
/* Send sig to the worker and wait for it; returns its wait status. */
int test_stack_kill_worker(struct test_stack *s, int sig);

/* POST body to the shim's path ("/webhooks/agent-bot") signed with TEST_STACK_SECRET and
 * X-Chatwoot-Delivery delivery (NULL: none), on a connection of its own, as Chatwoot sends
 * a webhook. Returns the HTTP status (0: no answer). */
int test_stack_post(struct test_stack *s, const char *path, const char *delivery, const char *body);

/* A message_created webhook body (new string): account 1, inbox 1, conversation conv with
 * status, message msg of message_type ("incoming", "outgoing"), sender_type ("contact",
 * "user", "agent_bot"), content, private flag, and content_attributes (JSON text or NULL). */
char *test_stack_message(long conv, long msg, const char *status, const char *message_type,
                         const char *sender_type, const char *content, int private_note,
                         const char *content_attributes);
/* A conversation_status_changed webhook body (new string). */
char *test_stack_status_change(long conv, const char *status);

/* Seed conversation conv (pending, inbox 1, a contact) in the fake Chatwoot. */
void test_stack_conversation(struct test_stack *s, long conv, const char *status);

/* A customer writes text in pending conversation conv: the message is stored in the fake
 * Chatwoot first (which gives it its id; a reconciling Reply searches the bot's posts after
 * it), then its signed webhook goes to the shim's agent-bot path with X-Chatwoot-Delivery
 * delivery. Returns the message id, or -1 when the shim did not answer 202. */
long test_stack_customer_says(struct test_stack *s, long conv, const char *text,
                              const char *delivery);

/* Make the database one in service: n answered turns of two days ago in account 1,
 * conversations 1,000,001 on, with their conversations and sent reply effects, then
 * ANALYZE, so prepared plans are those of a database with a history. Returns 0, or -1
 * with the error on stderr. */
int test_stack_history(struct test_stack *s, long n);

/* Wait (bounded, timeout_ms) until no turn is open and the pipeline's queues, schedule and
 * in-progress stores are empty. Returns 1, or 0 on timeout. */
int test_stack_wait_idle(struct test_stack *s, unsigned timeout_ms);

/* Wait until sql (one value) returns want; returns 1, or 0 on timeout. */
int test_stack_wait_sql(struct test_stack *s, const char *sql, const char *want,
                        unsigned timeout_ms);

/* Messages of conversation conv in the fake Chatwoot that carry content_attributes key
 * marker (e.g. "tierone_turn", "tierone_note"), public (private 0) or private (1). */
size_t test_stack_count_marked(struct test_stack *s, long conv, const char *marker,
                               int private_note);

#endif
