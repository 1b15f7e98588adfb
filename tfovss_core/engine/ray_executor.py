"""A Ray executor for the job runner: :func:`~tfovss_core.engine.runner.run_batch` in a pool of
Ray actors, one model per actor, with the same ``map(model, works) -> outcomes`` interface as
:class:`~tfovss_core.engine.runner.SerialExecutor`.

    from tfovss_core.engine.ray_executor import RayExecutor
    JobRunner(model_pass, runs, sink, executor=RayExecutor(num_actors=2, batch_size=4)).run(items)

* **Where the model comes from.** Each actor builds its model once: from the spec's picklable
  ``build`` when the :class:`~tfovss_core.engine.runner.ModelSpec` has one (each node loads its
  own weights), else the driver's built predictors, shipped once through Ray's object store.
* **What travels.** Works (an id and a path) go out in batches of ``batch_size``; outcomes come
  back as they complete (not in submission order). The spec's ``finish`` runs in the actor (the
  pre-label writes its mask PNGs there, atomically, and returns small records); the decoded image
  never travels back (a sink that needs it reads it again with the project's loader).
* **Same results.** An actor runs the very function the local runner runs (``process`` through
  ``run_batch``) on the same inputs, reading images with the project's loader (EXIF applied), so
  the outputs are bit-identical to a local run with the same settings.
* **Faults.** Actors restart when their process dies and Ray resubmits the batch that was running
  (``max_restarts=-1``, ``max_task_retries=-1``); a batch's outcomes reach the driver once.
  Per-item errors are outcomes like in a local run; any other error aborts the job.
* **Which Ray.** ``address=None`` and no Ray running in this process: a local Ray is started on
  loopback (``127.0.0.1``, no dashboard, a temporary directory) and stopped at the end of the
  job. ``address="auto"`` or ``"ray://host:10001"`` (or ``$RAY_ADDRESS``, which ``ray.init``
  reads when ``address`` is None and the variable is set) joins a cluster. When Ray is already
  initialised in this process it is used as it is and left running.

Why an actor pool and not ``ray.data.Dataset.map_batches``: the job runner already streams
works and consumes outcomes one by one, and the pool gives exactly what the guarantees need (each
batch's outcomes delivered once, a dead actor's batch rerun, outcomes as they complete, no Arrow
conversion of masks) with less start-up; a Ray Data pipeline would add a second scheduler.

Ray is an optional dependency: ``pip install "tfovss[ray]"``.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from tfovss_core.engine.runner import ITEM_ERRORS, ModelPass, ModelSpec, Outcome, Work, run_batch
from tfovss_core.errors import ConfigError

_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
RAY_EXTRA_HINT = 'the Ray executor needs Ray: pip install "tfovss[ray]" (the [ray] extra)'


def require_ray():
    """``ray``, or a ConfigError naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise ConfigError(RAY_EXTRA_HINT) from None
    return ray


def _code_root() -> str:
    """The folder holding the ``tfovss_core`` this driver runs, so that local workers import
    the same code (a checkout, not whatever else is installed)."""
    import tfovss_core

    return str(Path(tfovss_core.__file__).resolve().parents[1])


