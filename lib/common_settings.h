/* common_settings: the settings every tierone daemon has, written once. Each macro is a
 * config_def initialiser for field `field` of settings struct `T`, so the two daemons'
 * tables (and the Helm values checked against --config-json) cannot drift apart. */
#ifndef TIERONE_COMMON_SETTINGS_H
#define TIERONE_COMMON_SETTINGS_H

#include "config.h"

#include <stddef.h>

/* Names of enum job_ts_format and of the log levels a setting may take. */
extern const char *const common_ts_format_names[];
extern const char *const common_log_level_names[];

#define COMMON_SETTING_REDIS_URL(T, field)                                                         \
    {                                                                                              \
        .key = "redis_url", .env = "TIERONE_REDIS_URL", .type = CONFIG_STRING,                     \
        .def = "redis://127.0.0.1:6379/0", .secret = true,                                         \
        .help = "Redis URL: redis://[[user]:password@]host[:port][/db]",                           \
        .offset = offsetof(T, field)                                                               \
    }

#define COMMON_SETTING_ADMIN_HOST(T, field)                                                        \
    {                                                                                              \
        .key = "admin_host", .env = "TIERONE_ADMIN_HOST", .type = CONFIG_STRING, .def = "0.0.0.0", \
        .help = "address of the admin server (/metrics, /healthz, /readyz)",                       \
        .offset = offsetof(T, field)                                                               \
    }

#define COMMON_SETTING_TIMESTAMP_FORMAT(T, field)                                                  \
    {                                                                                              \
        .key = "timestamp_format", .env = "TIERONE_TIMESTAMP_FORMAT", .type = CONFIG_ENUM,         \
        .def = "float_seconds", .choices = common_ts_format_names,                                 \
        .help = "job timestamps written: float_seconds (Sidekiq 6/7) or int_millis (Sidekiq 8)",   \
        .offset = offsetof(T, field)                                                               \
    }

#define COMMON_SETTING_LOG_LEVEL(T, field)                                                         \
    {                                                                                              \
        .key = "log_level", .env = "TIERONE_LOG_LEVEL", .type = CONFIG_ENUM, .def = "info",        \
        .choices = common_log_level_names, .help = "debug, info, warn or error",                   \
        .offset = offsetof(T, field)                                                               \
    }

#endif
