/* test_stack: see test_stack.h. */
#include "test_stack.h"

#include "fake_chatwoot.h"
#include "fake_linear.h"
#include "fake_llm.h"
#include "fake_slack.h"
#include "test_pg.h"
#include "test_redis.h"
#include "test_check.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static redisContext *stack_redis; /* one stack per test process at a time */

static unsigned long long stack_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000ull + (unsigned long long)ts.tv_nsec / 1000000ull;
}

static void stack_nap(void)
{
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
}

static const char *stack_bindir(void)
{
    const char *d = getenv("TIERONE_BIN_DIR");
    test_check(d && *d, "TIERONE_BIN_DIR is not set (run through ctest)");
    return d;
}

static const char *stack_srcdir(void)
{
    const char *d = getenv("TIERONE_SOURCE_DIR");
    test_check(d && *d, "TIERONE_SOURCE_DIR is not set (run through ctest)");
    return d;
}

static void stack_env(struct test_stack *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void stack_env(struct test_stack *s, const char *fmt, ...)
{
    test_check(s->nenv < TEST_STACK_MAX_ENV - 1, "too many worker settings");
    va_list ap;
    va_start(ap, fmt);
    char *e = NULL;
    test_check(vasprintf(&e, fmt, ap) > 0, "out of memory");
    va_end(ap);
    s->env[s->nenv++] = e;
}

/* fork + exec bin with the stack's environment, output to log. */
static pid_t stack_spawn(struct test_stack *s, const char *bin, const char *const *argv,
                         const char *log, int with_worker_env, const char *const *extra)
{
    pid_t pid = fork();
    test_check(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        setenv("TIERONE_REDIS_URL", s->redis_url, 1);
        setenv("TIERONE_DATABASE_URL", s->db_url, 1);
        setenv("TIERONE_LOG_LEVEL", "info", 1);
        for (size_t i = 0; with_worker_env && i < s->nenv; i++)
            putenv(s->env[i]);
        for (size_t i = 0; extra && extra[i]; i++)
            putenv((char *)extra[i]);
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        dup2(fd, 1);
        dup2(fd, 2);
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    return pid;
}

static char *stack_slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return strdup("");
    char *buf = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&buf, &len);
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        fwrite(chunk, 1, n, m);
    fclose(f);
    fclose(m);
    return buf;
}

static void stack_kb_ingest(struct test_stack *s, const char *dir)
{
    char bin[600], log[400];
    snprintf(bin, sizeof bin, "%s/tierone", stack_bindir());
    snprintf(log, sizeof log, "%s/kb.log", s->dir);
    const char *argv[] = {bin, "kb", "ingest", dir, NULL};
    pid_t pid = stack_spawn(s, bin, argv, log, 0, NULL);
    int status = 0;
    test_check(waitpid(pid, &status, 0) == pid, "waitpid: %s", strerror(errno));
    char *out = stack_slurp(log);
    test_check(WIFEXITED(status) && WEXITSTATUS(status) == 0, "tierone kb ingest %s failed:\n%s",
               dir, out);
    free(out);
}

void test_stack_start_worker(struct test_stack *s)
{
    char bin[600], log[400];
    snprintf(bin, sizeof bin, "%s/tierone-worker", stack_bindir());
    snprintf(log, sizeof log, "%s/worker.log", s->dir);
    const char *argv[] = {bin, NULL};
    const char *const *use = s->worker_argv ? s->worker_argv : argv;
    s->worker = stack_spawn(s, use[0], use, log, 1, NULL);
    s->workers_started++;
}

int test_stack_kill_worker(struct test_stack *s, int sig)
{
    int status = 0;
    if (s->worker <= 0)
        return 0;
    kill(s->worker, sig);
    waitpid(s->worker, &status, 0);
    s->worker = 0;
    return status;
}

