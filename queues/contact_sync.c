/* contact_sync: Tierone::ContactSync (queue sync): the operator's users, read with an
 * operator-supplied SQL query, upserted into Chatwoot contacts of one account.
 *
 * Argument: ["delta"] (the default when absent) or ["full"].
 *
 * The query (TIERONE_CONTACT_SYNC_SQL) returns the columns identifier, name, email, phone
 * and attributes (JSON text of an object: the contact's custom attributes). It runs on
 * contact_sync_database_url (its own small pool) or on the pipeline's database. If its text
 * contains "$1", $1 is bound to a timestamp (text, ISO 8601 UTC; write `$1::timestamptz`
 * when the query gives it no type): for a delta pass the start of the last successful pass
 * minus one minute, for a full pass (and before any successful pass) 1970-01-01, so
 * `WHERE updated_at > $1::timestamptz` makes delta passes cheap. Without $1 every pass reads
 * every row and relies on the hashes below.
 * Memory stays bounded: the query is read in keyset pages of CS_PAGE rows,
 *   SELECT ... FROM (<query>) AS src WHERE src.identifier::text > <last> ORDER BY 1 LIMIT n
 * (so an index on the identifier helps). Rows without an identifier cannot be synced: they
 * are counted (one count(*) over the query per pass) in contact_sync_runs.missing_identifier.
 *
 * A pass, in order (each callback one transition):
 *   lock      one pass per account at a time: pg_try_advisory_lock on a held connection of
 *             the pipeline's pool (released with the connection if the worker dies). Taken:
 *             a delta pass ends at once (the running one covers it), a full pass is
 *             rescheduled a minute later.
 *   run       a contact_sync_runs row, and the delta's $1.
 *   missing   count the rows without an identifier.
 *   page      the next CS_PAGE rows; none: finish.
 *   links     their contact_links rows (one query): the Chatwoot contact id and the hash of
 *             the fields as last synced. A row whose hash equals synced_hash is skipped
 *             (costs no request); one that failed with the same fields is skipped by delta
 *             passes and tried again by the full pass.
 *   rows      up to CS_WINDOW rows in flight, each:
 *               check     identifier, e-mail (x@y), phone (E.164), attributes (a JSON
 *                         object); a bad row is recorded (last_error) and skipped
 *               linked    PATCH the contact (chatwoot_update_contact); a 404 (deleted in
 *                         Chatwoot) forgets the link and goes on as unknown
 *               unknown   contacts/filter identifier equal_to (not /search, which Chatwoot
 *                         limits to 100/min): found -> PATCH it, else create it
 *               record    contact_links: contact id, hash, synced_at (last_error cleared)
 *             Every call takes a token of the Chatwoot rate limit (p->chatwoot_limit, in
 *             the client). No token: the row waits (in process, when the token comes within
 *             CS_PAUSE_MAX_S; else the job is rescheduled unchanged, JOB_ERR_RESCHEDULE).
 *   finish    update the run row with the counts, unlock, job_done.
 *
 * Failures: a permanent answer about one row (422 "Email has already been taken", a request
 * the client refuses) is that row's last_error, never fatal to the pass. A
 * retryable one (429, 5xx, timeouts, Chatwoot down, PostgreSQL down) stops starting rows,
 * lets the ones in flight end, records the run as failed and fails the job with that error
 * (so Sidekiq retries it; the job is enqueued with retry 3, since the next scheduled pass
 * comes anyway). The retry resumes for free: rows already synced are skipped by hash.
 * Fatal to the pass (permanent): 401/403 (a bad user token), a 404 on filter or create (no
 * such account), the query failing, no Chatwoot user token configured.
 *
 * Idempotence: contacts are keyed by identifier (unique per account in Chatwoot). A crash
 * after a create and before its record: the next pass finds the contact by the filter and
 * PATCHes it. Two rows with the same identifier in one page race; the loser gets a 422.
 *
 * Shadow mode (pipeline_shadow of the defaults inbox settings): no Chatwoot call at all;
 * each row that would be written is logged and recorded in contact_links.shadow_* (action
 * "update" for a linked contact, "create" otherwise, meaning filter-then-create-or-update,
 * and the body), once per change of its fields.
 *
 * Scheduling (contact_sync_start): a timer fires at each slot boundary (wall clock / interval)
 * and every worker tries `SET tierone:cron:contact_sync:<slot> <identity> NX PX <2 interval>`
 * on the worker's Redis; the one that sets it pushes ContactSync on queue "sync" with
 * ["full"] for the first slot of each UTC day, ["delta"] otherwise, and "tierone_slot": slot
 * in the payload. So each slot is enqueued once across the fleet. */
#include "pipeline.h"

#include "buf.h"
#include "chatwoot.h"
#include "clock.h"
#include "digest.h"
#include "log.h"
#include "pg.h"
#include "redis.h"
#include "sidekiq_client.h"
#include "worker.h"
#include "xalloc.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CS_PAGE         200  /* rows per keyset page */
#define CS_WINDOW       8    /* rows in flight */
#define CS_PAUSE_MAX_S  10.0 /* longest in-process wait for a rate-limit token */
#define CS_BUSY_RETRY_S 60.0 /* a full pass that found another pass running */
#define CS_DAY_MS       86400000LL
#define CS_RETRIES      3
#define CS_SOURCE_POOL  2
#define CS_EPOCH        "1970-01-01T00:00:00Z"
#define CS_ERR_CLASS    "Tierone::ContactSync"
#define CS_CRON_KEY     "tierone:cron:contact_sync:"

/* ---- the scheduler's state (p->contact_sync) -------------------------------------------- */

