/* Tierone::Retrieve and Tierone::Decide through a real worker (queue ai) on a loop in this
 * process, with the real pipeline context (pipeline_init), real Redis (database 5), a fresh
 * PostgreSQL database (tierone_test_ai) holding a small knowledge base, and the fake LLM.
 * Each test inserts turns with SQL, pushes Retrieve jobs, and polls (with a deadline) until
 * the decision is stored and the next step (Reply or Escalate, on queue actions, which this
 * worker does not serve) is waiting in Redis. */
#include "clock.h"
#include "engine.h"
#include "fake_chatwoot.h"
#include "fake_llm.h"
#include "log.h"
#include "pipeline.h"
#include "sidekiq_client.h"
#include "test_loop.h"
#include "test_pg.h"
#include "test_redis.h"
#include "xalloc.h"

#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DB      5
#define PGNAME  "tierone_test_ai"
#define WAIT_MS 20000

struct harness {
    uv_loop_t loop;
    struct worker w;
    struct worker_settings cfg;
    struct pipeline_settings ps;
    struct pipeline p;
    redisContext *rc;
    PGconn *pg;
    struct fake_llm *llm;
    struct fake_chatwoot *chatwoot;
    char *db_url;
    char inbox_path[128];
    long long chunk_password, chunk_invoice, chunk_export;
};

/* ---- setup ------------------------------------------------------------------------------- */

static void seed_kb(struct harness *h)
{
    test_pg_exec(h->pg, "INSERT INTO knowledge_bases (name) VALUES ('docs')");
    static const char *const docs[][4] = {
        {"docs/account.md", "Account", "Account > Password reset",
         "To reset your password, open Settings, choose Security and click Reset password.\n"
         "We send a reset link by e-mail; it is valid for one hour."},
        {"docs/billing.md", "Billing", "Billing > Invoices",
         "Every invoice is listed under Settings > Billing. Download each invoice as a PDF."},
        {"docs/export.md", "Export", "Data > Export",
         "Export your data as CSV from the Data menu. Large exports arrive by e-mail."},
    };
    for (size_t i = 0; i < 3; i++) {
        const char *params[] = {docs[i][0], docs[i][1], docs[i][2], docs[i][3]};
        PGresult *r = PQexecParams(
            h->pg,
            "WITH d AS (INSERT INTO kb_documents (kb_id, source, root, title, content_type,"
            " content_hash, chunk_count) SELECT id, $1, 'docs', $2, 'markdown', md5($1), 1"
            " FROM knowledge_bases WHERE name = 'docs' RETURNING id, kb_id)"
            " INSERT INTO kb_chunks (document_id, kb_id, ordinal, heading_path, content, ts_config)"
            " SELECT d.id, d.kb_id, 0, $3, $4, 'english' FROM d RETURNING id",
            4, NULL, params, NULL, NULL, 0);
        cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQerrorMessage(h->pg));
        long long id = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
        PQclear(r);
        *(i == 0 ? &h->chunk_password : i == 1 ? &h->chunk_invoice : &h->chunk_export) = id;
    }
    test_pg_exec(h->pg, "ANALYZE kb_chunks");
}

/* Inbox 1: the defaults (threshold 0.5); inbox 2: threshold 0.95. */
static void write_inbox_config(struct harness *h)
{
    snprintf(h->inbox_path, sizeof h->inbox_path, "/tmp/tierone-test-ai-inboxes-%d.json",
             (int)getpid());
    FILE *f = fopen(h->inbox_path, "w");
    cr_assert_not_null(f);
    fputs("{\"defaults\": {\"knowledge_base\": \"docs\", \"temperature\": 0.3},"
          " \"inboxes\": {\"2\": {\"score_threshold\": 0.95}}}\n",
          f);
    fclose(f);
}

