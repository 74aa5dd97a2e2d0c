/* The support pipeline end to end (issue 6): signed webhooks through the real tierone-ingest,
 * the job chain in the real tierone-worker, real Redis (database 14) and PostgreSQL, and the
 * fake Chatwoot, LLM, Slack and Linear (tests/support/test_stack.h). The knowledge base is
 * tests/fixtures/kb; without an LLM the worker answers from the best passage
 * (retrieval-only), so these outcomes follow from the documents, not from a script. */
#include "fake_chatwoot.h"
#include "fake_fault.h"
#include "fake_http.h"
#include "fake_linear.h"
#include "fake_llm.h"
#include "fake_slack.h"
#include "test_pg.h"
#include "test_port.h"
#include "test_stack.h"

#include <criterion/criterion.h>
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define REDIS_DB 14
#define PG_NAME  "tierone_test_pipeline"
#define HOOK     "/webhooks/agent-bot"

static const char QUESTION[] = "How do I reset my password? The reset link never arrives";
static const char BUG[] = "The CSV export crashes with error 500 every time I click download";

static struct test_stack st;

static void up(int llm, int shadow)
{
    struct test_stack_opts o = {
        .redis_db = REDIS_DB, .pg_name = PG_NAME, .llm = llm, .shadow = shadow};
    test_stack_start(&st, &o);
}

static void up_plain(void)
{
    up(0, 0);
}

static void down(void)
{
    test_stack_stop(&st);
}

/* An incoming customer message: stored in the fake Chatwoot (which gives it its id; the
 * test's own number msg names its delivery), then its signed webhook is posted; asserts
 * the shim accepted it. Returns the Chatwoot message id. */
static long customer_says(long conv, long msg, const char *text)
{
    char delivery[64];
    snprintf(delivery, sizeof delivery, "d-%ld-%ld", conv, msg);
    long id = test_stack_customer_says(&st, conv, text, delivery);
    cr_assert_gt(id, 0, "the shim did not accept conversation %ld's message", conv);
    return id;
}

static char *sql1(const char *sql)
{
    return test_pg_value(st.pg, sql);
}

static void assert_sql(const char *sql, const char *want)
{
    char *v = sql1(sql);
    cr_assert(v && !strcmp(v, want), "%s -> %s, want %s", sql, v ? v : "NULL", want);
    free(v);
}

/* Requests of method to a path of the fake Chatwoot that ends with suffix. */
static size_t cw_requests(const char *method, const char *suffix, size_t *first_seq)
{
    struct fake_http *h = fake_chatwoot_http(st.cw);
    size_t n = 0;
    for (size_t i = 0; i < fake_http_count(h); i++) {
        const struct fake_http_request *r = fake_http_request_at(h, i);
        size_t lp = strlen(r->path), ls = strlen(suffix);
        if (!strcmp(r->method, method) && lp >= ls && !strcmp(r->path + lp - ls, suffix)) {
            if (n == 0 && first_seq)
                *first_seq = r->seq;
            n++;
        }
    }
    return n;
}

TestSuite(pipeline, .init = up_plain, .fini = down, .timeout = 180);

Test(pipeline, a_question_the_docs_answer_gets_exactly_one_reply_with_the_marker)
{
    test_stack_conversation(&st, 1, "pending");
    customer_says(1, 5001, QUESTION);
    cr_assert(test_stack_wait_idle(&st, 30000), "the turn did not end");
    cr_assert_eq(test_stack_count_marked(&st, 1, "tierone_turn", 0), 1);
    assert_sql("SELECT state FROM turns WHERE conversation_id = 1", "answered");
    assert_sql("SELECT decision->>'by' FROM turns WHERE conversation_id = 1", "retrieval");
    assert_sql("SELECT state FROM effects WHERE kind = 'reply'", "sent");
    json_t *msgs = fake_chatwoot_messages(st.cw, 1, 1);
    const char *content = NULL;
    size_t k;
    json_t *m;
    json_array_foreach(msgs, k, m)
    {
        if (json_object_get(json_object_get(m, "content_attributes"), "tierone_turn"))
            content = json_string_value(json_object_get(m, "content"));
    }
    cr_assert(content && strstr(content, "password"), "reply: %s", content ? content : "(none)");
    cr_assert(strstr(content, "Source:"), "the answer names its source: %s", content);
    json_decref(msgs);
    /* Posted with the bot token (its echo is recognisable as the bot's). */
    struct fake_http *h = fake_chatwoot_http(st.cw);
    for (size_t i = 0; i < fake_http_count(h); i++) {
        const struct fake_http_request *r = fake_http_request_at(h, i);
        if (!strcmp(r->method, "POST") && strstr(r->path, "/messages"))
            cr_assert_str_eq(fake_http_request_header(r, "api_access_token"), "bot-token");
    }
}

