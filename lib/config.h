/* config: one table drives the configuration of every tierone binary.
 *
 * A binary describes each setting once, in a static array of struct config_def: its key
 * (the command-line flag is "--" + key, with '-' and '_' interchangeable), its environment
 * variable, its type, its default as text, bounds, whether it is secret, a help line, and
 * where the parsed value goes in a caller-owned settings struct (offsetof). Parsing,
 * --help, --check-config and --config-json (the table as JSON, checked against the Helm
 * chart by a test) all read that table.
 *
 *   struct worker_settings { long long concurrency; char *redis_url; int verbose; };
 *   static const struct config_def worker_defs[] = {
 *       {.key = "concurrency", .env = "TIERONE_CONCURRENCY", .type = CONFIG_INT,
 *        .def = "10", .min = 1, .max = 10000, .bounded = true, .help = "jobs in flight",
 *        .offset = offsetof(struct worker_settings, concurrency)},
 *       ...
 *   };
 *   static const struct config_spec worker_spec = {
 *       .program = "tierone-worker", .defs = worker_defs, .ndefs = CONFIG_COUNT(worker_defs)};
 *
 *   int main(int argc, char **argv) {
 *       struct worker_settings s = {0};
 *       int act = config_main(&worker_spec, &s, argc, argv, NULL);
 *       if (act != CONFIG_RUN)
 *           return act;   // 0 after --help/--check-config, 2 after an error
 *       ...
 *       config_free(&worker_spec, &s);
 *   }
 *
 * Precedence: default < environment variable < command line. An empty environment
 * variable counts as unset. The library never prints an error itself (except
 * config_main, whose job it is); errors come back as a message naming the variable or
 * flag and the allowed values, e.g. "TIERONE_CONCURRENCY=0: must be between 1 and 10000". */
#ifndef TIERONE_CONFIG_H
#define TIERONE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "buf.h"

/* Value types and the C type stored at def->offset in the settings struct. */
enum config_type {
    CONFIG_STRING,   /* char *: owned by the settings, freed by config_free; NULL if unset */
    CONFIG_INT,      /* long long */
    CONFIG_BOOL,     /* int, 0 or 1; 1/0/true/false/yes/no/on/off; a bare --key means 1 */
    CONFIG_DOUBLE,   /* double */
    CONFIG_ENUM,     /* int: index into def->choices */
    CONFIG_DURATION, /* long long milliseconds; "250ms", "5s", "2m", "1h" or bare ms */
};

struct config_def {
    const char *key; /* "concurrency"; the flag is --concurrency */
    const char *env; /* "TIERONE_CONCURRENCY", or NULL for a command-line-only key */
    enum config_type type;
    const char *def;            /* default as text (parsed like any value); NULL = unset/0 */
    double min, max;            /* inclusive bounds for INT, DOUBLE, DURATION (ms) when bounded */
    bool bounded;               /* check min/max */
    const char *const *choices; /* CONFIG_ENUM: NULL-terminated list of names */
    bool secret;                /* never shown: masked as "****" by --check-config and value_text */
    const char *help;           /* one line */
    size_t offset;              /* offsetof(settings struct, field) */
};

/* A flag the binary handles itself (not a setting), e.g. --diagnostic-jobs. */
struct config_flag {
    const char *name; /* without the leading "--" */
    bool takes_value; /* --name=VALUE or --name VALUE; otherwise bare --name only */
    const char *help; /* one line for --help */
};

struct config_spec {
    const char *program; /* "tierone-worker", used in usage and error lines */
    const char *usage;   /* text after the program name; NULL means "[options]" */
    const char *summary; /* one line under the usage line, or NULL */
    const struct config_def *defs;
    size_t ndefs;
    const struct config_flag *flags; /* extra flags returned in config_args, may be NULL */
    size_t nflags;
    bool positional; /* accept non-flag arguments (returned in config_args) */
    /* Optional cross-field check run after a successful load. Returns 0, or -1 and sets
     * *cause to a heap string (xasprintf) that the library hands to its caller. */
    int (*validate)(const void *settings, char **cause);
};

#define CONFIG_COUNT(arr) (sizeof(arr) / sizeof((arr)[0]))

/* What the command line asked for. */
enum config_mode {
    CONFIG_MODE_RUN,     /* normal start */
    CONFIG_MODE_HELP,    /* --help or -h */
    CONFIG_MODE_CHECK,   /* --check-config */
    CONFIG_MODE_JSON,    /* --config-json */
    CONFIG_MODE_VERSION, /* --version */
};

