/* config: table-driven settings from defaults, environment and command line (see config.h). */
#include "config.h"
#include "xalloc.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* A command-line value waiting to be applied after the environment. */
struct config_override {
    const struct config_def *def;
    const char *flag; /* "--name" as typed, flaglen bytes (for error messages) */
    int flaglen;
    const char *value;
};

/* Everything one pass over argv found. */
struct config_scan {
    enum config_mode mode;
    bool help;
    struct config_override *overrides;
    size_t noverrides;
    struct config_args args;
    char *cause; /* first error, reported unless --help came too */
};

static const char *const config_type_names[] = {
    [CONFIG_STRING] = "string", [CONFIG_INT] = "int",   [CONFIG_BOOL] = "bool",
    [CONFIG_DOUBLE] = "double", [CONFIG_ENUM] = "enum", [CONFIG_DURATION] = "duration",
};

static void *config_field(const struct config_def *d, void *settings)
{
    return (char *)settings + d->offset;
}

static const void *config_cfield(const struct config_def *d, const void *settings)
{
    return (const char *)settings + d->offset;
}

/* ---- scalar parsers ---------------------------------------------------------------- */

int config_parse_bool(const char *s, int *out)
{
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = 1;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = 0;
            return 0;
        }
    }
    return -1;
}

/* Strict base-10 integer: optional sign, digits, nothing else. */
static int config_parse_ll(const char *s, long long *out)
{
    const char *p = s;
    if (*p == '+' || *p == '-')
        p++;
    if (!isdigit((unsigned char)*p))
        return -1;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end)
        return -1;
    *out = v;
    return 0;
}

static int config_parse_double(const char *s, double *out)
{
    if (!*s || isspace((unsigned char)*s))
        return -1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

int config_parse_duration(const char *s, long long *ms)
{
    static const struct {
        const char *unit;
        long long ms;
    } units[] = {{"", 1}, {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}};
    if (!isdigit((unsigned char)*s))
        return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno)
        return -1;
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcmp(end, units[i].unit) != 0)
            continue;
        if (v > (unsigned long long)(LLONG_MAX / units[i].ms))
            return -1;
        *ms = (long long)v * units[i].ms;
        return 0;
    }
    return -1;
}

void config_format_duration(long long ms, struct buf *out)
{
    if (ms != 0 && ms % 3600000 == 0)
        buf_printf(out, "%lldh", ms / 3600000);
    else if (ms != 0 && ms % 60000 == 0)
        buf_printf(out, "%lldm", ms / 60000);
    else if (ms != 0 && ms % 1000 == 0)
        buf_printf(out, "%llds", ms / 1000);
    else
        buf_printf(out, "%lldms", ms);
}

/* ---- storing one value ------------------------------------------------------------- */

/* "must be between A and B", with bounds written in the def's own units. */
static char *config_bounds_text(const struct config_def *d)
{
    struct buf b = BUF_INIT;
    buf_puts(&b, "must be between ");
    if (d->type == CONFIG_DURATION) {
        config_format_duration((long long)d->min, &b);
        buf_puts(&b, " and ");
        config_format_duration((long long)d->max, &b);
    } else if (d->type == CONFIG_INT) {
        buf_printf(&b, "%lld and %lld", (long long)d->min, (long long)d->max);
    } else {
        buf_printf(&b, "%g and %g", d->min, d->max);
    }
    return buf_steal(&b);
}

static char *config_choices_text(const struct config_def *d)
{
    struct buf b = BUF_INIT;
    buf_puts(&b, "must be one of ");
    for (size_t i = 0; d->choices && d->choices[i]; i++)
        buf_printf(&b, "%s%s", i ? ", " : "", d->choices[i]);
    return buf_steal(&b);
}