Test(pipeline, a_bug_report_is_escalated_with_every_effect_once_and_in_order)
{
    test_stack_conversation(&st, 2, "pending");
    const char *existing[] = {"vip"};
    fake_chatwoot_set_labels(st.cw, 1, 2, existing, 1);
    customer_says(2, 5002, BUG);
    cr_assert(test_stack_wait_idle(&st, 30000), "the turn did not end");
    assert_sql("SELECT state FROM turns WHERE conversation_id = 2", "escalated");
    assert_sql("SELECT decision->>'category' FROM turns WHERE conversation_id = 2", "bug");
    /* Chatwoot: the note with the reason, then the label, then the hand-off. */
    size_t note_seq = 0, label_seq = 0, toggle_seq = 0;
    cr_assert_eq(test_stack_count_marked(&st, 2, "tierone_note", 1), 2,
                 "escalation note + Linear note");
    cr_assert_eq(test_stack_count_marked(&st, 2, "tierone_turn", 0), 0, "no reply");
    cr_assert_geq(cw_requests("POST", "/messages", &note_seq), 2);
    cr_assert_eq(cw_requests("POST", "/labels", &label_seq), 1);
    cr_assert_eq(cw_requests("POST", "/toggle_status", &toggle_seq), 1);
    cr_assert(note_seq < label_seq && label_seq < toggle_seq,
              "order: note %zu label %zu toggle %zu", note_seq, label_seq, toggle_seq);
    json_t *labels = fake_chatwoot_labels(st.cw, 1, 2);
    cr_assert_eq(json_array_size(labels), 2, "needs-human merged into the existing labels");
    cr_assert_str_eq(json_string_value(json_array_get(labels, 0)), "vip");
    cr_assert_str_eq(json_string_value(json_array_get(labels, 1)), "needs-human");
    json_decref(labels);
    char *status = fake_chatwoot_status(st.cw, 1, 2);
    cr_assert_str_eq(status, "open");
    free(status);
    /* Slack once, Linear once, and the private note carries the issue's URL. */
    cr_assert_eq(fake_slack_count(st.slack), 1);
    cr_assert_eq(fake_linear_issue_count(st.linear), 1);
    json_t *issue = fake_linear_issue(st.linear, 0);
    const char *url = json_string_value(json_object_get(issue, "url"));
    cr_assert_not_null(url);
    json_t *msgs = fake_chatwoot_messages(st.cw, 1, 2);
    int linked = 0;
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m)
    {
        const char *c = json_string_value(json_object_get(m, "content"));
        linked |= c && strstr(c, url) != NULL;
    }
    cr_assert(linked, "no private note links %s", url);
    json_decref(msgs);
    json_decref(issue);
}

Test(pipeline, duplicate_deliveries_make_one_turn_and_one_reply)
{
    test_stack_conversation(&st, 3, "pending");
    long id = fake_chatwoot_add_message(st.cw, 1, 3, 0, QUESTION, 0);
    char *body = test_stack_message(3, id, "pending", "incoming", "contact", QUESTION, 0, NULL);
    cr_assert_eq(test_stack_post(&st, HOOK, "same-delivery", body), 202);
    cr_assert_eq(test_stack_post(&st, HOOK, "same-delivery", body), 202);  /* shim dedupe */
    cr_assert_eq(test_stack_post(&st, HOOK, "other-delivery", body), 202); /* the turn dedupes */
    free(body);
    cr_assert(test_stack_wait_idle(&st, 30000));
    assert_sql("SELECT count(*) FROM turns", "1");
    cr_assert_eq(test_stack_count_marked(&st, 3, "tierone_turn", 0), 1);
}

