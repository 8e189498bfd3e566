"""Learned whitening on the real model: photos of another session are found more often."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from visual_search.adaptation.whitening import choose

GROCERY_SMALL = Path(__file__).resolve().parent.parent / "data" / "grocery-small"


def _vectors(embedder, paths):
    out = embedder.embed_many([p.read_bytes() for p in paths])
    return np.stack([np.asarray(v) for v in out])


def test_adaptation_raises_recall_on_held_back_photos(embedder):
    photos = sorted(GROCERY_SMALL.glob("*/*.jpg"))
    gallery = [p for p in photos if p.name.startswith("train_")]
    queries = [p for p in photos if p.name.startswith("test_")]
    assert len(gallery) == 80 and len(queries) == 40
    gx, qx = _vectors(embedder, gallery), _vectors(embedder, queries)
    gy = np.asarray([p.parent.name for p in gallery])
    qy = np.asarray([p.parent.name for p in queries])

    report = choose(gx, gy)  # fitted on the gallery only: the queries are another session
    assert report.projection is not None, report.reason
    assert report.cv_recall_adapted > report.cv_recall_raw

    def recall(q, g):
        return float((gy[(q @ g.T).argmax(axis=1)] == qy).mean())

    raw = recall(qx, gx)
    adapted = recall(report.projection.apply(qx), report.projection.apply(gx))
    # At least a third of the raw space's errors removed (a fixed gain has no room near 1.0).
    assert 1 - adapted <= (1 - raw) * 2 / 3, (raw, adapted, report.reason)
