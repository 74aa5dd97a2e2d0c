/* Tierone::ContactSync (queues/contact_sync.c) through the real worker engine: a worker and
 * the pipeline on a loop in this process, the real redis-server (database 8), a fresh
 * PostgreSQL database (tierone_test_sync) holding the operator's source table app_users,
 * and the fake Chatwoot with a user token. Each test pushes ContactSync jobs and runs the
 * loop until the worker has finished them, then checks Chatwoot's contacts, the requests
 * it got, and the contact_links / contact_sync_runs rows. */
#include "clock.h"
#include "engine.h"
#include "fake_chatwoot.h"
#include "log.h"
#include "pipeline.h"
#include "sidekiq_client.h"
#include "test_loop.h"
#include "test_pg.h"
#include "test_redis.h"
#include "xalloc.h"

#include <criterion/criterion.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define DB     8
#define PGNAME "tierone_test_sync"

static const char *const users_sql =
    "SELECT ext_id AS identifier, full_name AS name, mail AS email, tel AS phone, "
    "attrs AS attributes FROM app_users";

struct side {
    struct worker w;
    struct worker_settings wcfg;
    struct pipeline p;
    struct pipeline_settings pcfg;
};

struct harness {
    uv_loop_t loop;
    struct side a, b; /* b: only in the two-pipeline scheduler test */
    int two;
    struct fake_chatwoot *cw;
    redisContext *rc;
    PGconn *pg;    /* the pipeline's database */
    PGconn *src;   /* the source database (pg unless a separate one) */
    char *db_url;  /* the pipeline's database */
    char *src_url; /* a separate source database, or NULL */
};

struct options {
    int shadow;
    const char *sql;
    long long interval_ms;
    const char *queues;
    int separate_source;
    long long chatwoot_rate_per_min;
};

static void side_init(struct harness *h, struct side *s, const struct options *o)
{
    struct worker_settings *c = &s->wcfg;
    c->redis_url = xstrdup(test_redis_url(DB));
    c->queues = xstrdup(o->queues ? o->queues : "sync");
    c->concurrency = 5;
    c->shutdown_timeout_ms = 2000;
    c->timestamp_format = JOB_TS_FLOAT_SECONDS;
    c->max_retries = 25;
    c->dead_max_jobs = 10000;
    c->dead_timeout_s = 180 * 24 * 3600;
    c->poll_interval_ms = 100;
    c->beat_interval_ms = 200;
    c->lease_ttl_s = 5;
    c->recovery_interval_ms = 1000;
    c->max_recoveries = 3;
    c->fetch_idle_max_ms = 10;
    c->tag = xstrdup("test");
    struct pipeline_settings *p = &s->pcfg;
    p->database_url = h->db_url;
    p->database_prepare = 1; /* the default of TIERONE_DATABASE_PREPARE */
    p->database_pool = 4;
    p->chatwoot_base_url = (char *)fake_chatwoot_url(h->cw);
    p->chatwoot_bot_token = "bot-token";
    p->chatwoot_user_token = "user-token";
    p->chatwoot_rate_per_min = o->chatwoot_rate_per_min;
    p->shadow = o->shadow;
    p->ai_retries = 3;
    p->contact_sync_sql = (char *)(o->sql ? o->sql : users_sql);
    p->contact_sync_database_url = h->src_url;
    p->contact_sync_account = 1;
    p->contact_sync_interval_ms = o->interval_ms;
    char err[256];
    cr_assert_eq(worker_init(&s->w, &h->loop, c, err, sizeof err), 0, "%s", err);
    cr_assert_eq(pipeline_init(&s->p, &s->w, p, err, sizeof err), 0, "%s", err);
    cr_assert_eq(worker_start(&s->w), 0);
}

static void create_users_table(PGconn *c)
{
    test_pg_exec(c, "CREATE TABLE app_users (ext_id text, full_name text, mail text, tel text, "
                    "attrs jsonb, updated_at timestamptz NOT NULL DEFAULT now())");
}

