/* chatwoot_webhook: realistic webhook bodies (tests/fixtures/webhooks/NAME.json, Chatwoot
 * 4.14 shapes from APIS.md §1.4-1.7, serialized the Rails way with \u003c escapes) in, the
 * classification and the fields the router needs out. */
#include "buf.h"
#include "chatwoot_webhook.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct buf fixture_body;

/* Parse tests/fixtures/webhooks/<name>.json as if it came in on path; asserts success. */
static void parse_fixture(const char *name, const char *path, struct chatwoot_webhook *w)
{
    const char *root = getenv("TIERONE_SOURCE_DIR");
    char file[4096], err[256] = "";
    snprintf(file, sizeof file, "%s/tests/fixtures/webhooks/%s.json", root ? root : ".", name);
    buf_reset(&fixture_body);
    cr_assert_eq(buf_read_file(&fixture_body, file), 0, "cannot read %s", file);
    cr_assert_eq(
        chatwoot_webhook_parse(fixture_body.data, fixture_body.len, path, w, err, sizeof err), 0,
        "%s: %s", name, err);
}

/* Parse a fixture and assert its kind and reason. */
static void expect(const char *name, enum chatwoot_webhook_kind kind, const char *reason,
                   struct chatwoot_webhook *w)
{
    parse_fixture(name, "chatwoot", w);
    cr_assert_eq(w->kind, kind, "%s: kind %s, want %s (%s)", name,
                 chatwoot_webhook_kind_name(w->kind), chatwoot_webhook_kind_name(kind), w->reason);
    if (reason)
        cr_assert_str_eq(w->reason, reason, "%s", name);
}

/* Parse text and assert it fails with a reason containing want. */
static void expect_error(const char *text, const char *want)
{
    struct chatwoot_webhook w;
    char err[256] = "";
    cr_assert_eq(chatwoot_webhook_parse(text, strlen(text), "chatwoot", &w, err, sizeof err), -1,
                 "accepted: %s", text);
    cr_assert(strstr(err, want), "error \"%s\" lacks \"%s\"", err, want);
    cr_assert_null(w.event, "nothing left to free after an error");
    cr_assert_null(w.sender);
}

static void fini(void)
{
    buf_free(&fixture_body);
}

TestSuite(chatwoot_webhook, .fini = fini);

/* ---- incoming messages ------------------------------------------------------------------ */

Test(chatwoot_webhook, incoming_widget_message_with_rails_escapes)
{
    struct chatwoot_webhook w;
    expect("incoming_widget", CW_HOOK_INCOMING_MESSAGE, "incoming message", &w);
    cr_assert_str_eq(w.event, "message_created");
    cr_assert_eq(w.account, 1);
    cr_assert_eq(w.conversation, 12, "display id from conversation.id");
    cr_assert_eq(w.inbox, 3);
    cr_assert_eq(w.message, 4211);
    cr_assert_str_eq(w.channel, "Channel::WebWidget");
    cr_assert_str_eq(w.status, "pending");
    cr_assert_str_eq(w.content, "Hi! Where is my <b>invoice</b> & the receipt for order #12 > #11?",
                     "\\u003c, \\u003e, \\u0026 decoded");
    cr_assert_not(w.is_email);
    cr_assert_null(w.marker);
    cr_assert_not(w.from_agent_bot);
    /* the sender is a copy of the contact, with no "type" key as 4.14 sends it */
    cr_assert_not_null(w.sender);
    cr_assert_eq(json_integer_value(json_object_get(w.sender, "id")), 77);
    cr_assert_str_eq(json_string_value(json_object_get(w.sender, "name")), "Ann Baker");
    cr_assert_str_eq(
        json_string_value(json_object_get(json_object_get(w.sender, "custom_attributes"), "plan")),
        "pro");
    cr_assert_null(w.sender_type);
    chatwoot_webhook_free(&w);
}

Test(chatwoot_webhook, agent_bot_path_is_recorded)
{
    struct chatwoot_webhook w;
    parse_fixture("incoming_widget", "agent-bot", &w);
    cr_assert_eq(w.kind, CW_HOOK_INCOMING_MESSAGE);
    cr_assert(w.from_agent_bot);
    chatwoot_webhook_free(&w);
    parse_fixture("incoming_widget", NULL, &w);
    cr_assert_not(w.from_agent_bot, "NULL path means the account webhook path");
    chatwoot_webhook_free(&w);
}