struct cs_sched {
    struct pipeline *p;
    uv_timer_t timer;
    int has_timer;
    int stopping;
    unsigned pending;    /* Redis commands in flight (they hold a pointer to us) */
    long long last_slot; /* the last slot this process tried */
    long long interval;  /* ms; 0 = no schedule */
    struct pg_pool *own; /* the source pool when contact_sync_database_url differs */
    char *page_sql;      /* the query wrapped for keyset pages */
    char *missing_sql;   /* counts rows without an identifier */
    int uses_since;      /* the query has $1 */
};

static struct pg_pool *cs_source(struct cs_sched *s)
{
    return s->own ? s->own : s->p->pg;
}

/* ---- one pass ------------------------------------------------------------------------- */

enum cs_step { CS_STEP_FILTER, CS_STEP_CREATE, CS_STEP_UPDATE };

struct cs_job;

struct cs_row {
    struct cs_job *job;
    char *identifier, *name, *email, *phone, *attributes;
    char hash[65];
    long long contact_id; /* the linked Chatwoot contact; 0: none known */
    int skip;             /* nothing to do (hash unchanged) */
    int started;
    int relinked; /* a 404 on update sent it back to the filter once */
    enum cs_step step;
    json_t *body;        /* the fields to send */
    const char *outcome; /* "created", "updated" */
};

struct cs_job {
    struct job_ctx *ctx;
    struct pipeline *p;
    struct cs_sched *s;
    const char *jid;
    int full, shadow;
    char account[24];
    struct pg_conn *lock_conn;
    int locked;
    char run_id[24];
    char since[64];
    char *after; /* keyset: the last identifier read */
    struct cs_row *rows;
    size_t nrows, next;
    size_t deferred[CS_PAGE]; /* rows waiting for a rate-limit token, FIFO */
    size_t ndeferred;
    unsigned inflight;
    int pumping, repump; /* inside cs_pump; another round wanted */
    int paused;
    double pause_until;
    uv_timer_t timer;
    int has_timer;
    struct job_error *stop; /* why the pass stops (owned); NULL while it goes on */
    struct job_error *done_err;
    long long seen, unchanged, created, updated, failed, missing, shadowed;
    char *last_error;
};

static void cs_pump(struct cs_job *j);
static void cs_finish(struct cs_job *j);
static void cs_row_call(struct cs_row *r);
static void cs_next_page(struct cs_job *j);

static struct job_error *cs_error(enum job_err_kind kind, const char *cls, const char *msg)
{
    return job_error_new(kind, cls, "%s", msg);
}

/* Stop starting rows; the pass ends once those in flight are done. Takes err. */
static void cs_stop(struct cs_job *j, struct job_error *err)
{
    if (j->stop)
        job_error_free(err);
    else
        j->stop = err;
    if (j->paused) {
        uv_timer_stop(&j->timer);
        j->paused = 0;
    }
}

/* cs_stop, then let the pump see it (end the pass or wait for the rows in flight). */
static void cs_fail(struct cs_job *j, struct job_error *err)
{
    cs_stop(j, err);
    cs_pump(j);
}

static void cs_free_rows(struct cs_job *j)
{
    for (size_t i = 0; i < j->nrows; i++) {
        struct cs_row *r = &j->rows[i];
        free(r->identifier);
        free(r->name);
        free(r->email);
        free(r->phone);
        free(r->attributes);
        json_decref(r->body);
    }
    free(j->rows);
    j->rows = NULL;
    j->nrows = j->next = j->ndeferred = 0;
}

static void cs_free(struct cs_job *j)
{
    cs_free_rows(j);
    free(j->after);
    free(j->last_error);
    free(j);
}

/* ---- the end: done, after the timer is closed ----------------------------------------- */

static void cs_done(struct cs_job *j)
{
    struct job_ctx *ctx = j->ctx;
    struct job_error *err = j->done_err;
    if (!err && j->run_id[0])
        log_job(LOG_INFO, j->jid, PIPELINE_CONTACT_SYNC,
                "contact sync %s%s: %lld rows, %lld unchanged, %lld created, %lld updated, "
                "%lld failed, %lld without identifier%s",
                j->full ? "full" : "delta", j->shadow ? " (shadow)" : "", j->seen, j->unchanged,
                j->created, j->updated, j->failed, j->missing, j->shadow ? ", nothing sent" : "");
    cs_free(j);
    job_ctx_set_state(ctx, NULL);
    job_done(ctx, err);
}

static void cs_on_timer_closed(uv_handle_t *h)
{
    cs_done(h->data);
}

static void cs_end(struct cs_job *j)
{
    if (j->lock_conn) {
        pg_conn_release(j->lock_conn);
        j->lock_conn = NULL;
    }
    if (j->has_timer) {
        j->has_timer = 0;
        uv_close((uv_handle_t *)&j->timer, cs_on_timer_closed);
        return;
    }
    cs_done(j);
}

static void cs_on_unlocked(const struct pg_result *r, void *arg)
{
    (void)r; /* a lost connection lost the lock too */
    cs_end(arg);
}

static void cs_unlock(struct cs_job *j)
{
    static const char sql[] =
        "SELECT pg_advisory_unlock(hashtext('tierone:contact_sync'), $1::int)";
    const char *params[] = {j->account};
    if (j->locked && j->lock_conn &&
        pg_conn_query(j->lock_conn, sql, 1, params, cs_on_unlocked, j) == 0)
        return;
    cs_end(j);
}

static void cs_on_run_saved(const struct pg_result *r, void *arg)
{
    struct cs_job *j = arg;
    if (!pg_result_ok(r) && !j->done_err)
        j->done_err = pg_result_job_error(r, "contact sync: saving the run");
    cs_unlock(j);
}

