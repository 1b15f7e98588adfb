"""Semantic masks -> COCO annotations (compressed RLE or polygons), written with pycocotools.

A semantic mask is an ``(H, W)`` array of class values. Each exported annotation covers one class
region of one image: by default every pixel of one class in the image (``split="class"``, one
annotation per class per image, "stuff" style), or one 8-connected component
(``split="component"``, "thing" style).

* ``encoding="rle"`` (default): compressed COCO RLE (``counts`` as an ASCII string), exact:
  decoding every annotation of an image with ``pycocotools.mask.decode`` gives back the mask pixel
  for pixel (for the exported values). ``iscrowd`` is 0: the regions are real labels, not crowd
  regions that COCO's detection evaluation would ignore.
* ``encoding="polygon"``: polygons traced along pixel edges, ``iscrowd`` 0, one polygon per
  4-connected piece; holes are joined to the outer loop by zero-width slits, so rasterising the
  polygons with pycocotools gives back the exact pixels too. ``tolerance > 0`` simplifies the
  loops (smaller files, no longer exact). Tools that draw polygon outlines show the slits.

``area`` is always the exact pixel count of the region and ``bbox`` its tight ``[x, y, w, h]``
box, whatever the encoding. Category ids are the mask values themselves (the COCO category ``id``
of class value ``v`` is ``v``), unless value 0 is exported as a class, in which case every id is
``v + 1``. This module has no FiftyOne dependency.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np

__all__ = [
    "CocoExportStats",
    "categories_from_mask_targets",
    "encode_rle",
    "decode_rle",
    "mask_to_annotations",
    "masks_to_coco",
    "annotations_to_mask",
    "write_coco",
]

ENCODINGS = ("rle", "polygon")
SPLITS = ("class", "component")


def _mask_utils():
    try:
        from pycocotools import mask as mask_utils
    except ImportError as e:  # pragma: no cover - pycocotools is a project dependency
        raise ImportError("COCO export needs pycocotools: pip install pycocotools") from e
    return mask_utils


def encode_rle(binary: np.ndarray) -> dict:
    """Compressed COCO RLE of a 2-D boolean/0-1 mask: ``{"size": [h, w], "counts": str}``."""
    binary = np.asarray(binary)
    if binary.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {binary.shape}")
    rle = _mask_utils().encode(np.asfortranarray(binary.astype(np.uint8)))
    counts = rle["counts"]
    return {"size": [int(rle["size"][0]), int(rle["size"][1])],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def decode_rle(rle: Mapping) -> np.ndarray:
    """Decodes a compressed or uncompressed COCO RLE to an ``(h, w)`` uint8 0/1 mask."""
    mu = _mask_utils()
    h, w = rle["size"]
    counts = rle["counts"]
    if isinstance(counts, list):
        rle = mu.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    elif isinstance(counts, str):
        rle = {"size": [h, w], "counts": counts.encode("ascii")}
    return mu.decode(rle)


def categories_from_mask_targets(mask_targets: Mapping, skip_values: Iterable[int] = (0,),
                                 supercategory: str = "") -> list[dict]:
    """COCO ``categories`` from a ``{value: name}`` dict, dropping ``skip_values``.

    Ids follow the module rule: ``id = value`` when 0 is skipped, else ``value + 1``.
    """
    targets = _int_targets(mask_targets)
    skip = {int(v) for v in skip_values}
    offset = 0 if 0 in skip or 0 not in targets else 1
    return [{"id": v + offset, "name": str(n), "supercategory": supercategory}
            for v, n in sorted(targets.items()) if v not in skip]


def _int_targets(mask_targets: Mapping) -> dict[int, str]:
    out = {}
    for k, v in mask_targets.items():
        try:
            out[int(k)] = str(v)
        except (TypeError, ValueError):
            raise ValueError(f"mask target keys must be integer class values, got {k!r} "
                             "(RGB mask targets are not supported)") from None
    return out


_RIGHT_TURN = {(1, 0): (0, 1), (0, 1): (-1, 0), (-1, 0): (0, -1), (0, -1): (1, 0)}


def _rings(binary: np.ndarray) -> list[tuple[list[tuple[int, int]], tuple[int, int]]]:
    """Boundary loops of a binary mask along pixel edges, in COCO coordinates.

    Pixel ``(r, c)`` is the unit square ``[c, c+1] x [r, r+1]``. Each loop keeps the region on its
    right (outer loops clockwise on screen, holes counter-clockwise); at a corner where two region
    pixels touch diagonally the loop turns towards the region, so every loop bounds a 4-connected
    set. Returns ``(vertices, inside_pixel)`` per loop, vertices at direction changes only.
    """
    m = np.pad(binary.astype(bool), 1)
    inner = m[1:-1, 1:-1]
    out_edges: dict[tuple[int, int], list[tuple[int, int]]] = {}

    def add(rows, cols, dx, dy, ox, oy):
        for r, c in zip(rows.tolist(), cols.tolist()):
            out_edges.setdefault((c + ox, r + oy), []).append((dx, dy))

    r, c = np.nonzero(inner & ~m[:-2, 1:-1])     # top edges: TL -> TR
    add(r, c, 1, 0, 0, 0)
    r, c = np.nonzero(inner & ~m[1:-1, 2:])      # right edges: TR -> BR
    add(r, c, 0, 1, 1, 0)
    r, c = np.nonzero(inner & ~m[2:, 1:-1])      # bottom edges: BR -> BL
    add(r, c, -1, 0, 1, 1)
    r, c = np.nonzero(inner & ~m[1:-1, :-2])     # left edges: BL -> TL
    add(r, c, 0, -1, 0, 1)

    rings = []
    while out_edges:
        start = next(iter(out_edges))
        d = out_edges[start][0]
        x, y = start
        first_dir = d
        verts = []
        prev = None
        while True:
            outs = out_edges.get((x, y), [])
            if prev is None:
                d = first_dir
            else:
                rt = _RIGHT_TURN[prev]
                avail = outs + [first_dir] if (x, y) == start else outs
                d = next((cand for cand in (rt, prev, (-rt[0], -rt[1])) if cand in avail), None)
                if d is None:  # pragma: no cover - cannot happen on a closed edge set
                    raise RuntimeError("open boundary while tracing a mask")
                if (x, y) == start and d == first_dir and first_dir not in outs:
                    break
            outs.remove(d)
            if not outs:
                out_edges.pop((x, y), None)
            if d != prev:
                verts.append((x, y))
            prev = d
            x, y = x + d[0], y + d[1]
        if prev == first_dir and len(verts) > 1:
            verts.pop(0)
        sx, sy = start
        dx, dy = first_dir
        inside = {(1, 0): (sy, sx), (0, 1): (sy, sx - 1), (-1, 0): (sy - 1, sx - 1),
                  (0, -1): (sy - 1, sx)}[(dx, dy)]
        rings.append((verts, inside))
    return rings


def _signed_area(verts) -> float:
    a = 0.0
    n = len(verts)
    for i in range(n):
        x0, y0 = verts[i]
        x1, y1 = verts[(i + 1) % n]
        a += x0 * y1 - x1 * y0
    return a / 2.0


def _simplify(verts, tolerance: float):
    if tolerance <= 0 or len(verts) <= 4:
        return verts
    import cv2

    approx = cv2.approxPolyDP(np.asarray(verts, np.float32).reshape(-1, 1, 2), tolerance, True)
    pts = [tuple(p) for p in approx.reshape(-1, 2).tolist()]
    return pts if len(pts) >= 3 else verts


def _polygons(binary: np.ndarray, tolerance: float) -> list[list[float]]:
    """Exact pixel-edge polygons of a binary mask, one per 4-connected component.

    Each polygon is the component's outer loop followed by each of its holes, reached by a
    zero-width slit from the loop's first vertex that is walked there and back; under the
    even-odd rule (pycocotools) and the non-zero rule alike, such a polygon covers exactly the
    component's pixels. ``tolerance > 0`` simplifies every loop (Douglas-Peucker), which makes
    the polygons smaller and no longer exact.
    """
    import cv2

    _, labels = cv2.connectedComponents(binary.astype(np.uint8), connectivity=4)
    outers: dict[int, list] = {}
    holes: dict[int, list] = {}
    for verts, (pr, pc) in _rings(binary):
        comp = int(labels[pr, pc])
        verts = _simplify(verts, tolerance)
        if _signed_area(verts) > 0:
            outers[comp] = verts
        else:
            holes.setdefault(comp, []).append(verts)
    polys = []
    for comp in sorted(outers):
        outer = outers[comp]
        pts = list(outer) + [outer[0]]
        for hole in holes.get(comp, []):
            pts += list(hole) + [hole[0], outer[0]]
        polys.append([float(v) for p in pts for v in p])
    return polys


def _components(binary: np.ndarray) -> list[np.ndarray]:
    import cv2

    n, labels = cv2.connectedComponents(binary.astype(np.uint8), connectivity=8)
    return [labels == i for i in range(1, n)]


def mask_to_annotations(mask: np.ndarray, image_id: int, value_to_category: Mapping[int, int],
                        *, encoding: str = "rle", split: str = "class", tolerance: float = 0.0,
                        start_id: int = 1) -> list[dict]:
    """COCO annotations of one semantic mask.

    ``value_to_category`` maps each exported class value to its COCO category id; values absent
    from it (background, void 255, unknown values) are not exported. Annotation ids run from
    ``start_id``.
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"image {image_id}: expected a 2-D class-value mask, got shape "
                         f"{mask.shape}")
    mu = _mask_utils()
    anns = []
    next_id = start_id
    for value in np.unique(mask).tolist():
        cat = value_to_category.get(int(value))
        if cat is None:
            continue
        region = mask == value
        parts = _components(region) if split == "component" else [region]
        for part in parts:
            rle = mu.encode(np.asfortranarray(part.astype(np.uint8)))
            area = int(mu.area(rle))
            if area == 0:
                continue
            bbox = [float(v) for v in mu.toBbox(rle)]
            if encoding == "rle":
                seg = {"size": [int(rle["size"][0]), int(rle["size"][1])],
                       "counts": rle["counts"].decode("ascii")}
            else:
                seg = _polygons(part, tolerance)
            anns.append({"id": next_id, "image_id": int(image_id), "category_id": int(cat),
                         "segmentation": seg, "area": area, "bbox": bbox, "iscrowd": 0})
            next_id += 1
    return anns


