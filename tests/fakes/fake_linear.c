/* fake_linear: issues and attachments behind a small GraphQL front (see the header). */
#include "fake_linear.h"

#include "clock.h"
#include "linear.h"
#include "xalloc.h"

#include <ctype.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define FAKE_LINEAR_LIMIT            5000
#define FAKE_LINEAR_COMPLEXITY_LIMIT 3000000

struct fake_linear {
    struct fake_http *http;
    struct fake_faults *faults;
    char *api_url;
    char *auth; /* the exact Authorization value expected */
    char *team_id;
    char *team_key;
    char *workspace;
    int64_t window_reset_ms;
    pthread_mutex_t mu; /* guards everything below */
    unsigned ratelimited;
    int64_t ratelimit_reset_ms;
    long requests; /* answered (not faults) */
    int next_number;
    int next_attachment;
    json_t *issues;      /* array */
    json_t *attachments; /* array */
};

/* ---- answers -------------------------------------------------------------------------- */

static void fake_linear_rate_headers(struct fake_linear *f, struct fake_http_response *resp,
                                     int exhausted, int64_t reset_ms)
{
    long remaining = exhausted ? 0 : FAKE_LINEAR_LIMIT - f->requests;
    if (remaining < 0)
        remaining = 0;
    fake_http_response_header(resp, "X-RateLimit-Requests-Limit", "%d", FAKE_LINEAR_LIMIT);
    fake_http_response_header(resp, "X-RateLimit-Requests-Remaining", "%ld", remaining);
    fake_http_response_header(resp, "X-RateLimit-Requests-Reset", "%lld", (long long)reset_ms);
    fake_http_response_header(resp, "X-Complexity", "%d", exhausted ? 0 : 4);
    fake_http_response_header(resp, "X-RateLimit-Complexity-Limit", "%d",
                              FAKE_LINEAR_COMPLEXITY_LIMIT);
    fake_http_response_header(resp, "X-RateLimit-Complexity-Remaining", "%ld",
                              FAKE_LINEAR_COMPLEXITY_LIMIT - 4 * f->requests);
    fake_http_response_header(resp, "X-RateLimit-Complexity-Reset", "%lld",
                              (long long)f->window_reset_ms);
}

/* Send status with body j (reference stolen). */
static void fake_linear_json(struct fake_http_response *resp, int status, json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    resp->status = status;
    fake_http_response_header(resp, "Content-Type", "application/json; charset=utf-8");
    fake_http_response_body(resp, s);
    free(s);
}

/* {"errors":[{message, extensions{code, type, userError, userPresentableMessage}}],
 *  "data": data} with data NULL -> null. */
static void fake_linear_error(struct fake_http_response *resp, int status, const char *message,
                              const char *code, const char *type, const char *user_message,
                              const char *path)
{
    json_t *ext = json_pack("{s:s, s:s, s:b}", "code", code, "type", type, "userError",
                            strcmp(code, "INPUT_ERROR") == 0);
    if (user_message)
        json_object_set_new(ext, "userPresentableMessage", json_string(user_message));
    json_t *err = json_pack("{s:s, s:o}", "message", message, "extensions", ext);
    if (path)
        json_object_set_new(err, "path", json_pack("[s]", path));
    fake_linear_json(resp, status, json_pack("{s:[o], s:n}", "errors", err, "data"));
}

/* ---- state (called with the mutex held) ----------------------------------------------- */

static json_t *fake_linear_lookup(struct fake_linear *f, const char *id)
{
    size_t i;
    json_t *is;
    json_array_foreach(f->issues, i, is)
    {
        const char *uuid = json_string_value(json_object_get(is, "id"));
        const char *ident = json_string_value(json_object_get(is, "identifier"));
        if (strcmp(uuid, id) == 0 || strcasecmp(ident, id) == 0)
            return is;
    }
    return NULL;
}

/* "fix-the-login-page" from a title, at most 60 characters. */
static char *fake_linear_slug(const char *title)
{
    char *s = xcalloc(1, 61);
    size_t n = 0;
    int dash = 0;
    for (const char *p = title; *p && n < 60; p++) {
        if (isalnum((unsigned char)*p)) {
            if (dash && n)
                s[n++] = '-';
            if (n < 60)
                s[n++] = (char)tolower((unsigned char)*p);
            dash = 0;
        } else {
            dash = 1;
        }
    }
    return s;
}

static json_t *fake_linear_issue_public(json_t *is)
{
    return json_pack("{s:O, s:O, s:O, s:O}", "id", json_object_get(is, "id"), "identifier",
                     json_object_get(is, "identifier"), "url", json_object_get(is, "url"), "title",
                     json_object_get(is, "title"));
}

