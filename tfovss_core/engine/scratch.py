"""Scratch tensors reused from image to image.

Window averaging and the pre-label path fill maps of tens to hundreds of MB per image (the
window canvas, one window's upsampled maps, every query's full-resolution logits). A fresh tensor
of that size is fresh pages from the kernel, and on a CPU their page faults cost about as much as
the arithmetic that fills them (bench/RESULTS.md). :class:`Scratch` keeps one tensor per name and
thread and hands it out again while the shape, dtype, device and layout match.

A scratch tensor must not outlive the call that asked for it: the next request for the same name
on the same thread returns the same memory. Tensors that a caller receives are never scratch.
"""
from __future__ import annotations

import threading

import torch


class Scratch:
    """Named scratch tensors, one set per thread; tensors over ``max_bytes`` are not kept."""

    def __init__(self, max_bytes: int = 256 * 2**20):
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._by_thread: dict[int, dict[str, torch.Tensor]] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device,
            memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
        """An uninitialised tensor of this shape, dtype, device and layout: the kept one when it
        matches, else a new one (kept when it is at most ``max_bytes``)."""
        shape, device = tuple(shape), torch.device(device)
        with self._lock:
            tensors = self._by_thread.setdefault(threading.get_ident(), {})
        kept = tensors.get(name)
        if (kept is not None and tuple(kept.shape) == shape and kept.dtype == dtype and kept.device == device
                and kept.is_contiguous(memory_format=memory_format)):
            return kept
        tensors.pop(name, None)      # the old one goes before the new one is allocated
        with torch.inference_mode(False):   # a normal tensor: writable both in and out of inference mode
            tensor = torch.empty(shape, dtype=dtype, device=device, memory_format=memory_format)
        if tensor.numel() * tensor.element_size() <= self.max_bytes:
            tensors[name] = tensor
        return tensor

    def zeros(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device) -> torch.Tensor:
        """:meth:`get`, zero-filled."""
        return self.get(name, shape, dtype, device).zero_()

    def holds(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` is one this thread's requests keep (and will hand out again)."""
        with self._lock:
            tensors = self._by_thread.get(threading.get_ident(), {})
        return any(kept is tensor for kept in tensors.values())

    def __getstate__(self) -> dict:
        # a copy (pickled to another process, e.g. a Ray actor) starts empty: kept maps are only
        # memory, and a lock cannot travel
        return {"max_bytes": self.max_bytes}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    @property
    def nbytes(self) -> int:
        """Bytes kept, over every thread."""
        with self._lock:
            return sum(t.numel() * t.element_size() for ts in self._by_thread.values() for t in ts.values())

    def release(self) -> None:
        """Drops every kept tensor (of every thread)."""
        with self._lock:
            self._by_thread.clear()


__all__ = ["Scratch"]
