/* report: `tierone report` (see report.h). Two blocking queries (the turns of the window
 * with their conversation, then their effects) build one JSON document; --json prints it,
 * otherwise report_print_text walks it. So the text and the JSON always say the same. */
#include "report.h"

#include "xalloc.h"

#include <getopt.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { REPORT_OK = 0, REPORT_FAILED = 1, REPORT_USAGE = 2 };

#define REPORT_DEFAULT_SINCE "24h"
#define REPORT_INDENT        "               " /* where a field's text starts */

struct report_opts {
    const char *url;
    const char *since_arg;
    char since[64]; /* what PostgreSQL gets as $1::timestamptz */
    const char *conversation;
    const char *account;
    int json;
};

void cli_report_usage(FILE *out)
{
    fprintf(out,
            "usage: tierone report [--since DURATION|TIMESTAMP|all] [--conversation ID]\n"
            "                      [--account ID] [--json] [--database-url URL]\n"
            "\n"
            "What the support pipeline did, or in shadow mode would have done, and why: per\n"
            "conversation, each turn's customer words, how it ended, the decision (action,\n"
            "category, reason, cited passages) and every outward effect (reply, note, labels,\n"
            "hand-off, Slack, Linear) with its state (shadow, pending, sent) and text; then a\n"
            "summary line.\n"
            "\n"
            "  -s, --since WHEN        turns received since WHEN: a duration back from now\n"
            "                          (90s, 30m, 24h, 7d, 2w), a timestamp (2026-05-01,\n"
            "                          \"2026-05-01 10:00:00+02\") or all (default: %s)\n"
            "  -c, --conversation ID   only this conversation (its display id)\n"
            "  -a, --account ID        only this Chatwoot account\n"
            "  -j, --json              one JSON document instead of text\n"
            "  -d, --database-url URL  PostgreSQL URL (default: $TIERONE_DATABASE_URL)\n"
            "  -h, --help              this help\n"
            "\n"
            "Exit status: 0 printed, 1 database error or no pipeline schema, 2 bad usage.\n",
            REPORT_DEFAULT_SINCE);
}

/* ---- options -------------------------------------------------------------------------- */

static int report_is_id(const char *s)
{
    if (!s || !*s || strlen(s) > 18)
        return 0;
    for (const char *c = s; *c; c++)
        if (*c < '0' || *c > '9')
            return 0;
    return 1;
}

/* --since into o->since: a duration becomes an absolute UTC time; anything else goes to
 * PostgreSQL as it is (which refuses what it cannot read). Returns 0 or -1. */
static int report_since(struct report_opts *o)
{
    const char *s = o->since_arg;
    if (strcmp(s, "all") == 0) {
        snprintf(o->since, sizeof o->since, "-infinity");
        return 0;
    }
    char *end;
    long long n = strtoll(s, &end, 10);
    if (end != s && s[0] >= '0' && s[0] <= '9' && end[0] && !end[1]) {
        long long unit = end[0] == 's'   ? 1
                         : end[0] == 'm' ? 60
                         : end[0] == 'h' ? 3600
                         : end[0] == 'd' ? 86400
                         : end[0] == 'w' ? 604800
                                         : 0;
        if (unit && n <= 100LL * 365 * 86400 / unit) {
            time_t t = time(NULL) - (time_t)(n * unit);
            struct tm tm;
            gmtime_r(&t, &tm);
            strftime(o->since, sizeof o->since, "%Y-%m-%dT%H:%M:%SZ", &tm);
            return 0;
        }
    }
    if (!*s || strlen(s) >= sizeof o->since)
        return -1;
    snprintf(o->since, sizeof o->since, "%s", s);
    return 0;
}

