"""Counters and gauges for the ingest path, rendered in the Prometheus text format."""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

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


#: A worker's metrics as plain data (JSON-able), for adding up several workers' metrics.
Snapshot = dict[str, Any]


class Metrics:
    """Labelled counters (``inc``), counters and gauges read on demand (``counter``,
    ``gauge``) and histograms (``histogram``). :meth:`snapshot` gives them as plain data so that
    ``serve --workers N`` can show every worker's in one ``/metrics`` (:func:`render_snapshots`
    adds them up)."""

    def __init__(self) -> None:
        self.counters: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        self.counter_reads: dict[str, tuple[str, Callable[[], float]]] = {}
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

    def counter(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """A counter kept elsewhere (e.g. the writer's statistics), read when rendered."""
        self.counter_reads[name] = (help_text, read)

    def histogram(
        self, name: str, help_text: str, bounds: Sequence[float] = LATENCY_BOUNDS
    ) -> Histogram:
        """The histogram called ``name`` (made on first use)."""
        if name not in self.histograms:
            self.histograms[name] = (help_text, Histogram(bounds))
        return self.histograms[name][1]

    def describe(self, name: str, help_text: str) -> None:
        self.help[name] = help_text

    def snapshot(self) -> Snapshot:
        counters = [[name, [list(kv) for kv in labels], value]
                    for (name, labels), value in self.counters.items()]  # fmt: skip
        counters += [[name, [], read()] for name, (_, read) in self.counter_reads.items()]
        return {
            "counters": counters,
            "help": {**self.help, **{n: h for n, (h, _) in self.counter_reads.items()}},
            "histograms": {
                name: [help_text, list(hist.bounds), list(hist.counts), hist.sum]
                for name, (help_text, hist) in self.histograms.items()
            },
            "gauges": {name: [text, read()] for name, (text, read) in self.gauges.items()},
        }

    def render(self, others: Iterable[Snapshot] = ()) -> str:
        """This process's metrics, plus ``others`` (other workers' snapshots) added in."""
        return render_snapshots([self.snapshot(), *others])


def render_snapshots(snapshots: Iterable[Snapshot]) -> str:
    """Several workers' metrics as one Prometheus text: counters, histogram buckets and gauges
    (connections, queued rows, spool bytes: all amounts) summed over the workers."""
    counters: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
    help_texts: dict[str, str] = {}
    histograms: dict[str, tuple[str, Histogram]] = {}
    gauges: dict[str, list[Any]] = {}
    for snap in snapshots:
        help_texts.update(snap.get("help", {}))
        for name, labels, value in snap.get("counters", []):
            counters[(name, tuple(tuple(kv) for kv in labels))] += value
        for name, (help_text, bounds, counts, total) in snap.get("histograms", {}).items():
            if name not in histograms:
                histograms[name] = (help_text, Histogram(bounds))
            hist = histograms[name][1]
            if list(hist.bounds) == list(bounds):
                hist.counts = [a + b for a, b in zip(hist.counts, counts, strict=True)]
                hist.sum += total
        for name, (help_text, value) in snap.get("gauges", {}).items():
            gauges.setdefault(name, [help_text, 0.0])[1] += value
    lines: list[str] = []
    seen: set[str] = set()
    for (name, labels), value in sorted(counters.items()):
        if name not in seen:
            seen.add(name)
            if name in help_texts:
                lines.append(f"# HELP {name} {help_texts[name]}")
            lines.append(f"# TYPE {name} counter")
        label_text = ",".join(f'{k}="{v}"' for k, v in labels)
        lines.append(f"{name}{{{label_text}}} {value:g}" if labels else f"{name} {value:g}")
    for name, (help_text, hist) in sorted(histograms.items()):
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        lines += hist.render(name)
    for name, (help_text, value) in sorted(gauges.items()):
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value:g}"]
    return "\n".join(lines) + "\n"
