"""The one job runner: items in, one model pass over them, results out to a sink.

Every batch job of tfovss runs here: ``tfovss benchmark`` (a JSON-lines records sink),
``tfovss segment`` (a files sink) and the FiftyOne plugin's pre-label and compare (a
``set_values`` sink in ``tfovss_fiftyone``). As in detectron2, where ``inference_on_dataset``
drives the model and the evaluator only consumes its outputs, the runner knows nothing about
what a result becomes; the sink knows nothing about how it was computed.

* **Items**: :class:`Item` (an id, an image source, and any context the sink needs, e.g. the
  ground truth's loader).
* **Runs**: one :class:`RunRef` per output of the pass (a method, or a method's field), with its
  run key (:func:`tfovss_core.spec.records.settings_key` of everything that determines the
  output). **Resume**: the runner asks the sink which ids it already holds for each run and
  computes, per item, only the runs still missing it; an item no run needs is skipped.
* **One model pass** (:class:`ModelPass`): one method, or several on a shared frozen trunk through
  :class:`~tfovss_core.engine.multi.MultiSegmenter` (each method's result is bit-for-bit its result
  alone). A resumed item that needs only some runs gets a MultiSegmenter of just those.
* **Failures**: an error of a listed kind (``item_errors``) on one item goes to
  ``sink.failure(item, error, labels)`` once, for the runs it failed, and the job goes on. If a
  shared pass fails, each method is retried alone, so an error is charged only to the method
  that raises it.
* **Decoding** runs on background threads (:func:`~tfovss_core.engine.multi.prefetch`), a bounded
  number of items ahead of the model.
* **Executors**: the per-item work is the plain function :func:`process` and the per-batch work
  :func:`run_batch` ``(model spec, works) -> outcomes``; :class:`SerialExecutor` runs it in this
  process. A distributed executor (Ray) maps :func:`run_batch` over batches in its workers, each
  building its model once from a picklable :class:`ModelSpec` ``build``, and yields the same
  :class:`Outcome` s to the same runner loop.
"""
from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence, runtime_checkable

from tfovss_core.errors import ConfigError, TfovssError

#: per-item errors by default: recorded for the item, the job goes on (anything else aborts it)
ITEM_ERRORS: tuple[type[BaseException], ...] = (TfovssError, OSError, ValueError)


@dataclass(frozen=True)
class Item:
    """One unit of work: ``id`` (unique in the job), ``source`` (a path, array or PIL image for the
    model) and ``context`` (whatever the sink needs with the result; the runner never reads it)."""
    id: str
    source: Any
    context: Any = None


@dataclass(frozen=True)
class RunRef:
    """One output of the pass: ``label`` names it in the pass (a method label), ``key`` is its
    run key (the settings hash the sink stores results under)."""
    label: str
    key: str


@dataclass
class Work:
    """An item and the labels of the runs that still need it."""
    item: Item
    labels: tuple[str, ...]


@dataclass
class Outcome:
    """What the model pass made of one :class:`Work`: results for some labels, errors for the
    others (every label is in exactly one of them)."""
    work: Work
    results: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, BaseException] = field(default_factory=dict)
    seconds: float = 0.0
    image: Any = None            # the decoded RGB array when the pass decoded it (overlays)
    groups: list[list[str]] = field(default_factory=list)  # labels that shared a frozen trunk

    @property
    def item(self) -> Item:
        return self.work.item


@runtime_checkable
class Sink(Protocol):
    """Where results go. ``done(run)``: the ids already held for ``run.key`` (resume);
    ``write(outcome)``: an item's results (``outcome.results``, by label); ``failure(item, error,
    labels)``: the item failed for those runs; ``close()``: the job ended (flush)."""

    def done(self, run: RunRef) -> Collection[str]: ...

    def write(self, outcome: Outcome) -> None: ...

    def failure(self, item: Item, error: BaseException, labels: Sequence[str]) -> None: ...

    def close(self) -> None: ...


# ---------------------------------------------------------------------------------------------
# the model pass

