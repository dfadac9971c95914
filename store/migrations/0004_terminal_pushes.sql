-- FleetWatch schema 4: what the platform pushed to terminals and what they answered.
-- One row per command sent for terminal-side enforcement (0x8103 parameters, 0x8600-0x8607
-- areas and routes), alarm confirmation (0x8203) and automatic driver texts (0x8300).
-- A row is written before the command goes out (result NULL: waiting for the answer) and
-- completed with the terminal's answer, so a crash leaves a trace of what may have reached it.

CREATE TABLE terminal_pushes (
    id            bigserial PRIMARY KEY,
    vehicle_id    integer NOT NULL REFERENCES vehicles (id),
    msg_id        integer NOT NULL,                  -- 0x8103, 0x8600, 0x8203, 0x8300, ...
    item          text NOT NULL,                     -- what it sets: 'params', 'circles',
                                                     -- 'polygon:7', 'alarm_confirmation', ...
    content_hash  text NOT NULL,                     -- sha256 of the canonical JSON content
    content       jsonb,                             -- the body as JSON (what was sent)
    alert_id      bigint REFERENCES alerts (id) ON DELETE SET NULL,  -- the alert it answers
    serial        integer,                           -- platform serial (NULL: never sent)
    sent_at       timestamptz NOT NULL DEFAULT now(),
    result        text CHECK (result IN ('accepted', 'failed', 'unsupported', 'timeout', 'offline')),
    answered_at   timestamptz                        -- when the terminal answered
);
-- "the last accepted push of this item to this vehicle" (push on authentication if changed).
CREATE INDEX terminal_pushes_vehicle ON terminal_pushes (vehicle_id, item, sent_at DESC);
CREATE INDEX terminal_pushes_alert ON terminal_pushes (alert_id) WHERE alert_id IS NOT NULL;

-- The server's scan for terminal alarms acknowledged (from any process, the CLI included) but
-- not yet confirmed to their terminal with 0x8203 (fleetwatch.supervision, every second).
CREATE INDEX alerts_terminal_acknowledged ON alerts (acknowledged_at)
    WHERE type = 'terminal_alarm' AND acknowledged_at IS NOT NULL;
