/* log: JSON-lines logger (see log.h). */
#include "log.h"

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

size_t log_json_escape(char *out, size_t cap, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    if (cap == 0)
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[7];
        size_t n = 0;
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            n = 2;
        } else if (c == '\n') {
            memcpy(esc, "\\n", 2);
            n = 2;
        } else if (c == '\t') {
            memcpy(esc, "\\t", 2);
            n = 2;
        } else if (c == '\r') {
            memcpy(esc, "\\r", 2);
            n = 2;
        } else if (c < 0x20) {
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            n = 6;
        } else {
            esc[0] = (char)c;
            n = 1;
        }
        if (o + n >= cap)
            break;
        memcpy(out + o, esc, n);
        o += n;
    }
    out[o] = '\0';
    return o;
}

void log_write(enum log_level level, const char *jid, const char *klass, const char *fmt, ...)
{
    char msg[2048], esc[4200], line[5000];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    log_json_escape(esc, sizeof esc, msg, strlen(msg));

    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char ts[32];
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);

    int n =
        snprintf(line, sizeof line, "{\"ts\":\"%s.%03ldZ\",\"level\":\"%s\",\"component\":\"%s\"",
                 ts, (long)(tv.tv_usec / 1000), log_level_names[level], log_component);
    if (jid && n < (int)sizeof line) {
        char jesc[140];
        log_json_escape(jesc, sizeof jesc, jid, strnlen(jid, 64));
        n += snprintf(line + n, sizeof line - (size_t)n, ",\"jid\":\"%s\"", jesc);
    }
    if (klass && n < (int)sizeof line) {
        char kesc[300];
        log_json_escape(kesc, sizeof kesc, klass, strlen(klass));
        n += snprintf(line + n, sizeof line - (size_t)n, ",\"class\":\"%s\"", kesc);
    }
    if (n < (int)sizeof line)
        snprintf(line + n, sizeof line - (size_t)n, ",\"msg\":\"%s\"}\n", esc);
    FILE *f = log_stream ? log_stream : stdout;
    fputs(line, f);
    fflush(f);
}
