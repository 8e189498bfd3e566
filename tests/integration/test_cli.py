"""`visual-search` on bad input: one `error:` line and exit 1 (or argparse's exit 2), never a
traceback; and exit codes that tell a script whether the work was done."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from visual_search.catalog import get_catalog
from visual_search.cli import main
from visual_search.config import get_settings


@pytest.fixture
def memory_store(monkeypatch, embedder):
    monkeypatch.setenv("QDRANT_PATH", ":memory:")
    monkeypatch.delenv("QDRANT_URL", raising=False)
    get_settings.cache_clear()
    get_catalog.cache_clear()
    yield
    get_catalog.cache_clear()
    get_settings.cache_clear()


def error_of(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error:"), err
    return err


def test_an_aws_error_is_one_line(memory_store, capsys):
    with mock_aws():
        assert main(["ingest", "s3://no-such-bucket/", "--quiet"]) == 1
    assert "NoSuchBucket" in error_of(capsys)


def test_a_folder_given_as_the_query_image(memory_store, tmp_path, capsys):
    assert main(["search", str(tmp_path)]) == 1
    assert str(tmp_path) in error_of(capsys)


def test_demo_on_a_folder_without_images(memory_store, tmp_path, capsys):
    assert main(["demo", "--folder", str(tmp_path)]) == 1
    assert "holds no images" in error_of(capsys)


@pytest.mark.parametrize(
    "argv",
    [
        ["search", "x.jpg", "--top-k", "0"],
        ["search", "x.jpg", "--top-k", "101"],
        ["eval", "x", "--limit", "-5"],
        ["dev", "--api-port", "80000"],
    ],
)
def test_out_of_range_numbers_are_refused_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and "out of range" in capsys.readouterr().err


def test_an_unknown_bench_section(capsys):
    assert main(["bench", "--only", "embeds", "--repeat", "1"]) == 1
    assert "unknown bench section" in error_of(capsys)


def test_reindex_exits_1_when_an_image_failed(memory_store, demo_images, capsys):
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="shop")
        s3.put_object(Bucket="shop", Key="catalog/p1/a.jpg", Body=demo_images[0].path.read_bytes())
        s3.put_object(Bucket="shop", Key="catalog/p2/broken.jpg", Body=b"\xff\xd8\xff not a jpeg")
        assert main(["reindex", "--source", "s3://shop/catalog/", "--quiet"]) == 1
        s3.delete_object(Bucket="shop", Key="catalog/p2/broken.jpg")
        assert main(["reindex", "--source", "s3://shop/catalog/", "--quiet"]) == 0
