-- FleetWatch schema 2: alerts (one row per episode, with its lifecycle), their audit trail, and
-- the watchlist (缉查布控). Violations and their handling are kept at least 3 years: deleting an
-- alert that is not closed, or closed less than 3 years ago, is refused by a trigger, and the
-- audit trail cannot be edited (道路运输车辆动态监督管理办法 Art. 20: no deleting or tampering).

CREATE TABLE alerts (
    id                bigserial PRIMARY KEY,
    vehicle_id        integer NOT NULL REFERENCES vehicles (id),
    type              text NOT NULL,
    key               text NOT NULL,                   -- the episode among the vehicle's open ones
    severity          smallint NOT NULL CHECK (severity BETWEEN 1 AND 4),  -- 1 critical .. 4 low
    status            text NOT NULL DEFAULT 'open'
                      CHECK (status IN ('open', 'acknowledged', 'handled', 'closed')),
    start_time        timestamptz NOT NULL,            -- episode start (fix time)
    end_time          timestamptz,                     -- episode end; NULL while it lasts
    late              boolean NOT NULL DEFAULT false,  -- found in late data: never notified live
    driver            text,
    details           jsonb NOT NULL DEFAULT '{}',
    created_at        timestamptz NOT NULL DEFAULT now(),   -- escalation clock starts here
    updated_at        timestamptz NOT NULL DEFAULT now(),
    acknowledged_by   text,
    acknowledged_at   timestamptz,
    handled_by        text,                            -- the latest handling
    handled_at        timestamptz,
    handling_action   text,                            -- text_sent, phone_call, evidence, ...
    handling_note     text,
    closed_by         text,
    closed_at         timestamptz,
    close_note        text,
    escalation_level  smallint NOT NULL DEFAULT 0,
    escalated_at      timestamptz,
    CHECK (end_time IS NULL OR end_time >= start_time),
    CHECK (status = 'open' OR (acknowledged_by IS NOT NULL AND acknowledged_at IS NOT NULL)),
    CHECK (status <> 'handled' OR (handled_by IS NOT NULL AND handled_at IS NOT NULL)),
    CHECK (status <> 'closed' OR (closed_by IS NOT NULL AND closed_at IS NOT NULL))
);
-- The dispatcher's list of alerts not closed yet (and the escalation scan: status = 'open').
CREATE INDEX alerts_active ON alerts (status, created_at) WHERE status <> 'closed';
CREATE INDEX alerts_vehicle_time ON alerts (vehicle_id, start_time);
CREATE INDEX alerts_start_time ON alerts (start_time);
-- At most one running episode per (vehicle, key): a close finds its open, a retried open
-- finds the row it made.
CREATE UNIQUE INDEX alerts_running_episode ON alerts (vehicle_id, key) WHERE end_time IS NULL;