Test(chatwoot_webhook, email_reads_only_the_new_part)
{
    struct chatwoot_webhook w;
    expect("incoming_email", CW_HOOK_INCOMING_MESSAGE, NULL, &w);
    cr_assert(w.is_email);
    cr_assert_str_eq(w.channel, "Channel::Email");
    cr_assert_eq(w.inbox, 4);
    cr_assert_eq(w.message, 4300);
    cr_assert_str_eq(w.content, "Thanks, but the export still fails with error E42.");
    cr_assert_null(strstr(w.content, "wrote:"), "the quoted thread is not the customer's words");
    chatwoot_webhook_free(&w);
}

Test(chatwoot_webhook, email_without_new_part_falls_back_to_content)
{
    const char *body =
        "{\"event\":\"message_created\",\"id\":9,\"content\":\"whole mail\","
        "\"content_type\":\"incoming_email\",\"message_type\":\"incoming\",\"private\":false,"
        "\"content_attributes\":{\"email\":{\"text_content\":{\"full\":\"whole mail\","
        "\"quoted\":\"\"}}},\"sender\":{\"id\":3},\"account\":{\"id\":1},\"inbox\":{\"id\":4},"
        "\"conversation\":{\"id\":5,\"inbox_id\":4,\"channel\":\"Channel::Email\"}}";
    struct chatwoot_webhook w;
    char err[256];
    cr_assert_eq(chatwoot_webhook_parse(body, strlen(body), "chatwoot", &w, err, sizeof err), 0,
                 "%s", err);
    cr_assert_eq(w.kind, CW_HOOK_INCOMING_MESSAGE);
    cr_assert_str_eq(w.content, "whole mail");
    chatwoot_webhook_free(&w);
}

Test(chatwoot_webhook, email_auto_reply_is_ignored)
{
    struct chatwoot_webhook w;
    expect("email_auto_reply", CW_HOOK_IGNORED, "e-mail auto-reply", &w);
    cr_assert(w.is_email);
    chatwoot_webhook_free(&w);
}

Test(chatwoot_webhook, attachment_only_message_has_no_content)
{
    struct chatwoot_webhook w;
    expect("incoming_attachment_only", CW_HOOK_INCOMING_MESSAGE, NULL, &w);
    cr_assert_null(w.content, "content null: the router ignores it as \"no text\"");
    cr_assert_eq(w.message, 4212);
    chatwoot_webhook_free(&w);
}

Test(chatwoot_webhook, integer_message_type_is_understood)
{
    struct chatwoot_webhook w;
    expect("incoming_integer_type", CW_HOOK_INCOMING_MESSAGE, NULL, &w);
    cr_assert_str_eq(w.content, "Numeric message type");
    chatwoot_webhook_free(&w);
}

/* ---- outgoing messages ------------------------------------------------------------------- */

Test(chatwoot_webhook, bot_echo_with_and_without_marker)
{
    struct chatwoot_webhook w;
    expect("bot_echo", CW_HOOK_BOT_ECHO, NULL, &w);
    cr_assert_str_eq(w.marker, "tierone_turn");
    cr_assert_eq(w.marker_turn, 41);
    cr_assert_str_eq(w.sender_type, "agent_bot");
    chatwoot_webhook_free(&w);
    expect("bot_echo_no_marker", CW_HOOK_BOT_ECHO, "outgoing message from the bot", &w);
    cr_assert_null(w.marker);
    chatwoot_webhook_free(&w);
    expect("captain_reply", CW_HOOK_BOT_ECHO, NULL, &w);
    cr_assert_str_eq(w.sender_type, "captain_assistant");
    chatwoot_webhook_free(&w);
}

Test(chatwoot_webhook, our_reply_posted_with_a_user_token_is_not_a_human)
{
    struct chatwoot_webhook w;
    expect("our_reply_user_token", CW_HOOK_BOT_ECHO, NULL, &w);
    cr_assert_str_eq(w.sender_type, "user");
    cr_assert_str_eq(w.marker, "tierone_turn");
    cr_assert_eq(w.marker_turn, 42);
    chatwoot_webhook_free(&w);
}

Test(chatwoot_webhook, human_reply)
{
    struct chatwoot_webhook w;
    expect("human_reply", CW_HOOK_HUMAN_REPLY, "human replied", &w);
    cr_assert_eq(w.account, 1);
    cr_assert_eq(w.conversation, 12);
    cr_assert_eq(w.message, 4216);
    cr_assert_str_eq(w.sender_type, "user");
    cr_assert_str_eq(json_string_value(json_object_get(w.sender, "name")), "Sam Agent");
    chatwoot_webhook_free(&w);
}

