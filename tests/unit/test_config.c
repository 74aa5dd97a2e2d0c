/* Unit tests for lib/config: defaults, environment, command line, errors, --help,
 * --check-config and the JSON table. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "xalloc.h"

struct test_settings {
    char *redis_url;
    long long concurrency;
    int verbose;
    double ratio;
    int log_level;
    long long shutdown_timeout;
    char *api_key;
    int dry_run;
};

static const char *const test_levels[] = {"debug", "info", "warn", "error", NULL};

#define OFF(f) offsetof(struct test_settings, f)

static const struct config_def test_defs[] = {
    {.key = "redis_url",
     .env = "TIERONE_REDIS_URL",
     .type = CONFIG_STRING,
     .def = "redis://127.0.0.1:6379/0",
     .help = "Redis to fetch jobs from",
     .offset = OFF(redis_url)},
    {.key = "concurrency",
     .env = "TIERONE_CONCURRENCY",
     .type = CONFIG_INT,
     .def = "10",
     .min = 1,
     .max = 10000,
     .bounded = true,
     .help = "jobs in flight at once",
     .offset = OFF(concurrency)},
    {.key = "verbose",
     .env = "TIERONE_VERBOSE",
     .type = CONFIG_BOOL,
     .def = "false",
     .help = "log more",
     .offset = OFF(verbose)},
    {.key = "ratio",
     .env = "TIERONE_RATIO",
     .type = CONFIG_DOUBLE,
     .def = "0.5",
     .min = 0,
     .max = 1,
     .bounded = true,
     .help = "answer threshold",
     .offset = OFF(ratio)},
    {.key = "log_level",
     .env = "TIERONE_LOG_LEVEL",
     .type = CONFIG_ENUM,
     .def = "info",
     .choices = test_levels,
     .help = "minimum log level",
     .offset = OFF(log_level)},
    {.key = "shutdown_timeout",
     .env = "TIERONE_SHUTDOWN_TIMEOUT",
     .type = CONFIG_DURATION,
     .def = "25s",
     .min = 0,
     .max = 3600000,
     .bounded = true,
     .help = "how long to drain on SIGTERM",
     .offset = OFF(shutdown_timeout)},
    {.key = "api_key",
     .env = "LLM_API_KEY",
     .type = CONFIG_STRING,
     .secret = true,
     .help = "LLM API key",
     .offset = OFF(api_key)},
    {.key = "dry_run", .type = CONFIG_BOOL, .help = "do not send anything", .offset = OFF(dry_run)},
};

static const struct config_flag test_flags[] = {
    {.name = "diagnostic-jobs", .help = "register the diagnostic job classes"},
    {.name = "queue", .takes_value = true, .help = "only this queue"},
};

static const struct config_spec test_spec = {
    .program = "tierone-test",
    .summary = "A test binary.",
    .defs = test_defs,
    .ndefs = CONFIG_COUNT(test_defs),
    .flags = test_flags,
    .nflags = CONFIG_COUNT(test_flags),
};

static void clear_env(void)
{
    for (size_t i = 0; i < CONFIG_COUNT(test_defs); i++)
        if (test_defs[i].env)
            unsetenv(test_defs[i].env);
}

TestSuite(config, .init = clear_env);

/* Load with argv (NULL-terminated list after the program name); returns rc. */
static int load(struct test_settings *s, struct config_args *args, char **cause,
                const char **argv_in)
{
    char *argv[32] = {"tierone-test"};
    int argc = 1;
    while (argv_in && argv_in[argc - 1])
        argv[argc] = (char *)argv_in[argc - 1], argc++;
    return config_load(&test_spec, s, argc, argv, args, cause);
}

/* Expect load to fail with exactly `msg`. */
static void expect_error(const char **argv, const char *msg)
{
    struct test_settings s = {0};
    char *cause = NULL;
    cr_assert_eq(load(&s, NULL, &cause, argv), -1);
    cr_assert_not_null(cause);
    cr_expect_str_eq(cause, msg);
    free(cause);
    config_free(&test_spec, &s);
}

