/* cli: the `tierone` operator command. main.c dispatches `tierone <command> [args...]`
 * through a table of these; each command lives in cli/<command>.c. */
#ifndef TIERONE_CLI_H
#define TIERONE_CLI_H

#include <stdio.h>

struct cli_command {
    const char *name;
    const char *summary; /* one line for `tierone help` */
    /* argv[0] is the command's name; returns the exit status (0 ok, 1 failure). */
    int (*run)(int argc, char **argv);
    /* Print the command's usage (for `tierone help <command>` and --help). */
    void (*usage)(FILE *out);
};

/* `tierone migrate [--database-url URL] [--dir DIR] [--status]` (cli/migrate.c). */
int cli_migrate(int argc, char **argv);
void cli_migrate_usage(FILE *out);

#endif
