"""Vehicle plates in one canonical form, wherever they enter (CLI, CSV, registration, NMEA ids,
watchlist, filters).

``浙Ｃ33333`` (full-width C), ``京A 12345``, ``京a-12345`` and ``京A·12346`` are typed, pasted
and sent by terminals for plates that are one plate each. Canonical: Unicode NFKC (full-width
letters and digits become ASCII), then spaces and separators dropped, then upper-case. The
province character and the 挂/学/警 suffixes are kept as they are.
"""

from __future__ import annotations

import re
import unicodedata

#: Whitespace and the separators seen between a plate's parts: middle dots (· ・ • ‧ ･),
#: hyphens and dashes, full stops, underscores, slashes (after NFKC, full-width ones are ASCII).
_SEPARATORS = re.compile(r"[\s\u00b7\u30fb\u2022\u2027\uff65\u2010-\u2015\u2212\-._/\\]+")


def normalise_plate(plate: str | None) -> str:
    """The canonical form of ``plate`` ("" for None or nothing but separators); NUL bytes and
    other control characters (padding of the registration message's plate field) go too."""
    if not plate:
        return ""
    text = unicodedata.normalize("NFKC", plate)
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C")
    return _SEPARATORS.sub("", text).upper()