Test(config, defaults)
{
    struct test_settings s = {0};
    char *cause = NULL;
    cr_assert_eq(config_load(&test_spec, &s, 0, NULL, NULL, &cause), 0, "%s", cause);
    cr_expect_str_eq(s.redis_url, "redis://127.0.0.1:6379/0");
    cr_expect_eq(s.concurrency, 10);
    cr_expect_eq(s.verbose, 0);
    cr_expect_eq(s.ratio, 0.5);
    cr_expect_eq(s.log_level, 1);
    cr_expect_eq(s.shutdown_timeout, 25000);
    cr_expect_null(s.api_key);
    cr_expect_eq(s.dry_run, 0);
    config_free(&test_spec, &s);
    cr_expect_null(s.redis_url);
}

Test(config, environment_overrides_defaults)
{
    setenv("TIERONE_REDIS_URL", "redis://redis:6379/3", 1);
    setenv("TIERONE_CONCURRENCY", "25", 1);
    setenv("TIERONE_VERBOSE", "yes", 1);
    setenv("TIERONE_RATIO", "0.75", 1);
    setenv("TIERONE_LOG_LEVEL", "debug", 1);
    setenv("TIERONE_SHUTDOWN_TIMEOUT", "2m", 1);
    setenv("LLM_API_KEY", "sk-secret", 1);
    struct test_settings s = {0};
    char *cause = NULL;
    cr_assert_eq(load(&s, NULL, &cause, NULL), 0, "%s", cause);
    cr_expect_str_eq(s.redis_url, "redis://redis:6379/3");
    cr_expect_eq(s.concurrency, 25);
    cr_expect_eq(s.verbose, 1);
    cr_expect_eq(s.ratio, 0.75);
    cr_expect_eq(s.log_level, 0);
    cr_expect_eq(s.shutdown_timeout, 120000);
    cr_expect_str_eq(s.api_key, "sk-secret");
    config_free(&test_spec, &s);
}

Test(config, empty_environment_variable_is_unset)
{
    setenv("TIERONE_CONCURRENCY", "", 1);
    setenv("TIERONE_REDIS_URL", "", 1);
    setenv("TIERONE_LOG_LEVEL", "", 1);
    struct test_settings s = {0};
    char *cause = NULL;
    cr_assert_eq(load(&s, NULL, &cause, NULL), 0, "%s", cause);
    cr_expect_eq(s.concurrency, 10);
    cr_expect_str_eq(s.redis_url, "redis://127.0.0.1:6379/0");
    cr_expect_eq(s.log_level, 1);
    config_free(&test_spec, &s);
}

Test(config, command_line_overrides_environment)
{
    setenv("TIERONE_CONCURRENCY", "25", 1);
    setenv("TIERONE_REDIS_URL", "redis://env/0", 1);
    struct test_settings s = {0};
    char *cause = NULL;
    const char *argv[] = {
        "--concurrency=30", "--redis-url", "redis://argv/1", "--shutdown-timeout=5s",
        "--log_level",      "warn",        "--ratio=1",      NULL};
    cr_assert_eq(load(&s, NULL, &cause, argv), 0, "%s", cause);
    cr_expect_eq(s.concurrency, 30);
    cr_expect_str_eq(s.redis_url, "redis://argv/1");
    cr_expect_eq(s.shutdown_timeout, 5000);
    cr_expect_eq(s.log_level, 2);
    cr_expect_eq(s.ratio, 1.0);
    config_free(&test_spec, &s);
}

Test(config, last_flag_wins_and_reload_replaces_strings)
{
    struct test_settings s = {0};
    char *cause = NULL;
    const char *argv[] = {"--redis-url=redis://a/0", "--redis-url=redis://b/0", NULL};
    cr_assert_eq(load(&s, NULL, &cause, argv), 0, "%s", cause);
    cr_expect_str_eq(s.redis_url, "redis://b/0");
    /* A second load into the same settings frees the old strings (ASan checks leaks). */
    cr_assert_eq(load(&s, NULL, &cause, NULL), 0, "%s", cause);
    cr_expect_str_eq(s.redis_url, "redis://127.0.0.1:6379/0");
    config_free(&test_spec, &s);
    config_free(&test_spec, &s);
    cr_expect_null(s.redis_url);
}

