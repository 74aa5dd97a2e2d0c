/* The outward steps of the support pipeline (Reply, Escalate, LinearIssue, PrivateNote)
 * through a real worker on a loop in this process: real Redis (database 7), a fresh
 * migrated PostgreSQL database (tierone_test_actions), and the fake Chatwoot, Slack and
 * Linear. Each test seeds conversations and turns with SQL, pushes jobs with the sync
 * client, runs the loop until a condition holds (polled, with a deadline), then stops the
 * worker and checks that every handle closed. */
#include "clock.h"
#include "engine.h"
#include "fake_chatwoot.h"
#include "fake_linear.h"
#include "fake_slack.h"
#include "linear.h"
#include "log.h"
#include "pipeline.h"
#include "sidekiq_client.h"
#include "test_loop.h"
#include "test_pg.h"
#include "test_redis.h"
#include "xalloc.h"

#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DB      7
#define PG_NAME "tierone_test_actions"
#define ACCOUNT 1
#define INBOX   3
#define WAIT_MS 10000

struct h {
    uv_loop_t loop;
    struct worker w;
    struct worker_settings wcfg;
    struct pipeline p;
    struct pipeline_settings pcfg;
    redisContext *rc;
    PGconn *pg;
    struct fake_chatwoot *cw;
    struct fake_slack *slack;
    struct fake_linear *linear;
    char inbox_path[128];
};

struct h_opts {
    int shadow;
    int no_user_token;
    const char *inbox_json; /* inbox config file contents; NULL: none */
};

/* ---- harness --------------------------------------------------------------------------- */

static void h_init(struct h *h, const struct h_opts *o)
{
    memset(h, 0, sizeof *h);
    log_init("test", LOG_ERROR);
    h->rc = test_redis_connect(DB);
    const char *url = test_pg_fresh(PG_NAME);
    h->pcfg.database_url = xstrdup(url);
    h->pcfg.database_prepare = 1; /* the default of TIERONE_DATABASE_PREPARE */
    h->pg = test_pg_connect(url);
    h->cw = fake_chatwoot_start(NULL);
    h->slack = fake_slack_start(NULL);
    h->linear = fake_linear_start(NULL);
    cr_assert(h->cw && h->slack && h->linear, "fakes start");

    h->wcfg.redis_url = xstrdup(test_redis_url(DB));
    h->wcfg.queues = xstrdup("actions,linear");
    h->wcfg.concurrency = 4;
    h->wcfg.shutdown_timeout_ms = 500;
    h->wcfg.timestamp_format = JOB_TS_FLOAT_SECONDS;
    h->wcfg.max_retries = 25;
    h->wcfg.dead_max_jobs = 10000;
    h->wcfg.dead_timeout_s = 180 * 24 * 3600;
    h->wcfg.poll_interval_ms = 100;
    h->wcfg.beat_interval_ms = 100;
    h->wcfg.lease_ttl_s = 5;
    h->wcfg.recovery_interval_ms = 1000;
    h->wcfg.max_recoveries = 3;
    h->wcfg.fetch_idle_max_ms = 10;
    h->wcfg.tag = xstrdup("test");

    struct pipeline_settings *c = &h->pcfg;
    c->database_pool = 2;
    c->chatwoot_base_url = xstrdup(fake_chatwoot_url(h->cw));
    c->chatwoot_bot_token = xstrdup("bot-token");
    c->chatwoot_user_token = o && o->no_user_token ? NULL : xstrdup("user-token");
    c->slack_webhook_url = xstrdup(fake_slack_webhook_url(h->slack));
    c->linear_api_key = xstrdup("lin_api_fake");
    c->linear_team_id = xstrdup("team-fake");
    c->linear_api_url = xstrdup(fake_linear_api_url(h->linear));
    c->shadow = o ? o->shadow : 0;
    c->ai_retries = 3;
    if (o && o->inbox_json) {
        snprintf(h->inbox_path, sizeof h->inbox_path, "/tmp/tierone-test-actions-%d.json",
                 (int)getpid());
        FILE *f = fopen(h->inbox_path, "w");
        cr_assert_not_null(f);
        fputs(o->inbox_json, f);
        fclose(f);
        c->inbox_config_path = xstrdup(h->inbox_path);
    }
}

