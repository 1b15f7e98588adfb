"""Reading a COCO export back with pycocotools' own API, for pixel-exact checks."""
from __future__ import annotations

import numpy as np


def decode_coco(labels_path):
    """``(COCO, {file_name: semantic mask})``: each image's mask rebuilt from its annotations with
    pycocotools' ``annToMask`` (category ids as values, 0 where no annotation)."""
    from pycocotools.coco import COCO

    coco = COCO(str(labels_path))
    out = {}
    for img_id in coco.getImgIds():
        info = coco.loadImgs(img_id)[0]
        m = np.zeros((info["height"], info["width"]), np.int64)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img_id)):
            m[coco.annToMask(ann).astype(bool)] = ann["category_id"]
        out[info["file_name"]] = m
    return coco, out