Test(config, bounds_errors_name_the_variable_and_bounds)
{
    setenv("TIERONE_CONCURRENCY", "0", 1);
    expect_error(NULL, "TIERONE_CONCURRENCY=0: must be between 1 and 10000");
    setenv("TIERONE_CONCURRENCY", "10001", 1);
    expect_error(NULL, "TIERONE_CONCURRENCY=10001: must be between 1 and 10000");
    setenv("TIERONE_CONCURRENCY", "10000", 1);
    expect_error((const char *[]){"--concurrency=0", NULL},
                 "--concurrency=0: must be between 1 and 10000");
    unsetenv("TIERONE_CONCURRENCY");
    setenv("TIERONE_RATIO", "1.5", 1);
    expect_error(NULL, "TIERONE_RATIO=1.5: must be between 0 and 1");
    unsetenv("TIERONE_RATIO");
    setenv("TIERONE_SHUTDOWN_TIMEOUT", "61m", 1);
    expect_error(NULL, "TIERONE_SHUTDOWN_TIMEOUT=61m: must be between 0ms and 1h");
}

Test(config, bounds_are_inclusive)
{
    setenv("TIERONE_CONCURRENCY", "10000", 1);
    setenv("TIERONE_SHUTDOWN_TIMEOUT", "1h", 1);
    setenv("TIERONE_RATIO", "0", 1);
    struct test_settings s = {0};
    char *cause = NULL;
    const char *argv[] = {"--concurrency", "1", NULL};
    cr_assert_eq(load(&s, NULL, &cause, argv), 0, "%s", cause);
    cr_expect_eq(s.concurrency, 1);
    cr_expect_eq(s.shutdown_timeout, 3600000);
    cr_expect_eq(s.ratio, 0.0);
    config_free(&test_spec, &s);
}

Test(config, malformed_numbers)
{
    setenv("TIERONE_CONCURRENCY", "10x", 1);
    expect_error(NULL, "TIERONE_CONCURRENCY=10x: must be an integer");
    setenv("TIERONE_CONCURRENCY", " 10", 1);
    expect_error(NULL, "TIERONE_CONCURRENCY= 10: must be an integer");
    setenv("TIERONE_CONCURRENCY", "99999999999999999999", 1);
    expect_error(NULL, "TIERONE_CONCURRENCY=99999999999999999999: must be an integer");
    unsetenv("TIERONE_CONCURRENCY");
    setenv("TIERONE_RATIO", "half", 1);
    expect_error(NULL, "TIERONE_RATIO=half: must be a number");
    setenv("TIERONE_RATIO", "nan", 1);
    expect_error(NULL, "TIERONE_RATIO=nan: must be a number");
}

Test(config, enum_values)
{
    struct test_settings s = {0};
    char *cause = NULL;
    for (int i = 0; test_levels[i]; i++) {
        setenv("TIERONE_LOG_LEVEL", test_levels[i], 1);
        cr_assert_eq(load(&s, NULL, &cause, NULL), 0, "%s", cause);
        cr_expect_eq(s.log_level, i);
    }
    config_free(&test_spec, &s);
    setenv("TIERONE_LOG_LEVEL", "loud", 1);
    expect_error(NULL, "TIERONE_LOG_LEVEL=loud: must be one of debug, info, warn, error");
    unsetenv("TIERONE_LOG_LEVEL");
    expect_error((const char *[]){"--log-level=INFO", NULL},
                 "--log-level=INFO: must be one of debug, info, warn, error");
}

Test(config, duration_parsing)
{
    static const struct {
        const char *in;
        long long ms;
    } ok[] = {{"0", 0},       {"250", 250},   {"250ms", 250},
              {"5s", 5000},   {"2m", 120000}, {"1h", 3600000},
              {"90s", 90000}, {"0ms", 0},     {"1000000ms", 1000000}};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        long long ms = -1;
        cr_expect_eq(config_parse_duration(ok[i].in, &ms), 0, "%s", ok[i].in);
        cr_expect_eq(ms, ok[i].ms, "%s -> %lld", ok[i].in, ms);
    }
    static const char *const bad[] = {
        "", "s", "5 s", "-5s", "5sec", "1.5s", "5S", "ms", "5d", " 5s", "99999999999999999999h"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        long long ms = -1;
        cr_expect_eq(config_parse_duration(bad[i], &ms), -1, "'%s' accepted", bad[i]);
    }
    setenv("TIERONE_SHUTDOWN_TIMEOUT", "5sec", 1);
    expect_error(NULL, "TIERONE_SHUTDOWN_TIMEOUT=5sec: must be a duration like 250ms, 5s, 2m, "
                       "1h or bare milliseconds");
}

