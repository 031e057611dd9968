-- chatmesh region store, version 7: retention (core.Retainer). One row per
-- conversation whose entries or idempotency keys were deleted: every entry
-- with seq <= trimmed is gone; the idempotency keys of entries with seq <=
-- keys_through are gone (keys_through >= trimmed). A forgotten key is a
-- NULL client_msg_id: NULLs never collide in the unique index, so a resend
-- after the window is a new entry. Same dialect rules as 0001 (DROP NOT
-- NULL works on PostgreSQL and CockroachDB).

CREATE TABLE IF NOT EXISTS retention (
	conv_id      TEXT   NOT NULL PRIMARY KEY,
	trimmed      BIGINT NOT NULL,
	keys_through BIGINT NOT NULL
);

ALTER TABLE messages ALTER COLUMN client_msg_id DROP NOT NULL;
