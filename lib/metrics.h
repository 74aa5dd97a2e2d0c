/* metrics: a Prometheus registry rendered as text exposition format 0.0.4 for the admin
 * /metrics endpoint.
 *
 * A registry holds families (counter, gauge, histogram), each with a name, a help line
 * and 0..4 label names. A family holds series, one per combination of label values,
 * created on first use. Look a series up once and keep the pointer: updating it is then
 * a plain add, no string work.
 *
 *   struct metrics_family *jobs = metrics_counter_new(reg, "tierone_jobs_total",
 *                                                     "Jobs finished.", 2, "queue", "result");
 *   struct metrics_series *ok = metrics_series_get(jobs, "default", "ok");   // once
 *   metrics_inc(ok);                                                         // hot path
 *   metrics_counter_add(jobs, 1, "default", "error");                        // ad hoc
 *
 * Everything runs on one libuv loop: no locks, not thread-safe. Misuse that can only be a
 * programming error (bad metric name, duplicate family, wrong type for an operation,
 * unsorted buckets) aborts with a message on stderr. */
#ifndef TIERONE_METRICS_H
#define TIERONE_METRICS_H

#include <stddef.h>

#include "buf.h"

/* The Content-Type header for metrics_render output. */
#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
#define METRICS_MAX_LABELS   4

enum metrics_type { METRICS_COUNTER, METRICS_GAUGE, METRICS_HISTOGRAM };

struct metrics_registry;
struct metrics_family;
struct metrics_series;

/* Reads a callback series' value at render time. */
typedef double (*metrics_value_fn)(void *arg);

/* A new, empty registry. Free with metrics_registry_free. */
struct metrics_registry *metrics_registry_new(void);
/* Free the registry with all its families and series (cached series pointers die too). */
void metrics_registry_free(struct metrics_registry *reg);

/* Add a counter / gauge family with `nlabels` (0..4) label names passed as const char *
 * varargs. Names and help are copied. The family is owned by the registry. A family with
 * no labels has its one series from the start, so it renders 0 before any update; labeled
 * families render nothing until a series exists. */
struct metrics_family *metrics_counter_new(struct metrics_registry *reg, const char *name,
                                           const char *help, int nlabels, ...);
struct metrics_family *metrics_gauge_new(struct metrics_registry *reg, const char *name,
                                         const char *help, int nlabels, ...);
/* Add a histogram family. `bounds` are the bucket upper bounds (inclusive: an observation
 * equal to a bound counts in that bucket), strictly increasing and finite; the +Inf bucket
 * is implicit (a trailing INFINITY in `bounds` is ignored). Copied. */
struct metrics_family *metrics_histogram_new(struct metrics_registry *reg, const char *name,
                                             const char *help, const double *bounds, size_t nbounds,
                                             int nlabels, ...);

/* An unlabeled gauge whose value is fn(arg), read at each render (queue depth, RSS). */
struct metrics_family *metrics_gauge_fn_new(struct metrics_registry *reg, const char *name,
                                            const char *help, metrics_value_fn fn, void *arg);
/* An unlabeled counter whose value is fn(arg), read at each render: a total another module
 * already keeps (jobs processed, statements run). */
struct metrics_family *metrics_counter_fn_new(struct metrics_registry *reg, const char *name,
                                              const char *help, metrics_value_fn fn, void *arg);

/* The series for the given label values (exactly the family's label count of const char *
 * varargs; NULL counts as ""), created on first use. The pointer stays valid until the
 * registry is freed. */
struct metrics_series *metrics_series_get(struct metrics_family *fam, ...);
/* Same with the label values in an array of the family's label count. */
struct metrics_series *metrics_series_getv(struct metrics_family *fam, const char *const *values);

/* Hot-path updates on a cached series. Counters: inc/add (v >= 0). Gauges: inc/add/set.
 * Histograms: observe. */
void metrics_inc(struct metrics_series *s);
void metrics_add(struct metrics_series *s, double v);
void metrics_set(struct metrics_series *s, double v);
void metrics_observe(struct metrics_series *s, double v);
/* Make a counter or gauge series read its value from fn(arg) at render time. */
void metrics_set_fn(struct metrics_series *s, metrics_value_fn fn, void *arg);
/* The current value of a counter or gauge series (calls its fn if it has one). */
double metrics_value(const struct metrics_series *s);
/* A histogram series' observation count and sum. */
unsigned long long metrics_hist_count(const struct metrics_series *s);
double metrics_hist_sum(const struct metrics_series *s);

/* Lookup plus update in one call, label values as varargs (for rare events). */
void metrics_counter_add(struct metrics_family *fam, double v, ...);
void metrics_gauge_set(struct metrics_family *fam, double v, ...);
void metrics_gauge_add(struct metrics_family *fam, double v, ...);
void metrics_histogram_observe(struct metrics_family *fam, double v, ...);

/* Append the whole registry in text format 0.0.4 to `out`: families in creation order,
 * series in creation order, each family with its # HELP and # TYPE lines. */
void metrics_render(const struct metrics_registry *reg, struct buf *out);

/* Append `v` the way Prometheus parses it: "NaN", "+Inf", "-Inf", integers without a
 * decimal point, other values in the shortest %g form that reads back exactly. */
void metrics_format_double(double v, struct buf *out);

/* Resident set size of this process in KiB (VmRSS in /proc/self/status), or -1. */
long long metrics_rss_kib(void);
/* metrics_value_fn giving the RSS in bytes (0 if unknown), for process_resident_memory_bytes. */
double metrics_rss_bytes_fn(void *unused);

#endif