Test(config, duration_formatting)
{
    static const struct {
        long long ms;
        const char *out;
    } cases[] = {{0, "0ms"},     {250, "250ms"}, {1500, "1500ms"}, {5000, "5s"},
                 {90000, "90s"}, {120000, "2m"}, {7200000, "2h"}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct buf b = BUF_INIT;
        config_format_duration(cases[i].ms, &b);
        cr_expect_str_eq(b.data, cases[i].out);
        buf_free(&b);
    }
}

Test(config, booleans)
{
    static const struct {
        const char *in;
        int v;
    } ok[] = {{"1", 1},  {"0", 0},   {"true", 1}, {"false", 0}, {"yes", 1}, {"no", 0},
              {"on", 1}, {"off", 0}, {"TRUE", 1}, {"Off", 0},   {"Yes", 1}};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        struct test_settings s = {0};
        char *cause = NULL;
        setenv("TIERONE_VERBOSE", ok[i].in, 1);
        cr_assert_eq(load(&s, NULL, &cause, NULL), 0, "%s", cause);
        cr_expect_eq(s.verbose, ok[i].v, "%s", ok[i].in);
        config_free(&test_spec, &s);
    }
    setenv("TIERONE_VERBOSE", "maybe", 1);
    expect_error(NULL,
                 "TIERONE_VERBOSE=maybe: must be a boolean (1/0, true/false, yes/no, on/off)");
    setenv("TIERONE_VERBOSE", "2", 1);
    expect_error(NULL, "TIERONE_VERBOSE=2: must be a boolean (1/0, true/false, yes/no, on/off)");
}

Test(config, boolean_flags)
{
    struct test_settings s = {0};
    char *cause = NULL;
    cr_assert_eq(load(&s, NULL, &cause, (const char *[]){"--verbose", "--dry-run", NULL}), 0, "%s",
                 cause);
    cr_expect_eq(s.verbose, 1);
    cr_expect_eq(s.dry_run, 1);
    setenv("TIERONE_VERBOSE", "on", 1);
    cr_assert_eq(load(&s, NULL, &cause, (const char *[]){"--no-verbose", NULL}), 0, "%s", cause);
    cr_expect_eq(s.verbose, 0);
    cr_assert_eq(load(&s, NULL, &cause, (const char *[]){"--verbose=off", NULL}), 0, "%s", cause);
    cr_expect_eq(s.verbose, 0);
    config_free(&test_spec, &s);
    /* A bare boolean flag never swallows the next argument. */
    expect_error((const char *[]){"--verbose", "off", NULL},
                 "unexpected argument 'off' (see --help)");
}

Test(config, unknown_and_malformed_flags)
{
    expect_error((const char *[]){"--bogus", NULL}, "unknown option --bogus (see --help)");
    expect_error((const char *[]){"--bogus=1", NULL}, "unknown option --bogus (see --help)");
    expect_error((const char *[]){"-x", NULL}, "unknown option -x (see --help)");
    expect_error((const char *[]){"--no-concurrency", NULL},
                 "unknown option --no-concurrency (see --help)");
    expect_error((const char *[]){"--concurrency", NULL}, "--concurrency: missing value");
    expect_error((const char *[]){"--concurrency", "--verbose", NULL},
                 "--concurrency: missing value");
    expect_error((const char *[]){"stray", NULL}, "unexpected argument 'stray' (see --help)");
    expect_error((const char *[]){"--diagnostic-jobs=1", NULL}, "--diagnostic-jobs takes no value");
    expect_error((const char *[]){"--queue", NULL}, "--queue: missing value");
    /* Flag errors are found before values are parsed. */
    expect_error((const char *[]){"--concurrency=0", "--bogus", NULL},
                 "unknown option --bogus (see --help)");
}

