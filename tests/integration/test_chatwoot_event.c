/* Tierone::ChatwootEvent through the real worker engine: a worker on a loop in this process
 * with the whole pipeline registered (pipeline_init, shadow mode, no Chatwoot or LLM),
 * against the real redis-server (database 4) and a fresh PostgreSQL database. Each test
 * pushes webhook jobs exactly as tierone-ingest wraps them (ingest/shim.h), runs the loop
 * until the worker has finished them (polled, with a deadline), and checks the rows in
 * `conversations` and `turns` and the Retrieve jobs in Redis. Only the `events` queue is
 * worked, so the Retrieve jobs stay where the router put them. */
#include "buf.h"
#include "clock.h"
#include "engine.h"
#include "log.h"
#include "pipeline.h"
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

#define DB          4
#define DEBOUNCE_MS 60000

/* Inbox 4 has the bot off, inbox 5 serves open conversations too, inbox 7 has no debounce. */
static const char INBOXES[] = "{\"inboxes\": {\"4\": {\"enabled\": false},"
                              " \"5\": {\"statuses\": [\"pending\", \"open\"]},"
                              " \"7\": {\"debounce_ms\": 0}}}";

struct harness {
    uv_loop_t loop;
    struct worker w;
    struct worker_settings cfg;
    struct pipeline p;
    struct pipeline_settings ps;
    char inbox_path[256];
    redisContext *rc;
    PGconn *pg;
    long long pushed;
};

/* ---- harness ----------------------------------------------------------------------------- */

static void h_start(struct harness *h)
{
    memset(h, 0, sizeof *h);
    log_init("test", LOG_WARN);
    h->rc = test_redis_connect(DB);
    h->ps.database_url = xstrdup(test_pg_fresh("tierone_test_router"));
    h->pg = test_pg_connect(h->ps.database_url);
    h->ps.database_prepare = 1; /* the default of TIERONE_DATABASE_PREPARE */
    snprintf(h->inbox_path, sizeof h->inbox_path, "/tmp/tierone_test_router_%d.json",
             (int)getpid());
    FILE *f = fopen(h->inbox_path, "w");
    cr_assert_not_null(f);
    fputs(INBOXES, f);
    fclose(f);
    h->ps.database_pool = 2;
    h->ps.shadow = 1;
    h->ps.debounce_ms = DEBOUNCE_MS;
    h->ps.ai_retries = 3;
    h->ps.inbox_config_path = h->inbox_path;

    h->cfg.redis_url = xstrdup(test_redis_url(DB));
    h->cfg.queues = xstrdup("events");
    h->cfg.concurrency = 1; /* one job at a time: the pushes run in order */
    h->cfg.shutdown_timeout_ms = 500;
    h->cfg.timestamp_format = JOB_TS_FLOAT_SECONDS;
    h->cfg.max_retries = 25;
    h->cfg.dead_max_jobs = 10000;
    h->cfg.dead_timeout_s = 180 * 24 * 3600;
    h->cfg.poll_interval_ms = 100;
    h->cfg.beat_interval_ms = 100;
    h->cfg.lease_ttl_s = 1;
    h->cfg.recovery_interval_ms = 200;
    h->cfg.max_recoveries = 3;
    h->cfg.fetch_idle_max_ms = 10;
    h->cfg.tag = xstrdup("test");

    uv_loop_init(&h->loop);
    char err[256];
    cr_assert_eq(worker_init(&h->w, &h->loop, &h->cfg, err, sizeof err), 0, "%s", err);
    cr_assert_eq(pipeline_init(&h->p, &h->w, &h->ps, err, sizeof err), 0, "%s", err);
    worker_start(&h->w);
}

/* Stop gracefully (the worker closes the pipeline) and check that every handle closes. */
static void h_stop(struct harness *h)
{
    worker_stop(&h->w);
    uv_run(&h->loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&h->loop), 0, "handles left open after the worker stopped");
    worker_free(&h->w);
    unlink(h->inbox_path);
    free(h->cfg.redis_url);
    free(h->cfg.queues);
    free(h->cfg.tag);
    free(h->ps.database_url);
    redisFree(h->rc);
    PQfinish(h->pg);
}

