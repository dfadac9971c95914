"""NMEA 0183: sentence parsing, epoch assembly, 0x0900 GNSS detail, the TCP server and the
file import, the last two over real sockets and real PostGIS."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import io
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from twisted.internet import reactor
from twisted.logger import formatEvent, globalLogPublisher

from fleetwatch import import_nmea
from fleetwatch.import_nmea import Progress, import_file, read_lines
from geo.position import SOURCE_IMPORT, SOURCE_NMEA
from ingest.metrics import Metrics
from ingest.nmea import (
    Gga,
    Gns,
    Gsa,
    NmeaError,
    NmeaTrack,
    Rmc,
    checksum,
    gnss_detail,
    parse_sentence,
    with_checksum,
)
from ingest.nmea_server import (
    IdentificationError,
    NmeaFactory,
    NmeaService,
    find_vehicle_id,
    parse_identification,
)
from protocols.jt808.terminal import Transparent
from store.spool import Spool
from store.writer import PositionWriter
from tests.aio import aio_test, deferred

# Real receiver output: u-blox's protocol manual, SiRF's NMEA reference, a multi-constellation
# module's capture near Shenzhen (2025-04-28, GP/GA/GB/GN talkers), a BeiDou module in Chengdu
# (GB talker), and the classic Munich sample.
MUNICH_RMC = "$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A"
MUNICH_GGA = "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47"
UBLOX_RMC = "$GPRMC,083559.00,A,4717.11437,N,00833.91522,E,0.004,77.52,091202,,,A*57"
UBLOX_GSA = "$GPGSA,A,3,23,29,07,08,09,18,26,28,,,,,1.94,1.18,1.54*0D"
SIRF_RMC = "$GPRMC,161229.487,A,3723.2475,N,12158.3416,W,0.13,309.62,120598,,*10"
SIRF_GGA = "$GPGGA,002153.000,3342.6618,N,11751.3858,W,1,10,1.2,27.0,M,-34.2,M,,0000*5E"
BUENOS_AIRES_RMC = "$GPRMC,153032,A,3402.6780,S,05823.1230,W,018.5,250.7,250601,006.8,W*6F"
PRETORIA_GGA = "$GPGGA,184353.07,1929.045,S,02410.506,E,1,04,2.6,100.00,M,-33.9,M,,0000*6D"
CHENGDU_RMC = "$GBRMC,055525.000,A,3044.368753,N,10357.548051,E,0.00,000.00,100625,,,A,C*13"
CHENGDU_GGA = "$GBGGA,055525.000,3044.368753,N,10357.548051,E,1,04,2.40,129.3,M,-32.3,M,,*5A"
CHENGDU_GSA = "$GBGSA,A,2,34,21,07,44,,,,,,,,,2.59,2.40,1.00,4*03"
BEIDOU_RMC = "$BDRMC,025551.000,A,3112.34567,N,12134.56789,E,0.10,15.0,300426,,,A,V*07"
SEARCHING_RMC = "$GBRMC,,V,,,,,,,,,,N,V*3B"
SEARCHING_GGA = "$GBGGA,,,,,,0,00,99.99,,,,,,*5A"
SHENZHEN = """\
$GPRMC,071634.00,A,2239.372067,N,11402.653048,E,,,280425,,,A,V*2D
$GARMC,071634.00,A,2239.372067,N,11402.653048,E,,,280425,,,A,V*3C
$GBRMC,071634.00,A,2239.372067,N,11402.653048,E,,,280425,,,A,V*3F
$GNRMC,071634.00,A,2239.372067,N,11402.653048,E,,,280425,,,A,V*33
$GNGNS,071634.00,2239.372067,N,11402.653048,E,NAANNN,02,500.0,,,,,V*15
$GPGGA,071634.00,2239.372067,N,11402.653048,E,1,00,500.0,,,,,,*59
$GAGGA,071634.00,2239.372067,N,11402.653048,E,1,01,500.0,,,,,,*49
$GBGGA,071634.00,2239.372067,N,11402.653048,E,1,00,500.0,,,,,,*4B
$GNGGA,071634.00,2239.372067,N,11402.653048,E,1,02,500.0,,,,,,*45
$GPGSV,4,1,13,04,00,038,,05,33,240,,06,41,033,,09,25,058,,1*6F
$GLGSV,3,3,09,04,16,030,,1*41
""".splitlines()


# --------------------------------------------------------------------------- helpers


def _dm(value: float, width: int) -> str:
    degrees = int(abs(value))
    return f"{degrees:0{width}d}{(abs(value) - degrees) * 60:07.4f}"


def rmc(
    t: datetime,
    lat: float,
    lon: float,
    knots: float = 10.0,
    course: float = 90.0,
    status: str = "A",
    talker: str = "GP",
) -> str:
    return with_checksum(
        f"{talker}RMC,{t:%H%M%S}.00,{status},{_dm(lat, 2)},{'N' if lat >= 0 else 'S'},"
        f"{_dm(lon, 3)},{'E' if lon >= 0 else 'W'},{knots:.1f},{course:.1f},{t:%d%m%y},,,A"
    )


def gga(
    t: datetime, lat: float, lon: float, altitude: float = 50.0, sats: int = 9, talker: str = "GP"
) -> str:
    return with_checksum(
        f"{talker}GGA,{t:%H%M%S}.00,{_dm(lat, 2)},{'N' if lat >= 0 else 'S'},"
        f"{_dm(lon, 3)},{'E' if lon >= 0 else 'W'},1,{sats:02d},0.8,{altitude:.1f},M,-3.2,M,,"
    )


T0 = datetime(2026, 3, 1, 8, 0, 0, tzinfo=UTC)


def track_lines(n: int, start: datetime = T0, lat: float = 31.2, lon: float = 121.5) -> list[str]:
    """n epochs of RMC + GGA, one second apart (u-blox order), 1e-4 degrees apart."""
    out = []
    for i in range(n):
        t = start + timedelta(seconds=i)
        out += [rmc(t, lat + i * 1e-4, lon), gga(t, lat + i * 1e-4, lon, altitude=40 + i)]
    return out


def feed_all(track: NmeaTrack, lines: list[str]) -> list[Any]:
    out = []
    for line in lines:
        out += track.feed(line)
    return out + track.flush()


# --------------------------------------------------------------------------- sentences


@pytest.mark.parametrize(
    ("line", "talker", "fix_time", "lat", "lon", "speed_kmh", "course"),
    [
        (MUNICH_RMC, "GP", datetime(1994, 3, 23, 12, 35, 19, tzinfo=UTC),
         48.1173, 11.516667, 22.4 * 1.852, 84.4),
        (UBLOX_RMC, "GP", datetime(2002, 12, 9, 8, 35, 59, tzinfo=UTC),
         47.285240, 8.565254, 0.004 * 1.852, 77.52),
        (SHENZHEN[3], "GN", datetime(2025, 4, 28, 7, 16, 34, tzinfo=UTC),
         22.656201, 114.044217, None, None),
        (CHENGDU_RMC, "GB", datetime(2025, 6, 10, 5, 55, 25, tzinfo=UTC),
         30.739479, 103.959134, 0.0, 0.0),
        (BEIDOU_RMC, "BD", datetime(2026, 4, 30, 2, 55, 51, tzinfo=UTC),
         31.205761, 121.576131, 0.1 * 1.852, 15.0),
        (BUENOS_AIRES_RMC, "GP", datetime(2001, 6, 25, 15, 30, 32, tzinfo=UTC),
         -34.044633, -58.385383, 18.5 * 1.852, 250.7),
        (SIRF_RMC, "GP", datetime(1998, 5, 12, 16, 12, 29, 487000, tzinfo=UTC),
         37.387458, -121.972360, 0.13 * 1.852, 309.62),
    ],
)  # fmt: skip
def test_rmc_from_real_receivers(
    line: str,
    talker: str,
    fix_time: datetime,
    lat: float,
    lon: float,
    speed_kmh: float | None,
    course: float | None,
) -> None:
    sentence = parse_sentence(line)
    assert isinstance(sentence, Rmc)
    assert sentence.talker == talker
    assert sentence.valid is True
    assert sentence.date is not None and sentence.time is not None
    assert datetime.combine(sentence.date, sentence.time, UTC) == fix_time
    assert (sentence.lat, sentence.lon) == pytest.approx((lat, lon), abs=1e-6)
    assert sentence.speed_kmh == (None if speed_kmh is None else pytest.approx(speed_kmh))
    assert sentence.course == course
    # The same line through the assembler: one fix, UTC, as reported.
    (position,) = feed_all(NmeaTrack(vehicle_id=5), [line])
    assert position.fix_time == fix_time
    assert (position.lat, position.lon) == pytest.approx((lat, lon), abs=1e-6)
    assert position.vehicle_id == 5 and position.source == SOURCE_NMEA and position.valid


@pytest.mark.parametrize(
    ("line", "lat", "lon", "quality", "sats", "hdop", "altitude"),
    [
        (MUNICH_GGA, 48.1173, 11.516667, 1, 8, 0.9, 545.4),
        (SIRF_GGA, 33.711030, -117.856430, 1, 10, 1.2, 27.0),
        (PRETORIA_GGA, -19.484083, 24.175100, 1, 4, 2.6, 100.0),
        (CHENGDU_GGA, 30.739479, 103.959134, 1, 4, 2.40, 129.3),
        (SHENZHEN[8], 22.656201, 114.044217, 1, 2, 500.0, None),
        (SEARCHING_GGA, None, None, 0, 0, 99.99, None),
    ],
)
def test_gga(
    line: str,
    lat: float | None,
    lon: float | None,
    quality: int,
    sats: int,
    hdop: float,
    altitude: float | None,
) -> None:
    sentence = parse_sentence(line)
    assert isinstance(sentence, Gga)
    if lat is None:
        assert sentence.lat is None and sentence.lon is None
    else:
        assert (sentence.lat, sentence.lon) == pytest.approx((lat, lon), abs=1e-6)
    assert (sentence.quality, sentence.satellites, sentence.hdop, sentence.altitude_m) == (
        quality, sats, hdop, altitude)  # fmt: skip


def test_gns_gsa_and_ignored_sentences() -> None:
    gns = parse_sentence(SHENZHEN[4])
    assert isinstance(gns, Gns)
    assert (gns.talker, gns.mode, gns.satellites, gns.hdop) == ("GN", "NAANNN", 2, 500.0)
    gsa = parse_sentence(UBLOX_GSA)
    assert isinstance(gsa, Gsa)
    assert (gsa.fix_type, gsa.pdop, gsa.hdop, gsa.vdop) == (3, 1.94, 1.18, 1.54)
    # Valid sentences the platform does not use: satellites in view, proprietary, unknown type.
    for line in (SHENZHEN[9], with_checksum("PUBX,00,081350.00"), with_checksum("GPXYZ,1,2")):
        assert parse_sentence(line) is None


@pytest.mark.parametrize(
    ("line", "kind", "reason"),
    [
        (MUNICH_RMC[:-2] + "6B", "checksum", "sent *6B, computed *6A"),
        (MUNICH_RMC[:-3], "checksum", "missing"),
        (MUNICH_RMC[:-2] + "Z1", "checksum", "malformed (*Z1)"),
        (MUNICH_RMC[1:], "syntax", "does not start with '$'"),
        ("$" + "GPRMC,1,A*" + "00", "checksum", "computed"),
        (with_checksum("GPRMC,123519,A,4807.038,N,01131.000,E,fast,084.4,230394,,"), "field",
         "spd_over_grnd 'fast' is not a number"),
        (with_checksum("GPRMC,123519,X,4807.038,N,01131.000,E,1,084.4,230394,,"), "field",
         "status 'X' is not A or V"),
        (with_checksum("GPRMC,123519,A,4807.038,Q,01131.000,E,1,084.4,230394,,"), "field",
         "latitude hemisphere 'Q'"),
        (with_checksum("GPRMC,123519,A,4867.038,N,01131.000,E,1,084.4,230394,,"), "field",
         "latitude '4867.038'N is out of range"),
        (with_checksum("GPRMC,256019,A,4807.038,N,01131.000,E,1,084.4,230394,,"), "field",
         "time '256019' is out of range"),
        (with_checksum("GPRMC,123519,A,4807.038,N,01131.000,E,1,084.4,310294,,"), "field",
         "date '310294' does not exist"),
        (with_checksum("GPGGA,123519,4807.038,N,,,1,08,0.9,545.4,M,46.9,M,,"), "field",
         "only one of latitude and longitude"),
        ("$GPRMC,123519,A,4807.038,N\x00\x01*00", "checksum", "sent *00"),
        ("$\u00e9GPRMC*00", "syntax", "non-ASCII"),
        ("$GP*" + f"{checksum('GP'):02X}", "syntax", "not an NMEA sentence"),
    ],
)  # fmt: skip
def test_bad_sentences_say_why(line: str, kind: str, reason: str) -> None:
    with pytest.raises(NmeaError) as info:
        parse_sentence(line)
    assert info.value.kind == kind
    assert reason in str(info.value)
    assert info.value.line == line


def test_bad_line_leaves_the_track_usable() -> None:
    track = NmeaTrack(1)
    t = T0
    assert track.feed(rmc(t, 31.0, 121.0)) != []
    with pytest.raises(NmeaError):
        track.feed(rmc(t + timedelta(seconds=1), 31.0, 121.0)[:-1] + "0")
    assert [p.fix_time for p in feed_all(track, [rmc(t + timedelta(seconds=2), 31, 121)])] == [
        t + timedelta(seconds=2)
    ]


# --------------------------------------------------------------------------- assembly


def test_status_v_without_position_gives_no_fix() -> None:
    track = NmeaTrack(1)
    assert feed_all(track, [SEARCHING_RMC, SEARCHING_GGA]) == []
    assert track.stats.no_fix == 1
    sentence = parse_sentence(SEARCHING_RMC)
    assert isinstance(sentence, Rmc)
    assert (sentence.valid, sentence.lat, sentence.date, sentence.mode) == (False, None, None, "N")


def test_status_v_with_position_is_stored_invalid() -> None:
    (position,) = feed_all(NmeaTrack(1), [rmc(T0, 31.0, 121.0, status="V")])
    assert position.valid is False
    assert (position.lat, position.lon) == pytest.approx((31.0, 121.0))


@pytest.mark.parametrize("order", ["rmc-first", "gga-first"])
def test_gga_and_rmc_of_one_epoch_make_one_position(order: str) -> None:
    lines = []
    for i in range(3):
        t = T0 + timedelta(seconds=i)
        pair = [rmc(t, 31.2 + i * 1e-4, 121.5, knots=20, course=181.6), gga(t, 31.2, 121.5, 40 + i)]
        lines += pair if order == "rmc-first" else pair[::-1]
        lines.append(UBLOX_GSA if order == "rmc-first" else SHENZHEN[9])  # GSA / GSV
    positions = feed_all(NmeaTrack(3), lines)
    assert [p.fix_time for p in positions] == [T0 + timedelta(seconds=i) for i in range(3)]
    assert [p.lat for p in positions] == pytest.approx([31.2, 31.2001, 31.2002])
    assert all(p.speed_kmh == pytest.approx(37.04) and p.heading == 182 for p in positions)
    # u-blox order: the very first RMC cannot know a GGA and a GSA follow, so it goes alone;
    # from then on the assembler waits for them. SiRF order: GGA is there before the RMC.
    merged = positions[1:] if order == "rmc-first" else positions
    for i, p in enumerate(merged, len(positions) - len(merged)):
        assert p.altitude_m == 40 + i
        assert p.extras["fix_quality"] == 1
        assert p.extras["satellites"] == 9
        assert p.extras["hdop"] == 0.8
        if order == "rmc-first":
            assert (p.extras["fix_type"], p.extras["pdop"], p.extras["vdop"]) == (3, 1.94, 1.54)
    if order == "rmc-first":
        assert positions[0].altitude_m == 0 and "satellites" not in positions[0].extras


def test_epoch_is_emitted_as_soon_as_it_is_complete() -> None:
    track = NmeaTrack(1)
    lines = track_lines(3)
    emitted = [len(track.feed(line)) for line in lines]
    # RMC 0 alone (nothing known yet), GGA 0 late, then each epoch on its GGA.
    assert emitted == [1, 0, 0, 1, 0, 1]
    assert not track.pending


def test_multi_constellation_receiver_prefers_the_combined_solution() -> None:
    second = [
        with_checksum(line[1:].split("*")[0].replace("071634.00", "071635.00")) for line in SHENZHEN
    ]
    positions = feed_all(NmeaTrack(1), SHENZHEN + second)
    assert [p.fix_time.second for p in positions] == [34, 35]
    # Second epoch: every talker's sentences awaited, the GN ones used.
    assert positions[1].extras == {"mode": "A", "fix_quality": 1, "satellites": 2,
                                   "hdop": 500.0, "gns_mode": "NAANNN"}  # fmt: skip


def test_day_rollover_at_midnight_utc() -> None:
    t = [datetime(2024, 12, 31, 23, 59, 58, tzinfo=UTC) + timedelta(seconds=i) for i in range(4)]
    lines = [
        gga(t[0], 31.0, 121.0, altitude=10),  # SiRF order: GGA before RMC
        rmc(t[0], 31.0, 121.0),
        gga(t[1], 31.0, 121.0, altitude=11),
        rmc(t[1], 31.0, 121.0),
        # Past midnight, the RMC is lost (a corrupted line): GGA alone, its date inferred.
        gga(t[2], 31.0, 121.0, altitude=22),
        rmc(t[2], 31.0, 121.0)[:-2] + "00",
        gga(t[3], 31.0, 121.0, altitude=33),
        rmc(t[3], 31.0, 121.0),  # dated 010125 by the receiver
    ]
    track = NmeaTrack(1)
    positions = []
    for line in lines:
        with contextlib.suppress(NmeaError):
            positions += track.feed(line)
    positions += track.flush()
    assert [(p.fix_time, p.altitude_m) for p in positions] == [
        (datetime(2024, 12, 31, 23, 59, 58, tzinfo=UTC), 10),
        (datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC), 11),
        (datetime(2025, 1, 1, 0, 0, 0, tzinfo=UTC), 22),
        (datetime(2025, 1, 1, 0, 0, 1, tzinfo=UTC), 33),
    ]
    assert [p.extras.get("date_inferred", False) for p in positions] == [False, False, True, False]
    assert positions[2].speed_kmh == 0.0  # no RMC: no speed
    assert positions[3].speed_kmh == pytest.approx(18.52)


def test_gga_only_epoch_before_midnight_after_a_fix_past_it() -> None:
    """Out of order across midnight: the inferred date goes back a day, not forward."""
    track = NmeaTrack(1)
    after = datetime(2025, 1, 1, 0, 0, 5, tzinfo=UTC)
    positions = feed_all(track, [rmc(after, 31, 121), gga(after - timedelta(seconds=10), 31, 121)])
    assert [p.fix_time for p in positions] == [after, after - timedelta(seconds=10)]


def test_gga_only_before_any_date_is_dropped_and_counted() -> None:
    track = NmeaTrack(1)
    assert feed_all(track, [gga(T0, 31, 121), gga(T0 + timedelta(seconds=1), 31, 121)]) == []
    assert track.stats.undated == 2


def test_repeated_lines_make_no_second_fix() -> None:
    track = NmeaTrack(1)
    line = rmc(T0, 31, 121)
    assert len(feed_all(track, [line, line, line])) == 1
    assert track.stats.repeated == 2


# --------------------------------------------------------------------------- 0x0900


def test_gnss_detail_of_a_0900_blob() -> None:
    blob = "\r\n".join([CHENGDU_GGA, CHENGDU_RMC, CHENGDU_GSA, "$GBGSV,garbage*00"]) + "\r\n"
    body = Transparent(data_type=Transparent.GNSS_DETAIL, data=blob.encode("ascii"))
    assert body.nmea is not None
    detail = gnss_detail(body.nmea)
    errors = detail.pop("errors")
    assert detail == pytest.approx({
        "fix_time": "2025-06-10T05:55:25+00:00", "lat": 30.7394792, "lon": 103.9591342,
        "valid": True, "speed_kmh": 0.0, "heading": 0.0, "mode": "A", "fix_quality": 1,
        "satellites": 4, "hdop": 2.4, "altitude_m": 129.3, "fix_type": 2, "pdop": 2.59,
        "vdop": 1.0, "sentences": 3,
    })  # fmt: skip
    assert len(errors) == 1 and errors[0].startswith("checksum: sent *00")
    json.dumps(detail)  # ready for extras


def test_gnss_detail_run_together_and_without_rmc() -> None:
    blob = f"\x00{PRETORIA_GGA}{SEARCHING_RMC}\x00\x00"  # no separators, NUL padding
    detail = gnss_detail(blob)
    assert detail["lat"] == pytest.approx(-19.484083)
    assert (detail["fix_quality"], detail["satellites"], detail["hdop"]) == (1, 4, 2.6)
    assert detail["valid"] is False  # the RMC (no time, status V) says so
    assert detail["sentences"] == 2
    assert gnss_detail(PRETORIA_GGA)["time"] == "18:43:53.070000"
    assert gnss_detail("") == {"sentences": 0}


# --------------------------------------------------------------------------- identification


@pytest.mark.parametrize(
    ("line", "ident"),
    [
        (with_checksum("PFWID,013912345678"), "013912345678"),
        (with_checksum("PFWID,京A12345"), "京A12345"),
        ("#ID 京A12345\r", "京A12345"),
        ("#id   13912345678 ", "13912345678"),
        (MUNICH_RMC, None),
        ("#IDENT 1", None),
    ],
)
def test_identification_lines(line: str, ident: str | None) -> None:
    assert parse_identification(line) == ident


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("$PFWID,13912345678*00", "checksum: sent *00"),
        ("$PFWID,13912345678", "needs a *hh checksum"),
        ("#ID   ", "no vehicle id"),
        ("#ID " + "9" * 40, "is not a phone or plate"),
        ("#ID a\x07b", "is not a phone or plate"),
    ],
)
def test_bad_identification_lines(line: str, reason: str) -> None:
    with pytest.raises(IdentificationError, match=reason.replace("*", r"\*")):
        parse_identification(line)


# --------------------------------------------------------------------------- server


async def _vehicle(conn: asyncpg.Connection | asyncpg.Pool, plate: str, phone: str,
                   color: int = 2) -> int:  # fmt: skip
    return await conn.fetchval(
        "INSERT INTO vehicles (plate, plate_color, phone) VALUES ($1, $2, $3) RETURNING id",
        plate, color, phone,
    )  # fmt: skip


async def _positions(pool: asyncpg.Pool | asyncpg.Connection, vehicle_id: int) -> list[Any]:
    return await pool.fetch(
        """SELECT fix_time, ST_X(geom) AS lon, ST_Y(geom) AS lat, speed_kmh, heading,
                  altitude_m, valid, serial, source, extras, late
           FROM positions WHERE vehicle_id = $1 ORDER BY fix_time""",
        vehicle_id,
    )


async def _wait_rows(pool: asyncpg.Pool, vehicle_id: int, count: int) -> list[Any]:
    for _ in range(200):
        rows = await _positions(pool, vehicle_id)
        if len(rows) >= count:
            return rows
        await asyncio.sleep(0.025)
    return await _positions(pool, vehicle_id)


@dataclass
class Server:
    port: int
    pool: asyncpg.Pool
    writer: PositionWriter
    service: NmeaService
    metrics: Metrics


@contextlib.asynccontextmanager
async def running_server(db_url: str, workdir: Path, **options: Any) -> AsyncIterator[Server]:
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=4)
    writer = PositionWriter(lambda: asyncpg.connect(db_url), Spool(workdir / "spool"),
                            max_age=0.02)  # fmt: skip
    metrics = Metrics()
    service = NmeaService(lambda ident: find_vehicle_id(pool, ident), writer.submit, metrics,
                          **options)  # fmt: skip
    writer.on_pressure = service.set_pressure
    writer.start()
    port = reactor.listenTCP(0, NmeaFactory(service), interface="127.0.0.1")  # type: ignore[attr-defined]
    try:
        yield Server(port.getHost().port, pool, writer, service, metrics)
    finally:
        await deferred(port.stopListening())
        for conn in list(service.connections):
            conn.transport.abortConnection()
        await writer.close()
        await pool.close()


@contextlib.contextmanager
def captured_log() -> Iterator[list[str]]:
    messages: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "ingest.nmea_server":
            messages.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        yield messages
    finally:
        globalLogPublisher.removeObserver(observe)


async def _session(port: int, lines: list[str | bytes], linger: float = 0.0) -> bytes:
    """Send lines, close our side, return everything the server wrote until it closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for line in lines:
        writer.write(line if isinstance(line, bytes) else line.encode() + b"\r\n")
    await writer.drain()
    await asyncio.sleep(linger)
    writer.write_eof()
    received = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return received


