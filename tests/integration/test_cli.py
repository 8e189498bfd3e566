"""`visual-search` on bad input: one `error:` line and exit 1 (or argparse's exit 2), never a
traceback; and exit codes that tell a script whether the work was done."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from visual_search.catalog import get_catalog
from visual_search.config import get_settings
from visual_search.dev.cli import main


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


def test_ingest_builds_the_index_and_optimize_reports_real_sizes(
    monkeypatch, tmp_path, embedder, demo_images, capsys
):
    import json
    import shutil

    monkeypatch.setenv("QDRANT_PATH", str(tmp_path / "qdrant"))
    monkeypatch.delenv("QDRANT_URL", raising=False)
    get_settings.cache_clear()
    get_catalog.cache_clear()
    folder = tmp_path / "shop"
    for img in demo_images[:8]:
        (folder / img.key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(img.path, folder / img.key)
    try:
        assert main(["ingest", str(folder), "--quiet"]) == 0
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["indexed"] == 8
        assert main(["optimize"]) == 0
        report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert report["points"] == 8 and 0 < report["disk_bytes"] < 64 * 2**20
    finally:
        get_catalog().store.close()
        get_catalog.cache_clear()
        get_settings.cache_clear()


def test_a_local_mode_folder_is_refused_with_the_command_that_migrates_it(monkeypatch, tmp_path, capsys):
    from qdrant_client import QdrantClient, models

    legacy = QdrantClient(path=str(tmp_path / "qdrant"))
    legacy.create_collection(
        "products-x", vectors_config={"image": models.VectorParams(size=4, distance="Cosine")}
    )
    legacy.close()
    monkeypatch.setenv("QDRANT_PATH", str(tmp_path / "qdrant"))
    monkeypatch.delenv("QDRANT_URL", raising=False)
    get_settings.cache_clear()
    get_catalog.cache_clear()
    try:
        assert main(["info"]) == 1
        assert "visual-search migrate-store" in error_of(capsys)
        assert main(["migrate-store"]) == 0
        assert "products-x" in capsys.readouterr().out
        assert (tmp_path / "qdrant" / "local-mode-backup" / "meta.json").is_file()
    finally:
        get_catalog.cache_clear()
        get_settings.cache_clear()
