"""Checkpoint checks shared by the CLIP loader (``loading``) and the VFM loader (``vfm``)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Callable


def state_dict_mismatch(expected: Mapping, found: Mapping, name: str,
                        ignore: Callable[[str], bool] = lambda key: False) -> str:
    """What keeps checkpoint ``found`` from fitting a model whose state dict is ``expected``:
    counts of wrong-shape tensors, missing and unexpected keys with an example of each ("" when it
    fits). The one wording of the CLIP and the VFM loaders' "does not fit" errors."""
    missing = [k for k in expected if k not in found and not ignore(k)]
    unexpected = [k for k in found if k not in expected]
    wrong = [f"{k}: file {tuple(found[k].shape)} vs {name} {tuple(v.shape)}"
             for k, v in expected.items()
             if k in found and tuple(getattr(found[k], "shape", ())) != tuple(v.shape)]
    parts = []
    if wrong:
        parts.append(f"{len(wrong)} tensors of the wrong shape (e.g. {wrong[0]})")
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    return "; ".join(parts)