static int h_done(void *arg)
{
    struct harness *h = arg;
    return h->w.total_processed >= h->pushed && h->w.out_count == 0 && h->w.out_in_flight == 0;
}

/* Run the loop until every pushed job has finished and its outcome reached Redis. */
static void h_drain(struct harness *h)
{
    cr_assert(test_loop_until(&h->loop, h_done, h, 10000),
              "the worker did not finish %lld jobs (%lld done)", h->pushed, h->w.total_processed);
}

/* Push one ChatwootEvent job whose args are args_json (raw JSON text). */
static void h_push_args(struct harness *h, const char *args_json)
{
    struct buf job = BUF_INIT;
    buf_printf(&job,
               "{\"retry\":true,\"queue\":\"events\",\"class\":\"Tierone::ChatwootEvent\","
               "\"args\":%s,\"jid\":\"%024lld\",\"created_at\":1780308000.5,"
               "\"enqueued_at\":1780308000.5}",
               args_json, ++h->pushed);
    freeReplyObject(test_redis_cmd(h->rc, "SADD queues events"));
    freeReplyObject(test_redis_cmd(h->rc, "LPUSH queue:events %b", job.data, job.len));
    buf_free(&job);
}

/* Push body the way the shim wraps a webhook that came in on path, and wait for it. */
static void h_deliver_body(struct harness *h, const char *body, size_t len, const char *path)
{
    struct buf args = BUF_INIT;
    buf_puts(&args, "[{\"body\":");
    buf_json_string(&args, body, len);
    buf_printf(&args,
               ",\"delivery\":\"5d2c1c9e-%012lld\",\"timestamp\":1780308000,\"path\":\"%s\","
               "\"received_at\":%.6f}]",
               h->pushed + 1, path, clock_wall_s());
    h_push_args(h, args.data);
    buf_free(&args);
    h_drain(h);
}

/* s with every `from` replaced by `to` (new string). */
static char *replace(const char *s, const char *from, const char *to)
{
    struct buf out = BUF_INIT;
    for (const char *hit; (hit = strstr(s, from)); s = hit + strlen(from)) {
        buf_append(&out, s, (size_t)(hit - s));
        buf_puts(&out, to);
    }
    buf_puts(&out, s);
    return buf_steal(&out);
}

/* The text of tests/fixtures/webhooks/<name>.json with each pair of strings in edits
 * (from, to, ..., NULL) replaced everywhere. Caller frees. */
static char *fixture(const char *name, const char *const *edits)
{
    const char *root = getenv("TIERONE_SOURCE_DIR");
    char file[4096];
    snprintf(file, sizeof file, "%s/tests/fixtures/webhooks/%s.json", root ? root : ".", name);
    struct buf b = BUF_INIT;
    cr_assert_eq(buf_read_file(&b, file), 0, "cannot read %s", file);
    char *text = buf_steal(&b);
    for (; edits && edits[0]; edits += 2) {
        char *next = replace(text, edits[0], edits[1]);
        free(text);
        text = next;
    }
    return text;
}

/* Deliver fixture name (edited) on the agent-bot path. */
static void h_deliver_edited(struct harness *h, const char *name, const char *const *edits)
{
    char *body = fixture(name, edits);
    h_deliver_body(h, body, strlen(body), "agent-bot");
    free(body);
}

static void h_deliver(struct harness *h, const char *name, const char *from, const char *to)
{
    const char *const edits[] = {from, to, NULL};
    h_deliver_edited(h, name, from ? edits : NULL);
}

#define INBOX3  "\"id\":3,\"name\":\"Website\""
#define PENDING "\"status\":\"pending\""

/* An integer from SQL (0 for NULL). */
static long long sql_int(struct harness *h, const char *sql)
{
    char *v = test_pg_value(h->pg, sql);
    long long n = v ? strtoll(v, NULL, 10) : 0;
    free(v);
    return n;
}

