-- chatmesh region store, version 6: the region of a route's edge (issue 7,
-- the mesh): a conversation's home delivers to an edge of another region
-- over the link to that region. '' is the reading region (routes stored
-- before the mesh). Same dialect rules as 0001.

ALTER TABLE routes ADD COLUMN IF NOT EXISTS region TEXT NOT NULL DEFAULT '';
