-- FleetWatch schema 8: the command gateway (alerts/gateway.py) across worker processes.
--
-- terminal_holders: which process holds each connected terminal, so a command can be routed
-- to it (or refused at once as offline). A process registers its vehicles under its gateway
-- key; its LISTEN connection carries that key as application_name, which is how a sender
-- tells a live holder from the leftovers of a killed process.
--
-- commands: the mailbox of commands sent to a terminal held by another process. The sender
-- inserts the row and NOTIFYs the holder's channel in one statement; the holder claims it
-- (pending -> running, so it runs at most once), executes it and writes the answer, then
-- NOTIFYs the sender's channel. The row stays as the record of who asked what and what the
-- terminal answered.

CREATE TABLE terminal_holders (
    vehicle_id    integer PRIMARY KEY REFERENCES vehicles (id) ON DELETE CASCADE,
    worker        text NOT NULL,                     -- gateway key of the holding process
    connected_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX terminal_holders_worker ON terminal_holders (worker);

CREATE TABLE commands (
    id             uuid PRIMARY KEY,                 -- chosen by the sender
    vehicle_id     integer NOT NULL REFERENCES vehicles (id) ON DELETE CASCADE,
    worker         text NOT NULL,                    -- the process asked to execute it
    reply_channel  text NOT NULL,                    -- where the sender listens
    command        jsonb NOT NULL,                   -- alerts.commands.command_to_json
    requested_by   text,
    requested_at   timestamptz NOT NULL DEFAULT now(),
    deadline       timestamptz NOT NULL,
    status         text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'running', 'done')),
    result         text CHECK (result IN ('accepted', 'failed', 'unsupported', 'offline',
                                          'timeout', 'disconnected', 'invalid')),
    reply          jsonb,
    answered_at    timestamptz
);
CREATE INDEX commands_pending ON commands (worker) WHERE status = 'pending';
CREATE INDEX commands_requested ON commands (requested_at);

-- Pushes are recorded by platform command (the terminal end chooses the message id).
ALTER TABLE terminal_pushes ALTER COLUMN msg_id DROP NOT NULL;
ALTER TABLE terminal_pushes ADD COLUMN command text;
ALTER TABLE terminal_pushes DROP CONSTRAINT terminal_pushes_result_check;
ALTER TABLE terminal_pushes ADD CONSTRAINT terminal_pushes_result_check CHECK (result IN (
    'accepted', 'failed', 'unsupported', 'timeout', 'offline', 'disconnected', 'invalid'));