Test(pipeline, a_human_reply_silences_the_bot_until_the_conversation_is_pending_again)
{
    test_stack_conversation(&st, 4, "pending");
    char *human = test_stack_message(4, 5010, "pending", "outgoing", "user",
                                     "Hi, I am looking into it", 0, NULL);
    cr_assert_eq(test_stack_post(&st, HOOK, "h1", human), 202);
    free(human);
    cr_assert(test_stack_wait_sql(&st, "SELECT human_active FROM conversations", "t", 20000));
    customer_says(4, 5011, QUESTION);
    cr_assert(test_stack_wait_idle(&st, 20000));
    assert_sql("SELECT count(*) FROM turns", "0");
    cr_assert_eq(test_stack_count_marked(&st, 4, "tierone_turn", 0), 0);
    /* An agent hands it back: pending again. */
    char *back = test_stack_status_change(4, "pending");
    cr_assert_eq(test_stack_post(&st, HOOK, "s1", back), 202);
    free(back);
    cr_assert(test_stack_wait_sql(&st, "SELECT human_active FROM conversations", "f", 20000));
    customer_says(4, 5012, QUESTION);
    cr_assert(test_stack_wait_idle(&st, 30000));
    cr_assert_eq(test_stack_count_marked(&st, 4, "tierone_turn", 0), 1);
}

Test(pipeline, the_bots_own_message_private_notes_and_auto_replies_are_ignored)
{
    test_stack_conversation(&st, 5, "pending");
    char *own = test_stack_message(5, 5020, "pending", "outgoing", "agent_bot", "our answer", 0,
                                   "{\"tierone_turn\":\"1:5:5000\"}");
    char *note = test_stack_message(5, 5021, "pending", "outgoing", "user", "internal", 1, NULL);
    char *auto_reply = test_stack_message(5, 5022, "pending", "incoming", "contact",
                                          "I am out of office until Monday", 0,
                                          "{\"email\":{\"auto_reply\":true}}");
    cr_assert_eq(test_stack_post(&st, HOOK, "o1", own), 202);
    cr_assert_eq(test_stack_post(&st, HOOK, "o2", note), 202);
    cr_assert_eq(test_stack_post(&st, HOOK, "o3", auto_reply), 202);
    free(own);
    free(note);
    free(auto_reply);
    cr_assert(test_stack_wait_idle(&st, 20000));
    assert_sql("SELECT count(*) FROM turns", "0");
    assert_sql("SELECT count(*) FROM conversations WHERE human_active", "0");
    cr_assert_eq(cw_requests("POST", "/messages", NULL), 0);
}

Test(pipeline, a_burst_of_three_messages_gets_one_answer_that_reads_them_all)
{
    test_stack_conversation(&st, 6, "pending");
    customer_says(6, 5031, "Hello");
    customer_says(6, 5032, "I forgot my password");
    customer_says(6, 5033, "how do I reset it?");
    cr_assert(test_stack_wait_idle(&st, 30000));
    cr_assert_eq(test_stack_count_marked(&st, 6, "tierone_turn", 0), 1);
    assert_sql("SELECT state FROM turns ORDER BY message_id DESC LIMIT 1", "answered");
    assert_sql("SELECT count(*) FROM turns WHERE state = 'superseded'", "2");
    char *q = sql1("SELECT question FROM turns ORDER BY message_id DESC LIMIT 1");
    cr_assert(q && strstr(q, "Hello") && strstr(q, "forgot") && strstr(q, "reset"), "question: %s",
              q ? q : "NULL");
    free(q);
}

Test(pipeline, an_off_topic_request_goes_to_a_human_with_the_reason)
{
    test_stack_conversation(&st, 7, "pending");
    customer_says(7, 5040, "Can you recommend a good pizza place near the office?");
    cr_assert(test_stack_wait_idle(&st, 30000));
    assert_sql("SELECT state FROM turns", "escalated");
    cr_assert_eq(test_stack_count_marked(&st, 7, "tierone_turn", 0), 0);
    cr_assert_eq(fake_linear_issue_count(st.linear), 0, "not bug-shaped: no Linear issue");
    cr_assert_eq(fake_slack_count(st.slack), 1);
    char *reason = sql1("SELECT decision->>'reason' FROM turns");
    cr_assert(reason && strstr(reason, "threshold"), "reason: %s", reason ? reason : "NULL");
    free(reason);
}

Test(pipeline, chatwoot_429_without_retry_after_waits_out_the_minute_then_replies_once,
     .timeout = 240)
{
    test_stack_conversation(&st, 8, "pending");
    struct fake_fault f = {.status = 429, .body = "Retry later", .content_type = "text/plain"};
    fake_faults_push(fake_chatwoot_faults(st.cw), &f, 1);
    time_t before = time(NULL);
    customer_says(8, 5050, QUESTION);
    cr_assert(
        test_stack_wait_sql(&st, "SELECT count(*) FROM effects WHERE state = 'sent'", "1", 90000),
        "no reply within 90 s");
    time_t after = time(NULL);
    /* rack-attack's fixed window: the retry comes at (or after) the next minute boundary. */
    cr_assert_geq(after, (before / 60 + 1) * 60, "replied at %ld, before the minute ended",
                  (long)after);
    cr_assert(test_stack_wait_idle(&st, 30000));
    cr_assert_eq(test_stack_count_marked(&st, 8, "tierone_turn", 0), 1);
}

