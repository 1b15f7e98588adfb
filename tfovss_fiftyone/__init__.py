"""tfovss on FiftyOne (``pip install tfovss[fiftyone]``): pre-label, compare, evaluate and export
from Python, and the operators and panel that the ``@tfovss/ovss`` plugin (``plugin/``) registers.

Python API: :mod:`tfovss_fiftyone.model` (``load_ovss_model`` for ``apply_model``),
:mod:`tfovss_fiftyone.prelabel` (``prelabel``, ``prelabel_many``), :mod:`tfovss_fiftyone.compare`
(``compare_methods``), :mod:`tfovss_fiftyone.evaluation` (``run_evaluation``),
:mod:`tfovss_fiftyone.export` (``export_coco_masks``).

Nothing heavy is imported here: FiftyOne imports the operators when it builds its plugin registry,
and torch / tfovss_core are imported inside the operators' ``execute``.
"""
