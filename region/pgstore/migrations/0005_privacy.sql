-- chatmesh region store, version 5: users' privacy settings (core.Privacy).
-- A user without a row has the zero settings (last seen shown, anyone may
-- add). Same dialect rules as 0001. (Versions 3 and 4 are left to the
-- migrations of group roles and admission control, written in parallel;
-- versions only need to be increasing.)

CREATE TABLE IF NOT EXISTS privacy (
	user_id        TEXT    NOT NULL PRIMARY KEY,
	hide_last_seen BOOLEAN NOT NULL,
	add_policy     INTEGER NOT NULL
);
