-- chatmesh region store, version 1.
-- Dialect: the common subset of PostgreSQL 15 and CockroachDB. No SERIAL, no
-- PL/pgSQL, no extensions; every key is explicit. Text ordering is done in
-- Go (byte order), so no collation is declared.

CREATE TABLE IF NOT EXISTS users (
	id            TEXT   NOT NULL PRIMARY KEY,
	home_region   TEXT   NOT NULL,
	created_at_ms BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS devices (
	user_id        TEXT   NOT NULL,
	device_id      BIGINT NOT NULL,
	noise_static   BYTEA  NOT NULL,
	identity_key   BYTEA  NOT NULL,
	linked_by      BIGINT NOT NULL,
	link_signature BYTEA  NOT NULL,
	created_at_ms  BIGINT NOT NULL,
	PRIMARY KEY (user_id, device_id)
);
CREATE UNIQUE INDEX IF NOT EXISTS devices_by_noise_static ON devices (noise_static);

-- home_region and epoch: the conversation's owner region and owner epoch
-- (multi-region fencing). head: seq of the newest entry.
CREATE TABLE IF NOT EXISTS conversations (
	id            TEXT    NOT NULL PRIMARY KEY,
	kind          INTEGER NOT NULL,
	title         TEXT    NOT NULL,
	home_region   TEXT    NOT NULL,
	epoch         BIGINT  NOT NULL,
	head          BIGINT  NOT NULL,
	created_at_ms BIGINT  NOT NULL
);

-- One row per entry; body is the protobuf chatmesh.v1.Message with seq and
-- epoch set. The unique index is the idempotency key.
CREATE TABLE IF NOT EXISTS messages (
	conv_id       TEXT   NOT NULL,
	seq           BIGINT NOT NULL,
	sender_user   TEXT   NOT NULL,
	sender_device BIGINT NOT NULL,
	client_msg_id TEXT   NOT NULL,
	body          BYTEA  NOT NULL,
	PRIMARY KEY (conv_id, seq)
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_idempotency_key
	ON messages (conv_id, sender_user, sender_device, client_msg_id);

CREATE TABLE IF NOT EXISTS members (
	conv_id    TEXT   NOT NULL,
	user_id    TEXT   NOT NULL,
	joined_seq BIGINT NOT NULL,
	PRIMARY KEY (conv_id, user_id)
);
CREATE INDEX IF NOT EXISTS members_by_user ON members (user_id, conv_id);

CREATE TABLE IF NOT EXISTS cursors (
	conv_id       TEXT   NOT NULL,
	user_id       TEXT   NOT NULL,
	device_id     BIGINT NOT NULL,
	delivered_seq BIGINT NOT NULL,
	read_seq      BIGINT NOT NULL,
	PRIMARY KEY (conv_id, user_id, device_id)
);
CREATE INDEX IF NOT EXISTS cursors_by_device ON cursors (user_id, device_id, conv_id);

CREATE TABLE IF NOT EXISTS routes (
	user_id   TEXT   NOT NULL,
	device_id BIGINT NOT NULL,
	edge      TEXT   NOT NULL,
	session   BIGINT NOT NULL,
	since_ms  BIGINT NOT NULL,
	PRIMARY KEY (user_id, device_id)
);
CREATE INDEX IF NOT EXISTS routes_by_edge ON routes (edge);

CREATE TABLE IF NOT EXISTS last_seen (
	user_id TEXT   NOT NULL PRIMARY KEY,
	at_ms   BIGINT NOT NULL
);
