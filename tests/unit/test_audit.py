"""visual-search audit: photos nearer to another product than to their own."""

from __future__ import annotations

import numpy as np

from visual_search.dev.audit import suspects


def test_suspects_by_hand():
    x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.95, 0.05]])
    found = suspects(["a1", "a2", "b1", "b2", "b3"], ["a", "a", "b", "b", "b"], x)
    # b3 sits among the a photos (a mislabel): the worst; a1 and a2 now have b3 nearest too
    assert found[0].key == "b3" and found[0].other_product == "a" and found[0].margin > 0.5
    assert {s.key for s in found} == {"b3", "a1", "a2"}