static void stack_start_shim(struct test_stack *s)
{
    char bin[600], log[400], spool[400];
    snprintf(bin, sizeof bin, "%s/tierone-ingest", stack_bindir());
    snprintf(log, sizeof log, "%s/ingest.log", s->dir);
    snprintf(spool, sizeof spool, "TIERONE_SPOOL_PATH=%s/ingest.spool", s->dir);
    const char *argv[] = {bin, NULL};
    const char *extra[] = {"TIERONE_LISTEN_HOST=127.0.0.1",
                           "TIERONE_LISTEN_PORT=0",
                           "TIERONE_ADMIN_PORT=0",
                           "TIERONE_WEBHOOK_SECRETS=" TEST_STACK_SECRET,
                           spool,
                           NULL};
    s->shim = stack_spawn(s, bin, argv, log, 0, extra);
    const char *key = "accepting webhooks on 127.0.0.1:";
    unsigned long long deadline = stack_now_ms() + 15000;
    while (!s->shim_port && stack_now_ms() < deadline) {
        char *text = stack_slurp(log);
        char *at = strstr(text, key);
        if (at)
            s->shim_port = atoi(at + strlen(key));
        free(text);
        int status;
        test_check(waitpid(s->shim, &status, WNOHANG) != s->shim, "tierone-ingest exited (log %s)",
                   log);
        if (!s->shim_port)
            stack_nap();
    }
    test_check(s->shim_port > 0, "tierone-ingest did not start (log %s)", log);
}

void test_stack_start(struct test_stack *s, const struct test_stack_opts *o)
{
    memset(s, 0, sizeof *s);
    signal(SIGPIPE, SIG_IGN);
    snprintf(s->dir, sizeof s->dir, "/tmp/tierone-stack.XXXXXX");
    test_check(mkdtemp(s->dir) != NULL, "mkdtemp: %s", strerror(errno));
    snprintf(s->redis_url, sizeof s->redis_url, "%s", test_redis_url(o->redis_db));
    stack_redis = test_redis_connect(o->redis_db); /* flushed */
    snprintf(s->db_url, sizeof s->db_url, "%s", test_pg_fresh(o->pg_name));
    s->pg = test_pg_connect(s->db_url);
    char kb[600];
    snprintf(kb, sizeof kb, "%s", o->kb_dir ? o->kb_dir : "");
    if (!*kb)
        snprintf(kb, sizeof kb, "%s/tests/fixtures/kb", stack_srcdir());
    stack_kb_ingest(s, kb);

    s->cw = fake_chatwoot_start(NULL);
    s->slack = fake_slack_start(NULL);
    s->linear = fake_linear_start(NULL);
    test_check(s->cw && s->slack && s->linear, "cannot start the fake services");
    stack_env(s, "CHATWOOT_BASE_URL=%s", fake_chatwoot_url(s->cw));
    stack_env(s, "CHATWOOT_BOT_TOKEN=bot-token");
    stack_env(s, "CHATWOOT_USER_TOKEN=user-token");
    stack_env(s, "SLACK_WEBHOOK_URL=%s", fake_slack_webhook_url(s->slack));
    stack_env(s, "LINEAR_API_KEY=lin_api_fake");
    stack_env(s, "LINEAR_API_URL=%s", fake_linear_api_url(s->linear));
    stack_env(s, "LINEAR_TEAM_ID=team-fake");
    if (o->llm) {
        s->llm = fake_llm_start(NULL);
        test_check(s->llm != NULL, "cannot start the fake LLM");
        stack_env(s, "LLM_BASE_URL=%s", fake_llm_url(s->llm));
        stack_env(s, "LLM_MODEL=gpt-test");
    }
    stack_env(s, "TIERONE_SHADOW=%d", o->shadow ? 1 : 0);
    stack_env(s, "TIERONE_DEBOUNCE=300ms");
    stack_env(s, "TIERONE_POLL_INTERVAL=100ms");
    stack_env(s, "TIERONE_HEARTBEAT_TTL=2");
    stack_env(s, "TIERONE_BEAT_INTERVAL=500ms");
    stack_env(s, "TIERONE_RECOVERY_INTERVAL=500ms");
    stack_env(s, "TIERONE_ADMIN_PORT=0");
    stack_env(s, "TIERONE_AI_RETRIES=1");
    stack_env(s, "TIERONE_CHATWOOT_RATE=0");
    stack_env(s, "TIERONE_LINEAR_RATE=0");
    for (size_t i = 0; o->env && o->env[i]; i++)
        stack_env(s, "%s", o->env[i]);
    s->worker_argv = o->worker_argv;
    stack_start_shim(s);
    test_stack_start_worker(s);
}

