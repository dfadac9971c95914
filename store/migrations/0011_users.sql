-- FleetWatch schema 11: the dashboard's users and their sessions.
--
-- Roles: admin (everything, the unassigned pool included), supervisor (a transport authority or
-- the traffic police: every company for now; an assigned area comes later), dispatcher (one
-- company: company_id is required). Passwords are argon2id hashes (PHC strings); there is no
-- default user or password. A session row holds the SHA-256 of the cookie's token, never the
-- token itself, and the CSRF token the session's state-changing requests must echo.

CREATE TABLE users (
    id             serial PRIMARY KEY,
    username       text NOT NULL UNIQUE CHECK (username ~ '^[A-Za-z0-9_.@-]{1,64}$'),
    role           text NOT NULL CHECK (role IN ('admin', 'supervisor', 'dispatcher')),
    company_id     integer REFERENCES companies (id),
    password_hash  text NOT NULL,
    disabled       boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (role <> 'dispatcher' OR company_id IS NOT NULL)
);

CREATE TABLE sessions (
    token_sha256  bytea PRIMARY KEY,
    user_id       integer NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    csrf          text NOT NULL,
    address       text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_expiry ON sessions (expires_at);
