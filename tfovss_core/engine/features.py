"""Dense image features, the part of a prediction that does not depend on the vocabulary.

For a method whose image side does not read the text (its card says ``text_independent=True``),
a prediction splits at the text product: :meth:`Segmenter.encode` runs the windows through the
model once and keeps, per batch of windows, the unit patch features and their geometry
(:class:`DenseFeatures`); :meth:`Segmenter.segment` takes any vocabulary to a mask and
probabilities from them (a text encoding, the text product and the post-processing: no model).
The result equals ``predict`` with the same settings.

A :class:`FeatureCache` keeps features by key, bounded in bytes (LRU), optionally backed by a
directory (float16 on disk, bounded in bytes too). The key (:func:`feature_key`) holds everything
the features depend on: the image's pixels, the weights' digest, the method and its options, the
image-side settings and the device kind; a change of any of them is a different key, so stale
features are never served.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tfovss_core.errors import ConfigError

# The driver settings that change the features (resize, windows, batching, precision). The rest
# (logit scale, thresholds, PAMR, templates) act after the text product.
IMAGE_SIDE_SETTINGS = ("short_side", "max_long_side", "crop", "stride", "pad_to_patch", "batch_size",
                       "precision")
# Bumped when the layout of DenseFeatures or of the files on disk changes.
FEATURE_FORMAT = 1


@dataclass
class WindowBatch:
    """One batch of windows as the model saw them.

    ``boxes`` are ``(y1, y2, x1, x2)`` in the resized image; every window of a batch has the same
    size, zero-padded by ``padding`` (left, right, top, bottom) before the model; ``features``
    ``(n, gh*gw, D)`` are the method's L2-normalised patch features on the ``grid`` ``(gh, gw)``.
    """

    boxes: list[tuple[int, int, int, int]]
    grid: tuple[int, int]
    padding: tuple[int, int, int, int]
    features: torch.Tensor

    @property
    def nbytes(self) -> int:
        return self.features.element_size() * self.features.nelement()


@dataclass
class DenseFeatures:
    """The image side of one prediction: what any vocabulary needs to segment this image.

    * ``batches``: the windows' features and geometry (:class:`WindowBatch`), in the order the
      model ran them (the order the driver merges them in); empty when ``text_independent`` is
      False: the method's image side reads the text, so :meth:`Segmenter.segment` runs a full
      prediction on ``resized``'s source instead, and says so.
    * ``resized``: the resized uint8 image ``(h, w, 3)`` the windows were cut from (the network
      input is rebuilt from it exactly; PAMR's guide is made from it).
    * ``image_size``: the original ``(H, W)``: the output resolution.
    * ``key``: the cache key (:func:`feature_key`); it names the weights, method, options and
      image-side settings the features were made with.

    Tensors live on any device; :meth:`to` moves them (values are unchanged by a move).
    """

    batches: list[WindowBatch]
    resized: np.ndarray
    image_size: tuple[int, int]
    key: str
    method: str
    text_independent: bool
    name: str = ""
    image_hash: str = ""                               # :func:`image_digest` of the original image
    source: object = field(default=None, repr=False)   # the image itself, kept for a fall-back predict

    @property
    def resized_size(self) -> tuple[int, int]:
        return tuple(self.resized.shape[:2])

    @property
    def nbytes(self) -> int:
        """Memory held: the features and the resized image (the source image is not counted)."""
        return sum(b.nbytes for b in self.batches) + int(self.resized.nbytes)

    def to(self, device) -> DenseFeatures:
        moved = [WindowBatch(b.boxes, b.grid, b.padding, b.features.to(device)) for b in self.batches]
        return DenseFeatures(moved, self.resized, self.image_size, self.key, self.method,
                             self.text_independent, self.name, self.image_hash, self.source)


def image_digest(rgb: np.ndarray) -> str:
    """The content hash of a decoded image (pixels and shape; not its file name or format)."""
    h = hashlib.sha256(np.ascontiguousarray(rgb).tobytes())
    h.update(repr(tuple(rgb.shape)).encode())
    return h.hexdigest()


def feature_key(image_hash: str, weights_digest: str, method: dict, settings: dict, device: str) -> str:
    """The key of an image's features: a digest of everything they depend on.

    ``method``: the method's description (name, options; ProxyCLIP's VFM); ``settings``: the
    driver settings by name (only :data:`IMAGE_SIDE_SETTINGS` are used); ``device``: the device
    kind (``"cpu"``, ``"cuda"``), whose kernels round differently.
    """
    image_side = {k: settings[k] for k in IMAGE_SIDE_SETTINGS}
    payload = json.dumps({"format": FEATURE_FORMAT, "image": image_hash, "weights": weights_digest,
                          "method": method, "settings": image_side, "device": device},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


class FeatureCache:
    """Features by key: an LRU in memory bounded by ``max_bytes``, and optionally a directory.

    ``directory``: features are also written there as float16 (half of float32's bytes), up to
    ``disk_max_bytes`` in all (the least recently used files go first). Features read back from disk are float16-rounded: their segmentation agrees
    with ``predict`` to float16 precision, not bit for bit. Thread-safe.
    """

    def __init__(self, max_bytes: int = 1 << 30, directory: str | os.PathLike | None = None,
                 disk_max_bytes: int = 10 << 30):
        if max_bytes < 0 or disk_max_bytes < 0:
            raise ConfigError(f"feature cache sizes must be >= 0, got max_bytes={max_bytes}, "
                              f"disk_max_bytes={disk_max_bytes}")
        self.max_bytes = int(max_bytes)
        self.directory = Path(directory) if directory is not None else None
        self.disk_max_bytes = int(disk_max_bytes)
        self._memory: OrderedDict[str, DenseFeatures] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.disk_hits = self.misses = 0
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)

    # -- memory ----------------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes held in memory."""
        return sum(f.nbytes for f in self._memory.values())

    def __len__(self) -> int:
        return len(self._memory)

    def __contains__(self, key: str) -> bool:
        return key in self._memory or (self.directory is not None and self._path(key).exists())

    def get(self, key: str) -> DenseFeatures | None:
        """The features of ``key`` (memory first, then disk), or None."""
        with self._lock:
            found = self._memory.get(key)
            if found is not None:
                self._memory.move_to_end(key)
                self.hits += 1
                return found
        loaded = self._read(key) if self.directory is not None else None
        with self._lock:
            if loaded is None:
                self.misses += 1
                return None
            self.disk_hits += 1
            self._remember(key, loaded)
        return loaded

    def put(self, features: DenseFeatures) -> None:
        """Keeps ``features`` under its key (in memory if it fits the cap; on disk if configured)."""
        with self._lock:
            self._remember(features.key, features)
        if self.directory is not None:
            self._write(features)

    def clear(self) -> None:
        with self._lock:
            self._memory.clear()

    def _remember(self, key: str, features: DenseFeatures) -> None:
        self._memory.pop(key, None)
        if features.nbytes > self.max_bytes:
            return      # larger than the whole cache: kept nowhere in memory
        self._memory[key] = features
        total = self.nbytes
        while total > self.max_bytes:
            _, evicted = self._memory.popitem(last=False)
            total -= evicted.nbytes

    # -- disk ------------------------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.npz"

    @property
    def disk_bytes(self) -> int:
        if self.directory is None:
            return 0
        return sum(p.stat().st_size for p in self.directory.glob("*.npz"))

    def _write(self, features: DenseFeatures) -> None:
        arrays = {"resized": features.resized}
        meta = {"format": FEATURE_FORMAT, "key": features.key, "method": features.method,
                "image_size": list(features.image_size), "name": features.name,
                "image_hash": features.image_hash, "batches": []}
        for i, b in enumerate(features.batches):
            arrays[f"features_{i}"] = b.features.detach().to("cpu", torch.float16).numpy()
            meta["batches"].append({"boxes": [list(box) for box in b.boxes], "grid": list(b.grid),
                                    "padding": list(b.padding)})
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        path = self._path(features.key)
        # written under a temporary name and renamed: a reader never sees half a file
        fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
        self._trim_disk()

    def _read(self, key: str) -> DenseFeatures | None:
        path = self._path(key)
        try:
            with np.load(path) as data:
                meta = json.loads(bytes(data["meta"]).decode())
                if meta.get("format") != FEATURE_FORMAT or meta.get("key") != key:
                    return None
                batches = [WindowBatch([tuple(box) for box in m["boxes"]], tuple(m["grid"]), tuple(m["padding"]),
                                       torch.from_numpy(data[f"features_{i}"].astype(np.float32)))
                           for i, m in enumerate(meta["batches"])]
                resized = data["resized"]
        except (OSError, ValueError, KeyError):
            return None     # missing, or written by an interrupted process: recomputed
        os.utime(path)      # recently used: trimmed last
        return DenseFeatures(batches, resized, tuple(meta["image_size"]), key, meta["method"], True, meta["name"],
                             meta["image_hash"])

    def _trim_disk(self) -> None:
        files = sorted(self.directory.glob("*.npz"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        for p in files:
            if total <= self.disk_max_bytes:
                break
            total -= p.stat().st_size
            p.unlink(missing_ok=True)
