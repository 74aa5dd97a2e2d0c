/* linear: GraphQL requests to Linear and the reading of their answers (see the header). */
#include "linear.h"

#include "buf.h"
#include "clock.h"
#include "log.h"
#include "service.h"
#include "xalloc.h"

#include <ctype.h>
#include <math.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct linear {
    struct service svc;
    char *url;
    char *auth_header;     /* "Authorization: ..." (secret) */
    enum linear_auth form; /* LINEAR_AUTH_API_KEY or LINEAR_AUTH_OAUTH */
    char *team_id;
    char *path; /* the URL's path, for error messages: "/graphql" */
};

/* The three operations. */
enum linear_op { LINEAR_OP_ISSUE_CREATE, LINEAR_OP_ISSUE_GET, LINEAR_OP_ATTACHMENT_CREATE };

struct linear_op_def {
    const char *name;   /* operationName */
    const char *field;  /* the field under data */
    const char *object; /* the payload's object (mutations), NULL for a query */
    const char *query;
};

static const struct linear_op_def linear_ops[] = {
    [LINEAR_OP_ISSUE_CREATE] = {"TieroneIssueCreate", "issueCreate", "issue",
                                "mutation TieroneIssueCreate($input: IssueCreateInput!) { "
                                "issueCreate(input: $input) { success issue { id identifier "
                                "url } } }"},
    [LINEAR_OP_ISSUE_GET] = {"TieroneIssue", "issue", NULL,
                             "query TieroneIssue($id: String!) { issue(id: $id) { id "
                             "identifier url } }"},
    [LINEAR_OP_ATTACHMENT_CREATE] = {"TieroneAttachmentCreate", "attachmentCreate", "attachment",
                                     "mutation TieroneAttachmentCreate($input: "
                                     "AttachmentCreateInput!) { attachmentCreate(input: $input) "
                                     "{ success attachment { id url } } }"},
};

/* One call in flight (an issueCreate that reconciles makes a second request with it). */
struct linear_call {
    struct linear *c;
    enum linear_op op;
    linear_cb cb;
    void *arg;
    char *jid;
    char *issue_id; /* issueCreate: the id, for the reconcile lookup */
    int reconciling;
};

static const struct http_failure_policy linear_policy = {.service = "Linear", .fixed_window_s = 0};

/* ---- setup ---------------------------------------------------------------------------- */

static int linear_has_prefix(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

struct linear *linear_new(const struct linear_opts *opts, char **err)
{
    if (!opts || !opts->http) {
        *err = xstrdup("linear: no HTTP client");
        return NULL;
    }
    const char *key = opts->api_key;
    if (key && opts->auth == LINEAR_AUTH_AUTO && strncasecmp(key, "Bearer ", 7) == 0)
        key += 7;
    while (key && *key == ' ')
        key++;
    if (!key || !*key) {
        *err = xstrdup("linear: no API key");
        return NULL;
    }
    const char *url = opts->api_url && *opts->api_url ? opts->api_url : LINEAR_DEFAULT_API_URL;
    char *path = http_url_part(url, HTTP_URL_PATH);
    if (!path) {
        *err = xstrdup("linear: the API URL is not an absolute http(s) URL");
        return NULL;
    }
    struct linear *c = xcalloc(1, sizeof *c);
    c->svc.http = opts->http;
    c->svc.limit = opts->limit;
    c->svc.policy = linear_policy;
    c->svc.timeout_ms = opts->timeout_ms;
    c->svc.max_body = 1024 * 1024;
    c->url = xstrdup(url);
    c->path = path;
    c->form = opts->auth;
    if (c->form == LINEAR_AUTH_AUTO)
        c->form = linear_has_prefix(key, "lin_oauth_") ? LINEAR_AUTH_OAUTH : LINEAR_AUTH_API_KEY;
    c->auth_header = c->form == LINEAR_AUTH_OAUTH ? xasprintf("Authorization: Bearer %s", key)
                                                  : xasprintf("Authorization: %s", key);
    c->team_id = xstrdup(opts->team_id);
    return c;
}

void linear_free(struct linear *c)
{
    if (!c)
        return;
    free(c->url);
    free(c->path);
    free(c->auth_header);
    free(c->team_id);
    free(c);
}

const char *linear_auth_name(const struct linear *c)
{
    return c->form == LINEAR_AUTH_OAUTH ? "OAuth token (Authorization: Bearer <token>)"
                                        : "personal API key (Authorization: <key>)";
}

/* ---- ids ------------------------------------------------------------------------------ */

void linear_uuid_from_key(const char *key, char out[37])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_Digest(key ? key : "", key ? strlen(key) : 0, md, &mdlen, EVP_sha256(), NULL);
    md[6] = (unsigned char)((md[6] & 0x0f) | 0x40); /* version 4 */
    md[8] = (unsigned char)((md[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hex[md[i] >> 4];
        out[o++] = hex[md[i] & 0x0f];
    }
    out[o] = '\0';
}

int linear_uuid_valid(const char *s)
{
    if (!s || strlen(s) != 36)
        return 0;
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return 0;
        } else if (!isxdigit((unsigned char)s[i])) {
            return 0;
        }
    }
    return 1;
}