/* Every row is done (or the pass stopped and nothing is in flight): save the run. */
static void cs_finish(struct cs_job *j)
{
    static const char sql[] =
        "UPDATE contact_sync_runs SET state = $2, finished_at = now(), rows_seen = $3, "
        "unchanged = $4, created = $5, updated = $6, failed = $7, missing_identifier = $8, "
        "shadowed = $9, last_error = $10 WHERE id = $1";
    cs_free_rows(j);
    j->done_err = j->stop;
    j->stop = NULL;
    if (!j->run_id[0]) {
        cs_unlock(j);
        return;
    }
    char n[7][24];
    long long v[7] = {j->seen,   j->unchanged, j->created, j->updated,
                      j->failed, j->missing,   j->shadowed};
    for (int i = 0; i < 7; i++)
        snprintf(n[i], sizeof n[i], "%lld", v[i]);
    const char *last = j->done_err ? j->done_err->error_message : j->last_error;
    const char *params[] = {
        j->run_id, j->done_err ? "failed" : "ok", n[0], n[1], n[2], n[3], n[4], n[5], n[6], last};
    if (pg_query(j->p->pg, sql, 10, params, cs_on_run_saved, j) != 0)
        cs_unlock(j);
}

/* ---- rows ----------------------------------------------------------------------------- */

static int cs_email_ok(const char *s)
{
    const char *at = strchr(s, '@');
    if (!at || at == s || !at[1] || strchr(at + 1, '@'))
        return 0;
    for (const char *c = s; *c; c++)
        if (isspace((unsigned char)*c))
            return 0;
    return 1;
}

/* E.164: + then 2 to 15 digits, the first not 0. */
static int cs_phone_ok(const char *s)
{
    if (s[0] != '+' || s[1] < '1' || s[1] > '9')
        return 0;
    size_t n = 0;
    for (const char *c = s + 1; *c; c++, n++)
        if (*c < '0' || *c > '9')
            return 0;
    return n >= 2 && n <= 15;
}

static int cs_set_string(json_t *o, const char *key, const char *v)
{
    if (!v || !*v)
        return 0;
    json_t *s = json_string(v);
    if (!s)
        return -1;
    json_object_set_new(o, key, s);
    return 0;
}

/* Check the row and build its body. Returns NULL, or why the row is bad (static). */
static const char *cs_row_build(struct cs_row *r)
{
    if (r->email && *r->email && !cs_email_ok(r->email))
        return "invalid e-mail address";
    if (r->phone && *r->phone && !cs_phone_ok(r->phone))
        return "invalid phone number (E.164 expected, e.g. +4915112345678)";
    json_t *attrs = NULL;
    if (r->attributes && *r->attributes) {
        attrs = json_loads(r->attributes, 0, NULL);
        if (!json_is_object(attrs)) {
            json_decref(attrs);
            return "attributes is not a JSON object";
        }
    }
    json_t *b = json_object();
    if (cs_set_string(b, "identifier", r->identifier) || cs_set_string(b, "name", r->name) ||
        cs_set_string(b, "email", r->email) || cs_set_string(b, "phone_number", r->phone)) {
        json_decref(b);
        json_decref(attrs);
        return "not valid UTF-8";
    }
    if (attrs)
        json_object_set_new(b, "custom_attributes", attrs);
    r->body = b;
    return NULL;
}

/* The hash of the row's fields: each as length:bytes (NULL as "-"), the attributes with
 * their keys sorted when they parse, so a reordering is not a change. */