/* A string from SQL; asserts it equals want (NULL: SQL NULL or no row). */
static void sql_is(struct harness *h, const char *sql, const char *want)
{
    char *v = test_pg_value(h->pg, sql);
    if (want)
        cr_assert(v && strcmp(v, want) == 0, "%s: got %s, want %s", sql, v ? v : "NULL", want);
    else
        cr_assert_null(v, "%s: got %s, want NULL", sql, v);
    free(v);
}

/* The scheduled jobs (members of `schedule`) as JSON, with their scores. */
static size_t scheduled(struct harness *h, json_t **jobs, double *scores, size_t cap)
{
    redisReply *r = test_redis_cmd(h->rc, "ZRANGE schedule 0 -1 WITHSCORES");
    size_t n = 0;
    for (size_t i = 0; i + 1 < r->elements && n < cap; i += 2, n++) {
        jobs[n] = json_loads(r->element[i]->str, 0, NULL);
        cr_assert_not_null(jobs[n]);
        scores[n] = strtod(r->element[i + 1]->str, NULL);
    }
    freeReplyObject(r);
    return n;
}

/* Nothing failed: no retry, no dead job. */
static void assert_no_failures(struct harness *h)
{
    cr_assert_eq(test_redis_int(h->rc, "ZCARD retry"), 0);
    cr_assert_eq(test_redis_int(h->rc, "ZCARD dead"), 0);
    cr_assert_eq(h->w.total_failed, 0);
}

/* ---- tests ------------------------------------------------------------------------------ */

Test(chatwoot_event, incoming_message_opens_a_turn_and_schedules_retrieve)
{
    struct harness h;
    h_start(&h);
    double before = clock_wall_s();
    h_deliver(&h, "incoming_widget", NULL, NULL);
    double after = clock_wall_s();
    assert_no_failures(&h);

    cr_assert_eq(sql_int(&h, "SELECT count(*) FROM turns"), 1);
    long long turn = sql_int(&h, "SELECT id FROM turns");
    sql_is(&h,
           "SELECT concat_ws('|', account_id, conversation_id, message_id, inbox_id, channel,"
           " state) FROM turns",
           "1|12|4211|3|Channel::WebWidget|open");
    sql_is(&h, "SELECT content FROM turns",
           "Hi! Where is my <b>invoice</b> & the receipt for order #12 > #11?");
    sql_is(&h, "SELECT contact->>'name' FROM turns", "Ann Baker");
    sql_is(&h, "SELECT contact->'custom_attributes'->>'plan' FROM turns", "pro");
    cr_assert_eq(sql_int(&h, "SELECT count(*) FROM turns WHERE received_at > now() - interval "
                             "'1 minute'"),
                 1, "received_at from the shim's received_at");
    sql_is(&h,
           "SELECT concat_ws('|', account_id, conversation_id, inbox_id, status, human_active)"
           " FROM conversations",
           "1|12|3|pending|f");

    json_t *jobs[4];
    double scores[4];
    cr_assert_eq(scheduled(&h, jobs, scores, 4), 1, "one Retrieve scheduled");
    cr_assert_str_eq(json_string_value(json_object_get(jobs[0], "class")), "Tierone::Retrieve");
    cr_assert_str_eq(json_string_value(json_object_get(jobs[0], "queue")), "ai");
    json_t *args = json_object_get(jobs[0], "args");
    cr_assert_eq(json_array_size(args), 1);
    cr_assert_eq(json_integer_value(json_array_get(args, 0)), turn, "args [turn_id]");
    cr_assert(scores[0] >= before + DEBOUNCE_MS / 1000.0 - 0.001 &&
                  scores[0] <= after + DEBOUNCE_MS / 1000.0 + 0.001,
              "score %.3f is now + debounce (%.3f..%.3f)", scores[0], before + DEBOUNCE_MS / 1000.0,
              after + DEBOUNCE_MS / 1000.0);
    json_decref(jobs[0]);
    cr_assert_eq(test_redis_int(h.rc, "LLEN queue:ai"), 0, "debounced, not queued");
    h_stop(&h);
}

