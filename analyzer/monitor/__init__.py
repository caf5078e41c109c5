"""Model Monitor: what an endpoint captures (spec model-monitor.md) and, later, the monitoring jobs
that read it. ``capture`` holds the capture record and its object layout as pure functions; the writer
that queues and publishes them lives with the endpoint (``container.capture``)."""
