"""Prometheus metrics of the admission endpoints, each set in its own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from webhook.core.redact import redact

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class WebhookMetrics:
    """Label values go through redact() like every text the webhook writes (they are looked up
    once each, so it costs nothing per request)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "model_injector_admission_requests",
            "Admission requests by endpoint and result",
            ["endpoint", "result"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "model_injector_admission_duration_seconds",
            "Time to answer an admission request, body parsing included",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.injections = Counter(
            "model_injector_injections",
            "Pods that got models injected (dry runs excluded), by namespace",
            ["namespace"],
            registry=self.registry,
        )

        # labels() takes a lock and builds a key on every call; the children never change, so
        # each is looked up once and kept (the namespaces too: there are few of them).
        self._requests: dict[tuple[str, str], Counter] = {}
        self._latency: dict[str, Histogram] = {}
        self._injections: dict[str, Counter] = {}

    def observe(self, endpoint: str, result: str, seconds: float) -> None:
        key = (endpoint, result)
        requests = self._requests.get(key)
        if requests is None:
            requests = self._requests[key] = self.requests.labels(redact(endpoint), redact(result))
        requests.inc()
        latency = self._latency.get(endpoint)
        if latency is None:
            latency = self._latency[endpoint] = self.latency.labels(redact(endpoint))
        latency.observe(seconds)

    def injected(self, namespace: str) -> None:
        injections = self._injections.get(namespace)
        if injections is None:
            injections = self._injections[namespace] = self.injections.labels(redact(namespace))
        injections.inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
