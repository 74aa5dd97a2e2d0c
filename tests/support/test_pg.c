/* test_pg: see test_pg.h. */
#include "test_pg.h"

#include "migrate.h"
#include "test_check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void test_pg_quiet(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

PGconn *test_pg_connect(const char *url)
{
    PGconn *c = PQconnectdb(url);
    test_check(PQstatus(c) == CONNECTION_OK, "connect to %s: %s", url, PQerrorMessage(c));
    PQsetNoticeProcessor(c, test_pg_quiet, NULL);
    return c;
}

void test_pg_exec(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    test_check(st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK, "%s: %s", sql, PQerrorMessage(c));
    PQclear(r);
}

char *test_pg_value(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    test_check(PQresultStatus(r) == PGRES_TUPLES_OK, "%s: %s", sql, PQerrorMessage(c));
    char *v = NULL;
    if (PQntuples(r) > 0 && !PQgetisnull(r, 0, 0))
        v = strdup(PQgetvalue(r, 0, 0));
    PQclear(r);
    return v;
}

static const char *test_pg_server(void)
{
    const char *base = getenv("TIERONE_TEST_DATABASE_URL");
    test_check(base && *base, "TIERONE_TEST_DATABASE_URL is not set (run through scripts/test.sh)");
    return base;
}

void test_pg_drop(const char *name)
{
    PGconn *admin = test_pg_connect(test_pg_server());
    char sql[256];
    snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS \"%s\" WITH (FORCE)", name);
    test_pg_exec(admin, sql);
    PQfinish(admin);
}

const char *test_pg_create(const char *name)
{
    static char url[1024];
    const char *base = test_pg_server();
    /* The URL with its database name replaced. */
    const char *q = strchr(base, '?');
    size_t end = q ? (size_t)(q - base) : strlen(base);
    size_t slash = end;
    while (slash > 0 && base[slash - 1] != '/')
        slash--;
    test_check(slash > 0, "cannot find the database name in %s", base);
    snprintf(url, sizeof url, "%.*s%s%s", (int)slash, base, name, q ? q : "");
    test_pg_drop(name);
    PGconn *admin = test_pg_connect(base);
    char sql[256];
    snprintf(sql, sizeof sql, "CREATE DATABASE \"%s\"", name);
    test_pg_exec(admin, sql);
    PQfinish(admin);
    return url;
}

const char *test_pg_fresh(const char *name)
{
    const char *url = test_pg_create(name);
    const char *src = getenv("TIERONE_SOURCE_DIR");
    char dir[1024];
    if (src && *src)
        snprintf(dir, sizeof dir, "%s/migrations", src);
    else
        snprintf(dir, sizeof dir, "%s", TIERONE_MIGRATIONS_SOURCE);
    char *err = NULL;
    struct migration_list applied;
    int rc = migrate_apply(url, dir, &applied, &err);
    test_check(rc == 0, "migrate %s: %s", dir, err ? err : "?");
    migration_list_free(&applied);
    free(err);
    return url;
}