Test(chatwoot_webhook, external_echo_is_a_human_reply_without_sender)
{
    struct chatwoot_webhook w;
    expect("external_echo", CW_HOOK_HUMAN_REPLY, "human replied from the native app", &w);
    cr_assert_null(w.sender, "sender: null");
    cr_assert_str_eq(w.channel, "Channel::Whatsapp");
    cr_assert_eq(w.inbox, 6);
    chatwoot_webhook_free(&w);
}

Test(chatwoot_webhook, private_notes)
{
    struct chatwoot_webhook w;
    expect("private_note", CW_HOOK_PRIVATE_NOTE, "private note", &w);
    cr_assert_null(w.marker);
    chatwoot_webhook_free(&w);
    expect("our_private_note", CW_HOOK_PRIVATE_NOTE, NULL, &w);
    cr_assert_str_eq(w.marker, "tierone_note");
    chatwoot_webhook_free(&w);
}

Test(chatwoot_webhook, template_and_activity_are_ignored)
{
    struct chatwoot_webhook w;
    expect("template", CW_HOOK_IGNORED, "template message", &w);
    cr_assert_null(w.sender);
    chatwoot_webhook_free(&w);
    expect("activity", CW_HOOK_IGNORED, "activity message", &w);
    chatwoot_webhook_free(&w);
}

Test(chatwoot_webhook, outgoing_without_sender_is_ignored)
{
    const char *body = "{\"event\":\"message_created\",\"id\":9,\"content\":\"Campaign\","
                       "\"message_type\":\"outgoing\",\"private\":false,\"sender\":null,"
                       "\"content_attributes\":{\"automation_rule_id\":3},"
                       "\"account\":{\"id\":1},\"conversation\":{\"id\":5}}";
    struct chatwoot_webhook w;
    char err[256];
    cr_assert_eq(chatwoot_webhook_parse(body, strlen(body), "chatwoot", &w, err, sizeof err), 0);
    cr_assert_eq(w.kind, CW_HOOK_IGNORED);
    cr_assert_str_eq(w.reason, "outgoing message without a human sender");
    chatwoot_webhook_free(&w);
}

/* ---- status changes ---------------------------------------------------------------------- */

/* One change to resolved reaches a bot three times; all three read the same fact. */
Test(chatwoot_webhook, three_deliveries_of_one_status_change)
{
    static const char *const names[] = {"status_changed_resolved", "status_updated_resolved",
                                        "conversation_resolved"};
    for (int i = 0; i < 3; i++) {
        struct chatwoot_webhook w;
        expect(names[i], CW_HOOK_STATUS_CHANGE, "status changed", &w);
        cr_assert_eq(w.account, 1, "%s", names[i]);
        cr_assert_eq(w.conversation, 12, "%s: top-level id is the display id", names[i]);
        cr_assert_eq(w.inbox, 3, "%s", names[i]);
        cr_assert_eq(w.message, 0, "%s", names[i]);
        cr_assert_str_eq(w.status, "resolved", "%s", names[i]);
        cr_assert_not(w.assigned_to_human, "%s", names[i]);
        chatwoot_webhook_free(&w);
    }
}

Test(chatwoot_webhook, status_change_details)
{
    struct chatwoot_webhook w;
    expect("status_updated_resolved", CW_HOOK_STATUS_CHANGE, NULL, &w);
    cr_assert_str_eq(w.previous_status, "pending");
    chatwoot_webhook_free(&w);
    expect("status_changed_pending", CW_HOOK_STATUS_CHANGE, NULL, &w);
    cr_assert_str_eq(w.status, "pending");
    cr_assert_null(w.previous_status, "changed_attributes: null");
    chatwoot_webhook_free(&w);
    expect("status_changed_legacy_form", CW_HOOK_STATUS_CHANGE, NULL, &w);
    cr_assert_str_eq(w.status, "pending", "{status: [old, new]} as the bot specs feed it");
    cr_assert_str_eq(w.previous_status, "open");
    chatwoot_webhook_free(&w);
    expect("conversation_opened", CW_HOOK_STATUS_CHANGE, NULL, &w);
    cr_assert_str_eq(w.status, "open");
    chatwoot_webhook_free(&w);
    expect("status_changed_snoozed", CW_HOOK_STATUS_CHANGE, NULL, &w);
    cr_assert_str_eq(w.status, "snoozed");
    chatwoot_webhook_free(&w);
}

