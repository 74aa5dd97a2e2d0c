/* job_error: constructors for the failure record every job and client shares. */
#include "job_error.h"

#include "xalloc.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static struct job_error *job_error_vnew(enum job_err_kind kind, const char *error_class,
                                        const char *fmt, va_list ap)
{
    struct job_error *e = xcalloc(1, sizeof *e);
    e->kind = kind;
    e->error_class = xstrdup(error_class ? error_class : "RuntimeError");
    if (vasprintf(&e->error_message, fmt, ap) < 0)
        e->error_message = xstrdup("(no message)");
    return e;
}

struct job_error *job_error_new(enum job_err_kind kind, const char *error_class, const char *fmt,
                                ...)
{
    va_list ap;
    va_start(ap, fmt);
    struct job_error *e = job_error_vnew(kind, error_class, fmt, ap);
    va_end(ap);
    return e;
}

struct job_error *job_error_retry_at(double at_s, const char *error_class, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    struct job_error *e = job_error_vnew(JOB_ERR_RETRY_AT, error_class, fmt, ap);
    va_end(ap);
    e->retry_at = at_s;
    return e;
}

struct job_error *job_error_reschedule(double at_s, const char *error_class, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    struct job_error *e = job_error_vnew(JOB_ERR_RESCHEDULE, error_class, fmt, ap);
    va_end(ap);
    e->retry_at = at_s;
    return e;
}

const char *job_error_kind_name(enum job_err_kind kind)
{
    switch (kind) {
    case JOB_ERR_RETRY:
        return "retry";
    case JOB_ERR_PERMANENT:
        return "permanent";
    case JOB_ERR_RETRY_AT:
        return "retry_at";
    case JOB_ERR_RESCHEDULE:
        return "reschedule";
    }
    return "unknown";
}

void job_error_free(struct job_error *e)
{
    if (!e)
        return;
    free(e->error_class);
    free(e->error_message);
    free(e);
}