static void fake_linear_issue_create(struct fake_linear *f, json_t *input,
                                     struct fake_http_response *resp)
{
    const char *team = json_string_value(json_object_get(input, "teamId"));
    json_t *idj = json_object_get(input, "id"), *prio = json_object_get(input, "priority");
    if (!team) {
        fake_linear_error(resp, 400,
                          "Variable \"$input\" got invalid value; Field \"teamId\" of required "
                          "type \"String!\" was not provided.",
                          "GRAPHQL_VALIDATION_FAILED", "graphql error", NULL, NULL);
        return;
    }
    if (strcmp(team, f->team_id) != 0) {
        fake_linear_error(resp, 400, "Entity not found: Team", "INPUT_ERROR", "invalid input",
                          "Could not find referenced Team.", "issueCreate");
        return;
    }
    if (idj && !linear_uuid_valid(json_string_value(idj))) {
        fake_linear_error(resp, 400, "Argument Validation Error", "INPUT_ERROR", "invalid input",
                          "id must be a UUID.", "issueCreate");
        return;
    }
    if (prio &&
        (!json_is_integer(prio) || json_integer_value(prio) < 0 || json_integer_value(prio) > 4)) {
        fake_linear_error(resp, 400, "Argument Validation Error", "INPUT_ERROR", "invalid input",
                          "priority must be between 0 and 4.", "issueCreate");
        return;
    }
    char id[37];
    if (idj) {
        snprintf(id, sizeof id, "%s", json_string_value(idj));
    } else {
        char *key = xasprintf("fake-linear-issue:%d", f->next_number);
        linear_uuid_from_key(key, id);
        free(key);
    }
    if (fake_linear_lookup(f, id)) {
        char *msg = xasprintf("conflict on insert of Issue with id %s", id);
        fake_linear_error(resp, 400, msg, "INPUT_ERROR", "invalid input",
                          "An issue with this id already exists.", "issueCreate");
        free(msg);
        return;
    }
    const char *title = json_string_value(json_object_get(input, "title"));
    char *ident = xasprintf("%s-%d", f->team_key, ++f->next_number);
    char *slug = fake_linear_slug(title ? title : "");
    char *url = xasprintf("https://linear.app/%s/issue/%s/%s", f->workspace, ident, slug);
    json_t *is = json_pack("{s:s, s:s, s:s, s:s, s:s, s:O?, s:I, s:O?}", "id", id, "identifier",
                           ident, "url", url, "teamId", team, "title", title ? title : "",
                           "description", json_object_get(input, "description"), "priority",
                           (json_int_t)(prio ? json_integer_value(prio) : 0), "labelIds",
                           json_object_get(input, "labelIds"));
    json_array_append_new(f->issues, is);
    free(ident);
    free(slug);
    free(url);
    fake_linear_json(resp, 200,
                     json_pack("{s:{s:{s:b, s:o, s:f}}}", "data", "issueCreate", "success", 1,
                               "issue", fake_linear_issue_public(is), "lastSyncId",
                               (double)f->requests));
}

static void fake_linear_issue_get(struct fake_linear *f, json_t *vars,
                                  struct fake_http_response *resp)
{
    const char *id = json_string_value(json_object_get(vars, "id"));
    json_t *is = id ? fake_linear_lookup(f, id) : NULL;
    if (!is) {
        fake_linear_error(resp, 400, "Entity not found: Issue", "INPUT_ERROR", "invalid input",
                          "Could not find referenced Issue.", "issue");
        return;
    }
    fake_linear_json(resp, 200,
                     json_pack("{s:{s:o}}", "data", "issue", fake_linear_issue_public(is)));
}

static void fake_linear_attachment_create(struct fake_linear *f, json_t *input,
                                          struct fake_http_response *resp)
{
    const char *issue_id = json_string_value(json_object_get(input, "issueId"));
    const char *title = json_string_value(json_object_get(input, "title"));
    const char *url = json_string_value(json_object_get(input, "url"));
    json_t *subtitle = json_object_get(input, "subtitle");
    if (!issue_id || !title || !url) {
        fake_linear_error(resp, 400,
                          "Variable \"$input\" got invalid value; Fields \"issueId\", \"title\" "
                          "and \"url\" of required type \"String!\" must be provided.",
                          "GRAPHQL_VALIDATION_FAILED", "graphql error", NULL, NULL);
        return;
    }
    json_t *is = fake_linear_lookup(f, issue_id);
    if (!is) {
        fake_linear_error(resp, 400, "Entity not found: Issue", "INPUT_ERROR", "invalid input",
                          "Could not find referenced Issue.", "attachmentCreate");
        return;
    }
    const char *uuid = json_string_value(json_object_get(is, "id"));
    json_t *att = NULL, *a;
    size_t i;
    json_array_foreach(f->attachments, i, a)
    {
        if (strcmp(json_string_value(json_object_get(a, "issueId")), uuid) == 0 &&
            strcmp(json_string_value(json_object_get(a, "url")), url) == 0)
            att = a;
    }
    if (att) {
        json_object_set_new(att, "title", json_string(title));
        json_object_set(att, "subtitle", subtitle ? subtitle : json_null());
    } else {
        char id[37];
        char *key = xasprintf("fake-linear-attachment:%d", ++f->next_attachment);
        linear_uuid_from_key(key, id);
        free(key);
        att = json_pack("{s:s, s:s, s:s, s:s, s:O}", "id", id, "issueId", uuid, "url", url, "title",
                        title, "subtitle", subtitle ? subtitle : json_null());
        json_array_append_new(f->attachments, att);
    }
    fake_linear_json(resp, 200,
                     json_pack("{s:{s:{s:b, s:{s:O, s:O, s:O}}}}", "data", "attachmentCreate",
                               "success", 1, "attachment", "id", json_object_get(att, "id"), "url",
                               json_object_get(att, "url"), "title",
                               json_object_get(att, "title")));
}