CREATE TABLE alert_audit (
    id           bigserial PRIMARY KEY,
    alert_id     bigint NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    at           timestamptz NOT NULL DEFAULT now(),
    actor        text NOT NULL,                        -- a dispatcher, or 'system'
    -- episode_open, episode_close, severity (episode events); acknowledge, handle, close;
    -- escalate
    action       text NOT NULL,
    from_status  text,
    to_status    text,
    details      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX alert_audit_alert ON alert_audit (alert_id, id);

CREATE FUNCTION alerts_keep_3_years() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status <> 'closed' OR OLD.closed_at > now() - interval '3 years'
       OR coalesce(OLD.end_time, OLD.start_time) > now() - interval '3 years' THEN
        RAISE EXCEPTION 'alert % must be kept: violations and their handling are kept at least 3 years after they are closed', OLD.id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN OLD;
END $$;
CREATE TRIGGER alerts_keep_3_years BEFORE DELETE ON alerts
    FOR EACH ROW EXECUTE FUNCTION alerts_keep_3_years();

-- The audit trail is append-only; its rows go only with their (expired) alert.
CREATE FUNCTION alert_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND NOT EXISTS (SELECT 1 FROM alerts WHERE id = OLD.alert_id) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'the alert audit trail cannot be changed (% of audit row %)', lower(TG_OP), OLD.id
        USING ERRCODE = 'integrity_constraint_violation';
END $$;
CREATE TRIGGER alert_audit_append_only BEFORE UPDATE OR DELETE ON alert_audit
    FOR EACH ROW EXECUTE FUNCTION alert_audit_append_only();

-- Apply a batch of episode events in order, in one statement (one round trip, one transaction).
-- The arrays are the events' fields, element i of each being event i; returns per event the
-- alert it went to and what happened ('inserted', 'updated', 'closed', 'ignored'). An event
-- goes to, in this order:
--   1. the alert of the same (vehicle, key, start): if its episode has ended, the event is a
--      retry of a batch already applied and changes nothing ('ignored');
--   2. the running episode of (vehicle, key), whatever its start (an open for a key already
--      open updates it: a rules engine restarted mid-episode does not duplicate it);
--   3. a new alert (for an update or close whose open was lost, too: the violation is kept;
--      a close inserts it already ended).
-- Merging: details shallow-merged (new keys win), severity keeps the most urgent, driver kept
-- once known; a close sets end_time (never before the start). Episode opens and closes and
-- severity changes are audited with actor 'system'; figure-only updates are not (the row holds
-- the latest figures and the close's audit row the final ones).
CREATE FUNCTION alerts_apply(
    phases text[], types text[], vehicle_ids integer[], keys text[], starts timestamptz[],
    ends timestamptz[], severities smallint[], lates boolean[], drivers text[], details text[]
) RETURNS TABLE (n integer, alert_id bigint, outcome text) LANGUAGE plpgsql AS $$
DECLARE
    i integer;
    d jsonb;
    closing timestamptz;
    found_id bigint;
    found_end timestamptz;
    old_severity smallint;
BEGIN
    FOR i IN 1 .. coalesce(array_length(phases, 1), 0) LOOP
        n := i;
        d := coalesce(details[i]::jsonb, '{}');
        closing := CASE WHEN phases[i] = 'close'
                        THEN greatest(coalesce(ends[i], starts[i]), starts[i]) END;
        LOOP  -- runs again only if a concurrent batch inserted the same episode first
            SELECT a.id, a.end_time, a.severity INTO found_id, found_end, old_severity
            FROM alerts a
            WHERE a.vehicle_id = vehicle_ids[i] AND a.key = keys[i] AND a.start_time = starts[i]
            ORDER BY a.end_time IS NULL DESC, a.id DESC LIMIT 1
            FOR UPDATE;
            IF found_id IS NOT NULL AND found_end IS NOT NULL THEN
                alert_id := found_id; outcome := 'ignored';
                EXIT;
            END IF;
            IF found_id IS NULL THEN
                SELECT a.id, a.severity INTO found_id, old_severity FROM alerts a
                WHERE a.vehicle_id = vehicle_ids[i] AND a.key = keys[i] AND a.end_time IS NULL
                FOR UPDATE;
            END IF;
            IF found_id IS NOT NULL THEN
                UPDATE alerts a SET
                    details = a.details || d,
                    severity = least(a.severity, severities[i]),
                    driver = coalesce(a.driver, drivers[i]),
                    end_time = closing,
                    updated_at = now()
                WHERE a.id = found_id;
                IF severities[i] < old_severity THEN
                    INSERT INTO alert_audit (alert_id, actor, action, details)
                    VALUES (found_id, 'system', 'severity',
                            jsonb_build_object('from', old_severity, 'to', severities[i]));
                END IF;
                outcome := CASE WHEN closing IS NULL THEN 'updated' ELSE 'closed' END;
            ELSE
                INSERT INTO alerts (vehicle_id, type, key, severity, start_time, end_time, late,
                                    driver, details)
                VALUES (vehicle_ids[i], types[i], keys[i], severities[i], starts[i], closing,
                        lates[i], drivers[i], d)
                ON CONFLICT (vehicle_id, key) WHERE end_time IS NULL DO NOTHING
                RETURNING id INTO found_id;
                CONTINUE WHEN found_id IS NULL;
                INSERT INTO alert_audit (alert_id, actor, action, to_status, details)
                VALUES (found_id, 'system', 'episode_open', 'open',
                        jsonb_build_object('start', starts[i], 'late', lates[i],
                                           'phase', phases[i]));
                outcome := 'inserted';
            END IF;
            IF closing IS NOT NULL THEN
                INSERT INTO alert_audit (alert_id, actor, action, details)
                VALUES (found_id, 'system', 'episode_close',
                        jsonb_build_object('end', closing, 'details', d));
            END IF;
            alert_id := found_id;
            EXIT;
        END LOOP;
        RETURN NEXT;
    END LOOP;
END $$;

CREATE TABLE watchlist (
    plate       text PRIMARY KEY,                      -- upper-cased, as vehicles.plate
    reason      text NOT NULL,
    added_by    text NOT NULL,
    added_at    timestamptz NOT NULL DEFAULT now(),
    active      boolean NOT NULL DEFAULT true,
    removed_by  text,
    removed_at  timestamptz
);
