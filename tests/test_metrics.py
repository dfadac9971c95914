"""The Prometheus text rendering of counters, gauges and histograms."""

from __future__ import annotations

import math

from ingest.metrics import Histogram, Metrics


def test_histogram_buckets_are_cumulative_and_bounds_inclusive() -> None:
    hist = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 2.0, 3.0):
        hist.observe(value)
    assert hist.render("x") == [
        'x_bucket{le="0.1"} 2',  # le: 0.1 itself falls in the 0.1 bucket
        'x_bucket{le="1"} 3',
        'x_bucket{le="+Inf"} 5',
        "x_sum 5.65",
        "x_count 5",
    ]
    assert hist.count == 5
    assert hist.quantile(0.4) == 0.1
    assert hist.quantile(0.6) == 1.0
    assert math.isinf(hist.quantile(0.99))


def test_metrics_render_counters_gauges_and_histograms() -> None:
    metrics = Metrics()
    metrics.inc("frames_total", 3, msg_id="0x0200")
    metrics.gauge("depth", "rows waiting", lambda: 7)
    metrics.histogram("ack_seconds", "ack latency", (0.5,)).observe(0.2, n=4)
    assert metrics.histogram("ack_seconds", "ignored") is metrics.histograms["ack_seconds"][1]
    text = metrics.render()
    assert 'frames_total{msg_id="0x0200"} 3' in text
    assert "# TYPE depth gauge\ndepth 7" in text
    assert "# TYPE ack_seconds histogram" in text
    assert 'ack_seconds_bucket{le="0.5"} 4' in text
    assert "ack_seconds_count 4" in text


def test_workers_metrics_add_up_and_counters_stay_counters() -> None:
    from ingest.metrics import render_snapshots

    one, two = Metrics(), Metrics()
    for metrics, frames, rows in ((one, 3, 10), (two, 4, 5)):
        metrics.inc("frames_total", frames, msg_id="0x0200")
        metrics.counter("rows_written_total", "rows committed", lambda rows=rows: rows)
        metrics.gauge("connections", "open connections", lambda frames=frames: frames)
        metrics.histogram("ack_seconds", "ack latency", (0.5,)).observe(0.2, n=frames)
    text = one.render([two.snapshot()])
    assert 'frames_total{msg_id="0x0200"} 7' in text
    assert "# TYPE rows_written_total counter\nrows_written_total 15" in text
    assert "# TYPE connections gauge\nconnections 7" in text
    assert 'ack_seconds_bucket{le="0.5"} 7' in text and "ack_seconds_count 7" in text
    assert render_snapshots([one.snapshot()]) == one.render()