@dataclass
class ModelSpec:
    """What the model pass runs: predictors by label, in the order of the pass.

    ``predictors``: built ones (this process), each a :class:`~tfovss_core.Segmenter` or any object
    with ``predict(source)``; or ``build``: a picklable zero-argument callable returning them, for
    executors that build the model where the work runs. ``shared_trunk``: real Segmenters on one
    model run through a MultiSegmenter (frozen blocks shared where their windows coincide).
    ``finish``: a picklable ``Outcome -> Outcome`` that :func:`run_batch` applies where the work
    runs, e.g. writing the mask files there so that only small records travel back to the
    driver (the sink must accept what it makes); the :class:`SerialExecutor` does not apply it."""
    predictors: Mapping[str, Any] | None = None
    build: Callable[[], Mapping[str, Any]] | None = None
    shared_trunk: bool = True
    finish: Callable[["Outcome"], "Outcome"] | None = None

    def materialise(self) -> Mapping[str, Any]:
        if self.predictors is None:
            if self.build is None:
                raise ConfigError("a ModelSpec needs predictors or build")
            self.predictors = dict(self.build())
        return self.predictors


class ModelPass:
    """The model side of a job in one process: the predictors, and a MultiSegmenter per set of
    labels an item needs (cached; a fresh run needs one, a resumed run a few).

    ``output``: ``"probs"`` (results are ``SegmentationResult`` s, the protocol path with every
    class's probability map) or ``"mask"`` (``MaskResult`` s: the same mask and confidence in
    bounded memory, for sinks that store only those).
    ``images_per_batch``: images whose windows go through the model together
    (:meth:`~tfovss_core.engine.multi.MultiSegmenter.predict_many`; images of one shape share
    forward passes, which keeps a GPU busy); 1: one image at a time."""

    def __init__(self, spec: ModelSpec | Mapping[str, Any], item_errors=ITEM_ERRORS, output: str = "probs",
                 images_per_batch: int = 1):
        from tfovss_core.engine.segmenter import check_output

        check_output(output)
        if int(images_per_batch) < 1:
            raise ConfigError(f"images_per_batch={images_per_batch}: expected 1 or more")
        self.output = output
        self.images_per_batch = int(images_per_batch)
        self.spec = spec if isinstance(spec, ModelSpec) else ModelSpec(predictors=dict(spec))
        self.predictors = dict(self.spec.materialise())
        if not self.predictors:
            raise ConfigError("the model pass has no predictors")
        self.item_errors = tuple(item_errors)
        self._multis: dict[tuple[str, ...], Any] = {}
        # one Segmenter alone goes through a MultiSegmenter of itself too (its own predict, bit for
        # bit): that path decodes ahead on the executor's threads and batches images
        self._shareable = ((self.spec.shared_trunk or len(self.predictors) == 1)
                           and self._same_model_segmenters())

    def _same_model_segmenters(self) -> bool:
        from tfovss_core.engine.segmenter import Segmenter

        preds = list(self.predictors.values())
        # a Segmenter with a feature cache predicts through it (no trunk for a cached image)
        return (all(isinstance(p, Segmenter) and p.feature_cache is None for p in preds)
                and len({id(p.model) for p in preds}) == 1)

    @property
    def labels(self) -> list[str]:
        return list(self.predictors)

    @property
    def trunk_runs(self) -> int:
        """Frozen-trunk window batches computed by this pass's MultiSegmenters."""
        return sum(m.trunk_runs for m in self._multis.values())

    def multi(self, labels: Sequence[str]):
        """The MultiSegmenter of ``labels`` (None when the predictors cannot share a pass)."""
        if not self._shareable:
            return None
        key = tuple(labels)
        if key not in self._multis:
            from tfovss_core.engine.multi import MultiSegmenter

            model = next(iter(self.predictors.values())).model
            self._multis[key] = MultiSegmenter(model, [(lb, self.predictors[lb]) for lb in key])
        return self._multis[key]

    def decode_job(self, work: Work) -> Callable[[], Any] | None:
        """The decoding of ``work``'s image, to run on a background thread (None: decoded inline)."""
        multi = self.multi(work.labels)
        return None if multi is None else partial(multi.prepare_all, work.item.source)


def _decoded(multi, work: Work, prepared) -> dict:
    """``multi.prepare_all`` of the work's image: the future's result or the value decoded ahead
    (``prepared``), else decoded now. Raises what decoding raised."""
    if hasattr(prepared, "result"):
        return prepared.result()
    return prepared if prepared is not None else multi.prepare_all(work.item.source)