/* Parse `text` for `d`; on error return a heap "what is wrong" phrase. */
static char *config_store(const struct config_def *d, void *settings, const char *text)
{
    void *field = config_field(d, settings);
    long long ll;
    double dv;
    int iv;
    switch (d->type) {
    case CONFIG_STRING:
        free(*(char **)field);
        *(char **)field = xstrdup(text);
        return NULL;
    case CONFIG_BOOL:
        if (config_parse_bool(text, &iv))
            return xstrdup("must be a boolean (1/0, true/false, yes/no, on/off)");
        *(int *)field = iv;
        return NULL;
    case CONFIG_ENUM:
        for (int i = 0; d->choices && d->choices[i]; i++) {
            if (strcmp(d->choices[i], text) == 0) {
                *(int *)field = i;
                return NULL;
            }
        }
        return config_choices_text(d);
    case CONFIG_INT:
    case CONFIG_DURATION:
        if (d->type == CONFIG_INT && config_parse_ll(text, &ll))
            return xstrdup("must be an integer");
        if (d->type == CONFIG_DURATION && config_parse_duration(text, &ll))
            return xstrdup("must be a duration like 250ms, 5s, 2m, 1h or bare milliseconds");
        if (d->bounded && ((double)ll < d->min || (double)ll > d->max))
            return config_bounds_text(d);
        *(long long *)field = ll;
        return NULL;
    case CONFIG_DOUBLE:
        if (config_parse_double(text, &dv))
            return xstrdup("must be a number");
        if (d->bounded && (dv < d->min || dv > d->max))
            return config_bounds_text(d);
        *(double *)field = dv;
        return NULL;
    }
    abort();
}

/* Store `text`, turning a failure into "<name>=<text>: <problem>". */
static int config_apply(const struct config_def *d, void *settings, const char *name,
                        const char *text, char **cause)
{
    char *why = config_store(d, settings, text);
    if (!why)
        return 0;
    *cause = xasprintf("%s=%s: %s", name, text, why);
    free(why);
    return -1;
}

static int config_load_defaults(const struct config_spec *spec, void *settings, char **cause)
{
    for (size_t i = 0; i < spec->ndefs; i++) {
        const struct config_def *d = &spec->defs[i];
        if (d->def) {
            char *name = xasprintf("default of %s", d->key);
            int rc = config_apply(d, settings, name, d->def, cause);
            free(name);
            if (rc)
                return -1;
        } else if (d->type == CONFIG_STRING) {
            free(*(char **)config_field(d, settings));
            *(char **)config_field(d, settings) = NULL;
        } else if (d->type == CONFIG_INT || d->type == CONFIG_DURATION) {
            *(long long *)config_field(d, settings) = 0;
        } else if (d->type == CONFIG_DOUBLE) {
            *(double *)config_field(d, settings) = 0;
        } else {
            *(int *)config_field(d, settings) = 0;
        }
    }
    return 0;
}

static int config_load_env(const struct config_spec *spec, void *settings, char **cause)
{
    for (size_t i = 0; i < spec->ndefs; i++) {
        const struct config_def *d = &spec->defs[i];
        const char *v = d->env ? getenv(d->env) : NULL;
        if (v && *v && config_apply(d, settings, d->env, v, cause))
            return -1;
    }
    return 0;
}

/* ---- command line ------------------------------------------------------------------ */

/* Flag names compare with '-' and '_' treated alike; `len` bytes of `arg` against `key`. */
static bool config_name_eq(const char *arg, size_t len, const char *key)
{
    size_t i = 0;
    for (; i < len && key[i]; i++) {
        char a = arg[i] == '_' ? '-' : arg[i];
        char k = key[i] == '_' ? '-' : key[i];
        if (a != k)
            return false;
    }
    return i == len && key[i] == '\0';
}

static const struct config_def *config_find_def(const struct config_spec *spec, const char *name,
                                                size_t len)
{
    for (size_t i = 0; i < spec->ndefs; i++)
        if (config_name_eq(name, len, spec->defs[i].key))
            return &spec->defs[i];
    return NULL;
}

static const struct config_flag *config_find_flag(const struct config_spec *spec, const char *name,
                                                  size_t len)
{
    for (size_t i = 0; i < spec->nflags; i++)
        if (config_name_eq(name, len, spec->flags[i].name))
            return &spec->flags[i];
    return NULL;
}

static void config_scan_error(struct config_scan *sc, char *msg)
{
    if (sc->cause)
        free(msg);
    else
        sc->cause = msg;
}

