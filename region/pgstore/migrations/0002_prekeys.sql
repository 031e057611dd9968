-- chatmesh region store, version 2: end-to-end public key material
-- (core.PrekeyStore). The store keeps opaque encodings verified by the
-- region; nothing here is secret. Same dialect rules as 0001.

-- One row per device that uploaded an identity. signed_prekey and kem_prekey
-- are empty until uploaded.
CREATE TABLE IF NOT EXISTS prekeys (
	user_id       TEXT   NOT NULL,
	device_id     BIGINT NOT NULL,
	identity      BYTEA  NOT NULL,
	signed_prekey BYTEA  NOT NULL,
	kem_prekey    BYTEA  NOT NULL,
	PRIMARY KEY (user_id, device_id)
);

-- Unused one-time prekeys; TakeBundle deletes the lowest key_id.
CREATE TABLE IF NOT EXISTS one_time_prekeys (
	user_id    TEXT   NOT NULL,
	device_id  BIGINT NOT NULL,
	key_id     BIGINT NOT NULL,
	public_key BYTEA  NOT NULL,
	PRIMARY KEY (user_id, device_id, key_id)
);

-- Tombstones of handed-out one-time prekeys: an id listed here is never
-- accepted again for the device.
CREATE TABLE IF NOT EXISTS one_time_prekeys_used (
	user_id   TEXT   NOT NULL,
	device_id BIGINT NOT NULL,
	key_id    BIGINT NOT NULL,
	PRIMARY KEY (user_id, device_id, key_id)
);

-- The newest signed device list of each user. version is an unsigned 64-bit
-- value stored bit for bit (compared in Go).
CREATE TABLE IF NOT EXISTS device_lists (
	user_id TEXT   NOT NULL PRIMARY KEY,
	version BIGINT NOT NULL,
	list    BYTEA  NOT NULL
);