static void h_init_with(struct harness *h, int with_llm, int with_chatwoot)
{
    memset(h, 0, sizeof *h);
    log_init("test", LOG_WARN);
    h->rc = test_redis_connect(DB);
    h->db_url = xstrdup(test_pg_fresh(PGNAME));
    h->pg = test_pg_connect(h->db_url);
    seed_kb(h);
    write_inbox_config(h);

    h->cfg.redis_url = xstrdup(test_redis_url(DB));
    h->cfg.queues = xstrdup("ai");
    h->cfg.concurrency = 4;
    h->cfg.shutdown_timeout_ms = 2000;
    h->cfg.timestamp_format = JOB_TS_FLOAT_SECONDS;
    h->cfg.max_retries = 25;
    h->cfg.dead_max_jobs = 10000;
    h->cfg.dead_timeout_s = 180 * 24 * 3600;
    h->cfg.poll_interval_ms = 100;
    h->cfg.beat_interval_ms = 100;
    h->cfg.lease_ttl_s = 5;
    h->cfg.recovery_interval_ms = 1000;
    h->cfg.max_recoveries = 3;
    h->cfg.fetch_idle_max_ms = 10;
    h->cfg.tag = xstrdup("test-ai");

    h->ps.database_url = h->db_url;
    h->ps.database_prepare = 1; /* the default of TIERONE_DATABASE_PREPARE */
    h->ps.database_pool = 4;
    h->ps.shadow = 1;
    h->ps.ai_retries = 3;
    h->ps.debounce_ms = 0;
    h->ps.inbox_config_path = h->inbox_path;
    if (with_llm) {
        h->llm = fake_llm_start(NULL);
        cr_assert_not_null(h->llm);
        h->ps.llm_base_url = (char *)fake_llm_url(h->llm);
        h->ps.llm_model = "test-model";
        h->ps.llm_timeout_ms = 5000;
    }
    if (with_chatwoot) {
        h->chatwoot = fake_chatwoot_start(NULL);
        cr_assert_not_null(h->chatwoot);
        h->ps.chatwoot_base_url = (char *)fake_chatwoot_url(h->chatwoot);
        h->ps.chatwoot_bot_token = "bot-token";
        h->ps.chatwoot_user_token = "user-token";
    }

    uv_loop_init(&h->loop);
    char err[256];
    cr_assert_eq(worker_init(&h->w, &h->loop, &h->cfg, err, sizeof err), 0, "%s", err);
    cr_assert_eq(pipeline_init(&h->p, &h->w, &h->ps, err, sizeof err), 0, "%s", err);
    worker_start(&h->w);
}

static void h_init(struct harness *h, int with_llm)
{
    h_init_with(h, with_llm, 0);
}

static void h_fini(struct harness *h)
{
    worker_stop(&h->w);
    uv_run(&h->loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&h->loop), 0, "handles left open after the worker stopped");
    worker_free(&h->w);
    fake_llm_free(h->llm);
    fake_chatwoot_free(h->chatwoot);
    PQfinish(h->pg);
    redisFree(h->rc);
    unlink(h->inbox_path);
    free(h->cfg.redis_url);
    free(h->cfg.queues);
    free(h->cfg.tag);
    free(h->db_url);
}

/* ---- turns and jobs ---------------------------------------------------------------------- */

static long long insert_turn(struct harness *h, long long conv, long long msg, long long inbox,
                             const char *content)
{
    char c[32], m[32], i[32];
    snprintf(c, sizeof c, "%lld", conv);
    snprintf(m, sizeof m, "%lld", msg);
    snprintf(i, sizeof i, "%lld", inbox);
    const char *params[] = {c, m, i, content};
    PGresult *r = PQexecParams(
        h->pg,
        "INSERT INTO turns (account_id, conversation_id, message_id, inbox_id, content, contact)"
        " VALUES (1, $1, $2, $3, $4, '{\"name\": \"Ann\", \"additional_attributes\":"
        " {\"plan\": \"pro\"}, \"custom_attributes\": {\"subdomain\": \"acme\"}}') RETURNING id",
        4, NULL, params, NULL, NULL, 0);
    cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQerrorMessage(h->pg));
    long long id = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return id;
}

/* Push Tierone::Retrieve [id] with retry_max retries. */
static void push_retrieve(struct harness *h, long long id, long long retry_max)
{
    char args[32], err[256];
    snprintf(args, sizeof args, "[%lld]", id);
    struct sidekiq_job_spec spec = {.klass = PIPELINE_RETRIEVE,
                                    .queue = "ai",
                                    .args = args,
                                    .retry = SIDEKIQ_RETRY_MAX,
                                    .retry_max = retry_max};
    cr_assert_eq(sidekiq_push_sync(h->rc, NULL, &spec, NULL, err, sizeof err), 0, "%s", err);
}

