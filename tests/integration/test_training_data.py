"""The fine-tune catalogue without torch: sources (folder, S3), the validation split, recall."""

from __future__ import annotations

import boto3
import numpy as np
from moto import mock_aws

from visual_search.dev.folders import DEMO_CATALOG
from visual_search.dev.training.data import Photo, fingerprint, photos_from, split
from visual_search.dev.training.validate import product_recall

BUCKET = "shop-photos"


def fake(products: int, each: int) -> list[Photo]:
    return [
        Photo(f"p{p:02d}", f"p{p:02d}/{n}.jpg", lambda: b"") for p in range(products) for n in range(each)
    ]


def test_folder_photos_are_labelled_as_ingest_labels_them():
    photos = photos_from(str(DEMO_CATALOG))
    assert len(photos) == 60 and len({p.product_id for p in photos}) == 10
    assert all(p.key.startswith(p.product_id + "/") for p in photos)
    assert photos[0].read()[:2] == b"\xff\xd8"


def test_s3_photos_take_product_ids_from_metadata_or_folders(demo_images):
    photo = demo_images[0].path.read_bytes()
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key="catalog/sku-1/front.jpg", Body=photo, ContentType="image/jpeg")
        s3.put_object(
            Bucket=BUCKET,
            Key="catalog/misc/IMG_2.jpg",
            Body=photo,
            ContentType="image/jpeg",
            Metadata={"product-id": "SKU-2"},
        )
        s3.put_object(Bucket=BUCKET, Key="catalog/README.txt", Body=b"no", ContentType="text/plain")
        s3.put_object(Bucket=BUCKET, Key="elsewhere/sku-3/a.jpg", Body=photo, ContentType="image/jpeg")
        photos = photos_from(f"s3://{BUCKET}/catalog/", s3)
        assert [(p.product_id, p.key) for p in photos] == [
            ("SKU-2", "catalog/misc/IMG_2.jpg"),
            ("sku-1", "catalog/sku-1/front.jpg"),
        ]
        assert photos[1].read() == photo


def test_split_holds_back_photos_of_each_product_and_whole_products_when_there_are_enough():
    photos = fake(30, 10)
    parts = split(photos, seed=1)
    assert 2 <= len(parts.unseen_products) <= 4
    trained = {photos[i].product_id for i in parts.train}
    assert not trained & set(parts.unseen_products)
    assert not set(parts.queries) & set(parts.gallery)
    assert set(parts.train) <= set(parts.gallery)
    assert len(parts.queries) + len(parts.gallery) == len(photos)
    for product in trained:  # 15% of each trained product's 10 photos: 2 held back
        assert sum(photos[i].product_id == product for i in parts.queries) == 2
    assert split(photos, seed=1) == parts and split(photos, seed=2) != parts
    small = split(fake(5, 4), seed=0)  # too few products to hold any back whole
    assert small.unseen_products == [] and len(small.queries) == 5


def test_fingerprint_follows_keys_and_labels():
    photos = fake(3, 3)
    relabelled = [Photo("x", p.key, p.read) if i == 0 else p for i, p in enumerate(photos)]
    assert fingerprint(photos) == fingerprint(list(reversed(photos)))
    assert fingerprint(relabelled) != fingerprint(photos)


def test_product_recall_ranks_products_by_their_best_photo():
    gallery = np.eye(4, dtype=np.float32)
    labels = ["a", "a", "b", "c"]
    queries = np.asarray([[0.1, 0.9, 0.3, 0], [0, 0.2, 0.5, 0.9]], np.float32)
    result = product_recall(gallery, labels, queries, ["a", "b"])
    assert (result.recall_at_1, result.recall_at_5, result.queries) == (0.5, 1.0, 2)


def test_with_vectors_the_held_back_photos_of_a_product_are_one_cluster():
    """Two sessions per product: the held-back photos come from one, not from both."""
    photos = fake(4, 10)
    rng = np.random.default_rng(0)
    sessions = {}
    vectors = []
    for i, photo in enumerate(photos):
        session = i % 2  # alternate photos belong to two far-apart sessions
        sessions[i] = session
        centre = np.zeros(8)
        centre[2 * int(photo.product_id[1:]) % 8 + session] = 5.0
        vectors.append(centre + rng.normal(0, 0.1, 8))
    vectors = np.asarray(vectors) / np.linalg.norm(vectors, axis=1, keepdims=True)
    parts = split(photos, seed=3, vectors=vectors, query_fraction=0.3)
    for product in {p.product_id for p in photos}:
        held = [i for i in parts.queries if photos[i].product_id == product]
        assert len(held) == 3 and len({sessions[i] for i in held}) == 1