@aio_test
async def test_server_stores_one_row_per_epoch(db_url: str, short_tmp: Path) -> None:
    async with running_server(db_url, short_tmp) as server:
        vehicle = await _vehicle(server.pool, "京A12345", "13912345678")
        lines: list[str | bytes] = [with_checksum("PFWID,013912345678")]  # zeros do not matter
        lines += track_lines(5)
        # The last epoch: RMC alone, so it waits for a GGA and goes out when the unit hangs up.
        lines.append(rmc(T0 + timedelta(seconds=5), 31.2005, 121.5))
        lines.insert(4, MUNICH_RMC[:-2] + "00")  # bad checksum
        lines.insert(6, "hello")  # not a sentence
        lines.insert(8, b"$GPGSV," + b"9" * 3000 + b"\r\n")  # too long
        lines.insert(9, SHENZHEN[9])  # valid but unused
        with captured_log() as messages:
            written = await _session(server.port, lines, linger=0.3)
            rows = await _wait_rows(server.pool, vehicle, 6)
        assert written == b""  # NMEA has no acks: nothing is ever sent back
        assert len(rows) == 6
        assert [r["fix_time"] for r in rows] == [T0 + timedelta(seconds=i) for i in range(6)]
        assert [r["lon"] for r in rows] == pytest.approx([121.5] * 6, abs=1e-6)
        assert [r["lat"] for r in rows] == pytest.approx([31.2 + i * 1e-4 for i in range(6)])
        assert all(r["source"] == "nmea" and r["serial"] == 0 and r["valid"] for r in rows)
        assert rows[0]["speed_kmh"] == pytest.approx(18.52)
        assert rows[0]["altitude_m"] == 0  # the first RMC goes out before its GGA is known
        assert [r["altitude_m"] for r in rows[1:]] == [41, 42, 43, 44, 0]
        assert json.loads(rows[4]["extras"])["satellites"] == 9
        m = server.metrics
        assert m.value("fleetwatch_nmea_bad_lines_total", kind="checksum") == 1
        assert m.value("fleetwatch_nmea_bad_lines_total", kind="syntax") == 1
        assert m.value("fleetwatch_nmea_bad_lines_total", kind="too_long") == 1
        assert m.value("fleetwatch_nmea_positions_total", outcome="db") == 6
        assert m.value("fleetwatch_nmea_lines_total") == 16
        bad = [msg for msg in messages if msg.startswith("bad NMEA line")]
        assert len(bad) == 3
        assert "checksum: sent *00, computed *6A: '$GPRMC,123519" in bad[0]
        assert "'hello'" in bad[1]
        assert "longer than 1024 bytes" in bad[2]
        assert any("is vehicle" in msg and "013912345678" in msg for msg in messages)
        assert server.service.sessions == {}  # the connection is gone, and unbound


