"""Synthetic datasets in the exact on-disk formats of the real ones, built at test time.

Tiny and random, so the tests run the real parsing code without binary files in the repo.
"""

from __future__ import annotations

import io
import os
import pickle
import socket
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

OMNIGLOT_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "omniglot"


def block_network(monkeypatch) -> None:
    """Any socket connection fails the test: loaders must never reach the network."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a test tried to open a network connection: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def omniglot_zip(
    root: Path, top: str, alphabets: list[str], characters: int = 2, drawers: int = 20, seed=0
) -> Path:
    """``<root>/<top>.zip`` laid out as ``<top>/<Alphabet>/characterNN/<id>_<drawer>.png``.

    Each image is 105x105 one-bit noise, mostly light with dark dots, like the real strokes.
    """
    rng = np.random.default_rng(seed)
    path = root / f"{top}.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for a, alphabet in enumerate(alphabets):
            for c in range(1, characters + 1):
                for d in range(1, drawers + 1):
                    name = f"{top}/{alphabet}/character{c:02d}/{a * 100 + c:04d}_{d:02d}.png"
                    archive.writestr(name, png(rng.random((105, 105)) > 0.1))
    return path


def edit_zip(path: Path, changes: dict[str, bytes | None]) -> None:
    """Rewrites the archive with each named member replaced by its bytes (added if new), or
    removed if None: how the tests damage an otherwise well-formed archive."""
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members.update(changes)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            if data is not None:
                archive.writestr(name, data)


def wnid(i: int) -> str:
    return f"n{1532829 + i:08d}"


def mini_imagenet_csv(
    root: Path, split: str, classes: list[str], per_class: int, size=(84, 84), seed=0
) -> dict[str, np.ndarray]:
    """``<split>.csv`` and its JPEGs in ``images/``; returns the images as Pillow decodes them.

    Rows are interleaved across classes, so the loader must group them by label.
    """
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    decoded = {label: [] for label in classes}
    rows = ["filename,label"]
    for i in range(per_class):
        for label in classes:
            filename = f"{label}{i + 1:08d}.jpg"
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "images" / filename, quality=90)
            decoded[label].append(np.asarray(Image.open(root / "images" / filename)))
            rows.append(f"{filename},{label}")
    (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return {label: np.stack(images) for label, images in decoded.items()}


def mini_imagenet_pickle(root: Path, split: str, images: dict[str, np.ndarray], seed=0) -> Path:
    """``mini-imagenet-cache-<split>.pkl``: ``{"image_data", "class_dict"}``, rows shuffled."""
    stacked = np.concatenate(list(images.values()))
    order = np.random.default_rng(seed).permutation(len(stacked))  # row order = file order
    rows_of = np.argsort(order)  # where each original image ends up
    class_dict, start = {}, 0
    for label, block in images.items():
        class_dict[label] = [int(r) for r in rows_of[start : start + len(block)]]
        start += len(block)
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"mini-imagenet-cache-{split}.pkl"
    with open(path, "wb") as f:
        pickle.dump({"image_data": stacked[order], "class_dict": class_dict}, f, protocol=4)
    return path


class _RunsShell:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def malicious_pickle(path: Path, marker: Path) -> Path:
    """A pickle that, if loaded by ``pickle.load``, runs ``touch <marker>``."""
    payload = {"image_data": _RunsShell(f"touch {marker}"), "class_dict": {}}
    path.write_bytes(pickle.dumps(payload))
    return path
