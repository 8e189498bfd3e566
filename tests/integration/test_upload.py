"""`visual-search upload ./folder s3://bucket/prefix` against moto: products.csv rows become each
object's S3 user metadata (which the ingest path then indexes), a second run sends only what
changed, and a progress bar and a summary are printed."""

from __future__ import annotations

import shutil

import boto3
import pytest
from moto import mock_aws

from tests.integration.test_cli import memory_store  # noqa: F401 - fixture
from visual_search.catalog import get_catalog
from visual_search.dev.cli import main


@pytest.fixture
def shop_folder(tmp_path, demo_images):
    folder = tmp_path / "shop"
    for product, image in (("sku-1", demo_images[0]), ("sku-1", demo_images[1]), ("sku-2", demo_images[20])):
        (folder / product).mkdir(parents=True, exist_ok=True)
        shutil.copy(image.path, folder / product / image.path.name)
    (folder / "products.csv").write_text(
        "product_id,category,brand,title,price,colour,pack size\n"
        'sku-1,Milk,Arla,Mjölk Ekologisk,"1,29",white,1 l\n'
        "sku-2,Juice,Bravo,Apple juice,2.50,,\n",
        encoding="utf-8",
    )
    return folder


@pytest.fixture
def bucket():
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="shop")
        yield s3


def objects(s3) -> dict[str, dict]:
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="shop").get("Contents", [])]
    return {k: s3.head_object(Bucket="shop", Key=k) for k in keys}


def test_metadata_from_products_csv_then_indexed_with_it(bucket, shop_folder, memory_store, capsys):
    assert main(["upload", str(shop_folder), "s3://shop/catalog/"]) == 0
    out, err = capsys.readouterr()
    assert "3 images; 3 uploaded" in out and "0 failed" in out
    assert "uploading to s3://shop/catalog/" in err and "3/3" in err  # the progress bar, with its total
    heads = objects(bucket)
    assert sorted(heads) == sorted(
        f"catalog/{p.relative_to(shop_folder).as_posix()}" for p in shop_folder.rglob("*.jpg")
    )
    sku1 = next(h for k, h in heads.items() if "/sku-1/" in k)
    assert sku1["ContentType"] == "image/jpeg"
    assert sku1["Metadata"]["product-id"] == "sku-1" and sku1["Metadata"]["category"] == "Milk"
    assert sku1["Metadata"]["price"] == "1,29" and sku1["Metadata"]["pack-size"] == "1 l"
    assert "colour" not in next(h for k, h in heads.items() if "/sku-2/" in k)["Metadata"]  # empty cell
    # the ingest path reads that metadata back as the product's payload
    assert main(["ingest", "s3://shop/catalog/", "--quiet"]) == 0
    payloads = {h.payload["key"]: h.payload for h in get_catalog().store.scroll({"bucket": "shop"})}
    milk = next(p for k, p in payloads.items() if "/sku-1/" in k)
    assert (milk["product_id"], milk["brand"], milk["title"], milk["price"]) == (
        "sku-1",
        "Arla",
        "Mjölk Ekologisk",
        1.29,
    )
    assert milk["metadata"] == {"colour": "white", "pack-size": "1 l"}