void test_stack_stop(struct test_stack *s)
{
    pid_t pids[2] = {s->worker, s->shim};
    for (int i = 0; i < 2; i++) {
        if (pids[i] <= 0)
            continue;
        kill(pids[i], SIGTERM);
        int status;
        unsigned long long deadline = stack_now_ms() + 10000;
        while (waitpid(pids[i], &status, WNOHANG) == 0) {
            if (stack_now_ms() > deadline) {
                kill(pids[i], SIGKILL);
                waitpid(pids[i], &status, 0);
                break;
            }
            stack_nap();
        }
    }
    s->worker = s->shim = 0;
    fake_chatwoot_free(s->cw);
    fake_llm_free(s->llm);
    fake_slack_free(s->slack);
    fake_linear_free(s->linear);
    for (size_t i = 0; i < s->nenv; i++)
        free(s->env[i]);
    if (s->pg)
        PQfinish(s->pg);
    if (s->poster)
        curl_easy_cleanup(s->poster);
    if (stack_redis)
        redisFree(stack_redis);
    stack_redis = NULL;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", s->dir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", s->dir);
    memset(s, 0, sizeof *s);
}

static size_t stack_discard(char *data, size_t size, size_t n, void *arg)
{
    (void)data;
    (void)arg;
    return size * n;
}

int test_stack_post(struct test_stack *s, const char *path, const char *delivery, const char *body)
{
    char url[256], ts[32], sig[65], h[3][160];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", s->shim_port, path);
    snprintf(ts, sizeof ts, "%lld", (long long)time(NULL));
    /* X-Chatwoot-Signature: HMAC-SHA256(secret, "<timestamp>.<body>") in hex (APIS.md §1.3) */
    char *signed_text = NULL;
    test_check(asprintf(&signed_text, "%s.%s", ts, body) > 0, "out of memory");
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned maclen = 0;
    HMAC(EVP_sha256(), TEST_STACK_SECRET, (int)strlen(TEST_STACK_SECRET),
         (const unsigned char *)signed_text, strlen(signed_text), mac, &maclen);
    free(signed_text);
    for (unsigned i = 0; i < maclen && i < 32; i++)
        snprintf(sig + 2 * i, 3, "%02x", mac[i]);
    snprintf(h[0], sizeof h[0], "X-Chatwoot-Timestamp: %s", ts);
    snprintf(h[1], sizeof h[1], "X-Chatwoot-Signature: sha256=%s", sig);
    snprintf(h[2], sizeof h[2], "X-Chatwoot-Delivery: %s", delivery ? delivery : "");
    struct curl_slist *hl = curl_slist_append(NULL, "Content-Type: application/json");
    hl = curl_slist_append(hl, h[0]);
    hl = curl_slist_append(hl, h[1]);
    if (delivery)
        hl = curl_slist_append(hl, h[2]);
    /* One easy handle for every post: a new one per post made curl build, and tear down,
     * its internal multi handle (a socketpair) each time, which as the load generator of
     * bench_pipeline cost CPU the worker under test competes for. FORBID_REUSE keeps one
     * connection per post. */
    CURL *c = s->poster;
    if (!c) {
        c = s->poster = curl_easy_init();
        test_check(c != NULL, "curl_easy_init failed");
        curl_easy_setopt(c, CURLOPT_FORBID_REUSE, 1L);
        curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 10000L);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, stack_discard);
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    long status = 0;
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, NULL);
    curl_slist_free_all(hl);
    return (int)status;
}