/* ---- reading answers ------------------------------------------------------------------ */

/* A header's value as a non-negative number, or -1. */
static double linear_header_number(const struct http_response *r, const char *name)
{
    const char *v = http_response_header(r, name);
    if (!v || !*v)
        return -1;
    char *end;
    double d = strtod(v, &end);
    if (*end || !isfinite(d) || d < 0)
        return -1;
    return d;
}

/* A reset header as wall seconds: epoch ms, epoch s below 1e11, a wait below 1e9. */
static double linear_reset_time(double v, double now_s)
{
    if (v >= 1e11)
        return v / 1000.0;
    if (v >= 1e9)
        return v;
    return now_s + v;
}

/* When a rate-limited request may go again (see the header), or 0 if nothing says. */
static double linear_retry_time(const struct http_response *r, double now_s)
{
    static const char *const buckets[] = {"Requests", "Complexity", "Endpoint-Requests"};
    double at = 0;
    for (size_t i = 0; i < sizeof buckets / sizeof buckets[0]; i++) {
        char rem_name[64], reset_name[64];
        snprintf(rem_name, sizeof rem_name, "X-RateLimit-%s-Remaining", buckets[i]);
        snprintf(reset_name, sizeof reset_name, "X-RateLimit-%s-Reset", buckets[i]);
        double reset = linear_header_number(r, reset_name);
        if (linear_header_number(r, rem_name) == 0 && reset >= 0)
            at = fmax(at, linear_reset_time(reset, now_s));
    }
    if (!at) {
        double reset = linear_header_number(r, "X-RateLimit-Requests-Reset");
        if (reset >= 0)
            at = linear_reset_time(reset, now_s);
    }
    if (!at)
        return http_failure_retry_after(r, now_s);
    if (at < now_s)
        at = now_s;
    if (at > now_s + HTTP_FAILURE_MAX_WAIT_S)
        at = now_s + HTTP_FAILURE_MAX_WAIT_S;
    return at;
}

/* What errors[] says, worst first. */
enum linear_verdict {
    LV_OTHER = 0,
    LV_INPUT,
    LV_NOT_FOUND,
    LV_DUPLICATE,
    LV_SERVER,
    LV_FORBIDDEN,
    LV_AUTH,
    LV_RATELIMITED,
};

static int linear_str_eq(json_t *j, const char *s)
{
    return json_is_string(j) && strcasecmp(json_string_value(j), s) == 0;
}

static enum linear_verdict linear_error_verdict(json_t *e)
{
    json_t *ext = json_object_get(e, "extensions");
    json_t *code = json_object_get(ext, "code"), *type = json_object_get(ext, "type");
    const char *msg = json_string_value(json_object_get(e, "message"));
    if (linear_str_eq(code, "RATELIMITED") || linear_str_eq(type, "ratelimited"))
        return LV_RATELIMITED;
    if (linear_str_eq(code, "AUTHENTICATION_ERROR") || linear_str_eq(type, "authentication error"))
        return LV_AUTH;
    if (linear_str_eq(code, "FORBIDDEN") || linear_str_eq(type, "forbidden"))
        return LV_FORBIDDEN;
    if (linear_str_eq(code, "INTERNAL_SERVER_ERROR") || linear_str_eq(type, "internal error") ||
        linear_str_eq(type, "lock timeout"))
        return LV_SERVER;
    if (msg && strcasestr(msg, "conflict on insert of Issue"))
        return LV_DUPLICATE;
    if (msg && strcasestr(msg, "Entity not found"))
        return LV_NOT_FOUND;
    if (linear_str_eq(code, "INPUT_ERROR") || linear_str_eq(type, "invalid input"))
        return LV_INPUT;
    return LV_OTHER;
}