static void h_start(struct harness *h, const struct options *o)
{
    memset(h, 0, sizeof *h);
    log_init("test", getenv("CS_DEBUG") ? LOG_DEBUG : LOG_OFF);
    h->rc = test_redis_connect(DB);
    if (o->separate_source) {
        h->src_url = xstrdup(test_pg_fresh(PGNAME "_src"));
        h->src = test_pg_connect(h->src_url);
    }
    h->db_url = xstrdup(test_pg_fresh(PGNAME));
    h->pg = test_pg_connect(h->db_url);
    if (!h->src)
        h->src = h->pg;
    create_users_table(h->src);
    h->cw = fake_chatwoot_start(NULL);
    cr_assert_not_null(h->cw);
    fake_chatwoot_add_conversation(h->cw, 1, 1, "open", 1, 0); /* makes account 1 */
    uv_loop_init(&h->loop);
    side_init(h, &h->a, o);
}

static void h_start_second(struct harness *h, const struct options *o)
{
    side_init(h, &h->b, o);
    h->two = 1;
}

static void side_free(struct side *s)
{
    worker_free(&s->w);
    free(s->wcfg.redis_url);
    free(s->wcfg.queues);
    free(s->wcfg.tag);
}

static void h_stop(struct harness *h)
{
    worker_stop(&h->a.w);
    if (h->two)
        worker_stop(&h->b.w);
    uv_run(&h->loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&h->loop), 0, "handles left open after the worker stopped");
    side_free(&h->a);
    if (h->two)
        side_free(&h->b);
    fake_chatwoot_free(h->cw);
    if (h->src != h->pg)
        PQfinish(h->src);
    PQfinish(h->pg);
    redisFree(h->rc);
    free(h->db_url);
    free(h->src_url);
}

/* ---- driving jobs --------------------------------------------------------------------- */

struct until_done {
    struct worker *w;
    long long target;
};

static int cond_done(void *arg)
{
    struct until_done *u = arg;
    return u->w->total_processed >= u->target && u->w->out_count == 0 && !u->w->out_in_flight;
}

/* Push one ContactSync with args (e.g. "[\"full\"]") and run until the worker finished it. */
static void run_job(struct harness *h, const char *args)
{
    struct sidekiq_job_spec spec = {
        .klass = PIPELINE_CONTACT_SYNC,
        .queue = "sync",
        .args = args,
        .retry = SIDEKIQ_RETRY_MAX,
        .retry_max = 3,
    };
    char err[256];
    long long before = h->a.w.total_processed;
    cr_assert_eq(sidekiq_push_sync(h->rc, NULL, &spec, NULL, err, sizeof err), 0, "%s", err);
    struct until_done u = {&h->a.w, before + 1};
    cr_assert(test_loop_until(&h->loop, cond_done, &u, 60000), "the job did not finish");
}

/* Move every job of the retry set back to its queue (the Web UI's "retry now"). */
static void retry_now(struct harness *h, struct worker *w)
{
    redisReply *r = test_redis_cmd(h->rc, "ZRANGE retry 0 -1");
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
    long long before = w->total_processed;
    size_t n = r->elements;
    for (size_t i = 0; i < n; i++) {
        freeReplyObject(
            test_redis_cmd(h->rc, "ZREM retry %b", r->element[i]->str, (size_t)r->element[i]->len));
        freeReplyObject(test_redis_cmd(h->rc, "LPUSH queue:sync %b", r->element[i]->str,
                                       (size_t)r->element[i]->len));
    }
    freeReplyObject(r);
    struct until_done u = {w, before + (long long)n};
    cr_assert(test_loop_until(&h->loop, cond_done, &u, 60000), "the retried job did not finish");
}

/* ---- looking at the outcome ----------------------------------------------------------- */

static size_t nrequests(struct harness *h)
{
    return fake_http_count(fake_chatwoot_http(h->cw));
}

/* Requests from index `from` on with this method whose path ends with `suffix` (NULL: any). */
static int count_requests(struct harness *h, size_t from, const char *method, const char *suffix)
{
    struct fake_http *f = fake_chatwoot_http(h->cw);
    int n = 0;
    for (size_t i = from; i < fake_http_count(f); i++) {
        const struct fake_http_request *q = fake_http_request_at(f, i);
        size_t pl = strlen(q->path), sl = suffix ? strlen(suffix) : 0;
        if (strcmp(q->method, method) == 0 &&
            (!suffix || (pl >= sl && strcmp(q->path + pl - sl, suffix) == 0)))
            n++;
    }
    return n;
}

static json_t *contact_by_identifier(struct harness *h, const char *identifier)
{
    json_t *all = fake_chatwoot_contacts(h->cw, 1), *c, *found = NULL;
    size_t i;
    json_array_foreach(all, i, c)
    {
        const char *id = json_string_value(json_object_get(c, "identifier"));
        if (id && strcmp(id, identifier) == 0)
            found = json_incref(c);
    }
    json_decref(all);
    return found;
}