Test(config, extra_flags_are_returned_in_order)
{
    struct test_settings s = {0};
    struct config_args args;
    char *cause = NULL;
    const char *argv[] = {
        "--diagnostic-jobs", "--queue=critical", "--concurrency=3", "--queue", "low", NULL};
    cr_assert_eq(load(&s, &args, &cause, argv), 0, "%s", cause);
    cr_expect_eq(args.mode, CONFIG_MODE_RUN);
    cr_assert_eq(args.nextras, 3);
    cr_expect_str_eq(args.extras[0].name, "diagnostic-jobs");
    cr_expect_null(args.extras[0].value);
    cr_expect_str_eq(args.extras[1].name, "queue");
    cr_expect_str_eq(args.extras[1].value, "critical");
    cr_expect_str_eq(args.extras[2].value, "low");
    cr_expect_eq(args.npositional, 0);
    cr_expect_eq(s.concurrency, 3);
    config_args_free(&args);
    config_free(&test_spec, &s);
}

Test(config, positional_arguments_when_allowed)
{
    struct config_spec spec = test_spec;
    spec.positional = true;
    struct test_settings s = {0};
    struct config_args args;
    char *cause = NULL;
    char *argv[] = {"tierone", "ingest", "--verbose", "a.md", "--", "--b.md", NULL};
    cr_assert_eq(config_load(&spec, &s, 6, argv, &args, &cause), 0, "%s", cause);
    cr_assert_eq(args.npositional, 3);
    cr_expect_str_eq(args.positional[0], "ingest");
    cr_expect_str_eq(args.positional[1], "a.md");
    cr_expect_str_eq(args.positional[2], "--b.md");
    cr_expect_eq(s.verbose, 1);
    config_args_free(&args);
    config_free(&test_spec, &s);
}

static int test_validate(const void *settings, char **cause)
{
    const struct test_settings *s = settings;
    if (s->dry_run && s->api_key) {
        *cause = xasprintf("LLM_API_KEY is pointless with --dry-run");
        return -1;
    }
    return 0;
}

Test(config, validate_callback_runs_after_load)
{
    struct config_spec spec = test_spec;
    spec.validate = test_validate;
    setenv("LLM_API_KEY", "sk-1", 1);
    struct test_settings s = {0};
    char *cause = NULL;
    char *argv[] = {"tierone-test", "--dry-run", NULL};
    cr_assert_eq(config_load(&spec, &s, 2, argv, NULL, &cause), -1);
    cr_expect_str_eq(cause, "LLM_API_KEY is pointless with --dry-run");
    free(cause);
    cr_assert_eq(config_load(&spec, &s, 1, argv, NULL, &cause), 0, "%s", cause);
    config_free(&spec, &s);
}

Test(config, bad_default_is_reported)
{
    static const struct config_def defs[] = {
        {.key = "n", .env = "T1_N", .type = CONFIG_INT, .def = "abc", .offset = 0}};
    static const struct config_spec spec = {.program = "p", .defs = defs, .ndefs = 1};
    long long n = 0;
    char *cause = NULL;
    cr_assert_eq(config_load(&spec, &n, 0, NULL, NULL, &cause), -1);
    cr_expect_str_eq(cause, "default of n=abc: must be an integer");
    free(cause);
}

/* Run config_main_stream and capture stdout / stderr. */
struct run {
    enum config_action act;
    char *out, *err;
    struct test_settings s;
};

static struct run run_main(const char **argv_in)
{
    struct run r = {0};
    size_t olen, elen;
    FILE *out = open_memstream(&r.out, &olen);
    FILE *err = open_memstream(&r.err, &elen);
    char *argv[32] = {"tierone-test"};
    int argc = 1;
    while (argv_in && argv_in[argc - 1])
        argv[argc] = (char *)argv_in[argc - 1], argc++;
    r.act = config_main_stream(&test_spec, &r.s, argc, argv, NULL, out, err);
    fclose(out);
    fclose(err);
    return r;
}

static void run_free(struct run *r)
{
    free(r->out);
    free(r->err);
    config_free(&test_spec, &r->s);
}

Test(config, main_runs_with_loaded_settings)
{
    struct run r = run_main((const char *[]){"--concurrency=7", NULL});
    cr_expect_eq(r.act, CONFIG_RUN);
    cr_expect_eq(r.s.concurrency, 7);
    cr_expect_str_eq(r.out, "");
    cr_expect_str_eq(r.err, "");
    run_free(&r);
}

Test(config, main_prints_errors_to_stderr_and_exits_2)
{
    setenv("TIERONE_CONCURRENCY", "0", 1);
    struct run r = run_main(NULL);
    cr_expect_eq(r.act, CONFIG_EXIT_USAGE);
    cr_expect_eq((int)r.act, 2);
    cr_expect_str_eq(r.out, "");
    cr_expect_str_eq(r.err, "tierone-test: TIERONE_CONCURRENCY=0: must be between 1 and 10000\n");
    cr_expect_null(r.s.redis_url, "settings are freed on exit actions");
    run_free(&r);
}

