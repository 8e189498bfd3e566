"""Ingest: S3 notifications become catalogue changes.

- ``events``: S3 notifications (direct or in SQS) -> ``S3Change``, in sequencer order;
- ``pipeline``: applying the changes with the bucket as truth (``Ingestor``): re-check after
  write, permanent vs transient failures.

Nothing is imported here, so each function loads only the modules it uses.
"""
