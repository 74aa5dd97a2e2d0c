-- Cheaper storage of a turn's passages.
--
-- Retrieve stores the passages it found (about 4 kB of JSON) on the turn, so PostgreSQL
-- compresses them with its default, pglz: in the pipeline's burst pglz_compress was 3 % of
-- PostgreSQL's CPU. lz4 compresses several times faster, and decompresses faster when
-- Decide reads them back. Only where the server was built with lz4 (PostgreSQL 14 and
-- later, and --with-lz4, as Debian's and the official images are); elsewhere nothing
-- changes. Rows already stored keep their compression until they are rewritten.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_settings
               WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)) THEN
        EXECUTE 'ALTER TABLE turns ALTER COLUMN passages SET COMPRESSION lz4';
    END IF;
END
$$;