static int report_parse(int argc, char **argv, struct report_opts *o)
{
    static const struct option longopts[] = {
        {"since", required_argument, NULL, 's'},
        {"conversation", required_argument, NULL, 'c'},
        {"account", required_argument, NULL, 'a'},
        {"json", no_argument, NULL, 'j'},
        {"database-url", required_argument, NULL, 'd'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    memset(o, 0, sizeof *o);
    o->url = getenv("TIERONE_DATABASE_URL");
    o->since_arg = REPORT_DEFAULT_SINCE;
    optind = 1;
    int ch;
    while ((ch = getopt_long(argc, argv, "s:c:a:jd:h", longopts, NULL)) != -1) {
        switch (ch) {
        case 's':
            o->since_arg = optarg;
            break;
        case 'c':
            o->conversation = optarg;
            break;
        case 'a':
            o->account = optarg;
            break;
        case 'j':
            o->json = 1;
            break;
        case 'd':
            o->url = optarg;
            break;
        case 'h':
            cli_report_usage(stdout);
            return -1;
        default:
            cli_report_usage(stderr);
            return REPORT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "tierone report: unexpected argument '%s'\n", argv[optind]);
        return REPORT_USAGE;
    }
    if (o->conversation && !report_is_id(o->conversation)) {
        fprintf(stderr, "tierone report: --conversation needs a number\n");
        return REPORT_USAGE;
    }
    if (o->account && !report_is_id(o->account)) {
        fprintf(stderr, "tierone report: --account needs a number\n");
        return REPORT_USAGE;
    }
    if (report_since(o) != 0) {
        fprintf(stderr,
                "tierone report: bad --since '%s' (a duration like 24h, a timestamp, or "
                "all)\n",
                o->since_arg);
        return REPORT_USAGE;
    }
    if (!o->url || !*o->url) {
        fprintf(stderr, "tierone report: no database: pass --database-url or set "
                        "TIERONE_DATABASE_URL\n");
        return REPORT_USAGE;
    }
    return 0;
}

/* ---- reading -------------------------------------------------------------------------- */

#define REPORT_WHERE                                                                               \
    "t.received_at >= $1::timestamptz AND ($2::bigint IS NULL OR t.conversation_id = $2) "         \
    "AND ($3::bigint IS NULL OR t.account_id = $3)"
#define REPORT_UTC(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"

static const char report_turns_sql[] =
    "SELECT t.id, t.account_id, t.conversation_id, t.message_id, t.inbox_id, t.channel, "
    "t.contact::text, t.content, t.state, t.outcome_reason, t.question, t.decision::text, "
    "t.passages::text, " REPORT_UTC("t.received_at") ", " REPORT_UTC(
        "t.finished_at") ", "
                         "c.status, c.human_active, c.human_reason "
                         "FROM turns t LEFT JOIN conversations c "
                         "ON c.account_id = t.account_id AND c.conversation_id = t.conversation_id "
                         "WHERE " REPORT_WHERE " "
                         "ORDER BY min(t.received_at) OVER (PARTITION BY t.account_id, "
                         "t.conversation_id), "
                         "t.account_id, t.conversation_id, t.received_at, t.id";

static const char report_effects_sql[] =
    "SELECT e.turn_id, e.kind, e.state, e.payload::text, e.result::text, e.attempts, " REPORT_UTC(
        "e.created_at") " "
                        "FROM effects e JOIN turns t ON t.id = e.turn_id "
                        "WHERE " REPORT_WHERE " ORDER BY e.turn_id, e.id";

/* Run sql with the window's parameters; NULL after printing why (*status set). */
static PGresult *report_query(PGconn *pg, const struct report_opts *o, const char *sql, int *status)
{
    const char *params[] = {o->since, o->conversation, o->account};
    PGresult *r = PQexecParams(pg, sql, 3, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) == PGRES_TUPLES_OK)
        return r;
    const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    if (state && strncmp(state, "22", 2) == 0) {
        fprintf(stderr, "tierone report: bad --since '%s': %s", o->since_arg,
                PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY));
        fputc('\n', stderr);
        *status = REPORT_USAGE;
    } else if (state && strcmp(state, "42P01") == 0) {
        fprintf(stderr, "tierone report: this database has no pipeline tables (turns, effects): "
                        "run `tierone migrate`\n");
        *status = REPORT_FAILED;
    } else {
        fprintf(stderr, "tierone report: %s", PQerrorMessage(pg));
        *status = REPORT_FAILED;
    }
    PQclear(r);
    return NULL;
}

