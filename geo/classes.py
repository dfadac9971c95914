"""Vehicle classes: which supervision rules a vehicle falls under (the values of
``vehicles.class``, a PostgreSQL enum of the same names, checked by a test).

Defined here, in the bottom layer, because the geofences (``applies_to``), the rules, the store
and the CLI all name them.
"""

from __future__ import annotations

POLICE, SCHOOL_BUS, COACH, HEAVY_TRUCK, HAZMAT, OTHER = (
    "police", "school_bus", "coach", "heavy_truck", "hazmat", "other",
)  # fmt: skip
VEHICLE_CLASSES = (POLICE, SCHOOL_BUS, COACH, HEAVY_TRUCK, HAZMAT, OTHER)

__all__ = ["COACH", "HAZMAT", "HEAVY_TRUCK", "OTHER", "POLICE", "SCHOOL_BUS", "VEHICLE_CLASSES"]