/* One extra flag seen on the command line, in order. */
struct config_extra {
    const char *name;  /* the spec's config_flag name (static) */
    const char *value; /* borrowed from argv; NULL for a bare flag */
};

/* What config_load leaves for the caller besides the settings. */
struct config_args {
    enum config_mode mode;
    struct config_extra *extras; /* owned array, nextras entries */
    size_t nextras;
    const char **positional; /* owned array of borrowed argv strings */
    size_t npositional;
};

/* Load settings: defaults, then environment variables, then argv (argv[0] is skipped;
 * argc 0 / argv NULL means no command line), then spec->validate.
 *   --key=value, --key value (value must not start with "--"), --key for booleans,
 *   --no-key for booleans, "--" ends the options (the rest is positional).
 * Unknown flags, unexpected positional arguments and bad values are errors.
 * `settings` must be zeroed or hold strings from an earlier config_load (old strings are
 * freed when replaced). When --help, --config-json or --version is given, the settings are
 * not touched and errors in other arguments are ignored (mode tells which).
 * Returns 0, or -1 with *cause set to a heap message the caller frees. On failure too,
 * strings already stored are owned by the settings: call config_free. `args` may be NULL
 * (extras and positional arguments are then dropped); otherwise free it with
 * config_args_free, also after a failure. */
int config_load(const struct config_spec *spec, void *settings, int argc, char **argv,
                struct config_args *args, char **cause);

/* Free every CONFIG_STRING field of `settings` and set it to NULL. Safe to repeat. */
void config_free(const struct config_spec *spec, void *settings);

/* Free the arrays inside `args` (not the struct) and zero it. */
void config_args_free(struct config_args *args);

/* Print the usage line, the summary and one entry per key (flag, env var, default, help),
 * then the extra flags and the built-in ones, to `out`. */
void config_print_help(const struct config_spec *spec, FILE *out);

/* Print every effective value, one "key = value" line each (secrets as "****" when set,
 * "" when not), then "configuration OK". The caller decides the exit status. */
void config_print_check(const struct config_spec *spec, const void *settings, FILE *out);

/* Print the definition table as a JSON array of {key, env, type, default, min, max,
 * secret, help, choices?} (env/default/min/max are null when absent). Returns 0 or -1. */
int config_print_json(const struct config_spec *spec, FILE *out);

/* Append the value of one setting as text to `out`, masked when the key is secret
 * ("****" if set, "" if not). Strings unquoted, with the password of a URL masked
 * ("redis://:****@host/0"); booleans "true"/"false", enums by name, durations like "5s" or
 * "250ms". For startup log lines and --check-config. */
void config_value_text(const struct config_def *def, const void *settings, struct buf *out);

/* Result of config_main: CONFIG_RUN, or the exit status main() should return. */
enum config_action {
    CONFIG_RUN = -1,       /* settings loaded: run */
    CONFIG_EXIT_OK = 0,    /* help / check / json / version printed to stdout */
    CONFIG_EXIT_USAGE = 2, /* error printed to stderr as "program: message" */
};

/* Everything main() needs: config_load, then print help / check / JSON / version to
 * stdout or the error to stderr. On CONFIG_RUN the settings are loaded (caller frees them
 * with config_free, and `args` with config_args_free). Otherwise the settings and `args`
 * are already freed and main() returns the action as its exit status. */
enum config_action config_main(const struct config_spec *spec, void *settings, int argc,
                               char **argv, struct config_args *args);

/* config_main writing to `out` / `err` instead of stdout / stderr (tests). */
enum config_action config_main_stream(const struct config_spec *spec, void *settings, int argc,
                                      char **argv, struct config_args *args, FILE *out, FILE *err);

/* Parse a boolean: 1/0, true/false, yes/no, on/off (any case). Returns 0 or -1. */
int config_parse_bool(const char *s, int *out);

/* Parse a duration into milliseconds: a non-negative integer with an optional unit
 * ms, s, m or h ("250ms", "5s", "2m", "1h"); a bare number is milliseconds.
 * Returns 0, or -1 when malformed or out of range. */
int config_parse_duration(const char *s, long long *ms);

/* Format milliseconds with the largest unit that divides them exactly ("2m", "1500ms"). */
void config_format_duration(long long ms, struct buf *out);

#endif
