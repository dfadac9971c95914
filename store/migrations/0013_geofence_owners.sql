-- FleetWatch schema 13: geofences have an owner, and every change is announced.
--
-- company_id: the transport company that owns the fence (its dispatchers edit it, and it
-- concerns only that company's vehicles); NULL is a platform fence (a forbidden zone or a
-- school-gate hazard set by the authority), which only admins and supervisors edit and every
-- dispatcher sees. Who may see or change what is in the WHERE clauses of store/geofences.py.
--
-- geofences_bump() now also NOTIFYs fleetwatch_geofences (an empty payload: PostgreSQL folds
-- identical notifications of one transaction into one, so an import of 500 fences wakes each
-- listener once, at commit). The servers reload at once instead of at their next poll; the
-- poll stays, for notifications lost while a listener was reconnecting.

ALTER TABLE geofences ADD COLUMN company_id integer REFERENCES companies (id);
CREATE INDEX geofences_company ON geofences (company_id);

CREATE OR REPLACE FUNCTION geofences_bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE geofences_version SET version = version + 1;
    PERFORM pg_notify('fleetwatch_geofences', '');
    RETURN NULL;
END
$$;
