"""The WGS-84 → GCJ-02 display shift (geo/geodesy.py; the page has the same formula in
maps/static/gcj02.js) at published reference points."""

from __future__ import annotations

import pytest

from geo.geodesy import distance_m, gcj02_to_wgs84, in_china, wgs84_to_gcj02

#: (WGS-84, GCJ-02) as (lon, lat): the reference vectors published with the widely used
#: eviltransform implementations (Shanghai, Shenzhen, Beijing).
REFERENCE = [
    ((121.5272106, 31.1774276), (121.531541859215, 31.17530398364597)),
    ((113.912316, 22.543847), (113.9171764808363, 22.540796131694766)),
    ((116.377817, 39.911954), (116.38404722455657, 39.91334545536069)),
]


@pytest.mark.parametrize(("wgs", "gcj"), REFERENCE)
def test_reference_points(wgs: tuple[float, float], gcj: tuple[float, float]) -> None:
    assert wgs84_to_gcj02(*wgs) == pytest.approx(gcj, abs=1e-9)
    assert gcj02_to_wgs84(*gcj) == pytest.approx(wgs, abs=1e-8)  # under a millimetre
    shift = distance_m(*wgs, *gcj)
    assert 100 < shift < 700  # the few hundred metres a fix lands off on such tiles


def test_outside_china_is_unchanged() -> None:
    for point in [(-104.9903, 39.7392), (153.0251, -27.4698), (2.35, 48.85), (139.69, 35.69)]:
        assert not in_china(*point)
        assert wgs84_to_gcj02(*point) == point
        assert gcj02_to_wgs84(*point) == point
    assert in_china(116.4, 39.9)


def test_round_trip_across_china() -> None:
    for lon in range(75, 135, 7):
        for lat in range(18, 54, 5):
            there = wgs84_to_gcj02(lon + 0.123, lat + 0.456)
            back = gcj02_to_wgs84(*there)
            assert back == pytest.approx((lon + 0.123, lat + 0.456), abs=1e-8)