/* The turn's column as text (NULL for SQL NULL); caller frees. */
static char *turn_col(struct harness *h, long long id, const char *col)
{
    char sql[160];
    snprintf(sql, sizeof sql, "SELECT %s FROM turns WHERE id = %lld", col, id);
    return test_pg_value(h->pg, sql);
}

static json_t *turn_json_col(struct harness *h, long long id, const char *col)
{
    char *v = turn_col(h, id, col);
    json_t *j = v ? json_loads(v, 0, NULL) : NULL;
    free(v);
    return j;
}

/* Jobs on queue:actions of class klass with args [id]. */
static int actions_count(struct harness *h, const char *klass, long long id)
{
    redisReply *r = test_redis_cmd(h->rc, "LRANGE queue:actions 0 -1");
    int n = 0;
    for (size_t i = 0; i < r->elements; i++) {
        json_t *j = json_loadb(r->element[i]->str, r->element[i]->len, 0, NULL);
        if (j && !strcmp(json_string_value(json_object_get(j, "class")), klass) &&
            json_integer_value(json_array_get(json_object_get(j, "args"), 0)) == id)
            n++;
        json_decref(j);
    }
    freeReplyObject(r);
    return n;
}

static int idle(struct harness *h)
{
    return h->w.busy == 0 && h->w.out_count == 0 && h->w.out_in_flight == 0 &&
           test_redis_int(h->rc, "LLEN queue:ai") == 0;
}

struct wait_next {
    struct harness *h;
    long long id;
    const char *klass;
};

static int cond_next(void *arg)
{
    struct wait_next *w = arg;
    return actions_count(w->h, w->klass, w->id) > 0 && idle(w->h);
}

/* Run until the turn's next step klass is waiting on queue:actions and the worker is idle;
 * returns the stored decision (new reference). */
static json_t *wait_next(struct harness *h, long long id, const char *klass)
{
    struct wait_next w = {h, id, klass};
    cr_assert(test_loop_until(&h->loop, cond_next, &w, WAIT_MS), "no %s for turn %lld", klass, id);
    json_t *d = turn_json_col(h, id, "decision::text");
    cr_assert_not_null(d, "turn %lld has no decision", id);
    return d;
}

static int cond_idle(void *arg)
{
    return idle(arg);
}

struct wait_retry {
    struct harness *h;
    long long count;
    char *member;
};

static int cond_retry_waiting(void *arg)
{
    struct wait_retry *w = arg;
    if (!idle(w->h))
        return 0;
    redisReply *r = test_redis_cmd(w->h->rc, "ZRANGE retry 0 -1");
    int found = 0;
    if (r->elements == 1) {
        json_t *j = json_loadb(r->element[0]->str, r->element[0]->len, 0, NULL);
        if (json_integer_value(json_object_get(j, "retry_count")) == w->count) {
            w->member = xstrndup(r->element[0]->str, r->element[0]->len);
            found = 1;
        }
        json_decref(j);
    }
    freeReplyObject(r);
    return found;
}

/* Wait for the job in the retry set after its failure number count + 1 (retry_count ==
 * count) and make it due now (the poller moves it back to its queue). */
static void retry_now(struct harness *h, long long count)
{
    struct wait_retry w = {h, count, NULL};
    cr_assert(test_loop_until(&h->loop, cond_retry_waiting, &w, WAIT_MS),
              "no job with retry_count %lld in retry", count);
    freeReplyObject(test_redis_cmd(h->rc, "ZADD retry XX 0 %s", w.member));
    free(w.member);
}

static const char *jstr(const json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    cr_assert_not_null(s, "no string %s", key);
    return s;
}

static long long first_id(const json_t *d)
{
    json_t *ids = json_object_get(d, "passage_ids");
    cr_assert_eq(json_array_size(ids), 1);
    return json_integer_value(json_array_get(ids, 0));
}

/* A scripted model reply (content is the JSON object text). */
static void llm_reply(struct harness *h, const char *content)
{
    struct fake_llm_reply r = {.content = content};
    fake_llm_push_reply(h->llm, &r);
}

/* ---- retrieval-only ---------------------------------------------------------------------- */