Test(config, check_config_masks_secrets)
{
    setenv("LLM_API_KEY", "sk-very-secret", 1);
    setenv("TIERONE_SHUTDOWN_TIMEOUT", "90000", 1);
    struct run r = run_main((const char *[]){"--check-config", "--verbose", NULL});
    cr_expect_eq(r.act, CONFIG_EXIT_OK);
    cr_expect_str_eq(r.err, "");
    cr_expect_str_eq(r.out, "redis_url        = redis://127.0.0.1:6379/0\n"
                            "concurrency      = 10\n"
                            "verbose          = true\n"
                            "ratio            = 0.5\n"
                            "log_level        = info\n"
                            "shutdown_timeout = 90s\n"
                            "api_key          = ****\n"
                            "dry_run          = false\n"
                            "configuration OK\n");
    cr_expect_null(strstr(r.out, "sk-very-secret"));
    run_free(&r);
}

Test(config, check_config_shows_unset_secret_as_empty)
{
    struct run r = run_main((const char *[]){"--check-config", NULL});
    cr_expect_eq(r.act, CONFIG_EXIT_OK);
    cr_expect_not_null(strstr(r.out, "\napi_key          = \n"), "%s", r.out);
    run_free(&r);
}

Test(config, check_config_with_bad_value_fails)
{
    setenv("TIERONE_LOG_LEVEL", "chatty", 1);
    struct run r = run_main((const char *[]){"--check-config", NULL});
    cr_expect_eq(r.act, CONFIG_EXIT_USAGE);
    cr_expect_str_eq(r.out, "");
    cr_expect_str_eq(r.err, "tierone-test: TIERONE_LOG_LEVEL=chatty: must be one of debug, "
                            "info, warn, error\n");
    run_free(&r);
}

Test(config, value_text_masks_secrets)
{
    struct test_settings s = {0};
    char *cause = NULL;
    setenv("LLM_API_KEY", "sk-1", 1);
    cr_assert_eq(load(&s, NULL, &cause, NULL), 0, "%s", cause);
    struct buf b = BUF_INIT;
    config_value_text(&test_defs[6], &s, &b);
    cr_expect_str_eq(b.data, "****");
    buf_reset(&b);
    config_value_text(&test_defs[0], &s, &b);
    cr_expect_str_eq(b.data, "redis://127.0.0.1:6379/0");
    buf_free(&b);
    config_free(&test_spec, &s);
}

Test(config, help_lists_every_key)
{
    struct run r = run_main((const char *[]){"--help", NULL});
    cr_expect_eq(r.act, CONFIG_EXIT_OK);
    cr_expect_str_eq(r.err, "");
    cr_expect_eq(strncmp(r.out, "usage: tierone-test [options]\nA test binary.\n", 44), 0, "%s",
                 r.out);
    for (size_t i = 0; i < CONFIG_COUNT(test_defs); i++) {
        const struct config_def *d = &test_defs[i];
        char *flag = xasprintf("  --%s", d->key);
        for (char *c = flag; *c; c++)
            *c = *c == '_' ? '-' : *c;
        cr_expect_not_null(strstr(r.out, flag), "%s missing", flag);
        free(flag);
        if (d->env)
            cr_expect_not_null(strstr(r.out, d->env), "%s missing", d->env);
        cr_expect_not_null(strstr(r.out, d->help), "help of %s missing", d->key);
        if (d->def) {
            char *def = xasprintf("default: %s", d->def);
            cr_expect_not_null(strstr(r.out, def), "%s missing", def);
            free(def);
        }
    }
    cr_expect_not_null(strstr(r.out, "--log-level=debug|info|warn|error"));
    cr_expect_not_null(strstr(r.out, "range: 1..10000"));
    cr_expect_not_null(strstr(r.out, "range: 0ms..1h"));
    cr_expect_not_null(strstr(r.out, "--dry-run[=BOOL]"));
    cr_expect_not_null(strstr(r.out, "(no environment variable)  default: false"));
    cr_expect_not_null(strstr(r.out, "--diagnostic-jobs"));
    cr_expect_not_null(strstr(r.out, "--queue=VALUE"));
    cr_expect_not_null(strstr(r.out, "--check-config"));
    run_free(&r);
}

