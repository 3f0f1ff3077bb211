"""OpenTelemetry for spark-ckpt: spans for runs, node visits (replayed or live), checkpoint writes and
recoveries, and metrics for checkpoint write latency, bytes, visits and recoveries.

Installed, the plugin is found through the ``spark_ckpt`` entry-point group (``spark_ckpt_otel.plugin``).
It uses the global tracer and meter providers, so the application configures the exporters; without
them every call is OpenTelemetry's no-op. A Spark graph built with Spark's own telemetry enabled also
gets the checkpoint events on its Spark trace (``spark_ckpt_otel.spark_telemetry``).
"""

from .plugin import INSTRUMENTATION_NAME

__all__ = ["INSTRUMENTATION_NAME"]
