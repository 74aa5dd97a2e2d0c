/* diagnostic: the job types registered by --diagnostic-jobs (see diagnostic.c). */
#ifndef TIERONE_DIAGNOSTIC_H
#define TIERONE_DIAGNOSTIC_H

#include "job_type.h"

/* Tierone::HttpGet, defined in http_get.c. */
extern const struct job_type http_get_type;

/* Register Noop, Sleep, Fail, Record and HttpGet on w. */
void diagnostic_register(struct worker *w);

#endif
