"""``/metrics`` over twisted.web, in the Prometheus text exposition format, for every worker.

``serve --workers N`` runs N processes; only worker 0 serves HTTP. Workers 1..N-1 publish a
snapshot of their metrics every second as a file (:class:`MetricsExchange`), and worker 0 adds
them to its own when scraped: no sockets between workers, and a scrape never waits for one. A
worker that has not published for :data:`STALE_S` (dead, being restarted) still counts with its
last counters, never with its stale gauges. A restarted worker starts its counters from zero, so
the sums drop once; Prometheus takes that for a counter reset, as for a restarted server.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from twisted.web.resource import Resource
from twisted.web.server import Request

from ingest.metrics import Metrics, Snapshot

#: A snapshot older than this (seconds) is from a worker that is gone.
STALE_S = 10.0


class MetricsExchange:
    """Snapshot files ``worker-K.json`` in one directory of the data dir."""

    def __init__(self, directory: Path, workers: int) -> None:
        self.directory = directory
        self.workers = workers
        directory.mkdir(parents=True, exist_ok=True)

    def clear(self) -> None:
        """Forget snapshots of an earlier run (worker 0, before the workers start)."""
        for path in self.directory.glob("worker-*.json"):
            path.unlink(missing_ok=True)

    def publish(self, index: int, snapshot: Snapshot) -> None:
        path = self.directory / f"worker-{index}.json"
        scratch = path.with_suffix(".tmp")
        scratch.write_text(json.dumps(snapshot, separators=(",", ":")))
        os.replace(scratch, path)  # a reader sees the old snapshot or the new one, whole

    def others(self) -> list[Snapshot]:
        """The snapshots of workers 1..N-1 (whichever exist)."""
        found = []
        now = time.time()
        for index in range(1, self.workers):
            path = self.directory / f"worker-{index}.json"
            try:
                snapshot = json.loads(path.read_text())
                age = now - path.stat().st_mtime
            except (OSError, ValueError):
                continue
            if age > STALE_S:
                snapshot["gauges"] = {}
            found.append(snapshot)
        return found


class MetricsResource(Resource):
    isLeaf = True

    def __init__(self, metrics: Metrics, others: Callable[[], list[Snapshot]] | None = None):
        super().__init__()
        self.metrics = metrics
        self.others = others

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
        return self.metrics.render(self.others() if self.others else ()).encode()
