-- FleetWatch schema 3: server-side geofences (geo.fences.Geofence). The geometry is WGS-84
-- lon/lat: a Point for a circle (radius in properties), a Polygon for a rectangle or polygon, a
-- LineString for a corridor (width in properties). properties holds the GeoJSON properties
-- (RFC 7946 Feature properties: kind, windows, applies_to, margins, ...), so a fence goes out
-- exactly as it came in. geofences_version changes with every change to the table: the rules
-- engine polls it to know when to rebuild its index.

CREATE TABLE geofences (
    id          serial PRIMARY KEY,                -- alert keys refer to it: kept across edits
    name        text NOT NULL UNIQUE,              -- what an import matches on
    kind        text NOT NULL CHECK (kind IN ('zone', 'forbidden', 'speed_limit', 'route')),
    shape       text NOT NULL CHECK (shape IN ('circle', 'rectangle', 'polygon', 'corridor')),
    geom        geometry(Geometry, 4326) NOT NULL,
    properties  jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (ST_IsValid(geom)),
    CHECK ((shape = 'circle') = (GeometryType(geom) = 'POINT')),
    CHECK ((shape = 'corridor') = (GeometryType(geom) = 'LINESTRING')),
    CHECK (shape NOT IN ('rectangle', 'polygon') OR GeometryType(geom) = 'POLYGON')
);
CREATE INDEX geofences_geom ON geofences USING gist (geom);

CREATE TABLE geofences_version (
    only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    version   bigint NOT NULL
);
INSERT INTO geofences_version VALUES (true, 0);

CREATE FUNCTION geofences_bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE geofences_version SET version = version + 1;
    RETURN NULL;
END
$$;
CREATE TRIGGER geofences_changed AFTER INSERT OR UPDATE OR DELETE ON geofences
    FOR EACH ROW EXECUTE FUNCTION geofences_bump();
CREATE TRIGGER geofences_truncated AFTER TRUNCATE ON geofences
    FOR EACH STATEMENT EXECUTE FUNCTION geofences_bump();