static void config_add_override(struct config_scan *sc, const struct config_def *d,
                                const char *flag, size_t flaglen, const char *value)
{
    sc->overrides = xrealloc(sc->overrides, (sc->noverrides + 1) * sizeof(*sc->overrides));
    sc->overrides[sc->noverrides++] = (struct config_override){d, flag, (int)flaglen, value};
}

static void config_add_extra(struct config_scan *sc, const struct config_flag *f, const char *v)
{
    struct config_args *a = &sc->args;
    a->extras = xrealloc(a->extras, (a->nextras + 1) * sizeof(*a->extras));
    a->extras[a->nextras++] = (struct config_extra){f->name, v};
}

static void config_add_positional(struct config_scan *sc, const char *arg)
{
    struct config_args *a = &sc->args;
    a->positional = xrealloc(a->positional, (a->npositional + 1) * sizeof(*a->positional));
    a->positional[a->npositional++] = arg;
}

/* Built-in mode flags; returns true when `arg` is one. */
static bool config_scan_mode(struct config_scan *sc, const char *arg)
{
    if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0)
        sc->help = true;
    else if (strcmp(arg, "--check-config") == 0)
        sc->mode = CONFIG_MODE_CHECK;
    else if (strcmp(arg, "--config-json") == 0)
        sc->mode = CONFIG_MODE_JSON;
    else if (strcmp(arg, "--version") == 0)
        sc->mode = CONFIG_MODE_VERSION;
    else
        return false;
    return true;
}

/* One "--name[=value]" argument at argv[*i]; may consume argv[*i + 1]. */
static void config_scan_flag(const struct config_spec *spec, struct config_scan *sc, int argc,
                             char **argv, int *i)
{
    const char *arg = argv[*i];
    const char *name = arg + 2;
    const char *eq = strchr(name, '=');
    size_t len = eq ? (size_t)(eq - name) : strlen(name);
    const char *value = eq ? eq + 1 : NULL;
    const char *next = *i + 1 < argc ? argv[*i + 1] : NULL;
    bool next_is_value = next && strncmp(next, "--", 2) != 0;

    const struct config_def *d = config_find_def(spec, name, len);
    if (d) {
        if (!value && d->type == CONFIG_BOOL)
            value = "true";
        else if (!value && next_is_value)
            value = argv[++*i];
        if (value)
            config_add_override(sc, d, arg, len + 2, value);
        else
            config_scan_error(sc, xasprintf("--%.*s: missing value", (int)len, name));
        return;
    }
    if (len > 3 && strncmp(name, "no-", 3) == 0 && !value) {
        d = config_find_def(spec, name + 3, len - 3);
        if (d && d->type == CONFIG_BOOL) {
            config_add_override(sc, d, arg, len + 2, "false");
            return;
        }
    }
    const struct config_flag *f = config_find_flag(spec, name, len);
    if (!f) {
        config_scan_error(sc, xasprintf("unknown option --%.*s (see --help)", (int)len, name));
        return;
    }
    if (f->takes_value && !value && next_is_value)
        value = argv[++*i];
    if (f->takes_value && !value)
        config_scan_error(sc, xasprintf("--%s: missing value", f->name));
    else if (!f->takes_value && value)
        config_scan_error(sc, xasprintf("--%s takes no value", f->name));
    else
        config_add_extra(sc, f, value);
}

static void config_scan_argv(const struct config_spec *spec, struct config_scan *sc, int argc,
                             char **argv)
{
    bool options = true;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (options && strcmp(arg, "--") == 0) {
            options = false;
        } else if (options && config_scan_mode(sc, arg)) {
            continue;
        } else if (options && strncmp(arg, "--", 2) == 0) {
            config_scan_flag(spec, sc, argc, argv, &i);
        } else if (options && arg[0] == '-' && arg[1] != '\0') {
            config_scan_error(sc, xasprintf("unknown option %s (see --help)", arg));
        } else if (!spec->positional) {
            config_scan_error(sc, xasprintf("unexpected argument '%s' (see --help)", arg));
        } else {
            config_add_positional(sc, arg);
        }
    }
    if (sc->help)
        sc->mode = CONFIG_MODE_HELP;
}