Test(ai_steps, retrieval_only_answers_above_threshold)
{
    struct harness h;
    h_init(&h, 0);
    long long id = insert_turn(&h, 10, 101, 1, "How do I reset my password?");
    push_retrieve(&h, id, 3);
    json_t *d = wait_next(&h, id, PIPELINE_REPLY);
    cr_assert_str_eq(jstr(d, "action"), "answer");
    cr_assert_str_eq(jstr(d, "by"), "retrieval");
    cr_assert_str_eq(jstr(d, "category"), "account");
    cr_assert_eq(first_id(d), h.chunk_password);
    const char *answer = jstr(d, "answer");
    cr_assert(strncmp(answer, "> To reset your password", 24) == 0, "%s", answer);
    cr_assert_not_null(strstr(answer, "\n\nSource: docs/account.md — Account > Password reset"),
                       "%s", answer);
    json_decref(d);

    char *q = turn_col(&h, id, "question");
    cr_assert_str_eq(q, "How do I reset my password?");
    free(q);
    json_t *ps = turn_json_col(&h, id, "passages::text");
    cr_assert(json_array_size(ps) >= 1);
    json_t *p0 = json_array_get(ps, 0);
    cr_assert_eq(json_integer_value(json_object_get(p0, "id")), h.chunk_password);
    cr_assert_str_eq(jstr(p0, "source"), "docs/account.md");
    cr_assert_str_eq(jstr(p0, "title"), "Account");
    cr_assert_str_eq(jstr(p0, "heading_path"), "Account > Password reset");
    cr_assert_not_null(strstr(jstr(p0, "content"), "reset link"));
    cr_assert(json_number_value(json_object_get(p0, "score")) >= 0.5);
    json_decref(ps);
    cr_assert_eq(actions_count(&h, PIPELINE_ESCALATE, id), 0);
    h_fini(&h);
}

Test(ai_steps, retrieval_only_escalates_below_threshold)
{
    struct harness h;
    h_init(&h, 0);
    long long id = insert_turn(&h, 11, 111, 2, "How do I download an invoice as PDF?");
    push_retrieve(&h, id, 3);
    json_t *d = wait_next(&h, id, PIPELINE_ESCALATE);
    cr_assert_str_eq(jstr(d, "action"), "escalate");
    cr_assert_str_eq(jstr(d, "by"), "retrieval");
    cr_assert_str_eq(jstr(d, "category"), "billing");
    const char *reason = jstr(d, "reason");
    cr_assert(strncmp(reason, "no passage in the knowledge base answers this (best score 0.", 60) ==
                  0,
              "%s", reason);
    cr_assert_not_null(strstr(reason, " < threshold 0.95)"), "%s", reason);
    json_decref(d);
    cr_assert_eq(actions_count(&h, PIPELINE_REPLY, id), 0);
    h_fini(&h);
}

Test(ai_steps, retrieval_only_escalates_bug_reports)
{
    struct harness h;
    h_init(&h, 0);
    long long id = insert_turn(&h, 12, 121, 1, "Export your data as CSV crashes with error 500");
    push_retrieve(&h, id, 3);
    json_t *d = wait_next(&h, id, PIPELINE_ESCALATE);
    cr_assert_str_eq(jstr(d, "category"), "bug");
    cr_assert_str_eq(jstr(d, "action"), "escalate");
    json_decref(d);
    h_fini(&h);
}

/* ---- bursts ------------------------------------------------------------------------------ */

Test(ai_steps, burst_of_three_gets_one_question)
{
    struct harness h;
    h_init(&h, 0);
    long long a = insert_turn(&h, 20, 201, 1, "Hi there");
    long long b = insert_turn(&h, 20, 202, 1, "I forgot my password");
    long long c = insert_turn(&h, 20, 203, 1, "How do I reset it?");
    push_retrieve(&h, a, 3);
    push_retrieve(&h, b, 3);
    push_retrieve(&h, c, 3);
    json_t *d = wait_next(&h, c, PIPELINE_REPLY);
    cr_assert_str_eq(jstr(d, "action"), "answer");
    json_decref(d);
    cr_assert(test_loop_until(&h.loop, cond_idle, &h, WAIT_MS));
    char *q = turn_col(&h, c, "question");
    cr_assert_str_eq(q, "Hi there\nI forgot my password\nHow do I reset it?");
    free(q);
    for (long long id = a; id <= b; id++) {
        char *state = turn_col(&h, id, "state");
        cr_assert_str_eq(state, "superseded", "turn %lld", id);
        free(state);
        cr_assert_null(turn_json_col(&h, id, "decision::text"));
    }
    cr_assert_eq(test_redis_int(h.rc, "LLEN queue:actions"), 1, "one answer for the burst");
    h_fini(&h);
}