@aio_test
async def test_server_identifies_by_plate(db_url: str, short_tmp: Path) -> None:
    async with running_server(db_url, short_tmp) as server:
        vehicle = await _vehicle(server.pool, "京A12345", "13912345678")
        await _session(server.port, ["#ID 京a 12345", *track_lines(3)])
        assert len(await _wait_rows(server.pool, vehicle, 3)) == 3


@pytest.mark.parametrize(
    ("first", "reason", "log_text"),
    [
        ("#ID 京Z99999", "unknown", "unknown vehicle id '京Z99999'"),
        (MUNICH_RMC, "no_id", "the first line must identify the vehicle"),
        ("$PFWID,13912345678*00", "bad_id", "checksum: sent *00"),
    ],
)
@aio_test
async def test_server_refuses_connections_it_cannot_place(
    db_url: str, short_tmp: Path, first: str, reason: str, log_text: str
) -> None:
    async with running_server(db_url, short_tmp) as server:
        await _vehicle(server.pool, "京A12345", "13912345678")
        with captured_log() as messages:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(first.encode() + b"\r\n" + "\r\n".join(track_lines(3)).encode() + b"\r\n")
            await writer.drain()
            # The server hangs up by itself (we never close our side).
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
        assert server.metrics.value("fleetwatch_nmea_refused_total", reason=reason) == 1
        refused = [m for m in messages if m.startswith("refused NMEA connection")]
        assert len(refused) == 1 and log_text in refused[0]
        await asyncio.sleep(0.1)
        assert await server.pool.fetchval("SELECT count(*) FROM positions") == 0


