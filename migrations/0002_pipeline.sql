-- The support pipeline (issue 6): what tierone knows of each conversation, one row per
-- customer message the bot handles (the turn), and every outward effect it had or, in
-- shadow mode, would have had. Read and written by queues/*.c (turn.c, effect.c).

-- One row per conversation tierone has seen. status is the last Chatwoot status a webhook
-- told us; human_active is set when a human took over (an agent's public reply, an
-- assignment to a user) and cleared when the conversation is set back to pending: while
-- it is set, the bot stays silent in that conversation.
CREATE TABLE conversations (
    account_id      bigint NOT NULL,
    conversation_id bigint NOT NULL, -- Chatwoot's display id (the one REST paths use)
    inbox_id        bigint,
    status          text,
    human_active    boolean NOT NULL DEFAULT false,
    human_reason    text,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, conversation_id)
);

-- One row per incoming customer message the bot acts on, unique per (account,
-- conversation, message): a repeat delivery finds the existing turn. state says how the
-- turn ended: answered, escalated (handed to humans), superseded (a newer message of the
-- same burst was answered instead, reading this one too), dropped (nothing to do any more:
-- resolved, taken over, bot switched off; outcome_reason says which).
CREATE TABLE turns (
    id              bigserial PRIMARY KEY,
    account_id      bigint NOT NULL,
    conversation_id bigint NOT NULL,
    message_id      bigint NOT NULL,
    inbox_id        bigint NOT NULL,
    channel         text NOT NULL DEFAULT '',
    contact         jsonb NOT NULL DEFAULT '{}', -- the sender as the webhook showed it
    content         text NOT NULL,               -- the customer's words (new part of an e-mail)
    received_at     timestamptz NOT NULL DEFAULT now(),
    state           text NOT NULL DEFAULT 'open'
                    CHECK (state IN ('open', 'answered', 'escalated', 'superseded', 'dropped')),
    question        text,  -- the burst's messages joined (Retrieve)
    passages        jsonb, -- [{id, score, source, title, heading_path, content}] (Retrieve)
    decision        jsonb, -- {action, answer, reason, category, passage_ids, by} (Decide)
    outcome_reason  text,
    finished_at     timestamptz,
    opened_by       text,  -- jid of the ChatwootEvent job that opened the turn: its own
                           -- re-run schedules Retrieve again, another delivery does not
    UNIQUE (account_id, conversation_id, message_id)
);
CREATE INDEX turns_open ON turns (received_at) WHERE state = 'open';

-- One row per outward effect of a turn, unique per (turn, kind): the idempotency record of
-- every step that talks to the outside. 'pending' is written before a send (so a retry
-- after an unknown outcome knows to look before sending again), 'sent' after, 'shadow'
-- instead of sending in shadow mode. payload is what was (or would have been) sent.
-- claimed_at: a pending effect claimed less than effect.h's in-flight window ago may still
-- be on its way, so another run of the same step waits instead of looking and resending.
CREATE TABLE effects (
    id         bigserial PRIMARY KEY,
    turn_id    bigint NOT NULL REFERENCES turns (id) ON DELETE CASCADE,
    kind       text NOT NULL,
    state      text NOT NULL CHECK (state IN ('pending', 'sent', 'shadow')),
    payload    jsonb NOT NULL DEFAULT '{}',
    result     jsonb,
    attempts   integer NOT NULL DEFAULT 1,
    claimed_at timestamptz NOT NULL DEFAULT now(), -- when the current sender took it over
    created_at timestamptz NOT NULL DEFAULT now(),
    done_at    timestamptz,
    UNIQUE (turn_id, kind)
);
CREATE INDEX effects_created ON effects (created_at);