static void h_start(struct h *h)
{
    uv_loop_init(&h->loop);
    char err[256];
    cr_assert_eq(worker_init(&h->w, &h->loop, &h->wcfg, err, sizeof err), 0, "%s", err);
    cr_assert_eq(pipeline_init(&h->p, &h->w, &h->pcfg, err, sizeof err), 0, "%s", err);
    cr_assert_eq(worker_start(&h->w), 0);
}

static void h_stop(struct h *h)
{
    worker_stop(&h->w);
    uv_run(&h->loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&h->loop), 0, "handles left open after the worker stopped");
    worker_free(&h->w);
}

static void h_free(struct h *h)
{
    fake_chatwoot_free(h->cw);
    fake_slack_free(h->slack);
    fake_linear_free(h->linear);
    redisFree(h->rc);
    PQfinish(h->pg);
    free(h->wcfg.redis_url);
    free(h->wcfg.queues);
    free(h->wcfg.tag);
    struct pipeline_settings *c = &h->pcfg;
    free(c->database_url);
    free(c->chatwoot_base_url);
    free(c->chatwoot_bot_token);
    free(c->chatwoot_user_token);
    free(c->slack_webhook_url);
    free(c->linear_api_key);
    free(c->linear_team_id);
    free(c->linear_api_url);
    free(c->inbox_config_path);
    if (h->inbox_path[0])
        unlink(h->inbox_path);
}

/* ---- seeding and reading --------------------------------------------------------------- */

