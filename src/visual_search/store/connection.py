"""Connecting to Qdrant: the API key (SSM / Secrets Manager / environment, re-read when rotated)
and the qdrant-client for the configured mode."""

from __future__ import annotations

import threading
import time

from qdrant_client import QdrantClient

from ..config import StoreSettings
from ..errors import StoreUnavailableError
from ..observability import logger

KEY_MAX_AGE_S = 300  # how long a key read from SSM / Secrets Manager is used before re-reading


def resolve_api_key(settings: StoreSettings, force: bool = False) -> str | None:
    """The Qdrant API key: from SSM Parameter Store or Secrets Manager (cached for
    ``KEY_MAX_AGE_S``; ``force`` reads it again now), else the environment."""
    if settings.api_key_parameter:
        from aws_lambda_powertools.utilities import parameters

        return parameters.get_parameter(
            settings.api_key_parameter, decrypt=True, max_age=KEY_MAX_AGE_S, force_fetch=force
        )
    if settings.api_key_secret:
        from aws_lambda_powertools.utilities import parameters

        return parameters.get_secret(settings.api_key_secret, max_age=KEY_MAX_AGE_S, force_fetch=force)
    return settings.api_key


def key_is_stored(settings: StoreSettings) -> bool:
    """Whether the key lives in SSM or Secrets Manager, where it can be rotated under us."""
    return bool(settings.url and (settings.api_key_parameter or settings.api_key_secret))


def connect(settings: StoreSettings, api_key: str | None = None) -> QdrantClient:
    """A qdrant-client for the configured mode: server URL, embedded folder or memory."""
    if settings.url:
        return QdrantClient(
            url=settings.url,
            api_key=api_key or resolve_api_key(settings),
            timeout=max(1, round(settings.timeout_s)),
            prefer_grpc=False,
            # no version round trip in the Lambda init phase; errors surface
            # on first use as StoreUnavailableError instead
            check_compatibility=False,
        )
    if settings.path == ":memory:":
        return QdrantClient(location=":memory:")
    try:
        return QdrantClient(path=settings.path)
    except RuntimeError as exc:
        if "already accessed" not in str(exc):
            raise
        raise StoreUnavailableError(
            f"the embedded Qdrant folder {settings.path} is in use by another process (a running "
            f"`visual-search dev`?): embedded Qdrant allows one; stop it, use another QDRANT_PATH, "
            f"or run a Qdrant server and set QDRANT_URL"
        ) from None


class Connection:
    """The qdrant-client of a store, re-made when the API key it was made with is rotated.

    A key kept in SSM or Secrets Manager is read again every ``KEY_MAX_AGE_S`` of wall-clock
    time, so a warm or SnapStart-restored function picks up a new key without a redeploy (with
    both keys valid for that long, a rotation fails no request); a 401/403 makes it read the key
    at once (``refresh``).
    """

    def __init__(self, client: QdrantClient, settings: StoreSettings):
        self._client = client
        self.settings = settings
        self._rotates = key_is_stored(settings)
        self._key = resolve_api_key(settings) if self._rotates else None
        self._check_at = time.time() + KEY_MAX_AGE_S  # wall clock: right after a SnapStart restore
        self._lock = threading.Lock()

    @property
    def client(self) -> QdrantClient:
        if self._rotates and time.time() >= self._check_at:
            self.refresh()
        return self._client

    def refresh(self) -> bool:
        """Read the key again now; True when it changed (and the client was re-made). If it
        cannot be read, the key in use is kept: it most likely still works."""
        if not self._rotates:
            return False
        self._check_at = time.time() + KEY_MAX_AGE_S
        try:
            return self._use(resolve_api_key(self.settings, force=True))
        except Exception as exc:
            logger.warning(
                "could not re-read the Qdrant API key; keeping the current one",
                extra={"error": type(exc).__name__},
            )
            return False

    def _use(self, key: str | None) -> bool:
        if key == self._key:
            return False
        with self._lock:
            if key != self._key:
                # The old client is dropped, not closed: another thread may be mid-request on it.
                self._client, self._key = connect(self.settings, key), key
        return True

    def reconnect(self) -> None:
        """A new client, with the key read again now (after a SnapStart restore: the snapshot's
        sockets are dead and the key may have been rotated since). Embedded Qdrant has no
        connection to renew."""
        if not self.settings.url:
            return
        key = resolve_api_key(self.settings, force=True) if self._rotates else None
        with self._lock:
            self._client, self._key = connect(self.settings, key), key
            self._check_at = time.time() + KEY_MAX_AGE_S

    def close(self) -> None:
        self._client.close()