static void cs_row_hash(struct cs_row *r)
{
    struct buf b = BUF_INIT;
    const char *f[4] = {r->identifier, r->name, r->email, r->phone};
    for (int i = 0; i < 4; i++) {
        if (f[i])
            buf_printf(&b, "%zu:%s;", strlen(f[i]), f[i]);
        else
            buf_puts(&b, "-;");
    }
    json_t *a = r->attributes ? json_loads(r->attributes, 0, NULL) : NULL;
    char *canon = a ? json_dumps(a, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    const char *attrs = canon ? canon : r->attributes;
    if (attrs)
        buf_printf(&b, "%zu:%s;", strlen(attrs), attrs);
    else
        buf_puts(&b, "-;");
    free(canon);
    json_decref(a);
    digest_sha256_hex(b.data, b.len, r->hash);
    buf_free(&b);
}

static void cs_row_finished(struct cs_row *r)
{
    struct cs_job *j = r->job;
    j->inflight--;
    cs_pump(j);
}

static void cs_on_recorded(const struct pg_result *res, void *arg)
{
    struct cs_row *r = arg;
    struct cs_job *j = r->job;
    if (!pg_result_ok(res))
        cs_stop(j, pg_result_job_error(res, "contact sync: recording a contact"));
    cs_row_finished(r);
}

static void cs_record(struct cs_row *r, const char *sql, int n, const char *const *params)
{
    if (pg_query(r->job->p->pg, sql, n, params, cs_on_recorded, r) != 0) {
        cs_stop(r->job, pg_pool_closing_error("contact sync"));
        cs_row_finished(r);
    }
}

static void cs_record_bad(struct cs_row *r, const char *reason)
{
    static const char sql[] =
        "INSERT INTO contact_links (account_id, identifier, contact_id, last_error, "
        "failed_hash, failed_at) VALUES ($1, $2, $3, $4, $5, now()) "
        "ON CONFLICT (account_id, identifier) DO UPDATE SET "
        "contact_id = coalesce(EXCLUDED.contact_id, contact_links.contact_id), "
        "last_error = EXCLUDED.last_error, failed_hash = EXCLUDED.failed_hash, failed_at = now()";
    struct cs_job *j = r->job;
    log_job(LOG_WARN, j->jid, PIPELINE_CONTACT_SYNC, "contact sync: skipping contact %s: %s",
            r->identifier, reason);
    j->failed++;
    free(j->last_error);
    j->last_error = xasprintf("%s: %s", r->identifier, reason);
    char id[24];
    snprintf(id, sizeof id, "%lld", r->contact_id);
    const char *params[] = {j->account, r->identifier, r->contact_id > 0 ? id : NULL, reason,
                            r->hash};
    cs_record(r, sql, 5, params);
}

static void cs_record_ok(struct cs_row *r)
{
    static const char sql[] =
        "INSERT INTO contact_links (account_id, identifier, contact_id, synced_hash, synced_at) "
        "VALUES ($1, $2, $3, $4, now()) ON CONFLICT (account_id, identifier) DO UPDATE SET "
        "contact_id = EXCLUDED.contact_id, synced_hash = EXCLUDED.synced_hash, "
        "synced_at = now(), last_error = NULL, failed_hash = NULL, failed_at = NULL";
    struct cs_job *j = r->job;
    if (strcmp(r->outcome, "created") == 0)
        j->created++;
    else
        j->updated++;
    char id[24];
    snprintf(id, sizeof id, "%lld", r->contact_id);
    const char *params[] = {j->account, r->identifier, id, r->hash};
    cs_record(r, sql, 4, params);
}

static void cs_record_shadow(struct cs_row *r)
{
    static const char sql[] =
        "INSERT INTO contact_links (account_id, identifier, shadow_action, shadow_payload, "
        "shadow_hash, shadow_at) VALUES ($1, $2, $3, $4::jsonb, $5, now()) "
        "ON CONFLICT (account_id, identifier) DO UPDATE SET shadow_action = "
        "EXCLUDED.shadow_action, shadow_payload = EXCLUDED.shadow_payload, "
        "shadow_hash = EXCLUDED.shadow_hash, shadow_at = now()";
    struct cs_job *j = r->job;
    const char *action = r->contact_id > 0 ? "update" : "create";
    char *body = json_dumps(r->body, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (r->contact_id > 0)
        log_job(LOG_INFO, j->jid, PIPELINE_CONTACT_SYNC,
                "shadow: would update contact %lld (%s): %s", r->contact_id, r->identifier, body);
    else
        log_job(LOG_INFO, j->jid, PIPELINE_CONTACT_SYNC,
                "shadow: would create (or find and update) contact %s: %s", r->identifier, body);
    j->shadowed++;
    const char *params[] = {j->account, r->identifier, action, body, r->hash};
    cs_record(r, sql, 5, params);
    free(body);
}

/* Wait for a rate-limit token: in process when it comes soon, else reschedule the job. */
static void cs_on_resume(uv_timer_t *t)
{
    struct cs_job *j = t->data;
    j->paused = 0;
    cs_pump(j);
}

static void cs_defer(struct cs_row *r, struct job_error *err)
{
    struct cs_job *j = r->job;
    double at = err->retry_at, wait = at - clock_wall_s();
    j->deferred[j->ndeferred++] = (size_t)(r - j->rows);
    j->inflight--;
    if (wait > CS_PAUSE_MAX_S) {
        cs_fail(j, err);
        return;
    }
    job_error_free(err);
    if (!j->has_timer) {
        uv_timer_init(job_ctx_loop(j->ctx), &j->timer);
        j->timer.data = j;
        j->has_timer = 1;
    }
    if (!j->paused || at > j->pause_until) {
        j->paused = 1;
        j->pause_until = at;
        uv_timer_start(&j->timer, cs_on_resume, wait > 0 ? (uint64_t)(wait * 1000) + 1 : 0, 0);
    }
    cs_pump(j);
}

static int cs_class_is(const struct job_error *e, const char *suffix)
{
    size_t n = e->error_class ? strlen(e->error_class) : 0, m = strlen(suffix);
    return n >= m && strcmp(e->error_class + n - m, suffix) == 0;
}

/* A Chatwoot call about row r failed with err (owned). */
static void cs_row_failed(struct cs_row *r, struct job_error *err)
{
    struct cs_job *j = r->job;
    if (err->kind == JOB_ERR_RESCHEDULE) {
        cs_defer(r, err);
        return;
    }
    if (err->kind != JOB_ERR_PERMANENT || cs_class_is(err, "::Unauthorized") ||
        cs_class_is(err, "::Forbidden") || cs_class_is(err, "::TransportError")) {
        cs_stop(j, err);
        cs_row_finished(r);
        return;
    }
    if (cs_class_is(err, "::NotFound") && r->step != CS_STEP_UPDATE) {
        cs_stop(j, err); /* filter or create: the account itself is not there */
        cs_row_finished(r);
        return;
    }
    if (r->step == CS_STEP_UPDATE && cs_class_is(err, "::NotFound") && !r->relinked) {
        job_error_free(err);
        r->relinked = 1;
        r->contact_id = 0;
        r->step = CS_STEP_FILTER;
        cs_row_call(r);
        return;
    }
    cs_record_bad(r, err->error_message ? err->error_message : "refused by Chatwoot");
    job_error_free(err);
}

static void cs_on_written(struct job_error *err, json_t *result, void *arg)
{
    struct cs_row *r = arg;
    if (err) {
        cs_row_failed(r, err);
        return;
    }
    json_int_t id = json_integer_value(json_object_get(result, "id"));
    if (id > 0)
        r->contact_id = id;
    if (r->contact_id <= 0) {
        cs_stop(r->job, cs_error(JOB_ERR_RETRY, "Tierone::Chatwoot::BadResponse",
                                 "contact sync: Chatwoot answered without a contact id"));
        cs_row_finished(r);
        return;
    }
    r->outcome = r->step == CS_STEP_CREATE ? "created" : "updated";
    cs_record_ok(r);
}

static void cs_on_filtered(struct job_error *err, json_t *result, void *arg)
{
    struct cs_row *r = arg;
    if (err) {
        cs_row_failed(r, err);
        return;
    }
    json_t *list = json_object_get(result, "payload"), *c;
    size_t i;
    json_array_foreach(list, i, c)
    {
        const char *ident = json_string_value(json_object_get(c, "identifier"));
        json_int_t id = json_integer_value(json_object_get(c, "id"));
        if (ident && strcmp(ident, r->identifier) == 0 && id > 0) {
            r->contact_id = id;
            break;
        }
    }
    r->step = r->contact_id > 0 ? CS_STEP_UPDATE : CS_STEP_CREATE;
    cs_row_call(r);
}

/* Make the row's current Chatwoot call. */
static void cs_row_call(struct cs_row *r)
{
    struct cs_job *j = r->job;
    struct chatwoot *cw = j->p->chatwoot;
    long account = atol(j->account);
    int rc;
    switch (r->step) {
    case CS_STEP_FILTER:
        rc = chatwoot_filter_contacts(cw, j->jid, account, "identifier", r->identifier,
                                      cs_on_filtered, r);
        break;
    case CS_STEP_CREATE:
        rc = chatwoot_create_contact(cw, j->jid, account, r->body, cs_on_written, r);
        break;
    case CS_STEP_UPDATE:
        rc = chatwoot_update_contact(cw, j->jid, account, (long)r->contact_id, r->body,
                                     cs_on_written, r);
        break;
    default:
        abort();
    }
    if (rc != 0)
        cs_record_bad(r, chatwoot_last_error(cw));
}

static void cs_row_begin(struct cs_row *r)
{
    r->started = 1;
    const char *bad = cs_row_build(r);
    if (bad) {
        cs_record_bad(r, bad);
        return;
    }
    if (r->job->shadow) {
        cs_record_shadow(r);
        return;
    }
    r->step = r->contact_id > 0 ? CS_STEP_UPDATE : CS_STEP_FILTER;
    cs_row_call(r);
}

enum cs_next { CS_WAIT, CS_FINISH, CS_PAGE_DONE };

/* Start rows up to the window; say what comes next. */
static enum cs_next cs_pump_step(struct cs_job *j)
{
    while (!j->stop && !j->paused && j->inflight < CS_WINDOW) {
        struct cs_row *r;
        if (j->ndeferred) {
            r = &j->rows[j->deferred[0]];
            memmove(j->deferred, j->deferred + 1, --j->ndeferred * sizeof j->deferred[0]);
        } else {
            while (j->next < j->nrows && j->rows[j->next].skip)
                j->next++;
            if (j->next >= j->nrows)
                break;
            r = &j->rows[j->next++];
        }
        j->inflight++;
        if (r->started)
            cs_row_call(r);
        else
            cs_row_begin(r);
    }
    if (j->inflight > 0)
        return CS_WAIT;
    if (j->stop)
        return CS_FINISH;
    if (j->paused || j->ndeferred > 0 || j->next < j->nrows)
        return CS_WAIT;
    return j->nrows < CS_PAGE ? CS_FINISH : CS_PAGE_DONE;
}

/* Drive the pass after any change. A row that fails at once (inside cs_pump_step) calls
 * back into cs_pump: that only asks the running loop for one more round, so the job is
 * never freed under it. */
static void cs_pump(struct cs_job *j)
{
    if (j->pumping) {
        j->repump = 1;
        return;
    }
    j->pumping = 1;
    enum cs_next next;
    do {
        j->repump = 0;
        next = cs_pump_step(j);
    } while (next == CS_WAIT && j->repump);
    j->pumping = 0;
    if (next == CS_FINISH) {
        cs_finish(j);
    } else if (next == CS_PAGE_DONE) {
        free(j->after);
        j->after = xstrdup(j->rows[j->nrows - 1].identifier);
        cs_free_rows(j);
        cs_next_page(j);
    }
}

/* ---- pages ---------------------------------------------------------------------------- */

static struct cs_row *cs_find_row(struct cs_job *j, const char *identifier)
{
    for (size_t i = 0; i < j->nrows; i++)
        if (strcmp(j->rows[i].identifier, identifier) == 0)
            return &j->rows[i];
    return NULL;
}

static void cs_on_links(const struct pg_result *res, void *arg)
{
    struct cs_job *j = arg;
    if (!pg_result_ok(res)) {
        cs_fail(j, pg_result_job_error(res, "contact sync: reading contact_links"));
        return;
    }
    for (int i = 0; i < pg_result_nrows(res); i++) {
        struct cs_row *r = cs_find_row(j, pg_result_value(res, i, 0));
        if (!r)
            continue;
        const char *id = pg_result_value(res, i, 1), *synced = pg_result_value(res, i, 2),
                   *failed = pg_result_value(res, i, 3), *shadow = pg_result_value(res, i, 4);
        r->contact_id = id ? atoll(id) : 0;
        if (synced && strcmp(synced, r->hash) == 0) {
            r->skip = 1;
            j->unchanged++;
        } else if (failed && strcmp(failed, r->hash) == 0 && !j->full) {
            r->skip = 1; /* refused with these very fields: the full pass tries again */
        } else if (j->shadow && shadow && strcmp(shadow, r->hash) == 0) {
            r->skip = 1;
        }
    }
    cs_pump(j);
}

static void cs_read_links(struct cs_job *j)
{
    static const char sql[] =
        "SELECT identifier, contact_id, synced_hash, failed_hash, shadow_hash FROM contact_links "
        "WHERE account_id = $1 AND identifier IN (SELECT jsonb_array_elements_text($2::jsonb))";
    json_t *ids = json_array();
    for (size_t i = 0; i < j->nrows; i++) {
        json_t *s = json_string(j->rows[i].identifier);
        if (s)
            json_array_append_new(ids, s);
    }
    char *text = json_dumps(ids, JSON_COMPACT);
    json_decref(ids);
    const char *params[] = {j->account, text};
    int rc = pg_query(j->p->pg, sql, 2, params, cs_on_links, j);
    free(text);
    if (rc != 0) {
        cs_fail(j, pg_pool_closing_error("contact sync"));
    }
}

static char *cs_dup_value(const struct pg_result *res, int row, int col)
{
    const char *v = pg_result_value(res, row, col);
    return v ? xstrdup(v) : NULL;
}

static void cs_on_page(const struct pg_result *res, void *arg)
{
    struct cs_job *j = arg;
    if (!pg_result_ok(res)) {
        cs_fail(j, pg_result_job_error(res, "contact sync: the contact query"));
        return;
    }
    if (j->stop) {
        cs_pump(j);
        return;
    }
    int n = pg_result_nrows(res);
    j->rows = xcalloc(n > 0 ? (size_t)n : 1, sizeof *j->rows);
    j->nrows = (size_t)n;
    for (int i = 0; i < n; i++) {
        struct cs_row *r = &j->rows[i];
        r->job = j;
        r->identifier = cs_dup_value(res, i, 0);
        r->name = cs_dup_value(res, i, 1);
        r->email = cs_dup_value(res, i, 2);
        r->phone = cs_dup_value(res, i, 3);
        r->attributes = cs_dup_value(res, i, 4);
        if (!r->identifier)
            r->identifier = xstrdup("");
        cs_row_hash(r);
    }
    j->seen += n;
    if (n == 0) {
        cs_finish(j);
        return;
    }
    cs_read_links(j);
}

static void cs_next_page(struct cs_job *j)
{
    struct cs_sched *s = j->s;
    const char *params[2] = {j->since, j->after ? j->after : ""};
    const char *const *pp = s->uses_since ? params : params + 1;
    if (pg_query(cs_source(s), s->page_sql, s->uses_since ? 2 : 1, pp, cs_on_page, j) != 0) {
        cs_fail(j, pg_pool_closing_error("contact sync source"));
    }
}

static void cs_on_missing(const struct pg_result *res, void *arg)
{
    struct cs_job *j = arg;
    if (!pg_result_ok(res)) {
        cs_fail(j, pg_result_job_error(res, "contact sync: the contact query"));
        return;
    }
    if (j->stop) {
        cs_pump(j);
        return;
    }
    const char *n = pg_result_value(res, 0, 0);
    j->missing = n ? atoll(n) : 0;
    if (j->missing > 0) {
        log_job(LOG_WARN, j->jid, PIPELINE_CONTACT_SYNC,
                "contact sync: %lld rows have no identifier and are not synced", j->missing);
        free(j->last_error);
        j->last_error = xasprintf("%lld rows without identifier", j->missing);
    }
    cs_next_page(j);
}

static void cs_on_run(const struct pg_result *res, void *arg)
{
    struct cs_job *j = arg;
    if (!pg_result_ok(res) || pg_result_nrows(res) != 1) {
        cs_fail(j, pg_result_ok(res) ? cs_error(JOB_ERR_RETRY, CS_ERR_CLASS, "no run row")
                                     : pg_result_job_error(res, "contact sync: starting a run"));
        return;
    }
    snprintf(j->run_id, sizeof j->run_id, "%s", pg_result_value(res, 0, 0));
    const char *since = pg_result_value(res, 0, 1);
    snprintf(j->since, sizeof j->since, "%s", j->full || !since ? CS_EPOCH : since);
    if (j->stop) {
        cs_pump(j);
        return;
    }
    struct cs_sched *s = j->s;
    const char *params[] = {j->since};
    if (pg_query(cs_source(s), s->missing_sql, s->uses_since ? 1 : 0, params, cs_on_missing, j) !=
        0) {
        cs_fail(j, pg_pool_closing_error("contact sync source"));
    }
}

static void cs_start_run(struct cs_job *j)
{
    static const char sql[] =
        "WITH last AS (SELECT max(started_at) - interval '1 minute' AS t FROM contact_sync_runs "
        "WHERE account_id = $1 AND state = 'ok'), "
        "ins AS (INSERT INTO contact_sync_runs (account_id, mode, jid, shadow) "
        "VALUES ($1, $2, $3, $4::boolean) RETURNING id) "
        "SELECT ins.id, to_char(last.t AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') "
        "FROM ins, last";
    const char *params[] = {j->account, j->full ? "full" : "delta", j->jid,
                            j->shadow ? "true" : "false"};
    if (pg_query(j->p->pg, sql, 4, params, cs_on_run, j) != 0) {
        cs_fail(j, pg_pool_closing_error("contact sync"));
    }
}

static void cs_on_locked(const struct pg_result *res, void *arg)
{
    struct cs_job *j = arg;
    if (!pg_result_ok(res)) {
        cs_fail(j, pg_result_job_error(res, "contact sync: taking the lock"));
        return;
    }
    const char *got = pg_result_value(res, 0, 0);
    if (got && strcmp(got, "t") == 0) {
        j->locked = 1;
        if (j->stop)
            cs_pump(j);
        else
            cs_start_run(j);
        return;
    }
    if (j->full)
        cs_stop(j, job_error_reschedule(clock_wall_s() + CS_BUSY_RETRY_S, CS_ERR_CLASS "::Busy",
                                        "another contact sync pass is running"));
    else
        log_job(LOG_INFO, j->jid, PIPELINE_CONTACT_SYNC,
                "contact sync: another pass is running; this delta pass has nothing to add");
    cs_pump(j);
}

static void cs_on_conn(struct pg_conn *conn, const struct pg_result *err, void *arg)
{
    struct cs_job *j = arg;
    static const char sql[] =
        "SELECT pg_try_advisory_lock(hashtext('tierone:contact_sync'), $1::int)";
    if (!conn) {
        cs_fail(j, pg_result_job_error(err, "contact sync: a connection for the lock"));
        return;
    }
    j->lock_conn = conn;
    const char *params[] = {j->account};
    if (pg_conn_query(conn, sql, 1, params, cs_on_locked, j) != 0) {
        cs_fail(j, pg_pool_closing_error("contact sync"));
    }
}

/* ---- the job type --------------------------------------------------------------------- */

static void cs_perform(struct job_ctx *ctx)
{
    const struct job *jb = job_ctx_job(ctx);
    struct pipeline *p = pipeline_of(ctx);
    json_t *a = jb->args ? json_array_get(jb->args, 0) : NULL;
    const char *mode = a ? json_string_value(a) : "delta";
    if (!mode || (strcmp(mode, "delta") != 0 && strcmp(mode, "full") != 0) ||
        json_array_size(jb->args) > 1) {
        job_done(ctx, job_error_new(JOB_ERR_PERMANENT, "ArgumentError",
                                    "%s expects args [] or [\"delta\"] or [\"full\"]",
                                    PIPELINE_CONTACT_SYNC));
        return;
    }
    struct cs_sched *s = p->contact_sync;
    if (!s) {
        job_done(ctx, job_error_new(JOB_ERR_PERMANENT, CS_ERR_CLASS "::NotConfigured",
                                    "contact sync is off: set TIERONE_CONTACT_SYNC_SQL"));
        return;
    }
    int shadow = pipeline_shadow(p, inbox_config_get(p->inboxes, 0));
    const char *token = p->cfg->chatwoot_user_token;
    if (!shadow && (!p->chatwoot || !token || !*token)) {
        job_done(ctx, job_error_new(JOB_ERR_PERMANENT, CS_ERR_CLASS "::NotConfigured",
                                    "contact sync needs Chatwoot with a user (administrator) "
                                    "token: set CHATWOOT_USER_TOKEN"));
        return;
    }
    struct cs_job *j = xcalloc(1, sizeof *j);
    j->ctx = ctx;
    j->p = p;
    j->s = s;
    j->jid = jb->jid ? jb->jid : "";
    j->full = strcmp(mode, "full") == 0;
    j->shadow = shadow;
    snprintf(j->account, sizeof j->account, "%lld", p->cfg->contact_sync_account);
    job_ctx_set_state(ctx, j);
    if (pg_pool_acquire(p->pg, cs_on_conn, j) != 0) {
        cs_fail(j, pg_pool_closing_error("contact sync"));
    }
}

/* Hard shutdown: stop starting rows; the pass ends when the calls in flight come back. */
static void cs_cancel(struct job_ctx *ctx)
{
    struct cs_job *j = job_ctx_get_state(ctx);
    if (!j)
        return;
    int idle = j->paused && j->inflight == 0;
    cs_stop(j, job_error_new(JOB_ERR_RETRY, CS_ERR_CLASS "::Cancelled", "worker shutdown"));
    if (idle)
        cs_pump(j);
}

const struct job_type contact_sync_type = {PIPELINE_CONTACT_SYNC, cs_perform, cs_cancel};

/* ---- the scheduler -------------------------------------------------------------------- */

static void cs_sched_maybe_free(struct cs_sched *s)
{
    if (s->stopping && !s->has_timer && s->pending == 0) {
        free(s->page_sql);
        free(s->missing_sql);
        free(s);
    }
}

struct cs_push {
    struct cs_sched *s;
    long long slot;
};

static void cs_on_pushed(const char *error, void *data)
{
    struct cs_push *c = data;
    struct cs_sched *s = c->s;
    if (error)
        log_warn("contact sync: enqueueing the pass of slot %lld failed: %s", c->slot, error);
    s->pending--;
    free(c);
    cs_sched_maybe_free(s);
}

static void cs_push_pass(struct cs_push *c)
{
    struct cs_sched *s = c->s;
    struct worker *w = s->p->w;
    long long start = c->slot * s->interval;
    int full = start % CS_DAY_MS < s->interval;
    char extra[64];
    snprintf(extra, sizeof extra, "{\"tierone_slot\":%lld}", c->slot);
    struct sidekiq_job_spec spec = {
        .klass = PIPELINE_CONTACT_SYNC,
        .queue = "sync",
        .args = full ? "[\"full\"]" : "[\"delta\"]",
        .retry = SIDEKIQ_RETRY_MAX,
        .retry_max = CS_RETRIES,
        .extra = extra,
    };
    struct sidekiq_opts opts = {.ts_format = (enum job_ts_format)w->cfg->timestamp_format};
    char err[256];
    if (s->stopping || !w->redis ||
        sidekiq_push(w->redis, &opts, &spec, NULL, cs_on_pushed, c, err, sizeof err) != 0) {
        log_warn("contact sync: cannot enqueue the pass of slot %lld: %s", c->slot,
                 s->stopping || !w->redis ? "the worker is closing" : err);
        s->pending--;
        free(c);
        cs_sched_maybe_free(s);
    }
}

static void cs_on_claimed(struct redis *r, redisReply *reply, void *data)
{
    (void)r;
    struct cs_push *c = data;
    if (reply && reply->type == REDIS_REPLY_STATUS) {
        cs_push_pass(c); /* ours: keeps the pending count */
        return;
    }
    if (!reply || reply->type == REDIS_REPLY_ERROR)
        log_warn("contact sync: claiming slot %lld failed: %s", c->slot,
                 reply ? reply->str : "Redis connection lost");
    struct cs_sched *s = c->s;
    s->pending--;
    free(c);
    cs_sched_maybe_free(s);
}

static void cs_on_tick(uv_timer_t *t)
{
    struct cs_sched *s = t->data;
    long long now = (long long)clock_wall_ms(), slot = now / s->interval;
    long long wait = (slot + 1) * s->interval - now;
    uv_timer_start(&s->timer, cs_on_tick, (uint64_t)wait, 0);
    if (slot == s->last_slot || s->stopping)
        return;
    s->last_slot = slot;
    struct worker *w = s->p->w;
    if (!w->redis || !redis_is_up(w->redis)) {
        log_warn("contact sync: Redis is down; slot %lld is skipped", slot);
        return;
    }
    struct cs_push *c = xcalloc(1, sizeof *c);
    c->s = s;
    c->slot = slot;
    char key[96], px[32];
    snprintf(key, sizeof key, CS_CRON_KEY "%lld", slot);
    snprintf(px, sizeof px, "%lld", s->interval * 2);
    const char *argv[] = {"SET", key, w->identity, "NX", "PX", px};
    if (redis_command_argv(w->redis, cs_on_claimed, c, 6, argv, NULL) != 0) {
        log_warn("contact sync: Redis is down; slot %lld is skipped", slot);
        free(c);
        return;
    }
    s->pending++;
}

/* The operator's query without trailing blanks and semicolons (new string). */
static char *cs_trim_sql(const char *sql)
{
    size_t n = strlen(sql);
    while (n > 0 && (isspace((unsigned char)sql[n - 1]) || sql[n - 1] == ';'))
        n--;
    return xstrndup(sql, n);
}

int contact_sync_start(struct pipeline *p, char *err, size_t errcap)
{
    const struct pipeline_settings *cfg = p->cfg;
    if (p->contact_sync || !cfg->contact_sync_sql || !*cfg->contact_sync_sql)
        return 0;
    if (cfg->contact_sync_account <= 0) {
        snprintf(err, errcap,
                 "contact sync: TIERONE_CONTACT_SYNC_ACCOUNT must be a Chatwoot "
                 "account id (> 0)");
        return -1;
    }
    struct cs_sched *s = xcalloc(1, sizeof *s);
    s->p = p;
    s->last_slot = -1;
    s->interval = cfg->contact_sync_interval_ms > 0 ? cfg->contact_sync_interval_ms : 0;
    const char *url = cfg->contact_sync_database_url;
    if (url && *url && (!cfg->database_url || strcmp(url, cfg->database_url) != 0)) {
        struct pg_pool_opts po = {
            .conninfo = url,
            .size = CS_SOURCE_POOL,
            .query_timeout_ms = 300000,
            .application_name = "tierone-contact-sync",
            .no_prepare = !cfg->database_prepare,
        };
        char *why = NULL;
        s->own = pg_pool_new(p->w->loop, &po, &why);
        if (!s->own) {
            snprintf(err, errcap, "contact sync: database URL: %s", why ? why : "invalid");
            free(why);
            free(s);
            return -1;
        }
    }
    char *q = cs_trim_sql(cfg->contact_sync_sql);
    s->uses_since = strstr(q, "$1") != NULL;
    s->page_sql = xasprintf("SELECT src.identifier::text, src.name::text, src.email::text, "
                            "src.phone::text, src.attributes::text FROM (%s) AS src "
                            "WHERE src.identifier::text > $%d ORDER BY 1 LIMIT %d",
                            q, s->uses_since ? 2 : 1, CS_PAGE);
    s->missing_sql = xasprintf("SELECT count(*) FROM (%s) AS src "
                               "WHERE coalesce(src.identifier::text, '') = ''",
                               q);
    free(q);
    p->contact_sync = s;
    if (s->interval > 0) {
        uv_timer_init(p->w->loop, &s->timer);
        s->timer.data = s;
        s->has_timer = 1;
        uv_unref((uv_handle_t *)&s->timer);
        long long now = (long long)clock_wall_ms();
        uv_timer_start(&s->timer, cs_on_tick,
                       (uint64_t)((now / s->interval + 1) * s->interval - now), 0);
    }
    log_info("contact sync: account %lld, %s, from %s%s", cfg->contact_sync_account,
             s->interval > 0 ? "scheduled" : "not scheduled (enqueue Tierone::ContactSync)",
             s->own ? "its own database" : "the pipeline's database",
             s->uses_since ? ", delta passes bind $1" : "");
    return 0;
}

static void cs_on_sched_timer_closed(uv_handle_t *h)
{
    struct cs_sched *s = h->data;
    s->has_timer = 0;
    cs_sched_maybe_free(s);
}

void contact_sync_stop(struct pipeline *p)
{
    struct cs_sched *s = p->contact_sync;
    if (!s)
        return;
    p->contact_sync = NULL;
    s->stopping = 1;
    if (s->own) {
        pg_pool_close(s->own, NULL, NULL);
        s->own = NULL;
    }
    if (s->has_timer) {
        uv_close((uv_handle_t *)&s->timer, cs_on_sched_timer_closed);
        return;
    }
    cs_sched_maybe_free(s);
}
