"""`visual-search upload --wait` against the running local stack: it returns once the stack has
indexed every upload, so the next search finds them (the session's stack ends as it began)."""

from __future__ import annotations

import shutil

from tests.e2e.test_local_stack import post_image, run_cli, s3_for, settled, wait_for


def test_upload_wait_returns_when_the_stack_has_indexed_the_photos(stack, tmp_path, demo_images):
    wait_for(lambda: settled(stack.get("/health"), 60), timeout=180)
    folder = tmp_path / "more"
    for product, image in (("wait-sku-1", demo_images[3]), ("wait-sku-2", demo_images[30])):
        (folder / product).mkdir(parents=True)
        shutil.copy(image.path, folder / product / image.path.name)
    done = run_cli(
        stack, "upload", str(folder), "s3://product-images/later", "--endpoint-url", stack.s3_url, "--wait"
    )
    try:
        assert done.returncode == 0, done.stderr
        assert "indexed: the local stack's backlog is empty (62 images in the catalogue)" in done.stdout
        assert stack.get("/health")["points"] == 62  # at once: no waiting here
        status, body = post_image(stack, demo_images[30].path.read_bytes())
        found = [r["product_id"] for r in body["results"][:2]]  # the same photo: its demo product ties
        assert status == 200 and "wait-sku-2" in found
    finally:
        s3 = s3_for(stack)
        for item in s3.list_objects_v2(Bucket="product-images", Prefix="later/").get("Contents", []):
            s3.delete_object(Bucket="product-images", Key=item["Key"])
        wait_for(lambda: settled(stack.get("/health"), 60), timeout=60)
