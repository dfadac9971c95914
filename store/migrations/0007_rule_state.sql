-- FleetWatch schema 7: durable rule state (alerts/snapshots.py) and automatic actions at most
-- once per alert.
--
-- rule_state: one snapshot per vehicle of everything the rules know about it
-- (RulesEngine.export_state), written in batches off the ack path for the vehicles whose
-- state changed. ``newest`` is the newest fix time the state has judged: after a restore, the
-- stored positions after it are replayed, so nothing between the snapshot and a crash is
-- missed. ``owner`` is the process judging the vehicle now: a worker claims a vehicle when it
-- first sees it (a terminal that moved to it, a restart) and reads the snapshot in the same
-- statement; a snapshot is only written by the owner, and a process that sees another claim
-- the vehicle (``claimed_at`` after its last look) drops its own copy.
CREATE TABLE rule_state (
    vehicle_id  integer PRIMARY KEY REFERENCES vehicles (id) ON DELETE CASCADE,
    state       jsonb,                                 -- NULL: claimed, nothing saved yet
    newest      timestamptz,                           -- newest fix time the state covers
    saved_at    timestamptz,
    owner       text NOT NULL,
    claimed_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX rule_state_claimed ON rule_state (claimed_at);

-- An automatic text is sent at most once per alert and kind, whoever sends it and however
-- often the positions that raised the alert are replayed (restore, redelivery, a retried
-- batch): the push row is written before the command goes out, and a second one is refused.
CREATE UNIQUE INDEX terminal_pushes_auto_once ON terminal_pushes (alert_id, item)
    WHERE alert_id IS NOT NULL AND item LIKE 'text:%';
