/* migrate: numbered SQL files applied once each, in order, under an advisory lock
 * (see migrate.h). */
#include "migrate.h"

#include "buf.h"
#include "digest.h"
#include "xalloc.h"

#include <dirent.h>
#include <errno.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

void migration_list_free(struct migration_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->v[i].name);
        free(l->v[i].path);
        free(l->v[i].applied_at);
    }
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

static struct migration *migrate_list_add(struct migration_list *l)
{
    l->v = xrealloc(l->v, (l->n + 1) * sizeof *l->v);
    struct migration *m = &l->v[l->n++];
    memset(m, 0, sizeof *m);
    return m;
}

/* Copy of m (strings duplicated) appended to l. */
static void migrate_list_copy(struct migration_list *l, const struct migration *m)
{
    struct migration *c = migrate_list_add(l);
    *c = *m;
    c->name = xstrdup(m->name);
    c->path = xstrdup(m->path);
    c->applied_at = xstrdup(m->applied_at);
}

/* ---- the folder --------------------------------------------------------------------------- */

/* Whole file into a new string (*len bytes). Returns NULL with errno set on failure. */
static char *migrate_read_file(const char *path, size_t *len)
{
    struct buf b = BUF_INIT;
    if (buf_read_file(&b, path) != 0) {
        int saved = errno;
        buf_free(&b);
        errno = saved;
        return NULL;
    }
    *len = b.len;
    return buf_steal(&b);
}