Test(config, help_wins_over_errors)
{
    setenv("TIERONE_CONCURRENCY", "0", 1);
    struct run r = run_main((const char *[]){"--bogus", "-h", NULL});
    cr_expect_eq(r.act, CONFIG_EXIT_OK);
    cr_expect_eq(strncmp(r.out, "usage: ", 7), 0);
    cr_expect_str_eq(r.err, "");
    run_free(&r);
}

Test(config, version)
{
    struct run r = run_main((const char *[]){"--version", NULL});
    cr_expect_eq(r.act, CONFIG_EXIT_OK);
    cr_expect_eq(strncmp(r.out, "tierone-test ", 13), 0, "%s", r.out);
    run_free(&r);
}

Test(config, json_table_round_trips)
{
    struct run r = run_main((const char *[]){"--config-json", NULL});
    cr_assert_eq(r.act, CONFIG_EXIT_OK);
    json_error_t jerr;
    json_t *arr = json_loads(r.out, 0, &jerr);
    cr_assert_not_null(arr, "bad JSON: %s", jerr.text);
    cr_assert(json_is_array(arr));
    cr_assert_eq(json_array_size(arr), CONFIG_COUNT(test_defs));
    static const char *const types[] = {"string", "int",      "bool",   "double",
                                        "enum",   "duration", "string", "bool"};
    for (size_t i = 0; i < CONFIG_COUNT(test_defs); i++) {
        const struct config_def *d = &test_defs[i];
        json_t *o = json_array_get(arr, i);
        cr_expect_str_eq(json_string_value(json_object_get(o, "key")), d->key);
        cr_expect_str_eq(json_string_value(json_object_get(o, "type")), types[i]);
        cr_expect_str_eq(json_string_value(json_object_get(o, "help")), d->help);
        cr_expect_eq(json_is_true(json_object_get(o, "secret")), d->secret, "%s", d->key);
        if (d->env)
            cr_expect_str_eq(json_string_value(json_object_get(o, "env")), d->env);
        else
            cr_expect(json_is_null(json_object_get(o, "env")));
        if (d->def)
            cr_expect_str_eq(json_string_value(json_object_get(o, "default")), d->def);
        else
            cr_expect(json_is_null(json_object_get(o, "default")));
        cr_expect_eq(json_is_null(json_object_get(o, "min")), !d->bounded, "%s", d->key);
        cr_expect_eq(json_is_null(json_object_get(o, "max")), !d->bounded, "%s", d->key);
    }
    json_t *conc = json_array_get(arr, 1);
    cr_expect(json_is_integer(json_object_get(conc, "min")));
    cr_expect_eq(json_integer_value(json_object_get(conc, "min")), 1);
    cr_expect_eq(json_integer_value(json_object_get(conc, "max")), 10000);
    json_t *ratio = json_array_get(arr, 3);
    cr_expect_eq(json_number_value(json_object_get(ratio, "max")), 1.0);
    json_t *timeout = json_array_get(arr, 5);
    cr_expect_eq(json_integer_value(json_object_get(timeout, "max")), 3600000);
    json_t *choices = json_object_get(json_array_get(arr, 4), "choices");
    cr_assert_eq(json_array_size(choices), 4);
    cr_expect_str_eq(json_string_value(json_array_get(choices, 3)), "error");
    json_decref(arr);
    run_free(&r);
}

Test(config, value_text_masks_url_passwords)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"redis://:hunter2@redis:6379/0", "redis://:****@redis:6379/0"},
        {"postgres://app:pw@db/tierone?sslmode=require",
         "postgres://app:****@db/tierone?sslmode=require"},
        {"postgres://app@db/tierone", "postgres://app@db/tierone"},
        {"redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"},
        {"https://host/path/a:b@c", "https://host/path/a:b@c"},
        {"plain text", "plain text"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct test_settings s = {0};
        s.redis_url = (char *)cases[i].in;
        struct buf b = BUF_INIT;
        config_value_text(&test_defs[0], &s, &b);
        cr_expect_str_eq(b.data, cases[i].out);
        buf_free(&b);
    }
}
