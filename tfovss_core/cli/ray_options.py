"""The execution options of the batch commands (``segment``, ``benchmark``, ``prelabel``): ``--ray``
runs the job runner's model pass in Ray actors (:mod:`tfovss_core.engine.ray_executor`; Ray is
imported only when it is given); ``--images-per-batch`` batches windows across images."""
from __future__ import annotations

import argparse


def add_ray_arguments(p: argparse.ArgumentParser) -> None:
    """``--ray [ADDRESS]``, ``--ray-actors``, ``--ray-batch-size``: run the job's model pass on Ray."""
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run the model in Ray actors: a cluster address (auto, ray://head:10001); "
                        "without ADDRESS a local Ray on loopback (needs the [ray] extra)")
    p.add_argument("--ray-actors", type=int, default=2, metavar="N",
                   help="Ray actors, one model each (default 2)")
    p.add_argument("--ray-batch-size", type=int, default=4, metavar="N",
                   help="images per Ray task (default 4)")
    p.add_argument("--ray-gpus", type=float, default=0, metavar="G",
                   help="GPUs per Ray actor (default 0)")
    p.add_argument("--images-per-batch", type=int, default=1, metavar="N",
                   help="images whose windows go through the model together (default 1; more keeps a "
                        "GPU busy; the same masks at the protocols' window sizes)")


def executor_from_args(args):
    """The job runner's executor for ``--ray`` (None: this process)."""
    if getattr(args, "ray", None) is None:
        return None
    from tfovss_core.engine.ray_executor import executor_from_options

    return executor_from_options(args.ray, num_actors=args.ray_actors,
                                 batch_size=args.ray_batch_size,
                                 num_gpus_per_actor=args.ray_gpus)
