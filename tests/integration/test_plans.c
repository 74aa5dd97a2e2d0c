/* The pipeline's statements stay index-driven on a database in service (issue 6).
 *
 * The plans PostgreSQL keeps for prepared statements follow the statistics: on a database
 * whose ANALYZE saw few open turns and few recent effects, an index over those looked
 * cheapest, and during a burst, with thousands open, every turn walked all of them (2026-11
 * `turns_open`: finishing a turn went from 0.04 to 0.63 ms; Reply's hour over
 * `effects_created`, 2 ms a call). Timing is the benchmark's business; this test counts
 * buffers, which a plan decides and the machine's load does not.
 *
 * Set-up: 20,000 answered turns of two days ago with their effects, ANALYZE, autovacuum off
 * for the tables, then 3,000 open turns and 3,000 pending reply effects of now that the
 * statistics do not know about. Then 40 questions go through the real shim and worker (with
 * the fake model), and pg_stat_statements (loaded by scripts/test.sh: SERVICES_PG_PRELOAD)
 * says how many shared buffers each of the pipeline's statements touched per call. The
 * knowledge base's statements are left out: they read the documents. */
#include "fake_llm.h"
#include "test_pg.h"
#include "test_stack.h"

#include <criterion/criterion.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REDIS_DB  13
#define PG_NAME   "tierone_test_plans"
#define QUESTIONS 40
/* An index lookup, an update of a row and its indexes, an insert with its foreign-key
 * check: tens of buffers. Walking 3,000 open turns or effects: thousands. */
#define MAX_BUFFERS_PER_CALL 150

static struct test_stack st;

static void in_service(void)
{
    test_pg_exec(st.pg, "ALTER TABLE turns SET (autovacuum_enabled = off);"
                        "ALTER TABLE effects SET (autovacuum_enabled = off);"
                        "ALTER TABLE conversations SET (autovacuum_enabled = off)");
    cr_assert_eq(test_stack_history(&st, 20000), 0, "cannot build the history");
    /* what the statistics do not know: a burst's open turns and its recent effects */
    test_pg_exec(st.pg,
                 "INSERT INTO conversations (account_id, conversation_id, inbox_id, status)"
                 " SELECT 1, 2000000 + g, 1, 'pending' FROM generate_series(1, 3000) g;"
                 "INSERT INTO turns (account_id, conversation_id, message_id, inbox_id, content,"
                 " received_at, state)"
                 " SELECT 1, 2000000 + g, 100000 + g, 1, 'a question in flight', now(), 'open'"
                 " FROM generate_series(1, 3000) g;"
                 "INSERT INTO effects (turn_id, kind, state)"
                 " SELECT id, 'reply', 'pending' FROM turns WHERE conversation_id > 2000000");
}

Test(plans, the_pipelines_statements_touch_few_buffers_on_a_database_in_service, .timeout = 240)
{
    struct test_stack_opts o = {.redis_db = REDIS_DB, .pg_name = PG_NAME, .llm = 1};
    test_stack_start(&st, &o);
    fake_llm_set_handler(st.llm, fake_llm_support_model, NULL);
    char *ext = test_pg_value(st.pg, "SELECT count(*) FROM pg_extension"
                                     " WHERE extname = 'pg_stat_statements'");
    cr_assert(ext && !strcmp(ext, "1"),
              "pg_stat_statements is not installed (scripts/test.sh starts PostgreSQL with "
              "SERVICES_PG_PRELOAD=pg_stat_statements)");
    free(ext);
    in_service();
    for (long conv = 1; conv <= QUESTIONS; conv++) {
        char delivery[64];
        snprintf(delivery, sizeof delivery, "plans-%ld", conv);
        test_stack_conversation(&st, conv, "pending");
        cr_assert_gt(test_stack_customer_says(&st, conv, "How do I reset my password?", delivery),
                     0, "the shim did not accept conversation %ld's message", conv);
    }
    char want[16];
    snprintf(want, sizeof want, "%d", QUESTIONS);
    cr_assert(test_stack_wait_sql(&st,
                                  "SELECT count(*) FROM turns WHERE conversation_id <= 40"
                                  " AND state = 'answered'",
                                  want, 120000),
              "the questions were not all answered");

    /* every statement the worker ran for each of the questions (the pool prepares them,
     * so after five runs PostgreSQL may plan them once, generically: the plan at stake) */
    PGresult *r =
        PQexec(st.pg, "SELECT s.calls, round((s.shared_blks_hit + s.shared_blks_read)::numeric"
                      "   / s.calls, 1), regexp_replace(left(s.query, 110), '\\s+', ' ', 'g')"
                      " FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
                      " JOIN pg_roles u ON u.oid = s.userid"
                      " WHERE d.datname = current_database() AND u.rolname = current_user"
                      " AND s.calls >= 40 AND s.query !~ 'kb_|pg_stat|generate_series'"
                      " ORDER BY 2 DESC");
    cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQerrorMessage(st.pg));
    int n = PQntuples(r);
    char report[8192] = "";
    size_t used = 0;
    for (int i = 0; i < n && used < sizeof report - 256; i++)
        used += (size_t)snprintf(report + used, sizeof report - used,
                                 "\n  %s calls, %s buffers/call: %s", PQgetvalue(r, i, 0),
                                 PQgetvalue(r, i, 1), PQgetvalue(r, i, 2));
    /* the chain's own statements: the event's upsert, the turn's loads and updates, the
     * effects' claims and completions, Reply's ledger: at least 8 kinds */
    cr_assert_geq(n, 8, "only %d statements ran 40 times or more:%s", n, report);
    for (int i = 0; i < n; i++)
        cr_expect_leq(atof(PQgetvalue(r, i, 1)), MAX_BUFFERS_PER_CALL,
                      "a statement walks more than an index lookup's worth of buffers:%s", report);
    cr_log_info("buffers per call:%s", report);
    PQclear(r);
    test_stack_stop(&st);
}