def test_resume_sends_only_what_changed(bucket, shop_folder, capsys):
    assert main(["upload", str(shop_folder), "s3://shop/catalog", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["upload", str(shop_folder), "s3://shop/catalog", "--quiet"]) == 0
    assert "0 uploaded (0.0 MiB), 3 already there and unchanged" in capsys.readouterr().out
    csv = shop_folder / "products.csv"
    csv.write_text(csv.read_text(encoding="utf-8").replace("2.50", "2.75"), encoding="utf-8")
    assert main(["upload", str(shop_folder), "s3://shop/catalog", "--quiet"]) == 0
    assert "1 uploaded" in capsys.readouterr().out  # sku-2's one photo: its row changed
    photo = next((shop_folder / "sku-1").iterdir())
    photo.write_bytes(photo.read_bytes() + b"\0")  # new content, same name
    assert main(["upload", str(shop_folder), "s3://shop/catalog", "--quiet"]) == 0
    assert "1 uploaded" in capsys.readouterr().out
    head = bucket.head_object(Bucket="shop", Key=f"catalog/sku-1/{photo.name}")
    assert head["ContentLength"] == photo.stat().st_size


def test_failures_are_counted_and_exit_1(shop_folder, capsys):
    with mock_aws():  # no bucket
        assert main(["upload", str(shop_folder), "s3://missing/x", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "3 failed" in out and "NoSuchBucket" in out


@pytest.fixture
def loopback_s3():
    """moto's S3 as a server on 127.0.0.1, as the local stack's is: it accepts any signature."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    s3 = boto3.client(
        "s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    s3.create_bucket(Bucket="shop")
    try:
        yield url, s3
    finally:
        server.stop()


def test_upload_to_a_loopback_endpoint_needs_no_aws_credentials(loopback_s3, shop_folder, tmp_path):
    """The README's line, in a fresh shell with no AWS configuration at all."""
    import os
    import subprocess
    import sys

    url, s3 = loopback_s3
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["HOME"] = str(tmp_path / "home")  # no ~/.aws either
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "visual_search",
            "upload",
            str(shop_folder),
            "s3://shop/catalog",
            "--endpoint-url",
            url,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="shop")["Contents"])
    assert len(keys) == 3 and all(k.startswith("catalog/sku-") for k in keys)


def test_products_csv_and_folders_that_disagree_are_counted_and_strict_refuses(bucket, shop_folder, capsys):
    with (shop_folder / "products.csv").open("a", encoding="utf-8") as table:
        table.write("sku-9,Milk,Arla,No photo yet,1.00,,\n")
    (shop_folder / "sku-new").mkdir()
    shutil.copy(next((shop_folder / "sku-2").iterdir()), shop_folder / "sku-new" / "front.jpg")
    assert main(["upload", str(shop_folder), "s3://shop/catalog/", "--strict", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "--strict" in err and "nothing uploaded" in err
    assert "1 products.csv rows have no photos: sku-9" in err
    assert "1 product folders have no products.csv row" in err and "sku-new" in err
    assert not bucket.list_objects_v2(Bucket="shop").get("Contents")
    # Without --strict it uploads everything and says the same in its summary.
    assert main(["upload", str(shop_folder), "s3://shop/catalog/"]) == 0
    out, err = capsys.readouterr()
    assert "4 images; 4 uploaded" in out and "1 products.csv rows have no photos: sku-9" in out
    assert "/4" in err  # the progress bar knows the total


def test_wait_returns_once_the_catalogue_holds_every_upload_and_says_so(
    bucket, shop_folder, memory_store, capsys
):
    """The ingest function's part played by a thread indexing the bucket while the command waits."""
    import threading

    from visual_search.ingest.pipeline import Ingestor
    from visual_search.ops.sync import Syncer

    catalog = get_catalog()  # the one the command asks

    def the_function() -> None:
        while not bucket.list_objects_v2(Bucket="shop").get("KeyCount"):
            threading.Event().wait(0.05)
        threading.Event().wait(1.0)  # the command is waiting by now
        Syncer(Ingestor.configured(catalog, bucket)).backfill("shop", "catalog/")

    indexing = threading.Thread(target=the_function)
    indexing.start()
    code = main(["upload", str(shop_folder), "s3://shop/catalog/", "--wait", "--timeout", "60"])
    indexing.join(60)
    out, err = capsys.readouterr()
    assert code == 0 and "indexed: all 3 images are in the catalogue" in out
    assert "indexing" in err and "3/3" in err  # its progress bar, with the total


def test_wait_times_out_with_what_is_missing_and_without_wait_says_how(
    bucket, shop_folder, memory_store, capsys
):
    assert main(["upload", str(shop_folder), "s3://shop/catalog/", "--wait", "--timeout", "0.5"]) == 1
    err = capsys.readouterr().err
    assert "3 of 3 images not indexed after 0.5 s" in err and "dead-letter queue" in err
    assert main(["upload", str(shop_folder), "s3://shop/catalog/"]) == 0  # nothing to send again
    assert "`visual-search upload ... --wait` waits for it" in capsys.readouterr().err
