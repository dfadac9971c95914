-- FleetWatch schema 12: a supervisor's second review of an alert's handling, and supervisors
-- limited to an area.
--
-- Review (复核): after a dispatcher handled or closed an alert, a supervisor (or an admin)
-- checks how it was handled and records a verdict (approved / rejected), a note, who and when.
-- It is not a status: the alert stays handled or closed (closed stays final), the review is
-- recorded once, on the row and in the audit trail (action 'review').
--
-- Areas: a supervisor may be given an area (a district, a road section: any polygons, WGS-84);
-- such a supervisor sees only the vehicles whose last position is inside it (store/users.py
-- scope_sql). Only supervisors have one.

ALTER TABLE alerts
    ADD COLUMN reviewed_by     text,
    ADD COLUMN reviewed_at     timestamptz,
    ADD COLUMN review_verdict  text CHECK (review_verdict IN ('approved', 'rejected')),
    ADD COLUMN review_note     text,
    ADD CONSTRAINT alerts_review_complete CHECK (
        (reviewed_by IS NULL) = (reviewed_at IS NULL)
        AND (reviewed_by IS NULL) = (review_verdict IS NULL)
    ),
    ADD CONSTRAINT alerts_review_after_handling
        CHECK (reviewed_by IS NULL OR status IN ('handled', 'closed'));

ALTER TABLE users
    ADD COLUMN area       geometry(MultiPolygon, 4326),
    ADD COLUMN area_name  text,
    ADD CONSTRAINT users_area_supervisor CHECK (area IS NULL OR role = 'supervisor'),
    ADD CONSTRAINT users_area_valid CHECK (area IS NULL OR ST_IsValid(area));