static size_t ncontacts(struct harness *h)
{
    json_t *all = fake_chatwoot_contacts(h->cw, 1);
    size_t n = json_array_size(all);
    json_decref(all);
    return n;
}

static long long pg_int(PGconn *c, const char *sql)
{
    char *v = test_pg_value(c, sql);
    long long n = v ? atoll(v) : -1;
    free(v);
    return n;
}

static void assert_last_run(struct harness *h, const char *state, long long created,
                            long long updated, long long failed)
{
    char *s = test_pg_value(h->pg, "SELECT state || ' ' || created || ' ' || updated || ' ' || "
                                   "failed FROM contact_sync_runs ORDER BY id DESC LIMIT 1");
    char want[128];
    snprintf(want, sizeof want, "%s %lld %lld %lld", state, created, updated, failed);
    cr_assert_str_eq(s, want, "last run: got '%s', want '%s' (state created updated failed)", s,
                     want);
    free(s);
}

static void seed_three(struct harness *h)
{
    test_pg_exec(h->src, "INSERT INTO app_users (ext_id, full_name, mail, tel, attrs) VALUES "
                         "('u1', 'Alice Doe', 'alice@example.com', '+4915112345678', "
                         "'{\"plan\": \"pro\", \"subdomain\": \"alice\"}'), "
                         "('u2', 'Bob Roe', 'bob@example.com', NULL, NULL), "
                         "('u3', 'Carol Poe', NULL, NULL, '{\"tenant_status\": \"trial\"}')");
}

/* ---- tests ---------------------------------------------------------------------------- */

Test(contact_sync, first_pass_creates_second_sends_nothing_a_change_is_one_patch)
{
    struct harness h;
    struct options o = {0};
    h_start(&h, &o);
    seed_three(&h);

    run_job(&h, "[\"full\"]");
    cr_assert_eq(ncontacts(&h), 3);
    json_t *alice = contact_by_identifier(&h, "u1");
    cr_assert_not_null(alice);
    cr_assert_str_eq(json_string_value(json_object_get(alice, "name")), "Alice Doe");
    cr_assert_str_eq(json_string_value(json_object_get(alice, "email")), "alice@example.com");
    cr_assert_str_eq(json_string_value(json_object_get(alice, "phone_number")), "+4915112345678");
    json_t *ca = json_object_get(alice, "custom_attributes");
    cr_assert_str_eq(json_string_value(json_object_get(ca, "plan")), "pro");
    cr_assert_str_eq(json_string_value(json_object_get(ca, "subdomain")), "alice");
    json_decref(alice);
    cr_assert_eq(count_requests(&h, 0, "POST", "/contacts/filter"), 3);
    cr_assert_eq(count_requests(&h, 0, "POST", "/accounts/1/contacts"), 3);
    cr_assert_eq(pg_int(h.pg, "SELECT count(*) FROM contact_links WHERE contact_id IS NOT NULL "
                              "AND synced_hash IS NOT NULL AND last_error IS NULL"),
                 3);
    assert_last_run(&h, "ok", 3, 0, 0);

    /* Nothing changed: no request at all. */
    size_t mark = nrequests(&h);
    run_job(&h, "[\"delta\"]");
    cr_assert_eq(nrequests(&h), mark, "an unchanged pass sent %zu requests", nrequests(&h) - mark);
    assert_last_run(&h, "ok", 0, 0, 0);
    cr_assert_eq(pg_int(h.pg, "SELECT unchanged FROM contact_sync_runs ORDER BY id DESC LIMIT 1"),
                 3);

    /* One change: one PATCH to the linked contact, no search. */
    json_t *bob = contact_by_identifier(&h, "u2");
    long long bob_id = json_integer_value(json_object_get(bob, "id"));
    json_decref(bob);
    test_pg_exec(h.src, "UPDATE app_users SET mail = 'bob@new.example.com' WHERE ext_id = 'u2'");
    mark = nrequests(&h);
    run_job(&h, "[\"delta\"]");
    cr_assert_eq(nrequests(&h) - mark, 1);
    char path[64];
    snprintf(path, sizeof path, "/contacts/%lld", bob_id);
    cr_assert_eq(count_requests(&h, mark, "PATCH", path), 1);
    bob = contact_by_identifier(&h, "u2");
    cr_assert_str_eq(json_string_value(json_object_get(bob, "email")), "bob@new.example.com");
    json_decref(bob);
    assert_last_run(&h, "ok", 0, 1, 0);
    cr_assert_eq(ncontacts(&h), 3);
    h_stop(&h);
}

