"""From per-query cosine logits to class probabilities and a mask (SCLIP-family post-processing)."""
from __future__ import annotations

import torch


def merge_synonyms(query_probs: torch.Tensor, query_class: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(Q, H, W)`` -> ``(C, H, W)``: each class takes the max probability over its queries.

    The merge happens after the softmax over all queries (no renormalisation), as in the repos.
    """
    if query_probs.shape[0] == num_classes and bool((query_class == torch.arange(num_classes,
                                                                                 device=query_class.device)).all()):
        return query_probs
    out = torch.full((num_classes, *query_probs.shape[1:]), float("-inf"), dtype=query_probs.dtype,
                     device=query_probs.device)
    index = query_class.view(-1, 1, 1).expand_as(query_probs)
    return out.scatter_reduce(0, index, query_probs, reduce="amax", include_self=True)


def apply_area_threshold(probs: torch.Tensor, area_thd: float) -> torch.Tensor:
    """Zeroes every non-background class whose argmax area is <= ``area_thd`` of the foreground.

    SCLIP's VOC21 rule: class 0 is background; shares are taken among non-background pixels of
    the hard argmax.
    """
    num_classes = probs.shape[0]
    counts = torch.bincount(probs.max(dim=0).indices.flatten(), minlength=num_classes)[1:].to(probs.dtype)
    keep = (counts > area_thd * counts.sum()).to(probs.dtype)
    probs = probs.clone()
    probs[1:] *= keep.view(-1, 1, 1)
    return probs


def probabilities_and_mask(logits: torch.Tensor, query_class: torch.Tensor, num_classes: int, *,
                           logit_scale: float, prob_thd: float = 0.0, area_thd: float | None = None,
                           renormalize: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw cosine logits ``(Q, H, W)`` -> class probabilities ``(C, H, W)`` and mask ``(H, W)``.

    ``softmax(logit_scale * logits)`` over queries, synonym max, optional area threshold, argmax,
    pixels whose top probability is below ``prob_thd`` -> class 0. With ``renormalize`` (NACLIP,
    ResCLIP) the returned probabilities are divided by their per-pixel sum *after* the mask.
    """
    probs = torch.softmax(logits * logit_scale, dim=0)
    probs = merge_synonyms(probs, query_class, num_classes)
    if area_thd is not None:
        probs = apply_area_threshold(probs, area_thd)
    # top value and class in one pass, the first index on ties (as the repos' argmax); on a CPU
    # ~3x faster than argmax(dim=0) over the outer axis of a (C, H, W) map
    top, mask = probs.max(dim=0)
    if prob_thd > 0:
        mask = torch.where(top < prob_thd, torch.zeros_like(mask), mask)
    if renormalize:
        probs = probs / probs.sum(dim=0, keepdim=True)
    return probs, mask


# -- the pre-label output path: the mask and the top probability, class chunk by class chunk ---------------
#
# The protocol path above holds every query's full-resolution logits several times over
# (``C x H x W x 4`` bytes per copy: 10.6 GB for ade847 on a 2048x1536 photo). The pre-label path
# below asks a callable for the full-resolution logits of a few classes' queries at a time and keeps
# only per-pixel running state, so its memory is bounded by ``classes_per_chunk``, not by the
# vocabulary.
#
# Why its masks are the protocol's: the chunks' logits are bit-identical to the protocol's (bilinear
# upsampling and PAMR treat channels independently); for one pixel the softmax is one shared
# denominator, so the merged class probabilities are ordered as the merged scaled logits, and the
# first-index argmax of the probabilities is the first-index argmax of the logits. That only fails
# where two distinct logits round to the same probability (a gap below ``TIE_MARGIN``), or where
# the top probability lies so close to ``prob_thd`` (or to 0) that the protocol's float32 sum and
# ours may fall on different sides. Those few pixels are recomputed with the protocol's own
# softmax on their gathered logits, so the decision there is the protocol's own.

#: scaled-logit gap below which two classes' float32 probabilities may round to the same value
#: (exp and the division each round by <= 2 ulp of 2**-24 relative; 1e-6 keeps a 4x margin)
TIE_MARGIN = 1e-6


def class_chunks(query_class: torch.Tensor, num_classes: int, classes_per_chunk: int) -> list[torch.Tensor]:
    """The query indices of each run of ``classes_per_chunk`` classes (every synonym of a class in one chunk)."""
    chunks = []
    for start in range(0, num_classes, classes_per_chunk):
        stop = min(start + classes_per_chunk, num_classes)
        chunks.append(torch.nonzero((query_class >= start) & (query_class < stop)).flatten())
    return chunks


def _top_two_distinct(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per pixel of ``(K, H, W)``: the max, its first index, and the largest value strictly below the max."""
    best, index = values.max(dim=0)
    below = values.masked_fill(values >= best, float("-inf")).max(dim=0).values
    return best, index, below


class _RunningTop:
    """First-index argmax over class chunks, with the distinct runner-up for the tie check."""

    def __init__(self, size, device):
        self.best = torch.full(size, float("-inf"), device=device)
        self.second = torch.full(size, float("-inf"), device=device)
        self.index = torch.zeros(size, dtype=torch.long, device=device)

    def update(self, class_logits: torch.Tensor, first_class: int) -> None:
        best, index, below = _top_two_distinct(class_logits)
        wins = best > self.best                        # strictly: an earlier class keeps a tie
        candidates = torch.stack([self.best, self.second, best, below])
        new_best = torch.maximum(self.best, best)
        self.second = candidates.masked_fill(candidates >= new_best, float("-inf")).max(dim=0).values
        self.index = torch.where(wins, index + first_class, self.index)
        self.best = new_best

    def near_tie(self) -> torch.Tensor:
        return (self.best - self.second) <= TIE_MARGIN


def _merge_chunk(scaled: torch.Tensor, chunk_query_class: torch.Tensor, first_class: int,
                 n_classes: int) -> torch.Tensor:
    """Synonym max of one chunk's scaled logits ``(q, H, W)`` -> ``(n_classes, H, W)``."""
    local = chunk_query_class - first_class
    if scaled.shape[0] == n_classes and bool((local == torch.arange(n_classes, device=local.device)).all()):
        return scaled
    return merge_synonyms(scaled, local, n_classes)


#: bytes of one block's ``(Q, pixels)`` scaled logits on the whole-vocabulary CPU path: small enough
#: that a block's rows of scaled logits and probabilities stay in a core's L2 cache, where the
#: protocol streams several ``(Q, H, W)`` maps through memory (``bench/output_path.py --blocks``)
BLOCK_BYTES = 768 * 2**10


def block_pixels_for(queries: int, n_pixels: int, device: torch.device | str = "cpu") -> int:
    """Pixels per block of :func:`mask_and_confidence_from_logits` for ``queries`` rows.

    On a CPU: a multiple of 64, a multiple of every CPU vector width (so each block's lanes fall
    where the protocol's do), of about :data:`BLOCK_BYTES`, and never a multiple of 1,024: the
    softmax walks down a block's rows, and rows 4 KiB apart share one set of the L1 cache (1,024
    pixels ran the softmax ~35 % slower than 1,088 at 171 queries). Elsewhere (CUDA): the whole
    image in one block, the protocol's very softmax call, in a few launches instead of hundreds.
    """
    if torch.device(device).type != "cpu":
        return max(n_pixels, 1)
    pixels = max(64, BLOCK_BYTES // (4 * max(queries, 1)) // 64 * 64)
    return pixels - 64 if pixels % 1024 == 0 else pixels


def mask_and_confidence_from_logits(logits: torch.Tensor, query_class: torch.Tensor, num_classes: int, *,
                                    logit_scale: float, prob_thd: float = 0.0, area_thd: float | None = None,
                                    renormalize: bool = False, with_confidence: bool = True,
                                    block_pixels: int | None = None
                                    ) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """The protocol's mask and top probability from every query's full-resolution logits ``(Q, H, W)``.

    The protocol's own scale and softmax over queries, on blocks of ``block_pixels`` pixels
    (default :func:`block_pixels_for`) instead
    of the whole image: a pixel's softmax reads only its own column and a block starts on a
    vector-lane boundary of the protocol's kernel, so every probability is bit-identical to the
    protocol's (the tests check it at several sizes, thread counts and block sizes), while a block's
    intermediates stay in cache and no ``(C, H, W)`` map is allocated. The decision needs no synonym
    merge: the top merged probability is the top query probability, and the protocol's first-index
    argmax over classes is the smallest class among the queries that reach it; both are read with
    ``amax`` (on a CPU an order of magnitude faster than ``max(dim=0)`` with indices).

    The area threshold needs the whole image's argmax first. It only zeroes dropped classes, so a
    pixel whose winner is kept keeps its winner and top probability; only the pixels won by a
    dropped class are recomputed (gathered into full vector lanes), with the dropped classes'
    probabilities zeroed as the protocol does. With ``renormalize`` and a confidence, the class
    sum changes everywhere, so every block is.
    Returns ``(mask, confidence or None, stats)`` as :func:`mask_and_confidence`.
    """
    q, height, width = logits.shape
    flat = logits.reshape(q, -1)
    n_pixels = flat.shape[1]
    device = logits.device
    if block_pixels is None:
        block_pixels = block_pixels_for(q, n_pixels, device)
    elif block_pixels <= 0 or block_pixels % 64:
        raise ValueError(f"block_pixels={block_pixels}: expected a positive multiple of 64 (the vector lanes)")
    identity = q == num_classes and bool((query_class == torch.arange(num_classes, device=device)).all())
    # amax of (reaches the top) x (num_classes - class) is num_classes - the first class reaching it;
    # in uint8 up to 255 classes, so the product needs no widening copy of the (Q, pixels) flags
    small = num_classes < 2**15
    rank_dtype = torch.uint8 if num_classes < 2**8 else torch.int16 if small else torch.int32
    rank = (num_classes - query_class).to(rank_dtype).view(-1, 1)
    top = torch.empty(n_pixels, dtype=torch.float32, device=device)
    top_rank = torch.empty(n_pixels, dtype=rank.dtype, device=device)
    class_sum = torch.empty(n_pixels, dtype=torch.float32, device=device) if renormalize else None
    starts = range(0, n_pixels, block_pixels)
    stats = {"passes": 1, "fallback_pixels": 0, "blocks": len(starts), "redone_pixels": 0}

    def block_probs(start: int) -> torch.Tensor:
        return torch.softmax(flat[:, start:start + block_pixels] * logit_scale, dim=0)

    def decide(start: int, probs: torch.Tensor) -> None:
        stop = start + probs.shape[1]
        best = torch.amax(probs, dim=0, out=top[start:stop])
        reaches = (probs == best).view(torch.uint8) if small else (probs == best).to(torch.int32)
        torch.amax(reaches * rank, dim=0, out=top_rank[start:stop])
        if class_sum is not None:
            merged = probs if identity else merge_synonyms(probs[:, :, None], query_class, num_classes)[:, :, 0]
            torch.sum(merged, dim=0, out=class_sum[start:stop])

    for start in starts:
        decide(start, block_probs(start))
    winner = num_classes - top_rank.long()

    if area_thd is not None:
        # the protocol's counts, in its dtype, from the same first-index argmax
        counts = torch.bincount(winner, minlength=num_classes)[1:].to(torch.float32)
        kept = (counts > area_thd * counts.sum()).to(torch.float32)
        if not bool(kept.all()):
            # x 1.0 or x 0.0 per query, as the protocol's per class (a class's max over its queries
            # is then the protocol's zeroed or untouched merged probability)
            query_kept = torch.cat([torch.ones(1, device=device), kept])[query_class].view(-1, 1)
            if renormalize and with_confidence:
                for start in starts:
                    decide(start, block_probs(start) * query_kept)
                stats["redone_pixels"] = n_pixels
            else:
                dropped_winner = (kept[(winner - 1).clamp(min=0)] == 0) & (winner > 0)
                # the image's last partial vector lane is the protocol's (and pass 1's) scalar tail:
                # its pixels are redone in their own block; every other pixel is gathered into full
                # lanes, where its column alone decides its values
                lanes_end = n_pixels - n_pixels % 64
                pixels = dropped_winner[:lanes_end].nonzero().flatten()
                if len(pixels):
                    width_padded = -(-len(pixels) // 64) * 64
                    gathered = flat.new_zeros((q, width_padded))
                    gathered[:, :len(pixels)] = flat.index_select(1, pixels)
                    probs = torch.softmax(gathered * logit_scale, dim=0)[:, :len(pixels)] * query_kept
                    best = torch.amax(probs, dim=0)
                    reaches = (probs == best).view(torch.uint8) if small else (probs == best).to(torch.int32)
                    top[pixels] = best
                    top_rank[pixels] = torch.amax(reaches * rank, dim=0)
                if bool(dropped_winner[lanes_end:].any()):
                    last = starts[-1]
                    decide(last, block_probs(last) * query_kept)
                stats["redone_pixels"] = int(dropped_winner.sum())
            winner = num_classes - top_rank.long()
            stats["passes"] = 2

    mask = winner
    if prob_thd > 0:
        mask = torch.where(top < prob_thd, torch.zeros_like(mask), mask)
    confidence = None
    if with_confidence:
        confidence = top / class_sum if class_sum is not None else top
        confidence = confidence.view(height, width)
    return mask.view(height, width), confidence, stats


def mask_and_confidence(full_res_logits, query_class: torch.Tensor, num_classes: int, size: tuple[int, int], *,
                        logit_scale: float, prob_thd: float = 0.0, area_thd: float | None = None,
                        renormalize: bool = False, classes_per_chunk: int = 16,
                        with_confidence: bool = True, reuse_chunks: bool = False
                        ) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """The protocol's mask (and top probability) without its ``(C, H, W)`` probability maps.

    ``full_res_logits(query_indices) -> (q, H, W)`` gives the raw cosine logits of those queries at
    the output resolution, bit-identical to the protocol path's (called once per chunk per pass).
    Returns ``(mask, confidence or None, stats)``: the mask (long), the top class probability
    (float32, after the area threshold and ``renormalize``, as ``SegmentationResult.confidence``)
    and ``stats`` (passes over the chunks, pixels decided by the protocol's own softmax).
    ``reuse_chunks``: keep every chunk's scaled and merged logits after the first pass, so a second
    pass (area threshold, fallback pixels) reads them instead of asking ``full_res_logits`` again.
    When one chunk holds the whole vocabulary (``classes_per_chunk >= num_classes``), its logits are
    asked for once and :func:`mask_and_confidence_from_logits` decides every pixel (faster, and
    exact without any fallback).
    """
    device = query_class.device
    chunks = class_chunks(query_class, num_classes, classes_per_chunk)
    if len(chunks) == 1:
        # the whole vocabulary fits at once: the protocol's own operations, block by block of pixels
        return mask_and_confidence_from_logits(
            full_res_logits(chunks[0]), query_class, num_classes, logit_scale=logit_scale, prob_thd=prob_thd,
            area_thd=area_thd, renormalize=renormalize, with_confidence=with_confidence)
    bounds = [(start, min(start + classes_per_chunk, num_classes)) for start in range(0, num_classes, classes_per_chunk)]
    stats = {"passes": 0, "fallback_pixels": 0, "chunks": len(chunks)}

    kept_chunks: list = []

    def chunk_logits():
        stats["passes"] += 1
        if kept_chunks:
            yield from kept_chunks
            return
        for queries, (start, stop) in zip(chunks, bounds):
            scaled = full_res_logits(queries).float() * logit_scale
            chunk = queries, start, stop, scaled, _merge_chunk(scaled, query_class[queries], start, stop - start)
            if reuse_chunks:
                kept_chunks.append(chunk)
            yield chunk

    # pass 1: running max (= the softmax's max), the float64 softmax denominators over queries and
    # over merged classes (rescaled when the max grows), and the first-index argmax over classes
    top = _RunningTop(size, device)
    query_sum = torch.zeros(size, dtype=torch.float64, device=device)
    class_sum = torch.zeros(size, dtype=torch.float64, device=device)
    for _, start, _, scaled, merged in chunk_logits():
        old_max = top.best
        top.update(merged, start)
        # float32 terms (within 2 ulp each), accumulated across chunks in float64
        rescale = torch.exp((old_max - top.best).double())
        query_sum = query_sum * rescale + torch.exp(scaled - top.best).sum(dim=0).double()
        if renormalize:
            class_sum = class_sum * rescale + torch.exp(merged - top.best).sum(dim=0).double()
    max_logit = top.best
    winner, winner_logit, tie = top.index, top.best, top.near_tie()

    keep = None
    if area_thd is not None:
        argmax = winner.clone()
        if bool(tie.any()):   # the counts need the protocol's own argmax where a rounding tie is possible
            exact = _protocol_decisions(chunk_logits(), tie, query_class, num_classes, logit_scale)
            argmax[tie] = exact["argmax"]
            stats["fallback_pixels"] += int(tie.sum())
        counts = torch.bincount(argmax.flatten(), minlength=num_classes)[1:].to(torch.float32)
        keep = torch.cat([torch.ones(1, dtype=torch.bool, device=device), counts > area_thd * counts.sum()])
        if not bool(keep.all()):
            # pass 2: the argmax and the class sum over the kept classes only (same max and query sum)
            top = _RunningTop(size, device)
            class_sum = torch.zeros(size, dtype=torch.float64, device=device)
            for _, start, stop, _, merged in chunk_logits():
                merged = merged.masked_fill(~keep[start:stop].view(-1, 1, 1), float("-inf"))
                top.update(merged, start)
                if renormalize:
                    class_sum += torch.exp(merged - max_logit).sum(dim=0).double()
            winner, winner_logit, tie = top.index, top.best, top.near_tie()
        else:
            tie = tie.clone()
            tie.zero_()        # the argmax was already made exact above

    top_prob = torch.exp(winner_logit.double() - max_logit.double()) / query_sum
    # the protocol sums Q float32 terms: its denominator is within (Q + 8) * 2**-24 of ours, relatively
    tolerance = (query_class.numel() + 8) * 2.0 ** -24
    risky = tie | (top_prob < 1e-30)
    if prob_thd > 0:
        risky |= (top_prob - prob_thd).abs() <= prob_thd * tolerance
    confidence = top_prob / (class_sum / query_sum) if renormalize else top_prob
    mask = winner.clone()
    if prob_thd > 0:
        mask = torch.where(top_prob < prob_thd, torch.zeros_like(mask), mask)
    if bool(risky.any()):
        exact = _protocol_decisions(chunk_logits(), risky, query_class, num_classes, logit_scale, keep=keep,
                                    prob_thd=prob_thd, renormalize=renormalize)
        mask[risky] = exact["mask"]
        confidence[risky] = exact["confidence"].double()
        stats["fallback_pixels"] += int(risky.sum())
    return mask, (confidence.float() if with_confidence else None), stats


def _protocol_decisions(chunk_iter, pixels: torch.Tensor, query_class: torch.Tensor, num_classes: int,
                        logit_scale: float, *, keep: torch.Tensor | None = None, prob_thd: float = 0.0,
                        renormalize: bool = False) -> dict:
    """The protocol's decisions at the ``pixels`` (bool ``(H, W)``), from their gathered logits.

    The softmax runs on blocks of 64 gathered pixels so each is computed in full vector lanes, as
    the protocol's softmax computes all but a handful of pixels of an image.
    """
    flat = pixels.flatten()
    gathered = torch.empty((query_class.numel(), int(flat.sum())), device=pixels.device)
    for queries, _, _, scaled, _ in chunk_iter:
        gathered[queries] = scaled.reshape(len(queries), -1)[:, flat]
    block = 64
    n = gathered.shape[1]
    padded = torch.zeros((gathered.shape[0], -(-n // block) * block), device=gathered.device)
    padded[:, :n] = gathered
    probs = torch.cat([torch.softmax(padded[:, i:i + block], dim=0) for i in range(0, padded.shape[1], block)],
                      dim=1)[:, :n]
    probs = merge_synonyms(probs[:, :, None], query_class, num_classes)[:, :, 0]
    argmax = probs.max(dim=0).indices
    out = {"argmax": argmax}
    if keep is not None:
        probs = probs * keep.to(probs.dtype).view(-1, 1)
    top, mask = probs.max(dim=0)
    if prob_thd > 0:
        mask = torch.where(top < prob_thd, torch.zeros_like(mask), mask)
    if renormalize:
        top = (probs / probs.sum(dim=0, keepdim=True)).max(dim=0).values
    out.update(mask=mask, confidence=top)
    return out