/* ---- the GraphQL front ---------------------------------------------------------------- */

/* The root field of the query's first selection set and its argument text (without the
 * parentheses). 0, or -1 when the query has no such field. */
static int fake_linear_root_field(const char *q, char *field, size_t fsz, char *args, size_t asz)
{
    const char *p = strchr(q, '{');
    if (!p)
        return -1;
    p++;
    for (int round = 0; round < 2; round++) { /* "alias: field" */
        while (isspace((unsigned char)*p))
            p++;
        const char *s = p;
        while (isalnum((unsigned char)*p) || *p == '_')
            p++;
        if (p == s || (size_t)(p - s) >= fsz)
            return -1;
        snprintf(field, fsz, "%.*s", (int)(p - s), s);
        while (isspace((unsigned char)*p))
            p++;
        if (*p != ':')
            break;
        p++;
    }
    args[0] = '\0';
    if (*p == '(') {
        const char *e = strchr(p, ')');
        if (!e)
            return -1;
        snprintf(args, asz, "%.*s", (int)(e - p - 1), p + 1);
    }
    return 0;
}

static void fake_linear_validation(struct fake_http_response *resp, const char *msg)
{
    fake_linear_error(resp, 400, msg, "GRAPHQL_VALIDATION_FAILED", "graphql error", NULL, NULL);
}

static void fake_linear_dispatch(struct fake_linear *f, json_t *req,
                                 struct fake_http_response *resp)
{
    const char *q = json_string_value(json_object_get(req, "query"));
    json_t *vars = json_object_get(req, "variables");
    const char *opname = json_string_value(json_object_get(req, "operationName"));
    char field[64], args[256];
    if (!q || fake_linear_root_field(q, field, sizeof field, args, sizeof args) != 0) {
        fake_linear_validation(resp, "Syntax Error: the query has no selection.");
        return;
    }
    if (opname && !strstr(q, opname)) {
        char *m = xasprintf("Unknown operation named \"%s\".", opname);
        fake_linear_validation(resp, m);
        free(m);
        return;
    }
    while (isspace((unsigned char)*q))
        q++;
    int mutation = strncmp(q, "mutation", 8) == 0;
    if (mutation && strcmp(field, "issueCreate") == 0 && strstr(args, "$input"))
        fake_linear_issue_create(f, json_object_get(vars, "input"), resp);
    else if (mutation && strcmp(field, "attachmentCreate") == 0 && strstr(args, "$input"))
        fake_linear_attachment_create(f, json_object_get(vars, "input"), resp);
    else if (!mutation && strcmp(field, "issue") == 0 && strstr(args, "$id"))
        fake_linear_issue_get(f, vars, resp);
    else {
        char *m = xasprintf("Cannot query field \"%s\" on type \"%s\" (or it is not given its "
                            "arguments as variables).",
                            field, mutation ? "Mutation" : "Query");
        fake_linear_validation(resp, m);
        free(m);
    }
}

static void fake_linear_handle(const struct fake_http_request *req, struct fake_http_response *resp,
                               void *arg)
{
    struct fake_linear *f = arg;
    if (fake_faults_apply(f->faults, resp))
        return;
    pthread_mutex_lock(&f->mu);
    f->requests++;
    if (f->ratelimited) {
        f->ratelimited--;
        fake_linear_rate_headers(f, resp, 1, f->ratelimit_reset_ms);
        fake_linear_error(resp, 400, "Rate limit exceeded", "RATELIMITED", "ratelimited",
                          "Too many requests. Please try again later.", NULL);
        goto out;
    }
    fake_linear_rate_headers(f, resp, 0, f->window_reset_ms);
    const char *auth = fake_http_request_header(req, "Authorization");
    if (!auth || strcmp(auth, f->auth) != 0) {
        fake_linear_error(resp, 401, "Authentication required, not authenticated",
                          "AUTHENTICATION_ERROR", "authentication error",
                          "You need to authenticate to access this operation.", NULL);
        goto out;
    }
    const char *ct = fake_http_request_header(req, "Content-Type");
    json_t *body = json_loadb(req->body, req->body_len, 0, NULL);
    if (!ct || strncasecmp(ct, "application/json", 16) != 0 || !json_is_object(body))
        fake_linear_error(resp, 400,
                          "POST body missing, invalid Content-Type, or JSON object "
                          "has no keys.",
                          "BAD_REQUEST", "graphql error", NULL, NULL);
    else
        fake_linear_dispatch(f, body, resp);
    json_decref(body);
out:
    pthread_mutex_unlock(&f->mu);
}

