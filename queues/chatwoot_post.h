/* chatwoot_post: post one message of a turn to Chatwoot at most once, the way Reply, the
 * escalation note and the Linear note all need it (DESIGN.md §2, APIS.md §2.2).
 *
 * Chatwoot has no idempotency on message create, so every message carries a marker in its
 * content_attributes ({"tierone_turn": "<key>"}, {"tierone_note": "<key>:linear"}), which
 * Chatwoot stores and returns. The send goes through effect.h (turn, kind):
 *   - EFFECT_NEW:     post, then complete the effect with {"message_id": id};
 *   - EFFECT_PENDING: an earlier attempt's outcome is unknown. With a user token, list the
 *     conversation's messages after the turn's incoming message (100 a page, up to 10
 *     pages) and look for the marker: found -> complete with that message's id, not found
 *     -> post. Without a user token (list messages refuses the bot token) do not post
 *     again: log a warning and complete with {"unknown": true}; the turn ledger guards;
 *   - EFFECT_SENT:    done before, nothing is sent;
 *   - EFFECT_SHADOW:  recorded instead of sent (shadow mode).
 * Errors of the clients and of PostgreSQL are passed on unchanged (already classified);
 * posting while Chatwoot is not configured (a live inbox in a shadow-only setup) is a
 * permanent Tierone::Chatwoot::NotConfigured. */
#ifndef TIERONE_CHATWOOT_POST_H
#define TIERONE_CHATWOOT_POST_H

#include "job_error.h"

struct pipeline;

/* What happened to the message. */
enum chatwoot_post_outcome {
    CHATWOOT_POST_SENT,    /* posted now; message_id set */
    CHATWOOT_POST_FOUND,   /* an earlier attempt's message carries the marker; message_id set */
    CHATWOOT_POST_UNKNOWN, /* earlier outcome unknown, no user token to look: not posted again */
    CHATWOOT_POST_DONE,    /* the effect was complete before; message_id from its result */
    CHATWOOT_POST_SHADOW,  /* shadow mode: recorded, not sent */
};

/* One message. Strings are borrowed for the duration of the call (copied). */
struct chatwoot_post {
    long long turn_id;
    const char *kind; /* effect kind: "reply", "escalation_note", "linear_note" */
    long long account, conversation;
    long long after_message; /* the turn's incoming message id: markers are searched after it */
    const char *content;     /* non-empty */
    int private_note;        /* 1: private note; 0: a reply to the customer */
    const char *marker_key;  /* content_attributes key, e.g. "tierone_turn" */
    const char *marker_value;
    int shadow;              /* pipeline_shadow() of the turn's inbox */
    const char *finish_turn; /* NULL, or the state ("answered") the turn ends in (if still
                                open) on success, whatever the outcome: in the statement
                                that completes the effect, or alone (turn_finish) when the
                                effect needs no completion (done, shadow) */
    const char *jid, *klass; /* the calling job (logs, rate-limit reservation); may be NULL */
};

/* err: NULL on success (outcome and message_id set; message_id 0 when unknown), else a new
 * error the callback owns (pass it to job_done). */
typedef void (*chatwoot_post_cb)(struct job_error *err, enum chatwoot_post_outcome outcome,
                                 long long message_id, void *arg);

/* Post m through effect (m->turn_id, m->kind) as described above. Returns 0 and cb runs
 * exactly once later; or -1 (cb never runs) when the effect cannot be claimed at all (the
 * pool is closing). */
int chatwoot_post_send(struct pipeline *p, const struct chatwoot_post *m, chatwoot_post_cb cb,
                       void *arg);

/* "sent", "found", "unknown", "done", "shadow". */
const char *chatwoot_post_outcome_name(enum chatwoot_post_outcome o);

#endif
