-- chatmesh on a multi-region CockroachDB cluster: the table localities and
-- survival goal we recommend for the three-region layout of deploy/mesh/.
--
-- THIS FILE IS DOCUMENTATION. chatmesh does not apply it, and no test runs
-- it: no CockroachDB binary is obtainable on the build machines (see
-- ../../../shared/STACK.md), so it is checked against the CockroachDB
-- documentation only. The store (region/pgstore) migrates its own schema in
-- the dialect PostgreSQL and CockroachDB share; apply this file by hand,
-- once, after the first `chatmesh region --pg ...` has created the tables
-- and before traffic, as a user with the admin role:
--
--   cockroach sql --url "$CHATMESH_PG" -f deploy/cockroach/multiregion.sql
--
-- Region names: chatmesh's --region names are the CockroachDB regions (the
-- `region=` tier of every node's --locality). If they differ, edit the CASE
-- expressions below, which map a chatmesh region to a database region.
-- Reasoning and costs: deploy/mesh/README.md, "CockroachDB".

-- 1. The database's regions and survival goal. ---------------------------

ALTER DATABASE chatmesh SET PRIMARY REGION "eu-central";
ALTER DATABASE chatmesh ADD REGION "us-east";
ALTER DATABASE chatmesh ADD REGION "ap-southeast";

-- REGION survival: every range has 5 voting replicas, 2 in its home region
-- and 3 elsewhere, so a commit needs one replica outside the home region:
-- about one round trip to the nearest other region per transaction (~90 ms
-- Frankfurt<->Virginia, ~160 ms Singapore<->Frankfurt; typical published
-- figures, not measured here). In exchange the loss of a whole region loses
-- no acknowledged message and its conversations can be moved to a
-- surviving region (the directory's 3 voters also survive one region).
-- The alternative, SURVIVE ZONE FAILURE (the default: 3 voters in the home
-- region, in different zones), commits in ~1-2 ms but leaves a failed
-- region's rows unavailable until it returns, and lost if it never does.
ALTER DATABASE chatmesh SURVIVE REGION FAILURE;

-- 2. GLOBAL: read on the connection or message path in every region,
-- written rarely. Reads are local and consistent everywhere; a write waits
-- out the global commit (several hundred ms). ------------------------------

ALTER TABLE users        SET LOCALITY GLOBAL;  -- registration; existence checks by every home
ALTER TABLE devices      SET LOCALITY GLOBAL;  -- Authenticate (noise_static index) on every connection, any region
ALTER TABLE device_lists SET LOCALITY GLOBAL;  -- fetched by senders anywhere; changes when a device is linked
ALTER TABLE prekeys      SET LOCALITY GLOBAL;  -- signed prekey bundles; rotated rarely
ALTER TABLE privacy      SET LOCALITY GLOBAL;  -- read by presence and group adds anywhere
-- routes: read by a conversation's home on every fanout (the members'
-- edges, in any region) and written once per connect/disconnect. GLOBAL
-- keeps the per-message read local and fresh; connects pay the slow write.
-- (REGIONAL BY ROW would make every fanout to a member connected elsewhere
-- a cross-region read; follower reads would miss a session opened in the
-- last seconds and lose its live pushes until the next sync.)
ALTER TABLE routes       SET LOCALITY GLOBAL;

-- 3. REGIONAL BY ROW, a row lives in its conversation's home region. -----

-- conversations: the row's region is computed from home_region, so a
-- planned move (home_region and epoch updated together) re-homes the row.
ALTER TABLE conversations ADD COLUMN crdb_region crdb_internal_region NOT VISIBLE NOT NULL AS (
	CASE home_region
		WHEN 'us-east' THEN 'us-east'
		WHEN 'ap-southeast' THEN 'ap-southeast'
		ELSE 'eu-central'
	END) STORED;
ALTER TABLE conversations SET LOCALITY REGIONAL BY ROW AS crdb_region;

-- messages, members, cursors: written only by the conversation's home
-- sequencer, so the gateway region of the write is the home. Rows written
-- before a move stay where they were written (readable from anywhere, one
-- cross-region round trip).
ALTER TABLE messages SET LOCALITY REGIONAL BY ROW;  -- adds crdb_region DEFAULT gateway region
ALTER TABLE members  SET LOCALITY REGIONAL BY ROW;
ALTER TABLE cursors  SET LOCALITY REGIONAL BY ROW;

-- COST, with today's store queries: crdb_region is not derivable from these
-- tables' primary keys, so CockroachDB checks PRIMARY KEY and UNIQUE
-- constraints (messages_by_idempotency_key) in every region on insert, and
-- the append's idempotency lookup (a miss, for every new message) searches
-- the local region first and then the others. That is a cross-region read
-- on every append, on top of the REGION-survival commit. Making appends
-- region-local needs a CockroachDB-only migration plus a store change (not
-- done; deploy/mesh/README.md): crdb_region made an explicit prefix of the
-- primary key and of messages_by_idempotency_key, the append's lookups
-- filtered on it, global (conv_id, seq) uniqueness left to the fenced
-- conversation row (head and epoch change in the same transaction), and a
-- move carrying the recent idempotency keys to the new home.

-- 4. REGIONAL BY ROW at the writer's region. ------------------------------

-- last_seen: written when a user's session closes (in the region they are
-- connected to, usually their home), read by presence queries of peers.
ALTER TABLE last_seen SET LOCALITY REGIONAL BY ROW;
-- One-time prekeys: uploaded by the owner's device (its region), consumed
-- by a fetch from any region (a write, so GLOBAL would make every session
-- set-up wait for a global commit).
ALTER TABLE one_time_prekeys      SET LOCALITY REGIONAL BY ROW;
ALTER TABLE one_time_prekeys_used SET LOCALITY REGIONAL BY ROW;

-- Nothing is REGIONAL BY TABLE: no table is written and read from one
-- region only. (REGIONAL BY TABLE IN PRIMARY REGION is what every table is
-- before this file runs: all leaseholders in eu-central, one round trip
-- from the other regions for every statement.)

-- 5. Checks after applying. -------------------------------------------------
--
--   SHOW REGIONS FROM DATABASE chatmesh;
--   SELECT table_name, locality FROM [SHOW TABLES FROM chatmesh];
--   SHOW ZONE CONFIGURATION FROM TABLE messages;   -- num_voters = 5, voter constraints per region