Test(contact_sync, an_existing_contact_is_found_by_identifier_and_updated)
{
    struct harness h;
    struct options o = {0};
    h_start(&h, &o);
    long id = fake_chatwoot_add_contact(
        h.cw, 1, "{\"name\":\"Old Name\",\"identifier\":\"u1\",\"email\":\"old@example.com\"}");
    seed_three(&h);
    run_job(&h, "[\"full\"]");
    cr_assert_eq(ncontacts(&h), 3, "u1 was created again instead of updated");
    char path[64];
    snprintf(path, sizeof path, "/contacts/%ld", id);
    cr_assert_eq(count_requests(&h, 0, "PATCH", path), 1);
    json_t *alice = contact_by_identifier(&h, "u1");
    cr_assert_eq(json_integer_value(json_object_get(alice, "id")), id);
    cr_assert_str_eq(json_string_value(json_object_get(alice, "name")), "Alice Doe");
    json_decref(alice);
    char *linked = test_pg_value(h.pg, "SELECT contact_id FROM contact_links WHERE identifier = "
                                       "'u1'");
    cr_assert_eq(atol(linked), id);
    free(linked);
    assert_last_run(&h, "ok", 2, 1, 0);
    h_stop(&h);
}

Test(contact_sync, bad_rows_are_recorded_and_the_rest_is_synced)
{
    struct harness h;
    struct options o = {0};
    h_start(&h, &o);
    fake_chatwoot_add_contact(h.cw, 1,
                              "{\"name\":\"Other\",\"identifier\":\"other\","
                              "\"email\":\"taken@example.com\"}");
    test_pg_exec(h.src, "INSERT INTO app_users (ext_id, full_name, mail, tel, attrs) VALUES "
                        "('good', 'Good Row', 'good@example.com', NULL, NULL), "
                        "('bad-email', 'Bad Email', 'not-an-email', NULL, NULL), "
                        "('taken', 'Taken Email', 'taken@example.com', NULL, NULL), "
                        "('bad-phone', 'Bad Phone', NULL, '12345', NULL), "
                        "('bad-attrs', 'Bad Attrs', NULL, NULL, '[1, 2]'), "
                        "(NULL, 'No Identifier', 'none@example.com', NULL, NULL), "
                        "('', 'Empty Identifier', 'empty@example.com', NULL, NULL), "
                        "('good2', 'Good Two', 'good2@example.com', NULL, NULL)");
    run_job(&h, "[\"full\"]");
    cr_assert_eq(test_redis_int(h.rc, "ZCARD retry"), 0, "a bad row failed the job");
    cr_assert_eq(test_redis_int(h.rc, "ZCARD dead"), 0, "a bad row failed the job");
    const char *synced[] = {"good", "good2"};
    for (int i = 0; i < 2; i++) {
        json_t *c = contact_by_identifier(&h, synced[i]);
        cr_assert_not_null(c, "%s was not synced", synced[i]);
        json_decref(c);
    }
    cr_assert_eq(ncontacts(&h), 3); /* other, good, good2 */
    assert_last_run(&h, "ok", 2, 0, 4);
    cr_assert_eq(
        pg_int(h.pg, "SELECT missing_identifier FROM contact_sync_runs ORDER BY id DESC LIMIT 1"),
        2);
    char *e = test_pg_value(h.pg, "SELECT last_error FROM contact_links WHERE identifier = "
                                  "'taken'");
    cr_assert(e && strstr(e, "taken"), "last_error of the duplicate e-mail: %s", e);
    free(e);
    e = test_pg_value(h.pg, "SELECT last_error FROM contact_links WHERE identifier = "
                            "'bad-email'");
    cr_assert(e && strstr(e, "e-mail"), "last_error of the bad e-mail: %s", e);
    free(e);
    cr_assert_eq(pg_int(h.pg, "SELECT count(*) FROM contact_links WHERE last_error IS NOT NULL"),
                 4);
    /* Only the row Chatwoot refused cost requests; the others were refused locally. */
    cr_assert_eq(count_requests(&h, 0, "POST", "/accounts/1/contacts"), 3);

    /* A delta pass does not try the same bad rows again; a full pass does. */
    size_t mark = nrequests(&h);
    run_job(&h, "[\"delta\"]");
    cr_assert_eq(nrequests(&h), mark);
    run_job(&h, "[\"full\"]");
    cr_assert_eq(count_requests(&h, mark, "POST", "/accounts/1/contacts"), 1); /* 'taken' */
    assert_last_run(&h, "ok", 0, 0, 4);
    h_stop(&h);
}

