"""The pipeline's core: config base, manifest schema, store, stage contract, registries,
hashing and atomic files. It imports only the leaves (``cskd``, ``exports``)."""