static int cond_finished(void *arg)
{
    struct wait_next *w = arg;
    char *state = turn_col(w->h, w->id, "state");
    int done = state && strcmp(state, "open") != 0;
    free(state);
    return done && idle(w->h);
}

Test(ai_steps, not_the_newest_turn_is_superseded)
{
    struct harness h;
    h_init(&h, 0);
    long long older = insert_turn(&h, 30, 300, 1, "Hello?");
    long long old = insert_turn(&h, 30, 301, 1, "How do I reset my password?");
    insert_turn(&h, 30, 302, 1, "never mind, found it");
    push_retrieve(&h, old, 3);
    struct wait_next w = {&h, old, NULL};
    cr_assert(test_loop_until(&h.loop, cond_finished, &w, WAIT_MS));
    char *state = turn_col(&h, old, "state");
    char *reason = turn_col(&h, old, "outcome_reason");
    cr_assert_str_eq(state, "superseded");
    cr_assert_str_eq(reason, "a newer message of the burst is answered instead");
    free(state);
    free(reason);
    cr_assert_null(turn_col(&h, old, "question"));
    /* Only the newest turn's Retrieve gathers the burst: the older one stays open for it. */
    char *older_state = turn_col(&h, older, "state");
    cr_assert_str_eq(older_state, "open");
    free(older_state);
    cr_assert_eq(test_redis_int(h.rc, "LLEN queue:actions"), 0);
    cr_assert_eq(h.w.total_processed, 1, "no Decide was enqueued");
    h_fini(&h);
}

/* A burst after an answered turn starts after it. */
Test(ai_steps, burst_starts_after_the_last_answered_turn)
{
    struct harness h;
    h_init(&h, 0);
    long long a = insert_turn(&h, 21, 211, 1, "old question");
    test_pg_exec(h.pg, "UPDATE turns SET state = 'answered' WHERE message_id = 211");
    long long b = insert_turn(&h, 21, 212, 1, "How do I reset my password?");
    push_retrieve(&h, b, 3);
    json_t *d = wait_next(&h, b, PIPELINE_REPLY);
    json_decref(d);
    char *q = turn_col(&h, b, "question");
    cr_assert_str_eq(q, "How do I reset my password?");
    free(q);
    char *state = turn_col(&h, a, "state");
    cr_assert_str_eq(state, "answered");
    free(state);
    h_fini(&h);
}

/* The fail-safe of Retrieve: the knowledge base cannot be searched on the last attempt. */
Test(ai_steps, retrieve_failsafe_on_last_attempt)
{
    struct harness h;
    h_init(&h, 0);
    test_pg_exec(h.pg, "ALTER TABLE kb_chunks RENAME TO kb_chunks_gone");
    long long id = insert_turn(&h, 13, 131, 1, "How do I reset my password?");
    push_retrieve(&h, id, 0); /* the first attempt is the last */
    json_t *d = wait_next(&h, id, PIPELINE_ESCALATE);
    cr_assert_str_eq(jstr(d, "by"), "failsafe");
    cr_assert_str_eq(jstr(d, "category"), "question");
    const char *reason = jstr(d, "reason");
    cr_assert(strncmp(reason, "assistant unavailable: ", 23) == 0, "%s", reason);
    cr_assert_not_null(strstr(reason, "kb search"), "%s", reason);
    json_decref(d);
    cr_assert_eq(test_redis_int(h.rc, "ZCARD retry"), 0);
    cr_assert_eq(test_redis_int(h.rc, "ZCARD dead"), 0);
    h_fini(&h);
}

/* ---- with the LLM ------------------------------------------------------------------------ */

static char *good_answer(long long chunk, const char *category)
{
    return xasprintf("{\"action\": \"answer\", \"answer\": \"Open Settings > Security and click "
                     "Reset password.\", \"reason\": \"documented\", \"category\": \"%s\","
                     " \"passage_ids\": [%lld]}",
                     category, chunk);
}

