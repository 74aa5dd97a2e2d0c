/* log: JSON-lines logger (see log.h). */
#include "log.h"
#include "buf.h"

#include <stdarg.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

enum log_level log_min_level = LOG_INFO;
static const char *log_component = "tierone";
static FILE *log_stream;

static const char *const log_level_names[] = {"debug", "info", "warn", "error", "off"};

void log_init(const char *component, enum log_level min)
{
    log_component = component;
    log_min_level = min;
}

int log_level_parse(const char *s, enum log_level *out)
{
    for (int i = LOG_DEBUG; i <= LOG_OFF; i++) {
        if (strcmp(s, log_level_names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    }
    return -1;
}

void log_set_stream(FILE *f)
{
    log_stream = f;
}

void log_write(enum log_level level, const char *jid, const char *klass, const char *fmt, ...)
{
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);

    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char ts[32];
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);

    struct buf line = BUF_INIT;
    buf_printf(&line, "{\"ts\":\"%s.%03ldZ\",\"level\":\"%s\",\"component\":", ts,
               (long)(tv.tv_usec / 1000), log_level_names[level]);
    buf_json_string(&line, log_component, strlen(log_component));
    if (jid) {
        buf_puts(&line, ",\"jid\":");
        buf_json_string(&line, jid, strnlen(jid, 64));
    }
    if (klass) {
        buf_puts(&line, ",\"class\":");
        buf_json_string(&line, klass, strnlen(klass, 256));
    }
    buf_puts(&line, ",\"msg\":");
    buf_json_string(&line, msg, strlen(msg));
    buf_puts(&line, "}\n");
    FILE *f = log_stream ? log_stream : stdout;
    fwrite(line.data, 1, line.len, f);
    fflush(f);
    buf_free(&line);
}