Test(contact_sync, chatwoot_500_fails_the_job_retryably_and_the_retry_completes)
{
    struct harness h;
    struct options o = {0};
    h_start(&h, &o);
    seed_three(&h);
    struct fake_fault f = {.status = 500, .body = "{\"error\":\"boom\"}"};
    fake_faults_push(fake_chatwoot_faults(h.cw), &f, 1);
    run_job(&h, "[\"full\"]");
    cr_assert_eq(test_redis_int(h.rc, "ZCARD retry"), 1, "the job was not retried");
    redisReply *retry = test_redis_cmd(h.rc, "ZRANGE retry 0 0");
    cr_assert_eq(retry->type, REDIS_REPLY_ARRAY);
    cr_assert_eq(retry->elements, 1);
    cr_assert(strstr(retry->element[0]->str, "Tierone::Chatwoot::ServerError"), "%s",
              retry->element[0]->str);
    freeReplyObject(retry);
    cr_assert_eq(pg_int(h.pg, "SELECT count(*) FROM contact_sync_runs WHERE state = 'failed'"), 1);

    retry_now(&h, &h.a.w);
    cr_assert_eq(test_redis_int(h.rc, "ZCARD retry"), 0);
    cr_assert_eq(ncontacts(&h), 3);
    cr_assert_eq(count_requests(&h, 0, "POST", "/accounts/1/contacts"), 3,
                 "a contact was created "
                 "twice");
    cr_assert_eq(pg_int(h.pg, "SELECT count(*) FROM contact_links WHERE synced_hash IS NOT NULL"),
                 3);
    char *s = test_pg_value(h.pg, "SELECT state FROM contact_sync_runs ORDER BY id DESC LIMIT 1");
    cr_assert_str_eq(s, "ok");
    free(s);
    h_stop(&h);
}

Test(contact_sync, shadow_mode_records_and_sends_nothing)
{
    struct harness h;
    struct options o = {.shadow = 1};
    h_start(&h, &o);
    seed_three(&h);
    run_job(&h, "[\"full\"]");
    cr_assert_eq(nrequests(&h), 0);
    cr_assert_eq(ncontacts(&h), 0);
    cr_assert_eq(pg_int(h.pg, "SELECT count(*) FROM contact_links WHERE shadow_action = 'create' "
                              "AND shadow_payload->>'identifier' = identifier "
                              "AND contact_id IS NULL AND synced_hash IS NULL"),
                 3);
    char *email = test_pg_value(h.pg, "SELECT shadow_payload->>'email' FROM contact_links WHERE "
                                      "identifier = 'u1'");
    cr_assert_str_eq(email, "alice@example.com");
    free(email);
    cr_assert_eq(pg_int(h.pg, "SELECT shadowed FROM contact_sync_runs ORDER BY id DESC LIMIT 1"),
                 3);
    run_job(&h, "[\"delta\"]");
    cr_assert_eq(pg_int(h.pg, "SELECT shadowed FROM contact_sync_runs ORDER BY id DESC LIMIT 1"),
                 0);
    cr_assert_eq(nrequests(&h), 0);
    h_stop(&h);
}