static int config_apply_overrides(const struct config_scan *sc, void *settings, char **cause)
{
    for (size_t i = 0; i < sc->noverrides; i++) {
        const struct config_override *o = &sc->overrides[i];
        char *name = xasprintf("%.*s", o->flaglen, o->flag);
        int rc = config_apply(o->def, settings, name, o->value, cause);
        free(name);
        if (rc)
            return -1;
    }
    return 0;
}

int config_load(const struct config_spec *spec, void *settings, int argc, char **argv,
                struct config_args *args, char **cause)
{
    struct config_scan sc = {.mode = CONFIG_MODE_RUN};
    int rc = -1;
    *cause = NULL;
    if (argv)
        config_scan_argv(spec, &sc, argc, argv);
    sc.args.mode = sc.mode;
    if (sc.mode == CONFIG_MODE_HELP || sc.mode == CONFIG_MODE_JSON ||
        sc.mode == CONFIG_MODE_VERSION) {
        rc = 0;
        goto out;
    }
    if (sc.cause) {
        *cause = sc.cause;
        sc.cause = NULL;
        goto out;
    }
    if (config_load_defaults(spec, settings, cause) || config_load_env(spec, settings, cause) ||
        config_apply_overrides(&sc, settings, cause))
        goto out;
    if (spec->validate && spec->validate(settings, cause)) {
        if (!*cause)
            *cause = xstrdup("invalid configuration");
        goto out;
    }
    rc = 0;
out:
    free(sc.cause);
    free(sc.overrides);
    if (args)
        *args = sc.args;
    else
        config_args_free(&sc.args);
    return rc;
}

void config_free(const struct config_spec *spec, void *settings)
{
    for (size_t i = 0; i < spec->ndefs; i++) {
        const struct config_def *d = &spec->defs[i];
        if (d->type != CONFIG_STRING)
            continue;
        char **p = config_field(d, settings);
        free(*p);
        *p = NULL;
    }
}

void config_args_free(struct config_args *args)
{
    free(args->extras);
    free(args->positional);
    memset(args, 0, sizeof(*args));
}

/* ---- output ------------------------------------------------------------------------ */

#ifndef TIERONE_VERSION
#define TIERONE_VERSION "unknown"
#endif

/* Shortest %g form that reads back as the same double. */
static void config_format_double(double v, struct buf *out)
{
    char tmp[64];
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(tmp, sizeof(tmp), "%.*g", prec, v);
        if (strtod(tmp, NULL) == v)
            break;
    }
    buf_puts(out, tmp);
}

static bool config_is_set(const struct config_def *d, const void *settings)
{
    if (d->type != CONFIG_STRING)
        return true;
    const char *s = *(char *const *)config_cfield(d, settings);
    return s && *s;
}

static void config_raw_text(const struct config_def *d, const void *settings, struct buf *out)
{
    const void *field = config_cfield(d, settings);
    int iv;
    switch (d->type) {
    case CONFIG_STRING:
        if (*(char *const *)field)
            buf_puts(out, *(char *const *)field);
        return;
    case CONFIG_INT:
        buf_printf(out, "%lld", *(const long long *)field);
        return;
    case CONFIG_BOOL:
        buf_puts(out, *(const int *)field ? "true" : "false");
        return;
    case CONFIG_DOUBLE:
        config_format_double(*(const double *)field, out);
        return;
    case CONFIG_ENUM:
        iv = *(const int *)field;
        for (int i = 0; d->choices && d->choices[i]; i++)
            if (i == iv) {
                buf_puts(out, d->choices[i]);
                return;
            }
        buf_printf(out, "%d", iv);
        return;
    case CONFIG_DURATION:
        config_format_duration(*(const long long *)field, out);
        return;
    }
    abort();
}

/* Append a string value, with the password of a "scheme://user:password@host" URL masked. */
static void config_url_text(const char *s, struct buf *out)
{
    const char *auth = strstr(s, "://");
    if (!auth) {
        buf_puts(out, s);
        return;
    }
    auth += 3;
    size_t authlen = strcspn(auth, "/?#");
    const char *at = NULL;
    for (const char *p = auth; p < auth + authlen; p++)
        if (*p == '@')
            at = p;
    const char *colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
    if (!colon) {
        buf_puts(out, s);
        return;
    }
    buf_append(out, s, (size_t)(colon + 1 - s));
    buf_puts(out, "****");
    buf_puts(out, at);
}