/* ---- shadow mode ----------------------------------------------------------------------- */

static void up_shadow(void)
{
    up(0, 1);
}

Test(pipeline_shadow, every_effect_is_recorded_and_nothing_is_sent, .init = up_shadow, .fini = down,
     .timeout = 120)
{
    test_stack_conversation(&st, 1, "pending");
    test_stack_conversation(&st, 2, "pending");
    customer_says(1, 6001, QUESTION);
    customer_says(2, 6002, BUG);
    cr_assert(test_stack_wait_idle(&st, 30000));
    assert_sql("SELECT string_agg(state, ',' ORDER BY message_id) FROM turns",
               "answered,escalated");
    assert_sql("SELECT count(*) FROM effects WHERE state <> 'shadow'", "0");
    char *kinds = sql1("SELECT string_agg(DISTINCT kind, ',' ORDER BY kind) FROM effects");
    cr_assert(kinds && strstr(kinds, "reply") && strstr(kinds, "escalation_note") &&
                  strstr(kinds, "labels") && strstr(kinds, "handoff") && strstr(kinds, "slack") &&
                  strstr(kinds, "linear_issue") && strstr(kinds, "linear_note"),
              "effects: %s", kinds ? kinds : "NULL");
    free(kinds);
    assert_sql("SELECT count(*) > 0 FROM effects WHERE kind = 'reply'"
               " AND payload->>'content' LIKE '%password%'",
               "t");
    cr_assert_eq(cw_requests("POST", "", NULL), 0, "nothing posted to Chatwoot");
    cr_assert_eq(fake_slack_count(st.slack), 0);
    cr_assert_eq(fake_linear_issue_count(st.linear), 0);
}

/* ---- /metrics: the worker's PostgreSQL pool --------------------------------------------- */

static int admin_port;

static void up_metrics(void)
{
    static char port_env[48];
    admin_port = test_port_free();
    snprintf(port_env, sizeof port_env, "TIERONE_ADMIN_PORT=%d", admin_port);
    static const char *env[] = {"TIERONE_ADMIN_HOST=127.0.0.1", port_env, "TIERONE_DATABASE_POOL=3",
                                NULL};
    struct test_stack_opts o = {.redis_db = REDIS_DB, .pg_name = PG_NAME, .env = env};
    test_stack_start(&st, &o);
}

static size_t metrics_append(char *data, size_t size, size_t n, void *arg)
{
    struct buf *b = arg;
    buf_append(b, data, size * n);
    return size * n;
}

/* The worker's /metrics text (caller frees), or NULL when it does not answer. */
static char *metrics_text(void)
{
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/metrics", admin_port);
    struct buf b = {0};
    CURL *c = curl_easy_init();
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, metrics_append);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 5000L);
    long status = 0;
    CURLcode rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(c);
    if (rc != CURLE_OK || status != 200) {
        buf_free(&b);
        return NULL;
    }
    buf_append(&b, "", 1);
    return b.data;
}

/* The value of an unlabeled series in text, or -1 when it is not there. */
static double metric(const char *text, const char *name)
{
    char key[96];
    snprintf(key, sizeof key, "\n%s ", name);
    const char *at = text ? strstr(text, key) : NULL;
    return at ? strtod(at + strlen(key), NULL) : -1;
}

/* /metrics once the worker answers it and every pool connection is idle. */
static char *metrics_when_idle(void)
{
    for (int i = 0; i < 1000; i++) {
        char *t = metrics_text();
        if (t && metric(t, "tierone_db_connections_busy") == 0 &&
            metric(t, "tierone_db_requests_waiting") == 0)
            return t;
        free(t);
        usleep(10000);
    }
    cr_assert_fail("the worker's /metrics never showed an idle pool");
    return NULL;
}