Test(chatwoot_event, repeat_delivery_finds_the_same_turn)
{
    struct harness h;
    h_start(&h);
    h_deliver(&h, "incoming_widget", NULL, NULL);
    long long turn = sql_int(&h, "SELECT id FROM turns");
    /* The same event again: an Agent Bot retry, or the same URL configured twice. */
    char *body = fixture("incoming_widget", NULL);
    h_deliver_body(&h, body, strlen(body), "chatwoot");
    free(body);
    assert_no_failures(&h);
    cr_assert_eq(sql_int(&h, "SELECT count(*) FROM turns"), 1, "no second turn");
    cr_assert_eq(sql_int(&h, "SELECT count(*) FROM conversations"), 1);
    /* Another delivery schedules nothing: the job that opened the turn owns its chain. */
    cr_assert_eq(test_redis_int(h.rc, "ZCARD schedule"), 1, "one Retrieve only");
    /* The opening job's own re-run (it crashed before queueing Retrieve) schedules again:
     * make the next job look like the one that opened the turn. */
    char sql[160];
    snprintf(sql, sizeof sql, "UPDATE turns SET opened_by = '%024lld'", h.pushed + 1);
    test_pg_exec(h.pg, sql);
    h_deliver(&h, "incoming_widget", NULL, NULL);
    json_t *jobs[4];
    double scores[4];
    size_t n = scheduled(&h, jobs, scores, 4);
    cr_assert_eq(n, 2);
    for (size_t i = 0; i < n; i++) {
        cr_assert_eq(json_integer_value(json_array_get(json_object_get(jobs[i], "args"), 0)), turn);
        json_decref(jobs[i]);
    }
    /* A finished turn is not scheduled again. */
    test_pg_exec(h.pg, "UPDATE turns SET state = 'answered'");
    h_deliver(&h, "incoming_widget", NULL, NULL);
    cr_assert_eq(test_redis_int(h.rc, "ZCARD schedule"), 2);
    cr_assert_eq(sql_int(&h, "SELECT count(*) FROM turns"), 1);
    h_stop(&h);
}

Test(chatwoot_event, human_reply_silences_the_bot_until_pending)
{
    struct harness h;
    h_start(&h);
    h_deliver(&h, "human_reply", NULL, NULL);
    sql_is(&h, "SELECT concat_ws('|', status, human_active, human_reason) FROM conversations",
           "pending|t|human replied");
    h_deliver(&h, "incoming_widget", NULL, NULL);
    cr_assert_eq(sql_int(&h, "SELECT count(*) FROM turns"), 0, "a human is on it");
    cr_assert_eq(test_redis_int(h.rc, "ZCARD schedule"), 0);

    /* open and snoozed do not give it back; pending does */
    h_deliver(&h, "conversation_opened", NULL, NULL);
    sql_is(&h, "SELECT concat_ws('|', status, human_active) FROM conversations", "open|t");
    h_deliver(&h, "status_changed_pending", NULL, NULL);
    sql_is(&h, "SELECT concat_ws('|', status, human_active) FROM conversations", "pending|f");
    cr_assert_null(test_pg_value(h.pg, "SELECT human_reason FROM conversations"));
    h_deliver(&h, "incoming_widget", "4211", "4230");
    cr_assert_eq(sql_int(&h, "SELECT count(*) FROM turns"), 1);
    cr_assert_eq(sql_int(&h, "SELECT message_id FROM turns"), 4230);
    cr_assert_eq(test_redis_int(h.rc, "ZCARD schedule"), 1);
    assert_no_failures(&h);
    h_stop(&h);
}

