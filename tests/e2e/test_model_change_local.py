"""A model change on the local stack, as on AWS: a model published to the stack's bucket (its
registry), the catalogue moved to it and back through the commands, searches answered by the
model of the collection they meet."""

from __future__ import annotations

import json

from tests.e2e.test_local_stack import post_image, run_cli, settled, wait_for
from visual_search.config import REPO_MODELS
from visual_search.dev.folders import DEMO_CATALOG

MODEL_B = REPO_MODELS / "efficientnet-lite0-384-grocery"
B = json.loads((MODEL_B / "model.json").read_text())["id"]
BUCKET = "product-images"


def test_publish_reindex_status_and_rollback_through_the_running_stack(stack):
    """On the session's stack: it ends where it began (the rollback), its previous collection kept."""
    wait_for(lambda: settled(stack.get("/health"), 60), timeout=180)
    photo = next(DEMO_CATALOG.rglob("*.jpg")).read_bytes()
    status, body = post_image(stack, photo)
    a = body["model"]
    assert status == 200 and a != B

    registry = ("--endpoint-url", stack.s3_url, "--bucket", BUCKET)
    published = run_cli(stack, "model", "publish", str(MODEL_B), *registry)
    assert published.returncode == 0, published.stderr
    assert json.loads(published.stdout)["status"] == "published"
    listed = run_cli(stack, "model", "list", "--json", *registry)
    assert listed.returncode == 0, listed.stderr
    [entry] = json.loads(listed.stdout)
    assert entry["id"] == B and entry["current"] is False

    moved = run_cli(stack, "reindex", "--model", B)
    assert moved.returncode == 0, moved.stderr
    result = json.loads(moved.stdout)
    assert result["model"] == B and result["previous_kept_until"]
    status, body = post_image(stack, photo)
    assert status == 200 and body["model"] == B and body["results"][0]["score"] > 0.99
    state = run_cli(stack, "model", "status")
    assert state.returncode == 0, state.stderr
    assert (json.loads(state.stdout)["model"], json.loads(state.stdout)["previous"]["model"]) == (B, a)
    listed = json.loads(run_cli(stack, "model", "list", "--json", *registry).stdout)
    assert listed[0]["current"] is True and listed[0]["collections"]

    back = run_cli(stack, "model", "rollback")
    assert back.returncode == 0, back.stderr
    assert json.loads(back.stdout)["model"] == a
    status, body = post_image(stack, photo)
    assert status == 200 and body["model"] == a and body["results"][0]["score"] > 0.99
    unknown = run_cli(stack, "reindex", "--model", "no-such-model")
    assert unknown.returncode == 1 and "'no-such-model' is not in the registry" in unknown.stderr