/* "message (CODE); message2 (CODE2)" for every error, cleaned and cut (http_failure). */
static char *linear_errors_text(json_t *errors)
{
    struct buf b = BUF_INIT;
    size_t i;
    json_t *e;
    json_array_foreach(errors, i, e)
    {
        const char *msg = json_string_value(json_object_get(e, "message"));
        const char *code =
            json_string_value(json_object_get(json_object_get(e, "extensions"), "code"));
        if (b.len)
            buf_puts(&b, "; ");
        buf_puts(&b, msg ? msg : "(no message)");
        if (code)
            buf_printf(&b, " (%s)", code);
    }
    char *text = http_failure_error_text(b.data ? b.data : "", b.len);
    buf_free(&b);
    return text;
}

/* The operation's object under data when the answer carries it completely: a mutation's
 * payload with success true and its object, a query's non-null object. Borrowed. */
static json_t *linear_payload(json_t *j, enum linear_op op)
{
    const struct linear_op_def *d = &linear_ops[op];
    json_t *f = json_object_get(json_object_get(j, "data"), d->field);
    if (!d->object)
        return json_is_object(f) ? f : NULL;
    if (!json_is_true(json_object_get(f, "success")))
        return NULL;
    json_t *o = json_object_get(f, d->object);
    return json_is_object(o) ? o : NULL;
}

static struct job_error *linear_error(enum job_err_kind kind, const char *cls_kind,
                                      const char *what, long status, const char *text,
                                      const char *suffix)
{
    char *cls = xasprintf("Tierone::Linear::%s", cls_kind);
    struct job_error *e =
        job_error_new(kind, cls, "%s -> HTTP %ld: %s%s", what, status, text, suffix ? suffix : "");
    free(cls);
    return e;
}

/* A rate-limited answer: retry at the reset time (see the header). */
static struct job_error *linear_ratelimited(const struct http_response *r, const char *what,
                                            const char *text, double now_s)
{
    double at = linear_retry_time(r, now_s);
    struct job_error *err = linear_error(at ? JOB_ERR_RETRY_AT : JOB_ERR_RETRY, "RateLimited", what,
                                         r->status, text, NULL);
    err->retry_at = at;
    return err;
}

/* The verdict on an answer whose errors[] is not empty. *duplicate is set for the
 * conflict of issueCreate's id (the caller reconciles; no error is returned then). */
static struct job_error *linear_graphql_failure(struct linear *c, const struct http_response *r,
                                                json_t *errors, const char *what, int *duplicate)
{
    enum linear_verdict v = LV_OTHER;
    size_t i;
    json_t *e;
    json_array_foreach(errors, i, e)
    {
        enum linear_verdict ev = linear_error_verdict(e);
        if (ev > v)
            v = ev;
    }
    if (r->status == 401 && v < LV_AUTH)
        v = LV_AUTH;
    else if (r->status == 403 && v < LV_FORBIDDEN)
        v = LV_FORBIDDEN;
    else if (r->status >= 500 && v < LV_SERVER)
        v = LV_SERVER;
    if (v == LV_DUPLICATE) {
        *duplicate = 1;
        return NULL;
    }
    char *text = linear_errors_text(errors);
    struct job_error *err = NULL;
    double now = clock_wall_s();
    switch (v) {
    case LV_RATELIMITED:
        err = linear_ratelimited(r, what, text, now);
        break;
    case LV_AUTH: {
        char *sent = xasprintf(" [sent the key as a %s]", linear_auth_name(c));
        err = linear_error(JOB_ERR_PERMANENT, "AuthenticationError", what, r->status, text, sent);
        free(sent);
        break;
    }
    case LV_FORBIDDEN:
        err = linear_error(JOB_ERR_PERMANENT, "Forbidden", what, r->status, text, NULL);
        break;
    case LV_SERVER:
        err = linear_error(JOB_ERR_RETRY, "ServerError", what, r->status, text, NULL);
        break;
    case LV_NOT_FOUND:
        err = linear_error(JOB_ERR_PERMANENT, "NotFound", what, r->status, text, NULL);
        break;
    case LV_INPUT:
        err = linear_error(JOB_ERR_PERMANENT, "InvalidInput", what, r->status, text, NULL);
        break;
    case LV_DUPLICATE:
    case LV_OTHER:
        err = linear_error(JOB_ERR_PERMANENT, "GraphQLError", what, r->status, text, NULL);
        break;
    }
    free(text);
    return err;
}