static json_t *report_int(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? json_null() : json_integer(atoll(PQgetvalue(r, row, col)));
}

static json_t *report_str(const PGresult *r, int row, int col)
{
    if (PQgetisnull(r, row, col))
        return json_null();
    json_t *s = json_string(PQgetvalue(r, row, col));
    return s ? s : json_string("(not valid UTF-8)");
}

/* A jsonb column as JSON (null when SQL NULL). */
static json_t *report_json(const PGresult *r, int row, int col)
{
    if (PQgetisnull(r, row, col))
        return json_null();
    json_t *j = json_loads(PQgetvalue(r, row, col), JSON_DECODE_ANY, NULL);
    return j ? j : json_null();
}

/* The passages the decision cites, from the turn's passages: [{id, title, source, score}]. */
static json_t *report_cited(const json_t *decision, const json_t *passages)
{
    json_t *out = json_array(), *want, *p;
    size_t i, k;
    json_array_foreach(json_object_get(decision, "passage_ids"), i, want)
    {
        json_t *found = NULL;
        json_array_foreach(passages, k, p)
        {
            if (json_equal(json_object_get(p, "id"), want)) {
                found = p;
                break;
            }
        }
        json_t *c = json_pack("{s:O}", "id", want);
        if (found) {
            const char *keys[] = {"title", "heading_path", "source", "score"};
            for (size_t n = 0; n < 4; n++) {
                json_t *v = json_object_get(found, keys[n]);
                if (v)
                    json_object_set(c, keys[n], v);
            }
        } else {
            json_object_set_new(c, "missing", json_true());
        }
        json_array_append_new(out, c);
    }
    return out;
}

static void report_count(json_t *summary, const char *key)
{
    json_t *v = json_object_get(summary, key);
    json_object_set_new(summary, key, json_integer(json_integer_value(v) + 1));
}

static json_t *report_turn(const PGresult *r, int i)
{
    json_t *decision = report_json(r, i, 11), *passages = report_json(r, i, 12);
    json_t *t =
        json_pack("{s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o}", "id", report_int(r, i, 0),
                  "message_id", report_int(r, i, 3), "received_at", report_str(r, i, 13),
                  "finished_at", report_str(r, i, 14), "contact", report_json(r, i, 6), "content",
                  report_str(r, i, 7), "state", report_str(r, i, 8), "outcome_reason",
                  report_str(r, i, 9), "question", report_str(r, i, 10));
    json_object_set_new(t, "decision", decision);
    json_object_set_new(t, "cited",
                        json_is_object(decision) ? report_cited(decision, passages) : json_array());
    json_object_set_new(t, "passages", json_integer((json_int_t)json_array_size(passages)));
    json_object_set_new(t, "effects", json_array());
    json_decref(passages);
    return t;
}

static json_t *report_conversation(const PGresult *r, int i)
{
    json_t *human =
        PQgetisnull(r, i, 16) ? json_null() : json_boolean(strcmp(PQgetvalue(r, i, 16), "t") == 0);
    return json_pack("{s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:[]}", "account_id", report_int(r, i, 1),
                     "conversation_id", report_int(r, i, 2), "inbox_id", report_int(r, i, 4),
                     "channel", report_str(r, i, 5), "status", report_str(r, i, 15), "human_active",
                     human, "human_reason", report_str(r, i, 17), "turns");
}

/* The essential text of an effect's payload: the message, the Slack text, the Linear title,
 * the labels, the status; else the payload itself. New string. */
