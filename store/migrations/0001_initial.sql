-- FleetWatch schema 1: tenants, vehicles, drivers, terminal sessions, the position history
-- (partitioned by day on fix time), the last position per vehicle, and media.
-- Units: WGS-84 lon/lat (SRID 4326), UTC timestamptz, km/h, metres.

CREATE EXTENSION IF NOT EXISTS postgis;

CREATE TABLE companies (
    id          serial PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TYPE vehicle_class AS ENUM ('police', 'school_bus', 'coach', 'heavy_truck', 'hazmat', 'other');

-- A vehicle and its terminal. Vehicles provisioned automatically from a registration (policy
-- "open") have provisioned = false and no company: the unassigned pool only admins see.
CREATE TABLE vehicles (
    id                serial PRIMARY KEY,
    plate             text,
    plate_color       smallint NOT NULL DEFAULT 0,     -- JT/T 415: 1 blue, 2 yellow, ... 0 unplated
    vin               text,
    class             vehicle_class NOT NULL DEFAULT 'other',
    company_id        integer REFERENCES companies (id),
    phone             text UNIQUE,                     -- terminal phone, leading zeros stripped
    protocol_version  smallint,                        -- last seen (2011/2013/2019)
    forced_version    smallint,                        -- override for terminals that lie
    clock_tz          text,                            -- terminal clock zone, NULL = Beijing
    auth_code         text,
    manufacturer      text,
    terminal_model    text,
    terminal_id       text,
    province          integer,
    city              integer,
    provisioned       boolean NOT NULL DEFAULT true,
    overrides         jsonb NOT NULL DEFAULT '{}',     -- per-vehicle rule overrides
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX vehicles_plate ON vehicles (plate, plate_color) WHERE plate IS NOT NULL;
CREATE INDEX vehicles_company ON vehicles (company_id);

CREATE TABLE drivers (
    id           serial PRIMARY KEY,
    company_id   integer REFERENCES companies (id),
    name         text NOT NULL,
    cert_code    text UNIQUE,                          -- qualification certificate (IC card)
    id_card      text,
    issuer       text,
    cert_expiry  date,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE terminal_sessions (
    id                bigserial PRIMARY KEY,
    vehicle_id        integer REFERENCES vehicles (id),
    phone             text NOT NULL,
    peer              text,
    protocol_version  smallint,
    connected_at      timestamptz NOT NULL DEFAULT now(),
    authenticated_at  timestamptz,
    disconnected_at   timestamptz,
    close_reason      text
);
CREATE INDEX terminal_sessions_vehicle ON terminal_sessions (vehicle_id, connected_at);

-- The track history. No GiST here (it would cut ingest 2-3x): spatial queries use
-- last_positions or a time window first. Partitions (one per day, UTC) are created ahead of
-- time by store.partitions; fixes outside them (terminals with unset clocks) land in the
-- default partition, so nothing a terminal was told is saved is ever refused.
CREATE TABLE positions (
    vehicle_id     integer NOT NULL,
    fix_time       timestamptz NOT NULL,
    received_time  timestamptz NOT NULL,
    geom           geometry(Point, 4326) NOT NULL,
    speed_kmh      real NOT NULL DEFAULT 0,
    heading        smallint NOT NULL DEFAULT 0,
    altitude_m     integer NOT NULL DEFAULT 0,
    alarm          bigint NOT NULL DEFAULT 0,          -- DWORD alarm word
    status         bigint NOT NULL DEFAULT 0,          -- DWORD status word
    valid          boolean NOT NULL DEFAULT true,
    serial         integer NOT NULL DEFAULT 0,         -- terminal frame serial
    batch          boolean NOT NULL DEFAULT false,     -- from a 0x0704 batch upload
    late           boolean NOT NULL DEFAULT false,     -- behind the vehicle's newest fix
    source         text NOT NULL DEFAULT 'jt808',
    extras         jsonb
) PARTITION BY RANGE (fix_time);
-- Removes terminal retransmissions and serves track queries (vehicle, time range).
CREATE UNIQUE INDEX positions_dedupe ON positions (vehicle_id, fix_time, serial);
CREATE INDEX positions_fix_time ON positions USING brin (fix_time);
CREATE TABLE positions_default PARTITION OF positions DEFAULT;

CREATE TABLE last_positions (
    vehicle_id     integer PRIMARY KEY REFERENCES vehicles (id),
    fix_time       timestamptz NOT NULL,
    received_time  timestamptz NOT NULL,
    geom           geometry(Point, 4326) NOT NULL,
    speed_kmh      real NOT NULL DEFAULT 0,
    heading        smallint NOT NULL DEFAULT 0,
    altitude_m     integer NOT NULL DEFAULT 0,
    alarm          bigint NOT NULL DEFAULT 0,
    status         bigint NOT NULL DEFAULT 0,
    valid          boolean NOT NULL DEFAULT true,
    extras         jsonb
);
CREATE INDEX last_positions_geom ON last_positions USING gist (geom);

CREATE TABLE media (
    id            bigserial PRIMARY KEY,
    vehicle_id    integer NOT NULL REFERENCES vehicles (id),
    media_id      bigint NOT NULL,                     -- the terminal's id
    media_type    smallint NOT NULL,                   -- 0 image, 1 audio, 2 video
    media_format  smallint NOT NULL,                   -- 0 JPEG, 1 TIF, 2 MP3, 3 WAV, 4 WMV
    event         smallint NOT NULL,
    channel       smallint NOT NULL,
    fix_time      timestamptz,
    geom          geometry(Point, 4326),
    path          text NOT NULL,                       -- relative to the data directory
    size          integer NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (vehicle_id, media_id)
);