Test(chatwoot_event, external_echo_and_assignment_are_a_human_taking_over)
{
    struct harness h;
    h_start(&h);
    h_deliver(&h, "external_echo", NULL, NULL);
    sql_is(&h,
           "SELECT concat_ws('|', inbox_id, human_active, human_reason) FROM conversations"
           " WHERE conversation_id = 12",
           "6|t|human replied from the native app");
    test_pg_exec(h.pg, "DELETE FROM conversations");
    h_deliver(&h, "assigned_user", NULL, NULL);
    sql_is(&h, "SELECT concat_ws('|', status, human_active, human_reason) FROM conversations",
           "open|t|assigned to Sam Agent");
    /* resolving ends the cycle */
    h_deliver(&h, "status_updated_resolved", NULL, NULL);
    sql_is(&h, "SELECT concat_ws('|', status, human_active) FROM conversations", "resolved|f");
    /* an assignment that opens a pending conversation is both facts */
    h_deliver(&h, "assigned_user_opening_pending", NULL, NULL);
    sql_is(&h, "SELECT concat_ws('|', status, human_active, human_reason) FROM conversations",
           "open|t|assigned to Sam Agent");
    assert_no_failures(&h);
    h_stop(&h);
}

Test(chatwoot_event, three_deliveries_of_one_status_change_are_one_fact)
{
    struct harness h;
    h_start(&h);
    h_deliver(&h, "status_changed_resolved", NULL, NULL);
    h_deliver(&h, "status_updated_resolved", NULL, NULL);
    h_deliver(&h, "conversation_resolved", NULL, NULL);
    assert_no_failures(&h);
    cr_assert_eq(sql_int(&h, "SELECT count(*) FROM conversations"), 1);
    sql_is(&h,
           "SELECT concat_ws('|', account_id, conversation_id, inbox_id, status, human_active)"
           " FROM conversations",
           "1|12|3|resolved|f");
    /* a message in a resolved conversation is not served (Chatwoot would have reopened it
     * as pending, and said so in the payload) */
    h_deliver(&h, "incoming_widget", PENDING, "\"status\":\"resolved\"");
    cr_assert_eq(sql_int(&h, "SELECT count(*) FROM turns"), 0);
    h_deliver(&h, "incoming_widget", NULL, NULL);
    cr_assert_eq(sql_int(&h, "SELECT count(*) FROM turns"), 1, "reopened as pending: served");
    h_stop(&h);
}

Test(chatwoot_event, what_the_bot_ignores_leaves_no_trace)
{
    static const char *const names[] = {
        "bot_echo",
        "bot_echo_no_marker",
        "our_reply_user_token",
        "private_note",
        "our_private_note",
        "template",
        "activity",
        "captain_reply",
        "email_auto_reply",
        "updated_noise_waiting_since",
        "updated_noise_first_reply",
        "updated_labels",
        "unassigned",
        "conversation_created",
        "message_updated",
        "contact_updated",
        "webwidget_triggered",
        "typing_on",
        "unknown_event",
        "incoming_attachment_only",
    };
    struct harness h;
    h_start(&h);
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        h_deliver(&h, names[i], NULL, NULL);
    assert_no_failures(&h);
    cr_assert_eq(sql_int(&h, "SELECT count(*) FROM turns"), 0);
    cr_assert_eq(sql_int(&h, "SELECT count(*) FROM conversations"), 0);
    cr_assert_eq(test_redis_int(h.rc, "ZCARD schedule"), 0);
    cr_assert_eq(test_redis_int(h.rc, "LLEN queue:ai"), 0);
    h_stop(&h);
}

