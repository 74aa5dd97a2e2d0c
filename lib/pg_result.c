/* pg_result: the row/column view of a query's outcome, and how its errors are classified
 * (retryable or not, SQLSTATE, the Sidekiq error_class a job reports). See pg.h. */
#include "pg_internal.h"

#include "xalloc.h"

#include <stdlib.h>
#include <string.h>

/* Copy of s without trailing whitespace (libpq's messages end in "\n"). */
static char *pg_result_trimmed(const char *s)
{
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == ' ' || s[n - 1] == '\r'))
        n--;
    return xstrndup(s, n);
}

void pg_result_set_error(struct pg_result *r, enum pg_error err, const char *sqlstate,
                         const char *message)
{
    memset(r, 0, sizeof *r);
    r->err = err;
    if (sqlstate && strlen(sqlstate) == 5)
        memcpy(r->sqlstate, sqlstate, 6);
    if (err == PG_ERR_SERVER)
        r->retryable = pg_sqlstate_retryable(r->sqlstate);
    else
        r->retryable = err != PG_OK && err != PG_ERR_PROTOCOL;
    r->message = message ? message : "";
}

void pg_result_from_pq(struct pg_result *r, PGresult *res, PGconn *conn, char **msg)
{
    memset(r, 0, sizeof *r);
    r->res = res;
    r->message = "";
    *msg = NULL;
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    switch (st) {
    case PGRES_COMMAND_OK:
    case PGRES_TUPLES_OK:
    case PGRES_EMPTY_QUERY:
    case PGRES_SINGLE_TUPLE:
        r->err = PG_OK;
        return;
    case PGRES_FATAL_ERROR:
    case PGRES_NONFATAL_ERROR:
    case PGRES_BAD_RESPONSE:
        break;
    default:
        r->err = PG_ERR_PROTOCOL;
        *msg = xasprintf("unexpected result status %s", PQresStatus(st));
        r->message = *msg;
        return;
    }
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *primary = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    if (!primary || !*primary)
        primary = res ? PQresultErrorMessage(res) : "";
    if (!*primary && conn)
        primary = PQerrorMessage(conn);
    *msg = pg_result_trimmed(*primary ? primary : "connection lost");
    r->message = *msg;
    if (state && strlen(state) == 5) {
        memcpy(r->sqlstate, state, 6);
        r->err = PG_ERR_SERVER;
        r->retryable = pg_sqlstate_retryable(state);
    } else if (!conn || PQstatus(conn) == CONNECTION_BAD || !res) {
        r->err = PG_ERR_CONNECTION; /* libpq's own report of a lost connection */
        r->retryable = 1;
    } else {
        r->err = PG_ERR_PROTOCOL; /* libpq refused the request itself */
    }
}

int pg_result_ok(const struct pg_result *r)
{
    return r->err == PG_OK;
}

enum pg_error pg_result_error(const struct pg_result *r)
{
    return r->err;
}

int pg_result_retryable(const struct pg_result *r)
{
    return r->err != PG_OK && r->retryable;
}

const char *pg_result_sqlstate(const struct pg_result *r)
{
    return r->sqlstate;
}

const char *pg_result_message(const struct pg_result *r)
{
    return r->message ? r->message : "";
}

/* The PGresult of a successful request, else NULL. */
static PGresult *pg_result_rows(const struct pg_result *r)
{
    return r->err == PG_OK ? r->res : NULL;
}

int pg_result_nrows(const struct pg_result *r)
{
    PGresult *res = pg_result_rows(r);
    return res ? PQntuples(res) : 0;
}

int pg_result_ncols(const struct pg_result *r)
{
    PGresult *res = pg_result_rows(r);
    return res ? PQnfields(res) : 0;
}

int pg_result_col(const struct pg_result *r, const char *name)
{
    PGresult *res = pg_result_rows(r);
    if (!res || !name)
        return -1;
    /* Exact match: PQfnumber would fold case and parse quotes. */
    int n = PQnfields(res);
    for (int i = 0; i < n; i++)
        if (strcmp(PQfname(res, i), name) == 0)
            return i;
    return -1;
}

const char *pg_result_colname(const struct pg_result *r, int col)
{
    PGresult *res = pg_result_rows(r);
    if (!res || col < 0 || col >= PQnfields(res))
        return NULL;
    return PQfname(res, col);
}

