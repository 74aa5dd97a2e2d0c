/* pipeline: what the support pipeline's job types share (DESIGN.md §2): the settings, the
 * PostgreSQL pool, the service clients, the per-inbox config, and the step from one job to
 * the next. Each job type's whole life is in its own file in queues/:
 *
 *   chatwoot_event.c  Tierone::ChatwootEvent (events)   route a webhook, open a turn
 *   retrieve.c        Tierone::Retrieve      (ai)       passages for the turn's question
 *   decide.c          Tierone::Decide        (ai)       answer or escalate
 *   reply.c           Tierone::Reply         (actions)  post the answer
 *   escalate.c        Tierone::Escalate      (actions)  note, label, hand-off, Slack
 *   linear_issue.c    Tierone::LinearIssue   (linear)   file the bug in Linear
 *   private_note.c    Tierone::PrivateNote   (actions)  link the Linear issue in Chatwoot
 *   contact_sync.c    Tierone::ContactSync   (sync)     your users -> Chatwoot contacts
 *
 * Every job after the router takes one argument, the turn id (turns table,
 * migrations/0002_pipeline.sql): [42]. State lives in PostgreSQL; a job reads the turn,
 * does its step idempotently (effect.h for anything sent outside), writes its result, and
 * enqueues the next step before it finishes, so a crash at any point re-runs at most the
 * current step, which then finds its own earlier work.
 *
 * Modes: no LLM configured = retrieval-only (Decide answers from the best passage);
 * shadow (global or per inbox) = every outward effect is recorded in `effects` instead of
 * sent, and Chatwoot may be left unconfigured (jobs then skip their reads of it).
 *
 * Fail-safe: Retrieve and Decide are enqueued with ai_retries retries (default 3, so a
 * customer waits minutes, not Sidekiq's 20 days); on their last attempt a failure does not
 * fail the job but escalates the turn with "assistant unavailable"
 * (pipeline_last_attempt). */
#ifndef TIERONE_PIPELINE_H
#define TIERONE_PIPELINE_H

#include "inbox_config.h"
#include "job_error.h"
#include "job_type.h"

#include <jansson.h>
#include <stddef.h>

/* Class names. */
#define PIPELINE_EVENT        "Tierone::ChatwootEvent"
#define PIPELINE_RETRIEVE     "Tierone::Retrieve"
#define PIPELINE_DECIDE       "Tierone::Decide"
#define PIPELINE_REPLY        "Tierone::Reply"
#define PIPELINE_ESCALATE     "Tierone::Escalate"
#define PIPELINE_LINEAR_ISSUE "Tierone::LinearIssue"
#define PIPELINE_PRIVATE_NOTE "Tierone::PrivateNote"
#define PIPELINE_CONTACT_SYNC "Tierone::ContactSync"

struct worker;
struct pg_pool;
struct chatwoot;
struct llm;
struct slack;
struct linear;
struct rate_limit;

/* Settings, filled by the worker's config table (worker/main.c; each has an environment
 * variable, see --help). Strings NULL when unset. */
struct pipeline_settings {
    char *database_url;          /* TIERONE_DATABASE_URL; NULL: the pipeline is off */
    long long database_pool;     /* connections */
    int database_prepare;        /* TIERONE_DATABASE_PREPARE: prepare statements per connection */
    long long database_pipeline; /* TIERONE_DATABASE_PIPELINE: per connection */
    char *chatwoot_base_url;     /* CHATWOOT_BASE_URL */
    char *chatwoot_bot_token;    /* CHATWOOT_BOT_TOKEN */
    char *chatwoot_user_token;
    long long chatwoot_rate_per_min; /* fleet-wide; Chatwoot's rack-attack allows 3000/min/IP */
    char *llm_base_url;              /* LLM_BASE_URL; NULL: retrieval-only */
    char *llm_api_key;
    char *llm_model;
    int llm_format;      /* enum llm_format */
    int llm_token_param; /* enum llm_token_param */
    long long llm_max_tokens;
    long long llm_timeout_ms;
    long long llm_rate_per_min;
    char *slack_webhook_url;
    char *linear_api_key;
    char *linear_team_id;
    char *linear_api_url;
    long long linear_rate_per_hour; /* fleet-wide; Linear allows 1,500 (API key) or 1,200 (OAuth) */
    char *inbox_config_path;        /* TIERONE_INBOX_CONFIG */
    int shadow;                     /* TIERONE_SHADOW */
    long long debounce_ms;          /* TIERONE_DEBOUNCE */
    long long ai_retries;           /* retries of Retrieve/Decide before the fail-safe escalation */
    char *contact_sync_sql;         /* TIERONE_CONTACT_SYNC_SQL; NULL: no ContactSync */
    char *contact_sync_database_url; /* NULL: database_url */
    long long contact_sync_account;  /* Chatwoot account the contacts belong to */
    long long contact_sync_interval_ms;
};

