/* inbox_config: layering (built-in < environment < defaults < inbox), lookups, and the
 * errors a typo gets. */
#include "inbox_config.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const struct inbox_env_defaults env = {.debounce_ms = 1500,
                                              .model = "env-model",
                                              .slack_webhook_url = "https://hooks.example/env",
                                              .linear_team_id = "team-env",
                                              .shadow = 1};

Test(inbox_config, builtin_and_environment_without_a_file)
{
    char *err = NULL;
    struct inbox_config *c = inbox_config_load(NULL, &env, &err);
    cr_assert_not_null(c, "%s", err);
    const struct inbox_settings *s = inbox_config_get(c, 42);
    cr_assert_eq(s->enabled, 1);
    cr_assert(inbox_serves_status(s, "pending"));
    cr_assert_not(inbox_serves_status(s, "open"));
    cr_assert_not(inbox_serves_status(s, NULL));
    cr_assert_str_eq(s->knowledge_base, "default");
    cr_assert_str_eq(s->model, "env-model");
    cr_assert_eq(s->debounce_ms, 1500);
    cr_assert_eq(s->shadow, 1);
    cr_assert_str_eq(s->handoff_label, "needs-human");
    cr_assert(inbox_routes_to_linear(s, "bug"));
    cr_assert_not(inbox_routes_to_linear(s, "question"));
    cr_assert_float_eq(s->score_threshold, 0.5, 1e-9);
    inbox_config_free(c);
}

Test(inbox_config, inbox_keys_override_defaults_which_override_the_environment)
{
    char *err = NULL;
    struct inbox_config *c = inbox_config_parse(
        "{\"defaults\": {\"knowledge_base\": \"docs\", \"statuses\": [\"pending\", \"open\"],"
        "  \"debounce_ms\": 0},"
        " \"inboxes\": {\"7\": {\"knowledge_base\": \"billing\", \"enabled\": false,"
        "  \"linear_team_id\": \"\", \"temperature\": 0.7, \"linear_categories\": [\"bug\","
        "  \"feature\"], \"passages\": 3, \"shadow\": false}}}",
        &env, &err);
    cr_assert_not_null(c, "%s", err);
    const struct inbox_settings *other = inbox_config_get(c, 3);
    cr_assert_str_eq(other->knowledge_base, "docs");
    cr_assert(inbox_serves_status(other, "open"));
    cr_assert_eq(other->debounce_ms, 0);
    const struct inbox_settings *seven = inbox_config_get(c, 7);
    cr_assert_eq(seven->inbox_id, 7);
    cr_assert_str_eq(seven->knowledge_base, "billing");
    cr_assert_eq(seven->enabled, 0);
    cr_assert_eq(seven->shadow, 0);
    cr_assert_eq(seven->passages, 3);
    cr_assert(inbox_serves_status(seven, "open"), "inherits the defaults' statuses");
    cr_assert_float_eq(seven->temperature, 0.7, 1e-9);
    cr_assert_not(inbox_routes_to_linear(seven, "bug"), "an empty team turns Linear off");
    cr_assert_eq(seven->nlinear_categories, 2);
    inbox_config_free(c);
}

static void expect_error(const char *json, const char *needle)
{
    char *err = NULL;
    struct inbox_config *c = inbox_config_parse(json, &env, &err);
    cr_assert_null(c, "accepted %s", json);
    cr_assert_not_null(err);
    cr_assert(strstr(err, needle), "error \"%s\" does not name \"%s\"", err, needle);
    free(err);
}

Test(inbox_config, bad_values_name_their_key)
{
    expect_error("{\"inboxes\": {\"7\": {\"temprature\": 1}}}",
                 "inboxes.7.temprature: unknown key");
    expect_error("{\"inboxes\": {\"7\": {\"temperature\": 3}}}", "inboxes.7.temperature");
    expect_error("{\"defaults\": {\"statuses\": [\"resolved\"]}}", "defaults.statuses");
    expect_error("{\"defaults\": {\"statuses\": []}}", "defaults.statuses");
    expect_error("{\"inboxes\": {\"abc\": {}}}", "inboxes.abc");
    expect_error("{\"inboxes\": {\"7\": {\"linear_categories\": [\"bugs\"]}}}", "\"bugs\"");
    expect_error("{\"inboxes\": {\"7\": {\"passages\": 0}}}", "inboxes.7.passages");
    expect_error("{\"defaults\": {\"knowledge_base\": \"\"}}", "must not be empty");
    expect_error("{\"inbox\": {}}", "inbox: unknown key");
    expect_error("[1]", "must be a JSON object");
    expect_error("{\"defaults\": ", "invalid JSON");
}

Test(inbox_config, file_errors_name_the_file)
{
    char path[] = "/tmp/tierone-inbox-XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    const char *text = "{\"inboxes\": {\"1\": {\"enabled\": \"yes\"}}}";
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    char *err = NULL;
    cr_assert_null(inbox_config_load(path, &env, &err));
    cr_assert(strstr(err, path) && strstr(err, "inboxes.1.enabled"), "%s", err);
    free(err);
    unlink(path);
    err = NULL;
    cr_assert_null(inbox_config_load("/nonexistent/inboxes.json", &env, &err));
    cr_assert(strstr(err, "/nonexistent/inboxes.json"), "%s", err);
    free(err);
    cr_assert(inbox_category_valid("billing"));
    cr_assert_not(inbox_category_valid("sales"));
}
