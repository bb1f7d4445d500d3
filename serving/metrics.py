"""Prometheus metrics, served on the REST port when the monitoring config enables them.

Two families:

- TF Serving's own names (`:tensorflow:serving:request_count{model_name,status}`,
  `:tensorflow:serving:request_latency{model_name,API,entrypoint}` in
  microseconds), so dashboards built for TF Serving keep working.
  request_count is exposed as `untyped`: prometheus-client would rename a
  `counter` to `..._total`, and the name matters more than the TYPE line.
- signflow's, with the version that answered:
  `signflow_serving_requests_total{model,version,api,entrypoint,code}`,
  `signflow_serving_request_latency_seconds{model,version,api,entrypoint}`,
  `signflow_serving_batch_size{model,version}`,
  `signflow_serving_model_load_events_total{model,version,event}`,
  `signflow_serving_feedback_requests_total{code}`,
  `signflow_serving_feedback_instances_total{model,outcome}` (accepted/rejected),
  `signflow_serving_request_log_dropped_total` (entries the request log could not keep),
  `signflow_serving_file_system_polls_total` (completed scans of the models' base paths),
  `signflow_serving_config_file_polls_total{outcome}` (re-reads of --model_config_file:
  unchanged, applied, or failed -- a file that did not parse or load, the old config kept).
  Feedback is not counted in the request families above: those are TF Serving's APIs.

Each server has its own CollectorRegistry, so several servers in one process
(tests) do not mix their numbers.

Layer: beside every other module (each reports through the server's one
Metrics). Imports prometheus-client only.
"""
from __future__ import annotations

import threading
from collections import defaultdict

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics_core import Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# TF Serving's request_latency buckets: 10us * 1.8^k, 33 of them (util/prometheus_exporter + metrics).
_TFS_LATENCY_BUCKETS_US = tuple(10 * 1.8 ** k for k in range(33))
_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class _UntypedCounts:
    """A collector for exact-name counters (see module docstring)."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...]):
        self._name = name
        self._documentation = documentation
        self._labelnames = labelnames
        self._values: dict[tuple[str, ...], int] = defaultdict(int)
        self._lock = threading.Lock()

    def inc(self, *labelvalues: str) -> None:
        with self._lock:
            self._values[labelvalues] += 1

    def collect(self):
        metric = Metric(self._name, self._documentation, "unknown")
        with self._lock:
            items = list(self._values.items())
        for labelvalues, value in items:
            metric.add_sample(self._name, dict(zip(self._labelnames, labelvalues)), value)
        yield metric


class Metrics:
    """Everything the server counts. Methods are cheap and thread-safe."""

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=False)
        self._tfs_request_count = _UntypedCounts(
            ":tensorflow:serving:request_count", "The total number of requests.", ("model_name", "status"))
        self.registry.register(self._tfs_request_count)
        self._tfs_request_latency = Histogram(
            ":tensorflow:serving:request_latency", "Distribution of wall time (in microseconds) for requests.",
            ("model_name", "API", "entrypoint"), buckets=_TFS_LATENCY_BUCKETS_US, registry=self.registry)
        self._requests = Counter(
            "signflow_serving_requests", "Requests by model, version that answered, API and status code.",
            ("model", "version", "api", "entrypoint", "code"), registry=self.registry)
        self._latency = Histogram(
            "signflow_serving_request_latency_seconds", "Wall time of successful requests.",
            ("model", "version", "api", "entrypoint"), buckets=_LATENCY_BUCKETS_S, registry=self.registry)
        self._batch_size = Histogram(
            "signflow_serving_batch_size", "Rows per model call (with batching: per batch).",
            ("model", "version"), buckets=_BATCH_BUCKETS, registry=self.registry)
        self._load_events = Counter(
            "signflow_serving_model_load_events", "Version loads, failed loads and unloads.",
            ("model", "version", "event"), registry=self.registry)

        self._feedback_requests = Counter(
            "signflow_serving_feedback_requests", "Feedback requests by status code name.",
            ("code",), registry=self.registry)
        self._feedback_instances = Counter(
            "signflow_serving_feedback_instances", "Feedback instances written (accepted) or refused (rejected).",
            ("model", "outcome"), registry=self.registry)
        self._request_log_dropped = Counter(
            "signflow_serving_request_log_dropped", "Request log entries dropped (queue full, write error, cap).",
            registry=self.registry)
        self._file_system_polls = Counter(
            "signflow_serving_file_system_polls", "Completed scans of the models' base paths for versions.",
            registry=self.registry)
        self._config_file_polls = Counter(
            "signflow_serving_config_file_polls", "Re-reads of --model_config_file by outcome (unchanged, applied, "
            "failed).", ("outcome",), registry=self.registry)

    def request(self, model: str, version: int | None, api: str, entrypoint: str, code: str,
                seconds: float) -> None:
        """One finished request. `code` is the status name (OK, INVALID_ARGUMENT, ...)."""
        self._tfs_request_count.inc(model, code)
        version_label = "" if version is None else str(version)
        self._requests.labels(model, version_label, api, entrypoint, code).inc()
        if code == "OK":
            self._tfs_request_latency.labels(model, api, entrypoint).observe(seconds * 1e6)
            self._latency.labels(model, version_label, api, entrypoint).observe(seconds)

    def batch(self, model: str, version: int, size: int) -> None:
        self._batch_size.labels(model, str(version)).observe(size)

    def load_event(self, model: str, version: int, event: str) -> None:
        self._load_events.labels(model, str(version), event).inc()

    def feedback(self, code: str, model: str | None = None, accepted: int = 0, rejected: int = 0) -> None:
        """One feedback request. `model` only once it is known to be served (labels stay bounded)."""
        self._feedback_requests.labels(code).inc()
        if model is not None:
            self._feedback_instances.labels(model, "accepted").inc(accepted)
            self._feedback_instances.labels(model, "rejected").inc(rejected)

    def request_log_dropped(self, count: int = 1) -> None:
        self._request_log_dropped.inc(count)

    def file_system_poll(self) -> None:
        self._file_system_polls.inc()

    def config_file_poll(self, outcome: str) -> None:
        self._config_file_polls.labels(outcome).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
