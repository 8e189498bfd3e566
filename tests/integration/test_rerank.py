"""The optional reranking stage: candidates by the fast vector, re-scored by a second model's
vector (Qdrant prefetch + query), embedded and in memory and over the REST path."""

from __future__ import annotations

import numpy as np
import pytest

from visual_search.catalog import Catalog, ImageSource
from visual_search.errors import ModelMismatchError
from visual_search.model import Embedder
from visual_search.store import Query


@pytest.fixture(scope="module")
def reranker(embedder):
    """A second embedding space: the shipped model with flip averaging (a distinct model id)."""
    return Embedder(embedder.model_dir, threads=1, flip_tta=True)


def test_results_are_ordered_by_the_rerank_vector(make_store, embedder, reranker, demo_images):
    store = make_store(rerank_model_id=reranker.model_id, rerank_dim=reranker.dim)
    catalog = Catalog(embedder, store, reranker)
    images = demo_images[::3]
    catalog.index([ImageSource("b", img.key, img.path.read_bytes(), img.metadata) for img in images])
    query = images[4].path.read_bytes()
    result = catalog.search_image(query, Query(top_k=8, group_by_product=False))
    second = dict(
        zip([img.key for img in images], reranker.embed_many([img.path.read_bytes() for img in images]))
    )
    expected = reranker.embed(query)
    scores = [h.score for h in result.hits]
    assert scores == sorted(scores, reverse=True) and len(scores) == 8
    for hit in result.hits:  # the scores are the rerank model's cosine, not the first model's
        assert hit.score == pytest.approx(float(expected @ second[hit.payload["key"]]), abs=1e-4)
    assert result.hits[0].payload["key"] == images[4].key


def test_a_reranking_collection_refuses_a_store_without_the_reranker(
    make_store, embedder, reranker, demo_images
):
    store = make_store(rerank_model_id=reranker.model_id, rerank_dim=reranker.dim)
    Catalog(embedder, store, reranker).index(
        [ImageSource("b", demo_images[0].key, demo_images[0].path.read_bytes())]
    )
    plain = make_store()
    with pytest.raises(ModelMismatchError, match="rerank"):
        plain.search(np.zeros(embedder.dim, np.float32), Query())


@pytest.mark.parametrize("group", [False, True])
def test_reranked_pages_neither_repeat_nor_skip(make_store, embedder, reranker, demo_images, group):
    store = make_store(rerank_model_id=reranker.model_id, rerank_dim=reranker.dim, rerank_candidates=24)
    catalog = Catalog(embedder, store, reranker)
    catalog.index([ImageSource("b", img.key, img.path.read_bytes(), img.metadata) for img in demo_images])
    query = demo_images[7].path.read_bytes()
    whole = catalog.search_image(query, Query(top_k=100, group_by_product=group)).hits
    pages, offset = [], 0
    while True:
        page = catalog.search_image(query, Query(top_k=5, offset=offset, group_by_product=group)).hits
        pages += page
        if len(page) < 5:
            break
        offset += 5
    keys = [h.payload["key"] for h in pages]
    assert keys == [h.payload["key"] for h in whole] and len(set(keys)) == len(keys)
    assert len(keys) <= 24 and (group or len(keys) == 24)  # the pool bounds the pages