static char *report_effect_text(const json_t *payload)
{
    const char *keys[] = {"content", "text", "title", "status"};
    for (size_t i = 0; i < 4; i++) {
        const char *s = json_string_value(json_object_get(payload, keys[i]));
        if (s)
            return xstrdup(s);
    }
    json_t *labels = json_object_get(payload, "labels"), *l;
    if (json_is_array(labels)) {
        size_t n = 0, i;
        char *out = xstrdup("");
        json_array_foreach(labels, i, l)
        {
            const char *s = json_string_value(l);
            if (!s)
                continue;
            char *next = xasprintf("%s%s%s", out, n++ ? ", " : "", s);
            free(out);
            out = next;
        }
        return out;
    }
    char *dump = json_dumps(payload, JSON_COMPACT | JSON_ENCODE_ANY);
    return dump ? dump : xstrdup("");
}

static json_t *report_effect(const PGresult *r, int i)
{
    json_t *payload = report_json(r, i, 3);
    char *text = report_effect_text(payload);
    json_t *e = json_pack("{s:o, s:o, s:s, s:o, s:o, s:o, s:o}", "kind", report_str(r, i, 1),
                          "state", report_str(r, i, 2), "text", text, "payload", payload, "result",
                          report_json(r, i, 4), "attempts", report_int(r, i, 5), "created_at",
                          report_str(r, i, 6));
    free(text);
    return e;
}

/* Build the document from the two results. */
static json_t *report_build(const struct report_opts *o, const PGresult *turns,
                            const PGresult *effects)
{
    json_t *convs = json_array(), *by_id = json_object(), *conv = NULL;
    json_t *summary =
        json_pack("{s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:{s:i, s:i, s:i}}", "conversations", 0,
                  "turns", 0, "answered", 0, "escalated", 0, "superseded", 0, "dropped", 0, "open",
                  0, "effects", "shadow", 0, "sent", 0, "pending", 0);
    const char *last_acc = NULL, *last_conv = NULL;
    for (int i = 0; i < PQntuples(turns); i++) {
        const char *acc = PQgetvalue(turns, i, 1), *cid = PQgetvalue(turns, i, 2);
        if (!conv || strcmp(acc, last_acc) != 0 || strcmp(cid, last_conv) != 0) {
            conv = report_conversation(turns, i);
            json_array_append_new(convs, conv);
            report_count(summary, "conversations");
            last_acc = acc;
            last_conv = cid;
        }
        json_t *t = report_turn(turns, i);
        json_array_append_new(json_object_get(conv, "turns"), t);
        json_object_set(by_id, PQgetvalue(turns, i, 0), t);
        report_count(summary, "turns");
        const char *state = json_string_value(json_object_get(t, "state"));
        if (state && json_object_get(summary, state))
            report_count(summary, state);
    }
    json_t *counts = json_object_get(summary, "effects");
    for (int i = 0; i < PQntuples(effects); i++) {
        json_t *t = json_object_get(by_id, PQgetvalue(effects, i, 0));
        if (!t)
            continue; /* a turn that arrived between the two queries */
        json_t *e = report_effect(effects, i);
        json_array_append_new(json_object_get(t, "effects"), e);
        const char *state = json_string_value(json_object_get(e, "state"));
        if (state && json_object_get(counts, state))
            report_count(counts, state);
    }
    json_decref(by_id);
    json_t *filter = json_pack("{s:s, s:s}", "since", o->since_arg, "since_time", o->since);
    if (o->conversation)
        json_object_set_new(filter, "conversation", json_integer(atoll(o->conversation)));
    if (o->account)
        json_object_set_new(filter, "account", json_integer(atoll(o->account)));
    return json_pack("{s:o, s:o, s:o}", "filter", filter, "summary", summary, "conversations",
                     convs);
}

