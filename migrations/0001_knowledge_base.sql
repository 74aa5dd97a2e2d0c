-- The knowledge base (issue 5): knowledge bases selected by name, their documents and the
-- searchable chunks of each document. Read by lib/kb_store.c and lib/kb_search.c.

-- One row per knowledge base (for example one per inbox). ts_config is the PostgreSQL text
-- search configuration its chunks are indexed and searched with: 'english' (stemming,
-- English stop words) by default, 'simple' (lower-casing only) for other languages.
CREATE TABLE knowledge_bases (
    id         bigserial PRIMARY KEY,
    name       text NOT NULL UNIQUE CHECK (name <> ''),
    ts_config  regconfig NOT NULL DEFAULT 'english',
    created_at timestamptz NOT NULL DEFAULT now()
);

-- One row per ingested document. source is what the operator named (a file path or a URL);
-- root is the ingest argument it was found under (the directory, the file, the URL), so
-- `kb ingest --prune ROOT` removes exactly the documents of ROOT whose source disappeared.
-- content_hash is the SHA-256 of the raw bytes; chunking the chunking parameters the chunks
-- were cut with. A document whose hash and chunking are unchanged is not written again.
CREATE TABLE kb_documents (
    id           bigserial PRIMARY KEY,
    kb_id        bigint NOT NULL REFERENCES knowledge_bases (id) ON DELETE CASCADE,
    source       text NOT NULL,
    root         text NOT NULL,
    title        text NOT NULL DEFAULT '',
    content_type text NOT NULL DEFAULT '',
    content_hash text NOT NULL,
    chunking     text NOT NULL DEFAULT '',
    bytes        bigint NOT NULL DEFAULT 0,
    chunk_count  integer NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (kb_id, source)
);
CREATE INDEX kb_documents_root ON kb_documents (kb_id, root);

-- One row per chunk. kb_id repeats the document's so search filters without a join;
-- ts_config repeats the knowledge base's so the generated tsvector can name it:
-- to_tsvector(regconfig, text) is immutable, to_tsvector(text) (which reads the session's
-- default_text_search_config) is not. The heading path ("Deploy > Helm > Scaling") gets
-- weight A and the body weight B, so ts_rank_cd ranks a heading match above a body match.
-- embedding holds the chunk's embedding vector once computed (NULL until then); a real[]
-- so it works without the `vector` extension (see below for the vector column).
CREATE TABLE kb_chunks (
    id              bigserial PRIMARY KEY,
    document_id     bigint NOT NULL REFERENCES kb_documents (id) ON DELETE CASCADE,
    kb_id           bigint NOT NULL REFERENCES knowledge_bases (id) ON DELETE CASCADE,
    ordinal         integer NOT NULL,
    heading_path    text NOT NULL DEFAULT '',
    content         text NOT NULL,
    ts_config       regconfig NOT NULL,
    tsv             tsvector GENERATED ALWAYS AS (
                        setweight(to_tsvector(ts_config, heading_path), 'A') ||
                        setweight(to_tsvector(ts_config, content), 'B')) STORED,
    embedding       real[],
    embedding_model text,
    UNIQUE (document_id, ordinal)
);
-- Full-text search: tsv @@ query.
CREATE INDEX kb_chunks_tsv ON kb_chunks USING gin (tsv);
-- Filtering by knowledge base; kb embed's "chunks still without an embedding".
CREATE INDEX kb_chunks_kb ON kb_chunks (kb_id, id);
CREATE INDEX kb_chunks_unembedded ON kb_chunks (kb_id, id) WHERE embedding IS NULL;

-- The vector path, only where the pgvector extension is installed on the server (it is
-- not on Debian bookworm). embedding_vec is derived from embedding, so writers only ever
-- write the real[] column. Without the extension nothing here runs and search is
-- full-text only.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector') THEN
        CREATE EXTENSION IF NOT EXISTS vector;
        ALTER TABLE kb_chunks ADD COLUMN embedding_vec vector
            GENERATED ALWAYS AS (embedding::vector) STORED;
    END IF;
END
$$;