def process(model: ModelPass, work: Work, prepared=None) -> Outcome:
    """One item through the model pass (the plain per-item function every executor runs).

    ``prepared``: a future or value of :meth:`ModelPass.decode_job` (decoded ahead), or None."""
    t = time.time()
    out = Outcome(work)
    labels = list(work.labels)
    multi = model.multi(labels)
    if multi is not None:
        try:  # an image that cannot be decoded fails every run at once
            ready = _decoded(multi, work, prepared)
        except model.item_errors as exc:
            out.errors = {lb: exc for lb in labels}
            out.seconds = time.time() - t
            return out
        try:
            results = multi.predict(work.item.source, prepared=ready, output=model.output)
        except model.item_errors as exc:
            if len(labels) == 1:
                out.errors = {labels[0]: exc}
                out.seconds = time.time() - t
                return out
            # a shared pass failed: each method alone, so only the one that raises is charged
        else:
            out.results = dict(results)
            out.groups = [list(g) for g in multi.last_groups]
            out.image = next(iter(ready.values()))[0]
            out.seconds = time.time() - t
            return out
    for lb in labels:
        try:
            out.results[lb] = (model.predictors[lb].predict(work.item.source) if model.output == "probs"
                               else model.predictors[lb].predict(work.item.source, output=model.output))
        except model.item_errors as exc:
            out.errors[lb] = exc
    out.seconds = time.time() - t
    return out


def process_many(model: ModelPass, works: Sequence[Work], prepared: Sequence | None = None) -> list[Outcome]:
    """Several items through the model pass, ``model.images_per_batch`` at a time with their
    windows batched across images (:meth:`MultiSegmenter.predict_many`); the same outcomes as
    :func:`process` on each. An image that cannot be decoded fails alone; if a batched pass
    raises an item error, its items go through :func:`process` one by one, so the error is
    charged only to the item (and method) that raises it.

    ``prepared``: per work, a future or value of :meth:`ModelPass.decode_job`, or None."""
    prepared = list(prepared) if prepared is not None else [None] * len(works)
    step = model.images_per_batch
    if step == 1:
        return [process(model, w, p) for w, p in zip(works, prepared)]
    outs: list[Outcome] = []
    for start in range(0, len(works), step):
        chunk = range(start, min(start + step, len(works)))
        # items needing other runs (a resumed job) share a pass only with items needing the same
        by_runs: dict[tuple[str, ...], list[int]] = {}
        for n in chunk:
            by_runs.setdefault(works[n].labels, []).append(n)
        done: dict[int, Outcome] = {}
        for members in by_runs.values():
            made = _process_together(model, [works[n] for n in members], [prepared[n] for n in members])
            done.update(zip(members, made))
        outs.extend(done[n] for n in chunk)
    return outs


def _process_together(model: ModelPass, works: Sequence[Work], prepared: Sequence) -> list[Outcome]:
    """Works that need the same runs, their windows batched across their images."""
    multi = model.multi(works[0].labels)
    if multi is None:          # predictors that cannot share a pass: one at a time
        return [process(model, w, p) for w, p in zip(works, prepared)]
    t = time.time()
    outs = [Outcome(w) for w in works]
    readies: dict[int, Any] = {}
    for n, (w, ready) in enumerate(zip(works, prepared)):
        try:  # an image that cannot be decoded fails every run at once, and alone
            readies[n] = _decoded(multi, w, ready)
        except model.item_errors as exc:
            outs[n].errors = {lb: exc for lb in w.labels}
    members = list(readies)
    if members:
        try:
            results = multi.predict_many([works[n].item.source for n in members], [readies[n] for n in members],
                                         output=model.output)
        except model.item_errors:
            for n in members:
                outs[n] = process(model, works[n], readies[n])
            return outs
        for n, res, groups in zip(members, results, multi.image_groups):
            outs[n].results = dict(res)
            outs[n].groups = [list(g) for g in groups]
            outs[n].image = next(iter(readies[n].values()))[0]
    for o in outs:                 # the batch's time, shared out
        o.seconds = (time.time() - t) / len(works)
    return outs


def run_batch(model: ModelPass | ModelSpec, works: Sequence[Work]) -> list[Outcome]:
    """A batch of works through the model pass: the unit a distributed executor ships. The
    spec's ``finish`` (if any) is applied to each outcome here, where the work ran."""
    passes = model if isinstance(model, ModelPass) else ModelPass(model)
    outs = process_many(passes, works)
    finish = passes.spec.finish
    return outs if finish is None else [finish(o) for o in outs]


