/* ops: the operator commands that read and act on Sidekiq's Redis layout (issue 7), each
 * doing only what the equivalent Sidekiq Web UI action does (lib/sidekiq_api.h).
 *
 *   tierone stats [--json]                     dashboard numbers and processes
 *   tierone queues [--json]                    every queue with size and latency
 *   tierone dead [--class C] [--limit N] [--json]
 *   tierone retries|scheduled [--class C] [--limit N] [--json]
 *   tierone retry JID|--all-dead|--all-retries [--json]   "Retry now"
 *   tierone kill JID [--json]                  retry/scheduled entry -> dead set
 *   tierone quiet|stop IDENTITY [--json]       TSTP / TERM through <identity>-signals
 *
 * Common options: --redis-url URL (default: TIERONE_REDIS_URL, else redis://127.0.0.1:6379/0).
 * Each returns the process exit status: 0 done, 1 failed or not found, 2 usage error. */
#ifndef TIERONE_CLI_OPS_H
#define TIERONE_CLI_OPS_H

#include <stdio.h>

int cli_stats(int argc, char **argv);
int cli_queues(int argc, char **argv);
int cli_dead(int argc, char **argv);
int cli_retries(int argc, char **argv);
int cli_scheduled(int argc, char **argv);
int cli_retry(int argc, char **argv);
int cli_kill(int argc, char **argv);
int cli_quiet(int argc, char **argv);
int cli_stop(int argc, char **argv);
/* Usage lines for `tierone help <command>`. */
void cli_stats_usage(FILE *out);
void cli_queues_usage(FILE *out);
void cli_set_usage(FILE *out);
void cli_retry_usage(FILE *out);
void cli_kill_usage(FILE *out);
void cli_signal_usage(FILE *out);

#endif