Test(ai_steps, llm_answers_with_a_cited_passage)
{
    struct harness h;
    h_init(&h, 1);
    long long prev = insert_turn(&h, 40, 400, 1, "Hello, is anyone there?");
    test_pg_exec(h.pg, "UPDATE turns SET state = 'answered', decision = '{\"action\": \"answer\","
                       " \"answer\": \"Yes, how can I help?\"}' WHERE message_id = 400");
    long long id = insert_turn(&h, 40, 401, 1, "How do I reset my password?");
    (void)prev;
    char *reply = good_answer(h.chunk_password, "account");
    llm_reply(&h, reply);
    free(reply);
    push_retrieve(&h, id, 3);
    json_t *d = wait_next(&h, id, PIPELINE_REPLY);
    cr_assert_str_eq(jstr(d, "action"), "answer");
    cr_assert_str_eq(jstr(d, "answer"), "Open Settings > Security and click Reset password.");
    cr_assert_str_eq(jstr(d, "by"), "llm");
    cr_assert_str_eq(jstr(d, "model"), "test-model");
    cr_assert_str_eq(jstr(d, "category"), "account");
    cr_assert_eq(first_id(d), h.chunk_password);
    json_decref(d);

    cr_assert_eq(fake_llm_chat_count(h.llm), 1);
    json_t *req = fake_llm_request_json(h.llm, 0);
    cr_assert_str_eq(jstr(req, "model"), "test-model");
    cr_assert_float_eq(json_number_value(json_object_get(req, "temperature")), 0.3, 1e-9);
    json_t *rf = json_object_get(req, "response_format");
    cr_assert_str_eq(jstr(rf, "type"), "json_schema");
    cr_assert(json_is_true(json_object_get(json_object_get(rf, "json_schema"), "strict")));
    json_t *msgs = json_object_get(req, "messages");
    cr_assert_eq(json_array_size(msgs), 2);
    const char *user = jstr(json_array_get(msgs, 1), "content");
    json_t *doc = json_loads(strchr(user, '{'), 0, NULL);
    cr_assert_not_null(doc);
    cr_assert_str_eq(jstr(doc, "question"), "How do I reset my password?");
    cr_assert_str_eq(
        jstr(json_object_get(json_object_get(doc, "contact"), "additional_attributes"), "plan"),
        "pro");
    cr_assert_str_eq(
        jstr(json_object_get(json_object_get(doc, "contact"), "custom_attributes"), "subdomain"),
        "acme");
    json_t *p0 = json_array_get(json_object_get(doc, "passages"), 0);
    cr_assert_eq(json_integer_value(json_object_get(p0, "id")), h.chunk_password);
    json_t *conv = json_object_get(doc, "conversation");
    cr_assert_eq(json_array_size(conv), 2, "the earlier turn and its answer, from the ledger");
    cr_assert_str_eq(jstr(json_array_get(conv, 0), "text"), "Hello, is anyone there?");
    cr_assert_str_eq(jstr(json_array_get(conv, 1), "from"), "bot");
    json_decref(doc);
    json_decref(req);
    h_fini(&h);
}

Test(ai_steps, llm_escalates)
{
    struct harness h;
    h_init(&h, 1);
    long long id = insert_turn(&h, 41, 411, 1, "I want my money back for last month");
    llm_reply(&h, "{\"action\": \"escalate\", \"answer\": \"\", \"reason\": \"refund request\","
                  " \"category\": \"billing\", \"passage_ids\": []}");
    push_retrieve(&h, id, 3);
    json_t *d = wait_next(&h, id, PIPELINE_ESCALATE);
    cr_assert_str_eq(jstr(d, "action"), "escalate");
    cr_assert_str_eq(jstr(d, "reason"), "refund request");
    cr_assert_str_eq(jstr(d, "category"), "billing");
    cr_assert_str_eq(jstr(d, "by"), "llm");
    json_decref(d);
    cr_assert_eq(actions_count(&h, PIPELINE_REPLY, id), 0);
    h_fini(&h);
}

Test(ai_steps, llm_uncited_answer_escalates)
{
    struct harness h;
    h_init(&h, 1);
    long long id = insert_turn(&h, 42, 421, 1, "How do I reset my password?");
    llm_reply(&h, "{\"action\": \"answer\", \"answer\": \"Just call us.\", \"reason\": \"\","
                  " \"category\": \"question\", \"passage_ids\": [999999]}");
    push_retrieve(&h, id, 3);
    json_t *d = wait_next(&h, id, PIPELINE_ESCALATE);
    cr_assert_str_eq(jstr(d, "action"), "escalate");
    cr_assert_str_eq(jstr(d, "reason"), "the answer cites no passage");
    json_decref(d);
    cr_assert_eq(fake_llm_chat_count(h.llm), 1, "an uncited answer is not asked again");
    h_fini(&h);
}