Test(chatwoot_webhook, deprecated_event_without_status_uses_its_name)
{
    const char *body = "{\"event\":\"conversation_resolved\",\"id\":5,\"account\":{\"id\":1}}";
    struct chatwoot_webhook w;
    char err[256];
    cr_assert_eq(chatwoot_webhook_parse(body, strlen(body), "agent-bot", &w, err, sizeof err), 0,
                 "%s", err);
    cr_assert_eq(w.kind, CW_HOOK_STATUS_CHANGE);
    cr_assert_str_eq(w.status, "resolved");
    chatwoot_webhook_free(&w);
}

Test(chatwoot_webhook, account_from_messages_before_4_14_2)
{
    struct chatwoot_webhook w;
    expect("status_changed_no_account_object", CW_HOOK_STATUS_CHANGE, NULL, &w);
    cr_assert_eq(w.account, 1, "messages[0].account_id");
    chatwoot_webhook_free(&w);
}

/* ---- assignment and conversation_updated noise -------------------------------------------- */

Test(chatwoot_webhook, assignment_to_a_user)
{
    struct chatwoot_webhook w;
    expect("assigned_user", CW_HOOK_ASSIGNED_TO_HUMAN, NULL, &w);
    cr_assert(w.assigned_to_human);
    cr_assert_str_eq(w.assignee_type, "User");
    cr_assert_str_eq(w.assignee_name, "Sam Agent");
    cr_assert_eq(w.conversation, 12);
    chatwoot_webhook_free(&w);
}

Test(chatwoot_webhook, assignment_that_opens_a_pending_conversation)
{
    struct chatwoot_webhook w;
    expect("assigned_user_opening_pending", CW_HOOK_STATUS_CHANGE, NULL, &w);
    cr_assert_str_eq(w.status, "open");
    cr_assert(w.assigned_to_human, "the status change carries the assignment");
    cr_assert_str_eq(w.assignee_name, "Sam Agent");
    chatwoot_webhook_free(&w);
}

Test(chatwoot_webhook, unassignment_and_bot_assignment_are_ignored)
{
    struct chatwoot_webhook w;
    expect("unassigned", CW_HOOK_IGNORED, "conversation_updated: unassigned", &w);
    chatwoot_webhook_free(&w);
    expect("assigned_bot", CW_HOOK_IGNORED, "conversation_updated: unassigned", &w);
    cr_assert_str_eq(w.assignee_type, "AgentBot");
    chatwoot_webhook_free(&w);
}

Test(chatwoot_webhook, conversation_updated_noise)
{
    static const char *const names[] = {"updated_noise_waiting_since", "updated_noise_first_reply"};
    for (int i = 0; i < 2; i++) {
        struct chatwoot_webhook w;
        expect(names[i], CW_HOOK_IGNORED,
               "conversation_updated noise (waiting_since, first_reply_created_at)", &w);
        chatwoot_webhook_free(&w);
    }
    struct chatwoot_webhook w;
    expect("updated_labels", CW_HOOK_IGNORED,
           "conversation_updated: no status or assignment change", &w);
    chatwoot_webhook_free(&w);
    expect("updated_null", CW_HOOK_IGNORED, "conversation_updated without changed_attributes", &w);
    chatwoot_webhook_free(&w);
}

/* ---- events a bot ignores ------------------------------------------------------------------ */

