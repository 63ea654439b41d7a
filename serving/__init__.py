"""Serving a shipped bundle: the model runner and protocol codec (``runtime``), the engines that
put them behind HTTP with dynamic batching (``engines``: LitServe, Ray Serve), their Prometheus
metrics, and the Locust load generator (``loadtest``). A library below the stages: the CLI's
``serve`` and ``loadtest`` and the serving stage use it; it imports nothing of the pipeline."""
