/* inbox_config: see inbox_config.h. The file is read once at start; every inbox's
 * settings are resolved then (built-in < environment < "defaults" < the inbox's own keys),
 * so a lookup is a scan of a short array. Strings point into the parsed JSON, which the
 * config keeps. */
#include "inbox_config.h"

#include "buf.h"
#include "xalloc.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct inbox_config {
    json_t *root; /* the file (owns every string below); NULL without one */
    struct inbox_settings defaults;
    struct inbox_settings *inboxes;
    size_t ninboxes;
    char *env_strings[3]; /* copies of the environment's strings */
};

static const char *const inbox_categories[] = {"question", "bug",     "feature",
                                               "account",  "billing", NULL};

int inbox_category_valid(const char *category)
{
    for (size_t i = 0; category && inbox_categories[i]; i++)
        if (!strcmp(category, inbox_categories[i]))
            return 1;
    return 0;
}

/* Apply the keys of object o (named where, e.g. "inboxes.7") onto s. Returns 0, or -1
 * with a reason in *err. */
static int inbox_apply(struct inbox_settings *s, json_t *o, const char *where, char **err)
{
    const char *key;
    json_t *v;
    if (!json_is_object(o)) {
        *err = xasprintf("%s: must be an object", where);
        return -1;
    }
    json_object_foreach(o, key, v)
    {
#define BAD(...)                                                                                   \
    do {                                                                                           \
        char *why_ = xasprintf(__VA_ARGS__);                                                       \
        *err = xasprintf("%s.%s: %s", where, key, why_);                                           \
        free(why_);                                                                                \
        return -1;                                                                                 \
    } while (0)
        if (!strcmp(key, "enabled") || !strcmp(key, "shadow")) {
            if (!json_is_boolean(v))
                BAD("must be true or false");
            *(!strcmp(key, "enabled") ? &s->enabled : &s->shadow) = json_is_true(v);
        } else if (!strcmp(key, "statuses")) {
            if (!json_is_array(v) || json_array_size(v) == 0)
                BAD("must be a non-empty list of \"pending\" and/or \"open\"");
            s->serve_pending = s->serve_open = 0;
            size_t i;
            json_t *e;
            json_array_foreach(v, i, e)
            {
                const char *st = json_string_value(e);
                if (st && !strcmp(st, "pending"))
                    s->serve_pending = 1;
                else if (st && !strcmp(st, "open"))
                    s->serve_open = 1;
                else
                    BAD("\"%s\" is not a status the bot can serve (pending, open)",
                        st ? st : "(not a string)");
            }
        } else if (!strcmp(key, "knowledge_base") || !strcmp(key, "model") ||
                   !strcmp(key, "prompt") || !strcmp(key, "handoff_label") ||
                   !strcmp(key, "linear_team_id") || !strcmp(key, "slack_webhook_url")) {
            if (!json_is_string(v))
                BAD("must be a string");
            const char *str = json_string_value(v);
            int may_be_empty = !strcmp(key, "linear_team_id") || !strcmp(key, "slack_webhook_url");
            if (!*str && !may_be_empty)
                BAD("must not be empty");
            if (!strcmp(key, "knowledge_base"))
                s->knowledge_base = str;
            else if (!strcmp(key, "model"))
                s->model = str;
            else if (!strcmp(key, "prompt"))
                s->prompt = str;
            else if (!strcmp(key, "handoff_label"))
                s->handoff_label = str;
            else if (!strcmp(key, "linear_team_id"))
                s->linear_team_id = str;
            else
                s->slack_webhook_url = str;
        } else if (!strcmp(key, "temperature") || !strcmp(key, "score_threshold")) {
            double max = !strcmp(key, "temperature") ? 2.0 : 1.0;
            if (!json_is_number(v) || isnan(json_number_value(v)) || json_number_value(v) < 0 ||
                json_number_value(v) > max)
                BAD("must be a number between 0 and %g", max);
            *(!strcmp(key, "temperature") ? &s->temperature : &s->score_threshold) =
                json_number_value(v);
        } else if (!strcmp(key, "passages") || !strcmp(key, "debounce_ms") ||
                   !strcmp(key, "max_replies_per_hour")) {
            long long lo = !strcmp(key, "passages") ? 1 : 0;
            long long hi = !strcmp(key, "passages")      ? 20
                           : !strcmp(key, "debounce_ms") ? 600000
                                                         : 100000;
            if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
                BAD("must be an integer between %lld and %lld", lo, hi);
            long long n = json_integer_value(v);
            if (!strcmp(key, "passages"))
                s->passages = (int)n;
            else if (!strcmp(key, "debounce_ms"))
                s->debounce_ms = n;
            else
                s->max_replies_per_hour = n;
        } else if (!strcmp(key, "linear_categories")) {
            if (!json_is_array(v) || json_array_size(v) > INBOX_MAX_CATEGORIES)
                BAD("must be a list of at most %d categories", INBOX_MAX_CATEGORIES);
            s->nlinear_categories = 0;
            size_t i;
            json_t *e;
            json_array_foreach(v, i, e)
            {
                if (!inbox_category_valid(json_string_value(e)))
                    BAD("\"%s\" is not a category (question, bug, feature, account, billing)",
                        json_is_string(e) ? json_string_value(e) : "(not a string)");
                s->linear_categories[s->nlinear_categories++] = json_string_value(e);
            }
        } else {
            BAD("unknown key");
        }
#undef BAD
    }
    return 0;
}

