/* report: `tierone report`, what the support pipeline did (or, in shadow mode, would have
 * done) and why, per conversation: how an operator judges the bot before it speaks.
 *
 *   tierone report [--since DURATION|TIMESTAMP|all] [--conversation ID] [--account ID]
 *                  [--json] [--database-url URL]
 *
 * Reads the turns and effects tables (migrations/0002_pipeline.sql) of $TIERONE_DATABASE_URL
 * (or --database-url) with blocking libpq. For each conversation (ordered by its first turn
 * in the window), each turn in order: the customer's words, how it ended (answered,
 * escalated, superseded, dropped, with the reason; or still open), the decision (action,
 * category, reason, who decided, the cited passages with their source) and each outward
 * effect (kind, state shadow/pending/sent, and its essential text: the reply, the note, the
 * Slack text, the Linear title). Then one summary line: turns, answered, escalated,
 * superseded, dropped, open, and the effects by state. --json prints the same as one JSON
 * document.
 *
 * --since: a duration back from now (90s, 30m, 24h, 7d, 2w), a timestamp PostgreSQL reads
 * (2026-05-01, "2026-05-01 10:00:00+02"), or "all"; default 24h. Turns are selected by
 * received_at.
 *
 * Exit status: 0 printed (also when there is nothing to report), 1 the database failed or
 * has no pipeline schema (run `tierone migrate`), 2 bad usage. */
#ifndef TIERONE_CLI_REPORT_H
#define TIERONE_CLI_REPORT_H

#include <stdio.h>

/* Run `tierone report ...`: argv[0] is "report". Returns the exit status (above). */
int cli_report(int argc, char **argv);

/* Print the usage (for `tierone help report` and --help). */
void cli_report_usage(FILE *out);

#endif
