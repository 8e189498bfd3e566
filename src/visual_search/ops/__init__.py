"""Operating a catalogue: bulk and repair work around the ingest path.

- ``sync``: backfill, reconcile and re-index through the ingest pipeline;
- ``fleet``: the same through the ingest queue and the deployed function fleet;
- ``queues``: the dead-letter queue (peek, redrive);
- ``maintenance``: store upkeep (optimise, migrate the embedded store).

Nothing is imported here.
"""
