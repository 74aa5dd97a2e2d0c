-- ContactSync (issue 6, queues/contact_sync.c): the operator's users, upserted into
-- Chatwoot contacts by an operator-supplied query. These tables remember what each pass did
-- so the next one sends only what changed, and says so to the operator.

-- One row per (account, identifier) the sync has seen. contact_id is the Chatwoot contact
-- (NULL until found or created), so later passes PATCH it directly instead of searching.
-- synced_hash is the SHA-256 of the row's fields as last sent: a row whose hash is unchanged
-- costs no request. A row Chatwoot (or the local check) refused keeps its reason in
-- last_error and its hash in failed_hash: delta passes skip it until it changes, the daily
-- full pass tries it again. Shadow mode writes only the shadow_* columns: what would have
-- been sent.
CREATE TABLE contact_links (
    account_id     bigint NOT NULL,
    identifier     text NOT NULL,
    contact_id     bigint,
    synced_hash    text,
    synced_at      timestamptz,
    last_error     text,
    failed_hash    text,
    failed_at      timestamptz,
    shadow_action  text,  -- 'create' or 'update' (in shadow mode)
    shadow_payload jsonb, -- the body that would have been sent
    shadow_hash    text,
    shadow_at      timestamptz,
    PRIMARY KEY (account_id, identifier)
);
CREATE INDEX contact_links_failed ON contact_links (account_id) WHERE last_error IS NOT NULL;

-- One row per pass. A delta pass gives the query the start time of the last 'ok' pass
-- (minus a minute) as $1. state 'failed' is a pass stopped by a retryable error (the job is
-- retried; rows already synced are then skipped by hash) or a fatal one.
CREATE TABLE contact_sync_runs (
    id                 bigserial PRIMARY KEY,
    account_id         bigint NOT NULL,
    mode               text NOT NULL CHECK (mode IN ('delta', 'full')),
    jid                text,
    shadow             boolean NOT NULL DEFAULT false,
    state              text NOT NULL DEFAULT 'running'
                       CHECK (state IN ('running', 'ok', 'failed')),
    started_at         timestamptz NOT NULL DEFAULT now(),
    finished_at        timestamptz,
    rows_seen          integer NOT NULL DEFAULT 0,
    unchanged          integer NOT NULL DEFAULT 0,
    created            integer NOT NULL DEFAULT 0,
    updated            integer NOT NULL DEFAULT 0,
    failed             integer NOT NULL DEFAULT 0, -- rows recorded with last_error
    missing_identifier integer NOT NULL DEFAULT 0, -- rows without an identifier (not synced)
    shadowed           integer NOT NULL DEFAULT 0, -- rows recorded as shadow writes
    last_error         text
);
CREATE INDEX contact_sync_runs_ok ON contact_sync_runs (account_id, started_at) WHERE state = 'ok';