static char *sqlv(struct h *h, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static char *sqlv(struct h *h, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *sql = NULL;
    cr_assert(vasprintf(&sql, fmt, ap) >= 0);
    va_end(ap);
    char *v = test_pg_value(h->pg, sql);
    free(sql);
    return v;
}

static long long sql_int(struct h *h, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static long long sql_int(struct h *h, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *sql = NULL;
    cr_assert(vasprintf(&sql, fmt, ap) >= 0);
    va_end(ap);
    char *v = test_pg_value(h->pg, sql);
    free(sql);
    long long n = v ? strtoll(v, NULL, 10) : -1;
    free(v);
    return n;
}

/* A conversation in the ledger and in the fake Chatwoot (with a contact), and the
 * customer's message in it. Returns the message id. */
static long seed_conversation(struct h *h, long conv, const char *ledger_status,
                              const char *chatwoot_status, int human_active, const char *words)
{
    long contact = fake_chatwoot_add_contact(
        h->cw, ACCOUNT,
        "{\"name\":\"Alice Doe\",\"email\":\"alice@example.com\",\"identifier\":\"u-42\"}");
    fake_chatwoot_add_conversation(h->cw, ACCOUNT, conv, chatwoot_status, INBOX, contact);
    long msg = fake_chatwoot_add_message(h->cw, ACCOUNT, conv, 0, words, 0);
    cr_assert_gt(msg, 0);
    free(sqlv(h,
              "INSERT INTO conversations (account_id, conversation_id, inbox_id, status, "
              "human_active) VALUES (%d, %ld, %d, '%s', %s) RETURNING 1",
              ACCOUNT, conv, INBOX, ledger_status, human_active ? "true" : "false"));
    return msg;
}

/* A turn for message msg with decision (JSON text without single quotes). */
static long long seed_turn(struct h *h, long conv, long msg, const char *words,
                           const char *decision)
{
    return sql_int(h,
                   "INSERT INTO turns (account_id, conversation_id, message_id, inbox_id, channel, "
                   "contact, content, decision) VALUES (%d, %ld, %ld, %d, 'Channel::WebWidget', "
                   "'{\"name\":\"Alice Doe\",\"email\":\"alice@example.com\",\"identifier\":"
                   "\"u-42\"}', '%s', '%s') RETURNING id",
                   ACCOUNT, conv, msg, INBOX, words, decision);
}

static void push(struct h *h, const char *klass, const char *queue, long long turn)
{
    char args[32], jid[SIDEKIQ_JID_SIZE], err[256];
    snprintf(args, sizeof args, "[%lld]", turn);
    struct sidekiq_job_spec spec = {.klass = klass, .queue = queue, .args = args};
    cr_assert_eq(sidekiq_push_sync(h->rc, NULL, &spec, jid, err, sizeof err), 0, "%s", err);
}

/* ---- waiting --------------------------------------------------------------------------- */

struct sql_cond {
    struct h *h;
    const char *sql;
    const char *want;
};

static int cond_sql(void *arg)
{
    struct sql_cond *c = arg;
    char *v = test_pg_value(c->h->pg, c->sql);
    int ok = v && strcmp(v, c->want) == 0;
    free(v);
    return ok;
}

/* Run the worker until sql's first value is want. */
static int wait_sql(struct h *h, const char *want, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int wait_sql(struct h *h, const char *want, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *sql = NULL;
    cr_assert(vasprintf(&sql, fmt, ap) >= 0);
    va_end(ap);
    struct sql_cond c = {h, sql, want};
    int ok = test_loop_until(&h->loop, cond_sql, &c, WAIT_MS);
    free(sql);
    return ok;
}

struct idle_cond {
    struct h *h;
    long long processed;
};

static int cond_idle(void *arg)
{
    struct idle_cond *c = arg;
    struct worker *w = &c->h->w;
    return w->total_processed >= c->processed && w->busy == 0 && w->out_count == 0 &&
           !w->out_in_flight && test_redis_int(c->h->rc, "LLEN queue:actions") == 0 &&
           test_redis_int(c->h->rc, "LLEN queue:linear") == 0;
}

/* Run until the worker has processed `processed` jobs in all and has nothing to do. */
static int wait_idle(struct h *h, long long processed)
{
    struct idle_cond c = {h, processed};
    return test_loop_until(&h->loop, cond_idle, &c, WAIT_MS);
}

static int cond_retry(void *arg)
{
    struct h *h = arg;
    return test_redis_int(h->rc, "ZCARD retry") >= 1;
}

/* Messages of a conversation in the fake whose content_attributes[key] == value. */
static size_t count_marked(struct h *h, long conv, const char *key, const char *value)
{
    json_t *msgs = fake_chatwoot_messages(h->cw, ACCOUNT, conv);
    size_t i, n = 0;
    json_t *m;
    json_array_foreach(msgs, i, m)
    {
        const char *v =
            json_string_value(json_object_get(json_object_get(m, "content_attributes"), key));
        if (v && !strcmp(v, value))
            n++;
    }
    json_decref(msgs);
    return n;
}

/* Messages of a conversation in the fake sent by the bot (outgoing). */
static size_t count_outgoing(struct h *h, long conv)
{
    json_t *msgs = fake_chatwoot_messages(h->cw, ACCOUNT, conv);
    size_t i, n = 0;
    json_t *m;
    json_array_foreach(msgs, i, m) if (json_integer_value(json_object_get(m, "message_type")) == 1)
        n++;
    json_decref(msgs);
    return n;
}

#define ANSWER_DECISION                                                                            \
    "{\"action\":\"answer\",\"answer\":\"Reset it under Settings > Password.\",\"reason\":"        \
    "\"documented\",\"category\":\"question\",\"passage_ids\":[1],\"by\":\"llm\"}"

#define BUG_DECISION                                                                               \
    "{\"action\":\"escalate\",\"answer\":\"\",\"reason\":\"the export crashes\",\"category\":"     \
    "\"bug\",\"passage_ids\":[],\"by\":\"llm\"}"

/* ---- Reply ----------------------------------------------------------------------------- */

/* Conversation 10, pending, with one customer message (words) and an open turn for it that
 * decided to answer. Returns the turn; *msg (may be NULL) gets the message id. */
static long long seed_answer_turn(struct h *h, const char *words, long *msg)
{
    long m = seed_conversation(h, 10, "pending", "pending", 0, words);
    if (msg)
        *msg = m;
    return seed_turn(h, 10, m, words, ANSWER_DECISION);
}

Test(action_steps, answer_posted_once_with_marker)
{
    struct h h;
    h_init(&h, NULL);
    long msg;
    long long turn = seed_answer_turn(&h, "How do I reset my password?", &msg);
    h_start(&h);
    push(&h, PIPELINE_REPLY, "actions", turn);
    cr_assert(wait_sql(&h, "answered", "SELECT state FROM turns WHERE id = %lld", turn));
    push(&h, PIPELINE_REPLY, "actions", turn); /* a second run finds the turn finished */
    cr_assert(wait_idle(&h, 2));
    h_stop(&h);

    char key[64];
    snprintf(key, sizeof key, "%d:10:%ld", ACCOUNT, msg);
    cr_assert_eq(count_outgoing(&h, 10), 1, "exactly one reply");
    cr_assert_eq(count_marked(&h, 10, "tierone_turn", key), 1, "the reply carries the marker");
    json_t *msgs = fake_chatwoot_messages(h.cw, ACCOUNT, 10);
    json_t *last = json_array_get(msgs, json_array_size(msgs) - 1);
    cr_assert_str_eq(json_string_value(json_object_get(last, "content")),
                     "Reset it under Settings > Password.");
    cr_assert(json_is_false(json_object_get(last, "private")));
    long long posted = json_integer_value(json_object_get(last, "id"));
    json_decref(msgs);
    char *state =
        sqlv(&h, "SELECT state FROM effects WHERE turn_id = %lld AND kind = 'reply'", turn);
    cr_assert_str_eq(state, "sent");
    free(state);
    cr_assert_eq(sql_int(&h,
                         "SELECT (result->>'message_id')::bigint FROM effects WHERE turn_id = "
                         "%lld AND kind = 'reply'",
                         turn),
                 posted);
    /* The bot token posted it (the bot is the sender). */
    struct fake_http *fh = fake_chatwoot_http(h.cw);
    int posts = 0;
    for (size_t i = 0; i < fake_http_count(fh); i++) {
        const struct fake_http_request *r = fake_http_request_at(fh, i);
        if (!strcmp(r->method, "POST") && strstr(r->path, "/messages")) {
            posts++;
            cr_assert_str_eq(fake_http_request_header(r, "api_access_token"), "bot-token");
        }
    }
    cr_assert_eq(posts, 1);
    h_free(&h);
}

/* An earlier attempt posted, then lost its outcome (the effect stayed pending): the retry
 * finds the marker with the user token and does not post again. */
Test(action_steps, pending_reply_finds_its_marker)
{
    struct h h;
    h_init(&h, NULL);
    long long turn = seed_answer_turn(&h, "Where is my invoice?", NULL);
    h_start(&h);
    push(&h, PIPELINE_REPLY, "actions", turn);
    cr_assert(wait_sql(&h, "answered", "SELECT state FROM turns WHERE id = %lld", turn));
    /* Roll back to "posted, outcome unknown". */
    free(sqlv(&h,
              "UPDATE effects SET state = 'pending', result = NULL, claimed_at = now() - "
              "interval '1 minute' WHERE turn_id = %lld AND kind = 'reply' RETURNING 1",
              turn));
    free(sqlv(&h, "UPDATE turns SET state = 'open', finished_at = NULL WHERE id = %lld RETURNING 1",
              turn));
    push(&h, PIPELINE_REPLY, "actions", turn);
    cr_assert(wait_sql(&h, "answered", "SELECT state FROM turns WHERE id = %lld", turn));
    cr_assert(wait_idle(&h, 2));
    h_stop(&h);

    cr_assert_eq(count_outgoing(&h, 10), 1, "not posted twice");
    char *found = sqlv(&h,
                       "SELECT result->>'found' FROM effects WHERE turn_id = %lld AND kind = "
                       "'reply' AND state = 'sent'",
                       turn);
    cr_assert_str_eq(found, "true");
    free(found);
    cr_assert_eq(sql_int(&h, "SELECT attempts FROM effects WHERE turn_id = %lld", turn), 2);
    h_free(&h);
}

/* Start the worker, run Reply once for turn, wait for the turn to be answered and the worker
 * idle, stop it. */
static void reply_until_answered(struct h *h, long long turn)
{
    h_start(h);
    push(h, PIPELINE_REPLY, "actions", turn);
    cr_assert(wait_sql(h, "answered", "SELECT state FROM turns WHERE id = %lld", turn));
    cr_assert(wait_idle(h, 1));
    h_stop(h);
}

/* Without a user token the marker cannot be looked for: no second post, outcome unknown. */
Test(action_steps, pending_reply_without_user_token_does_not_repost)
{
    struct h h;
    struct h_opts o = {.no_user_token = 1};
    h_init(&h, &o);
    long long turn = seed_answer_turn(&h, "Hello?", NULL);
    free(sqlv(&h,
              "INSERT INTO effects (turn_id, kind, state, claimed_at) VALUES (%lld, 'reply', "
              "'pending', now() - interval '1 minute') RETURNING 1",
              turn));
    reply_until_answered(&h, turn);
    cr_assert_eq(count_outgoing(&h, 10), 0);
    char *unknown = sqlv(&h, "SELECT result->>'unknown' FROM effects WHERE turn_id = %lld", turn);
    cr_assert_str_eq(unknown, "true");
    free(unknown);
    h_free(&h);
}

/* The reply went out and its effect says so, but the turn is still open (a worker before
 * the completion and the turn's end shared one statement crashed between the two): the
 * re-run posts nothing and ends the turn itself. */
Test(action_steps, sent_reply_of_an_open_turn_ends_the_turn_without_posting)
{
    struct h h;
    h_init(&h, NULL);
    long long turn = seed_answer_turn(&h, "Still there?", NULL);
    free(sqlv(&h,
              "INSERT INTO effects (turn_id, kind, state, result, done_at) VALUES (%lld, "
              "'reply', 'sent', '{\"message_id\": 777}', now()) RETURNING 1",
              turn));
    reply_until_answered(&h, turn);
    cr_assert_eq(count_outgoing(&h, 10), 0, "nothing posted again");
    cr_assert_eq(sql_int(&h, "SELECT attempts FROM effects WHERE turn_id = %lld", turn), 2);
    h_free(&h);
}

Test(action_steps, resolved_meanwhile_or_taken_over_drops_the_turn)
{
    struct h h;
    h_init(&h, NULL);
    /* The ledger still says pending, Chatwoot says resolved (the fresh read catches it). */
    long m1 = seed_conversation(&h, 20, "pending", "resolved", 0, "question one");
    long long t1 = seed_turn(&h, 20, m1, "question one", ANSWER_DECISION);
    /* The ledger knows a human took over. */
    long m2 = seed_conversation(&h, 21, "pending", "pending", 1, "question two");
    long long t2 = seed_turn(&h, 21, m2, "question two", ANSWER_DECISION);
    /* The ledger says resolved. */
    long m3 = seed_conversation(&h, 22, "resolved", "pending", 0, "question three");
    long long t3 = seed_turn(&h, 22, m3, "question three", ANSWER_DECISION);
    h_start(&h);
    push(&h, PIPELINE_REPLY, "actions", t1);
    push(&h, PIPELINE_REPLY, "actions", t2);
    push(&h, PIPELINE_REPLY, "actions", t3);
    cr_assert(wait_sql(&h, "3", "SELECT count(*) FROM turns WHERE state = 'dropped'"));
    cr_assert(wait_idle(&h, 3));
    h_stop(&h);
    for (long conv = 20; conv <= 22; conv++)
        cr_assert_eq(count_outgoing(&h, conv), 0, "no reply in conversation %ld", conv);
    cr_assert_eq(sql_int(&h, "SELECT count(*) FROM effects"), 0, "nothing claimed");
    char *r1 = sqlv(&h, "SELECT outcome_reason FROM turns WHERE id = %lld", t1);
    char *r2 = sqlv(&h, "SELECT outcome_reason FROM turns WHERE id = %lld", t2);
    cr_assert(r1 && strstr(r1, "resolved"), "%s", r1);
    cr_assert(r2 && strstr(r2, "human"), "%s", r2);
    free(r1);
    free(r2);
    h_free(&h);
}

Test(action_steps, reply_cap_escalates_instead)
{
    struct h h;
    struct h_opts o = {.inbox_json = "{\"defaults\": {\"max_replies_per_hour\": 2}}"};
    h_init(&h, &o);
    long msg = seed_conversation(&h, 30, "pending", "pending", 0, "again?");
    /* Two replies in the last hour for earlier turns of the conversation. */
    free(sqlv(&h,
              "INSERT INTO turns (account_id, conversation_id, message_id, inbox_id, content, "
              "state) SELECT %d, 30, g, %d, 'earlier', 'answered' FROM generate_series(1, 2) "
              "g RETURNING 1",
              ACCOUNT, INBOX));
    free(sqlv(&h, "INSERT INTO effects (turn_id, kind, state) SELECT id, 'reply', 'sent' FROM "
                  "turns WHERE conversation_id = 30 RETURNING 1"));
    long long turn = seed_turn(&h, 30, msg, "again?", ANSWER_DECISION);
    h_start(&h);
    push(&h, PIPELINE_REPLY, "actions", turn);
    cr_assert(wait_sql(&h, "escalated", "SELECT state FROM turns WHERE id = %lld", turn));
    cr_assert(wait_idle(&h, 2));
    h_stop(&h);
    char *reason = sqlv(&h, "SELECT outcome_reason FROM turns WHERE id = %lld", turn);
    cr_assert_str_eq(reason, "reply cap reached (2 in the last hour)");
    free(reason);
    cr_assert_eq(sql_int(&h,
                         "SELECT count(*) FROM effects WHERE turn_id = %lld AND kind = "
                         "'reply'",
                         turn),
                 0, "no reply claimed");
    json_t *msgs = fake_chatwoot_messages(h.cw, ACCOUNT, 30);
    json_t *last = json_array_get(msgs, json_array_size(msgs) - 1);
    cr_assert(json_is_true(json_object_get(last, "private")), "only the escalation note");
    cr_assert(strstr(json_string_value(json_object_get(last, "content")), "reply cap reached"));
    json_decref(msgs);
    char *status = fake_chatwoot_status(h.cw, ACCOUNT, 30);
    cr_assert_str_eq(status, "open", "handed off");
    free(status);
    h_free(&h);
}

/* ---- the escalation chain -------------------------------------------------------------- */

Test(action_steps, full_escalation_in_order_each_once)
{
    struct h h;
    h_init(&h, NULL);
    const char *words = "The CSV export crashes <!channel> with error 500\nsince Monday";
    long msg = seed_conversation(&h, 40, "pending", "pending", 0, words);
    const char *existing[] = {"vip"};
    fake_chatwoot_set_labels(h.cw, ACCOUNT, 40, existing, 1);
    long long turn = seed_turn(&h, 40, msg, words, BUG_DECISION);
    h_start(&h);
    push(&h, PIPELINE_ESCALATE, "actions", turn);
    cr_assert(wait_sql(&h, "sent",
                       "SELECT state FROM effects WHERE turn_id = %lld AND kind = 'linear_note'",
                       turn));
    cr_assert(wait_idle(&h, 3));
    /* Every job once more: nothing is sent twice. */
    push(&h, PIPELINE_ESCALATE, "actions", turn);
    push(&h, PIPELINE_LINEAR_ISSUE, "linear", turn);
    push(&h, PIPELINE_PRIVATE_NOTE, "actions", turn);
    cr_assert(wait_idle(&h, 3 + 3 + 2)); /* the re-runs enqueue LinearIssue and PrivateNote */
    h_stop(&h);

    char *state = sqlv(&h, "SELECT state FROM turns WHERE id = %lld", turn);
    cr_assert_str_eq(state, "escalated");
    free(state);
    /* Effects in order, each sent once. */
    char *kinds = sqlv(&h,
                       "SELECT string_agg(kind || '=' || state, ',' ORDER BY id) FROM "
                       "effects WHERE turn_id = %lld",
                       turn);
    cr_assert_str_eq(kinds, "escalation_note=sent,labels=sent,handoff=sent,slack=sent,"
                            "linear_issue=sent,linear_attachment=sent,linear_note=sent");
    free(kinds);

    /* Chatwoot: the note (reason first), labels merged, handed off with the bot token, then
     * the note with the Linear URL. */
    char key[64], marker[80];
    snprintf(key, sizeof key, "%d:40:%ld", ACCOUNT, msg);
    json_t *msgs = fake_chatwoot_messages(h.cw, ACCOUNT, 40);
    cr_assert_eq(json_array_size(msgs), 3, "the customer's message and two notes");
    json_t *note = json_array_get(msgs, 1), *lnote = json_array_get(msgs, 2);
    cr_assert(json_is_true(json_object_get(note, "private")));
    const char *text = json_string_value(json_object_get(note, "content"));
    cr_assert(strstr(text, "Reason: the export crashes"), "%s", text);
    cr_assert(strstr(text, "Reason") < strstr(text, "Category: bug"), "%s", text);
    snprintf(marker, sizeof marker, "%s:escalation", key);
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(note, "content_attributes"),
                                                       "tierone_note")),
                     marker);
    cr_assert(json_is_true(json_object_get(lnote, "private")));
    snprintf(marker, sizeof marker, "%s:linear", key);
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(lnote, "content_attributes"),
                                                       "tierone_note")),
                     marker);
    json_t *labels = fake_chatwoot_labels(h.cw, ACCOUNT, 40);
    cr_assert_eq(json_array_size(labels), 2);
    cr_assert_str_eq(json_string_value(json_array_get(labels, 0)), "vip");
    cr_assert_str_eq(json_string_value(json_array_get(labels, 1)), "needs-human");
    json_decref(labels);
    char *status = fake_chatwoot_status(h.cw, ACCOUNT, 40);
    cr_assert_str_eq(status, "open");
    free(status);
    struct fake_http *fh = fake_chatwoot_http(h.cw);
    int toggles = 0;
    for (size_t i = 0; i < fake_http_count(fh); i++) {
        const struct fake_http_request *r = fake_http_request_at(fh, i);
        if (strstr(r->path, "/toggle_status")) {
            toggles++;
            cr_assert_str_eq(fake_http_request_header(r, "api_access_token"), "bot-token");
            cr_assert(strstr(r->body, "\"open\""), "%s", r->body);
        }
    }
    cr_assert_eq(toggles, 1);

    /* Slack: one message with the contact, the reason, the escaped words and the link. */
    cr_assert_eq(fake_slack_count(h.slack), 1);
    json_t *sm = fake_slack_message(h.slack, 0);
    char *dump = json_dumps(sm, 0);
    cr_assert(strstr(dump, "Alice Doe"), "%s", dump);
    cr_assert(strstr(dump, "alice@example.com"), "%s", dump);
    cr_assert(strstr(dump, "the export crashes"), "%s", dump);
    cr_assert(strstr(dump, "&lt;!channel&gt;"), "customer words escaped: %s", dump);
    cr_assert(!strstr(dump, "<!channel>"), "%s", dump);
    cr_assert(strstr(dump, "Open in Chatwoot"), "%s", dump);
    char url[256];
    snprintf(url, sizeof url, "%s/app/accounts/%d/conversations/40", fake_chatwoot_url(h.cw),
             ACCOUNT);
    cr_assert(strstr(dump, url), "%s", dump);
    free(dump);
    json_decref(sm);

    /* Linear: one issue with the derived id, one attachment, its URL in the note. */
    char seed[96], uuid[37];
    snprintf(seed, sizeof seed, "tierone:%s", key);
    linear_uuid_from_key(seed, uuid);
    cr_assert_eq(fake_linear_issue_count(h.linear), 1);
    json_t *issue = fake_linear_find_issue(h.linear, uuid);
    cr_assert_not_null(issue, "issue filed with id %s", uuid);
    const char *title = json_string_value(json_object_get(issue, "title"));
    cr_assert_str_eq(title, "Bug: The CSV export crashes <!channel> with error 500");
    const char *desc = json_string_value(json_object_get(issue, "description"));
    cr_assert(strstr(desc, "u-42") && strstr(desc, "alice@example.com"), "%s", desc);
    cr_assert(strstr(desc, "> since Monday"), "%s", desc);
    cr_assert(strstr(desc, "Channel::WebWidget") && strstr(desc, url), "%s", desc);
    cr_assert_eq(fake_linear_attachment_count(h.linear), 1);
    json_t *att = fake_linear_attachment(h.linear, 0);
    cr_assert_str_eq(json_string_value(json_object_get(att, "issueId")), uuid);
    cr_assert_str_eq(json_string_value(json_object_get(att, "url")), url);
    json_decref(att);
    char expect[512];
    snprintf(expect, sizeof expect, "Linear issue %s: %s",
             json_string_value(json_object_get(issue, "identifier")),
             json_string_value(json_object_get(issue, "url")));
    cr_assert_str_eq(json_string_value(json_object_get(lnote, "content")), expect);
    json_decref(issue);
    json_decref(msgs);
    h_free(&h);
}

