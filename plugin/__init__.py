"""FiftyOne plugin ``@tfovss/ovss`` (entry point named by the repo-root ``fiftyone.yml``).

A thin shim: the operators and the panel live in the installable package :mod:`tfovss_fiftyone`
(``pip install tfovss[fiftyone]``), so classes stored in a database (evaluation configs and
results) import from any process that has the package, not only from this checkout.
"""


def register(p):
    from tfovss_fiftyone.operators import (CompareMethods, EvaluateSegmentations, ExportCocoMasks,
                                           PrelabelSegmentation)
    from tfovss_fiftyone.operators import LoadFromLabelStudio, SendToLabelStudio
    from tfovss_fiftyone.panels import OVSSEvaluationsPanel
    from tfovss_fiftyone.vocabulary_panel import VocabularyStudioPanel

    p.register(PrelabelSegmentation)
    p.register(CompareMethods)
    p.register(EvaluateSegmentations)
    p.register(ExportCocoMasks)
    p.register(SendToLabelStudio)
    p.register(LoadFromLabelStudio)
    p.register(OVSSEvaluationsPanel)
    p.register(VocabularyStudioPanel)