@aio_test
async def test_server_closes_a_silent_connection(db_url: str, short_tmp: Path) -> None:
    async with running_server(db_url, short_tmp, id_timeout=0.2) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        assert server.metrics.value("fleetwatch_nmea_refused_total", reason="no_id") == 1


@aio_test
async def test_server_emits_a_waiting_epoch_after_the_hold_time(
    db_url: str, short_tmp: Path
) -> None:
    async with running_server(db_url, short_tmp, hold=0.2) as server:
        vehicle = await _vehicle(server.pool, "京A12345", "13912345678")
        _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        t1 = T0 + timedelta(seconds=1)
        # Epoch 0 has RMC and GGA, so epoch 1 waits for its GGA, which never comes.
        lines = ["#ID 13912345678", *track_lines(1), rmc(t1, 31.3, 121.5)]
        writer.write("".join(line + "\r\n" for line in lines).encode())
        await writer.drain()
        rows = await _wait_rows(server.pool, vehicle, 2)  # the connection stays open
        assert [r["fix_time"] for r in rows] == [T0, t1]
        writer.close()


@aio_test
async def test_second_connection_replaces_the_first(db_url: str, short_tmp: Path) -> None:
    async with running_server(db_url, short_tmp) as server:
        await _vehicle(server.pool, "京A12345", "13912345678")
        reader1, writer1 = await asyncio.open_connection("127.0.0.1", server.port)
        writer1.write(b"#ID 13912345678\r\n")
        await writer1.drain()
        for _ in range(100):
            if server.service.sessions:
                break
            await asyncio.sleep(0.02)
        _reader2, writer2 = await asyncio.open_connection("127.0.0.1", server.port)
        writer2.write(b"#ID \xe4\xba\xacA12345\r\n")  # the same vehicle, by plate
        await writer2.drain()
        assert await asyncio.wait_for(reader1.read(), 5) == b""  # the old one is closed
        assert len(server.service.sessions) == 1
        writer1.close()
        writer2.close()


