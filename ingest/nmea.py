"""NMEA 0183 sentences → platform :class:`Position` values (pure: no sockets, no database).

Three sources feed this module: the NMEA TCP port (``ingest/nmea_server.py``), log files
(``fleetwatch import-nmea``) and the GNSS detail blobs of JT/T 808 0x0900 type 0x00
(:func:`gnss_detail`).

* :func:`parse_sentence` checks the checksum (pynmea2 ``check=True``; a sentence without one is
  refused too, since a line cut by a serial glitch would otherwise pass as a valid fix) and
  returns a typed, validated value: :class:`Rmc`, :class:`Gga`, :class:`Gns`, :class:`Gsa`, or
  ``None`` for well-formed sentences the platform does not use (GSV, VTG, TXT, proprietary).
  Any talker is accepted (GP, GL, GA, BD, GB, GQ, GN ...): the talker names the constellation
  the receiver used, not a different layout. Field values are converted here rather than by
  pynmea2, which silently hands back the raw text when a field does not convert.
* :class:`NmeaTrack` assembles the sentences of one receiver into fixes: the sentences sharing
  a UTC time of day are one epoch; RMC alone makes a fix (it carries the date), GGA/GNS add
  altitude, satellites, HDOP and fix quality, GSA adds PDOP/VDOP and the 2D/3D fix type.

Times: NMEA times are UTC (JT/T 808 times are Beijing time), so no zone conversion happens here.
RMC years have two digits; ``80``-``99`` are read as 1980-1999 (GPS started in 1980).
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, TypeVar

import pynmea2

from geo.position import SOURCE_NMEA, Position

KNOT_KMH = 1.852
#: Longest line accepted anywhere (a standard sentence is at most 82 characters; proprietary
#: ones and loose talkers run longer, but never by kilobytes).
MAX_SENTENCE = 1024
#: How far a GGA/GNS-only epoch may be from the last dated fix for its date to be inferred.
_INFER_WINDOW = timedelta(hours=12)

_TIME = re.compile(r"^(\d{2})(\d{2})(\d{2})(?:\.(\d{1,9}))?$")
_DATE = re.compile(r"^(\d{2})(\d{2})(\d{2})$")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
_SENTENCE = re.compile(r"\$[^$\r\n]*")
_HEX2 = re.compile(r"^[0-9A-Fa-f]{2}$")
_ADDRESS = re.compile(r"^[A-Za-z0-9]{5}$")
#: The sentence types turned into values; the others are only checked (GSV alone is often
#: half of a log, so skipping pynmea2 for them halves an import).
_USED = frozenset(("RMC", "GGA", "GNS", "GSA"))


class NmeaError(ValueError):
    """A line that is not a usable NMEA sentence.

    ``kind``: ``syntax`` (not a sentence at all), ``checksum`` (missing or wrong) or ``field``
    (a checksum-valid sentence whose fields do not make sense). ``line`` is the raw input.
    """

    def __init__(self, kind: str, reason: str, line: str) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind = kind
        self.reason = reason
        self.line = line


# --------------------------------------------------------------------------- sentences


@dataclass(frozen=True, slots=True)
class Rmc:
    """Recommended minimum data: the only sentence with the date, speed and course."""

    talker: str
    time: time | None
    date: date | None
    valid: bool  # status A (V: receiver warning, no usable fix)
    lat: float | None
    lon: float | None
    speed_kmh: float | None
    course: float | None
    mode: str | None  # NMEA 2.3+ mode indicator: A autonomous, D differential, E estimated, N none


@dataclass(frozen=True, slots=True)
class Gga:
    """Fix data: quality, satellites in use, HDOP, altitude above mean sea level."""

    talker: str
    time: time | None
    lat: float | None
    lon: float | None
    quality: int  # 0 no fix, 1 GPS, 2 DGPS, 4 RTK fixed, 5 RTK float, 6 estimated ...
    satellites: int | None
    hdop: float | None
    altitude_m: float | None


@dataclass(frozen=True, slots=True)
class Gns:
    """Multi-constellation fix data (NMEA 3.0+): like GGA, with a mode per constellation."""

    talker: str
    time: time | None
    lat: float | None
    lon: float | None
    mode: str  # one letter per constellation (GPS, GLONASS, Galileo, BeiDou, ...), N = no fix
    satellites: int | None
    hdop: float | None
    altitude_m: float | None


@dataclass(frozen=True, slots=True)
class Gsa:
    """DOP and active satellites; carries no time, so it belongs to the epoch it arrives in."""

    talker: str
    fix_type: int | None  # 1 no fix, 2 2D, 3 3D
    pdop: float | None
    hdop: float | None
    vdop: float | None


Sentence = Rmc | Gga | Gns | Gsa


def checksum(body: str | bytes) -> int:
    """XOR of the characters between ``$`` and ``*`` (pass exactly those)."""
    data = body.encode() if isinstance(body, str) else body
    return functools.reduce(operator.xor, data, 0)


def with_checksum(body: str) -> str:
    """``$<body>*hh``: a complete sentence (for simulators, tests and the ID sentence)."""
    return f"${body}*{checksum(body):02X}"


def _raw(msg: pynmea2.NMEASentence, name: str) -> str:
    index = type(msg).name_to_idx[name]
    return msg.data[index].strip() if index < len(msg.data) else ""


def _number(msg: pynmea2.NMEASentence, name: str, line: str) -> float | None:
    text = _raw(msg, name)
    if not text:
        return None
    if not _NUMBER.match(text):
        raise NmeaError("field", f"{name} {text!r} is not a number", line)
    return float(text)


def _count(msg: pynmea2.NMEASentence, name: str, line: str) -> int | None:
    text = _raw(msg, name)
    if not text:
        return None
    if not text.isdigit() or not text.isascii():
        raise NmeaError("field", f"{name} {text!r} is not a whole number", line)
    return int(text)


def _time(msg: pynmea2.NMEASentence, line: str) -> time | None:
    text = _raw(msg, "timestamp")
    if not text:
        return None  # receivers without a fix often send no time yet
    match = _TIME.match(text)
    if not match:
        raise NmeaError("field", f"time {text!r} is not hhmmss[.ss]", line)
    hh, mm, ss, frac = match.groups()
    if int(hh) > 23 or int(mm) > 59 or int(ss) > 59:
        raise NmeaError("field", f"time {text!r} is out of range", line)
    micro = int((frac or "0").ljust(6, "0")[:6])
    return time(int(hh), int(mm), int(ss), micro)


def _date(msg: pynmea2.NMEASentence, line: str) -> date | None:
    text = _raw(msg, "datestamp")
    if not text:
        return None
    match = _DATE.match(text)
    if not match:
        raise NmeaError("field", f"date {text!r} is not ddmmyy", line)
    dd, mm, yy = (int(g) for g in match.groups())
    try:
        return date(1900 + yy if yy >= 80 else 2000 + yy, mm, dd)
    except ValueError:
        raise NmeaError("field", f"date {text!r} does not exist", line) from None


def _coordinate(msg: pynmea2.NMEASentence, value: str, hemi: str, line: str) -> float | None:
    """``ddmm.mmmm`` / ``dddmm.mmmm`` plus N/S or E/W → signed degrees."""
    text, side = _raw(msg, value), _raw(msg, hemi).upper()
    if not text and not side:
        return None
    axis, limit, sides = ("latitude", 90, "NS") if value == "lat" else ("longitude", 180, "EW")
    if not _NUMBER.match(text) or text.startswith(("-", "+")):
        raise NmeaError("field", f"{axis} {text!r} is not ddmm.mmmm", line)
    if side not in sides:
        raise NmeaError("field", f"{axis} hemisphere {side!r} is not {' or '.join(sides)}", line)
    number = float(text)
    degrees = int(number // 100)
    minutes = number - degrees * 100
    result = degrees + minutes / 60
    if minutes >= 60 or result > limit:
        raise NmeaError("field", f"{axis} {text!r}{side} is out of range", line)
    return -result if side in "SW" else result


def _position(msg: pynmea2.NMEASentence, line: str) -> tuple[float | None, float | None]:
    lat = _coordinate(msg, "lat", "lat_dir", line)
    lon = _coordinate(msg, "lon", "lon_dir", line)
    if (lat is None) != (lon is None):
        raise NmeaError("field", "only one of latitude and longitude is given", line)
    return lat, lon


def parse_sentence(line: str) -> Sentence | None:
    """One line → a typed sentence, or None for a valid sentence the platform does not use.

    Raises :class:`NmeaError` for anything else: no ``$``, a missing or wrong checksum, an
    unreadable field. Surrounding whitespace (``\\r``) is ignored.
    """
    text = line.strip()
    if not text.startswith("$"):
        raise NmeaError("syntax", "does not start with '$'", line)
    if len(text) > MAX_SENTENCE:
        raise NmeaError("syntax", f"longer than {MAX_SENTENCE} characters", line)
    if not text.isascii():
        raise NmeaError("syntax", "contains non-ASCII characters", line)
    body, star, sent = text[1:].rpartition("*")
    if not star:
        raise NmeaError("checksum", "missing (*hh at the end)", line)
    if not _HEX2.match(sent):
        raise NmeaError("checksum", f"malformed (*{sent})", line)
    if int(sent, 16) != checksum(body):
        computed = f"*{checksum(body):02X}"
        raise NmeaError("checksum", f"sent *{sent.upper()}, computed {computed}", line)
    address = body.split(",", 1)[0]
    if address[:1] in ("P", "p") or (_ADDRESS.match(address) and address[2:].upper() not in _USED):
        return None  # proprietary, or a talker sentence the platform does not use
    try:
        msg = pynmea2.parse(text, check=True)  # checks it again; we wanted the clearer message
    except pynmea2.SentenceTypeError:
        return None  # checksum-valid, but a type pynmea2 has no layout for: not ours either
    except pynmea2.ParseError as exc:
        raise NmeaError("syntax", f"not an NMEA sentence ({exc.args[0][0]})", line) from None
    if not isinstance(msg, pynmea2.TalkerSentence):
        return None  # proprietary ($P...) and query sentences
    talker = msg.talker.upper()
    kind = msg.sentence_type.upper()
    if kind == "RMC":
        status = _raw(msg, "status").upper()
        if status not in ("A", "V"):
            raise NmeaError("field", f"status {status!r} is not A or V", line)
        lat, lon = _position(msg, line)
        knots = _number(msg, "spd_over_grnd", line)
        mode = _raw(msg, "mode_indicator").upper() or None
        return Rmc(
            talker=talker,
            time=_time(msg, line),
            date=_date(msg, line),
            valid=status == "A" and mode != "N",
            lat=lat,
            lon=lon,
            speed_kmh=None if knots is None else knots * KNOT_KMH,
            course=_number(msg, "true_course", line),
            mode=mode,
        )
    if kind == "GGA":
        lat, lon = _position(msg, line)
        return Gga(
            talker=talker,
            time=_time(msg, line),
            lat=lat,
            lon=lon,
            quality=_count(msg, "gps_qual", line) or 0,
            satellites=_count(msg, "num_sats", line),
            hdop=_number(msg, "horizontal_dil", line),
            altitude_m=_number(msg, "altitude", line),
        )
    if kind == "GNS":
        lat, lon = _position(msg, line)
        return Gns(
            talker=talker,
            time=_time(msg, line),
            lat=lat,
            lon=lon,
            mode=_raw(msg, "mode_indicator").upper(),
            satellites=_count(msg, "num_sats", line),
            hdop=_number(msg, "hdop", line),
            altitude_m=_number(msg, "altitude", line),
        )
    if kind == "GSA":
        return Gsa(
            talker=talker,
            fix_type=_count(msg, "mode_fix_type", line),
            pdop=_number(msg, "pdop", line),
            hdop=_number(msg, "hdop", line),
            vdop=_number(msg, "vdop", line),
        )
    return None


def split_sentences(text: str) -> Iterator[str]:
    """The ``$...`` sentences in a blob, whether separated by CR/LF or run together."""
    for match in _SENTENCE.finditer(text):
        sentence = match.group().strip("\x00 \t")
        if len(sentence) > 1:
            yield sentence


# --------------------------------------------------------------------------- assembly

_S = TypeVar("_S", Rmc, Gga, Gns, Gsa)


def _better(current: _S | None, new: _S) -> _S:
    """Of two sentences of one type and epoch, the combined (GN) solution wins, else the first:
    multi-constellation receivers send one per constellation (GP, GL, GA, GB) and one GN."""
    if current is None or (new.talker == "GN" and current.talker != "GN"):
        return new
    return current


@dataclass
class _Epoch:
    """The sentences of one receiver epoch (one UTC time of day)."""

    tod: time
    received: datetime
    types: set[str] = field(default_factory=set)
    rmc: Rmc | None = None
    gga: Gga | None = None
    gns: Gns | None = None
    gsa: Gsa | None = None


@dataclass
class TrackStats:
    """What the assembler saw besides fixes (for the import summary and the server metrics)."""

    sentences: int = 0  # usable sentences (RMC, GGA, GNS, GSA)
    ignored: int = 0  # valid sentences of other types (GSV, VTG, TXT, proprietary)
    fixes: int = 0
    no_fix: int = 0  # epochs without coordinates (receiver searching)
    undated: int = 0  # epochs without RMC before any dated fix: no date to give them
    repeated: int = 0  # sentences repeating one of an epoch already emitted


class NmeaTrack:
    """Assembles one receiver's sentences into :class:`Position` values, epoch by epoch.

    An epoch is complete when its RMC has arrived together with every sentence (talker and
    type) the previous epoch had: a receiver sending RMC, GGA and GSA each second gets all
    three merged, and one sending RMC alone is not kept waiting. An incomplete epoch is emitted
    when a sentence of another epoch arrives, or on :meth:`flush`. Receivers order sentences
    differently (SiRF: GGA first; u-blox: RMC first); both work, except that the very first
    epoch of a u-blox-ordered stream goes out with its RMC alone (nothing is known yet).

    An epoch without RMC (the RMC line was corrupted, or the unit sends GGA only) still makes a
    fix when a dated fix came before it: its date is that fix's, moved across midnight UTC when
    the time of day wrapped, and ``extras["date_inferred"]`` is set. Such a fix has no speed
    or course. The inference assumes less than 12 hours passed since that dated fix.
    """

    def __init__(self, vehicle_id: int = 0, source: str = SOURCE_NMEA) -> None:
        self.vehicle_id = vehicle_id
        self.source = source
        self.stats = TrackStats()
        self._pending: _Epoch | None = None
        self._done: _Epoch | None = None  # the last emitted (or dropped) epoch
        self._last_time: datetime | None = None  # fix time of the last dated fix

    @property
    def pending(self) -> bool:
        """Whether an epoch is waiting for more sentences (see :meth:`flush`)."""
        return self._pending is not None

    @property
    def pending_since(self) -> datetime | None:
        """When the waiting epoch's first sentence was received (None: nothing waits)."""
        return self._pending.received if self._pending is not None else None

    def feed(self, line: str, received: datetime | None = None) -> list[Position]:
        """One line in, the fixes it completed out. Raises :class:`NmeaError` for a bad line
        (the track state is unchanged by it, so the caller can count it and go on)."""
        sentence = parse_sentence(line)
        if sentence is None:
            self.stats.ignored += 1
            return []
        return self.add(sentence, received)

    def add(self, sentence: Sentence, received: datetime | None = None) -> list[Position]:
        """A parsed sentence in, the fixes it completed out."""
        self.stats.sentences += 1
        out: list[Position] = []
        ident = sentence.talker + type(sentence).__name__.upper()  # "GNRMC", "GPGGA", ...
        if isinstance(sentence, Gsa):
            epoch = self._pending or self._done
            if epoch is not None:
                epoch.types.add(ident)
                if epoch is self._pending:
                    epoch.gsa = _better(epoch.gsa, sentence)
        elif sentence.time is None:
            # No time: cannot be placed in an epoch (receivers send this while searching).
            if isinstance(sentence, Rmc):
                self.stats.no_fix += 1
            return out
        else:
            tod = sentence.time
            if self._pending is not None and self._pending.tod != tod:
                out.extend(self._finish())
            if self._pending is None and self._done is not None and self._done.tod == tod:
                # Belongs to the epoch already emitted: remember that this sentence comes, so
                # the next epoch waits for it; the fix itself is out already.
                if ident in self._done.types:
                    self.stats.repeated += 1
                self._done.types.add(ident)
                return out
            if self._pending is None:
                self._pending = _Epoch(tod, received or datetime.now(UTC))
            epoch = self._pending
            epoch.types.add(ident)
            if isinstance(sentence, Rmc):
                epoch.rmc = _better(epoch.rmc, sentence)
            elif isinstance(sentence, Gga):
                epoch.gga = _better(epoch.gga, sentence)
            else:
                epoch.gns = _better(epoch.gns, sentence)
        epoch = self._pending
        expected = self._done.types if self._done is not None else set()
        if epoch is not None and epoch.rmc is not None and expected <= epoch.types:
            out.extend(self._finish())
        return out

    def flush(self) -> list[Position]:
        """Emit the epoch still waiting (end of a file, connection closed, hold time over)."""
        return self._finish() if self._pending is not None else []

    def _finish(self) -> list[Position]:
        epoch, self._pending = self._pending, None
        assert epoch is not None
        self._done = epoch
        position = self._position(epoch)
        if position is None:
            return []
        self.stats.fixes += 1
        return [position]

    def _fix_time(self, epoch: _Epoch) -> tuple[datetime | None, bool]:
        """(fix time, whether the date was inferred)."""
        if epoch.rmc is not None and epoch.rmc.date is not None:
            return datetime.combine(epoch.rmc.date, epoch.tod, UTC), False
        last = self._last_time
        if last is None:
            return None, False
        candidate = datetime.combine(last.date(), epoch.tod, UTC)
        if candidate < last - _INFER_WINDOW:
            candidate += timedelta(days=1)  # the time of day wrapped: past midnight UTC
        elif candidate > last + _INFER_WINDOW:
            candidate -= timedelta(days=1)  # slightly older than the last fix, across midnight
        return candidate, True

    def _position(self, epoch: _Epoch) -> Position | None:
        rmc, gga, gns, gsa = epoch.rmc, epoch.gga, epoch.gns, epoch.gsa
        fix_time, inferred = self._fix_time(epoch)
        if fix_time is None:
            self.stats.undated += 1
            return None
        lat = lon = None
        for source in (rmc, gga, gns):
            if source is not None and source.lat is not None:
                lat, lon = source.lat, source.lon
                break
        if lat is None or lon is None:
            self.stats.no_fix += 1
            return None
        if not inferred:
            self._last_time = fix_time
        extras: dict[str, Any] = {}
        if rmc is not None:
            valid = rmc.valid
            if rmc.mode:
                extras["mode"] = rmc.mode
        elif gga is not None:
            valid = gga.quality > 0
        else:
            valid = gns is not None and bool(gns.mode.strip("N"))
        if gga is not None:
            extras["fix_quality"] = gga.quality
        fix = gga or gns
        if fix is not None:
            if fix.satellites is not None:
                extras["satellites"] = fix.satellites
            if fix.hdop is not None:
                extras["hdop"] = fix.hdop
        if gns is not None and gns.mode:
            extras["gns_mode"] = gns.mode
        if gsa is not None:
            for key in ("fix_type", "pdop", "vdop"):
                if getattr(gsa, key) is not None:
                    extras[key] = getattr(gsa, key)
            if "hdop" not in extras and gsa.hdop is not None:
                extras["hdop"] = gsa.hdop
        if inferred:
            extras["date_inferred"] = True
        altitude = next(
            (s.altitude_m for s in (gga, gns) if s is not None and s.altitude_m is not None),
            None,
        )
        speed = rmc.speed_kmh if rmc is not None and rmc.speed_kmh is not None else 0.0
        course = rmc.course if rmc is not None and rmc.course is not None else 0.0
        return Position(
            vehicle_id=self.vehicle_id,
            fix_time=fix_time,
            received_time=epoch.received,
            lon=lon,
            lat=lat,
            speed_kmh=round(speed, 3),
            heading=round(course) % 360,
            altitude_m=round(altitude) if altitude is not None else 0,
            valid=valid,
            source=self.source,
            extras=extras,
        )


