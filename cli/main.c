/* tierone: the operator's command. `tierone <command> [args...]`; `tierone help` lists the
 * commands. Every command exits 0 on success and 1 (reason on stderr) otherwise; `kb` and
 * the operator commands use 2 for a usage error. */
#include "cli.h"
#include "kb.h"
#include "ops.h"
#include "report.h"

#include "log.h"

#include <stdio.h>
#include <string.h>

static int cli_help(int argc, char **argv);
static void cli_help_usage(FILE *out);

/* Add a command: one line here, its run/usage functions in cli/<name>.c and cli.h. */
static const struct cli_command cli_commands[] = {
    {"migrate", "apply the database migrations (NNNN_name.sql) that are not applied yet",
     cli_migrate, cli_migrate_usage},
    {"kb", "ingest, list, remove, search and evaluate the knowledge base", cli_kb, cli_kb_usage},
    {"stats", "processed, failed, queues, retries, dead, processes (Sidekiq's dashboard)",
     cli_stats, cli_stats_usage},
    {"queues", "every queue with its size and latency", cli_queues, cli_queues_usage},
    {"dead", "jobs in the dead set, newest first", cli_dead, cli_set_usage},
    {"retries", "jobs waiting for a retry", cli_retries, cli_set_usage},
    {"scheduled", "jobs scheduled for later", cli_scheduled, cli_set_usage},
    {"retry", "retry a dead or retrying job now (JID, --all-dead, --all-retries)", cli_retry,
     cli_retry_usage},
    {"kill", "move a retrying or scheduled job to the dead set", cli_kill, cli_kill_usage},
    {"quiet", "stop a process from fetching new jobs (TSTP via Redis)", cli_quiet,
     cli_signal_usage},
    {"stop", "shut a process down (TERM via Redis)", cli_stop, cli_signal_usage},
    {"report", "per conversation: the customer's words, what the bot did or would do, and why",
     cli_report, cli_report_usage},
    {"help", "list the commands, or show one command's options", cli_help, cli_help_usage},
};

#define CLI_NCOMMANDS (sizeof cli_commands / sizeof cli_commands[0])

static const struct cli_command *cli_find(const char *name)
{
    for (size_t i = 0; i < CLI_NCOMMANDS; i++)
        if (strcmp(cli_commands[i].name, name) == 0)
            return &cli_commands[i];
    return NULL;
}

static void cli_usage(FILE *out)
{
    fprintf(out, "usage: tierone <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < CLI_NCOMMANDS; i++)
        fprintf(out, "  %-10s %s\n", cli_commands[i].name, cli_commands[i].summary);
    fprintf(out, "\n`tierone help <command>` shows a command's options. tierone %s\n",
            TIERONE_VERSION);
}

static void cli_help_usage(FILE *out)
{
    fprintf(out, "usage: tierone help [command]\n");
}

static int cli_help(int argc, char **argv)
{
    if (argc < 2) {
        cli_usage(stdout);
        return 0;
    }
    const struct cli_command *c = cli_find(argv[1]);
    if (!c) {
        fprintf(stderr, "tierone: unknown command '%s'\n", argv[1]);
        return 1;
    }
    c->usage(stdout);
    return 0;
}

int main(int argc, char **argv)
{
    log_init("cli", LOG_WARN);
    if (argc < 2) {
        cli_usage(stderr);
        return 1;
    }
    const char *name = argv[1];
    if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0)
        name = "help";
    if (strcmp(name, "--version") == 0 || strcmp(name, "version") == 0) {
        printf("tierone %s\n", TIERONE_VERSION);
        return 0;
    }
    const struct cli_command *c = cli_find(name);
    if (!c) {
        fprintf(stderr, "tierone: unknown command '%s'\n\n", name);
        cli_usage(stderr);
        return 1;
    }
    return c->run(argc - 1, argv + 1);
}