void config_value_text(const struct config_def *def, const void *settings, struct buf *out)
{
    if (def->secret) {
        if (config_is_set(def, settings))
            buf_puts(out, "****");
    } else if (def->type == CONFIG_STRING) {
        const char *v = *(char *const *)config_cfield(def, settings);
        if (v)
            config_url_text(v, out);
    } else {
        config_raw_text(def, settings, out);
    }
}

/* The placeholder after "--key" in --help: "=N", "=a|b|c", "[=BOOL]". */
static void config_help_placeholder(const struct config_def *d, struct buf *out)
{
    switch (d->type) {
    case CONFIG_STRING:
        buf_puts(out, "=TEXT");
        return;
    case CONFIG_INT:
        buf_puts(out, "=N");
        return;
    case CONFIG_BOOL:
        buf_puts(out, "[=BOOL]");
        return;
    case CONFIG_DOUBLE:
        buf_puts(out, "=X");
        return;
    case CONFIG_ENUM:
        buf_puts(out, "=");
        for (size_t i = 0; d->choices && d->choices[i]; i++)
            buf_printf(out, "%s%s", i ? "|" : "", d->choices[i]);
        return;
    case CONFIG_DURATION:
        buf_puts(out, "=DURATION");
        return;
    }
    abort();
}

/* What an unset value of `d` reads as (no default given). */
static const char *config_zero_text(const struct config_def *d)
{
    switch (d->type) {
    case CONFIG_STRING:
        return "none";
    case CONFIG_BOOL:
        return "false";
    case CONFIG_ENUM:
        return d->choices && d->choices[0] ? d->choices[0] : "0";
    case CONFIG_DURATION:
        return "0ms";
    default:
        return "0";
    }
}

static void config_help_def(const struct config_def *d, FILE *out)
{
    struct buf b = BUF_INIT;
    buf_puts(&b, "  --");
    for (const char *k = d->key; *k; k++)
        buf_append(&b, *k == '_' ? "-" : k, 1);
    config_help_placeholder(d, &b);
    fprintf(out, "%-34s %s", b.data, d->env ? d->env : "(no environment variable)");
    if (!d->def)
        fprintf(out, "  default: %s", config_zero_text(d));
    else if (d->secret)
        fputs("  default: ****", out);
    else
        fprintf(out, "  default: %s", d->def);
    if (d->bounded) {
        buf_reset(&b);
        if (d->type == CONFIG_DURATION) {
            config_format_duration((long long)d->min, &b);
            buf_puts(&b, "..");
            config_format_duration((long long)d->max, &b);
        } else {
            config_format_double(d->min, &b);
            buf_puts(&b, "..");
            config_format_double(d->max, &b);
        }
        fprintf(out, "  range: %s", b.data);
    }
    fprintf(out, "\n      %s%s\n", d->help ? d->help : "", d->secret ? " (secret)" : "");
    buf_free(&b);
}

void config_print_help(const struct config_spec *spec, FILE *out)
{
    fprintf(out, "usage: %s %s\n", spec->program, spec->usage ? spec->usage : "[options]");
    if (spec->summary)
        fprintf(out, "%s\n", spec->summary);
    fputs("\nSettings (flag, environment variable, default; the command line wins over the "
          "environment):\n",
          out);
    for (size_t i = 0; i < spec->ndefs; i++)
        config_help_def(&spec->defs[i], out);
    fputs("\nOther options:\n", out);
    for (size_t i = 0; i < spec->nflags; i++) {
        const struct config_flag *f = &spec->flags[i];
        char *flag = xasprintf("--%s%s", f->name, f->takes_value ? "=VALUE" : "");
        fprintf(out, "  %-32s %s\n", flag, f->help ? f->help : "");
        free(flag);
    }
    fprintf(out, "  %-32s %s\n", "--check-config", "print the effective configuration and exit");
    fprintf(out, "  %-32s %s\n", "--config-json", "print this table as JSON and exit");
    fprintf(out, "  %-32s %s\n", "--version", "print the version and exit");
    fprintf(out, "  %-32s %s\n", "-h, --help", "print this help and exit");
    fputs("Durations take a unit: 250ms, 5s, 2m, 1h (bare numbers are milliseconds).\n"
          "Booleans: 1/0, true/false, yes/no, on/off.\n",
          out);
}

