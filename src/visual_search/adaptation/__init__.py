"""Catalogue adaptation: what fits a catalogue's own space and what it means.

- ``whitening``: the projection (learned whitening), its cross-validated choice;
- ``adapter``: ``visual-search adapt``: fit, copy the catalogue with its ``adapted`` vectors, switch;
- ``projections``: projections kept in the store; ``spaces``: the collection + projection in use;
- ``calibration``: what a score means there (confidence, the no-match threshold);
- ``refits``: refit when the catalogue changed (maintenance function, local stack).

Nothing is imported here: the search and ingest functions load only ``spaces`` (and what it
needs) at their cold start, never the fitting code.
"""
