/* metrics: Prometheus registry and text exposition 0.0.4 (see metrics.h). */
#include "metrics.h"
#include "xalloc.h"

#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct metrics_series {
    struct metrics_family *fam;
    char *labels; /* rendered and escaped: `a="x",b="y"`, "" without labels */
    char *values[METRICS_MAX_LABELS];
    double value;
    metrics_value_fn fn;
    void *arg;
    unsigned long long *buckets; /* histogram: nbounds + 1 per-bucket (not cumulative) counts */
    unsigned long long count;
    double sum;
};

struct metrics_family {
    enum metrics_type type;
    char *name;
    char *help;
    int nlabels;
    char *label_names[METRICS_MAX_LABELS];
    double *bounds;
    size_t nbounds;
    struct metrics_series **series;
    size_t nseries;
};

struct metrics_registry {
    struct metrics_family **fams;
    size_t nfams;
};

static const char *const metrics_type_names[] = {
    [METRICS_COUNTER] = "counter",
    [METRICS_GAUGE] = "gauge",
    [METRICS_HISTOGRAM] = "histogram",
};

__attribute__((noreturn, format(printf, 1, 2))) static void metrics_die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("metrics: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

/* ---- registry and families --------------------------------------------------------- */

struct metrics_registry *metrics_registry_new(void)
{
    return xcalloc(1, sizeof(struct metrics_registry));
}

static void metrics_series_free(struct metrics_series *s)
{
    for (int i = 0; i < s->fam->nlabels; i++)
        free(s->values[i]);
    free(s->labels);
    free(s->buckets);
    free(s);
}

static void metrics_family_free(struct metrics_family *f)
{
    for (size_t i = 0; i < f->nseries; i++)
        metrics_series_free(f->series[i]);
    for (int i = 0; i < f->nlabels; i++)
        free(f->label_names[i]);
    free(f->series);
    free(f->bounds);
    free(f->name);
    free(f->help);
    free(f);
}

void metrics_registry_free(struct metrics_registry *reg)
{
    if (!reg)
        return;
    for (size_t i = 0; i < reg->nfams; i++)
        metrics_family_free(reg->fams[i]);
    free(reg->fams);
    free(reg);
}

/* [a-zA-Z_:][a-zA-Z0-9_:]* for metric names; without ':' for label names. */
static bool metrics_name_ok(const char *s, bool colon)
{
    if (!s || !*s)
        return false;
    for (size_t i = 0; s[i]; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                  (colon && c == ':') || (i > 0 && c >= '0' && c <= '9');
        if (!ok)
            return false;
    }
    return true;
}

static void metrics_check_family(const struct metrics_registry *reg, const char *name,
                                 enum metrics_type type, int nlabels, const char **labels)
{
    if (!metrics_name_ok(name, true))
        metrics_die("invalid metric name '%s'", name ? name : "(null)");
    for (size_t i = 0; i < reg->nfams; i++)
        if (strcmp(reg->fams[i]->name, name) == 0)
            metrics_die("duplicate metric family '%s'", name);
    if (nlabels < 0 || nlabels > METRICS_MAX_LABELS)
        metrics_die("%s: %d labels (at most %d)", name, nlabels, METRICS_MAX_LABELS);
    for (int i = 0; i < nlabels; i++) {
        if (!metrics_name_ok(labels[i], false) || strncmp(labels[i], "__", 2) == 0)
            metrics_die("%s: invalid label name '%s'", name, labels[i] ? labels[i] : "(null)");
        if (type == METRICS_HISTOGRAM && strcmp(labels[i], "le") == 0)
            metrics_die("%s: a histogram cannot have a label 'le'", name);
        for (int j = 0; j < i; j++)
            if (strcmp(labels[i], labels[j]) == 0)
                metrics_die("%s: label '%s' given twice", name, labels[i]);
    }
}

static struct metrics_family *metrics_family_add(struct metrics_registry *reg,
                                                 enum metrics_type type, const char *name,
                                                 const char *help, int nlabels, va_list ap)
{
    const char *labels[METRICS_MAX_LABELS] = {0};
    for (int i = 0; i < nlabels && i < METRICS_MAX_LABELS; i++)
        labels[i] = va_arg(ap, const char *);
    metrics_check_family(reg, name, type, nlabels, labels);
    struct metrics_family *f = xcalloc(1, sizeof(*f));
    f->type = type;
    f->name = xstrdup(name);
    f->help = xstrdup(help ? help : "");
    f->nlabels = nlabels;
    for (int i = 0; i < nlabels; i++)
        f->label_names[i] = xstrdup(labels[i]);
    reg->fams = xrealloc(reg->fams, (reg->nfams + 1) * sizeof(*reg->fams));
    reg->fams[reg->nfams++] = f;
    return f;
}

struct metrics_family *metrics_counter_new(struct metrics_registry *reg, const char *name,
                                           const char *help, int nlabels, ...)
{
    va_list ap;
    va_start(ap, nlabels);
    struct metrics_family *f = metrics_family_add(reg, METRICS_COUNTER, name, help, nlabels, ap);
    va_end(ap);
    if (nlabels == 0)
        metrics_series_getv(f, NULL);
    return f;
}

struct metrics_family *metrics_gauge_new(struct metrics_registry *reg, const char *name,
                                         const char *help, int nlabels, ...)
{
    va_list ap;
    va_start(ap, nlabels);
    struct metrics_family *f = metrics_family_add(reg, METRICS_GAUGE, name, help, nlabels, ap);
    va_end(ap);
    if (nlabels == 0)
        metrics_series_getv(f, NULL);
    return f;
}

struct metrics_family *metrics_histogram_new(struct metrics_registry *reg, const char *name,
                                             const char *help, const double *bounds, size_t nbounds,
                                             int nlabels, ...)
{
    if (nbounds > 0 && isinf(bounds[nbounds - 1]) && bounds[nbounds - 1] > 0)
        nbounds--;
    for (size_t i = 0; i < nbounds; i++) {
        if (!isfinite(bounds[i]) || (i > 0 && !(bounds[i] > bounds[i - 1])))
            metrics_die("%s: bucket bounds must be finite and strictly increasing", name);
    }
    va_list ap;
    va_start(ap, nlabels);
    struct metrics_family *f = metrics_family_add(reg, METRICS_HISTOGRAM, name, help, nlabels, ap);
    va_end(ap);
    f->nbounds = nbounds;
    f->bounds = xmalloc((nbounds ? nbounds : 1) * sizeof(double));
    if (nbounds)
        memcpy(f->bounds, bounds, nbounds * sizeof(double));
    if (nlabels == 0)
        metrics_series_getv(f, NULL);
    return f;
}

struct metrics_family *metrics_gauge_fn_new(struct metrics_registry *reg, const char *name,
                                            const char *help, metrics_value_fn fn, void *arg)
{
    struct metrics_family *f = metrics_gauge_new(reg, name, help, 0);
    metrics_set_fn(f->series[0], fn, arg);
    return f;
}

struct metrics_family *metrics_counter_fn_new(struct metrics_registry *reg, const char *name,
                                              const char *help, metrics_value_fn fn, void *arg)
{
    struct metrics_family *f = metrics_counter_new(reg, name, help, 0);
    metrics_set_fn(f->series[0], fn, arg);
    return f;
}

/* ---- series ------------------------------------------------------------------------ */

/* The escape for `c`, or NULL when it stands as is. Help text escapes \\ and newline;
 * label values also escape the double quote. */
static const char *metrics_escape_char(char c, bool quote)
{
    switch (c) {
    case '\\':
        return "\\\\";
    case '\n':
        return "\\n";
    case '"':
        return quote ? "\\\"" : NULL;
    default:
        return NULL;
    }
}

/* Append `s` escaped for a label value (quote) or a HELP line (!quote). */
static void metrics_escape(struct buf *out, const char *s, bool quote)
{
    size_t start = 0, i = 0;
    for (; s[i]; i++) {
        const char *rep = metrics_escape_char(s[i], quote);
        if (!rep)
            continue;
        buf_append(out, s + start, i - start);
        buf_puts(out, rep);
        start = i + 1;
    }
    buf_append(out, s + start, i - start);
}

static struct metrics_series *metrics_series_create(struct metrics_family *f,
                                                    const char *const *values)
{
    struct metrics_series *s = xcalloc(1, sizeof(*s));
    struct buf b = BUF_INIT;
    s->fam = f;
    buf_puts(&b, "");
    for (int i = 0; i < f->nlabels; i++) {
        s->values[i] = xstrdup(values[i] ? values[i] : "");
        buf_printf(&b, "%s%s=\"", i ? "," : "", f->label_names[i]);
        metrics_escape(&b, s->values[i], true);
        buf_puts(&b, "\"");
    }
    s->labels = buf_steal(&b);
    if (f->type == METRICS_HISTOGRAM)
        s->buckets = xcalloc(f->nbounds + 1, sizeof(*s->buckets));
    f->series = xrealloc(f->series, (f->nseries + 1) * sizeof(*f->series));
    f->series[f->nseries++] = s;
    return s;
}

struct metrics_series *metrics_series_getv(struct metrics_family *fam, const char *const *values)
{
    for (size_t i = 0; i < fam->nseries; i++) {
        struct metrics_series *s = fam->series[i];
        int j = 0;
        for (; j < fam->nlabels; j++)
            if (strcmp(s->values[j], values[j] ? values[j] : "") != 0)
                break;
        if (j == fam->nlabels)
            return s;
    }
    return metrics_series_create(fam, values);
}

static struct metrics_series *metrics_series_va(struct metrics_family *fam, va_list ap)
{
    const char *values[METRICS_MAX_LABELS] = {0};
    for (int i = 0; i < fam->nlabels; i++)
        values[i] = va_arg(ap, const char *);
    return metrics_series_getv(fam, values);
}

struct metrics_series *metrics_series_get(struct metrics_family *fam, ...)
{
    va_list ap;
    va_start(ap, fam);
    struct metrics_series *s = metrics_series_va(fam, ap);
    va_end(ap);
    return s;
}

/* ---- updates ----------------------------------------------------------------------- */

static void metrics_expect(const struct metrics_series *s, bool ok, const char *op)
{
    if (!ok)
        metrics_die("%s: %s on a %s", s->fam->name, op, metrics_type_names[s->fam->type]);
}

void metrics_inc(struct metrics_series *s)
{
    metrics_expect(s, s->fam->type != METRICS_HISTOGRAM, "inc");
    s->value += 1;
}

void metrics_add(struct metrics_series *s, double v)
{
    metrics_expect(s, s->fam->type != METRICS_HISTOGRAM, "add");
    s->value += v;
}

void metrics_set(struct metrics_series *s, double v)
{
    metrics_expect(s, s->fam->type == METRICS_GAUGE, "set");
    s->value = v;
}

void metrics_observe(struct metrics_series *s, double v)
{
    const struct metrics_family *f = s->fam;
    metrics_expect(s, f->type == METRICS_HISTOGRAM, "observe");
    size_t i = 0;
    while (i < f->nbounds && !(v <= f->bounds[i]))
        i++;
    s->buckets[i]++;
    s->count++;
    s->sum += v;
}

void metrics_set_fn(struct metrics_series *s, metrics_value_fn fn, void *arg)
{
    metrics_expect(s, s->fam->type != METRICS_HISTOGRAM, "set_fn");
    s->fn = fn;
    s->arg = arg;
}

double metrics_value(const struct metrics_series *s)
{
    return s->fn ? s->fn(s->arg) : s->value;
}

unsigned long long metrics_hist_count(const struct metrics_series *s)
{
    return s->count;
}

double metrics_hist_sum(const struct metrics_series *s)
{
    return s->sum;
}

void metrics_counter_add(struct metrics_family *fam, double v, ...)
{
    va_list ap;
    va_start(ap, v);
    struct metrics_series *s = metrics_series_va(fam, ap);
    va_end(ap);
    metrics_expect(s, fam->type == METRICS_COUNTER, "counter_add");
    metrics_add(s, v);
}

void metrics_gauge_set(struct metrics_family *fam, double v, ...)
{
    va_list ap;
    va_start(ap, v);
    struct metrics_series *s = metrics_series_va(fam, ap);
    va_end(ap);
    metrics_set(s, v);
}

void metrics_gauge_add(struct metrics_family *fam, double v, ...)
{
    va_list ap;
    va_start(ap, v);
    struct metrics_series *s = metrics_series_va(fam, ap);
    va_end(ap);
    metrics_expect(s, fam->type == METRICS_GAUGE, "gauge_add");
    metrics_add(s, v);
}

void metrics_histogram_observe(struct metrics_family *fam, double v, ...)
{
    va_list ap;
    va_start(ap, v);
    struct metrics_series *s = metrics_series_va(fam, ap);
    va_end(ap);
    metrics_observe(s, v);
}

/* ---- rendering --------------------------------------------------------------------- */

void metrics_format_double(double v, struct buf *out)
{
    if (isnan(v)) {
        buf_puts(out, "NaN");
    } else if (isinf(v)) {
        buf_puts(out, v > 0 ? "+Inf" : "-Inf");
    } else if (v == trunc(v) && fabs(v) < 1e15) {
        buf_printf(out, "%.0f", v == 0 ? 0.0 : v);
    } else {
        char tmp[64];
        for (int prec = 15; prec <= 17; prec++) {
            snprintf(tmp, sizeof(tmp), "%.*g", prec, v);
            if (strtod(tmp, NULL) == v)
                break;
        }
        buf_puts(out, tmp);
    }
}

/* One sample line: name+suffix, labels (plus an optional le), value. */
static void metrics_line(struct buf *out, const struct metrics_series *s, const char *suffix,
                         const char *le, double v)
{
    buf_puts(out, s->fam->name);
    buf_puts(out, suffix);
    if (s->labels[0] || le) {
        buf_puts(out, "{");
        buf_puts(out, s->labels);
        if (le)
            buf_printf(out, "%sle=\"%s\"", s->labels[0] ? "," : "", le);
        buf_puts(out, "}");
    }
    buf_puts(out, " ");
    metrics_format_double(v, out);
    buf_puts(out, "\n");
}

static void metrics_render_histogram(struct buf *out, const struct metrics_series *s)
{
    const struct metrics_family *f = s->fam;
    struct buf le = BUF_INIT;
    unsigned long long cum = 0;
    for (size_t i = 0; i < f->nbounds; i++) {
        cum += s->buckets[i];
        buf_reset(&le);
        metrics_format_double(f->bounds[i], &le);
        metrics_line(out, s, "_bucket", le.data, (double)cum);
    }
    metrics_line(out, s, "_bucket", "+Inf", (double)s->count);
    metrics_line(out, s, "_sum", NULL, s->sum);
    metrics_line(out, s, "_count", NULL, (double)s->count);
    buf_free(&le);
}

void metrics_render(const struct metrics_registry *reg, struct buf *out)
{
    buf_puts(out, "");
    for (size_t i = 0; i < reg->nfams; i++) {
        const struct metrics_family *f = reg->fams[i];
        if (f->nseries == 0)
            continue;
        buf_printf(out, "# HELP %s ", f->name);
        metrics_escape(out, f->help, false);
        buf_printf(out, "\n# TYPE %s %s\n", f->name, metrics_type_names[f->type]);
        for (size_t j = 0; j < f->nseries; j++) {
            const struct metrics_series *s = f->series[j];
            if (f->type == METRICS_HISTOGRAM)
                metrics_render_histogram(out, s);
            else
                metrics_line(out, s, "", NULL, metrics_value(s));
        }
    }
}

/* ---- process ----------------------------------------------------------------------- */

long long metrics_rss_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return -1;
    char line[256];
    long long kib = -1;
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, "VmRSS:", 6) == 0) {
            if (sscanf(line + 6, "%lld", &kib) != 1)
                kib = -1;
            break;
        }
    }
    fclose(f);
    return kib;
}

double metrics_rss_bytes_fn(void *unused)
{
    long long kib = metrics_rss_kib();
    return kib < 0 ? 0 : (double)kib * 1024.0;
}
