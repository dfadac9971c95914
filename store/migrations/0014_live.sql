-- FleetWatch schema 14: alerts announce their changes, for the dashboard's live feed.
--
-- Whoever changes an alert (the rules in any worker, a dispatcher, the alerts CLI, escalation),
-- the row's id is NOTIFYed on channel fleetwatch_alerts once the transaction commits; the
-- process serving the dashboard LISTENs and reads the rows. One notification per statement
-- (ids comma-separated, chunked under the 8000-byte payload limit), not per row: alerts_apply
-- updates a batch of running episodes in one statement. Transition tables need one trigger per
-- event.

CREATE FUNCTION alerts_notify_live() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    chunk text;
BEGIN
    FOR chunk IN
        SELECT string_agg(id::text, ',')
        FROM (SELECT id, (row_number() OVER (ORDER BY id) - 1) / 400 AS part
              FROM (SELECT DISTINCT id FROM changed) d) numbered
        GROUP BY part
    LOOP
        PERFORM pg_notify('fleetwatch_alerts', chunk);
    END LOOP;
    RETURN NULL;
END
$$;

CREATE TRIGGER alerts_live_insert AFTER INSERT ON alerts
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION alerts_notify_live();
CREATE TRIGGER alerts_live_update AFTER UPDATE ON alerts
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION alerts_notify_live();