/* ---- text ----------------------------------------------------------------------------- */

/* "label     text", continuation lines indented under the text, trailing blanks dropped. */
static void report_field(const char *label, const char *text)
{
    printf("    %-11s", label);
    size_t n = strlen(text);
    while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == ' ' || text[n - 1] == '\r'))
        n--;
    for (size_t i = 0; i < n; i++) {
        putchar(text[i]);
        if (text[i] == '\n')
            fputs(REPORT_INDENT, stdout);
    }
    putchar('\n');
}

static const char *report_sv(const json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

static void report_print_contact(const json_t *c)
{
    const char *name = report_sv(c, "name"), *email = report_sv(c, "email");
    const char *phone = report_sv(c, "phone_number"), *ident = report_sv(c, "identifier");
    if (name && *name)
        printf(" · %s", name);
    if (email && *email)
        printf(name && *name ? " <%s>" : " · %s", email);
    else if (phone && *phone)
        printf(" · %s", phone);
    if (ident && *ident)
        printf(" · id %s", ident);
}

static void report_print_decision(const json_t *t)
{
    const json_t *d = json_object_get(t, "decision");
    if (!json_is_object(d)) {
        if (json_integer_value(json_object_get(t, "passages")) > 0)
            report_field("decision", "(none yet; passages retrieved)");
        return;
    }
    const char *action = report_sv(d, "action"), *category = report_sv(d, "category");
    const char *by = report_sv(d, "by"), *reason = report_sv(d, "reason");
    char line[256];
    snprintf(line, sizeof line, "%s%s%s%s%s", action ? action : "?", category ? " · " : "",
             category ? category : "", by ? " · by " : "", by ? by : "");
    report_field("decision", line);
    if (reason && *reason)
        report_field("reason", reason);
    int has_reply = 0;
    json_t *e;
    size_t i;
    json_array_foreach(json_object_get(t, "effects"), i, e)
    {
        const char *kind = report_sv(e, "kind");
        has_reply |= kind && strcmp(kind, "reply") == 0;
    }
    const char *answer = report_sv(d, "answer");
    if (!has_reply && action && strcmp(action, "answer") == 0 && answer && *answer)
        report_field("answer", answer); /* decided, never posted (superseded, dropped) */
    json_t *c;
    json_array_foreach(json_object_get(t, "cited"), i, c)
    {
        char *id = json_dumps(json_object_get(c, "id"), JSON_ENCODE_ANY);
        const char *title = report_sv(c, "title"), *source = report_sv(c, "source");
        json_t *score = json_object_get(c, "score");
        char *text;
        if (json_object_get(c, "missing"))
            text = xasprintf("[%s] (not among the retrieved passages)", id);
        else
            text = xasprintf("[%s] %s%s%s", id, title && *title ? title : "(untitled)",
                             source ? " — " : "", source ? source : "");
        if (json_is_number(score)) {
            char *with = xasprintf("%s (score %.2f)", text, json_number_value(score));
            free(text);
            text = with;
        }
        report_field(i == 0 ? "cites" : "", text);
        free(text);
        free(id);
    }
}

static void report_print_turn(const json_t *t)
{
    printf("  turn %lld · %s · message %lld",
           (long long)json_integer_value(json_object_get(t, "id")),
           report_sv(t, "received_at") ? report_sv(t, "received_at") : "?",
           (long long)json_integer_value(json_object_get(t, "message_id")));
    report_print_contact(json_object_get(t, "contact"));
    putchar('\n');
    const char *content = report_sv(t, "content");
    report_field("customer", content ? content : "");
    const char *state = report_sv(t, "state"), *reason = report_sv(t, "outcome_reason");
    char *ended = xasprintf("%s%s%s",
                            state && strcmp(state, "open") == 0 ? "open (in progress)"
                            : state                             ? state
                                                                : "?",
                            reason && *reason ? ": " : "", reason && *reason ? reason : "");
    report_field("ended", ended);
    free(ended);
    report_print_decision(t);
    json_t *e;
    size_t i;
    json_array_foreach(json_object_get(t, "effects"), i, e)
    {
        const char *url = report_sv(json_object_get(e, "result"), "url");
        char *head = xasprintf("%s [%s]%s%s", report_sv(e, "kind") ? report_sv(e, "kind") : "?",
                               report_sv(e, "state") ? report_sv(e, "state") : "?",
                               url ? " → " : "", url ? url : "");
        char *text = xasprintf("%s: %s", head, report_sv(e, "text") ? report_sv(e, "text") : "");
        report_field("effect", text);
        free(text);
        free(head);
    }
}

static void report_print_text(const json_t *doc)
{
    json_t *c, *t;
    size_t i, k;
    json_array_foreach(json_object_get(doc, "conversations"), i, c)
    {
        if (i)
            putchar('\n');
        printf("conversation %lld · account %lld",
               (long long)json_integer_value(json_object_get(c, "conversation_id")),
               (long long)json_integer_value(json_object_get(c, "account_id")));
        if (json_is_integer(json_object_get(c, "inbox_id")))
            printf(" · inbox %lld", (long long)json_integer_value(json_object_get(c, "inbox_id")));
        const char *channel = report_sv(c, "channel"), *status = report_sv(c, "status");
        if (channel && *channel)
            printf(" · %s", channel);
        if (status)
            printf(" · status %s", status);
        if (json_is_true(json_object_get(c, "human_active"))) {
            const char *why = report_sv(c, "human_reason");
            printf(" · human took over%s%s", why ? ": " : "", why ? why : "");
        }
        putchar('\n');
        json_array_foreach(json_object_get(c, "turns"), k, t) report_print_turn(t);
    }
    const json_t *s = json_object_get(doc, "summary"), *e = json_object_get(s, "effects");
#define N(o, k) ((long long)json_integer_value(json_object_get((o), (k))))
    if (N(s, "turns") == 0)
        printf("no turns since %s\n", report_sv(json_object_get(doc, "filter"), "since_time"));
    else
        putchar('\n');
    printf("summary: %lld conversations, %lld turns: %lld answered, %lld escalated, "
           "%lld superseded, %lld dropped, %lld open; effects: %lld shadow, %lld sent, "
           "%lld pending\n",
           N(s, "conversations"), N(s, "turns"), N(s, "answered"), N(s, "escalated"),
           N(s, "superseded"), N(s, "dropped"), N(s, "open"), N(e, "shadow"), N(e, "sent"),
           N(e, "pending"));
#undef N
}

/* ---- the command ---------------------------------------------------------------------- */

int cli_report(int argc, char **argv)
{
    struct report_opts o;
    int rc = report_parse(argc, argv, &o);
    if (rc)
        return rc < 0 ? REPORT_OK : rc;
    PGconn *pg = PQconnectdb(o.url);
    if (PQstatus(pg) != CONNECTION_OK) {
        fprintf(stderr, "tierone report: cannot connect: %s", PQerrorMessage(pg));
        PQfinish(pg);
        return REPORT_FAILED;
    }
    int status = REPORT_OK;
    PGresult *turns = NULL, *effects = NULL;
    /* One snapshot for both queries. */
    PQclear(PQexec(pg, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"));
    turns = report_query(pg, &o, report_turns_sql, &status);
    if (turns)
        effects = report_query(pg, &o, report_effects_sql, &status);
    if (turns && effects) {
        json_t *doc = report_build(&o, turns, effects);
        if (o.json) {
            char *s = json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
            puts(s);
            free(s);
        } else {
            report_print_text(doc);
        }
        json_decref(doc);
        if (fflush(stdout) != 0)
            status = REPORT_FAILED;
    }
    PQclear(turns);
    PQclear(effects);
    PQfinish(pg);
    return status;
}