Test(ai_steps, llm_unusable_twice_escalates)
{
    struct harness h;
    h_init(&h, 1);
    long long id = insert_turn(&h, 43, 431, 1, "How do I reset my password?");
    llm_reply(&h, "I think you should reset it.");
    llm_reply(&h, "{\"action\": \"maybe\"}");
    push_retrieve(&h, id, 3);
    json_t *d = wait_next(&h, id, PIPELINE_ESCALATE);
    cr_assert_str_eq(jstr(d, "action"), "escalate");
    const char *reason = jstr(d, "reason");
    cr_assert(strncmp(reason, "no usable answer from the model (", 33) == 0, "%s", reason);
    cr_assert_str_eq(jstr(d, "category"), "account");
    json_decref(d);
    cr_assert_eq(fake_llm_chat_count(h.llm), 2);
    h_fini(&h);
}

Test(ai_steps, llm_unusable_once_then_answers)
{
    struct harness h;
    h_init(&h, 1);
    long long id = insert_turn(&h, 44, 441, 1, "How do I reset my password?");
    struct fake_llm_reply cut = {.content = "{\"action\": \"ans", .finish_reason = "length"};
    fake_llm_push_reply(h.llm, &cut);
    char *reply = good_answer(h.chunk_password, "account");
    llm_reply(&h, reply);
    free(reply);
    push_retrieve(&h, id, 3);
    json_t *d = wait_next(&h, id, PIPELINE_REPLY);
    cr_assert_str_eq(jstr(d, "action"), "answer");
    json_decref(d);
    cr_assert_eq(fake_llm_chat_count(h.llm), 2);
    h_fini(&h);
}

Test(ai_steps, llm_500_is_retried_then_answers)
{
    struct harness h;
    h_init(&h, 1);
    long long id = insert_turn(&h, 45, 451, 1, "How do I reset my password?");
    struct fake_fault f = {.status = 500, .body = "{\"error\": {\"message\": \"upstream down\"}}"};
    fake_faults_push(fake_llm_faults(h.llm), &f, 1);
    char *reply = good_answer(h.chunk_password, "account");
    llm_reply(&h, reply);
    free(reply);
    push_retrieve(&h, id, 3);
    retry_now(&h, 0);
    json_t *d = wait_next(&h, id, PIPELINE_REPLY);
    cr_assert_str_eq(jstr(d, "by"), "llm");
    json_decref(d);
    cr_assert_eq(fake_llm_chat_count(h.llm), 1);
    cr_assert_eq(fake_llm_count(h.llm), 2);
    cr_assert_eq(test_redis_int(h.rc, "ZCARD retry"), 0);
    h_fini(&h);
}

Test(ai_steps, llm_down_on_the_last_attempt_escalates)
{
    struct harness h;
    h_init(&h, 1);
    long long id = insert_turn(&h, 46, 461, 1, "How do I reset my password?");
    struct fake_fault f = {.status = 503, .body = "{\"error\": {\"message\": \"overloaded\"}}"};
    fake_faults_push(fake_llm_faults(h.llm), &f, 10);
    push_retrieve(&h, id, 1); /* Decide is enqueued with ai_retries (3) by Retrieve */
    /* Decide runs with 3 retries: fail, fail, fail, then the fail-safe on the fourth. */
    for (int i = 0; i < 3; i++)
        retry_now(&h, i);
    json_t *d = wait_next(&h, id, PIPELINE_ESCALATE);
    cr_assert_str_eq(jstr(d, "by"), "failsafe");
    const char *reason = jstr(d, "reason");
    cr_assert(strncmp(reason, "assistant unavailable: ", 23) == 0, "%s", reason);
    cr_assert_not_null(strstr(reason, "503"), "%s", reason);
    json_decref(d);
    cr_assert_eq(fake_llm_count(h.llm), 4);
    cr_assert_eq(test_redis_int(h.rc, "ZCARD retry"), 0);
    cr_assert_eq(test_redis_int(h.rc, "ZCARD dead"), 0);
    h_fini(&h);
}

