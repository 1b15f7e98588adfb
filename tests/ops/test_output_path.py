"""The pre-label output path (mask + confidence, class chunk by class chunk) against the protocol path."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tfovss_core.clip.synthetic import tiny_clip
from tfovss_core.engine.segmenter import Segmenter
from tfovss_core.errors import InputError
from tfovss_core.methods import list_methods
from tfovss_core.ops.postprocess import mask_and_confidence, probabilities_and_mask
from support.paths import DATA, golden_model

SAMPLES = {
    "voc21": DATA / "voc2012/VOCdevkit/VOC2012/JPEGImages/2007_000033.jpg",
    "ade20k": DATA / "ade20k/ADEChallengeData2016/images/validation/ADE_val_00000001.jpg",
    "coco_stuff": DATA / "coco2017/train2017/000000000110.jpg",
}
ONE_TEMPLATE = ["a photo of a {}."]   # the output path does not depend on the templates; one keeps text cheap


def _protocol(low_res, size, query_class, num_classes, **kw):
    full = F.interpolate(low_res[None], size=size, mode="bilinear", align_corners=False)[0]
    probs, mask = probabilities_and_mask(full, query_class, num_classes, **kw)
    return probs, mask


def _chunked(low_res, size, query_class, num_classes, requested=None, classes_per_chunk=4, **kw):
    def full_res(queries):
        if requested is not None:
            requested.append(queries.clone())
        return F.interpolate(low_res[queries][None], size=size, mode="bilinear", align_corners=False)[0]
    return mask_and_confidence(full_res, query_class, num_classes, size, classes_per_chunk=classes_per_chunk, **kw)


def _tied_logits(q, h, w, seed=0):
    """Low-res logits on a coarse grid of values, so whole regions hold exact ties between queries."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randint(0, 6, (q, h, w), generator=g).float() * 0.01 + 0.2
    logits[3] = logits[1]          # queries 1 and 3 tie everywhere, 5 and 2 on the left half
    logits[5, :, : w // 2] = logits[2, :, : w // 2]
    return logits


@pytest.mark.parametrize("synonyms", [False, True])
@pytest.mark.parametrize("thresholds", [{}, {"prob_thd": 0.12}, {"area_thd": 0.15}, {"prob_thd": 0.1, "area_thd": 0.2}])
@pytest.mark.parametrize("renormalize", [False, True])
def test_chunked_mask_equals_protocol_with_ties_thresholds_and_synonyms(synonyms, thresholds, renormalize):
    q, size = 13, (37, 53)
    low = _tied_logits(q, 9, 12)
    query_class = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
    num_classes = 13
    if synonyms:   # classes with 2-3 queries, one split across a chunk boundary of the query order
        query_class = torch.tensor([0, 1, 1, 2, 3, 3, 3, 4, 5, 6, 6, 7, 8])
        num_classes = 9
    kw = dict(logit_scale=40.0, renormalize=renormalize, **thresholds)
    probs, mask = _protocol(low, size, query_class, num_classes, **kw)
    requested = []
    got, conf, stats = _chunked(low, size, query_class, num_classes, requested, **kw)
    assert torch.equal(got, mask)
    assert float((conf - probs.max(dim=0).values).abs().max()) <= 1e-6
    # the exact ties make the first index win over large regions: the check is not vacuous
    if not synonyms:   # query 3 ties query 1 everywhere: only the first index ever shows
        assert not bool((mask == 3).any()) and (bool((mask == 1).any()) or bool(thresholds))
    # bounded by construction: never more than 4 classes' queries at full resolution at a time
    per_call = [len(r) for r in requested]
    assert max(per_call) <= 4 * 3 and stats["passes"] * len(range(0, num_classes, 4)) == len(requested)


def test_chunked_mask_equals_protocol_on_random_logits_at_150_classes():
    g = torch.Generator().manual_seed(3)
    low = torch.randn(150, 14, 19, generator=g) * 0.05 + 0.2
    query_class = torch.arange(150)
    kw = dict(logit_scale=50.0, prob_thd=0.02, area_thd=0.01)
    probs, mask = _protocol(low, (61, 83), query_class, 150, **kw)
    got, conf, _ = _chunked(low, (61, 83), query_class, 150, **kw)
    assert torch.equal(got, mask)
    assert float((conf - probs.max(dim=0).values).abs().max()) <= 1e-6


def test_chunked_mask_takes_the_protocols_decision_on_rounding_ties():
    """Distinct logits one float32 step apart round to the same probability: the protocol's first
    index wins there, which the logit argmax alone would get wrong."""
    low = torch.zeros(4, 4, 4)
    low[2] = 0.03
    low[1] = torch.nextafter(torch.tensor(0.03), torch.tensor(0.0))   # just below query 2
    probs, mask = _protocol(low, (8, 8), torch.arange(4), 4, logit_scale=1.0)
    # two chunks: the chunked path (one chunk would take the whole-vocabulary path, which needs no fallback)
    got, conf, stats = _chunked(low, (8, 8), torch.arange(4), 4, logit_scale=1.0, classes_per_chunk=2)
    assert torch.equal(got, mask)
    assert stats["fallback_pixels"] > 0 and bool((mask == 1).any())   # the protocol took the first index
    whole, _, whole_stats = _chunked(low, (8, 8), torch.arange(4), 4, logit_scale=1.0)
    assert torch.equal(whole, mask) and whole_stats["fallback_pixels"] == 0


# -- the segmenter, end to end --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    return tiny_clip(seed=0)


def _sample(preset, scale=1.0):
    img = Image.open(SAMPLES[preset]).convert("RGB")
    if scale != 1.0:
        img = img.resize((int(img.width * scale), int(img.height * scale)))
    return np.asarray(img)


def _assert_same(seg, image):
    full = seg.predict(image)
    lean = seg.predict_mask(image)
    np.testing.assert_array_equal(lean.mask, full.mask)
    assert np.abs(lean.confidence - full.confidence).max() <= 1e-6
    return full, lean


@pytest.mark.parametrize("method", list_methods())
def test_every_method_gives_the_protocol_mask_on_a_voc_photo(tiny, method):
    kw = {"vfm_weights": "random"} if method == "proxyclip" else {}  # its VFM is never downloaded
    seg = Segmenter(tiny, method, "voc21", templates=ONE_TEMPLATE, prob_thd=0.06, area_thd=0.05, **kw)
    _assert_same(seg, _sample("voc21", 0.4))


@pytest.mark.parametrize("preset", ["voc21", "ade20k", "coco_stuff"])
def test_shared_samples_at_21_150_171_classes_with_pamr(tiny, preset):
    seg = Segmenter(tiny, "sclip", preset, templates=ONE_TEMPLATE, pamr_steps=2, prob_thd=0.03)
    full, lean = _assert_same(seg, _sample(preset, 0.5))
    assert lean.mask.dtype == np.uint8 and len(np.unique(full.mask)) > 1


def test_golden_sclip_gives_the_protocol_mask():
    seg = Segmenter(golden_model("ViT-B/16"), "sclip", "voc21", templates=ONE_TEMPLATE)
    _assert_same(seg, _sample("voc21", 0.5))


def test_float16_confidence_and_no_confidence(tiny):
    seg = Segmenter(tiny, "sclip", "voc21", templates=ONE_TEMPLATE)
    image = _sample("voc21", 0.3)
    half = seg.predict_mask(image, confidence="float16")
    none = seg.predict(image, output="mask")
    assert half.confidence.dtype == np.float16 and none.confidence.dtype == np.float32
    assert np.abs(half.confidence.astype(np.float32) - none.confidence).max() <= 1e-3
    assert seg.predict_mask(image, confidence=None).confidence is None


def test_protocol_path_refuses_up_front_with_the_numbers(tiny):
    seg = Segmenter(tiny, "sclip", "ade20k", templates=ONE_TEMPLATE)
    image = _sample("ade20k", 0.5)
    h, w = image.shape[:2]
    need = seg.output_bytes((h, w))
    assert need == (3 * 150 + 2 * 150) * h * w * 4
    seg.output_memory_limit = need - 1
    with pytest.raises(InputError) as err:
        seg.predict(image, name="photo.jpg")
    message = str(err.value)
    assert "photo.jpg" in message and f"{w}x{h}" in message and "'ade20k'" in message
    assert "150 classes" in message and f"{need / 2**30:.1f} GiB" in message and "output='mask'" in message
    seg.output_memory_limit = need                      # the explicit override lets it through
    assert seg.predict(image).mask.shape == (h, w)
    assert seg.predict_mask(image).mask.shape == (h, w)  # the pre-label path never refuses


def test_shared_trunk_and_runner_refuse_the_protocol_path_up_front_too(tiny):
    # the benchmark's path (MultiSegmenter through the job runner) applies the same budget, per item
    from tfovss_core.engine.multi import MultiSegmenter
    from tfovss_core.engine.runner import Item, JobRunner, RunRef, SerialExecutor

    seg = Segmenter(tiny, "sclip", "ade20k", templates=ONE_TEMPLATE)
    image = _sample("ade20k", 0.5)
    seg.output_memory_limit = seg.output_bytes(image.shape[:2]) - 1
    with pytest.raises(InputError, match="full probability maps"):
        MultiSegmenter(tiny, [seg]).predict(image, name="photo.jpg")

    class Failures:
        failed: list = []

        def done(self, run):
            return set()

        def write(self, outcome):
            raise AssertionError("the refused image must not be written")

        def failure(self, item, error, labels):
            self.failed.append((item.id, type(error).__name__, list(labels)))

        def close(self):
            pass

    sink = Failures()
    JobRunner({"sclip": seg}, [RunRef("sclip", "k")], sink, executor=SerialExecutor(0)).run([Item("a", image)])
    assert sink.failed == [("a", "InputError", ["sclip"])]