/* ---- failures and shadow mode ---------------------------------------------------------- */

Test(action_steps, chatwoot_429_retries_at_the_next_minute)
{
    struct h h;
    h_init(&h, NULL);
    long msg = seed_conversation(&h, 50, "pending", "pending", 0, "anyone?");
    long long turn = seed_turn(&h, 50, msg, "anyone?", ANSWER_DECISION);
    struct fake_fault f = {.status = 429, .body = "Retry later", .content_type = "text/plain"};
    fake_faults_push(fake_chatwoot_faults(h.cw), &f, 1);
    h_start(&h);
    double before = clock_wall_s();
    push(&h, PIPELINE_REPLY, "actions", turn);
    cr_assert(test_loop_until(&h.loop, cond_retry, &h, WAIT_MS));
    double after = clock_wall_s();
    h_stop(&h);
    redisReply *r = test_redis_cmd(h.rc, "ZRANGE retry 0 0 WITHSCORES");
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
    cr_assert_eq(r->elements, 2);
    double score = strtod(r->element[1]->str, NULL);
    json_t *j = json_loads(r->element[0]->str, 0, NULL);
    freeReplyObject(r);
    cr_assert_float_eq(fmod(score, 60.0), 0.0, 1e-6, "a minute boundary: %f", score);
    cr_assert(score > before && score <= after + 60.0, "the next boundary: %f", score);
    cr_assert_str_eq(json_string_value(json_object_get(j, "class")), PIPELINE_REPLY);
    json_decref(j);
    char *state = sqlv(&h, "SELECT state FROM turns WHERE id = %lld", turn);
    cr_assert_str_eq(state, "open", "still waiting to answer");
    free(state);
    cr_assert_eq(count_outgoing(&h, 50), 0);
    h_free(&h);
}

