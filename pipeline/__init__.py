"""The pipeline: manifest schema, stage graph, artifact store, runner, gate and CLI."""
