"""The model registry: model folders in S3, ``s3://<MODELS_BUCKET>/<MODELS_PREFIX><id>/``.

Each model is the folder ``Embedder`` loads, ``model.onnx`` and ``model.json`` (the card, with
the file's sha256), under the card's id. ``publish`` uploads the file first and the card last,
with a conditional put, so a card in the registry always names a complete file and an id never
changes its meaning: publishing the same folder again changes nothing, another folder under a
published id is refused. ``fetch`` downloads a model into a local cache (``/tmp`` in Lambda),
checks the file against its card, and keeps it by id and sha256.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ..aws import error_code as _code
from ..errors import ModelError, ModelUnavailableError, RegistryConflictError
from ..model import ModelCard, file_sha256

CARD = "model.json"
WEIGHTS = "model.onnx"
MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


@dataclass(frozen=True)
class PublishedModel:
    id: str
    created: str  # when its card was written (ISO 8601, UTC)
    size: int  # bytes of model.onnx
    sha256: str | None
    base_model: str | None
    precision: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def base_model(card: dict[str, Any]) -> str | None:
    """What a model was made from: a fine-tune's base, a quantised model's source, or None."""
    training = card.get("training") or {}
    base = (training.get("base_model") or {}).get("id")
    quantized = (card.get("quantization") or {}).get("source_model")
    return base or quantized or None


def is_model_id(name: str) -> bool:
    return bool(MODEL_ID.fullmatch(name or "")) and ".." not in name


def check_model_id(model_id: str) -> str:
    if not is_model_id(model_id):
        raise ModelError(
            f"{model_id!r} is not a model id (letters, digits and . _ + -, at most 128, starting with "
            "a letter or digit)"
        )
    return model_id


class ModelRegistry:
    """Model folders under ``s3://bucket/prefix<id>/``; ``s3`` is a boto3 S3 client (or a
    callable that makes one when first needed, so a function's init pays nothing for it)."""

    def __init__(self, s3: Any, bucket: str, prefix: str = "models/", cache_dir: str | Path = "/tmp/models"):
        self._s3 = s3
        self.bucket = bucket
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self.cache_dir = Path(cache_dir)
        self._lock = threading.Lock()

    @property
    def s3(self) -> Any:
        if callable(self._s3) and not hasattr(self._s3, "get_object"):
            self._s3 = self._s3()
        return self._s3

    def where(self, model_id: str = "") -> str:
        return f"s3://{self.bucket}/{self.prefix}{model_id}"

    def _key(self, model_id: str, name: str) -> str:
        return f"{self.prefix}{check_model_id(model_id)}/{name}"

    # -- publishing ----------------------------------------------------------------------------

    def publish(self, folder: str | Path) -> dict[str, Any]:
        """Upload a model folder under its card's id. Returns what was done (``published`` or
        ``unchanged``); refuses a folder whose file does not match its card, and another
        model under an id already taken."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ModelError(f"{folder} is not a folder (a model folder holds model.onnx and model.json)")
        card = ModelCard.load(folder)
        weights = folder / WEIGHTS
        if not weights.is_file():
            raise ModelError(f"no {WEIGHTS} in {folder}")
        if not card.sha256:
            raise ModelError(f"the card {folder / CARD} has no sha256 of {WEIGHTS}: it cannot be checked")
        check_model_id(card.id)
        digest = file_sha256(weights)
        if digest != card.sha256:
            raise ModelError(f"{weights} has sha256 {digest}, its card says {card.sha256}: not published")
        card_bytes = (folder / CARD).read_bytes()
        published = self.card(card.id, missing_ok=True)
        if published is not None:
            if published == json.loads(card_bytes):
                return {"id": card.id, "status": "unchanged", "where": self.where(card.id)}
            raise RegistryConflictError(
                f"{self.where(card.id)} already holds another model (sha256 {published.get('sha256')}); "
                f"give this one another id in {folder / CARD}"
            )
        self.s3.upload_file(
            str(weights),
            self.bucket,
            self._key(card.id, WEIGHTS),
            ExtraArgs={"Metadata": {"sha256": digest}, "ContentType": "application/octet-stream"},
        )
        try:  # the card last, and only if no one wrote one meanwhile: it makes the model visible
            self.s3.put_object(
                Bucket=self.bucket,
                Key=self._key(card.id, CARD),
                Body=card_bytes,
                ContentType="application/json",
                IfNoneMatch="*",
            )
        except self.s3.exceptions.ClientError as exc:
            if _code(exc) in ("PreconditionFailed", "ConditionalRequestConflict"):
                return self.publish(folder)  # published meanwhile: the same (unchanged) or a conflict
            raise
        return {
            "id": card.id,
            "status": "published",
            "where": self.where(card.id),
            "bytes": weights.stat().st_size,
        }

    # -- reading ---------------------------------------------------------------------------------

    def card(self, model_id: str, missing_ok: bool = False) -> dict[str, Any] | None:
        """The published card of ``model_id`` (None, or ModelUnavailableError, when absent)."""
        found = self._card_object(model_id, missing_ok)
        return found[0] if found else None

    def _card_object(self, model_id: str, missing_ok: bool) -> tuple[dict[str, Any], datetime] | None:
        """The card and when it was written (None, or ModelUnavailableError, when absent)."""
        try:
            response = self.s3.get_object(Bucket=self.bucket, Key=self._key(model_id, CARD))
            body = response["Body"].read()
        except self.s3.exceptions.ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404", "NotFound"):
                if missing_ok:
                    return None
                raise ModelUnavailableError(
                    f"model {model_id!r} is not in the registry {self.where()} (publish it: "
                    f"visual-search model publish DIR)"
                ) from None
            raise
        try:
            return json.loads(body), response["LastModified"]
        except ValueError:
            raise ModelUnavailableError(f"the card {self.where(model_id)}/{CARD} is not JSON") from None

    def models(self) -> Iterator[PublishedModel]:
        """Every published model (those whose card is written), by id."""
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix, Delimiter="/"):
            for common in page.get("CommonPrefixes") or []:
                model_id = common["Prefix"][len(self.prefix) :].rstrip("/")
                if not is_model_id(model_id):
                    continue  # not a model folder (.training/: the SageMaker jobs' files)
                try:
                    size = self.s3.head_object(Bucket=self.bucket, Key=self._key(model_id, WEIGHTS))
                    found = self._card_object(model_id, missing_ok=True)  # one read: card and date
                except self.s3.exceptions.ClientError:
                    continue  # an upload under way
                if found is None:
                    continue  # an upload under way: the card is written last
                card, created = found
                yield PublishedModel(
                    model_id,
                    created.isoformat(timespec="seconds"),
                    int(size["ContentLength"]),
                    card.get("sha256"),
                    base_model(card),
                    str(card.get("precision") or "fp32"),
                )

    def verify(self, model_id: str, sha256: str | None = None) -> dict[str, Any]:
        """Download the published file again and check it against its card (and the card
        against ``sha256``), whatever any cache holds: what a switch to the model requires."""
        import tempfile

        card = self._card_for(model_id, sha256)
        with tempfile.TemporaryDirectory(prefix="verify-") as scratch:
            self._download(model_id, card, Path(scratch) / "model")
        return card

    def fetch(self, model_id: str, sha256: str | None = None) -> Path:
        """The local folder of a published model: downloaded once into the cache, its file
        checked against its card (and the card against ``sha256``, the weights a collection
        was built with, when given)."""
        card = self._card_for(model_id, sha256)
        folder = self.cache_dir / f"{model_id}@{str(card.get('sha256'))[:16]}"
        if (folder / CARD).is_file():
            return folder
        with self._lock:
            if (folder / CARD).is_file():
                return folder
            return self._download(model_id, card, folder)

    def _card_for(self, model_id: str, sha256: str | None) -> dict[str, Any]:
        card = self.card(model_id)
        assert card is not None
        if sha256 and card.get("sha256") != sha256:
            raise ModelUnavailableError(
                f"model {model_id!r} in {self.where()} has sha256 {card.get('sha256')}, but the "
                f"catalogue was built with {sha256}: publish the model it was built with again"
            )
        return card

    def _download(self, model_id: str, card: dict[str, Any], folder: Path) -> Path:
        part = folder.with_name(f"{folder.name}.part-{os.getpid()}")
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir(parents=True)
        try:
            try:
                self.s3.download_file(self.bucket, self._key(model_id, WEIGHTS), str(part / WEIGHTS))
            except self.s3.exceptions.ClientError as exc:
                raise ModelUnavailableError(
                    f"model {model_id!r}: {self.where(model_id)}/{WEIGHTS} cannot be read ({_code(exc)})"
                ) from None
            digest = file_sha256(part / WEIGHTS)
            if digest != card.get("sha256"):
                raise ModelUnavailableError(
                    f"model {model_id!r} in {self.where()} is corrupt: its {WEIGHTS} has sha256 "
                    f"{digest}, its card says {card.get('sha256')}"
                )
            (part / CARD).write_text(json.dumps(card))
            if folder.exists():  # another process of this instance's /tmp got there first
                shutil.rmtree(part)
            else:
                part.rename(folder)
            return folder
        except BaseException:
            shutil.rmtree(part, ignore_errors=True)
            raise
