"""Fixtures of the FiftyOne tests (and of e2e/ below): an isolated database and small datasets.
:mod:`support.fo` is imported first: it sets FIFTYONE_* before fiftyone is imported."""
from support.fo import *  # noqa: F401,F403  (fixtures)