char *test_stack_message(long conv, long msg, const char *status, const char *message_type,
                         const char *sender_type, const char *content, int private_note,
                         const char *content_attributes)
{
    json_t *sender;
    if (!strcmp(sender_type, "contact"))
        sender =
            json_pack("{s:i, s:s, s:s, s:s, s:n, s:{s:s}, s:{}}", "id", 100 + conv, "name",
                      "Ann Lee", "email", "ann@example.com", "identifier", "user-1", "phone_number",
                      "custom_attributes", "plan", "pro", "additional_attributes");
    else
        sender =
            json_pack("{s:i, s:s, s:s}", "id", 7, "name",
                      !strcmp(sender_type, "user") ? "Gail Agent" : "tierone", "type", sender_type);
    json_t *attrs = content_attributes ? json_loads(content_attributes, 0, NULL) : json_object();
    test_check(attrs != NULL, "bad content_attributes %s", content_attributes);
    json_t *body = json_pack(
        "{s:s, s:i, s:s, s:s, s:o, s:s, s:b, s:n, s:s, s:o,"
        " s:{s:i, s:i, s:s, s:s, s:[], s:{}, s:{}, s:{s:n, s:n}, s:[], s:{s:i, s:s}},"
        " s:{s:i, s:s}, s:{s:i, s:s}}",
        "event", "message_created", "id", msg, "content", content, "content_type", "text",
        "content_attributes", attrs, "message_type", message_type, "private", private_note,
        "source_id", "created_at", "2026-11-21T10:00:00.000Z", "sender", sender, "conversation",
        "id", conv, "inbox_id", 1, "channel", "Channel::WebWidget", "status", status, "labels",
        "custom_attributes", "additional_attributes", "meta", "assignee", "assignee_type",
        "messages", "account", "id", 1, "name", "Acme", "account", "id", 1, "name", "Acme", "inbox",
        "id", 1, "name", "Website");
    test_check(body != NULL, "json_pack of the message failed");
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    return text;
}

char *test_stack_status_change(long conv, const char *status)
{
    json_t *body =
        json_pack("{s:s, s:i, s:i, s:s, s:s, s:n, s:{s:n, s:n}, s:[], s:{s:i, s:s}}", "event",
                  "conversation_status_changed", "id", conv, "inbox_id", 1, "channel",
                  "Channel::WebWidget", "status", status, "changed_attributes", "meta", "assignee",
                  "assignee_type", "messages", "account", "id", 1, "name", "Acme");
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    return text;
}

void test_stack_conversation(struct test_stack *s, long conv, const char *status)
{
    char contact[200];
    snprintf(contact, sizeof contact,
             "{\"name\":\"Ann Lee\",\"email\":\"ann%ld@example.com\",\"identifier\":\"user-%ld\"}",
             conv, conv);
    long id = fake_chatwoot_add_contact(s->cw, 1, contact);
    fake_chatwoot_add_conversation(s->cw, 1, conv, status, 1, id);
}

static long long stack_redis_int(const char *fmt, const char *arg)
{
    redisReply *r = redisCommand(stack_redis, fmt, arg);
    test_check(r && r->type == REDIS_REPLY_INTEGER, "redis %s %s failed", fmt, arg);
    long long v = r->integer;
    freeReplyObject(r);
    return v;
}

