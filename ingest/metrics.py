"""Counters and gauges for the ingest path, rendered in the Prometheus text format."""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Sequence

#: Default histogram bounds in seconds (Prometheus' own defaults, plus 2.5 ms).
LATENCY_BOUNDS = (0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _key(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """Labels in a canonical order (sorting only when there is something to sort: hot path)."""
    return tuple(labels.items()) if len(labels) < 2 else tuple(sorted(labels.items()))


class Histogram:
    """A Prometheus histogram: counts per upper bound, kept non-cumulative so that
    :meth:`observe` is one bisect and one increment (cumulated when rendered)."""

    def __init__(self, bounds: Sequence[float] = LATENCY_BOUNDS) -> None:
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float, n: int = 1) -> None:
        self.counts[bisect_left(self.bounds, value)] += n
        self.sum += value * n

    @property
    def count(self) -> int:
        return sum(self.counts)

    def quantile(self, q: float) -> float:
        """The upper bound of the bucket holding quantile ``q`` (inf past the last bound)."""
        rank = q * self.count
        seen = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            seen += n
            if n and seen >= rank:
                return bound
        return 0.0

    def render(self, name: str) -> list[str]:
        lines = []
        seen = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            seen += n
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            lines.append(f'{name}_bucket{{le="{le}"}} {seen}')
        lines += [f"{name}_sum {self.sum:g}", f"{name}_count {seen}"]
        return lines


class Metrics:
    """Labelled counters (``inc``), histograms (``histogram``) and gauges read on demand
    (``gauge``)."""

    def __init__(self) -> None:
        self.counters: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        self.histograms: dict[str, tuple[str, Histogram]] = {}
        self.help: dict[str, str] = {}

    def inc(self, name: str, amount: int = 1, **labels: str) -> None:
        self.counters[(name, _key(labels))] += amount

    def key(self, name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
        """A counter's key, made once, for :meth:`add` on hot paths."""
        return (name, _key(labels))

    def add(self, key: tuple[str, tuple[tuple[str, str], ...]], amount: int = 1) -> None:
        self.counters[key] += amount

    def value(self, name: str, **labels: str) -> float:
        return self.counters[(name, _key(labels))]

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self.gauges[name] = (help_text, read)

    def histogram(
        self, name: str, help_text: str, bounds: Sequence[float] = LATENCY_BOUNDS
    ) -> Histogram:
        """The histogram called ``name`` (made on first use)."""
        if name not in self.histograms:
            self.histograms[name] = (help_text, Histogram(bounds))
        return self.histograms[name][1]

    def describe(self, name: str, help_text: str) -> None:
        self.help[name] = help_text

    def render(self) -> str:
        lines: list[str] = []
        seen: set[str] = set()
        for (name, labels), value in sorted(self.counters.items()):
            if name not in seen:
                seen.add(name)
                if name in self.help:
                    lines.append(f"# HELP {name} {self.help[name]}")
                lines.append(f"# TYPE {name} counter")
            label_text = ",".join(f'{k}="{v}"' for k, v in labels)
            lines.append(f"{name}{{{label_text}}} {value:g}" if labels else f"{name} {value:g}")
        for name, (help_text, hist) in sorted(self.histograms.items()):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
            lines += hist.render(name)
        for name, (help_text, read) in sorted(self.gauges.items()):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {read():g}"]
        return "\n".join(lines) + "\n"