async def _identified(service: NmeaService, count: int = 1) -> None:
    for _ in range(200):
        if len(service.sessions) == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(service.sessions)} identified connections, not {count}")


@aio_test
async def test_writer_backpressure_stops_reading(db_url: str, short_tmp: Path) -> None:
    async with running_server(db_url, short_tmp) as server:
        vehicle = await _vehicle(server.pool, "京A12345", "13912345678")
        _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"#ID 13912345678\r\n")
        await _identified(server.service)
        server.service.set_pressure(True)
        writer.write("".join(line + "\r\n" for line in track_lines(3)).encode())
        await writer.drain()
        await asyncio.sleep(0.3)
        assert server.metrics.value("fleetwatch_nmea_lines_total") == 1  # only the id was read
        assert await _positions(server.pool, vehicle) == []
        server.service.set_pressure(False)
        assert len(await _wait_rows(server.pool, vehicle, 3)) == 3
        writer.close()


@aio_test
async def test_a_second_id_closes_the_connection(db_url: str, short_tmp: Path) -> None:
    async with running_server(db_url, short_tmp) as server:
        await _vehicle(server.pool, "京A12345", "13912345678")
        await _vehicle(server.pool, "京A54321", "13912340000")
        same, other = "#ID 13912345678", "#ID 13912340000"
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(f"{same}\r\n{same}\r\n".encode())  # repeating the id is fine
        await _identified(server.service)
        writer.write(f"{other}\r\n".encode())
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        m = server.metrics
        assert m.value("fleetwatch_nmea_disconnects_total", reason="changed id") == 1
        assert m.value("fleetwatch_nmea_bad_lines_total", kind="syntax") == 0  # the repeat


