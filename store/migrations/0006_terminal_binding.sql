-- A vehicle is bound to the terminal that registered it (manufacturer, model, terminal id):
-- another terminal registering with its phone or plate is refused until an operator runs
-- `fleetwatch vehicles unbind`. NULL: no terminal bound, the next registration binds one.
ALTER TABLE vehicles ADD COLUMN bound_at timestamptz;
-- Terminals registered before this migration are bound as they are now.
UPDATE vehicles SET bound_at = updated_at WHERE auth_code IS NOT NULL;
