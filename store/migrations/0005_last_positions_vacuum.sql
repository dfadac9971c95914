-- FleetWatch schema 5: keep the last-position table small under constant updates.
-- Every flush updates the row of each reporting vehicle, and an update that moves the point
-- changes a GiST-indexed column, so it can never be HOT: each one leaves a dead row version and
-- dead index entries behind. With the default thresholds (20% of a table of a few thousand rows,
-- checked once a minute) 2,000 vehicles reporting every 0.2 s left 630,000 dead versions (46 MB
-- for 2,000 live rows) within 100 s, and every upsert had to step over them: flushes grew slower
-- and slower. Vacuum it after a fixed number of dead rows, without cost-based pauses (it is
-- small: a pass takes milliseconds).
ALTER TABLE last_positions SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 50000
);