/* The result handed to the caller: a copy of the fields it documents. */
static json_t *linear_result(enum linear_op op, json_t *obj, int existed)
{
    json_t *id = json_object_get(obj, "id"), *url = json_object_get(obj, "url");
    if (!json_is_string(id))
        return NULL;
    if (op == LINEAR_OP_ATTACHMENT_CREATE)
        return json_pack("{s:O, s:O}", "id", id, "url", url ? url : json_null());
    json_t *ident = json_object_get(obj, "identifier");
    if (!json_is_string(ident) || !json_is_string(url))
        return NULL;
    json_t *res = json_pack("{s:O, s:O, s:O}", "id", id, "identifier", ident, "url", url);
    if (op == LINEAR_OP_ISSUE_CREATE)
        json_object_set_new(res, "existed", json_boolean(existed));
    return res;
}

/* ---- calls ---------------------------------------------------------------------------- */

static void linear_call_free(struct linear_call *call)
{
    free(call->jid);
    free(call->issue_id);
    free(call);
}

static void linear_finish(struct linear_call *call, struct job_error *err, json_t *result)
{
    call->cb(err, result, call->arg);
    json_decref(result);
    linear_call_free(call);
}

static int linear_send(struct linear_call *call, enum linear_op op, json_t *variables);

/* Read an answer: *result on success, else the error; *duplicate for issueCreate's
 * conflict. */
static struct job_error *linear_read(struct linear_call *call, struct job_error *generic,
                                     struct http_response *r, const char *what, json_t **result,
                                     int *duplicate)
{
    if (!r || r->result != HTTP_OK)
        return generic;     /* no token, refused, transport failure */
    if (r->status == 429) { /* the SDK's reading of a 429, whatever the body */
        job_error_free(generic);
        char *text = http_failure_error_text(r->body, r->body_len);
        struct job_error *err = linear_ratelimited(r, what, text, clock_wall_s());
        free(text);
        return err;
    }
    struct job_error *perr = NULL;
    json_t *j = service_parse_json(&call->c->svc, r, what, &perr);
    if (!j) {
        if (generic) {
            job_error_free(perr);
            return generic;
        }
        return perr;
    }
    struct job_error *err = NULL;
    json_t *errors = json_object_get(j, "errors");
    json_t *obj = linear_payload(j, call->op);
    int has_errors = json_is_array(errors) && json_array_size(errors) > 0;
    if (obj && !generic) {
        if (has_errors) {
            char *text = linear_errors_text(errors);
            log_job(LOG_WARN, call->jid, NULL, "%s: success with errors: %s", what, text);
            free(text);
        }
        *result = linear_result(call->op, obj, call->reconciling);
        if (!*result)
            err = job_error_new(JOB_ERR_RETRY, "Tierone::Linear::BadResponse",
                                "%s -> HTTP %ld: the answer lacks the %s's id, identifier or url",
                                what, r->status, linear_ops[call->op].field);
    } else if (has_errors) {
        err = linear_graphql_failure(call->c, r, errors, what, duplicate);
    } else if (generic) {
        err = generic;
        generic = NULL;
    } else if (call->op == LINEAR_OP_ISSUE_GET) {
        err = job_error_new(JOB_ERR_PERMANENT, "Tierone::Linear::NotFound",
                            "%s -> HTTP %ld: no such issue", what, r->status);
    } else {
        err = job_error_new(JOB_ERR_PERMANENT, "Tierone::Linear::GraphQLError",
                            "%s -> HTTP %ld: %s did not succeed", what, r->status,
                            linear_ops[call->op].field);
    }
    job_error_free(generic);
    json_decref(j);
    return err;
}

static void linear_on_response(struct job_error *generic, struct http_response *r, void *arg)
{
    struct linear_call *call = arg;
    char *what = xasprintf("POST %s %s", call->c->path, linear_ops[call->op].field);
    json_t *result = NULL;
    int duplicate = 0;
    struct job_error *err = linear_read(call, generic, r, what, &result, &duplicate);
    free(what);
    if (duplicate && call->op == LINEAR_OP_ISSUE_CREATE) {
        /* The id is taken: the issue exists (an earlier attempt); fetch and return it. */
        log_job(LOG_INFO, call->jid, NULL, "linear: issue %s exists, reconciling", call->issue_id);
        call->reconciling = 1;
        json_t *vars = json_pack("{s:s}", "id", call->issue_id);
        linear_send(call, LINEAR_OP_ISSUE_GET, vars);
        return;
    }
    if (duplicate) /* a conflict outside issueCreate: nothing to reconcile */
        err = job_error_new(JOB_ERR_PERMANENT, "Tierone::Linear::InvalidInput",
                            "POST %s %s -> HTTP %ld: conflict on insert", call->c->path,
                            linear_ops[call->op].field, r->status);
    if (!err && call->reconciling)
        json_object_set_new(result, "existed", json_true());
    if (err && call->reconciling) { /* say why an issueCreate ended in a lookup */
        char *msg = xasprintf("issueCreate: id %s is taken; looking it up failed: %s",
                              call->issue_id, err->error_message);
        free(err->error_message);
        err->error_message = msg;
    }
    linear_finish(call, err, result);
}