/* Parse "NNNN_name.sql" into *version. Returns 0, or -1 if malformed. */
static int migrate_parse_name(const char *name, long long *version)
{
    size_t digits = strspn(name, "0123456789");
    if (digits == 0 || digits > 18 || name[digits] != '_')
        return -1;
    const char *rest = name + digits + 1;
    size_t body = strspn(rest, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-");
    if (body == 0 || strcmp(rest + body, ".sql") != 0)
        return -1;
    *version = strtoll(name, NULL, 10);
    return 0;
}

static int migrate_cmp_version(const void *a, const void *b)
{
    const struct migration *x = a, *y = b;
    return (x->version > y->version) - (x->version < y->version);
}

static int migrate_has_suffix(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

int migrate_scan(const char *dir, struct migration_list *out, char **err)
{
    memset(out, 0, sizeof *out);
    *err = NULL;
    DIR *d = opendir(dir);
    if (!d) {
        *err = xasprintf("cannot read migrations directory %s: %s", dir, strerror(errno));
        return -1;
    }
    struct dirent *e;
    while (!*err && (e = readdir(d))) {
        if (e->d_name[0] == '.' || !migrate_has_suffix(e->d_name, ".sql"))
            continue;
        long long version = 0;
        char *path = xasprintf("%s/%s", dir, e->d_name);
        struct stat st;
        size_t len = 0;
        char *text = NULL;
        if (migrate_parse_name(e->d_name, &version) != 0)
            *err = xasprintf("malformed migration file name %s (want NNNN_name.sql)", e->d_name);
        else if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
            *err = xasprintf("%s is not a regular file", path);
        else if (!(text = migrate_read_file(path, &len)))
            *err = xasprintf("cannot read %s: %s", path, strerror(errno));
        if (*err) {
            free(path);
            break;
        }
        struct migration *m = migrate_list_add(out);
        m->version = version;
        m->name = xstrdup(e->d_name);
        m->path = path;
        digest_sha256_hex(text, len, m->checksum);
        free(text);
    }
    closedir(d);
    if (!*err && out->n > 1) {
        qsort(out->v, out->n, sizeof *out->v, migrate_cmp_version);
        for (size_t i = 1; i < out->n && !*err; i++)
            if (out->v[i].version == out->v[i - 1].version)
                *err = xasprintf("%s and %s have the same version %lld", out->v[i - 1].name,
                                 out->v[i].name, out->v[i].version);
    }
    if (*err) {
        migration_list_free(out);
        return -1;
    }
    return 0;
}

/* ---- the database ------------------------------------------------------------------------- */

/* "<what>: <message> (SQLSTATE xxxxx)" for a failed result (or the connection's error). */
static char *migrate_pq_error(PGconn *pg, PGresult *res, const char *what)
{
    const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    if (!msg)
        msg = PQerrorMessage(pg);
    int n = (int)strcspn(msg, "\n");
    if (state)
        return xasprintf("%s: %.*s (SQLSTATE %s)", what, n, msg, state);
    return xasprintf("%s: %.*s", what, n, msg);
}

/* Run sql with text params; returns the result when its status is want, else NULL with
 * *err set ("<what>: ..."). */
static PGresult *migrate_exec(PGconn *pg, const char *sql, int n, const char *const *params,
                              ExecStatusType want, const char *what, char **err)
{
    PGresult *res = PQexecParams(pg, sql, n, NULL, params, NULL, NULL, 0);
    if (res && PQresultStatus(res) == want)
        return res;
    *err = migrate_pq_error(pg, res, what);
    PQclear(res);
    return NULL;
}

static PGconn *migrate_connect(const char *conninfo, char **err)
{
    /* conninfo comes last, so its own settings win over these defaults. */
    const char *kw[] = {"connect_timeout", "fallback_application_name", "dbname", NULL};
    const char *val[] = {"10", "tierone-migrate", conninfo, NULL};
    PGconn *pg = PQconnectdbParams(kw, val, 1);
    if (PQstatus(pg) != CONNECTION_OK) {
        *err = migrate_pq_error(pg, NULL, "cannot connect to PostgreSQL");
        PQfinish(pg);
        return NULL;
    }
    PQclear(PQexec(pg, "SET client_min_messages = warning"));
    return pg;
}

/* The rows of schema_migrations (empty when the table does not exist). */
static int migrate_recorded(PGconn *pg, struct migration_list *out, char **err)
{
    memset(out, 0, sizeof *out);
    PGresult *res = migrate_exec(pg, "SELECT to_regclass('schema_migrations') IS NOT NULL", 0, NULL,
                                 PGRES_TUPLES_OK, "reading schema_migrations", err);
    if (!res)
        return -1;
    int exists = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    if (!exists)
        return 0;
    res = migrate_exec(pg,
                       "SELECT version, name, checksum, applied_at::text FROM schema_migrations "
                       "ORDER BY version",
                       0, NULL, PGRES_TUPLES_OK, "reading schema_migrations", err);
    if (!res)
        return -1;
    for (int i = 0; i < PQntuples(res); i++) {
        struct migration *m = migrate_list_add(out);
        m->version = strtoll(PQgetvalue(res, i, 0), NULL, 10);
        m->name = xstrdup(PQgetvalue(res, i, 1));
        snprintf(m->checksum, sizeof m->checksum, "%s", PQgetvalue(res, i, 2));
        m->applied = 1;
        m->applied_at = xstrdup(PQgetvalue(res, i, 3));
    }
    PQclear(res);
    return 0;
}

static const struct migration *migrate_find(const struct migration_list *l, long long version)
{
    for (size_t i = 0; i < l->n; i++)
        if (l->v[i].version == version)
            return &l->v[i];
    return NULL;
}

/* -1 with *err when an applied file was edited or renamed since. */
static int migrate_check_applied(const struct migration_list *files,
                                 const struct migration_list *done, char **err)
{
    for (size_t i = 0; i < files->n; i++) {
        const struct migration *f = &files->v[i];
        const struct migration *d = migrate_find(done, f->version);
        if (!d)
            continue;
        if (strcmp(d->name, f->name) != 0) {
            *err = xasprintf("version %lld was applied as %s but the file is now %s; "
                             "nothing applied",
                             f->version, d->name, f->name);
            return -1;
        }
        if (strcmp(d->checksum, f->checksum) != 0) {
            *err = xasprintf("%s changed after it was applied (checksum %.12s recorded, %.12s "
                             "now): add a new migration instead; nothing applied",
                             f->name, d->checksum, f->checksum);
            return -1;
        }
    }
    return 0;
}

/* 1-based line of the character at 1-based position pos (UTF-8) in text. */
static int migrate_line_at(const char *text, long pos)
{
    int line = 1;
    for (long chars = 0; *text && chars < pos - 1; text++) {
        if (((unsigned char)*text & 0xC0) != 0x80)
            chars++;
        if (*text == '\n')
            line++;
    }
    return line;
}

/* BEGIN; the file; its schema_migrations row; COMMIT. Rolls back on any error. */
static int migrate_one(PGconn *pg, const struct migration *m, char **err)
{
    size_t len;
    char *text = migrate_read_file(m->path, &len);
    if (!text) {
        *err = xasprintf("cannot read %s: %s", m->path, strerror(errno));
        return -1;
    }
    char sum[65];
    digest_sha256_hex(text, len, sum);
    PGresult *res = NULL;
    int rc = -1;
    if (strcmp(sum, m->checksum) != 0) {
        *err = xasprintf("%s changed while migrating", m->name);
        goto out;
    }
    if (!(res = migrate_exec(pg, "BEGIN", 0, NULL, PGRES_COMMAND_OK, "BEGIN", err)))
        goto out;
    PQclear(res);
    res = PQexec(pg, text);
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_EMPTY_QUERY) {
        const char *pos = res ? PQresultErrorField(res, PG_DIAG_STATEMENT_POSITION) : NULL;
        char *what = pos ? xasprintf("%s line %d", m->name, migrate_line_at(text, atol(pos)))
                         : xstrdup(m->name);
        *err = migrate_pq_error(pg, res, what);
        free(what);
        goto rollback;
    }
    PQclear(res);
    char version[24];
    snprintf(version, sizeof version, "%lld", m->version);
    const char *params[] = {version, m->name, m->checksum};
    res = migrate_exec(pg,
                       "INSERT INTO schema_migrations (version, name, checksum) "
                       "VALUES ($1, $2, $3)",
                       3, params, PGRES_COMMAND_OK, m->name, err);
    if (!res)
        goto rollback;
    PQclear(res);
    res = migrate_exec(pg, "COMMIT", 0, NULL, PGRES_COMMAND_OK, m->name, err);
    if (!res)
        goto rollback;
    rc = 0;
    goto out;
rollback:
    PQclear(PQexec(pg, "ROLLBACK"));
out:
    PQclear(res);
    free(text);
    return rc;
}

static const char *const migrate_create_table = "CREATE TABLE IF NOT EXISTS schema_migrations ("
                                                " version bigint PRIMARY KEY,"
                                                " name text NOT NULL,"
                                                " checksum text NOT NULL,"
                                                " applied_at timestamptz NOT NULL DEFAULT now())";

int migrate_apply(const char *conninfo, const char *dir, struct migration_list *applied, char **err)
{
    struct migration_list files = {0}, done = {0};
    const char *key[] = {MIGRATE_LOCK_KEY};
    memset(applied, 0, sizeof *applied);
    *err = NULL;
    PGconn *pg = NULL;
    PGresult *res;
    int rc = -1;
    if (migrate_scan(dir, &files, err) != 0)
        return -1;
    if (!(pg = migrate_connect(conninfo, err)))
        goto out;
    if (!(res = migrate_exec(pg, "SELECT pg_advisory_lock($1::bigint)", 1, key, PGRES_TUPLES_OK,
                             "taking the migration lock", err)))
        goto out;
    PQclear(res);
    if (!(res = migrate_exec(pg, migrate_create_table, 0, NULL, PGRES_COMMAND_OK,
                             "creating schema_migrations", err)))
        goto out;
    PQclear(res);
    if (migrate_recorded(pg, &done, err) != 0 || migrate_check_applied(&files, &done, err) != 0)
        goto out;
    for (size_t i = 0; i < files.n; i++) {
        if (migrate_find(&done, files.v[i].version))
            continue;
        if (migrate_one(pg, &files.v[i], err) != 0)
            goto out;
        migrate_list_copy(applied, &files.v[i]);
    }
    rc = 0;
out:
    if (pg) {
        /* Closing the session releases the lock too; unlock anyway for poolers. */
        PQclear(
            PQexecParams(pg, "SELECT pg_advisory_unlock($1::bigint)", 1, NULL, key, NULL, NULL, 0));
        PQfinish(pg);
    }
    migration_list_free(&files);
    migration_list_free(&done);
    return rc;
}

int migrate_status(const char *conninfo, const char *dir, struct migration_list *out, char **err)
{
    struct migration_list files = {0}, done = {0};
    memset(out, 0, sizeof *out);
    *err = NULL;
    if (migrate_scan(dir, &files, err) != 0)
        return -1;
    PGconn *pg = migrate_connect(conninfo, err);
    int rc = pg ? migrate_recorded(pg, &done, err) : -1;
    PQfinish(pg);
    if (rc == 0) {
        for (size_t i = 0; i < files.n; i++) {
            struct migration *f = &files.v[i];
            const struct migration *d = migrate_find(&done, f->version);
            migrate_list_copy(out, f);
            if (!d)
                continue;
            struct migration *m = &out->v[out->n - 1];
            m->applied = 1;
            m->applied_at = xstrdup(d->applied_at);
            m->changed = strcmp(d->checksum, f->checksum) != 0 || strcmp(d->name, f->name) != 0;
        }
        for (size_t i = 0; i < done.n; i++)
            if (!migrate_find(&files, done.v[i].version))
                migrate_list_copy(out, &done.v[i]);
        qsort(out->v, out->n, sizeof *out->v, migrate_cmp_version);
    }
    migration_list_free(&files);
    migration_list_free(&done);
    return rc;
}
