-- FleetWatch schema 10: one incident, one alert; hazard fences.
--
-- geofences.kind may be 'hazard' (school-bus 20 km/h zones: school gates, villages, level
-- crossings; see geo/fences.py).
--
-- An incident that goes through stages (a fatigue episode: warning -> escalation -> alarm; a
-- speeding approach) stays one alert: a stage is an 'update' event of another type, which
-- moves alerts.type to that stage and is recorded in alerts.timeline (and returns outcome
-- 'staged', so the automatic text of the new stage goes out exactly once). Every open, stage,
-- severity change and close appends {at, phase, type, severity} to the timeline: the alert
-- shows how the incident went without the dispatcher opening the audit trail.
--
-- Instants that need no handling (entering or leaving a plain fence, a speeding pre-warning)
-- are recorded like any alert but closed by the system as they are stored (record_only), so
-- they never sit in the dispatcher's open list nor escalate.

ALTER TABLE geofences DROP CONSTRAINT geofences_kind_check;
ALTER TABLE geofences ADD CONSTRAINT geofences_kind_check
    CHECK (kind IN ('zone', 'forbidden', 'speed_limit', 'route', 'hazard'));

ALTER TABLE alerts ADD COLUMN timeline jsonb NOT NULL DEFAULT '[]';

DROP FUNCTION alerts_apply(text[], text[], integer[], text[], timestamptz[], timestamptz[],
                           smallint[], boolean[], text[], text[]);

-- As in schema 2 (matching by (vehicle, key, start), then the running episode of (vehicle,
-- key), else a new alert), plus: ats[i] is the moment of event i (fix time; NULL: its start,
-- or its end for a close) for the timeline; record_only[i] stores a new alert closed.
CREATE FUNCTION alerts_apply(
    phases text[], types text[], vehicle_ids integer[], keys text[], starts timestamptz[],
    ends timestamptz[], severities smallint[], lates boolean[], drivers text[], details text[],
    ats timestamptz[], record_only boolean[]
) RETURNS TABLE (n integer, alert_id bigint, outcome text) LANGUAGE plpgsql AS $$
DECLARE
    i integer;
    d jsonb;
    closing timestamptz;
    found_id bigint;
    found_end timestamptz;
    old_severity smallint;
    old_type text;
    step jsonb;
BEGIN
    FOR i IN 1 .. coalesce(array_length(phases, 1), 0) LOOP
        n := i;
        d := coalesce(details[i]::jsonb, '{}');
        closing := CASE WHEN phases[i] = 'close'
                        THEN greatest(coalesce(ends[i], starts[i]), starts[i]) END;
        step := jsonb_build_object(
            'at', coalesce(ats[i], closing, starts[i]), 'phase', phases[i], 'type', types[i],
            'severity', severities[i]);
        LOOP  -- runs again only if a concurrent batch inserted the same episode first
            SELECT a.id, a.end_time, a.severity, a.type
              INTO found_id, found_end, old_severity, old_type
            FROM alerts a
            WHERE a.vehicle_id = vehicle_ids[i] AND a.key = keys[i] AND a.start_time = starts[i]
            ORDER BY a.end_time IS NULL DESC, a.id DESC LIMIT 1
            FOR UPDATE;
            IF found_id IS NOT NULL AND found_end IS NOT NULL THEN
                alert_id := found_id; outcome := 'ignored';
                EXIT;
            END IF;
            IF found_id IS NULL THEN
                SELECT a.id, a.severity, a.type INTO found_id, old_severity, old_type
                FROM alerts a
                WHERE a.vehicle_id = vehicle_ids[i] AND a.key = keys[i] AND a.end_time IS NULL
                FOR UPDATE;
            END IF;
            IF found_id IS NOT NULL THEN
                UPDATE alerts a SET
                    details = a.details || d,
                    severity = least(a.severity, severities[i]),
                    driver = coalesce(a.driver, drivers[i]),
                    end_time = closing,
                    type = CASE WHEN phases[i] = 'update' THEN types[i] ELSE a.type END,
                    timeline = CASE
                        WHEN closing IS NOT NULL
                          OR (phases[i] = 'update' AND types[i] <> old_type)
                          OR severities[i] < old_severity
                        THEN a.timeline || jsonb_build_array(step) ELSE a.timeline END,
                    updated_at = now()
                WHERE a.id = found_id;
                IF severities[i] < old_severity THEN
                    INSERT INTO alert_audit (alert_id, actor, action, details)
                    VALUES (found_id, 'system', 'severity',
                            jsonb_build_object('from', old_severity, 'to', severities[i]));
                END IF;
                IF phases[i] = 'update' AND types[i] <> old_type THEN
                    INSERT INTO alert_audit (alert_id, actor, action, details)
                    VALUES (found_id, 'system', 'stage',
                            jsonb_build_object('from', old_type, 'to', types[i], 'at', step->'at'));
                    outcome := 'staged';
                ELSE
                    outcome := CASE WHEN closing IS NULL THEN 'updated' ELSE 'closed' END;
                END IF;
            ELSE
                -- a record-only instant is stored closed by the system (needs no handling)
                INSERT INTO alerts (vehicle_id, type, key, severity, start_time, end_time, late,
                                    driver, details, timeline, status, acknowledged_by,
                                    acknowledged_at, closed_by, closed_at, close_note)
                VALUES (vehicle_ids[i], types[i], keys[i], severities[i], starts[i], closing,
                        lates[i], drivers[i], d, jsonb_build_array(step),
                        CASE WHEN record_only[i] THEN 'closed' ELSE 'open' END,
                        CASE WHEN record_only[i] THEN 'system' END,
                        CASE WHEN record_only[i] THEN now() END,
                        CASE WHEN record_only[i] THEN 'system' END,
                        CASE WHEN record_only[i] THEN now() END,
                        CASE WHEN record_only[i] THEN 'recorded: needs no handling' END)
                ON CONFLICT (vehicle_id, key) WHERE end_time IS NULL DO NOTHING
                RETURNING id INTO found_id;
                CONTINUE WHEN found_id IS NULL;
                INSERT INTO alert_audit (alert_id, actor, action, to_status, details)
                VALUES (found_id, 'system', 'episode_open',
                        CASE WHEN record_only[i] THEN 'closed' ELSE 'open' END,
                        jsonb_build_object('start', starts[i], 'late', lates[i],
                                           'phase', phases[i], 'record_only', record_only[i]));
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