static void inbox_builtin(struct inbox_config *c, const struct inbox_env_defaults *env)
{
    struct inbox_settings *d = &c->defaults;
    d->enabled = 1;
    d->serve_pending = 1;
    d->knowledge_base = "default";
    d->temperature = 0.2;
    d->score_threshold = 0.5;
    d->passages = 5;
    d->debounce_ms = 3000;
    d->max_replies_per_hour = 20;
    d->handoff_label = "needs-human";
    d->linear_categories[0] = "bug";
    d->nlinear_categories = 1;
    if (env) {
        d->debounce_ms = env->debounce_ms;
        d->shadow = env->shadow;
        const char *src[3] = {env->model, env->slack_webhook_url, env->linear_team_id};
        for (int i = 0; i < 3; i++)
            c->env_strings[i] = src[i] && *src[i] ? xstrdup(src[i]) : NULL;
        d->model = c->env_strings[0];
        d->slack_webhook_url = c->env_strings[1];
        d->linear_team_id = c->env_strings[2];
    }
}

static struct inbox_config *inbox_config_from(json_t *root, const struct inbox_env_defaults *env,
                                              char **err)
{
    struct inbox_config *c = xcalloc(1, sizeof *c);
    c->root = root;
    inbox_builtin(c, env);
    if (!root)
        return c;
    const char *key;
    json_t *v;
    if (!json_is_object(root)) {
        *err = xstrdup("the inbox config must be a JSON object with \"defaults\" and \"inboxes\"");
        goto fail;
    }
    json_object_foreach(root, key, v)
    {
        if (strcmp(key, "defaults") && strcmp(key, "inboxes")) {
            *err = xasprintf("%s: unknown key (expected \"defaults\" and \"inboxes\")", key);
            goto fail;
        }
    }
    json_t *defaults = json_object_get(root, "defaults");
    if (defaults && inbox_apply(&c->defaults, defaults, "defaults", err) != 0)
        goto fail;
    json_t *inboxes = json_object_get(root, "inboxes");
    if (inboxes && !json_is_object(inboxes)) {
        *err = xstrdup("inboxes: must be an object keyed by inbox id");
        goto fail;
    }
    c->inboxes = xcalloc(json_object_size(inboxes) + 1, sizeof *c->inboxes);
    json_object_foreach(inboxes, key, v)
    {
        char *end = NULL;
        long long id = strtoll(key, &end, 10);
        if (!*key || *end || id <= 0) {
            *err = xasprintf("inboxes.%s: the key must be a Chatwoot inbox id (a positive integer)",
                             key);
            goto fail;
        }
        struct inbox_settings *s = &c->inboxes[c->ninboxes++];
        *s = c->defaults;
        s->inbox_id = id;
        char where[64];
        snprintf(where, sizeof where, "inboxes.%lld", id);
        if (inbox_apply(s, v, where, err) != 0)
            goto fail;
    }
    return c;
fail:
    inbox_config_free(c);
    return NULL;
}

struct inbox_config *inbox_config_parse(const char *text, const struct inbox_env_defaults *env,
                                        char **err)
{
    json_error_t je;
    json_t *root = json_loads(text, 0, &je);
    if (!root) {
        *err = xasprintf("invalid JSON at line %d: %s", je.line, je.text);
        return NULL;
    }
    return inbox_config_from(root, env, err);
}

struct inbox_config *inbox_config_load(const char *path, const struct inbox_env_defaults *env,
                                       char **err)
{
    if (!path || !*path)
        return inbox_config_from(NULL, env, err);
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root) {
        *err = xasprintf("%s: %s (line %d)", path, je.text, je.line);
        return NULL;
    }
    struct inbox_config *c = inbox_config_from(root, env, err);
    if (!c) {
        char *why = *err;
        *err = xasprintf("%s: %s", path, why);
        free(why);
    }
    return c;
}

const struct inbox_settings *inbox_config_get(const struct inbox_config *c, long long inbox_id)
{
    for (size_t i = 0; i < c->ninboxes; i++)
        if (c->inboxes[i].inbox_id == inbox_id)
            return &c->inboxes[i];
    return &c->defaults;
}

int inbox_serves_status(const struct inbox_settings *s, const char *status)
{
    if (!status)
        return 0;
    return (s->serve_pending && !strcmp(status, "pending")) ||
           (s->serve_open && !strcmp(status, "open"));
}

int inbox_routes_to_linear(const struct inbox_settings *s, const char *category)
{
    if (!s->linear_team_id || !*s->linear_team_id || !category)
        return 0;
    for (size_t i = 0; i < s->nlinear_categories; i++)
        if (!strcmp(s->linear_categories[i], category))
            return 1;
    return 0;
}

void inbox_config_free(struct inbox_config *c)
{
    if (!c)
        return;
    json_decref(c->root);
    free(c->inboxes);
    for (int i = 0; i < 3; i++)
        free(c->env_strings[i]);
    free(c);
}
