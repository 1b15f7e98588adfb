"""Pre-labelling a FiftyOne collection with open-vocabulary segmentation (the SDK behind the
"Pre-label with open-vocabulary segmentation" operator).

    from tfovss_fiftyone.prelabel import prelabel
    report = prelabel(dataset.take(50), "ovss", method="sclip", arch="ViT-B-16",
                      pretrained="openai", classes="background\\ncat, kitten\\ndog",
                      output_dir="/data/masks", confidence_field="ovss_confidence")

* Masks are written as PNG files (``mask_path``) under ``output_dir/<field>/``, named
  ``<sample id>_<settings hash>.png``; existing files are never replaced, except those the same
  settings wrote in an interrupted run (same name, same content). ``masks_in_db=True`` keeps
  masks (and confidence maps) in the database instead (``mask`` / ``map``), as
  ``apply_model`` does without an output directory: no files, a larger database.
* The field's ``mask_targets`` are set; every label carries ``tfovss_hash`` (the settings hash)
  and ``mean_confidence`` (mean top-class probability: sort by it to review uncertain samples).
* Resumable: samples already labelled with the same settings hash are skipped (unless
  ``skip_labelled=False``). A field that exists with other labels is only replaced with
  ``overwrite=True``.
* A sample that fails (unreadable image, ...) is listed in the report; the run goes on.
* The run's settings are stored on the dataset (``dataset.get_run_info("tfovss_prelabel_<field>")``)
  and shown by the "OVSS evaluations" panel.

Several methods in one pass (the "Compare OVSS methods" operator), sharing the frozen CLIP trunk
through :class:`tfovss_core.MultiSegmenter`; each field is exactly what :func:`prelabel` writes
for its method alone, under the same rules::

    from tfovss_fiftyone.prelabel import prelabel_many
    many = prelabel_many(dataset, {"sclip": "ovss_sclip", "clearclip": "ovss_clearclip"},
                         classes="voc21", settings={"short_side": 336, "crop": 224, "stride": 112})
    many.reports["ovss_sclip"].num_labelled, many.failures, many.trunk_runs
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Callable, Mapping, Sequence

import numpy as np

from tfovss_core.errors import ConfigError
from tfovss_core.spec import vocabulary as _vocabulary
from tfovss_core.spec.classes import ClassSource, resolve_classes
from tfovss_core.spec.records import settings_key

logger = logging.getLogger(__name__)

RUN_PREFIX = "tfovss_prelabel_"
HASH_ATTR = "tfovss_hash"
#: results that may wait for the writer thread (PNG encoding, database writes) while the model goes on
WRITES_AHEAD = 4
_FIELD_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class PrelabelInputError(ValueError):
    """Bad pre-label input; raised before anything is written."""


# ---------------------------------------------------------------------------------------------
# vocabulary
# ---------------------------------------------------------------------------------------------

def parse_vocabulary(text: str) -> list[tuple[int, list[str]]]:
    """``[(value, [name, synonym, ...]), ...]`` from free text: the core's one parser
    (:func:`tfovss_core.spec.vocabulary.parse_vocabulary`; one class per line, synonyms separated by
    commas, optional ``<value>:`` prefixes, ``#`` comments), its errors as
    :class:`PrelabelInputError` for the forms."""
    try:
        return _vocabulary.parse_vocabulary(text)
    except ConfigError as e:
        raise PrelabelInputError(str(e)) from None


vocabulary_from_mask_targets = _vocabulary.vocabulary_from_mask_targets
vocabulary_to_text = _vocabulary.vocabulary_to_text


# ---------------------------------------------------------------------------------------------
# report, run info
# ---------------------------------------------------------------------------------------------

@dataclass
class PrelabelReport:
    field: str
    settings_hash: str
    num_targeted: int = 0
    num_labelled: int = 0
    num_skipped: int = 0
    num_failed: int = 0
    failures: list = field(default_factory=list)   # [{"sample_id", "filepath", "error"}]
    mask_dir: str = ""
    confidence_field: str | None = None
    mask_targets: dict = field(default_factory=dict)
    seconds: float = 0.0
    synthetic: bool = False

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mask_targets"] = {str(k): v for k, v in self.mask_targets.items()}
        return d


@dataclass
class MultiPrelabelReport:
    """What :func:`prelabel_many` did: one :class:`PrelabelReport` per field, in the order given."""
    reports: dict                                    # {field: PrelabelReport}
    methods: dict                                    # {field: method}
    trunk_runs: int = 0      # batches of windows whose frozen blocks were computed (all methods)
    seconds: float = 0.0

    @property
    def failures(self) -> list:
        """Every failed sample once: ``[{"sample_id", "filepath", "error", "fields"}]``."""
        out: dict = {}
        for f, r in self.reports.items():
            for x in r.failures:
                out.setdefault(x["sample_id"], {**x, "fields": []})["fields"].append(f)
        return list(out.values())

    def to_dict(self) -> dict:
        return {"reports": {f: r.to_dict() for f, r in self.reports.items()},
                "methods": dict(self.methods), "trunk_runs": self.trunk_runs,
                "seconds": self.seconds, "failures": self.failures}


def run_key_for(field: str) -> str:
    return RUN_PREFIX + field


def prelabel_run_info(dataset, field: str) -> dict | None:
    """The stored settings of the pre-label run that wrote ``field`` (or None)."""
    key = run_key_for(field)
    try:
        if key not in dataset.list_runs():
            return None
        cfg = dataset.get_run_info(key).config
    except Exception:
        return None
    d = cfg.serialize() if hasattr(cfg, "serialize") else dict(vars(cfg))
    return {k: v for k, v in d.items() if k not in ("cls", "type", "method")} | {
        "method": getattr(cfg, "ovss_method", None) or d.get("ovss_method")}


def list_prelabel_runs(dataset) -> dict[str, dict]:
    out = {}
    for key in dataset.list_runs():
        if key.startswith(RUN_PREFIX):
            info = prelabel_run_info(dataset, key[len(RUN_PREFIX):])
            if info is not None:
                out[key[len(RUN_PREFIX):]] = info
    return out


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------

def prelabel_settings(description: Mapping, values: Sequence[int]) -> dict:
    """Everything that determines a pre-label field's masks: the Segmenter's description (method,
    options, model and weights, classes, settings; not the device) and the mask values. Its
    :func:`tfovss_core.spec.records.settings_key` is the field's settings hash."""
    d = json.loads(json.dumps(description, default=str))
    model = d.get("model")
    if isinstance(model, dict):
        model.pop("device", None)
    return {"job": "prelabel", "segmenter": d, "values": [int(v) for v in values]}


def settings_hash(description: Mapping, values: Sequence[int]) -> str:
    """The run key of a pre-label field (the one run hash of tfovss, of :func:`prelabel_settings`)."""
    return settings_key(prelabel_settings(description, values))


def default_output_dir(dataset) -> str:
    import fiftyone as fo

    return os.path.join(fo.config.default_dataset_dir, "tfovss_masks", dataset.name)


def _check_output_field(samples, label_field: str, what: str, kinds: tuple):
    if not label_field or not _FIELD_RE.match(label_field):
        raise PrelabelInputError(
            f"{what} field name {label_field!r} must start with a letter and contain only "
            "letters, digits and _")
    schema = samples._dataset.get_field_schema()
    if label_field in schema:
        f = schema[label_field]
        doc_type = getattr(f, "document_type", None)
        if doc_type is None or not issubclass(doc_type, kinds):
            raise PrelabelInputError(
                f"field '{label_field}' already exists and holds "
                f"{getattr(doc_type, '__name__', type(f).__name__)}, not "
                f"{kinds[0].__name__}; choose another {what} field name")
        return True
    return False


def prelabel(samples, label_field: str, *, classes, method: str = "sclip",
             method_options: Mapping | None = None, arch: str = "ViT-B-16",
             pretrained="openai", model=None, settings: Mapping | None = None,
             device=None, batch_size: int = 8, output_dir: str | None = None,
             overwrite: bool = False, skip_labelled: bool = True,
             confidence_field: str | None = None,
             progress: Callable[[int, int, str], None] | None = None,
             vocabulary_source: str | None = None, masks_in_db: bool = False,
             executor=None, ray_address: str | None = None,
             images_per_batch: int = 1) -> PrelabelReport:
    """Segments every sample of ``samples`` into ``label_field`` (see the module docstring).

    Args:
        samples: a dataset or view (image samples)
        label_field: output ``fo.Segmentation`` field
        classes: a preset name (``"voc21"``...), a ``{value: name}`` dict (e.g. a field's
            ``mask_targets``), a list of names or synonym lists, or free text (one class per
            line, synonyms comma-separated, optional ``value:`` prefixes)
        method: a name from ``tfovss_core.list_methods()`` (LHT add-ons as ``"sclip+lht"``)
        method_options: the method's options (``tfovss_core.describe_method(method)``)
        arch, pretrained: backbone and pretrained tag / local checkpoint path
        model: an already loaded ``tfovss_core`` CLIP (overrides ``arch``/``pretrained``)
        settings: driver settings (``short_side``, ``crop``, ``stride``, ``logit_scale``,
            ``prob_thd`` (background threshold), ``area_thd``, ``pamr_steps``, ``templates``)
        device: ``None``/``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        batch_size: samples per write batch (and CLIP windows per forward pass)
        output_dir: folder of the mask PNGs (default: under FiftyOne's dataset dir)
        overwrite: replace labels of ``label_field`` made otherwise (other settings, other tools)
        skip_labelled: skip samples already labelled with the same settings hash
        confidence_field: also write the top-class probability as a ``fo.Heatmap`` field
        progress: ``progress(done, total, label)`` after each batch
        masks_in_db: store masks in the database (``Segmentation.mask``) instead of PNG
            files under ``output_dir`` (which is then not used)
        executor: the job runner's executor (default: this process); e.g.
            ``tfovss_core.engine.ray_executor.RayExecutor(num_actors=4, num_gpus_per_actor=1)``
        ray_address: run on Ray instead: ``"local"`` (a Ray on loopback started for the run) or
            a cluster address (``"auto"``, ``"ray://head:10001"``); the actors write the mask
            files (``output_dir`` must be storage they share with this process; with
            ``masks_in_db`` the masks travel back instead), the labels are written here. Same
            masks, bit for bit, as a local run.
        images_per_batch: samples whose windows go through the model together (the job
            runner's ``ModelPass.images_per_batch``: fewer, larger forward passes, which keeps a
            GPU busy; the same masks at the protocols' window sizes); 1: one at a time

    Returns:
        a :class:`PrelabelReport`

    Raises:
        PrelabelInputError / tfovss_core.ConfigError / WeightsError: before anything is written
    """
    plan = _FieldPlan(label_field, method, _options(method_options), confidence_field or None,
                      in_db=bool(masks_in_db))
    _run([plan], samples, shared_trunk=False, classes=classes, arch=arch,
         pretrained=pretrained, model=model, settings=settings, device=device,
         batch_size=batch_size, output_dir=output_dir, overwrite=overwrite,
         skip_labelled=skip_labelled, progress=progress, vocabulary_source=vocabulary_source,
         executor=_executor(executor, ray_address), images_per_batch=images_per_batch)
    return plan.report


def prelabel_many(samples, fields_by_method: Mapping[str, str], *, classes,
                  method_options: Mapping[str, Mapping] | None = None,
                  arch: str = "ViT-B-16", pretrained="openai", model=None,
                  settings: Mapping | None = None, device=None, batch_size: int = 8,
                  output_dir: str | None = None, overwrite: bool = False,
                  skip_labelled: bool = True, confidence_suffix: str | None = None,
                  progress: Callable[[int, int, str], None] | None = None,
                  vocabulary_source: str | None = None, masks_in_db: bool = False,
                  executor=None, ray_address: str | None = None,
                  images_per_batch: int = 1) -> MultiPrelabelReport:
    """Several methods in one pass: ``{method: field}``, one ``fo.Segmentation`` field each.

    The methods run through one :class:`tfovss_core.MultiSegmenter`, which computes the frozen
    CLIP blocks once per batch of windows for every group of methods that see the same windows
    (with a preset, each method's official settings apply, so methods with different window
    protocols form separate groups: pass ``short_side``/``crop``/``stride`` to share one trunk).
    Each field's masks, settings hash and mask files are exactly those that :func:`prelabel`
    writes for that method alone with the same arguments, so the two resume each other's runs;
    its run info is the same too, plus ``shared_trunk`` and ``run_with`` (the pass's fields).
    Same rules per field as :func:`prelabel` (no overwrite unless asked, resume by settings hash,
    failures listed per field), all checked before anything is written.

    Args:
        fields_by_method: ``{"sclip": "ovss_sclip", "clearclip": "ovss_clearclip", ...}``
            (method names as for :func:`prelabel`, add-ons included)
        method_options: ``{method: {option: value}}`` for the methods that need them
        confidence_suffix: also write each field's confidence heatmap to ``<field><suffix>``
        executor, ray_address, images_per_batch: where and how the model pass runs, as for
            :func:`prelabel`
        others: as for :func:`prelabel` (shared by every method)

    Returns:
        a :class:`MultiPrelabelReport` (one :class:`PrelabelReport` per field)
    """
    if not fields_by_method:
        raise PrelabelInputError("no methods given: pass {method: output field, ...}")
    opts = dict(method_options or {})
    unknown = sorted(set(opts) - set(fields_by_method))
    if unknown:
        raise PrelabelInputError(f"method_options given for {unknown}, which are not run")
    plans = [_FieldPlan(str(field), str(method), _options(opts.get(method)),
                        f"{field}{confidence_suffix}" if confidence_suffix else None,
                        in_db=bool(masks_in_db))
             for method, field in fields_by_method.items()]
    return _run(plans, samples, shared_trunk=True, classes=classes, arch=arch,
                pretrained=pretrained, model=model, settings=settings, device=device,
                batch_size=batch_size, output_dir=output_dir, overwrite=overwrite,
                skip_labelled=skip_labelled, progress=progress,
                vocabulary_source=vocabulary_source, executor=_executor(executor, ray_address),
                images_per_batch=images_per_batch)


def _executor(executor, ray_address: str | None):
    """The job runner's executor: the one given, a Ray executor for ``ray_address``, or None
    (this process)."""
    if ray_address is None or executor is not None:
        if executor is not None and ray_address is not None:
            raise PrelabelInputError("give an executor or a Ray address, not both")
        return executor
    from tfovss_core.engine.ray_executor import executor_from_options

    return executor_from_options(ray_address)


def _build_segmenters(arch, pretrained, device, classes, drv: Mapping,
                      methods: Sequence[tuple[str, str, Mapping]]) -> dict:
    """The Segmenters of a run, built where the work runs (a Ray actor): the same calls as
    :func:`_run` makes here, so the same model and settings."""
    import tfovss_core as tc

    from tfovss_fiftyone.loading import get_clip

    model = get_clip(arch, pretrained, device)
    return {f: tc.Segmenter(model, method=m, classes=classes, **{**drv, **opts})
            for f, m, opts in methods}


def _options(method_options: Mapping | None) -> dict:
    return {k: v for k, v in (method_options or {}).items() if v is not None}


@dataclass
class _FieldPlan:
    """One output field of a run: what is asked, then what :func:`_run` resolves for it."""
    field: str
    method: str
    options: dict
    confidence_field: str | None
    in_db: bool = False          # masks in the database instead of PNG files
    exists: bool = False
    conf_exists: bool = False
    rows: list = field(default_factory=list)
    description: dict = field(default_factory=dict)
    hash: str = ""
    lut: np.ndarray | None = None
    out_dtype: type = np.uint8
    to_skip: set = field(default_factory=set)
    mask_dir: str = ""
    run_extra: dict = field(default_factory=dict)
    report: PrelabelReport | None = None


def _resolve_classes(classes) -> ClassSource:
    """The core's class resolution (a preset, ``{value: name}`` mask targets, text or a list;
    never a server-side file path from a form), its errors as :class:`PrelabelInputError`."""
    if classes is None or (not isinstance(classes, (str, Mapping)) and not classes):
        raise PrelabelInputError("no vocabulary: give a preset, mask_targets or class names")
    try:
        return resolve_classes(classes, files=False)
    except ConfigError as e:
        raise PrelabelInputError(str(e)) from None


def _check_fields(samples, plans: Sequence[_FieldPlan]) -> None:
    import fiftyone as fo

    for p in plans:
        p.exists = _check_output_field(samples, p.field, "output", (fo.Segmentation,))
        if p.confidence_field:
            if p.confidence_field == p.field:
                raise PrelabelInputError("the confidence field must differ from the output field")
            p.conf_exists = _check_output_field(samples, p.confidence_field, "confidence",
                                                (fo.Heatmap,))
    names = [p.field for p in plans] + [p.confidence_field for p in plans if p.confidence_field]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise PrelabelInputError(f"field names {dup} are used twice in one run")


def _resolve_plan(p: _FieldPlan, seg, model, source: ClassSource) -> None:
    """Vocabulary values, settings description and hash of ``p`` from its Segmenter."""
    p.rows = ([(i, [n]) for i, n in enumerate(seg.class_names)] if source.preset
              else [(v, list(names)) for v, names in source.rows])
    values = [v for v, _ in p.rows]
    p.description = seg.describe()
    try:
        p.description["weights_digest"] = model.weights_digest[:16]
    except Exception:
        pass
    p.hash = settings_hash(p.description, values)
    p.lut = np.asarray(values, dtype=np.int64)
    p.out_dtype = np.uint8 if max(values) <= 255 else np.uint16


def _apply_resume_rules(view, p: _FieldPlan, n_total: int, overwrite: bool,
                        skip_labelled: bool) -> None:
    if p.exists:
        labelled = set(view.exists(p.field).values("id"))
        try:
            pairs = zip(view.values("id"), view.values(f"{p.field}.{HASH_ATTR}"))
            same = {i for i, hv in pairs if hv == p.hash and i in labelled}
        except Exception:  # attribute never written
            same = set()
        other = len(labelled - same)
        if other and not overwrite:
            raise PrelabelInputError(
                f"field '{p.field}' already holds labels made with other settings (or by "
                f"another tool) on {other} of the {n_total} targeted samples; choose another "
                "field name or allow overwriting")
        if skip_labelled:
            p.to_skip = same
    if p.conf_exists and not overwrite and not p.exists:
        raise PrelabelInputError(f"confidence field '{p.confidence_field}' already exists; "
                                 "choose another name or allow overwriting")


def _writable_mask_dir(out_root: str, label_field: str) -> str:
    mask_dir = os.path.join(out_root, label_field)
    try:
        os.makedirs(mask_dir, exist_ok=True)
        probe = os.path.join(mask_dir, f".write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise PrelabelInputError(f"cannot write masks to '{mask_dir}': {e}") from None
    return mask_dir


def _declare_fields(dataset, plans: Sequence[_FieldPlan]) -> None:
    """The first writes: fields and their mask_targets."""
    import fiftyone as fo
    import fiftyone.core.fields as fof

    mt = dict(dataset.mask_targets or {})
    for p in plans:
        if not p.exists:
            dataset.add_sample_field(p.field, fof.EmbeddedDocumentField,
                                     embedded_doc_type=fo.Segmentation)
        if p.confidence_field and not p.conf_exists:
            dataset.add_sample_field(p.confidence_field, fof.EmbeddedDocumentField,
                                     embedded_doc_type=fo.Heatmap)
        mt[p.field] = {int(v): str(n[0]) for v, n in p.rows}
    dataset.mask_targets = mt
    dataset.save()


@dataclass(frozen=True)
class _LabelTarget:
    """Where and how one field's labels are made (picklable: it travels to Ray actors)."""
    mask_dir: str        # "" when the masks go to the database
    hash: str
    lut: np.ndarray
    out_dtype: type
    confidence: bool


@dataclass(frozen=True)
class LabelData:
    """The small record of one result, what its label stores: the written PNGs' paths or, with
    masks in the database, the mask (and 8-bit confidence) arrays themselves."""
    mean_confidence: float
    mask_path: str | None = None
    confidence_path: str | None = None
    mask: np.ndarray | None = None
    confidence: np.ndarray | None = None


def _target(p: _FieldPlan) -> _LabelTarget:
    # a plan with masks in the database has no mask folder: its mask_dir is ""
    return _LabelTarget(p.mask_dir, p.hash, p.lut, p.out_dtype, bool(p.confidence_field))


def _label_data(t: _LabelTarget, sid: str, res) -> LabelData:
    """One result's label data; writes its mask (and confidence) PNGs, each atomically, unless
    the masks go to the database (the one maker of both the local and the Ray run, so their
    files are the same bytes)."""
    mask = t.lut[res.mask.astype(np.int64)].astype(t.out_dtype)
    conf = res.confidence       # a MaskResult's (the pre-label path) or a SegmentationResult's top probability
    conf8 = np.clip(np.rint(conf * 255), 0, 255).astype(np.uint8) if t.confidence else None
    if not t.mask_dir:
        return LabelData(float(conf.mean()), mask=mask, confidence=conf8)
    mpath = os.path.join(t.mask_dir, f"{sid}_{t.hash}.png")
    _write_png(mask, mpath)
    cpath = None
    if conf8 is not None:
        cpath = os.path.join(t.mask_dir, f"{sid}_{t.hash}_confidence.png")
        _write_png(conf8, cpath)
    return LabelData(float(conf.mean()), mask_path=mpath, confidence_path=cpath)


class LabelDataMaker:
    """The run's ``ModelSpec.finish``: in a Ray actor, replaces each result by its
    :class:`LabelData` (writing the PNGs there), so only masks travel back, never probability
    maps (a failed write is that field's failure)."""

    def __init__(self, targets: Mapping[str, _LabelTarget]):
        self.targets = dict(targets)

    def __call__(self, outcome):
        for f, res in list(outcome.results.items()):
            try:
                outcome.results[f] = _label_data(self.targets[f], outcome.item.id, res)
            except Exception as e:
                del outcome.results[f]
                outcome.errors[f] = e
        return outcome


def _labels_of(p: _FieldPlan, sid: str, res, synthetic: bool):
    """The labels of one result, ``(Segmentation, Heatmap or None)``, masks as PNG files or in
    the database (``p.in_db``); makes its :class:`LabelData` unless an actor already did."""
    import fiftyone as fo

    data = res if isinstance(res, LabelData) else _label_data(_target(p), sid, res)
    attrs = {HASH_ATTR: p.hash, "mean_confidence": data.mean_confidence}
    if synthetic:
        attrs["synthetic"] = True
    if data.mask_path is None:
        heatmap = (None if data.confidence is None
                   else fo.Heatmap(map=data.confidence, range=[0, 255]))
        return fo.Segmentation(mask=data.mask, **attrs), heatmap
    heatmap = (None if data.confidence_path is None
               else fo.Heatmap(map_path=data.confidence_path, range=[0, 255]))
    return fo.Segmentation(mask_path=data.mask_path, **attrs), heatmap


def _run(plans: list[_FieldPlan], samples, *, shared_trunk: bool, classes, arch, pretrained,
         model, settings, device, batch_size, output_dir, overwrite, skip_labelled, progress,
         vocabulary_source, executor=None, images_per_batch: int = 1) -> MultiPrelabelReport:
    """The run behind :func:`prelabel` (one plan, a Segmenter) and :func:`prelabel_many`
    (several plans, one MultiSegmenter). Every check happens before the first write."""
    import tfovss_core as tc

    from tfovss_core.spec.weights import is_synthetic

    from tfovss_fiftyone.loading import get_clip

    t0 = time.time()
    dataset = samples._dataset
    if samples.media_type != "image":
        raise PrelabelInputError(f"pre-labelling needs image samples, got {samples.media_type}")
    _check_fields(samples, plans)
    source = _resolve_classes(classes)
    preset_name = source.preset

    # -- model + segmenters (may raise ConfigError / WeightsError: nothing written yet) -------
    drv = {k: v for k, v in (settings or {}).items() if v is not None}
    if batch_size:
        drv.setdefault("batch_size", int(batch_size))
    given_model = model is not None
    if model is None:
        model = get_clip(arch, pretrained, device)
    segs = {p.field: tc.Segmenter(model, method=p.method, classes=source.segmenter_classes(),
                                  **{**drv, **p.options}) for p in plans}
    for p in plans:
        _resolve_plan(p, segs[p.field], model, source)
    synthetic = is_synthetic(getattr(model, "pretrained", None)) or is_synthetic(pretrained)

    # -- existing labels: resume / overwrite rules -------------------------------------------
    view = samples
    n_total = len(view)
    for p in plans:
        _apply_resume_rules(view, p, n_total, overwrite, skip_labelled)
    out_root = os.path.abspath(output_dir or default_output_dir(dataset))
    for p in plans:
        p.mask_dir = "" if p.in_db else _writable_mask_dir(out_root, p.field)

    # -- declare fields and run info (first writes) ------------------------------------------
    _declare_fields(dataset, plans)
    run_args = dict(preset=preset_name, source=vocabulary_source,
                    arch=getattr(model, "arch", arch),
                    pretrained=getattr(model, "pretrained", pretrained))
    for p in plans:
        p.report = PrelabelReport(field=p.field, settings_hash=p.hash, num_targeted=n_total,
                                  mask_dir=p.mask_dir, confidence_field=p.confidence_field,
                                  mask_targets=dict(dataset.mask_targets[p.field]),
                                  synthetic=synthetic, num_skipped=len(p.to_skip))
        if shared_trunk:
            p.run_extra = {"shared_trunk": True, "run_with": [q.field for q in plans]}
        _store_run(dataset, p, **run_args)

    # -- label: the job runner, one model pass (shared trunk), results into set_values ------
    from tfovss_core.engine.runner import Item, JobRunner, ModelPass, ModelSpec, RunRef

    batch_n = max(1, int(batch_size or 1))
    sink = _FieldsSink(dataset, plans, synthetic, batch_n)
    # any error on one sample is that sample's failure (listed in the report); the run goes on
    spec = ModelSpec(segs, shared_trunk=shared_trunk)
    if executor is not None:  # the actors build the same Segmenters and write the files
        if not given_model and not isinstance(pretrained, Mapping):
            spec.build = partial(_build_segmenters, arch, pretrained, device,
                                 source.segmenter_classes(), drv,
                                 [(p.field, p.method, p.options) for p in plans])
        spec.finish = LabelDataMaker({p.field: _target(p) for p in plans})
    # only masks and confidences are stored: the pre-label path (no probability maps, bounded memory)
    passes = ModelPass(spec, item_errors=(Exception,), output="mask", images_per_batch=images_per_batch)

    def on_progress(done: int, todo: int) -> None:
        if progress is not None and (done % batch_n == 0 or done == todo):
            progress(done, todo, f"{done}/{todo} samples")

    items = [Item(sid, path) for sid, path in zip(view.values("id"), view.values("filepath"))]
    # the PNG encoding and the database writes run on the runner's writer thread while the model
    # goes on (decoding already runs ahead on the executor's thread); a few results wait at most
    JobRunner(passes, [RunRef(p.field, p.hash) for p in plans], sink, executor=executor,
              item_errors=(Exception,), progress=on_progress, background_writes=WRITES_AHEAD).run(items)
    seconds = round(time.time() - t0, 3)
    for p in plans:
        p.report.num_failed = len(p.report.failures)
        p.report.seconds = seconds
        _store_run(dataset, p, **run_args)
    return MultiPrelabelReport(reports={p.field: p.report for p in plans},
                               methods={p.field: p.method for p in plans},
                               trunk_runs=passes.trunk_runs, seconds=seconds)


class _FieldsSink:
    """The pre-label sink: each result's mask (and confidence) PNGs, then the labels of every
    ``batch_size`` samples into their fields with one ``set_values`` per field. ``done``: the
    samples a field already holds with the same settings hash (resume)."""

    def __init__(self, dataset, plans: Sequence[_FieldPlan], synthetic: bool, batch_size: int):
        self.dataset = dataset
        self.plans = {p.field: p for p in plans}
        self.synthetic = synthetic
        self.batch_size = batch_size
        self.pending = 0   # samples written since the last flush
        self.labels: dict[str, dict] = {f: {} for f in self.plans}
        self.heatmaps: dict[str, dict] = {f: {} for f in self.plans}

    def done(self, run) -> set:
        return self.plans[run.label].to_skip

    def write(self, outcome) -> None:
        sid = outcome.item.id
        for f, res in outcome.results.items():
            p = self.plans[f]
            try:
                self.labels[f][sid], hm = _labels_of(p, sid, res, self.synthetic)
                if hm is not None:
                    self.heatmaps[f][sid] = hm
            except Exception as e:  # this field's files could not be written: its failure
                self.failure(outcome.item, e, [f])
        self.pending += 1
        if self.pending >= self.batch_size:
            self.flush()   # the labels of a batch reach the database together

    def failure(self, item, error, labels) -> None:
        for f in labels:
            self.plans[f].report.failures.append({"sample_id": item.id, "filepath": item.source,
                                                  "error": f"{type(error).__name__}: {error}"})
        logger.warning("pre-label of %s failed on %s: %s", ", ".join(f"'{f}'" for f in labels),
                       item.source, error)

    def flush(self) -> None:
        self.pending = 0
        for f, p in self.plans.items():
            if self.labels[f]:
                self.dataset.set_values(f, self.labels[f], key_field="id")
                if self.heatmaps[f]:
                    self.dataset.set_values(p.confidence_field, self.heatmaps[f], key_field="id")
            p.report.num_labelled += len(self.labels[f])
            self.labels[f], self.heatmaps[f] = {}, {}

    def close(self) -> None:
        self.flush()


def _write_png(arr: np.ndarray, path: str) -> None:
    from PIL import Image

    tmp = f"{path}.{os.getpid()}.tmp.png"  # per process: a retried batch never shares it
    Image.fromarray(arr).save(tmp)
    os.replace(tmp, path)


def _store_run(dataset, p: _FieldPlan, *, preset, source, arch, pretrained):
    import fiftyone.core.runs as fors

    config = fors.RunConfig(
        label_field=p.field, ovss_method=p.method, method_options=dict(p.options),
        arch=str(arch), pretrained=str(pretrained) if not isinstance(pretrained, Mapping)
        else "state dict", settings_hash=p.hash, preset=preset, vocabulary_source=source,
        vocabulary=[[int(v), list(n)] for v, n in p.rows],
        settings=json.loads(json.dumps(p.description.get("settings", {}), default=str)),
        description=json.loads(json.dumps(p.description, default=str)),
        mask_dir=p.mask_dir, confidence_field=p.confidence_field or None,
        report={k: v for k, v in p.report.to_dict().items() if k != "mask_targets"},
        **p.run_extra)
    dataset.register_run(run_key_for(p.field), config, overwrite=True, cleanup=False)