# --------------------------------------------------------------------------- 0x0900 detail

_T = TypeVar("_T", Rmc, Gga, Gns)


def _latest(current: _T | None, new: _T) -> _T:
    """The newer epoch's sentence; within one epoch, :func:`_better`'s choice."""
    if current is None or current.time != new.time:
        return new
    return _better(current, new)


def gnss_detail(text: str) -> dict[str, Any]:
    """What a JT/T 808 0x0900 type 0x00 blob (GNSS detail data) says, as JSON-ready values.

    Keys (present when the blob has them): ``fix_time`` (ISO 8601 UTC, from RMC),
    ``time`` (UTC time of day, when there is no date), ``lat``, ``lon``, ``speed_kmh``,
    ``heading``, ``altitude_m``, ``valid``, ``fix_quality``, ``satellites``, ``hdop``,
    ``pdop``, ``vdop``, ``fix_type``, ``mode``; ``sentences`` (how many were used) and
    ``errors`` (the bad ones, at most 10, as ``"<kind>: <reason>: <sentence>"``).
    When the blob holds several epochs, the last sentence of each type wins (the combined GN
    one within an epoch); GGA is preferred to GNS of the same epoch for its quality number.
    """
    rmc: Rmc | None = None
    fix: Gga | Gns | None = None
    gsa: Gsa | None = None
    used = 0
    errors: list[str] = []
    for raw in split_sentences(text):
        try:
            sentence = parse_sentence(raw)
        except NmeaError as exc:
            if len(errors) < 10:
                errors.append(f"{exc}: {raw[:100]}")
            continue
        if sentence is None:
            continue
        used += 1
        if isinstance(sentence, Rmc):
            rmc = _latest(rmc, sentence)
        elif isinstance(sentence, Gga):
            fix = sentence if not isinstance(fix, Gga) else _latest(fix, sentence)
        elif isinstance(sentence, Gns):
            if not isinstance(fix, Gga) or fix.time != sentence.time:
                fix = sentence if not isinstance(fix, Gns) else _latest(fix, sentence)
        else:
            gsa = _better(gsa, sentence)
    out: dict[str, Any] = {}
    tod = rmc.time if rmc is not None else fix.time if fix is not None else None
    if rmc is not None and rmc.date is not None and rmc.time is not None:
        out["fix_time"] = datetime.combine(rmc.date, rmc.time, UTC).isoformat()
    elif tod is not None:
        out["time"] = tod.isoformat()
    for source in (rmc, fix):
        if source is not None and source.lat is not None:
            out["lat"], out["lon"] = source.lat, source.lon
            break
    if rmc is not None:
        out["valid"] = rmc.valid
        if rmc.speed_kmh is not None:
            out["speed_kmh"] = round(rmc.speed_kmh, 3)
        if rmc.course is not None:
            out["heading"] = rmc.course
        if rmc.mode:
            out["mode"] = rmc.mode
    if isinstance(fix, Gga):
        out["fix_quality"] = fix.quality
        out.setdefault("valid", fix.quality > 0)
    elif isinstance(fix, Gns):
        out["gns_mode"] = fix.mode
    if fix is not None:
        for key in ("satellites", "hdop", "altitude_m"):
            if getattr(fix, key) is not None:
                out[key] = getattr(fix, key)
    if gsa is not None:
        for key in ("fix_type", "pdop", "vdop"):
            if getattr(gsa, key) is not None:
                out[key] = getattr(gsa, key)
        if "hdop" not in out and gsa.hdop is not None:
            out["hdop"] = gsa.hdop
    out["sentences"] = used
    if errors:
        out["errors"] = errors
    return out