@contextlib.asynccontextmanager
async def listening(service: NmeaService) -> AsyncIterator[int]:
    port = reactor.listenTCP(0, NmeaFactory(service), interface="127.0.0.1")  # type: ignore[attr-defined]
    try:
        yield port.getHost().port
    finally:
        await deferred(port.stopListening())
        for conn in list(service.connections):
            conn.transport.abortConnection()


def _never(positions: list[Any]) -> asyncio.Future[str]:
    raise AssertionError(f"nothing should be submitted, got {positions}")


@aio_test
async def test_lookup_failure_closes_the_connection() -> None:
    async def lookup(ident: str) -> int | None:
        raise OSError("the database is away")

    metrics = Metrics()
    service = NmeaService(lookup, _never, metrics)
    async with listening(service) as port:
        with captured_log() as messages:
            assert await _session(port, ["#ID 13912345678", *track_lines(2)]) == b""
    assert metrics.value("fleetwatch_nmea_refused_total", reason="lookup_error") == 1
    assert any(m.startswith("looking up NMEA id '13912345678'") for m in messages)


@aio_test
async def test_positions_the_writer_refuses_are_counted_as_lost() -> None:
    async def lookup(ident: str) -> int | None:
        return 7

    submitted: list[Any] = []

    def submit(positions: list[Any]) -> asyncio.Future[str]:
        submitted.extend(positions)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        future.set_exception(RuntimeError("the position writer is closed"))
        return future

    metrics = Metrics()
    async with listening(NmeaService(lookup, submit, metrics)) as port:
        with captured_log() as messages:
            await _session(port, ["#ID x", *track_lines(3)])
            await asyncio.sleep(0.05)
    assert [p.vehicle_id for p in submitted] == [7, 7, 7]
    assert metrics.value("fleetwatch_nmea_positions_lost_total") == 3
    lost = [m for m in messages if "not stored" in m]
    assert len(lost) == 3 and "the position writer is closed" in lost[0]


