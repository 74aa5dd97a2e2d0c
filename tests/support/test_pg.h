/* test_pg: scratch PostgreSQL databases for tests, on the server of
 * TIERONE_TEST_DATABASE_URL: empty, or migrated with the project's own migrations
 * (lib/migrate.h). */
#ifndef TIERONE_TEST_PG_H
#define TIERONE_TEST_PG_H

#include <libpq-fe.h>

/* Drop and create the empty database `name` on the test server and return its URL (static
 * buffer, valid until the next call). Aborts the test with a clear message when the server
 * is not configured or a step fails. */
const char *test_pg_create(const char *name);

/* Drop database `name` (closing its connections) if it exists. */
void test_pg_drop(const char *name);

/* Drop and create database `name` on the test server, apply every migration in
 * migrations/ (TIERONE_SOURCE_DIR or the source tree), and return its URL (static buffer,
 * valid until the next call). Aborts the test with a clear message when the server is not
 * configured or a step fails. */
const char *test_pg_fresh(const char *name);

/* A blocking connection to url (aborts the test on failure); PQfinish it. */
PGconn *test_pg_connect(const char *url);

/* Run sql (no parameters) and return the first column of the first row as a new string
 * (NULL for no row or SQL NULL); aborts the test on an error. */
char *test_pg_value(PGconn *c, const char *sql);

/* Run sql (no result wanted); aborts the test on an error. */
void test_pg_exec(PGconn *c, const char *sql);

#endif