Test(ai_steps, llm_permanent_error_escalates_at_once)
{
    struct harness h;
    h_init(&h, 1);
    long long id = insert_turn(&h, 47, 471, 1, "How do I reset my password?");
    struct fake_fault f = {.status = 401,
                           .body = "{\"error\": {\"message\": \"Incorrect API key provided\","
                                   " \"type\": \"invalid_request_error\", \"code\":"
                                   " \"invalid_api_key\"}}"};
    fake_faults_push(fake_llm_faults(h.llm), &f, 1);
    push_retrieve(&h, id, 3);
    json_t *d = wait_next(&h, id, PIPELINE_ESCALATE);
    cr_assert_str_eq(jstr(d, "by"), "failsafe");
    cr_assert_not_null(strstr(jstr(d, "reason"), "Incorrect API key"), "%s", jstr(d, "reason"));
    json_decref(d);
    cr_assert_eq(fake_llm_count(h.llm), 1);
    cr_assert_eq(test_redis_int(h.rc, "ZCARD retry"), 0);
    h_fini(&h);
}

/* A re-run of Decide after the decision was stored reuses it (no second LLM call). */
Test(ai_steps, decide_rerun_reuses_the_stored_decision)
{
    struct harness h;
    h_init(&h, 1);
    long long id = insert_turn(&h, 48, 481, 1, "How do I reset my password?");
    test_pg_exec(h.pg, "UPDATE turns SET question = content, passages = '[]', decision ="
                       " '{\"action\": \"escalate\", \"answer\": \"\", \"reason\": \"stored\","
                       " \"category\": \"question\", \"passage_ids\": [], \"by\": \"llm\"}'"
                       " WHERE message_id = 481");
    char args[32], err[256];
    snprintf(args, sizeof args, "[%lld]", id);
    struct sidekiq_job_spec spec = {.klass = PIPELINE_DECIDE, .queue = "ai", .args = args};
    cr_assert_eq(sidekiq_push_sync(h.rc, NULL, &spec, NULL, err, sizeof err), 0, "%s", err);
    json_t *d = wait_next(&h, id, PIPELINE_ESCALATE);
    cr_assert_str_eq(jstr(d, "reason"), "stored");
    json_decref(d);
    cr_assert_eq(fake_llm_count(h.llm), 0);
    h_fini(&h);
}

/* With Chatwoot and a user token, the recent public messages come from Chatwoot. */
Test(ai_steps, llm_sees_recent_public_messages_from_chatwoot)
{
    struct harness h;
    h_init_with(&h, 1, 1);
    fake_chatwoot_add_conversation(h.chatwoot, 1, 50, "pending", 1, 0);
    fake_chatwoot_add_message(h.chatwoot, 1, 50, 0, "Hello", 0);
    fake_chatwoot_add_message(h.chatwoot, 1, 50, 1, "Hi! How can I help?", 0);
    fake_chatwoot_add_message(h.chatwoot, 1, 50, 1, "internal: VIP customer", 1);
    long msg = fake_chatwoot_add_message(h.chatwoot, 1, 50, 0, "How do I reset my password?", 0);
    long long id = insert_turn(&h, 50, msg, 1, "How do I reset my password?");
    char *reply = good_answer(h.chunk_password, "account");
    llm_reply(&h, reply);
    free(reply);
    push_retrieve(&h, id, 3);
    json_t *d = wait_next(&h, id, PIPELINE_REPLY);
    json_decref(d);
    json_t *req = fake_llm_request_json(h.llm, 0);
    const char *user = jstr(json_array_get(json_object_get(req, "messages"), 1), "content");
    json_t *doc = json_loads(strchr(user, '{'), 0, NULL);
    json_t *conv = json_object_get(doc, "conversation");
    cr_assert_eq(json_array_size(conv), 2, "public messages before the turn's: %s", user);
    cr_assert_str_eq(jstr(json_array_get(conv, 0), "from"), "customer");
    cr_assert_str_eq(jstr(json_array_get(conv, 0), "text"), "Hello");
    cr_assert_str_eq(jstr(json_array_get(conv, 1), "text"), "Hi! How can I help?");
    cr_assert_null(strstr(user, "VIP"), "private notes stay out of the prompt");
    json_decref(doc);
    json_decref(req);
    h_fini(&h);
}
