"""Pre-labelling a FiftyOne collection with open-vocabulary segmentation (the SDK behind the
"Pre-label with open-vocabulary segmentation" operator).

    from plugin.prelabel import prelabel
    report = prelabel(dataset.take(50), "ovss", method="sclip", arch="ViT-B-16",
                      pretrained="openai", classes="background\\ncat, kitten\\ndog",
                      output_dir="/data/masks", confidence_field="ovss_confidence")

* Masks are written as PNG files (``mask_path``) under ``output_dir/<field>/``, named
  ``<sample id>_<settings hash>.png``; existing files are never replaced, except those the same
  settings wrote in an interrupted run (same name, same content).
* The field's ``mask_targets`` are set; every label carries ``tfovss_hash`` (the settings hash)
  and ``mean_confidence`` (mean top-class probability: sort by it to review uncertain samples).
* Resumable: samples already labelled with the same settings hash are skipped (unless
  ``skip_labelled=False``). A field that exists with other labels is only replaced with
  ``overwrite=True``.
* A sample that fails (unreadable image, ...) is listed in the report; the run goes on.
* The run's settings are stored on the dataset (``dataset.get_run_info("tfovss_prelabel_<field>")``)
  and shown by the "OVSS evaluations" panel.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

logger = logging.getLogger(__name__)

RUN_PREFIX = "tfovss_prelabel_"
HASH_ATTR = "tfovss_hash"
_FIELD_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_VALUE_RE = re.compile(r"^\s*(\d+)\s*:\s*(.*)$")


class PrelabelInputError(ValueError):
    """Bad pre-label input; raised before anything is written."""


# ---------------------------------------------------------------------------------------------
# vocabulary
# ---------------------------------------------------------------------------------------------

def parse_vocabulary(text: str) -> list[tuple[int, list[str]]]:
    """``[(value, [name, synonym, ...]), ...]`` from free text.

    One class per line, synonyms separated by commas; the first name is the display name. A line
    may start with ``<value>:`` to give the mask value explicitly (then every line must); else
    the value is the line's index. Blank lines and lines starting with ``#`` are ignored. The first
    class gets the pixels under the background threshold, so it is usually ``background``.
    """
    rows = []
    for raw in str(text or "").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _VALUE_RE.match(line)
        value = int(m.group(1)) if m else None
        rest = m.group(2) if m else line
        names = [n.strip() for n in rest.split(",") if n.strip()]
        if not names:
            raise PrelabelInputError(f"vocabulary line {raw!r} has no class name")
        rows.append((value, names))
    if not rows:
        raise PrelabelInputError("the vocabulary is empty: give one class per line")
    explicit = [v is not None for v, _ in rows]
    if any(explicit) and not all(explicit):
        raise PrelabelInputError("give a '<value>:' prefix on every vocabulary line or on none")
    if not any(explicit):
        rows = [(i, names) for i, (_, names) in enumerate(rows)]
    values = [v for v, _ in rows]
    if len(set(values)) != len(values):
        dup = sorted({v for v in values if values.count(v) > 1})
        raise PrelabelInputError(f"vocabulary values {dup} are used twice")
    if max(values) > 65535:
        raise PrelabelInputError("vocabulary values must be <= 65535")
    names = [n[0].lower() for _, n in rows]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise PrelabelInputError(f"class names {dup} appear on several lines; put synonyms on one "
                                 "line, separated by commas")
    return rows


def vocabulary_from_mask_targets(targets: Mapping) -> list[tuple[int, list[str]]]:
    rows = []
    for k, v in sorted(((int(k), v) for k, v in targets.items())):
        rows.append((k, [str(v)]))
    if not rows:
        raise PrelabelInputError("the mask_targets are empty")
    return rows


def vocabulary_to_text(rows: Sequence[tuple[int, Sequence[str]]]) -> str:
    """Inverse of :func:`parse_vocabulary` (explicit values unless they are 0..n-1)."""
    implicit = [v for v, _ in rows] == list(range(len(rows)))
    lines = []
    for v, names in rows:
        body = ", ".join(names)
        lines.append(body if implicit else f"{v}: {body}")
    return "\n".join(lines)


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

def settings_hash(description: Mapping, values: Sequence[int]) -> str:
    d = json.loads(json.dumps(description, default=str))
    model = d.get("model")
    if isinstance(model, dict):
        model.pop("device", None)
    blob = json.dumps({"segmenter": d, "values": list(values)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


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
             vocabulary_source: str | None = None) -> PrelabelReport:
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

    Returns:
        a :class:`PrelabelReport`

    Raises:
        PrelabelInputError / tfovss_core.ConfigError / WeightsError: before anything is written
    """
    import fiftyone as fo
    import fiftyone.core.fields as fof

    import tfovss_core as tc

    from .model import get_clip

    t0 = time.time()
    dataset = samples._dataset
    if samples.media_type != "image":
        raise PrelabelInputError(f"pre-labelling needs image samples, got {samples.media_type}")
    exists = _check_output_field(samples, label_field, "output", (fo.Segmentation,))
    if confidence_field:
        if confidence_field == label_field:
            raise PrelabelInputError("the confidence field must differ from the output field")
        conf_exists = _check_output_field(samples, confidence_field, "confidence", (fo.Heatmap,))
    else:
        conf_exists = False

    # -- vocabulary --------------------------------------------------------------------------
    preset_name = None
    if isinstance(classes, str) and "\n" not in classes and "," not in classes \
            and classes.strip() in tc.presets.list_presets():
        preset_name = classes.strip()
        rows = None
    elif isinstance(classes, Mapping):
        rows = vocabulary_from_mask_targets(classes)
    elif isinstance(classes, str):
        rows = parse_vocabulary(classes)
    elif classes:
        rows = [(i, [c] if isinstance(c, str) else [str(s) for s in c])
                for i, c in enumerate(classes)]
    else:
        raise PrelabelInputError("no vocabulary: give a preset, mask_targets or class names")

    # -- model + segmenter (may raise ConfigError / WeightsError: nothing written yet) ---------
    options = {k: v for k, v in (method_options or {}).items() if v is not None}
    drv = {k: v for k, v in (settings or {}).items() if v is not None}
    if batch_size:
        drv.setdefault("batch_size", int(batch_size))
    if model is None:
        model = get_clip(arch, pretrained, device)
    seg_classes = preset_name if preset_name else [names for _, names in rows]
    seg = tc.Segmenter(model, method=method, classes=seg_classes, **options, **drv)
    if preset_name:
        rows = [(i, [n]) for i, n in enumerate(seg.class_names)]
    values = [v for v, _ in rows]
    display = {v: n[0] for v, n in rows}
    if preset_name:
        display = {i: n for i, n in enumerate(seg.class_names)}
    description = seg.describe()
    try:
        description["weights_digest"] = model.weights_digest[:16]
    except Exception:
        pass
    h = settings_hash(description, values)
    synthetic = str(getattr(model, "arch", "")).startswith("tiny")
    lut = np.asarray(values, dtype=np.int64)
    out_dtype = np.uint8 if max(values) <= 255 else np.uint16

    # -- existing labels: resume / overwrite rules -------------------------------------------
    view = samples
    n_total = len(view)
    to_skip: set[str] = set()
    if exists:
        labelled = set(view.exists(label_field).values("id"))
        try:
            pairs = zip(view.values("id"), view.values(f"{label_field}.{HASH_ATTR}"))
            same = {i for i, hv in pairs if hv == h and i in labelled}
        except Exception:  # attribute never written
            same = set()
        other = len(labelled - same)
        if other and not overwrite:
            raise PrelabelInputError(
                f"field '{label_field}' already holds labels made with other settings (or by "
                f"another tool) on {other} of the {n_total} targeted samples; choose another "
                "field name or allow overwriting")
        if skip_labelled:
            to_skip = same
    if conf_exists and not overwrite and not exists:
        raise PrelabelInputError(f"confidence field '{confidence_field}' already exists; choose "
                                 "another name or allow overwriting")

    out_root = os.path.abspath(output_dir or default_output_dir(dataset))
    mask_dir = os.path.join(out_root, label_field)
    try:
        os.makedirs(mask_dir, exist_ok=True)
        probe = os.path.join(mask_dir, f".write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise PrelabelInputError(f"cannot write masks to '{mask_dir}': {e}") from None

    # -- declare fields and run info (first writes) ------------------------------------------
    if not exists:
        dataset.add_sample_field(label_field, fof.EmbeddedDocumentField,
                                 embedded_doc_type=fo.Segmentation)
    if confidence_field and not conf_exists:
        dataset.add_sample_field(confidence_field, fof.EmbeddedDocumentField,
                                 embedded_doc_type=fo.Heatmap)
    mt = dict(dataset.mask_targets or {})
    mt[label_field] = {int(v): str(n) for v, n in display.items()}
    dataset.mask_targets = mt
    dataset.save()

    report = PrelabelReport(field=label_field, settings_hash=h, num_targeted=n_total,
                            mask_dir=mask_dir, confidence_field=confidence_field or None,
                            mask_targets=dict(mt[label_field]), synthetic=synthetic)
    _store_run(dataset, label_field, method, options, drv, description, h, rows, preset_name,
               vocabulary_source, mask_dir, confidence_field, report, arch=getattr(model, "arch", arch),
               pretrained=getattr(model, "pretrained", pretrained))

    # -- label ----------------------------------------------------------------------------------
    work = view.select_fields() if not to_skip else view.exclude(list(to_skip)).select_fields()
    report.num_skipped = len(to_skip)
    todo = len(work)
    done = 0
    batch_n = max(1, int(batch_size or 1))
    ids_paths = list(zip(work.values("id"), work.values("filepath")))
    for start in range(0, len(ids_paths), batch_n):
        chunk = ids_paths[start:start + batch_n]
        labels, heatmaps = {}, {}
        for sid, path in chunk:
            try:
                res = seg.predict(path)
                mask = lut[res.mask.astype(np.int64)].astype(out_dtype)
                mpath = os.path.join(mask_dir, f"{sid}_{h}.png")
                _write_png(mask, mpath)
                conf = res.probs.max(axis=0)
                attrs = {HASH_ATTR: h, "mean_confidence": float(conf.mean())}
                if synthetic:
                    attrs["synthetic"] = True
                labels[sid] = fo.Segmentation(mask_path=mpath, **attrs)
                if confidence_field:
                    cpath = os.path.join(mask_dir, f"{sid}_{h}_confidence.png")
                    _write_png(np.clip(np.rint(conf * 255), 0, 255).astype(np.uint8), cpath)
                    heatmaps[sid] = fo.Heatmap(map_path=cpath, range=[0, 255])
            except Exception as e:  # per-sample failure: listed, the run goes on
                report.failures.append({"sample_id": sid, "filepath": path,
                                        "error": f"{type(e).__name__}: {e}"})
                logger.warning("pre-label failed on %s: %s", path, e)
        if labels:
            dataset.set_values(label_field, labels, key_field="id")
            if heatmaps:
                dataset.set_values(confidence_field, heatmaps, key_field="id")
        report.num_labelled += len(labels)
        done += len(chunk)
        if progress is not None:
            progress(done, todo, f"{done}/{todo} samples")
    report.num_failed = len(report.failures)
    report.seconds = round(time.time() - t0, 3)
    _store_run(dataset, label_field, method, options, drv, description, h, rows, preset_name,
               vocabulary_source, mask_dir, confidence_field, report, arch=getattr(model, "arch", arch),
               pretrained=getattr(model, "pretrained", pretrained))
    return report


def _write_png(arr: np.ndarray, path: str) -> None:
    from PIL import Image

    tmp = path + ".tmp.png"
    Image.fromarray(arr).save(tmp)
    os.replace(tmp, path)


def _store_run(dataset, label_field, method, options, drv, description, h, rows, preset,
               source, mask_dir, confidence_field, report, arch, pretrained):
    import fiftyone.core.runs as fors

    key = run_key_for(label_field)
    config = fors.RunConfig(
        label_field=label_field, ovss_method=method, method_options=dict(options),
        arch=str(arch), pretrained=str(pretrained) if not isinstance(pretrained, Mapping)
        else "state dict", settings_hash=h, preset=preset, vocabulary_source=source,
        vocabulary=[[int(v), list(n)] for v, n in rows],
        settings=json.loads(json.dumps(description.get("settings", {}), default=str)),
        description=json.loads(json.dumps(description, default=str)),
        mask_dir=mask_dir, confidence_field=confidence_field or None,
        report={k: v for k, v in report.to_dict().items() if k != "mask_targets"})
    dataset.register_run(key, config, overwrite=True, cleanup=False)
