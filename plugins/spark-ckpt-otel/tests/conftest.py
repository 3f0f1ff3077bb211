"""OpenTelemetry SDK set up once per test session: the global tracer and meter providers can be set
only once per process, so every test reads the same in-memory span exporter (cleared per test) and
metric reader (cumulative: tests tell their data apart by graph id)."""

from __future__ import annotations

import importlib.util

import pytest

if importlib.util.find_spec("opentelemetry.sdk") is None:
    pytest.skip("the OpenTelemetry SDK is not installed: pip install 'spark-ckpt-otel[test]'",
                allow_module_level=True)

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

_exporter = InMemorySpanExporter()
_reader = InMemoryMetricReader()


@pytest.fixture(scope="session", autouse=True)
def otel_providers():
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(_exporter))
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[_reader]))
    yield
    tracer_provider.shutdown()


@pytest.fixture
def spans():
    """The finished spans of this test (a callable: read it after the run)."""
    _exporter.clear()
    return _exporter.get_finished_spans


@pytest.fixture
def metric_points():
    """``metric_points(name, graph_id)``: that metric's data points for one graph id."""

    def read(name: str, graph_id: str) -> list:
        data = _reader.get_metrics_data()
        found = []
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found += [p for p in metric.data.data_points
                                  if p.attributes.get("spark_ckpt.graph_id") == graph_id]
        return found

    return read
