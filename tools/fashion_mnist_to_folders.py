"""Convert Fashion-MNIST (Debian package `dataset-fashion-mnist`) into an image folder that
`visual-search eval` reads: one subfolder per class, PNG files.

    apt-get install dataset-fashion-mnist
    .venv/bin/python tools/fashion_mnist_to_folders.py --count 1000 --out /tmp/fashion-mnist
    .venv/bin/visual-search eval /tmp/fashion-mnist

The first ``count`` test images are taken (the test split is balanced: ~100 per class at 1000).
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np
from PIL import Image

SOURCE = Path("/usr/share/datasets/fashion-mnist")
CLASSES = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
]


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--source", type=Path, default=SOURCE)
    args = parser.parse_args()
    images = read_idx(args.source / "t10k-images-idx3-ubyte.gz")[: args.count]
    labels = read_idx(args.source / "t10k-labels-idx1-ubyte.gz")[: args.count]
    for n, (pixels, label) in enumerate(zip(images, labels)):
        folder = args.out / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{n:05d}.png")
    print(f"wrote {len(images)} images in {len(set(labels.tolist()))} classes to {args.out}")


if __name__ == "__main__":
    main()