int pg_result_is_null(const struct pg_result *r, int row, int col)
{
    PGresult *res = pg_result_rows(r);
    if (!res || row < 0 || row >= PQntuples(res) || col < 0 || col >= PQnfields(res))
        return 1;
    return PQgetisnull(res, row, col);
}

const char *pg_result_value(const struct pg_result *r, int row, int col)
{
    if (pg_result_is_null(r, row, col))
        return NULL;
    return PQgetvalue(r->res, row, col);
}

long long pg_result_affected(const struct pg_result *r)
{
    PGresult *res = pg_result_rows(r);
    const char *s = res ? PQcmdTuples(res) : "";
    return *s ? strtoll(s, NULL, 10) : 0;
}

int pg_sqlstate_retryable(const char *s)
{
    if (!s || strlen(s) != 5)
        return 0;
    return strncmp(s, "08", 2) == 0 || strncmp(s, "40", 2) == 0 || strncmp(s, "53", 2) == 0 ||
           strcmp(s, "57P01") == 0 || strcmp(s, "57P02") == 0 || strcmp(s, "57P03") == 0 ||
           strcmp(s, "57014") == 0 || strcmp(s, "55P03") == 0 || strcmp(s, "25006") == 0;
}

/* SQLSTATE (or class prefix) -> error_class suffix, after Ruby's pg gem; first match wins. */
static const struct {
    const char *prefix;
    const char *name;
} pg_result_classes[] = {
    {"08", "ConnectionBad"},
    {"57P01", "ConnectionBad"},
    {"57P02", "ConnectionBad"},
    {"57P03", "ConnectionBad"},
    {"57014", "QueryCanceled"},
    {"40001", "SerializationFailure"},
    {"40P01", "DeadlockDetected"},
    {"40", "TransactionRollback"},
    {"53", "InsufficientResources"},
    {"55P03", "LockNotAvailable"},
    {"25006", "ReadOnlySqlTransaction"},
    {"25", "InvalidTransactionState"},
    {"23505", "UniqueViolation"},
    {"23503", "ForeignKeyViolation"},
    {"23502", "NotNullViolation"},
    {"23514", "CheckViolation"},
    {"23", "IntegrityConstraintViolation"},
    {"22", "DataException"},
    {"42601", "SyntaxError"},
    {"42P01", "UndefinedTable"},
    {"42703", "UndefinedColumn"},
    {"42883", "UndefinedFunction"},
    {"42501", "InsufficientPrivilege"},
    {"42", "SyntaxErrorOrAccessRuleViolation"},
    {"28", "InvalidAuthorizationSpecification"},
};

static const char *pg_result_class_name(const struct pg_result *r)
{
    switch (r->err) {
    case PG_OK:
        return NULL;
    case PG_ERR_CONNECTION:
        return "ConnectionBad";
    case PG_ERR_TIMEOUT:
        return "PoolTimeout";
    case PG_ERR_QUEUE_FULL:
        return "PoolQueueFull";
    case PG_ERR_CANCELLED:
        return "Cancelled";
    case PG_ERR_PROTOCOL:
        return "ProtocolError";
    case PG_ERR_SERVER:
        break;
    }
    for (size_t i = 0; i < sizeof pg_result_classes / sizeof pg_result_classes[0]; i++) {
        const char *p = pg_result_classes[i].prefix;
        if (strncmp(r->sqlstate, p, strlen(p)) == 0)
            return pg_result_classes[i].name;
    }
    return "Error";
}

struct job_error *pg_result_job_error(const struct pg_result *r, const char *what)
{
    if (r->err == PG_OK)
        return NULL;
    char *klass = xasprintf("Tierone::PG::%s", pg_result_class_name(r));
    enum job_err_kind kind = pg_result_retryable(r) ? JOB_ERR_RETRY : JOB_ERR_PERMANENT;
    const char *w = what ? what : "postgres";
    struct job_error *e;
    if (r->sqlstate[0])
        e = job_error_new(kind, klass, "%s: %s (SQLSTATE %s)", w, pg_result_message(r),
                          r->sqlstate);
    else
        e = job_error_new(kind, klass, "%s: %s", w, pg_result_message(r));
    free(klass);
    return e;
}

struct job_error *pg_pool_closing_error(const char *what)
{
    return job_error_new(JOB_ERR_RETRY, "Tierone::PG::PoolClosing",
                         "%s: the database pool is closing", what ? what : "query");
}
