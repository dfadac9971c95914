"""``/metrics`` over twisted.web, in the Prometheus text exposition format."""

from __future__ import annotations

from twisted.web.resource import Resource
from twisted.web.server import Request

from ingest.metrics import Metrics


class MetricsResource(Resource):
    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
        return self.metrics.render().encode()
