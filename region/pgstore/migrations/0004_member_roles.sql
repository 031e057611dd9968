-- chatmesh region store, version 4: group roles and invitations
-- (core.Member.Admin and core.Member.Invited). A row with invited = TRUE is
-- a pending invitation, not a membership; members_by_user lists both, and
-- callers check the flag. Same dialect rules as 0001 (ADD COLUMN IF NOT
-- EXISTS with a constant default works on PostgreSQL and CockroachDB).
-- Numbered 4, not 3: another change of issue 6 (privacy settings) adds its
-- own migration, and the two must not share a version.

ALTER TABLE members ADD COLUMN IF NOT EXISTS admin BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE members ADD COLUMN IF NOT EXISTS invited BOOLEAN NOT NULL DEFAULT FALSE;
