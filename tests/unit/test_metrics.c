/* Unit tests for lib/metrics: exact text exposition for counters, gauges, histograms,
 * labels, escaping and callback gauges. */
#include <criterion/criterion.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"

/* Render `reg` into a fresh string (caller frees). */
static char *render(const struct metrics_registry *reg)
{
    struct buf b = BUF_INIT;
    metrics_render(reg, &b);
    return buf_steal(&b);
}

Test(metrics, counter_with_labels)
{
    struct metrics_registry *reg = metrics_registry_new();
    struct metrics_family *jobs =
        metrics_counter_new(reg, "tierone_jobs_total", "Jobs finished.", 2, "queue", "result");
    struct metrics_series *ok = metrics_series_get(jobs, "default", "ok");
    metrics_inc(ok);
    metrics_inc(ok);
    metrics_counter_add(jobs, 3, "default", "error");
    metrics_counter_add(jobs, 1, "default", "ok");
    cr_expect_eq(metrics_series_get(jobs, "default", "ok"), ok, "same labels, same series");
    const char *const values[] = {"default", "ok"};
    cr_expect_eq(metrics_series_getv(jobs, values), ok);
    cr_expect_eq(metrics_value(ok), 3.0);
    char *text = render(reg);
    cr_expect_str_eq(text, "# HELP tierone_jobs_total Jobs finished.\n"
                           "# TYPE tierone_jobs_total counter\n"
                           "tierone_jobs_total{queue=\"default\",result=\"ok\"} 3\n"
                           "tierone_jobs_total{queue=\"default\",result=\"error\"} 3\n");
    free(text);
    metrics_registry_free(reg);
}

Test(metrics, unlabeled_families_render_zero_and_labeled_empty_ones_nothing)
{
    struct metrics_registry *reg = metrics_registry_new();
    metrics_counter_new(reg, "a_total", "A.", 0);
    metrics_gauge_new(reg, "b", "B.", 1, "queue");
    metrics_gauge_new(reg, "c", "C.", 0);
    char *text = render(reg);
    cr_expect_str_eq(text, "# HELP a_total A.\n"
                           "# TYPE a_total counter\n"
                           "a_total 0\n"
                           "# HELP c C.\n"
                           "# TYPE c gauge\n"
                           "c 0\n");
    free(text);
    metrics_registry_free(reg);
}

Test(metrics, gauges_set_add_and_float_values)
{
    struct metrics_registry *reg = metrics_registry_new();
    struct metrics_family *g = metrics_gauge_new(reg, "tierone_value", "Values.", 1, "k");
    metrics_gauge_set(g, 5, "int");
    metrics_gauge_add(g, -7, "int");
    metrics_gauge_set(g, 0.25, "quarter");
    metrics_gauge_set(g, 1e-7, "tiny");
    metrics_gauge_set(g, 1.5e20, "huge");
    metrics_gauge_set(g, NAN, "nan");
    metrics_gauge_set(g, INFINITY, "inf");
    metrics_gauge_set(g, -INFINITY, "ninf");
    struct metrics_series *s = metrics_series_get(g, "inc");
    metrics_inc(s);
    metrics_add(s, 0.5);
    char *text = render(reg);
    cr_expect_str_eq(text, "# HELP tierone_value Values.\n"
                           "# TYPE tierone_value gauge\n"
                           "tierone_value{k=\"int\"} -2\n"
                           "tierone_value{k=\"quarter\"} 0.25\n"
                           "tierone_value{k=\"tiny\"} 1e-07\n"
                           "tierone_value{k=\"huge\"} 1.5e+20\n"
                           "tierone_value{k=\"nan\"} NaN\n"
                           "tierone_value{k=\"inf\"} +Inf\n"
                           "tierone_value{k=\"ninf\"} -Inf\n"
                           "tierone_value{k=\"inc\"} 1.5\n");
    free(text);
    metrics_registry_free(reg);
}

Test(metrics, histogram_buckets_are_cumulative_and_inclusive)
{
    struct metrics_registry *reg = metrics_registry_new();
    static const double bounds[] = {0.25, 0.5, 1};
    struct metrics_family *h =
        metrics_histogram_new(reg, "tierone_job_seconds", "Job duration.", bounds, 3, 0);
    struct metrics_series *s = metrics_series_get(h);
    /* 0.25, 0.5 and 1 sit exactly on bounds and count in those buckets. */
    metrics_observe(s, 0.25);
    metrics_observe(s, 0.5);
    metrics_observe(s, 0.75);
    metrics_observe(s, 1);
    metrics_observe(s, 2);
    cr_expect_eq(metrics_hist_count(s), 5);
    cr_expect_eq(metrics_hist_sum(s), 4.5);
    char *text = render(reg);
    cr_expect_str_eq(text, "# HELP tierone_job_seconds Job duration.\n"
                           "# TYPE tierone_job_seconds histogram\n"
                           "tierone_job_seconds_bucket{le=\"0.25\"} 1\n"
                           "tierone_job_seconds_bucket{le=\"0.5\"} 2\n"
                           "tierone_job_seconds_bucket{le=\"1\"} 4\n"
                           "tierone_job_seconds_bucket{le=\"+Inf\"} 5\n"
                           "tierone_job_seconds_sum 4.5\n"
                           "tierone_job_seconds_count 5\n");
    free(text);
    metrics_registry_free(reg);
}

