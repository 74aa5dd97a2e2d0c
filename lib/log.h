/* log: one JSON object per line on stdout, for Kubernetes log collectors.
 *
 *   {"ts":"2026-11-21T08:30:00.123Z","level":"info","component":"worker",
 *    "msg":"job done","jid":"b4a5...","class":"Tierone::Noop"}
 *
 * The level check happens in the macro, so a disabled debug line costs one compare.
 * Job lines go through log_job(), which adds "jid" and "class". Never log a secret:
 * config values marked secret are masked by config.c before they reach here. */
#ifndef TIERONE_LOG_H
#define TIERONE_LOG_H

#include <stdio.h>

enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR, LOG_OFF };

/* Minimum level that is written; lines below it are skipped. */
extern enum log_level log_min_level;

/* Set the component name ("worker", "ingest", "cli") and the minimum level. */
void log_init(const char *component, enum log_level min);
/* Parse "debug" / "info" / "warn" / "error" / "off"; returns 0, or -1 if unknown. */
int log_level_parse(const char *s, enum log_level *out);
/* Send log lines to `f` instead of stdout (tests); NULL restores stdout. */
void log_set_stream(FILE *f);

/* Write one line. jid and klass may be NULL (then the fields are left out). */
void log_write(enum log_level level, const char *jid, const char *klass, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define log_at(level, jid, klass, ...)                                                             \
    do {                                                                                           \
        if ((level) >= log_min_level)                                                              \
            log_write((level), (jid), (klass), __VA_ARGS__);                                       \
    } while (0)

#define log_debug(...) log_at(LOG_DEBUG, NULL, NULL, __VA_ARGS__)
#define log_info(...)  log_at(LOG_INFO, NULL, NULL, __VA_ARGS__)
#define log_warn(...)  log_at(LOG_WARN, NULL, NULL, __VA_ARGS__)
#define log_error(...) log_at(LOG_ERROR, NULL, NULL, __VA_ARGS__)
/* A line about one job: carries its jid and class. */
#define log_job(level, jid, klass, ...) log_at((level), (jid), (klass), __VA_ARGS__)

#endif