Test(chatwoot_webhook, other_events_are_ignored)
{
    static const struct {
        const char *name, *reason;
    } cases[] = {
        {"conversation_created", "conversation_created"},
        {"message_updated", "message_updated"},
        {"contact_updated", "contact event"},
        {"webwidget_triggered", "webwidget_triggered"},
        {"typing_on", "typing indicator"},
        {"unknown_event", "unknown event"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        struct chatwoot_webhook w;
        expect(cases[i].name, CW_HOOK_IGNORED, cases[i].reason, &w);
        chatwoot_webhook_free(&w);
    }
}

/* ---- bad input ------------------------------------------------------------------------------ */

Test(chatwoot_webhook, bad_input)
{
    expect_error("", "not JSON");
    expect_error("{\"event\":", "not JSON");
    expect_error("<html>502 Bad Gateway</html>", "not JSON");
    expect_error("[1,2]", "not a JSON object");
    expect_error("\"message_created\"", "not JSON"); /* jansson refuses a bare string */
    expect_error("{\"id\":1}", "no \"event\" string");
    expect_error("{\"event\":42}", "no \"event\" string");
    expect_error("{\"event\":\"message_created\",\"id\":1,\"private\":false,"
                 "\"message_type\":\"whisper\"}",
                 "message_type");
    /* an incoming message the router could not turn into a turn */
    expect_error("{\"event\":\"message_created\",\"id\":1,\"message_type\":\"incoming\","
                 "\"content\":\"hi\",\"account\":{\"id\":1},\"inbox\":{\"id\":3}}",
                 "without a conversation id");
    expect_error("{\"event\":\"message_created\",\"message_type\":\"incoming\",\"content\":\"hi\","
                 "\"account\":{\"id\":1},\"inbox\":{\"id\":3},\"conversation\":{\"id\":5}}",
                 "without a message id");
    expect_error("{\"event\":\"message_created\",\"id\":1,\"message_type\":\"incoming\","
                 "\"conversation\":{\"id\":5,\"inbox_id\":3}}",
                 "without an account id");
    expect_error("{\"event\":\"message_created\",\"id\":1,\"message_type\":\"outgoing\","
                 "\"sender\":{\"type\":\"user\"},\"account\":{\"id\":1}}",
                 "human_reply) without a conversation id");
    expect_error("{\"event\":\"conversation_status_changed\",\"id\":5,\"account\":{\"id\":1}}",
                 "without a status");
}

Test(chatwoot_webhook, status_change_without_any_account_is_an_error)
{
    const char *root = getenv("TIERONE_SOURCE_DIR");
    char file[4096], err[256] = "";
    snprintf(file, sizeof file, "%s/tests/fixtures/webhooks/status_changed_no_account_at_all.json",
             root ? root : ".");
    struct buf b = BUF_INIT;
    cr_assert_eq(buf_read_file(&b, file), 0);
    struct chatwoot_webhook w;
    cr_assert_eq(chatwoot_webhook_parse(b.data, b.len, "chatwoot", &w, err, sizeof err), -1);
    cr_assert_str_eq(err, "conversation_status_changed (status_change) without an account id");
    buf_free(&b);
}

Test(chatwoot_webhook, ignored_events_need_no_ids)
{
    struct chatwoot_webhook w;
    char err[256];
    const char *body = "{\"event\":\"message_created\",\"message_type\":\"template\"}";
    cr_assert_eq(chatwoot_webhook_parse(body, strlen(body), "chatwoot", &w, err, sizeof err), 0,
                 "%s", err);
    cr_assert_eq(w.kind, CW_HOOK_IGNORED);
    chatwoot_webhook_free(&w);
    chatwoot_webhook_free(&w); /* twice is safe */
}

Test(chatwoot_webhook, huge_integer_elsewhere_does_not_break_the_webhook)
{
    const char *body =
        "{\"event\":\"message_created\",\"id\":4211,\"content\":\"hi\",\"message_type\":"
        "\"incoming\",\"private\":false,\"sender\":{\"id\":77,\"custom_attributes\":{\"big\":"
        "123456789012345678901234567890}},\"account\":{\"id\":1},\"inbox\":{\"id\":3},"
        "\"conversation\":{\"id\":12,\"status\":\"pending\"}}";
    struct chatwoot_webhook w;
    char err[256];
    cr_assert_eq(chatwoot_webhook_parse(body, strlen(body), "chatwoot", &w, err, sizeof err), 0,
                 "%s", err);
    cr_assert_eq(w.kind, CW_HOOK_INCOMING_MESSAGE);
    cr_assert_eq(w.message, 4211);
    cr_assert_eq(w.conversation, 12);
    cr_assert_eq(w.account, 1);
    chatwoot_webhook_free(&w);
}

Test(chatwoot_webhook, kind_names)
{
    cr_assert_str_eq(chatwoot_webhook_kind_name(CW_HOOK_INCOMING_MESSAGE), "incoming_message");
    cr_assert_str_eq(chatwoot_webhook_kind_name(CW_HOOK_ASSIGNED_TO_HUMAN), "assigned_to_human");
    cr_assert_str_eq(chatwoot_webhook_kind_name(CW_HOOK_IGNORED), "ignored");
}
