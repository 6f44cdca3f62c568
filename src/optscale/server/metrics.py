"""Prometheus metrics of ``optscale serve`` (``prometheus_client``, one ``CollectorRegistry`` per app, so
several apps in one process — tests, workers — never share or clash).

=====================================================  ======================================================
``optscale_requests_total{endpoint,status}``           finished client requests by HTTP status
``optscale_request_seconds{endpoint}``                 request latency (histogram)
``optscale_samples_drawn_total``                       samples drawn from the upstream
``optscale_samples_saved_total``                       ``n_max - drawn`` summed over requests: the samples a
                                                       fixed Best-of-``n_max`` would have drawn in addition
``optscale_samples_per_request``                       samples drawn per request (histogram)
``optscale_stop_reason_total{reason}``                 policy / n_max / target / deadline / error / cancelled
``optscale_scorer_seconds``                            latency of one scorer call (histogram)
``optscale_upstream_tokens_total{kind}``               prompt / completion tokens reported by the upstream
``optscale_queue_depth``                               requests waiting for a slot
``optscale_inflight_requests``                         requests being solved
``optscale_cancellations_total{reason}``               client_disconnect
``optscale_errors_total{kind}``                        errors by kind (bad_request, auth, overload,
                                                       upstream_timeout, scorer_error, partial, degraded ...)
=====================================================  ======================================================
"""

from __future__ import annotations

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_SAMPLE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter("optscale_requests", "Finished client requests", ["endpoint", "status"],
                                registry=r)
        self.request_seconds = Histogram("optscale_request_seconds", "Client request latency",
                                         ["endpoint"], buckets=_LATENCY_BUCKETS, registry=r)
        self.samples_drawn = Counter("optscale_samples_drawn", "Samples drawn from the upstream", registry=r)
        self.samples_saved = Counter(
            "optscale_samples_saved", "Samples a fixed Best-of-n_max would have drawn in addition", registry=r
        )
        self.samples_per_request = Histogram("optscale_samples_per_request", "Samples drawn per request",
                                             buckets=_SAMPLE_BUCKETS, registry=r)
        self.stop_reason = Counter("optscale_stop_reason", "Why sampling stopped", ["reason"], registry=r)
        self.scorer_seconds = Histogram("optscale_scorer_seconds", "Latency of one scorer call",
                                        buckets=_LATENCY_BUCKETS, registry=r)
        self.upstream_tokens = Counter("optscale_upstream_tokens", "Tokens reported by the upstream",
                                       ["kind"], registry=r)
        self.queue_depth = Gauge("optscale_queue_depth", "Requests waiting for a slot", registry=r)
        self.inflight = Gauge("optscale_inflight_requests", "Requests being solved", registry=r)
        self.cancellations = Counter("optscale_cancellations", "Requests cancelled", ["reason"], registry=r)
        self.errors = Counter("optscale_errors", "Errors by kind", ["kind"], registry=r)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
