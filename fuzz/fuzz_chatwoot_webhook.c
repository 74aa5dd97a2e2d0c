/* fuzz_chatwoot_webhook: libFuzzer target over chatwoot_webhook_parse, the reading of a
 * raw Chatwoot webhook that Tierone::ChatwootEvent does first in the worker. The shim
 * queues any JSON it accepted, so this parser sees whatever a sender signed.
 *
 * Input layout: byte 0 picks the path the delivery came in on (0 "chatwoot", 1
 * "agent-bot", 2 NULL); the rest is the body, copied into a buffer of exactly its size (no
 * NUL after it, as a job argument's bytes arrive), so an over-read is an ASan report.
 *
 * Checked on every input, beyond the sanitizers:
 *   - the result is 0 or -1; on -1 the reason is a non-empty string and the struct holds
 *     nothing; on 0 the reason and the kind's name are set, and the kinds that act on a
 *     conversation carry its account and display id;
 *   - parsing the same bytes twice gives the same reading (no uninitialised state);
 *   - chatwoot_webhook_free is safe twice. */
#include "chatwoot_webhook.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void fuzz_fail(const char *what)
{
    fprintf(stderr, "fuzz_chatwoot_webhook: %s\n", what);
    abort();
}

static int same_str(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static void check_reading(const struct chatwoot_webhook *w)
{
    if (!w->reason || !chatwoot_webhook_kind_name(w->kind))
        fuzz_fail("a parsed webhook without a reason or kind name");
    /* strings are NUL-terminated (ASan reports an over-read here) */
    const char *strs[] = {w->event,  w->channel,         w->content,       w->sender_type,
                          w->status, w->previous_status, w->assignee_type, w->assignee_name};
    size_t total = 0;
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++)
        total += strs[i] ? strlen(strs[i]) : 0;
    (void)total;
    if (w->sender && !json_is_object(w->sender))
        fuzz_fail("sender is not an object");
    if (w->kind == CW_HOOK_INCOMING_MESSAGE && (!w->account || !w->conversation || !w->message))
        fuzz_fail("an incoming message without account, conversation or message id");
    if (w->kind == CW_HOOK_STATUS_CHANGE && (!w->conversation || !w->status))
        fuzz_fail("a status change without conversation or status");
}

static int same_reading(const struct chatwoot_webhook *a, const struct chatwoot_webhook *b)
{
    return a->kind == b->kind && same_str(a->reason, b->reason) && same_str(a->event, b->event) &&
           a->from_agent_bot == b->from_agent_bot && a->account == b->account &&
           a->conversation == b->conversation && a->inbox == b->inbox && a->message == b->message &&
           same_str(a->channel, b->channel) && a->is_email == b->is_email &&
           same_str(a->content, b->content) && same_str(a->sender_type, b->sender_type) &&
           same_str(a->status, b->status) && same_str(a->previous_status, b->previous_status) &&
           same_str(a->assignee_type, b->assignee_type) &&
           same_str(a->assignee_name, b->assignee_name) &&
           a->assigned_to_human == b->assigned_to_human && same_str(a->marker, b->marker) &&
           a->marker_turn == b->marker_turn && !a->sender == !b->sender &&
           (!a->sender || json_equal(a->sender, b->sender));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const paths[] = {"chatwoot", "agent-bot", NULL};
    if (size < 1)
        return 0;
    const char *path = paths[data[0] % 3];
    size_t len = size - 1;
    char *body = malloc(len ? len : 1);
    if (!body)
        return 0;
    memcpy(body, data + 1, len);

    struct chatwoot_webhook a, b;
    char err[256], err2[256];
    memset(&a, 0xa5, sizeof a); /* the parser must set every field it leaves for us */
    int rc = chatwoot_webhook_parse(body, len, path, &a, err, sizeof err);
    if (rc != 0 && rc != -1)
        fuzz_fail("a result other than 0 or -1");
    if (rc == -1) {
        if (!err[0] || strnlen(err, sizeof err) == sizeof err)
            fuzz_fail("an error without a reason");
    } else {
        check_reading(&a);
    }
    memset(&b, 0, sizeof b);
    int rc2 = chatwoot_webhook_parse(body, len, path, &b, err2, sizeof err2);
    if (rc2 != rc || (rc == 0 && !same_reading(&a, &b)) || (rc == -1 && strcmp(err, err2)))
        fuzz_fail("two parses of the same bytes differ");
    if (rc == 0) {
        chatwoot_webhook_free(&a);
        chatwoot_webhook_free(&a);
        chatwoot_webhook_free(&b);
    }
    free(body);
    return 0;
}
