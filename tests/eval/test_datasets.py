"""Benchmark importers: the shared samples (VOC, ADE20K, COCO instances) and synthetic folders in
every other standard layout (Context, COCO-Stuff, COCO-Object stuffthingmaps, Cityscapes, ADE-847,
Context-459), built here in tmp dirs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tfovss_core.eval.datasets import DatasetLayoutError, get_importer, list_benchmarks
from tfovss_core.eval.datasets.coco import COCO_THING_IDS, OBJECT_LUT, STUFF171_LUT
from tfovss_core.eval.datasets.scenes import CITYSCAPES_ID_TO_TRAINID
from tfovss_core.spec.presets import get_preset

from support.paths import DATA

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="shared sample data not found")


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _jpg(path: Path, h: int, w: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def _tif16(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint16)).save(path)


# ------------------------------------------------------------------------------ shared samples

@needs_data
def test_voc21_and_voc20_on_shared_samples():
    voc = get_importer("voc21", DATA)
    assert voc.root.name == "VOC2012"
    voc.check()
    assert voc.ids() == ["2007_000033"]  # the val split
    (sample,) = list(voc.samples())
    sid, image_path, load_gt = sample  # unpacks as a triple
    assert sid == "2007_000033" and image_path.name == "2007_000033.jpg"
    gt = load_gt()
    with Image.open(image_path) as im:
        assert gt.shape == (im.height, im.width) == (366, 500)
    assert set(np.unique(gt)) == {0, 1, 255}  # palette indices, with 255 object borders
    assert (gt == 255).sum() > 0

    train = get_importer("voc21", DATA, split="train")
    gt32 = next(iter(train)).load_gt()
    assert set(np.unique(gt32)) == {0, 1, 15, 255}

    voc20 = get_importer("voc20", DATA, split="train")
    g20 = next(iter(voc20)).load_gt()
    # reduce_zero_label: background 0 and borders 255 -> 255; 1 -> 0, 15 -> 14
    assert set(np.unique(g20)) == {0, 14, 255}
    assert ((g20 == 255) == ((gt32 == 0) | (gt32 == 255))).all()
    assert ((g20 == 14) == (gt32 == 15)).all()
    for imp in (voc, voc20):
        p = get_preset(imp.name)
        assert (imp.num_classes, imp.ignore_index, imp.reduce_zero_label, imp.has_background) == \
            (p.num_classes, p.ignore_index, p.reduce_zero_label, p.has_background)
        assert len(imp.class_names()) == imp.num_classes


@needs_data
def test_ade20k_on_shared_samples_label_zero_not_scored():
    ade = get_importer("ade20k", DATA)
    ade.check()
    assert len(ade) == 3 and ade.ids()[0] == "ADE_val_00000001"
    for sample in ade:
        raw = np.array(Image.open(sample.gt_path))
        gt = sample.load_gt()
        assert gt.shape == raw.shape and gt.dtype == np.uint8
        assert ((gt == 255) == (raw == 0)).all()  # "other objects" is ignored
        assert (gt[raw > 0] == raw[raw > 0] - 1).all()
        assert gt[gt != 255].max() < 150
    assert ade.num_classes == 150 and ade.reduce_zero_label


@needs_data
def test_coco_object_from_instances_json():
    from pycocotools.coco import COCO

    coco_obj = get_importer("coco_object", DATA)  # auto: no stuffthingmaps here -> instances json
    assert coco_obj.ids() == ["000000039769"]
    gt = next(iter(coco_obj)).load_gt()
    assert gt.shape == (480, 640)
    names = coco_obj.class_names()
    present = {names[v] for v in np.unique(gt)}
    # annotation order (2 cats, 2 remotes, couch, bed): the couch and bed polygons cover the
    # remotes lying on them; overlap="area" paints large instances first, small ones on top
    assert {"background", "cat", "couch", "bed"} == present
    assert 255 not in gt  # COCO-Object scores every pixel
    by_area = get_importer("coco_object", DATA, overlap="area")
    gt_area = next(iter(by_area)).load_gt()
    assert {names[v] for v in np.unique(gt_area)} == present | {"remote"}

    train = get_importer("coco_object", DATA, split="train", coco_object_source="instances")
    assert len(train) == 128
    coco = train.coco
    cat_to_idx = {c: i + 1 for i, c in enumerate(COCO_THING_IDS)}
    crowd_imgs = sorted({a["image_id"] for a in coco.dataset["annotations"] if a["iscrowd"]})
    assert crowd_imgs, "the sample has crowd annotations"
    stem = {img["id"]: Path(img["file_name"]).stem for img in coco.dataset["images"]}
    checked = 0
    for img_id in crowd_imgs[:3]:
        sample = next(train.samples(skip=[i for i in train.ids() if i != stem[img_id]]))
        gt = sample.load_gt()
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
        covered = np.zeros(gt.shape, bool)
        for a in anns:
            if not a["iscrowd"]:
                covered |= coco.annToMask(a).astype(bool)
        for a in anns:
            if a["iscrowd"]:
                crowd_only = coco.annToMask(a).astype(bool) & ~covered
                if crowd_only.any():  # crowd regions are background, as in the official maps
                    assert (gt[crowd_only] == 0).all()
                    checked += 1
        # the last non-crowd instance painted wins where instances overlap
        last = [a for a in anns if not a["iscrowd"]][-1]
        m = coco.annToMask(last).astype(bool)
        assert (gt[m] == cat_to_idx[last["category_id"]]).all()
    assert checked > 0

    ignore = get_importer("coco_object", DATA, split="train", coco_object_source="instances",
                          crowd="ignore")
    thing = get_importer("coco_object", DATA, split="train", coco_object_source="instances",
                         crowd="thing")
    sid = stem[crowd_imgs[0]]
    skip = [i for i in train.ids() if i != sid]
    g_bg, g_ig, g_th = (next(x.samples(skip=skip)).load_gt() for x in (train, ignore, thing))
    assert (g_ig == 255).any() and not (g_bg == 255).any()
    assert ((g_ig == 255) <= (g_bg == 0)).all()
    assert (g_th > 0).sum() > (g_bg > 0).sum()


def test_list_benchmarks_and_unknown_name():
    assert list_benchmarks()[:8] == ["voc21", "context60", "coco_object", "voc20", "context59",
                                     "coco_stuff", "cityscapes", "ade20k"]
    with pytest.raises(DatasetLayoutError, match="unknown benchmark"):
        get_importer("voc99", ".")


# ------------------------------------------------------------------------------ synthetic layouts

def _context_tree(root: Path, n: int = 3):
    base = root / "VOCdevkit" / "VOC2010"
    ids = [f"2008_00000{i}" for i in range(n)]
    rng = np.random.default_rng(1)
    labels = {}
    for i, sid in enumerate(ids):
        _jpg(base / "JPEGImages" / f"{sid}.jpg", 20 + i, 30, seed=i)
        lab = rng.integers(0, 60, (20 + i, 30)).astype(np.uint8)
        _png(base / "SegmentationClassContext" / f"{sid}.png", lab)
        labels[sid] = lab
    (base / "ImageSets" / "SegmentationContext").mkdir(parents=True)
    (base / "ImageSets" / "SegmentationContext" / "val.txt").write_text("\n".join(ids) + "\n")
    return labels


def test_pascal_context_60_and_59(tmp_path):
    labels = _context_tree(tmp_path)
    c60 = get_importer("context60", tmp_path)
    c59 = get_importer("context59", tmp_path)
    c60.check(), c59.check()
    assert (c60.num_classes, c59.num_classes) == (60, 59)
    assert len(c60.class_names()) == 60 and len(c59.class_names()) == 59
    for s60, s59 in zip(c60, c59):
        lab = labels[s60.id]
        g60, g59 = s60.load_gt(), s59.load_gt()
        assert (g60 == lab).all() and g60.max() <= 59
        assert ((g59 == 255) == (lab == 0)).all() and (g59[lab > 0] == lab[lab > 0] - 1).all()
        assert g59[g59 != 255].max() <= 58


def test_incomplete_folder_lists_what_is_missing(tmp_path):
    _context_tree(tmp_path)
    base = tmp_path / "VOCdevkit" / "VOC2010"
    (base / "SegmentationClassContext" / "2008_000001.png").unlink()
    (base / "JPEGImages" / "2008_000002.jpg").unlink()
    imp = get_importer("context60", tmp_path)
    with pytest.raises(DatasetLayoutError) as e:
        imp.check()
    msg = str(e.value)
    assert "1 of 3 samples have no image: JPEGImages/2008_000002.jpg" in msg
    assert "1 of 3 samples have no label map: SegmentationClassContext/2008_000001.png" in msg
    assert set(e.value.missing) == {"JPEGImages/2008_000002.jpg",
                                    "SegmentationClassContext/2008_000001.png"}
    imp.check(limit=1)  # the first sample alone is complete

    import shutil
    shutil.rmtree(base / "ImageSets")
    with pytest.raises(DatasetLayoutError) as e:
        get_importer("context59", tmp_path)
    assert "ImageSets/SegmentationContext/val.txt" in str(e.value)
    assert "incomplete" in str(e.value) and "SegmentationClassContext" not in e.value.missing[0]

    with pytest.raises(DatasetLayoutError, match="no Cityscapes folder under"):
        get_importer("cityscapes", tmp_path)
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        get_importer("voc21", tmp_path / "nope")


def _stuffthingmap(rng, h, w):
    """A raw COCO-Stuff map: things, stuff, unlabelled 255."""
    things = np.array([c - 1 for c in COCO_THING_IDS])
    stuff = np.arange(91, 182)
    vals = np.concatenate([things, stuff, [255]])
    return rng.choice(vals, (h, w)).astype(np.uint8)


def test_coco_stuff_and_object_from_stuffthingmaps(tmp_path):
    base = tmp_path / "coco_stuff164k"
    rng = np.random.default_rng(2)
    raw = {}
    for i in range(3):
        sid = f"00000000{i:04d}"
        _jpg(base / "images" / "val2017" / f"{sid}.jpg", 16, 24, seed=i)
        raw[sid] = _stuffthingmap(rng, 16, 24)
        _png(base / "annotations" / "val2017" / f"{sid}.png", raw[sid])
    stuff = get_importer("coco_stuff", tmp_path)
    obj = get_importer("coco_object", tmp_path)
    assert type(obj).__name__ == "COCOObject"  # stuffthingmaps preferred over the json route
    assert (stuff.num_classes, obj.num_classes) == (171, 81)
    assert len(stuff.class_names()) == 171 and len(obj.class_names()) == 81
    for s, o in zip(stuff, obj):
        r = raw[s.id]
        gs, go = s.load_gt(), o.load_gt()
        assert set(np.unique(gs)) <= set(range(171)) | {255}
        assert ((gs == 255) == (r == 255)).all()
        assert gs[r == 0].tolist() == [0] * int((r == 0).sum())      # person
        assert (gs[r == 181] == 170).all() and (gs[r == 91] == 80).all()  # wood, banner
        # GroupViT: things 1..80, stuff and unlabelled -> 0, nothing ignored
        assert set(np.unique(go)) <= set(range(81))
        is_thing = np.isin(r, [c - 1 for c in COCO_THING_IDS])
        assert ((go == 0) == ~is_thing).all()
        assert (go[r == 89] == 80).all()  # toothbrush (id 90) is the 80th thing
    # pre-converted files win over on-the-fly conversion
    sid = "000000000000"
    conv = np.full((16, 24), 7, np.uint8)
    _png(base / "annotations" / "val2017" / f"{sid}_labelTrainIds.png", conv)
    _png(base / "annotations" / "val2017" / f"{sid}_instanceTrainIds.png", conv + 1)
    assert (next(iter(get_importer("coco_stuff", tmp_path))).load_gt() == 7).all()
    assert (next(iter(get_importer("coco_object", tmp_path))).load_gt() == 8).all()
    assert get_importer("coco_stuff", tmp_path).ids() == sorted(raw)  # converted files not samples


def test_coco_tables_match_the_official_converters():
    # GroupViT's table: thing k (0-based id) -> its position + 1; stuff (>90) and 255 -> 0
    assert OBJECT_LUT[0] == 1 and OBJECT_LUT[10] == 11 and OBJECT_LUT[12] == 12
    assert OBJECT_LUT[89] == 80 and OBJECT_LUT[91] == 0 and OBJECT_LUT[181] == 0
    assert OBJECT_LUT[255] == 0
    # mmseg's coco_stuff164k table: 0..89 things -> 0..79, 91..181 -> 80..170, 255 stays
    assert STUFF171_LUT[0] == 0 and STUFF171_LUT[89] == 79 and STUFF171_LUT[91] == 80
    assert STUFF171_LUT[181] == 170 and STUFF171_LUT[255] == 255
    assert sorted(set(STUFF171_LUT[:182].tolist()) - {255}) == list(range(171))


def test_cityscapes_train_ids_and_label_ids(tmp_path):
    base = tmp_path / "cityscapes"
    rng = np.random.default_rng(3)
    stems = ["frankfurt/frankfurt_000000_000294", "lindau/lindau_000001_000019",
             "munster/munster_000002_000019"]
    raw = {}
    for i, stem in enumerate(stems):
        _png(base / "leftImg8bit" / "val" / f"{stem}_leftImg8bit.png",
             rng.integers(0, 255, (8, 16, 3), dtype=np.uint8))
        raw[stem] = rng.integers(0, 34, (8, 16)).astype(np.uint8)
        if i < 2:  # converted train ids
            lut = np.full(256, 255, np.uint8)
            for k, v in CITYSCAPES_ID_TO_TRAINID.items():
                lut[k] = v
            _png(base / "gtFine" / "val" / f"{stem}_gtFine_labelTrainIds.png", lut[raw[stem]])
        else:  # only labelIds: converted on the fly
            _png(base / "gtFine" / "val" / f"{stem}_gtFine_labelIds.png", raw[stem])
    city = get_importer("cityscapes", tmp_path)
    city.check()
    assert city.num_classes == 19 and len(city.class_names()) == 19
    assert city.ids() == stems
    for s in city:
        gt = s.load_gt()
        r = raw[s.id]
        assert ((gt == 255) == ~np.isin(r, list(CITYSCAPES_ID_TO_TRAINID))).all()
        assert (gt[r == 7] == 0).all() and (gt[r == 33] == 18).all()
        assert gt[gt != 255].max() <= 18


def test_ade847_and_context459_16bit_tiffs(tmp_path):
    rng = np.random.default_rng(4)
    base = tmp_path / "ADE20K_2021_17_01"
    lab = rng.integers(0, 847, (10, 12)).astype(np.uint16)
    lab[0, :] = 65535
    _jpg(base / "images_detectron2" / "validation" / "ADE_frame_1.jpg", 10, 12)
    _tif16(base / "annotations_detectron2" / "validation" / "ADE_frame_1.tif", lab)
    ade = get_importer("ade847", tmp_path)
    ade.check()
    gt = next(iter(ade)).load_gt()
    assert gt.dtype == np.uint16 and (gt == lab).all()
    assert ade.ignore_index == 65535 and ade.num_classes == 847 == len(ade.class_names())

    voc = tmp_path / "VOCdevkit" / "VOC2010"
    lab = rng.integers(0, 459, (10, 12)).astype(np.uint16)
    lab[:, 0] = 65535
    _jpg(voc / "JPEGImages" / "2008_000002.jpg", 10, 12)
    _tif16(voc / "annotations_detectron2" / "pc459_val" / "2008_000002.tif", lab)
    pc = get_importer("context459", tmp_path)
    pc.check()
    s = next(iter(pc))
    assert s.image_path == voc / "JPEGImages" / "2008_000002.jpg"
    assert (s.load_gt() == lab).all() and pc.num_classes == 459 == len(pc.class_names())

    # CLIPtrase's pcontext_full/val/{image,label} copy
    alt = tmp_path / "alt" / "pcontext_full" / "val"
    _jpg(alt / "image" / "x.jpg", 10, 12)
    _tif16(alt / "label" / "x.tif", lab)
    pc2 = get_importer("context459", tmp_path / "alt")
    assert pc2.ids() == ["x"] and (next(iter(pc2)).load_gt() == lab).all()


def test_streaming_is_lazy(tmp_path):
    _context_tree(tmp_path, n=3)
    imp = get_importer("context60", tmp_path)
    gen = imp.samples(limit=2)
    first = next(gen)
    (tmp_path / "VOCdevkit" / "VOC2010" / "SegmentationClassContext" / "2008_000001.png").unlink()
    second = next(gen)  # yielding a sample reads nothing
    with pytest.raises(FileNotFoundError):
        second.load_gt()
    assert first.load_gt().shape == (20, 30)
    assert [s.id for s in imp.samples(skip=["2008_000000"])] == ["2008_000001", "2008_000002"]
