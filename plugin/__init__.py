"""FiftyOne plugin ``@tfovss/ovss`` (entry point named by the repo-root ``fiftyone.yml``).

Operators: pre-label with open-vocabulary segmentation, compare OVSS methods (several methods
on a shared CLIP trunk, each evaluated), evaluate segmentations (MMSeg-exact mIoU), export COCO
masks; panel: OVSS evaluations. Python API: :mod:`plugin.model` (``load_ovss_model`` for
``apply_model``), :mod:`plugin.prelabel` (``prelabel``, ``prelabel_many``), :mod:`plugin.compare`
(``compare_methods``), :mod:`plugin.evaluation` (``run_evaluation``), :mod:`plugin.export`.

FiftyOne loads this file under a synthetic module name each time it rebuilds its plugin registry.
The work is done by the regular package ``plugin`` (the repository root is put on ``sys.path`` if
needed), so classes stored in the database (evaluation configs and results) have the stable
import path ``plugin.evaluation.*``, and heavy imports (torch, tfovss_core) happen only inside
operator runs.
"""
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ensure_importable():
    try:
        import plugin  # noqa: F401  (installed, or the repo root already on sys.path)

        if os.path.abspath(os.path.dirname(plugin.__file__)) == os.path.join(_ROOT, "plugin"):
            return
    except ImportError:
        pass
    if _ROOT not in sys.path:
        sys.path.insert(0, _ROOT)


def register(p):
    _ensure_importable()
    from plugin.operators import (CompareMethods, EvaluateSegmentations, ExportCocoMasks,
                                  PrelabelSegmentation)
    from plugin.panels import OVSSEvaluationsPanel

    p.register(PrelabelSegmentation)
    p.register(CompareMethods)
    p.register(EvaluateSegmentations)
    p.register(ExportCocoMasks)
    p.register(OVSSEvaluationsPanel)