def start_local_ray(num_cpus: int | None = None, num_gpus: int | None = None,
                    temp_dir: str | None = None, **kwargs):
    """Starts a Ray in this process on loopback only: node address 127.0.0.1, no dashboard, a
    temporary directory, workers importing this driver's code. Returns the ``ray.init`` context."""
    ray = require_ray()
    from ray._private import ray_constants

    # Ray turns 127.0.0.1 into the machine's network address unless its "no cluster" flag is
    # on (what $RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 sets when Ray is imported): on for this start
    # only, so that joining a real cluster later in this process still advertises a real address
    saved_env, saved_flag = os.environ.get(_LOOPBACK_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_LOOPBACK_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    tmp = temp_dir or tempfile.mkdtemp(prefix="tfovss-ray-")
    path = os.pathsep.join([_code_root()] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    try:
        ctx = ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                       _temp_dir=tmp, _node_ip_address="127.0.0.1", log_to_driver=False,
                       runtime_env={"env_vars": {"PYTHONPATH": path}}, **kwargs)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(_LOOPBACK_ENV, None)
        else:
            os.environ[_LOOPBACK_ENV] = saved_env
    nodes = {n["NodeManagerAddress"] for n in ray.nodes()}
    if nodes != {"127.0.0.1"}:  # never serve on the network by accident
        ray.shutdown()
        raise ConfigError(f"the local Ray did not bind to loopback (nodes at {sorted(nodes)})")
    return ctx


class _BatchWorker:
    """The actor: one model pass, built once; runs batches of works. ``output``: the driver's
    ``ModelPass.output`` (``"mask"``: the pre-label path, no probability maps in the actor) and
    ``images_per_batch`` (images whose windows share forward passes in the actor)."""

    def __init__(self, spec: ModelSpec, item_errors: Sequence[type], output: str = "probs",
                 images_per_batch: int = 1):
        self.model = ModelPass(spec, item_errors, output=output, images_per_batch=images_per_batch)

    def pid(self) -> int:
        return os.getpid()

    def run(self, works: list[Work]) -> tuple[int, list[Outcome]]:
        outs = run_batch(self.model, works)
        for o in outs:
            o.image = None  # small records: the decoded image stays here
        return os.getpid(), outs


class RayExecutor:
    """Runs the job's batches in ``num_actors`` Ray actors (see the module docstring).

    Args:
        address: a Ray cluster (``"auto"``, ``"ray://head:10001"``, ``"127.0.0.1:6379"``); None:
            the Ray already initialised in this process, ``$RAY_ADDRESS``, or a local Ray on
            loopback started for the job
        num_actors: actors (model copies) running batches concurrently
        num_cpus_per_actor, num_gpus_per_actor: Ray resources each actor holds (``num_gpus=1``:
            one GPU per actor; the model then loads on it)
        batch_size: works per task (a failed actor's batch is what Ray reruns)
        in_flight_per_actor: batches queued per actor ahead (keeps actors busy between batches)
        local_cpus: CPUs of a local Ray started for the job (default: what the actors need)
    """

    def __init__(self, address: str | None = None, num_actors: int = 2,
                 num_cpus_per_actor: float = 1, num_gpus_per_actor: float = 0,
                 batch_size: int = 4, in_flight_per_actor: int = 2,
                 local_cpus: int | None = None):
        if num_actors < 1 or batch_size < 1 or in_flight_per_actor < 1:
            raise ConfigError("the Ray executor needs num_actors, batch_size and "
                              "in_flight_per_actor >= 1")
        self.address = address
        self.num_actors = int(num_actors)
        self.num_cpus_per_actor = num_cpus_per_actor
        self.num_gpus_per_actor = num_gpus_per_actor
        self.batch_size = int(batch_size)
        self.in_flight_per_actor = int(in_flight_per_actor)
        self.local_cpus = local_cpus
        self.actor_pids: list[int] = []     # the actors' processes at start (fault tests, logs)
        self.batch_pids: list[int] = []     # the process that ran each delivered batch
        self.batches_done = 0
        self._temp_dir: str | None = None

    def __repr__(self) -> str:
        return (f"RayExecutor(address={self.address!r}, num_actors={self.num_actors}, "
                f"batch_size={self.batch_size})")

    # -- Ray ------------------------------------------------------------------------------------
    def _connect(self) -> bool:
        """Initialises Ray if needed; True when this executor started it (and must stop it)."""
        ray = require_ray()
        if ray.is_initialized():
            return False
        if self.address is None and not os.environ.get("RAY_ADDRESS"):
            cpus = self.local_cpus or max(1, int(-(-self.num_actors * self.num_cpus_per_actor // 1)))
            self._temp_dir = tempfile.mkdtemp(prefix="tfovss-ray-")
            start_local_ray(num_cpus=cpus, temp_dir=self._temp_dir)
        else:
            ray.init(address=self.address, log_to_driver=False)
        return True

    def _shippable(self, model: ModelPass | ModelSpec) -> ModelSpec:
        spec = model.spec if isinstance(model, ModelPass) else model
        if spec.build is not None:
            return ModelSpec(build=spec.build, shared_trunk=spec.shared_trunk, finish=spec.finish)
        return ModelSpec(predictors=dict(spec.materialise()), shared_trunk=spec.shared_trunk,
                         finish=spec.finish)

    # -- the map ---------------------------------------------------------------------------------
    def map(self, model: ModelPass | ModelSpec, works: Iterable[Work]) -> Iterator[Outcome]:
        works = list(works)
        if not works:
            return
        ray = require_ray()
        item_errors = tuple(model.item_errors) if isinstance(model, ModelPass) else ITEM_ERRORS
        output = model.output if isinstance(model, ModelPass) else "probs"
        images_per_batch = model.images_per_batch if isinstance(model, ModelPass) else 1
        started = self._connect()
        actors: list[Any] = []
        try:
            spec = self._shippable(model)
            # built predictors go through the object store once (held until the job ends: a
            # restarted actor reads them again); a build spec is small and travels inline
            spec_ref = spec if spec.build is not None else ray.put(spec)
            Worker = ray.remote(_BatchWorker).options(
                num_cpus=self.num_cpus_per_actor, num_gpus=self.num_gpus_per_actor,
                max_restarts=-1, max_task_retries=-1)
            n = min(self.num_actors, -(-len(works) // self.batch_size))
            actors = [Worker.remote(spec_ref, item_errors, output, images_per_batch) for _ in range(n)]
            self.actor_pids = ray.get([a.pid.remote() for a in actors])
            batches = [works[i:i + self.batch_size] for i in range(0, len(works), self.batch_size)]
            yield from self._stream(ray, actors, batches)
        finally:
            for a in actors:
                try:
                    ray.kill(a)
                except Exception:
                    pass
            if started:
                ray.shutdown()
                if self._temp_dir:  # the local Ray's session files and logs
                    shutil.rmtree(self._temp_dir, ignore_errors=True)
                    self._temp_dir = None

    def _stream(self, ray, actors: list, batches: list[list[Work]]) -> Iterator[Outcome]:
        from ray.exceptions import RayTaskError

        queue = list(reversed(batches))
        load = {i: 0 for i in range(len(actors))}
        pending: dict[Any, int] = {}

        def submit(i: int) -> None:
            if queue:
                pending[actors[i].run.remote(queue.pop())] = i
                load[i] += 1

        for _ in range(self.in_flight_per_actor):
            for i in range(len(actors)):
                submit(i)
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(ref)
            load[i] -= 1
            try:
                pid, outs = ray.get(ref)
            except RayTaskError as exc:   # an error outside the per-item errors: abort, as locally
                raise exc.as_instanceof_cause() from None
            submit(i)
            self.batches_done += 1
            self.batch_pids.append(pid)
            yield from outs


def executor_from_options(ray_address: str | None, *, num_actors: int | None = None,
                          batch_size: int | None = None, **kwargs) -> RayExecutor:
    """The executor behind ``--ray [ADDRESS]`` / ``ray_address=``: ``"local"`` or ``""`` = a local
    Ray on loopback, else a cluster address."""
    address = None if ray_address in (None, "", "local") else str(ray_address)
    opts = {k: v for k, v in dict(num_actors=num_actors, batch_size=batch_size).items()
            if v is not None}
    return RayExecutor(address, **opts, **kwargs)


__all__ = ["RayExecutor", "require_ray", "start_local_ray", "executor_from_options",
           "RAY_EXTRA_HINT"]