@aio_test
async def test_find_vehicle_id(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        one = await _vehicle(conn, "京A12345", "13912345678")
        await _vehicle(conn, "沪B00001", "13900000001", color=1)
        await _vehicle(conn, "沪B00001", "13900000002", color=2)
        assert await find_vehicle_id(conn, "13912345678") == one
        assert await find_vehicle_id(conn, "0013912345678") == one
        assert await find_vehicle_id(conn, " 京a12345 ") == one
        assert await find_vehicle_id(conn, "沪B00001") is None  # two colours: ambiguous
        assert await find_vehicle_id(conn, "13900000003") is None
    finally:
        await conn.close()


# --------------------------------------------------------------------------- import


def _log_file(path: Path, lines: list[str | bytes]) -> Path:
    data = b"".join(line if isinstance(line, bytes) else line.encode() + b"\r\n" for line in lines)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


@pytest.mark.parametrize("name", ["track.nmea", "track.nmea.gz"])
@aio_test
async def test_import_file(db_url: str, short_tmp: Path, name: str) -> None:
    lines: list[str | bytes] = [*track_lines(300)]
    lines.insert(10, "")  # blank line
    lines.insert(20, MUNICH_RMC[:-2] + "00")  # line 21: bad checksum
    lines.insert(30, b"\x00" * 5000 + b"\n")  # line 31: binary junk, too long
    lines.insert(40, SEARCHING_RMC)  # receiver searching: no fix
    lines += [track_lines(1)[0]]  # a repeat of the first epoch's RMC at the very end
    path = _log_file(short_tmp / name, lines)
    conn = await asyncpg.connect(db_url)
    try:
        vehicle = await _vehicle(conn, "京A12345", "13912345678")
        stream = io.StringIO()
        progress = Progress(path.stat().st_size, stream, interval=0)
        result = await import_file(conn, path, vehicle, batch=100, max_errors=1, progress=progress)
        rows = await _positions(conn, vehicle)
        assert len(rows) == 300 == result.stored
        assert result.fixes == 301 and result.duplicates == 1  # the repeated epoch
        assert (result.lines, result.bad, result.no_fix) == (605, 2, 1)
        why = f"checksum: sent *00, computed *6A: {MUNICH_RMC[:-2]}00"
        assert result.bad_lines == [(21, why)]  # only the first: max_errors=1
        assert all(r["source"] == SOURCE_IMPORT for r in rows)
        assert rows[-1]["fix_time"] == T0 + timedelta(seconds=299)
        assert rows[-1]["altitude_m"] == 40 + 299
        drawn = stream.getvalue().split("\r")
        assert drawn[0] == "" and len(drawn) == 3  # drawn at line 512, and at the end
        assert "  200 fixes  " in drawn[1]  # two batches of 100 stored by then
        if name.endswith(".nmea"):  # (a small .gz file is read whole at once)
            assert "100.0%" not in drawn[1]
        assert drawn[2].startswith(f"[{'#' * 28}] 100.0%") and " 300 fixes " in drawn[2]
        assert drawn[2].endswith("\n")
        # Again: everything is already there.
        again = await import_file(conn, path, vehicle, batch=100)
        assert (again.stored, again.duplicates) == (0, 301)
        assert len(await _positions(conn, vehicle)) == 300
    finally:
        await conn.close()


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fleetwatch")
    import_nmea.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return int(args.handler(args))


@aio_test
async def test_import_command(
    db_url: str, short_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _log_file(short_tmp / "avl.log", [*track_lines(30), "garbage"])
    conn = await asyncpg.connect(db_url)
    try:
        vehicle = await _vehicle(conn, "京A12345", "13912345678")
        argv = ["import-nmea", str(path), "--plate", "京A12345", "--db", db_url, "--progress"]
        assert await asyncio.to_thread(_cli, argv) == 0
        assert len(await _positions(conn, vehicle)) == 30
        out, err = capsys.readouterr()
        assert f"{path}: 61 lines" in out
        assert "fixes stored:        30\n" in out
        assert (
            "bad lines:           1\n    line 61: syntax: does not start with '$': garbage" in out
        )
        assert "\r[####" in err and "100.0%" in err
        # An unknown vehicle: a one-line error, exit status 1, nothing stored.
        argv[3] = "京Z99999"
        assert await asyncio.to_thread(_cli, argv) == 1
        assert "no vehicle '京Z99999'" in capsys.readouterr().err
        argv[1] = str(short_tmp / "missing.nmea")
        assert await asyncio.to_thread(_cli, argv) == 1
        assert "missing.nmea: No such file or directory" in capsys.readouterr().err
    finally:
        await conn.close()


def test_read_lines_bounds_memory() -> None:
    lines = [b"$A\r\n", b"x" * 10 + b"\n", b"y" * 8 + b"\r\n", b"w" * 9 + b"\n", b"z" * 50 + b"\n"]
    data = b"".join(lines) + b"last"
    assert list(read_lines(io.BytesIO(data), limit=8)) == [
        b"$A",
        None,
        b"yyyyyyyy",
        None,
        None,
        b"last",
    ]


def test_progress_bar_renders_in_place() -> None:
    now = [100.0]
    stream = io.StringIO()
    bar = Progress(4 << 20, stream, width=10, clock=lambda: now[0])
    now[0] = 102.0
    bar.update(1 << 20, 5000)
    bar.update(2 << 20, 6000)  # too soon: not redrawn
    now[0] = 106.0
    bar.finish(4 << 20, 12000)
    assert stream.getvalue() == (
        "\r[##--------]  25.0%  1.0/4.0 MiB  5,000 fixes  2,500/s  ETA 6s"
        "\r[##########] 100.0%  4.0/4.0 MiB  12,000 fixes  2,000/s       \n"
    )
