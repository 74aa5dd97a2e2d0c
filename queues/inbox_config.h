/* inbox_config: the per-inbox settings of the support pipeline (a JSON file, optional).
 *
 *   {"defaults": {"statuses": ["pending"], "knowledge_base": "docs", ...},
 *    "inboxes":  {"3": {"enabled": false}, "7": {"knowledge_base": "billing", ...}}}
 *
 * Every key of an inbox object is optional: an inbox inherits "defaults", which inherit the
 * built-in values below (the worker's environment fills some: debounce, model, Slack URL,
 * Linear team, shadow). An inbox the file does not name gets the defaults. Unknown keys,
 * wrong types and out-of-range values are errors naming the key ("inboxes.7.temperature:
 * must be a number between 0 and 2"), so a typo never silently changes behaviour.
 *
 * Keys (built-in default):
 *   enabled                bool   true     the bot acts in this inbox
 *   statuses               [str]  ["pending"]  conversation statuses the bot serves
 *                                          ("pending", "open"; others are refused)
 *   knowledge_base         str    "default"
 *   model                  str    (LLM_MODEL)
 *   prompt                 str    (built-in persona; see decide.c)
 *   temperature            num    0.2      0..2
 *   score_threshold        num    0.5      0..1, retrieval-only answers and citations
 *   passages               int    5        1..20 passages given to the model
 *   debounce_ms            int    (TIERONE_DEBOUNCE) 0..600000
 *   max_replies_per_hour   int    20       per conversation; beyond: escalate
 *   handoff_label          str    "needs-human"
 *   linear_team_id         str    (LINEAR_TEAM_ID); "" = no Linear issues for this inbox
 *   linear_categories      [str]  ["bug"]  categories that open a Linear issue
 *   slack_webhook_url      str    (SLACK_WEBHOOK_URL); "" = no Slack message
 *   shadow                 bool   (TIERONE_SHADOW)
 * Categories: question, bug, feature, account, billing. */
#ifndef TIERONE_INBOX_CONFIG_H
#define TIERONE_INBOX_CONFIG_H

#include <stddef.h>

#define INBOX_MAX_CATEGORIES 5

struct inbox_settings {
    long long inbox_id; /* 0 for the defaults */
    int enabled;
    int serve_pending; /* "pending" in statuses */
    int serve_open;    /* "open" in statuses */
    const char *knowledge_base;
    const char *model;  /* NULL: the LLM client's model */
    const char *prompt; /* NULL: the built-in prompt */
    double temperature;
    double score_threshold;
    int passages;
    long long debounce_ms;
    long long max_replies_per_hour;
    const char *handoff_label;
    const char *linear_team_id; /* NULL or "": no Linear issue */
    const char *linear_categories[INBOX_MAX_CATEGORIES];
    size_t nlinear_categories;
    const char *slack_webhook_url; /* NULL or "": no Slack message */
    int shadow;
};

struct inbox_config;

/* The values the environment gives (borrowed; copied by inbox_config_load). */
struct inbox_env_defaults {
    long long debounce_ms;
    const char *model;
    const char *slack_webhook_url;
    const char *linear_team_id;
    int shadow;
};

/* Load path (NULL or "": no file, every inbox gets the defaults). Returns the config, or
 * NULL with a reason in *err (caller frees) for an unreadable file, invalid JSON, or a bad
 * key or value. */
struct inbox_config *inbox_config_load(const char *path, const struct inbox_env_defaults *env,
                                       char **err);
/* The same from JSON text (tests). */
struct inbox_config *inbox_config_parse(const char *json, const struct inbox_env_defaults *env,
                                        char **err);
/* The settings of inbox_id (the defaults when the file does not name it). Never NULL;
 * valid while the config lives. */
const struct inbox_settings *inbox_config_get(const struct inbox_config *c, long long inbox_id);
/* 1 when status ("pending", "open", ...) is one the inbox serves. */
int inbox_serves_status(const struct inbox_settings *s, const char *status);
/* 1 when category routes to Linear in this inbox (and it has a Linear team). */
int inbox_routes_to_linear(const struct inbox_settings *s, const char *category);
/* 1 when category is one of the five the pipeline knows. */
int inbox_category_valid(const char *category);
void inbox_config_free(struct inbox_config *c);

#endif
