"""Counters and gauges for the ingest path, rendered in the Prometheus text format."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable


def _key(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """Labels in a canonical order (sorting only when there is something to sort: hot path)."""
    return tuple(labels.items()) if len(labels) < 2 else tuple(sorted(labels.items()))


class Metrics:
    """Labelled counters (``inc``) and gauges read on demand (``gauge``)."""

    def __init__(self) -> None:
        self.counters: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        self.help: dict[str, str] = {}

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        self.counters[(name, _key(labels))] += amount

    def key(self, name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
        """A counter's key, made once, for :meth:`add` on hot paths."""
        return (name, _key(labels))

    def add(self, key: tuple[str, tuple[tuple[str, str], ...]], amount: float = 1) -> None:
        self.counters[key] += amount

    def value(self, name: str, **labels: str) -> float:
        return self.counters[(name, _key(labels))]

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self.gauges[name] = (help_text, read)

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
        for name, (help_text, read) in sorted(self.gauges.items()):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {read():g}"]
        return "\n".join(lines) + "\n"