Test(chatwoot_event, inbox_settings_decide)
{
    struct harness h;
    h_start(&h);
    /* inbox 4: the bot is off (the e-mail fixture lives there) */
    h_deliver(&h, "incoming_email", NULL, NULL);
    cr_assert_eq(sql_int(&h, "SELECT count(*) FROM turns"), 0);
    cr_assert_eq(sql_int(&h, "SELECT count(*) FROM conversations"), 0, "no SQL at all");
    /* inbox 3 serves pending only; inbox 5 serves open too */
    h_deliver(&h, "incoming_widget", PENDING, "\"status\":\"open\"");
    cr_assert_eq(sql_int(&h, "SELECT count(*) FROM turns"), 0);
    sql_is(&h, "SELECT status FROM conversations", "open");
    const char *const five[] = {PENDING, "\"status\":\"open\"", INBOX3,
                                "\"id\":5,\"name\":\"Website\"", NULL};
    h_deliver_edited(&h, "incoming_widget", five);
    cr_assert_eq(sql_int(&h, "SELECT count(*) FROM turns"), 1, "inbox 5 serves open");
    sql_is(&h, "SELECT inbox_id FROM turns", "5");
    /* inbox 7: no debounce, Retrieve goes straight to its queue */
    const char *const seven[] = {INBOX3, "\"id\":7,\"name\":\"Web\"", "4211", "4240", NULL};
    h_deliver_edited(&h, "incoming_widget", seven);
    sql_is(&h, "SELECT concat_ws('|', inbox_id, message_id) FROM turns WHERE inbox_id = 7",
           "7|4240");
    cr_assert_eq(test_redis_int(h.rc, "LLEN queue:ai"), 1);
    char *job = test_redis_str(h.rc, "LINDEX queue:ai 0");
    json_t *j = json_loads(job, 0, NULL);
    cr_assert_str_eq(json_string_value(json_object_get(j, "class")), "Tierone::Retrieve");
    cr_assert_eq(json_integer_value(json_array_get(json_object_get(j, "args"), 0)),
                 sql_int(&h, "SELECT id FROM turns WHERE inbox_id = 7"));
    json_decref(j);
    free(job);
    assert_no_failures(&h);
    h_stop(&h);
}

Test(chatwoot_event, email_turn_holds_only_the_new_part)
{
    struct harness h;
    h_start(&h);
    /* the same e-mail in inbox 8 (bot on) */
    h_deliver(&h, "incoming_email", "\"id\":4,\"name\":\"Support mail\"",
              "\"id\":8,\"name\":\"Support mail\"");
    assert_no_failures(&h);
    sql_is(&h, "SELECT content FROM turns", "Thanks, but the export still fails with error E42.");
    sql_is(&h, "SELECT channel FROM turns", "Channel::Email");
    h_stop(&h);
}

Test(chatwoot_event, bad_input_goes_to_the_dead_set)
{
    struct harness h;
    h_start(&h);
    const char *bodies[] = {"<html>502 Bad Gateway</html>",
                            "{\"event\":\"message_created\",\"id\":1,\"message_type\":"
                            "\"incoming\",\"content\":\"hi\",\"account\":{\"id\":1}}"};
    for (size_t i = 0; i < 2; i++)
        h_deliver_body(&h, bodies[i], strlen(bodies[i]), "chatwoot");
    h_push_args(&h, "[\"not an object\"]");
    h_push_args(&h, "[{\"delivery\":\"x\"}]");
    h_drain(&h);
    cr_assert_eq(test_redis_int(h.rc, "ZCARD dead"), 4);
    cr_assert_eq(test_redis_int(h.rc, "ZCARD retry"), 0, "permanent: no retry");
    redisReply *r = test_redis_cmd(h.rc, "ZRANGE dead 0 -1");
    int bad = 0, argument = 0;
    for (size_t i = 0; i < r->elements; i++) {
        json_t *j = json_loads(r->element[i]->str, 0, NULL);
        const char *cls = json_string_value(json_object_get(j, "error_class"));
        const char *msg = json_string_value(json_object_get(j, "error_message"));
        if (strcmp(cls, "Tierone::BadWebhook") == 0) {
            bad++;
            cr_assert(strstr(msg, "not JSON") || strstr(msg, "without a conversation id"), "%s",
                      msg);
            cr_assert(strstr(msg, "(delivery 5d2c1c9e-"), "%s", msg);
        } else {
            cr_assert_str_eq(cls, "ArgumentError");
            argument++;
        }
        json_decref(j);
    }
    freeReplyObject(r);
    cr_assert_eq(bad, 2);
    cr_assert_eq(argument, 2);
    cr_assert_eq(sql_int(&h, "SELECT count(*) FROM turns"), 0);
    h_stop(&h);
}
