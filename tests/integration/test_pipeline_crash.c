/* The support pipeline under crashes (issue 6): 200 conversations go through the real
 * shim and worker while the worker is killed with SIGKILL at random points and restarted.
 * Every turn must end answered or escalated, and no reply, note or Linear issue may be
 * sent twice. Crashed workers' jobs come back through lease recovery (heartbeat TTL 2 s in
 * the stack); a send whose outcome a crash hid is reconciled by its marker (Chatwoot) or
 * its derived id (Linear). Redis database 1, PostgreSQL tierone_test_crash. */
#include "fake_chatwoot.h"
#include "fake_linear.h"
#include "test_pg.h"
#include "test_stack.h"

#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CONVERSATIONS 200

static const char QUESTION[] = "How do I reset my password? The reset link never arrives";
static const char BUG[] = "The CSV export crashes with error 500 every time I click download";

static unsigned random_below(unsigned n)
{
    unsigned v = 0;
    if (getrandom(&v, sizeof v, 0) != sizeof v)
        v = (unsigned)rand();
    return v % n;
}

static void nap_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* The marked messages of conversation conv whose marker value ends with suffix. */
static size_t marked(struct test_stack *s, long conv, const char *key, const char *suffix)
{
    json_t *msgs = fake_chatwoot_messages(s->cw, 1, conv);
    size_t n = 0, i;
    json_t *m;
    json_array_foreach(msgs, i, m)
    {
        const char *v =
            json_string_value(json_object_get(json_object_get(m, "content_attributes"), key));
        size_t lv = v ? strlen(v) : 0, ls = strlen(suffix);
        if (v && lv >= ls && !strcmp(v + lv - ls, suffix))
            n++;
    }
    json_decref(msgs);
    return n;
}

Test(pipeline_crash, kill_9_at_random_points_loses_and_duplicates_nothing, .timeout = 600)
{
    struct test_stack st;
    /* A kill every second or so puts a fetched job into a dying process's store several
     * times before it runs; the poison-pill rule (3 by default) would bury it. This test
     * is about idempotency, so the rule is relaxed here (it has tests of its own). */
    const char *env[] = {"TIERONE_MAX_RECOVERIES=100", NULL};
    struct test_stack_opts o = {.redis_db = 1, .pg_name = "tierone_test_crash", .env = env};
    test_stack_start(&st, &o);
    for (long c = 1; c <= CONVERSATIONS; c++)
        test_stack_conversation(&st, c, "pending");
    /* Post the conversations in waves while killing the worker now and then. */
    int kills = 0;
    for (long c = 1; c <= CONVERSATIONS; c++) {
        char delivery[32];
        snprintf(delivery, sizeof delivery, "crash-%ld", c);
        cr_assert_gt(test_stack_customer_says(&st, c, c % 2 ? QUESTION : BUG, delivery), 0,
                     "the shim did not accept conversation %ld's message", c);
        if (c % 20 == 0) {
            nap_ms(100 + random_below(500));
            test_stack_kill_worker(&st, SIGKILL);
            kills++;
            test_stack_start_worker(&st);
        }
    }
    /* Keep killing while the chain runs, then let the last worker finish. */
    for (int i = 0; i < 8; i++) {
        nap_ms(200 + random_below(800));
        test_stack_kill_worker(&st, SIGKILL);
        kills++;
        test_stack_start_worker(&st);
    }
    cr_assert(test_stack_wait_idle(&st, 240000), "the run did not finish after %d kills", kills);
    cr_log_info("%d workers killed with SIGKILL", kills);

    char *open = test_pg_value(st.pg, "SELECT count(*) FROM turns WHERE state NOT IN "
                                      "('answered', 'escalated')");
    cr_assert_str_eq(open, "0", "turns that did not end answered or escalated: %s", open);
    free(open);
    char *turns = test_pg_value(st.pg, "SELECT count(*) FROM turns");
    cr_assert_eq(atoi(turns), CONVERSATIONS);
    free(turns);
    size_t bugs = 0;
    for (long c = 1; c <= CONVERSATIONS; c++) {
        if (c % 2) {
            cr_assert_eq(marked(&st, c, "tierone_turn", ""), 1, "conversation %ld: %zu replies", c,
                         marked(&st, c, "tierone_turn", ""));
        } else {
            bugs++;
            cr_assert_eq(marked(&st, c, "tierone_turn", ""), 0);
            cr_assert_eq(marked(&st, c, "tierone_note", ":escalation"), 1,
                         "conversation %ld: escalation notes", c);
            cr_assert_eq(marked(&st, c, "tierone_note", ":linear"), 1,
                         "conversation %ld: Linear notes", c);
            char *status = fake_chatwoot_status(st.cw, 1, c);
            cr_assert_str_eq(status, "open");
            free(status);
        }
    }
    cr_assert_eq(fake_linear_issue_count(st.linear), bugs, "one Linear issue per bug report");
    test_stack_stop(&st);
}
