"""Run one function over many items: in this process, or on Ray Data actors.

A job is a ``Task``: ``load()`` builds the model once per worker, then
``apply(model, item)`` turns one item into one result. Items are whole units
of work the caller cuts itself (a batch of images, one decoder call), so a
result never depends on how an engine groups them, and ``map`` returns the
results in the order of the items. That is what makes ``compute.engine``
output-neutral: the same items through the same calls give the same bytes.

- ``local``: the in-process loop, with a tqdm bar (the model the caller has
  already loaded may be passed in and is used as is).
- ``ray``: ``ray.data.from_items`` of (index, pickled item) rows,
  ``map_batches`` with a callable class that loads the model in its
  constructor (once per actor) on an ``ActorPoolStrategy(size=workers)``,
  each actor reserving ``gpus_per_worker`` GPUs; results are sorted back by
  index. Ray Data draws its own progress bar. An actor that dies is
  restarted and its items retried (``max_restarts`` / ``max_task_retries``);
  a job that fails all the same raises ``EngineError`` before the caller has
  written anything, so DVC never caches a partial output.

Ray is imported only by the ray engine (``pip install -e '.[ray]'``).
"""
from __future__ import annotations

import os
import pickle
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

RETRIES = 3  # restarts of a dead actor, and retries of the items it held
BATCHES_PER_WORKER = 8  # the ray engine's default grouping of items into Ray batches ...
MAX_PER_BATCH = 16      # ... at most this many items each (a retry repeats at most that many)


class EngineError(RuntimeError):
    """A job failed on the ray engine after its retries."""


@dataclass(frozen=True)
class Task:
    """``load()`` once per worker, then ``apply(model, item)`` per item, or
    ``apply(model, item, data)`` when ``data`` is given: what many items read
    from (e.g. the images, when items name rows of them), sent to each worker
    once (Ray: put in the object store once, read without a copy) instead of
    inside every item. ``load`` and ``apply`` travel to Ray actors by pickle:
    top-level functions, or ``functools.partial`` of them."""
    load: Callable[[], Any]
    apply: Callable[..., Any]
    data: Any = None

    def __call__(self, model, item):
        return self.apply(model, item) if self.data is None else self.apply(model, item, self.data)


class LocalEngine:
    """Today's loop in this process."""
    name = "local"
    workers = 1

    def map(self, task: Task, items: Sequence, *, desc: str = "batches", model=None) -> list:
        model = task.load() if model is None else model
        return [task(model, item) for item in tqdm(items, desc=desc, unit="item", disable=len(items) < 2)]


class _Worker:
    """The map_batches callable: the model is loaded once, in the actor's constructor."""

    def __init__(self, task: Task, data_ref, threads: int):
        _pin_threads(threads)
        if data_ref is not None:
            import ray
            task = Task(task.load, task.apply, ray.get(data_ref))
        self.task = task
        self.model = task.load()

    def __call__(self, batch: dict) -> dict:
        results = [pickle.dumps(self.task(self.model, pickle.loads(payload)), protocol=pickle.HIGHEST_PROTOCOL)
                   for payload in batch["payload"]]
        return {"index": batch["index"], "result": results}


def _pin_threads(threads: int) -> None:
    """One actor = ``threads`` CPUs: torch (if loaded by then or later) uses that many,
    the same count as a local run under OMP_NUM_THREADS, so CPU results match bit for bit."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(threads)


class RayEngine:
    """Ray Data actors; see the module docstring."""
    name = "ray"

    def __init__(self, workers: int, gpus_per_worker: float = 0.0, items_per_batch: int | None = None,
                 retries: int = RETRIES, threads_per_worker: int = 1):
        if workers < 1 or (items_per_batch or 1) < 1 or gpus_per_worker < 0 or retries < 0 or threads_per_worker < 1:
            raise ValueError(f"workers {workers}, items_per_batch {items_per_batch} and threads_per_worker "
                             f"{threads_per_worker} must be >= 1, gpus_per_worker {gpus_per_worker} and retries "
                             f"{retries} >= 0")
        self.workers = int(workers)
        self.gpus_per_worker = float(gpus_per_worker)
        self.items_per_batch = items_per_batch  # None: batches_per_worker batches per worker, at most MAX_PER_BATCH
        self.retries = int(retries)
        self.threads_per_worker = int(threads_per_worker)

    def map(self, task: Task, items: Sequence, *, desc: str = "batches", model=None) -> list:
        """``model`` is ignored: every actor loads its own with ``task.load``."""
        import ray

        items = list(items)
        if not items:
            return []
        rows = [{"index": i, "payload": pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)}
                for i, item in enumerate(items)]
        workers = min(self.workers, len(rows))
        # Every Ray batch costs milliseconds of scheduling and transfer: small items go several to a batch
        # (same results: an item is the unit of work), while enough batches remain to share out evenly.
        per_batch = self.items_per_batch or min(MAX_PER_BATCH, -(-len(rows) // (BATCHES_PER_WORKER * workers)))
        dataset = ray.data.from_items(rows, override_num_blocks=min(len(rows), 4 * workers))
        data_ref = None if task.data is None else ray.put(task.data)
        light = Task(task.load, task.apply)  # the data goes by reference, not inside the actors' arguments
        # Ray Data's own default is to restart actors and retry their items forever, which turns a
        # worker that always crashes into a job that never ends: bound both. Ray 2.60 has no named
        # parameter for them yet and warns that the generic remote arguments are deprecated (gone in 2.64).
        retry = {"max_restarts": self.retries, "max_task_retries": self.retries}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
            mapped = dataset.map_batches(
                _Worker, fn_constructor_args=(light, data_ref, self.threads_per_worker),
                batch_size=per_batch,
                batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=workers),
                num_cpus=self.threads_per_worker, num_gpus=self.gpus_per_worker, **retry)
        try:
            out = mapped.take_all()
        except Exception as err:  # a worker's own exception (not retried), or a worker dead too often
            cause = (str(err).strip().splitlines() or [""])[0]
            raise EngineError(f"the ray engine's {desc} job failed (an error in a worker, or a worker that died "
                              f"more than {self.retries} times); nothing was written. Cause: "
                              f"{type(err).__name__}: {cause}") from err
        out.sort(key=lambda row: int(row["index"]))
        if [int(row["index"]) for row in out] != list(range(len(items))):
            raise EngineError(f"the ray engine's {desc} job returned {len(out)} results for {len(items)} items "
                              f"(lost or repeated rows); nothing was written")
        return [pickle.loads(row["result"]) for row in out]


@contextmanager
def open_engine(compute, **ray_options):
    """The engine ``compute`` (the params' ``compute`` section) names.

    ray: joins the Ray already initialised in this process, else
    ``compute.address``, else starts a local Ray with ``num_cpus = workers``;
    a Ray started here is shut down on exit. ``ray_options`` go to RayEngine.
    """
    if compute.engine == "local":
        yield LocalEngine()
        return
    if compute.engine != "ray":
        raise ValueError(f"unknown compute.engine {compute.engine!r}: expected local or ray")
    try:
        import ray
    except ImportError as err:
        raise ImportError(f"compute.engine ray needs Ray: pip install -e '.[ray]' ({err})") from None
    started = not ray.is_initialized()
    if started:
        if compute.address is None:
            ray.init(num_cpus=compute.workers, include_dashboard=False, configure_logging=False)
        else:
            ray.init(address=compute.address)
    try:
        yield RayEngine(compute.workers, compute.gpus_per_worker, **ray_options)
    finally:
        if started:
            ray.shutdown()