Test(action_steps, shadow_mode_records_and_sends_nothing)
{
    struct h h;
    struct h_opts o = {.shadow = 1};
    h_init(&h, &o);
    long m1 = seed_conversation(&h, 60, "pending", "pending", 0, "how do I export?");
    long long answer = seed_turn(&h, 60, m1, "how do I export?", ANSWER_DECISION);
    /* 90 two-byte characters on the first line: the title keeps 80 and an ellipsis. */
    char words[256] = "";
    for (int i = 0; i < 90; i++)
        strcat(words, "é");
    strcat(words, "\nsecond line");
    long m2 = seed_conversation(&h, 61, "pending", "pending", 0, words);
    long long bug = seed_turn(&h, 61, m2, words, BUG_DECISION);
    size_t cw_before = fake_http_count(fake_chatwoot_http(h.cw));
    h_start(&h);
    push(&h, PIPELINE_REPLY, "actions", answer);
    push(&h, PIPELINE_ESCALATE, "actions", bug);
    cr_assert(wait_sql(&h, "answered", "SELECT state FROM turns WHERE id = %lld", answer));
    cr_assert(wait_sql(&h, "shadow",
                       "SELECT state FROM effects WHERE turn_id = %lld AND kind = 'linear_note'",
                       bug));
    cr_assert(wait_idle(&h, 4));
    h_stop(&h);
    cr_assert_eq(fake_http_count(fake_chatwoot_http(h.cw)), cw_before, "Chatwoot got nothing");
    cr_assert_eq(fake_http_count(fake_slack_http(h.slack)), 0, "Slack got nothing");
    cr_assert_eq(fake_http_count(fake_linear_http(h.linear)), 0, "Linear got nothing");
    char *kinds = sqlv(&h,
                       "SELECT string_agg(kind || '=' || state, ',' ORDER BY id) FROM "
                       "effects WHERE turn_id = %lld",
                       bug);
    cr_assert_str_eq(kinds, "escalation_note=shadow,labels=shadow,handoff=shadow,slack=shadow,"
                            "linear_issue=shadow,linear_attachment=shadow,linear_note=shadow");
    free(kinds);
    char *reply = sqlv(&h,
                       "SELECT state || ' ' || (payload->>'content') FROM effects WHERE turn_id "
                       "= %lld AND kind = 'reply'",
                       answer);
    cr_assert_str_eq(reply, "shadow Reset it under Settings > Password.");
    free(reply);
    char *note = sqlv(&h,
                      "SELECT payload->>'content' FROM effects WHERE turn_id = %lld AND kind = "
                      "'linear_note'",
                      bug);
    cr_assert(note && strstr(note, "(shadow)"), "%s", note);
    free(note);
    char *title = sqlv(&h,
                       "SELECT payload->>'title' FROM effects WHERE turn_id = %lld AND kind = "
                       "'linear_issue'",
                       bug);
    char want[256] = "Bug: ";
    for (int i = 0; i < 80; i++)
        strcat(want, "é");
    strcat(want, "…");
    cr_assert_str_eq(title, want);
    free(title);
    char *identifier = sqlv(&h,
                            "SELECT result->>'identifier' FROM effects WHERE turn_id = %lld AND "
                            "kind = 'linear_issue'",
                            bug);
    cr_assert_str_eq(identifier, "(shadow)");
    free(identifier);
    cr_assert_eq(count_outgoing(&h, 60) + count_outgoing(&h, 61), 0);
    char *state = sqlv(&h, "SELECT state FROM turns WHERE id = %lld", bug);
    cr_assert_str_eq(state, "escalated");
    free(state);
    h_free(&h);
}