/* POST the operation with variables (reference stolen). */
static int linear_send(struct linear_call *call, enum linear_op op, json_t *variables)
{
    struct linear *c = call->c;
    const struct linear_op_def *d = &linear_ops[op];
    json_t *body = json_pack("{s:s, s:s, s:o}", "query", d->query, "operationName", d->name,
                             "variables", variables);
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    char *what = xasprintf("POST %s %s", c->path, d->field);
    const char *headers[] = {"Content-Type: application/json", "Accept: application/json",
                             c->auth_header};
    struct service_request req = {
        .method = "POST",
        .url = c->url,
        .headers = headers,
        .nheaders = 3,
        .body = text,
        .body_len = strlen(text),
        .what = what,
        .jid = call->jid,
    };
    call->op = op;
    service_call(&c->svc, &req, linear_on_response, call);
    free(text);
    free(what);
    return 0;
}

static struct linear_call *linear_call_new(struct linear *c, const char *jid, linear_cb cb,
                                           void *arg)
{
    struct linear_call *call = xcalloc(1, sizeof *call);
    call->c = c;
    call->cb = cb;
    call->arg = arg;
    call->jid = xstrdup(jid);
    return call;
}

int linear_issue_create(struct linear *c, const char *jid, const struct linear_issue_input *in,
                        linear_cb cb, void *arg)
{
    const char *team = in && in->team_id ? in->team_id : c->team_id;
    const char *why = NULL;
    if (!in || !linear_uuid_valid(in->id))
        why = "the issue id is not a UUID";
    else if (!in->title || !*in->title)
        why = "no title";
    else if (!team || !*team)
        why = "no team id";
    else if (in->priority < 0 || in->priority > 4)
        why = "priority outside 0..4";
    if (why) {
        log_job(LOG_ERROR, jid, NULL, "linear: issueCreate: %s", why);
        return -1;
    }
    json_t *input = json_pack("{s:s, s:s, s:s}", "id", in->id, "teamId", team, "title", in->title);
    if (!input) {
        log_job(LOG_ERROR, jid, NULL, "linear: issueCreate: a text is not valid UTF-8");
        return -1;
    }
    if (in->description &&
        json_object_set_new(input, "description", json_string(in->description)) != 0) {
        json_decref(input);
        log_job(LOG_ERROR, jid, NULL, "linear: issueCreate: the description is not UTF-8");
        return -1;
    }
    if (in->priority)
        json_object_set_new(input, "priority", json_integer(in->priority));
    if (in->nlabel_ids) {
        json_t *labels = json_array();
        for (size_t i = 0; i < in->nlabel_ids; i++)
            json_array_append_new(labels, json_string(in->label_ids[i]));
        json_object_set_new(input, "labelIds", labels);
    }
    struct linear_call *call = linear_call_new(c, jid, cb, arg);
    call->issue_id = xstrdup(in->id);
    return linear_send(call, LINEAR_OP_ISSUE_CREATE, json_pack("{s:o}", "input", input));
}

int linear_issue_get(struct linear *c, const char *jid, const char *id, linear_cb cb, void *arg)
{
    json_t *vars = id && *id ? json_pack("{s:s}", "id", id) : NULL;
    if (!vars) {
        log_job(LOG_ERROR, jid, NULL, "linear: issue: no id");
        return -1;
    }
    return linear_send(linear_call_new(c, jid, cb, arg), LINEAR_OP_ISSUE_GET, vars);
}

int linear_attachment_create(struct linear *c, const char *jid, const char *issue_id,
                             const char *title, const char *url, const char *subtitle, linear_cb cb,
                             void *arg)
{
    json_t *input = NULL;
    if (issue_id && *issue_id && title && *title && url && *url)
        input = json_pack("{s:s, s:s, s:s}", "issueId", issue_id, "title", title, "url", url);
    if (input && subtitle && json_object_set_new(input, "subtitle", json_string(subtitle)) != 0) {
        json_decref(input);
        input = NULL;
    }
    if (!input) {
        log_job(LOG_ERROR, jid, NULL,
                "linear: attachmentCreate: needs an issue id, a title and a url (UTF-8)");
        return -1;
    }
    return linear_send(linear_call_new(c, jid, cb, arg), LINEAR_OP_ATTACHMENT_CREATE,
                       json_pack("{s:o}", "input", input));
}
