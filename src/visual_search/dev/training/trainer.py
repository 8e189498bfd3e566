"""The fine-tuning loop: normalised-softmax loss over product proxies, AdamW, one-cycle.

The network stays in eval mode throughout: BatchNorm running statistics are frozen everywhere
(a catalogue's batches of 32 are too few and too alike to re-estimate them) and drop-connect is
off; the stem and the lower blocks get no gradient. Each product has a proxy, a learnable unit
vector initialised at the mean base embedding of its photos; the loss is the cross-entropy of
``scale * cos(embedding, proxy)`` over the products. Batches, order and augmentation are drawn
from generators seeded by (seed, epoch, step), so a run is reproducible and a resumed run takes
the same path. A checkpoint is written after every epoch and when Ctrl-C stops the run (after
the step in progress), and a run with the same key resumes from it.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import PhotoCache
from .network import EmbeddingNet


@dataclass(frozen=True)
class Recipe:
    """The training recipe (docs/quality.md: measured on grocery-dev)."""

    epochs: int = 4
    batch_size: int = 32
    peak_lr: float = 1e-4
    weight_decay: float = 1e-2
    frozen_blocks: int = 8  # the stem and the first 8 of Lite0's 16 blocks
    loss_scale: float = 16.0
    crop_area: tuple[float, float] = (0.6, 1.0)
    jitter: float = 0.2
    hflip: bool = True
    pct_start: float = 0.3  # share of the steps the one-cycle schedule warms up for

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["crop_area"] = list(self.crop_area)
        out.update(
            loss="normalised softmax over product proxies (initialised at mean base embeddings)",
            optimizer="AdamW",
            schedule="one-cycle (cosine)",
            batchnorm="running statistics frozen",
            augmentation="random resized crop, horizontal flip, brightness/contrast/saturation jitter",
        )
        return out


@dataclass
class EpochLog:
    epoch: int
    loss: float
    seconds: float


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step: int = 0  # steps completed within the current epoch
    history: list[EpochLog] = field(default_factory=list)
    seconds: float = 0.0  # training time spent so far (over resumes)
    losses: list[float] = field(default_factory=list)  # of the current epoch's completed steps
    epoch_seconds: float = 0.0  # spent on the current epoch before a resume


class Interrupted(Exception):
    """Ctrl-C during training; the checkpoint holds the last completed step."""


class Trainer:
    def __init__(
        self,
        net: EmbeddingNet,
        proxies: np.ndarray,
        cache: PhotoCache,
        train: Sequence[int] | np.ndarray,
        labels: Sequence[int] | np.ndarray,
        recipe: Recipe,
        seed: int,
        device: str,
        checkpoint: Path,
        run_key: str,
        log: Callable[[str], None] = print,
    ):
        # channels-last: EfficientNet's depthwise convolutions run ~1.5x faster so on the CPU
        self.net = net.to(device, memory_format=torch.channels_last).eval()
        self.net.freeze_lower(recipe.frozen_blocks)
        self.proxies = torch.nn.Parameter(torch.from_numpy(np.asarray(proxies, np.float32)).to(device))
        self.cache, self.train, self.labels = cache, list(train), np.asarray(labels)
        self.recipe, self.seed, self.device = recipe, seed, device
        self.checkpoint, self.run_key, self.log = checkpoint, run_key, log
        self.steps_per_epoch = max(1, math.ceil(len(self.train) / recipe.batch_size))
        params = [p for p in self.net.parameters() if p.requires_grad] + [self.proxies]
        self.optimizer = torch.optim.AdamW(params, lr=recipe.peak_lr, weight_decay=recipe.weight_decay)
        self.scheduler = None
        if recipe.epochs > 0:
            self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
                self.optimizer,
                max_lr=recipe.peak_lr,
                total_steps=recipe.epochs * self.steps_per_epoch,
                pct_start=recipe.pct_start,
            )
        self.state = TrainState()
        self._stop = False

    # -- checkpoints ------------------------------------------------------------------------------

    def resume(self) -> bool:
        """Load the checkpoint if it belongs to this run; True when it did."""
        if not self.checkpoint.is_file():
            return False
        saved = torch.load(self.checkpoint, map_location=self.device, weights_only=True)
        if saved.get("run_key") != self.run_key:
            self.log(f"ignoring {self.checkpoint}: it belongs to another run (other data, recipe or seed)")
            return False
        self.net.load_state_dict(saved["net"])
        with torch.no_grad():
            self.proxies.copy_(saved["proxies"])
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.scheduler is not None and saved.get("scheduler"):
            self.scheduler.load_state_dict(saved["scheduler"])
        state = saved["state"]
        state["history"] = [EpochLog(**e) for e in state["history"]]
        self.state = TrainState(**state)
        self.log(f"resuming from {self.checkpoint}: epoch {self.state.epoch + 1}, step {self.state.step}")
        return True

    def save(self) -> None:
        tmp = self.checkpoint.with_suffix(".tmp")
        torch.save(
            {
                "run_key": self.run_key,
                "net": self.net.state_dict(),
                "proxies": self.proxies.detach().cpu(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler else None,
                "state": asdict(self.state),
            },
            tmp,
        )
        tmp.replace(self.checkpoint)

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> TrainState:
        """Train the remaining epochs; Interrupted (checkpoint saved) on Ctrl-C."""
        previous = signal.getsignal(signal.SIGINT)
        try:
            signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:  # not the main thread: Ctrl-C is not ours to catch
            previous = None
        try:
            while self.state.epoch < self.recipe.epochs:
                self._epoch()
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        return self.state

    def _on_sigint(self, signum, frame) -> None:
        if self._stop:  # a second Ctrl-C: stop now, the last checkpoint stays
            raise KeyboardInterrupt
        self._stop = True
        self.log("stopping after this step (Ctrl-C again to stop at once) ...")

    def _epoch(self) -> None:
        epoch, recipe, state = self.state.epoch, self.recipe, self.state
        order = np.random.default_rng([self.seed, epoch]).permutation(self.train)
        started = time.perf_counter()
        for step in range(state.step, self.steps_per_epoch):
            batch = order[step * recipe.batch_size : (step + 1) * recipe.batch_size]
            state.losses.append(self._step(batch, np.random.default_rng([self.seed, epoch, step])))
            state.step = step + 1
            if self._stop and state.step < self.steps_per_epoch:
                spent = time.perf_counter() - started
                state.seconds += spent
                state.epoch_seconds += spent
                self.save()
                raise Interrupted(
                    f"stopped at epoch {epoch + 1}, step {step + 1}/{self.steps_per_epoch}; "
                    f"run the same command again to resume from {self.checkpoint}"
                )
        spent = time.perf_counter() - started
        seconds = state.epoch_seconds + spent
        state.seconds += spent
        loss = float(np.mean(state.losses)) if state.losses else float("nan")
        state.history.append(EpochLog(epoch + 1, loss, seconds))
        state.epoch, state.step, state.losses, state.epoch_seconds = epoch + 1, 0, [], 0.0
        self.save()
        left = (recipe.epochs - state.epoch) * (state.seconds / max(1, len(state.history)))
        self.log(
            f"epoch {epoch + 1}/{recipe.epochs}: loss {loss:.4f}, {seconds:.0f} s, "
            f"ETA {_duration(left) if state.epoch < recipe.epochs else 'done'}"
        )
        if self._stop and state.epoch < recipe.epochs:
            raise Interrupted(
                f"stopped after epoch {epoch + 1}; "
                f"run the same command again to resume from {self.checkpoint}"
            )

    def _step(self, batch: np.ndarray, rng: np.random.Generator) -> float:
        recipe = self.recipe
        pixels = self.cache.augmented(batch, rng, recipe.crop_area, recipe.jitter, recipe.hflip)
        x = torch.from_numpy(pixels).to(self.device).contiguous(memory_format=torch.channels_last)
        y = torch.from_numpy(self.labels[batch]).to(self.device)
        embedding = self.net.embed(x)
        proxies = torch.nn.functional.normalize(self.proxies, dim=1)
        loss = torch.nn.functional.cross_entropy(recipe.loss_scale * embedding @ proxies.T, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return float(loss.detach())


def embed_all(
    net: EmbeddingNet,
    cache: PhotoCache,
    indices: Sequence[int],
    device: str,
    batch: int = 32,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Embeddings of cached photos, preprocessed as the service does."""
    net = net.to(device, memory_format=torch.channels_last).eval()
    out = np.zeros((len(indices), net.dim), np.float32)
    with torch.inference_mode():
        for start in range(0, len(indices), batch):
            chunk = list(indices[start : start + batch])
            x = (
                torch.from_numpy(cache.eval_batch(chunk))
                .to(device)
                .contiguous(memory_format=torch.channels_last)
            )
            out[start : start + len(chunk)] = net.embed(x).cpu().numpy()
            if progress:
                progress(len(chunk))
    return out


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"