static int stack_idle(struct test_stack *s)
{
    char *open = test_pg_value(s->pg, "SELECT count(*) FROM turns WHERE state = 'open'");
    int idle = open && !strcmp(open, "0");
    free(open);
    const char *queues[] = {"queue:events", "queue:ai", "queue:actions", "queue:linear"};
    for (int i = 0; idle && i < 4; i++)
        idle = stack_redis_int("LLEN %s", queues[i]) == 0;
    idle = idle && stack_redis_int("ZCARD %s", "schedule") == 0 &&
           stack_redis_int("ZCARD %s", "retry") == 0;
    if (idle) { /* nothing in flight in any worker's in-progress store */
        redisReply *r = redisCommand(stack_redis, "KEYS tierone:inprogress:*");
        for (size_t i = 0; r && i < r->elements; i++)
            idle = idle && stack_redis_int("HLEN %s", r->element[i]->str) == 0;
        freeReplyObject(r);
    }
    return idle;
}

long test_stack_customer_says(struct test_stack *s, long conv, const char *text,
                              const char *delivery)
{
    long id = fake_chatwoot_add_message(s->cw, 1, conv, 0, text, 0);
    if (id <= 0)
        return -1;
    char *body = test_stack_message(conv, id, "pending", "incoming", "contact", text, 0, NULL);
    int status = test_stack_post(s, "/webhooks/agent-bot", delivery, body);
    free(body);
    return status == 202 ? id : -1;
}

int test_stack_history(struct test_stack *s, long n)
{
    char sql[2048];
    snprintf(sql, sizeof sql,
             "INSERT INTO conversations (account_id, conversation_id, inbox_id, status)"
             " SELECT 1, 1000000 + g, 1, 'resolved' FROM generate_series(1, %ld) g;"
             "INSERT INTO turns (account_id, conversation_id, message_id, inbox_id, content,"
             " received_at, state, question, passages, decision, finished_at)"
             " SELECT 1, 1000000 + g, g, 1, 'an older question', now() - interval '2 days',"
             " 'answered',"
             " 'an older question', '[]', '{\"action\": \"answer\", \"answer\": \"yes\"}',"
             " now() - interval '2 days' FROM generate_series(1, %ld) g;"
             "INSERT INTO effects (turn_id, kind, state, created_at, done_at)"
             " SELECT id, 'reply', 'sent', received_at, received_at FROM turns"
             " WHERE conversation_id > 1000000;"
             "ANALYZE",
             n, n);
    PGresult *res = PQexec(s->pg, sql);
    int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!ok)
        fprintf(stderr, "test_stack: history: %s", PQerrorMessage(s->pg));
    PQclear(res);
    return ok ? 0 : -1;
}

int test_stack_wait_idle(struct test_stack *s, unsigned timeout_ms)
{
    unsigned long long deadline = stack_now_ms() + timeout_ms;
    /* Idle twice in a row: a job between its ack and its successor's push is invisible. */
    int streak = 0;
    while (stack_now_ms() < deadline) {
        streak = stack_idle(s) ? streak + 1 : 0;
        if (streak >= 3)
            return 1;
        stack_nap();
    }
    return 0;
}

int test_stack_wait_sql(struct test_stack *s, const char *sql, const char *want,
                        unsigned timeout_ms)
{
    unsigned long long deadline = stack_now_ms() + timeout_ms;
    while (stack_now_ms() < deadline) {
        char *v = test_pg_value(s->pg, sql);
        int ok = v && !strcmp(v, want);
        free(v);
        if (ok)
            return 1;
        stack_nap();
    }
    return 0;
}

size_t test_stack_count_marked(struct test_stack *s, long conv, const char *marker,
                               int private_note)
{
    json_t *msgs = fake_chatwoot_messages(s->cw, 1, conv);
    size_t n = 0, i;
    json_t *m;
    json_array_foreach(msgs, i, m)
    {
        json_t *attrs = json_object_get(m, "content_attributes");
        if (json_object_get(attrs, marker) &&
            json_is_true(json_object_get(m, "private")) == !!private_note)
            n++;
    }
    json_decref(msgs);
    return n;
}