/* ---- lifecycle and inspection --------------------------------------------------------- */

struct fake_linear *fake_linear_start(const struct fake_linear_opts *opts)
{
    struct fake_http *http = fake_http_start(NULL);
    if (!http)
        return NULL;
    struct fake_linear_opts o = {0};
    if (opts)
        o = *opts;
    const char *key = o.api_key ? o.api_key : "lin_api_fake";
    struct fake_linear *f = xcalloc(1, sizeof *f);
    f->http = http;
    f->faults = fake_faults_new();
    f->api_url = xasprintf("%s/graphql", fake_http_url(http));
    f->auth =
        o.oauth || strncmp(key, "lin_oauth_", 10) == 0 ? xasprintf("Bearer %s", key) : xstrdup(key);
    f->team_id = xstrdup(o.team_id ? o.team_id : "team-fake");
    f->team_key = xstrdup(o.team_key ? o.team_key : "ENG");
    f->workspace = xstrdup(o.workspace ? o.workspace : "tierone");
    f->window_reset_ms = clock_wall_ms() + 3600 * 1000;
    f->issues = json_array();
    f->attachments = json_array();
    pthread_mutex_init(&f->mu, NULL);
    fake_http_route(http, "POST", "/graphql", fake_linear_handle, f);
    return f;
}

void fake_linear_free(struct fake_linear *f)
{
    if (!f)
        return;
    fake_http_free(f->http); /* joins the thread: no handler runs after this */
    fake_faults_free(f->faults);
    json_decref(f->issues);
    json_decref(f->attachments);
    pthread_mutex_destroy(&f->mu);
    free(f->api_url);
    free(f->auth);
    free(f->team_id);
    free(f->team_key);
    free(f->workspace);
    free(f);
}

const char *fake_linear_url(struct fake_linear *f)
{
    return fake_http_url(f->http);
}

const char *fake_linear_api_url(struct fake_linear *f)
{
    return f->api_url;
}

struct fake_faults *fake_linear_faults(struct fake_linear *f)
{
    return f->faults;
}

struct fake_http *fake_linear_http(struct fake_linear *f)
{
    return f->http;
}

void fake_linear_ratelimit(struct fake_linear *f, unsigned n, int64_t reset_ms)
{
    pthread_mutex_lock(&f->mu);
    f->ratelimited = n;
    f->ratelimit_reset_ms = reset_ms;
    pthread_mutex_unlock(&f->mu);
}

/* A copy of array[i] under the lock (new reference, or NULL). */
static json_t *fake_linear_copy(struct fake_linear *f, json_t *array, size_t i)
{
    pthread_mutex_lock(&f->mu);
    json_t *c = json_deep_copy(json_array_get(array, i));
    pthread_mutex_unlock(&f->mu);
    return c;
}

static size_t fake_linear_size(struct fake_linear *f, json_t *array)
{
    pthread_mutex_lock(&f->mu);
    size_t n = json_array_size(array);
    pthread_mutex_unlock(&f->mu);
    return n;
}

size_t fake_linear_issue_count(struct fake_linear *f)
{
    return fake_linear_size(f, f->issues);
}

json_t *fake_linear_issue(struct fake_linear *f, size_t i)
{
    return fake_linear_copy(f, f->issues, i);
}

json_t *fake_linear_find_issue(struct fake_linear *f, const char *id)
{
    pthread_mutex_lock(&f->mu);
    json_t *c = json_deep_copy(fake_linear_lookup(f, id));
    pthread_mutex_unlock(&f->mu);
    return c;
}

size_t fake_linear_attachment_count(struct fake_linear *f)
{
    return fake_linear_size(f, f->attachments);
}

json_t *fake_linear_attachment(struct fake_linear *f, size_t i)
{
    return fake_linear_copy(f, f->attachments, i);
}

json_t *fake_linear_request_json(struct fake_linear *f, size_t i)
{
    const struct fake_http_request *r = fake_http_request_at(f->http, i);
    return r ? json_loadb(r->body, r->body_len, 0, NULL) : NULL;
}
