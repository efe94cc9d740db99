"""Prometheus metrics of the server, in a registry of its own (several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self, engine):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tunelab_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                                registry=r)
        self.latency = Histogram("tunelab_request_seconds", "request latency, to the last byte", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.first_token = Histogram("tunelab_time_to_first_token_seconds", "time to the first streamed token",
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("tunelab_prompt_tokens", "prompt tokens processed", registry=r)
        self.generated_tokens = Counter("tunelab_generated_tokens", "tokens generated", registry=r)
        self.in_flight = Gauge("tunelab_requests_in_flight", "requests being answered", registry=r)
        load = getattr(engine, "load", None)
        if load is not None:  # the transformers engine reports its batch
            Gauge("tunelab_batch_rows", "answers decoding together now", registry=r).set_function(
                lambda: engine.load[0])
            Gauge("tunelab_waiting_requests", "requests waiting for a batch slot", registry=r).set_function(
                lambda: engine.load[1])

    def render(self) -> bytes:
        return generate_latest(self.registry)
