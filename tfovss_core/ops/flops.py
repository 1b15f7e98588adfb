"""Counting the floating-point work actually done, and the machine's own matmul rate.

:func:`count_flops` runs a callable under :class:`torch.utils.flop_counter.FlopCounterMode`, which
sees every aten matmul-like op that is executed (``mm``/``addmm``/``bmm``/``baddbmm``, convolutions,
SDPA kernels), with their real shapes. torch's table lacks the CPU flash-attention kernel that
``F.scaled_dot_product_attention`` dispatches to on a CPU, so it is added here with torch's own
SDPA formula. The count is of multiply-adds x 2 in matmuls and convolutions only: element-wise
work (softmax, GELU, LayerNorm, bilinear upsampling) is not counted, as is usual for model FLOPs.

:func:`matmul_rate` measures the sustained FLOP/s of one large square matmul on the current
device and thread count, as the reference for "percent of the machine's limit".
"""
from __future__ import annotations

import contextlib
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _custom_mapping() -> dict:
    mapping = {}
    aten = torch.ops.aten
    for name in ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_fused_attention_overrideable"):
        op = getattr(aten, name, None)
        if op is not None:
            mapping[op] = _sdpa_cpu_flops   # FlopCounterMode passes shapes (its shape_wrapper)
    return mapping


@dataclass
class FlopCount:
    """Total matmul/conv FLOPs of one call and their split by aten op."""

    total: int
    by_op: dict[str, int] = field(default_factory=dict)
    result: Any = None

    @property
    def gflop(self) -> float:
        return self.total / 1e9


def count_flops(fn: Callable, *args, **kwargs) -> FlopCount:
    """Runs ``fn(*args, **kwargs)`` once and counts the FLOPs of the matmuls it executed."""
    from torch.utils.flop_counter import FlopCounterMode
    mode = FlopCounterMode(display=False, custom_mapping=_custom_mapping())
    with mode:
        result = fn(*args, **kwargs)
    counts = mode.get_flop_counts().get("Global", {})
    by_op = {str(k).replace("aten.", ""): int(v) for k, v in counts.items()}
    return FlopCount(total=int(mode.get_total_flops()), by_op=by_op, result=result)


@dataclass
class MatmulRate:
    n: int
    flop_per_s_best: float
    flop_per_s_median: float
    device: str
    dtype: str
    threads: int


def matmul_rate(n: int = 2048, repeats: int = 5, device=None, dtype=torch.float32) -> MatmulRate:
    """Sustained FLOP/s of an ``n x n @ n x n`` matmul (CPU: thread CPU time; CUDA: events).

    On a CPU the time is the calling thread's CPU time (``time.thread_time``) when torch runs one
    thread, which keeps the figure stable when other processes share the machine; with more
    threads it is wall time.
    """
    device = torch.device(device or "cpu")
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    flop = 2.0 * n ** 3
    times = []
    with torch.inference_mode():
        a @ b  # warm-up
        for _ in range(repeats):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                a @ b
                end.record()
                torch.cuda.synchronize(device)
                times.append(start.elapsed_time(end) / 1e3)
            else:
                clock = time.thread_time if torch.get_num_threads() == 1 else time.perf_counter
                t = clock()
                a @ b
                times.append(clock() - t)
    return MatmulRate(n=n, flop_per_s_best=flop / min(times), flop_per_s_median=flop / statistics.median(times),
                      device=str(device), dtype=str(dtype).replace("torch.", ""), threads=torch.get_num_threads())


def trunk_flops(backbone, images: torch.Tensor, request) -> FlopCount:
    """FLOPs of ``backbone.run_trunk(images, request)`` (patch embedding + frozen blocks)."""
    with torch.inference_mode():
        return count_flops(backbone.run_trunk, images, request)


# -- precision and memory budget of the window batches (used by the inference driver) ----------------
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def autocast(device, precision: str):
    """The autocast context of ``precision`` on ``device`` (a no-op for ``"fp32"``).

    Inside it open_clip's/our GEMMs and SDPA run in half precision with fp32 accumulation, while
    LayerNorm, softmax and the residual stream stay fp32 (autocast's own policy plus
    :meth:`VisionBackbone.similarity_attention`, which computes explicit attention maps in fp32).
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    device = torch.device(device)
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def window_bytes(backbone, crop_hw: tuple[int, int], precision: str = "fp32") -> int:
    """A generous estimate of the activation memory one window needs in a forward pass.

    Residual streams (fp32) for up to half the blocks kept by a method, the ``(L, 4C)`` MLP hidden
    state twice, q/k/v, and three explicit ``heads x L x L`` fp32 attention maps (the methods'
    last blocks). The same for every method, so methods sharing a trunk batch windows alike.
    """
    gh, gw = crop_hw[0] // backbone.patch, crop_hw[1] // backbone.patch
    tokens, width = gh * gw + 1, backbone.width
    half = 2 if precision in _DTYPES else 4
    stream = tokens * width * 4
    kept = (backbone.depth // 2 + 2) * stream
    working = tokens * width * half * (2 * 4 + 3 + 2)
    attention = 3 * backbone.heads * tokens * tokens * 4
    return kept + working + attention


def memory_budget(device) -> int:
    """Bytes the window batches may use: half the free GPU memory, or 512 MiB of host memory
    (bigger batches give no speed on a CPU) capped at a quarter of the available RAM."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    budget = 512 << 20
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        budget = min(budget, available // 4)
    except (ValueError, OSError, AttributeError):
        pass
    return budget


def auto_batch_size(backbone, crop_hw: tuple[int, int], n_windows: int, device, precision: str = "fp32",
                    budget: int | None = None) -> int:
    """How many windows of ``crop_hw`` to run per forward pass within the memory budget."""
    per_window = window_bytes(backbone, crop_hw, precision)
    budget = memory_budget(device) if budget is None else budget
    return max(1, min(n_windows, budget // max(per_window, 1)))


__all__ = ["FlopCount", "count_flops", "MatmulRate", "matmul_rate", "trunk_flops", "autocast", "window_bytes",
           "memory_budget", "auto_batch_size"]