/* The shared context. Owned by worker/main.c; job types reach it with pipeline_of(ctx). */
struct pipeline {
    struct worker *w;
    const struct pipeline_settings *cfg;
    struct inbox_config *inboxes;
    struct pg_pool *pg;
    struct chatwoot *chatwoot; /* NULL when not configured (allowed in shadow mode only) */
    struct llm *llm;           /* NULL: retrieval-only */
    struct linear *linear;     /* NULL: no Linear */
    struct rate_limit *chatwoot_limit, *llm_limit, *slack_limit, *linear_limit;
    struct pipeline_slack *slacks; /* one client per webhook URL in use, made on first use */
    void *contact_sync;            /* contact_sync.c's scheduler state */
};

/* Build the context for worker w from cfg (borrowed, must outlive it): the pool, the
 * clients, the inbox config, and register every pipeline job type on w. Logs one line
 * with the modes (LLM or retrieval-only, shadow or live, which services are on). Returns
 * 0, or -1 with a reason in err (a bad URL, an unreadable inbox config, Chatwoot missing
 * outside shadow mode). Call after worker_init, before worker_start. */
int pipeline_init(struct pipeline *p, struct worker *w, const struct pipeline_settings *cfg,
                  char *err, size_t errcap);
/* Close the pool and free the clients (the worker calls this when it closes). */
void pipeline_close(struct pipeline *p);

/* The context of a running pipeline job. */
struct pipeline *pipeline_of(struct job_ctx *ctx);

/* The turn id in the job's args ([id]); -1 after finishing the job with a permanent
 * ArgumentError when the args are not one positive integer. */
long long pipeline_turn_arg(struct job_ctx *ctx, const char *klass);

/* 1 when this run of the job is its last attempt (a failure now would exhaust its
 * retries): retry_count + 1 >= the job's retry maximum. */
int pipeline_last_attempt(const struct pipeline *p, const struct job *j);

/* Completion of pipeline_enqueue: err NULL, or a retryable error the callback owns. */
typedef void (*pipeline_enqueue_cb)(struct job_error *err, void *arg);

/* Enqueue klass (one of the names above) for turn_id on its queue (events, ai, actions,
 * linear, sync), after delay_ms (0: now; else via the schedule set), with its retry policy
 * (ai_retries for Retrieve and Decide, Sidekiq's default for the others). The jid is
 * derived from nothing: a re-run enqueues again, which the next step tolerates. Returns 0
 * and cb runs once later; -1 (cb never runs) only for an unknown class. */
int pipeline_enqueue(struct pipeline *p, const char *klass, long long turn_id, long long delay_ms,
                     pipeline_enqueue_cb cb, void *arg);

/* The Slack client for an inbox (its own webhook URL, else SLACK_WEBHOOK_URL), made on
 * first use; NULL when the inbox has none. */
struct slack *pipeline_slack(struct pipeline *p, const struct inbox_settings *inbox);

/* "<CHATWOOT_BASE_URL>/app/accounts/<a>/conversations/<c>" (new string), or "" based when
 * Chatwoot is not configured ("/app/accounts/..."). */
char *pipeline_conversation_url(const struct pipeline *p, long long account,
                                long long conversation);

/* 1 when outward effects of this inbox are recorded, not sent. */
int pipeline_shadow(const struct pipeline *p, const struct inbox_settings *inbox);

/* Each job file's type (registered by pipeline_init). */
extern const struct job_type chatwoot_event_type;
extern const struct job_type retrieve_type;
extern const struct job_type decide_type;
extern const struct job_type reply_type;
extern const struct job_type escalate_type;
extern const struct job_type linear_issue_type;
extern const struct job_type private_note_type;
extern const struct job_type contact_sync_type;

/* contact_sync.c: start the periodic enqueue of ContactSync (every
 * contact_sync_interval_ms, one pod per slot via a Redis lock) when contact_sync_sql is
 * set; stop it at close. */
int contact_sync_start(struct pipeline *p, char *err, size_t errcap);
void contact_sync_stop(struct pipeline *p);

#endif