@dataclass
class CocoExportStats:
    num_images: int = 0
    num_annotations: int = 0
    skipped_values: dict = field(default_factory=dict)  # value -> pixel count not exported


def masks_to_coco(items: Iterable[tuple[Mapping, np.ndarray]], mask_targets: Mapping,
                  *, skip_values: Iterable[int] = (0,), encoding: str = "rle",
                  split: str = "class", tolerance: float = 0.0, info: Mapping | None = None,
                  stats: CocoExportStats | None = None) -> dict:
    """A COCO dataset dict from ``(image_info, mask)`` pairs.

    ``image_info`` needs ``id``, ``file_name``, ``width`` and ``height`` (other keys are kept);
    the mask must be ``height x width``. ``mask_targets`` (``{value: name}``) gives the
    categories; values in ``skip_values`` (default: background 0) and values absent from
    ``mask_targets`` (e.g. void 255) are not exported; their pixel counts go to ``stats``.
    """
    categories = categories_from_mask_targets(mask_targets, skip_values)
    targets = _int_targets(mask_targets)
    skip = {int(v) for v in skip_values}
    offset = 0 if 0 in skip or 0 not in targets else 1
    value_to_cat = {v: v + offset for v in targets if v not in skip}
    stats = stats if stats is not None else CocoExportStats()
    images, annotations = [], []
    seen_ids = set()
    for image_info, mask in items:
        img = dict(image_info)
        for key in ("id", "file_name", "width", "height"):
            if key not in img:
                raise ValueError(f"image entry {image_info!r} lacks {key!r}")
        if img["id"] in seen_ids:
            raise ValueError(f"duplicate image id {img['id']}")
        seen_ids.add(img["id"])
        mask = np.asarray(mask)
        if mask.shape != (int(img["height"]), int(img["width"])):
            raise ValueError(f"image {img['id']} ({img['file_name']}): mask shape {mask.shape} "
                             f"!= image size {img['height']}x{img['width']}")
        images.append(img)
        anns = mask_to_annotations(mask, img["id"], value_to_cat, encoding=encoding,
                                   split=split, tolerance=tolerance,
                                   start_id=len(annotations) + 1)
        annotations.extend(anns)
        vals, counts = np.unique(mask, return_counts=True)
        for v, c in zip(vals.tolist(), counts.tolist()):
            if int(v) not in value_to_cat:
                stats.skipped_values[int(v)] = stats.skipped_values.get(int(v), 0) + int(c)
    stats.num_images += len(images)
    stats.num_annotations += len(annotations)
    return {
        "info": dict(info or {"description": "semantic masks exported by tfovss"}),
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def annotations_to_mask(annotations: Iterable[Mapping], height: int, width: int,
                        category_to_value: Mapping[int, int] | None = None,
                        background: int = 0) -> np.ndarray:
    """Paints decoded annotations back into an ``(height, width)`` class-value mask.

    ``category_to_value`` defaults to identity (category id = mask value); later annotations
    overwrite earlier ones where they overlap (polygons can overlap, RLE regions never do).
    """
    mu = _mask_utils()
    out = np.full((height, width), background, dtype=np.int64)
    for ann in annotations:
        seg = ann["segmentation"]
        if isinstance(seg, list):
            rles = mu.frPyObjects(seg, height, width)
            binary = mu.decode(mu.merge(rles))
        else:
            binary = decode_rle(seg)
        cat = int(ann["category_id"])
        value = category_to_value[cat] if category_to_value is not None else cat
        out[binary.astype(bool)] = value
    return out


def write_coco(coco: Mapping, path: str | os.PathLike) -> str:
    """Writes a COCO dict as JSON (creating parent folders); returns the path."""
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with open(path, "w") as f:
        json.dump(coco, f)
    return path
