/* migrate: the database schema, as a folder of numbered SQL files applied in order.
 *
 *   migrations/0001_create_kb.sql, 0002_turn_ledger.sql, ...
 *
 * A file name is NNNN_name.sql: a version number (digits, compared as a number, at most
 * 18 digits), an underscore, a name of letters, digits, '_' or '-'. Other *.sql names, and
 * two files with the same number, are refused before anything runs; files not ending in
 * .sql (README.md) and hidden files are ignored.
 *
 * migrate_apply takes a session advisory lock (MIGRATE_LOCK_KEY), so concurrent migrators
 * (several pods starting, the Helm Job) run one after the other; creates
 * schema_migrations(version bigint primary key, name text, checksum text, applied_at
 * timestamptz) if missing; refuses when an applied file changed (sha256 checksum) or was
 * renamed; then applies each pending file in version order, each in its own transaction
 * together with its schema_migrations row. A failing file is rolled back alone: the files
 * before it stay applied, the error names the file and the line. Running it again applies
 * nothing. Files must not contain transaction control (BEGIN/COMMIT) or statements that
 * cannot run in a transaction (CREATE INDEX CONCURRENTLY).
 *
 * Synchronous libpq: this is a command-line step, not part of the event loop. */
#ifndef TIERONE_MIGRATE_H
#define TIERONE_MIGRATE_H

#include <stddef.h>

/* pg_advisory_lock key shared by every tierone migrator ("tierone" in ASCII). */
#define MIGRATE_LOCK_KEY "32766981730954853"

struct migration {
    long long version;
    char *name;        /* file name, e.g. "0001_create_kb.sql" (the recorded one if no file) */
    char *path;        /* NULL when the file is gone (recorded in the database only) */
    char checksum[65]; /* sha256 of the file, hex (the recorded one when there is no file) */
    int applied;       /* recorded in schema_migrations */
    int changed;       /* applied, but the file's checksum or name differs (migrate_status) */
    char *applied_at;  /* PostgreSQL's text of applied_at, NULL while pending */
};

/* Migrations in version order; the list owns everything in it. */
struct migration_list {
    struct migration *v;
    size_t n;
};

void migration_list_free(struct migration_list *l);

/* Read the NNNN_name.sql files of dir (checksums included) into out, sorted by version.
 * Returns 0, or -1 with a reason in *err (caller frees): dir unreadable, a malformed
 * name, a duplicate version. */
int migrate_scan(const char *dir, struct migration_list *out, char **err);

/* Apply the pending migrations of dir to the database at conninfo (URL or key=value),
 * under the advisory lock. applied receives the migrations applied by this call, in order
 * (also when it fails part way). Returns 0, or -1 with a reason in *err (caller frees). */
int migrate_apply(const char *conninfo, const char *dir, struct migration_list *applied,
                  char **err);

/* Every migration of dir and of schema_migrations, merged, with applied/changed set
 * (takes no lock, creates nothing). Returns 0, or -1 with a reason in *err. */
int migrate_status(const char *conninfo, const char *dir, struct migration_list *out, char **err);

#endif