Test(metrics, histogram_with_labels)
{
    struct metrics_registry *reg = metrics_registry_new();
    static const double bounds[] = {0.005, 0.1, 2.5, INFINITY};
    struct metrics_family *h =
        metrics_histogram_new(reg, "http_seconds", "HTTP latency.", bounds, 4, 1, "host");
    metrics_histogram_observe(h, 0.001, "llm");
    metrics_histogram_observe(h, 3, "llm");
    metrics_histogram_observe(h, 0.1, "chatwoot");
    char *text = render(reg);
    cr_expect_str_eq(text, "# HELP http_seconds HTTP latency.\n"
                           "# TYPE http_seconds histogram\n"
                           "http_seconds_bucket{host=\"llm\",le=\"0.005\"} 1\n"
                           "http_seconds_bucket{host=\"llm\",le=\"0.1\"} 1\n"
                           "http_seconds_bucket{host=\"llm\",le=\"2.5\"} 1\n"
                           "http_seconds_bucket{host=\"llm\",le=\"+Inf\"} 2\n"
                           "http_seconds_sum{host=\"llm\"} 3.001\n"
                           "http_seconds_count{host=\"llm\"} 2\n"
                           "http_seconds_bucket{host=\"chatwoot\",le=\"0.005\"} 0\n"
                           "http_seconds_bucket{host=\"chatwoot\",le=\"0.1\"} 1\n"
                           "http_seconds_bucket{host=\"chatwoot\",le=\"2.5\"} 1\n"
                           "http_seconds_bucket{host=\"chatwoot\",le=\"+Inf\"} 1\n"
                           "http_seconds_sum{host=\"chatwoot\"} 0.1\n"
                           "http_seconds_count{host=\"chatwoot\"} 1\n");
    free(text);
    metrics_registry_free(reg);
}

Test(metrics, empty_histogram_has_only_the_inf_bucket)
{
    struct metrics_registry *reg = metrics_registry_new();
    struct metrics_family *h = metrics_histogram_new(reg, "h", "H.", NULL, 0, 0);
    metrics_histogram_observe(h, -1);
    char *text = render(reg);
    cr_expect_str_eq(text, "# HELP h H.\n"
                           "# TYPE h histogram\n"
                           "h_bucket{le=\"+Inf\"} 1\n"
                           "h_sum -1\n"
                           "h_count 1\n");
    free(text);
    metrics_registry_free(reg);
}

Test(metrics, escaping_of_label_values_and_help)
{
    struct metrics_registry *reg = metrics_registry_new();
    struct metrics_family *c =
        metrics_counter_new(reg, "esc_total", "Back\\slash, \"quotes\"\nand newline.", 1, "v");
    metrics_counter_add(c, 1, "a\\b\"c\nd");
    metrics_counter_add(c, 2, NULL);
    char *text = render(reg);
    cr_expect_str_eq(text, "# HELP esc_total Back\\\\slash, \"quotes\"\\nand newline.\n"
                           "# TYPE esc_total counter\n"
                           "esc_total{v=\"a\\\\b\\\"c\\nd\"} 1\n"
                           "esc_total{v=\"\"} 2\n");
    free(text);
    metrics_registry_free(reg);
}

static double queue_depth(void *arg)
{
    return (double)*(const long *)arg;
}

Test(metrics, callback_gauges_are_read_at_render_time)
{
    struct metrics_registry *reg = metrics_registry_new();
    long depth = 4;
    long critical = 1;
    metrics_gauge_fn_new(reg, "tierone_queue_depth_total", "Jobs waiting.", queue_depth, &depth);
    struct metrics_family *per = metrics_gauge_new(reg, "queue_depth", "Per queue.", 1, "queue");
    metrics_set_fn(metrics_series_get(per, "critical"), queue_depth, &critical);
    char *text = render(reg);
    cr_expect_str_eq(text, "# HELP tierone_queue_depth_total Jobs waiting.\n"
                           "# TYPE tierone_queue_depth_total gauge\n"
                           "tierone_queue_depth_total 4\n"
                           "# HELP queue_depth Per queue.\n"
                           "# TYPE queue_depth gauge\n"
                           "queue_depth{queue=\"critical\"} 1\n");
    free(text);
    depth = 17;
    critical = 0;
    text = render(reg);
    cr_expect_not_null(strstr(text, "\ntierone_queue_depth_total 17\n"), "%s", text);
    cr_expect_not_null(strstr(text, "\nqueue_depth{queue=\"critical\"} 0\n"), "%s", text);
    free(text);
    metrics_registry_free(reg);
}

