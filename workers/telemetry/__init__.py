"""The worker's traces and logs: each worker builds its own TracerProvider after spawn and exports OTLP itself.

`setup.start_telemetry(config)` returns a `WorkerTelemetry` (or a no-op one when tracing is off); the worker loop
calls it at three points: a `Submit` arrives, a step runs, requests fail. See docs/observability.md for the spans.
This package's `__init__` imports nothing so that `workers.engine.engine` can import the stdlib-only `probe`
cheaply.
"""