class SerialExecutor:
    """Runs the works one after the other in this process, decoding ``decode_workers`` threads
    ahead (0: decode inline)."""

    def __init__(self, decode_workers: int = 1, ahead: int | None = None):
        self.decode_workers = decode_workers
        self.ahead = ahead

    def map(self, model: ModelPass, works: Iterable[Work]) -> Iterator[Outcome]:
        if self.decode_workers <= 0:
            jobs: Iterable = ((w, None) for w in works)
        else:
            from tfovss_core.engine.multi import prefetch

            # decoding runs at least one batch of images ahead of the model
            ahead = max(self.ahead or 2 * self.decode_workers, model.images_per_batch + self.decode_workers)
            jobs = prefetch(works, model.decode_job, self.decode_workers, ahead)
        batch: list = []
        for job in jobs:
            batch.append(job)
            if len(batch) == model.images_per_batch:
                yield from process_many(model, [w for w, _ in batch], [f for _, f in batch])
                batch = []
        yield from process_many(model, [w for w, _ in batch], [f for _, f in batch])


# ---------------------------------------------------------------------------------------------
# the runner

@dataclass
class JobStats:
    """Counts of one job, per run label."""
    total: int = 0                                        # items offered
    todo: int = 0                                         # items that needed any run
    processed: int = 0                                    # items sent through the model pass so far
    computed: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)  # already held by the sink (resume)
    seconds: float = 0.0


class JobRunner:
    """Runs ``runs`` (one per label of the model pass) over items into ``sink``.

    ``progress(done, todo)`` after every item sent through the pass (``todo``: the items that
    need any run). The sink's ``close`` runs at the end, also when the job aborts.
    ``background_writes``: when > 0, the sink's writes run on a background thread with at most
    that many waiting (:class:`~tfovss_core.engine.pipeline.BackgroundSink`), so encoding and
    storing results overlaps the model's work on the next items.
    """

    def __init__(self, model: ModelPass | ModelSpec | Mapping[str, Any], runs: Sequence[RunRef],
                 sink: Sink, *, executor=None, item_errors=ITEM_ERRORS,
                 progress: Callable[[int, int], None] | None = None, background_writes: int = 0):
        self.model = model if isinstance(model, ModelPass) else ModelPass(model, item_errors)
        self.runs = list(runs)
        labels = [r.label for r in self.runs]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"run labels {labels} are not unique")
        missing = sorted(set(labels) - set(self.model.labels))
        if missing:
            raise ConfigError(f"runs {missing} have no predictor in the model pass")
        if background_writes > 0:
            from tfovss_core.engine.pipeline import BackgroundSink

            sink = BackgroundSink(sink, max_pending=background_writes)
        self.sink = sink
        self.executor = executor or SerialExecutor()
        self.progress = progress
        self.stats = JobStats()

    def plan(self, items: Iterable[Item]) -> tuple[list[Work], dict[str, int]]:
        """The works still to do and, per label, how many items the sink already holds."""
        done = {r.label: set(self.sink.done(r)) for r in self.runs}
        works, skipped = [], {r.label: 0 for r in self.runs}
        seen: set[str] = set()
        for item in items:
            if item.id in seen:
                raise ConfigError(f"item id {item.id!r} is given twice")
            seen.add(item.id)
            need = tuple(r.label for r in self.runs if item.id not in done[r.label])
            for r in self.runs:
                skipped[r.label] += item.id in done[r.label]
            if need:
                works.append(Work(item, need))
        return works, skipped

    def run(self, items: Iterable[Item]) -> JobStats:
        t0 = time.time()
        items = list(items)
        works, skipped = self.plan(items)
        st = self.stats = JobStats(total=len(items), todo=len(works), skipped=skipped,
                                   computed={r.label: 0 for r in self.runs},
                                   failed={r.label: 0 for r in self.runs})
        try:
            for out in self.executor.map(self.model, works):
                self._deliver(out)
                st.processed += 1
                if self.progress is not None:
                    self.progress(st.processed, len(works))
        finally:
            self.sink.close()
            st.seconds = time.time() - t0
        return st

    def _deliver(self, out: Outcome) -> None:
        st = self.stats
        if out.results:
            self.sink.write(out)
            for lb in out.results:
                st.computed[lb] += 1
        by_error: dict[int, tuple[BaseException, list[str]]] = {}
        for lb, exc in out.errors.items():
            by_error.setdefault(id(exc), (exc, []))[1].append(lb)
        for exc, labels in by_error.values():
            self.sink.failure(out.item, exc, labels)
            for lb in labels:
                st.failed[lb] += 1


__all__ = ["Item", "RunRef", "Work", "Outcome", "Sink", "ModelSpec", "ModelPass", "process",
           "process_many", "run_batch", "SerialExecutor", "JobStats", "JobRunner", "ITEM_ERRORS"]