/* A total kept elsewhere (the worker's jobs processed) shown as a counter, read at render. */
Test(metrics, callback_counters_are_read_at_render_time)
{
    struct metrics_registry *reg = metrics_registry_new();
    long done = 3;
    metrics_counter_fn_new(reg, "jobs_total", "Jobs done.", queue_depth, &done);
    char *text = render(reg);
    cr_expect_str_eq(text, "# HELP jobs_total Jobs done.\n"
                           "# TYPE jobs_total counter\n"
                           "jobs_total 3\n");
    free(text);
    done = 40;
    text = render(reg);
    cr_expect_not_null(strstr(text, "\njobs_total 40\n"), "%s", text);
    free(text);
    metrics_registry_free(reg);
}

Test(metrics, families_render_in_creation_order_and_render_appends)
{
    struct metrics_registry *reg = metrics_registry_new();
    metrics_gauge_new(reg, "zzz", "Z.", 0);
    metrics_counter_new(reg, "aaa_total", "A.", 0);
    struct buf b = BUF_INIT;
    buf_puts(&b, "# prefix\n");
    metrics_render(reg, &b);
    cr_expect_str_eq(b.data, "# prefix\n"
                             "# HELP zzz Z.\n# TYPE zzz gauge\nzzz 0\n"
                             "# HELP aaa_total A.\n# TYPE aaa_total counter\naaa_total 0\n");
    buf_free(&b);
    metrics_registry_free(reg);
}

Test(metrics, empty_registry_renders_empty_string)
{
    struct metrics_registry *reg = metrics_registry_new();
    char *text = render(reg);
    cr_expect_str_eq(text, "");
    free(text);
    metrics_registry_free(reg);
    metrics_registry_free(NULL);
}

Test(metrics, format_double)
{
    static const struct {
        double v;
        const char *out;
    } cases[] = {
        {0, "0"},        {-0.0, "0"},
        {1, "1"},        {-3, "-3"},
        {0.1, "0.1"},    {2.5, "2.5"},
        {1e-7, "1e-07"}, {123456789012, "123456789012"},
        {1e15, "1e+15"}, {9007199254740992.0, "9007199254740992"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct buf b = BUF_INIT;
        metrics_format_double(cases[i].v, &b);
        cr_expect_str_eq(b.data, cases[i].out);
        buf_free(&b);
    }
    /* Values needing 17 digits still read back exactly. */
    struct buf b = BUF_INIT;
    metrics_format_double(1.0 / 3.0, &b);
    cr_expect_eq(strtod(b.data, NULL), 1.0 / 3.0, "%s", b.data);
    buf_free(&b);
}

Test(metrics, rss_is_read_from_proc)
{
    long long kib = metrics_rss_kib();
    cr_expect_gt(kib, 0);
    cr_expect_gt(metrics_rss_bytes_fn(NULL), 0.0);
}

Test(metrics, duplicate_family_aborts, .signal = SIGABRT)
{
    struct metrics_registry *reg = metrics_registry_new();
    metrics_counter_new(reg, "x_total", "X.", 0);
    metrics_gauge_new(reg, "x_total", "X again.", 0);
}

Test(metrics, invalid_names_abort, .signal = SIGABRT)
{
    struct metrics_registry *reg = metrics_registry_new();
    metrics_counter_new(reg, "bad-name", "X.", 0);
}

Test(metrics, le_label_on_histogram_aborts, .signal = SIGABRT)
{
    struct metrics_registry *reg = metrics_registry_new();
    static const double bounds[] = {1};
    metrics_histogram_new(reg, "h", "H.", bounds, 1, 1, "le");
}

Test(metrics, unsorted_buckets_abort, .signal = SIGABRT)
{
    struct metrics_registry *reg = metrics_registry_new();
    static const double bounds[] = {1, 1};
    metrics_histogram_new(reg, "h", "H.", bounds, 2, 0);
}

Test(metrics, set_on_counter_aborts, .signal = SIGABRT)
{
    struct metrics_registry *reg = metrics_registry_new();
    struct metrics_family *c = metrics_counter_new(reg, "c_total", "C.", 0);
    metrics_set(metrics_series_get(c), 3);
}