Test(pipeline_metrics, the_database_pool_is_on_the_workers_metrics, .init = up_metrics,
     .fini = down, .timeout = 120)
{
    char *before = metrics_when_idle();
    cr_assert(strstr(before, "# TYPE tierone_db_queries_total counter\n"), "%s", before);
    cr_assert(strstr(before, "# TYPE tierone_db_connections_open gauge\n"), "%s", before);
    double q0 = metric(before, "tierone_db_queries_total");
    cr_assert_geq(q0, 0, "%s", before);

    test_stack_conversation(&st, 1, "pending");
    customer_says(1, 9001, QUESTION);
    cr_assert(test_stack_wait_idle(&st, 30000), "the turn did not end");
    assert_sql("SELECT state FROM turns WHERE conversation_id = 1", "answered");

    char *after = metrics_when_idle();
    /* Each of the turn's four steps (event, retrieve, decide, reply) ran statements. */
    double q1 = metric(after, "tierone_db_queries_total");
    cr_assert_geq(q1 - q0, 4, "queries %.0f -> %.0f", q0, q1);
    double open = metric(after, "tierone_db_connections_open");
    cr_assert(open >= 1 && open <= 3, "open connections %.0f of a pool of 3", open);
    cr_assert_eq(metric(after, "tierone_db_errors_total"), 0, "%s", after);
    cr_assert_geq(metric(after, "tierone_db_pipelined_total"), 0, "%s", after);
    free(before);
    free(after);
}

/* ---- with an LLM ------------------------------------------------------------------------ */

/* The fake model (fake_llm_support_model) escalates what mentions a crash as a bug and
 * answers the rest citing the best passage. */
static void up_llm(void)
{
    up(1, 0);
    fake_llm_set_handler(st.llm, fake_llm_support_model, NULL);
}

TestSuite(pipeline_llm, .init = up_llm, .fini = down, .timeout = 180);

Test(pipeline_llm, the_model_answers_citing_a_passage)
{
    test_stack_conversation(&st, 1, "pending");
    customer_says(1, 7001, QUESTION);
    cr_assert(test_stack_wait_idle(&st, 30000));
    cr_assert_eq(test_stack_count_marked(&st, 1, "tierone_turn", 0), 1);
    assert_sql("SELECT decision->>'by' FROM turns", "llm");
    assert_sql("SELECT state FROM turns", "answered");
    cr_assert_geq(fake_llm_chat_count(st.llm), 1);
}

Test(pipeline_llm, a_conversation_resolved_while_the_model_thinks_gets_no_reply)
{
    test_stack_conversation(&st, 2, "pending");
    struct fake_fault slow = {.delay_ms = 1500, .pass_through = 1};
    fake_faults_push(fake_llm_faults(st.llm), &slow, 1);
    customer_says(2, 7002, QUESTION);
    cr_assert_eq(fake_http_wait(fake_llm_http(st.llm), 1, 20000), 0, "the model was not asked");
    /* An agent resolves it meanwhile: Chatwoot's state and its webhook. */
    fake_chatwoot_add_conversation(st.cw, 1, 2, "resolved", 1, 0);
    char *resolved = test_stack_status_change(2, "resolved");
    cr_assert_eq(test_stack_post(&st, HOOK, "r1", resolved), 202);
    free(resolved);
    cr_assert(test_stack_wait_idle(&st, 30000));
    cr_assert_eq(test_stack_count_marked(&st, 2, "tierone_turn", 0), 0, "no reply");
    assert_sql("SELECT state FROM turns", "dropped");
}

Test(pipeline_llm, the_model_down_means_retries_then_a_fail_safe_hand_off, .timeout = 240)
{
    test_stack_conversation(&st, 3, "pending");
    struct fake_fault down503 = {.status = 503, .body = "{\"error\":{\"message\":\"down\"}}"};
    fake_faults_push(fake_llm_faults(st.llm), &down503, 50);
    customer_says(3, 7003, QUESTION);
    /* TIERONE_AI_RETRIES=1: one retry (Sidekiq's backoff, 15-25 s), then the fail-safe. */
    cr_assert(test_stack_wait_sql(&st, "SELECT state FROM turns", "escalated", 90000),
              "the turn was not handed off");
    cr_assert(test_stack_wait_idle(&st, 30000));
    char *reason = sql1("SELECT decision->>'reason' FROM turns");
    cr_assert(reason && strstr(reason, "assistant unavailable"), "reason: %s",
              reason ? reason : "NULL");
    free(reason);
    assert_sql("SELECT decision->>'by' FROM turns", "failsafe");
    cr_assert_geq(fake_llm_count(st.llm), 2, "the model was asked again before giving up");
    cr_assert_eq(test_stack_count_marked(&st, 3, "tierone_note", 1), 1, "the hand-off note");
    cr_assert_eq(test_stack_count_marked(&st, 3, "tierone_turn", 0), 0);
}