void config_print_check(const struct config_spec *spec, const void *settings, FILE *out)
{
    int width = 0;
    for (size_t i = 0; i < spec->ndefs; i++) {
        int n = (int)strlen(spec->defs[i].key);
        width = n > width ? n : width;
    }
    struct buf b = BUF_INIT;
    for (size_t i = 0; i < spec->ndefs; i++) {
        buf_reset(&b);
        config_value_text(&spec->defs[i], settings, &b);
        fprintf(out, "%-*s = %s\n", width, spec->defs[i].key, b.data ? b.data : "");
    }
    buf_free(&b);
    fputs("configuration OK\n", out);
}

static json_t *config_bound_json(const struct config_def *d, double v)
{
    if (!d->bounded)
        return json_null();
    if (d->type == CONFIG_DOUBLE)
        return json_real(v);
    return json_integer((json_int_t)v);
}

static json_t *config_def_json(const struct config_def *d)
{
    json_t *o = json_object();
    json_object_set_new(o, "key", json_string(d->key));
    json_object_set_new(o, "env", d->env ? json_string(d->env) : json_null());
    json_object_set_new(o, "type", json_string(config_type_names[d->type]));
    json_object_set_new(o, "default", d->def ? json_string(d->def) : json_null());
    json_object_set_new(o, "min", config_bound_json(d, d->min));
    json_object_set_new(o, "max", config_bound_json(d, d->max));
    json_object_set_new(o, "secret", json_boolean(d->secret));
    json_object_set_new(o, "help", json_string(d->help ? d->help : ""));
    if (d->type == CONFIG_ENUM) {
        json_t *c = json_array();
        for (size_t i = 0; d->choices && d->choices[i]; i++)
            json_array_append_new(c, json_string(d->choices[i]));
        json_object_set_new(o, "choices", c);
    }
    return o;
}

int config_print_json(const struct config_spec *spec, FILE *out)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < spec->ndefs; i++)
        json_array_append_new(arr, config_def_json(&spec->defs[i]));
    int rc = json_dumpf(arr, out, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(arr);
    if (rc == 0 && fputc('\n', out) == EOF)
        rc = -1;
    return rc ? -1 : 0;
}

/* ---- main() entry point ------------------------------------------------------------ */

enum config_action config_main_stream(const struct config_spec *spec, void *settings, int argc,
                                      char **argv, struct config_args *args, FILE *out, FILE *err)
{
    struct config_args local;
    struct config_args *a = args ? args : &local;
    char *cause = NULL;
    enum config_action act = CONFIG_EXIT_OK;
    if (config_load(spec, settings, argc, argv, a, &cause)) {
        fprintf(err, "%s: %s\n", spec->program, cause);
        act = CONFIG_EXIT_USAGE;
        goto out;
    }
    switch (a->mode) {
    case CONFIG_MODE_RUN:
        if (!args)
            config_args_free(&local);
        free(cause);
        return CONFIG_RUN;
    case CONFIG_MODE_HELP:
        config_print_help(spec, out);
        break;
    case CONFIG_MODE_CHECK:
        config_print_check(spec, settings, out);
        break;
    case CONFIG_MODE_JSON:
        if (config_print_json(spec, out)) {
            fprintf(err, "%s: cannot write the configuration table\n", spec->program);
            act = CONFIG_EXIT_USAGE;
        }
        break;
    case CONFIG_MODE_VERSION:
        fprintf(out, "%s %s\n", spec->program, TIERONE_VERSION);
        break;
    }
out:
    fflush(out);
    free(cause);
    config_free(spec, settings);
    config_args_free(a);
    return act;
}

enum config_action config_main(const struct config_spec *spec, void *settings, int argc,
                               char **argv, struct config_args *args)
{
    return config_main_stream(spec, settings, argc, argv, args, stdout, stderr);
}
