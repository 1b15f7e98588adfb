"""Fixtures of the FiftyOne tests (and of e2e/ below): an isolated database and small datasets,
and a real Label Studio server with a pre-labelled dataset (:mod:`support.labelstudio`).
:mod:`support.fo` is imported first: it sets FIFTYONE_* before fiftyone is imported."""
from support.fo import *  # noqa: F401,F403  (fixtures)
from support.labelstudio import label_studio, ls_env, prelabelled  # noqa: F401  (fixtures)
