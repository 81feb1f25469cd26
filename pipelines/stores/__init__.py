"""Where the window state and the id index live: one interface, an in-memory and a Bigtable store.

The keyed feature stages (pipelines/transforms) talk to a ``WindowStore`` only, so their logic
runs in unit tests against ``InMemoryStore`` and in production against the Bigtable feature store.
"""
