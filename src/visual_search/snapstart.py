"""SnapStart: what an instance resumed from the snapshot must make again.

With SnapStart (template.yaml: ``SnapStart: ApplyOn: PublishedVersions``) Lambda runs a
function's init once per published version, snapshots the memory, and starts every later
instance from a copy of it. Whatever the init made that belongs to one instance, or to one
moment, is made again by the after-restore hooks, in each restored instance:

- network clients: the Qdrant client (its HTTP connection pool), the boto3 clients (S3, and the
  SSM / Secrets Manager client of Powertools Parameters): sockets opened before the snapshot are
  dead after it, and shared by every copy;
- the Qdrant API key, read again from SSM / Secrets Manager now (it may have been rotated since
  the snapshot was taken, days ago);
- random state: every restored copy would otherwise draw the same "random" numbers.

Time taken at init is not kept anywhere it matters: the key's re-read deadline is wall-clock
time (``time.time()``, which is right after a restore) and is reset here; the presigned-URL
cache is empty in the snapshot (the init signs no URL, and URLs are bound to the credentials
that signed them); ``indexed_at`` and the re-index stamps are taken per call.

``snapshot_restore_py`` is provided by Lambda's python3.12+ runtime (and on PyPI as
``snapshot-restore-py``, for tests); without it, nothing is ever restored and registering a
hook does nothing.
"""

from __future__ import annotations

import gc
import os
import random
from collections.abc import Callable
from typing import Any

try:
    from snapshot_restore_py import register_after_restore as _register
except ImportError:  # not in Lambda and not installed: no snapshot is ever restored here
    _register = None


def after_restore(func: Callable[[], Any]) -> Callable[[], Any]:
    """Decorator: run ``func`` in every instance restored from a SnapStart snapshot."""
    if _register is not None:
        _register(func)
    return func


def snapshotted_init() -> bool:
    """Whether this init is paid once for many instances (Lambda sets
    AWS_LAMBDA_INITIALIZATION_TYPE: snap-start, provisioned-concurrency or on-demand)."""
    return os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE") in ("snap-start", "provisioned-concurrency")


def prewarm(*clients: Any) -> None:
    """Make lazily created clients now when the init is snapshotted: their cost (for S3, a
    botocore session and the service model, ~0.1 s) then lands in the snapshot, and the one
    re-made after a restore reuses boto3's warm default session. An on-demand init leaves them
    to the first request that needs one."""
    if snapshotted_init():
        for client in clients:
            client.get()


def in_lambda() -> bool:
    """Whether this process is a Lambda execution environment (the runtime, or its emulator)."""
    return bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME"))


def begin_init() -> None:
    """The first step of a function's init, in a Lambda execution environment: the cyclic
    garbage collector is paused until ``finish_init``. The init's imports and models make
    ~240,000 objects the collector tracks, nearly all living as long as the instance; the ~350
    collections they set off (two of them full) walked them again and again for ~200 ms of CPU
    (~11% of a cold start) and freed ~800 unreachable objects, which the freeze now keeps with
    the ~26,000 it kept already. Outside Lambda nothing happens (tests and the local stack
    load the functions in a process that keeps running)."""
    if in_lambda():
        gc.disable()


def finish_init() -> None:
    """The last step of a function's init: hand everything the init made (modules, the model
    session, the store client, the API's models) to the garbage collector's permanent
    generation (``gc.freeze``). Those objects live as long as the instance; left in the
    collected generations, every full collection walks all of them again: ~60 ms of CPU here,
    in whichever request allocates enough to start one (making the S3 client does).

    A snapshotted init first collects the init's garbage: once, into the snapshot. An on-demand
    init keeps it (a few MB: unreachable objects the library imports left) rather than pay
    that full collection in its cold start. Outside Lambda nothing happens: the tests and the
    local stack load the functions again and again in one process, where each load would pin
    the garbage of the ones before it."""
    if not in_lambda():
        return
    if snapshotted_init():
        gc.collect()
    gc.freeze()
    gc.enable()  # paused by begin_init


def renew(catalog: Any) -> None:
    """What every restored instance needs, whichever function: new random state, new clients
    for SSM / Secrets Manager, and a new Qdrant client made with the key as it is now."""
    random.seed()  # from os.urandom, different in each instance
    try:
        from aws_lambda_powertools.utilities.parameters import base

        base.DEFAULT_PROVIDERS.clear()  # their boto3 clients are re-made on the next read
    except (ImportError, AttributeError):  # pragma: no cover - another Powertools layout
        pass
    catalog.reconnect()
