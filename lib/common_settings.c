/* common_settings: choice lists shared by the daemons' config tables (see the header). */
#include "common_settings.h"

/* In the order of enum job_ts_format and enum log_level. */
const char *const common_ts_format_names[] = {"float_seconds", "int_millis", NULL};
const char *const common_log_level_names[] = {"debug", "info", "warn", "error", NULL};
