/* chatwoot_webhook: what one Chatwoot webhook body is, and what a bot should make of it
 * (APIS.md §1.4-1.9, §9). Pure: no I/O, no clock, no configuration. The router job
 * (queues/chatwoot_event.c) decides what to do with the answer (inbox settings, the
 * conversation's recorded state); this module only reads the payload.
 *
 * Classification (first rule that matches):
 *   message_created
 *     private: true                                   -> CW_HOOK_PRIVATE_NOTE
 *     message_type "activity" / "template"            -> IGNORED (activity/template message)
 *     "incoming" with content_attributes.email.auto_reply -> IGNORED "e-mail auto-reply"
 *     "incoming"                                      -> CW_HOOK_INCOMING_MESSAGE
 *     "outgoing" carrying content_attributes.tierone_turn / tierone_note
 *                                                     -> CW_HOOK_BOT_ECHO (our own post,
 *                                                        whichever token posted it)
 *     "outgoing" with content_attributes.external_echo -> CW_HOOK_HUMAN_REPLY (native app)
 *     "outgoing", sender.type "user"                  -> CW_HOOK_HUMAN_REPLY
 *     "outgoing", sender.type "agent_bot" / "captain_assistant" -> CW_HOOK_BOT_ECHO
 *     "outgoing", no sender (campaign, automation)    -> IGNORED
 *   conversation_status_changed, conversation_opened, conversation_resolved
 *                                                     -> CW_HOOK_STATUS_CHANGE
 *   conversation_updated (changed_attributes: an array of single-key objects, an object, or
 *   null)
 *     "status" among the changed keys                 -> CW_HOOK_STATUS_CHANGE
 *     "assignee_id" changed, meta.assignee_type "User", meta.assignee set
 *                                                     -> CW_HOOK_ASSIGNED_TO_HUMAN
 *     "assignee_id" changed otherwise                 -> IGNORED (unassigned / to a bot)
 *     only waiting_since / first_reply_created_at / updated_at -> IGNORED (noise)
 *     anything else (labels, custom attributes, team, priority...) -> IGNORED
 *   message_updated, conversation_created, contact_*, inbox_*, webwidget_triggered,
 *   conversation_typing_*                             -> IGNORED
 *   any other event name                              -> IGNORED "unknown event"
 * message_type may also be the integer enum (0 incoming, 1 outgoing, 2 activity,
 * 3 template), as nested messages and API responses carry it.
 *
 * Errors (chatwoot_webhook_parse returns -1; the router dead-sets the job as
 * Tierone::BadWebhook): the body is not JSON, not an object, has no "event" string, or an
 * event the bot acts on lacks what it needs (ids, a message type, a status). */
#ifndef TIERONE_CHATWOOT_WEBHOOK_H
#define TIERONE_CHATWOOT_WEBHOOK_H

#include <jansson.h>
#include <stddef.h>

enum chatwoot_webhook_kind {
    CW_HOOK_IGNORED = 0,       /* nothing for the bot to do; reason says why */
    CW_HOOK_INCOMING_MESSAGE,  /* a customer wrote: candidate for a turn */
    CW_HOOK_HUMAN_REPLY,       /* a human agent replied in public: a human took over */
    CW_HOOK_BOT_ECHO,          /* a bot's own outgoing message (ours or another bot's) */
    CW_HOOK_PRIVATE_NOTE,      /* a private note (ours or an agent's) */
    CW_HOOK_STATUS_CHANGE,     /* the conversation's status changed to `status` */
    CW_HOOK_ASSIGNED_TO_HUMAN, /* the conversation was assigned to a user (agent) */
};

/* The reading of one webhook. Every pointer is owned by the struct
 * (chatwoot_webhook_free); numbers are 0 and strings NULL when the payload lacks them. */
struct chatwoot_webhook {
    enum chatwoot_webhook_kind kind;
    const char *reason;     /* static text: why IGNORED ("e-mail auto-reply", "template message",
                             * ...), or a short description of the other kinds ("human
                             * replied", "status changed", ...); never NULL after a parse */
    char *event;            /* "message_created", "conversation_updated", ... */
    int from_agent_bot;     /* 1 when it came in on the agent-bot path (a synchronous snapshot,
                             * §1.8), 0 for the account/API-inbox webhook path */
    long long account;      /* account.id, else conversation.account.id, else
                             * messages[0].account_id */
    long long conversation; /* display id: conversation.id of a message event, the top-level
                             * id of a conversation_* event (the id REST paths use) */
    long long inbox;        /* inbox.id, else the conversation's inbox_id */
    long long message;      /* message events: the message id (top-level id); else 0 */
    char *channel;          /* the conversation's channel ("Channel::Email", ...) */
    int is_email;           /* an e-mail (channel Channel::Email, content_type incoming_email
                             * or content_attributes.email present) */
    char *content;          /* message events: the words the message adds: the top-level
                             * content, or for an e-mail the new part
                             * (content_attributes.email.text_content.quoted when it is a
                             * non-empty string), never the quoted thread; NULL when none
                             * (attachment-only messages) */
    json_t *sender;         /* message events: a copy of the sender object (NULL when null
                             * or missing); a contact has no "type" key */
    char *sender_type;      /* sender.type: "user", "agent_bot", "captain_assistant",
                             * "contact" (docs samples), or NULL (a contact, as 4.14 sends it) */
    char *status;           /* the conversation's status as the payload shows it ("pending",
                             * "open", "resolved", "snoozed"); for STATUS_CHANGE the new
                             * status (changed_attributes' current value when present) */
    char *previous_status;  /* STATUS_CHANGE: the old status when changed_attributes says */
    char *assignee_type;    /* conversation meta.assignee_type: "User", "AgentBot" or NULL */
    char *assignee_name;    /* meta.assignee.name (NULL when unassigned) */
    int assigned_to_human;  /* conversation_updated changed assignee_id to a user (also set
                             * on a STATUS_CHANGE that came with such an assignment) */
    const char *marker;     /* "tierone_turn" or "tierone_note" when content_attributes
                             * carries our marker (our own post), else NULL */
    long long marker_turn;  /* the marker's value when it is a turn id, else 0 */
};

/* Read body (len bytes, the raw webhook as Chatwoot sent it; Rails' \u003c escapes are
 * decoded like any JSON escape) that came in on path ("chatwoot" or "agent-bot"; NULL =
 * "chatwoot") into out. Returns 0 with out filled (free it with chatwoot_webhook_free), or
 * -1 with a human-readable reason in err (errcap bytes), e.g. "not JSON: ... at byte 12",
 * "not a JSON object", "message_created without conversation.id"; on -1 out holds nothing
 * that needs freeing. */
int chatwoot_webhook_parse(const char *body, size_t len, const char *path,
                           struct chatwoot_webhook *out, char *err, size_t errcap);

/* Free what w owns and zero it (safe on a zeroed struct, and twice). */
void chatwoot_webhook_free(struct chatwoot_webhook *w);

/* "incoming_message", "human_reply", "bot_echo", "private_note", "status_change",
 * "assigned_to_human", "ignored". */
const char *chatwoot_webhook_kind_name(enum chatwoot_webhook_kind kind);

#endif
