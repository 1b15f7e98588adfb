"""A FiftyOne ``Model`` over :class:`tfovss_core.Segmenter`, so ``apply_model`` works.

    import fiftyone as fo
    from tfovss_fiftyone.model import load_ovss_model

    model = load_ovss_model(method="sclip", classes=["background", ["cat", "kitten"], "dog"],
                            arch="ViT-B-16", pretrained="openai", prob_thd=0.1)
    dataset.apply_model(model, label_field="ovss", output_dir="/data/masks")  # or masks in the DB
    dataset.mask_targets["ovss"] = model.mask_targets; dataset.save()

The same options as the pre-label operator: ``method``, the method's options, ``arch`` /
``pretrained`` (tag, local checkpoint, or an already loaded ``clip``), ``classes`` (preset name,
``{value: name}`` mask targets, a list of names/synonym lists, or one-class-per-line text),
driver settings (``short_side``, ``crop``, ``stride``, ``logit_scale``, ``prob_thd``, ``area_thd``,
``pamr_steps``, ``templates``, ``batch_size``) and ``device``. With ``confidence=True`` each
prediction is a dict ``{"segmentation": Segmentation, "confidence": Heatmap}`` (FiftyOne stores
them in ``<label_field>_segmentation`` / ``<label_field>_confidence``).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

import fiftyone.core.models as fom

# the CLIP cache is shared with the pre-label run; it lives in loading.py so that neither of
# model.py and prelabel.py imports the other for it
from tfovss_fiftyone.loading import clear_cache, get_clip  # noqa: F401  (public here too)


class OVSSModelConfig:
    """Plain options holder (kept JSON-able for ``describe``)."""

    def __init__(self, method="sclip", classes=None, arch="ViT-B-16", pretrained="openai",
                 device=None, confidence=False, method_options=None, settings=None):
        self.method = method
        self.classes = classes
        self.arch = arch
        self.pretrained = pretrained
        self.device = device
        self.confidence = confidence
        self.method_options = dict(method_options or {})
        self.settings = dict(settings or {})
        # FiftyOne's apply_model looks for these to defer thresholds/classes to the model
        self.confidence_thresh = None


class OVSSModel(fom.Model):
    """Open-vocabulary semantic segmentation as a FiftyOne image model.

    ``predict(img)`` takes an HxWx3 uint8 array (what ``apply_model`` passes) and returns an
    ``fo.Segmentation`` whose mask holds the class *values* of :attr:`mask_targets`.
    """

    def __init__(self, config: OVSSModelConfig, clip=None):
        import tfovss_core as tc

        from tfovss_core.spec.classes import resolve_classes

        self.config = config
        clip = clip if clip is not None else get_clip(config.arch, config.pretrained,
                                                      config.device)
        classes = config.classes
        if classes is None:
            raise ValueError("load_ovss_model needs classes=: a preset name, mask_targets, a "
                             "list of names or one-class-per-line text")
        source = resolve_classes(classes, files=False)  # the one resolution (core, plugin, CLI)
        self.segmenter = tc.Segmenter(clip, method=config.method, classes=source.segmenter_classes(),
                                      **config.method_options, **config.settings)
        values = source.values(config.method)
        self._lut = np.asarray(values, dtype=np.int64)
        self._dtype = np.uint8 if max(values) <= 255 else np.uint16
        self.mask_targets = {int(v): str(n) for v, n in zip(values, self.segmenter.class_names)}
        self._preprocess = False

    # -- fiftyone.core.models.Model interface ------------------------------------------------
    @property
    def media_type(self):
        return "image"

    @property
    def ragged_batches(self):
        return True  # images of any size: no stacking into tensors

    @property
    def transforms(self):
        return None

    @property
    def preprocess(self):
        return self._preprocess

    @preprocess.setter
    def preprocess(self, value):
        self._preprocess = value

    @property
    def classes(self):
        return list(self.segmenter.class_names)

    def describe(self) -> dict:
        return self.segmenter.describe()

    def predict(self, arg):
        import fiftyone as fo

        if isinstance(arg, np.ndarray) and arg.ndim == 3 and arg.shape[2] == 4:
            arg = arg[:, :, :3]
        if isinstance(arg, np.ndarray) and arg.ndim == 2:
            arg = np.stack([arg] * 3, axis=-1)
        res = self.segmenter.predict(arg)
        mask = self._lut[res.mask.astype(np.int64)].astype(self._dtype)
        conf = res.probs.max(axis=0)
        label = fo.Segmentation(mask=mask, mean_confidence=float(conf.mean()))
        if not self.config.confidence:
            return label
        heat = fo.Heatmap(map=np.clip(np.rint(conf * 255), 0, 255).astype(np.uint8),
                          range=[0, 255])
        return {"segmentation": label, "confidence": heat}

    def predict_all(self, args):
        return [self.predict(a) for a in args]


_SETTING_KEYS = ("short_side", "max_long_side", "crop", "stride", "pad_to_patch", "logit_scale",
                 "prob_thd", "area_thd", "pamr_steps", "pamr_dilations", "templates",
                 "batch_size")


def load_ovss_model(method: str = "sclip", classes=None, arch: str = "ViT-B-16",
                    pretrained="openai", device=None, confidence: bool = False, clip=None,
                    **options) -> OVSSModel:
    """Builds an :class:`OVSSModel`; ``options`` are driver settings and method options by name
    (unknown names raise ``tfovss_core.ConfigError``)."""
    settings = {k: v for k, v in options.items() if k in _SETTING_KEYS}
    t = settings.get("templates")
    if isinstance(t, str) and ("{}" in t or "|" in t):  # "a photo of a {}.|a {}." -> list
        settings["templates"] = [x.strip() for x in t.split("|") if x.strip()]
    method_options = {k: v for k, v in options.items() if k not in _SETTING_KEYS}
    cfg = OVSSModelConfig(method=method, classes=classes, arch=arch, pretrained=pretrained,
                          device=device, confidence=confidence, method_options=method_options,
                          settings=settings)
    return OVSSModel(cfg, clip=clip)