Test(contact_sync, delta_binds_the_last_run_time_and_full_reads_everything)
{
    struct harness h;
    struct options o = {
        .sql = "SELECT ext_id AS identifier, full_name AS name, mail AS email, tel AS phone, "
               "attrs AS attributes FROM app_users WHERE updated_at > $1::timestamptz;"};
    h_start(&h, &o);
    seed_three(&h);
    run_job(&h, "[\"delta\"]"); /* no earlier pass: everything */
    cr_assert_eq(ncontacts(&h), 3);
    /* A change the delta query cannot see (updated_at left in the past). */
    test_pg_exec(h.src, "UPDATE app_users SET full_name = 'Carol Changed', updated_at = now() - "
                        "interval '1 day' WHERE ext_id = 'u3'");
    size_t mark = nrequests(&h);
    run_job(&h, "[\"delta\"]");
    cr_assert_eq(nrequests(&h), mark, "the delta pass read a row older than the last pass");
    cr_assert_eq(pg_int(h.pg, "SELECT rows_seen FROM contact_sync_runs ORDER BY id DESC LIMIT 1"),
                 2);
    run_job(&h, "[\"full\"]");
    cr_assert_eq(count_requests(&h, mark, "PATCH", NULL), 1);
    json_t *carol = contact_by_identifier(&h, "u3");
    cr_assert_str_eq(json_string_value(json_object_get(carol, "name")), "Carol Changed");
    json_decref(carol);
    h_stop(&h);
}

Test(contact_sync, pages_through_a_separate_source_database)
{
    struct harness h;
    struct options o = {.separate_source = 1};
    h_start(&h, &o);
    test_pg_exec(h.src, "INSERT INTO app_users (ext_id, full_name, mail) SELECT 'user-' || i, "
                        "'User ' || i, 'user' || i || '@example.com' "
                        "FROM generate_series(1, 450) AS i");
    run_job(&h, "[\"full\"]");
    cr_assert_eq(ncontacts(&h), 450);
    cr_assert_eq(pg_int(h.pg, "SELECT count(DISTINCT contact_id) FROM contact_links"), 450);
    assert_last_run(&h, "ok", 450, 0, 0);
    size_t mark = nrequests(&h);
    run_job(&h, "[\"delta\"]");
    cr_assert_eq(nrequests(&h), mark);
    h_stop(&h);
}

Test(contact_sync, waits_for_rate_limit_tokens_and_completes)
{
    struct harness h;
    struct options o = {.chatwoot_rate_per_min = 600}; /* 10/s, burst 10 */
    h_start(&h, &o);
    test_pg_exec(h.src, "INSERT INTO app_users (ext_id, full_name) SELECT 'r' || i, 'R ' || i "
                        "FROM generate_series(1, 12) AS i");
    run_job(&h, "[\"full\"]");
    cr_assert_eq(test_redis_int(h.rc, "ZCARD retry"), 0);
    cr_assert_eq(ncontacts(&h), 12);
    cr_assert_eq(count_requests(&h, 0, "POST", "/accounts/1/contacts"), 12);
    assert_last_run(&h, "ok", 12, 0, 0);
    h_stop(&h);
}

static int cond_four_jobs(void *arg)
{
    struct harness *h = arg;
    return test_redis_int(h->rc, "LLEN queue:sync") >= 4;
}

Test(contact_sync, the_scheduler_enqueues_once_per_slot_across_pipelines)
{
    struct harness h;
    /* Queue "idle": nobody runs the passes, so they stay on queue:sync to be counted. */
    struct options o = {.interval_ms = 300, .queues = "idle"};
    h_start(&h, &o);
    h_start_second(&h, &o);
    cr_assert(test_loop_until(&h.loop, cond_four_jobs, &h, 20000), "fewer than 4 passes enqueued");

    redisReply *r = test_redis_cmd(h.rc, "LRANGE queue:sync 0 -1");
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
    long long slots[64];
    size_t n = r->elements < 64 ? r->elements : 64;
    for (size_t i = 0; i < n; i++) {
        json_t *j = json_loads(r->element[i]->str, 0, NULL);
        cr_assert_not_null(j);
        cr_assert_str_eq(json_string_value(json_object_get(j, "class")), PIPELINE_CONTACT_SYNC);
        cr_assert_str_eq(json_string_value(json_object_get(j, "queue")), "sync");
        const char *mode = json_string_value(json_array_get(json_object_get(j, "args"), 0));
        cr_assert(mode && (!strcmp(mode, "delta") || !strcmp(mode, "full")));
        cr_assert_eq(json_integer_value(json_object_get(j, "retry")), 3);
        slots[i] = json_integer_value(json_object_get(j, "tierone_slot"));
        cr_assert_gt(slots[i], 0);
        for (size_t k = 0; k < i; k++)
            cr_assert_neq(slots[k], slots[i], "slot %lld enqueued twice", slots[i]);
        json_decref(j);
    }
    freeReplyObject(r);
    cr_assert_eq(test_redis_int(h.rc, "SISMEMBER queues sync"), 1);
    h_stop(&h);
}
