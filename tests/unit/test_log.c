/* log: every line is one JSON object with ts, level, component, optional jid and class, and
 * the message, escaped; lines below the minimum level are not written. */
#include "log.h"

#include <criterion/criterion.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static char *captured;
static size_t captured_len;
static FILE *stream;

static void capture(void)
{
    stream = open_memstream(&captured, &captured_len);
    log_set_stream(stream);
}

static void release(void)
{
    log_set_stream(NULL);
    fclose(stream);
    free(captured);
}

TestSuite(log, .init = capture, .fini = release);

Test(log, job_line_is_json_with_jid_class_and_escaped_message)
{
    log_init("worker", LOG_DEBUG);
    log_job(LOG_WARN, "b4a577edbccf1d805744efa9", "Tierone::\"Odd\"", "failed: %s",
            "quote \" backslash \\ newline \n tab \t bell \a done");
    fflush(stream);
    cr_assert_eq(captured[captured_len - 1], '\n', "one line, newline-terminated");
    cr_assert_null(memchr(captured, '\n', captured_len - 1), "exactly one line");
    json_error_t err;
    json_t *j = json_loads(captured, 0, &err);
    cr_assert_not_null(j, "not JSON: %s (%s)", err.text, captured);
    cr_assert_str_eq(json_string_value(json_object_get(j, "level")), "warn");
    cr_assert_str_eq(json_string_value(json_object_get(j, "component")), "worker");
    cr_assert_str_eq(json_string_value(json_object_get(j, "jid")), "b4a577edbccf1d805744efa9");
    cr_assert_str_eq(json_string_value(json_object_get(j, "class")), "Tierone::\"Odd\"");
    cr_assert_str_eq(json_string_value(json_object_get(j, "msg")),
                     "failed: quote \" backslash \\ newline \n tab \t bell \a done");
    const char *ts = json_string_value(json_object_get(j, "ts"));
    cr_assert(ts && strlen(ts) == 24 && ts[10] == 'T' && ts[23] == 'Z', "ts %s", ts);
    json_decref(j);
}

Test(log, plain_line_has_no_job_fields)
{
    log_init("ingest", LOG_INFO);
    log_info("listening on %d", 8080);
    fflush(stream);
    json_t *j = json_loads(captured, 0, NULL);
    cr_assert_not_null(j);
    cr_assert_null(json_object_get(j, "jid"));
    cr_assert_null(json_object_get(j, "class"));
    cr_assert_str_eq(json_string_value(json_object_get(j, "msg")), "listening on 8080");
    json_decref(j);
}

Test(log, lines_below_the_level_are_skipped)
{
    log_init("worker", LOG_WARN);
    log_debug("no");
    log_info("no");
    log_error("yes");
    fflush(stream);
    cr_assert_eq(strstr(captured, "\"msg\":\"no\""), NULL);
    cr_assert_neq(strstr(captured, "\"msg\":\"yes\""), NULL);
}

Test(log, level_names_parse)
{
    enum log_level l;
    cr_assert_eq(log_level_parse("debug", &l), 0);
    cr_assert_eq(l, LOG_DEBUG);
    cr_assert_eq(log_level_parse("error", &l), 0);
    cr_assert_eq(l, LOG_ERROR);
    cr_assert_eq(log_level_parse("loud", &l), -1);
}
