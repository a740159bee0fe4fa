"""Where the expensive passes run: in this process, or as tasks on a Dask cluster.

A run installs one :class:`Executor` for its duration (``with using(executor): ...``,
done by the runner from the config's ``executor:`` section). The heavy passes ask for it
with :func:`current_executor` and, when there is one, split their work into a fixed list
of *items* (cell shards, row chunks, gene blocks, replicate batches) and call
:meth:`Executor.map_ordered` on it. Outside a run (a plain library call) there is no
executor and every pass runs as it always did.

Equality by construction. The list of items is a function of the data and the
parameters only, never of the executor, its number of workers or the order tasks finish
in; :meth:`~Executor.map_ordered` hands the results back in item order (results that
arrive early wait in a reorder buffer) and :func:`fold_ordered` merges them in that
order. :class:`LocalExecutor` runs the very same items one after the other in this
process, so a sum of float shards is added in the same order under either executor and
the numbers are equal bit for bit (on the same hardware and library builds).

Failure. Dask reschedules the tasks of a worker that dies (up to the scheduler's
``allowed-failures``); a task that cannot be completed, or a cluster that goes away,
raises :class:`ExecutorError` with a message saying what was lost — never a partial
result: :func:`fold_ordered` counts the merged items against the items expected.

This module is the ground floor (every layer may import it); Dask is imported only when
a :class:`DaskExecutor` is made (``pip install scfm-audit[dask]``).
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import uuid
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from distributed import Client, Future

__all__ = [
    "DaskExecutor",
    "Executor",
    "ExecutorError",
    "LocalExecutor",
    "ModelSource",
    "current_executor",
    "fold_ordered",
    "model_source",
    "register_model_source",
    "tracked",
    "using",
    "worker_model",
    "worker_threads",
]

T = TypeVar("T")
R = TypeVar("R")

#: Cells per attention-extraction shard when the config does not say otherwise.
DEFAULT_SHARD_CELLS = 512


class ExecutorError(RuntimeError):
    """Distributed work could not be completed (a task kept killing its workers, the
    cluster went away, or results went missing); the message says which and what to do."""


class Executor(ABC):
    """Runs a function over a list of items and hands the results back in item order."""

    kind: str = "?"
    #: cells per attention-extraction shard (part of the arithmetic: shards are summed)
    shard_cells: int = DEFAULT_SHARD_CELLS

    @property
    @abstractmethod
    def parallelism(self) -> int:
        """How many tasks can run at once (total worker threads; 1 for local)."""

    @abstractmethod
    def map_ordered(
        self,
        fn: Callable[..., R],
        items: Sequence[Any],
        *,
        shared: Mapping[str, Any] | None = None,
        on_done: Callable[[int], None] | None = None,
        label: str = "task",
    ) -> Iterator[tuple[int, R]]:
        """Yield ``(i, fn(items[i], **shared))`` for every item, in item order.

        ``shared``: keyword arguments every call receives (large objects such as a model
        or a dataset are sent to each worker once, not once per task); ``on_done(i)`` is
        called as each item completes (in completion order, e.g. to advance a progress
        bar); ``label`` names the tasks (Dask dashboard). Raises :class:`ExecutorError`
        when an item cannot be completed; an exception raised by ``fn`` propagates."""

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "parallelism": self.parallelism}


_CURRENT: contextvars.ContextVar[Executor | None] = contextvars.ContextVar(
    "scfm_audit_executor", default=None
)


def current_executor() -> Executor | None:
    """The executor installed by the enclosing :func:`using` block (None outside a run and
    inside a task: work nested in a task runs where the task runs)."""
    return _CURRENT.get()


@contextlib.contextmanager
def using(executor: Executor | None) -> Iterator[Executor | None]:
    """Install ``executor`` for the block (None: none, e.g. inside a task)."""
    token = _CURRENT.set(executor)
    try:
        yield executor
    finally:
        _CURRENT.reset(token)


def fold_ordered(
    executor: Executor,
    fn: Callable[..., T],
    items: Sequence[Any],
    merge: Callable[[T, T], T],
    *,
    shared: Mapping[str, Any] | None = None,
    on_done: Callable[[int], None] | None = None,
    label: str = "task",
) -> T:
    """``merge(...merge(merge(r0, r1), r2)..., r_{n-1})`` of ``r_i = fn(items[i], **shared)``,
    always in item order whatever order the tasks finish in. Raises
    :class:`ExecutorError` unless exactly ``len(items)`` results were merged."""
    if not items:
        raise ValueError("fold_ordered needs at least one item.")
    acc: T | None = None
    merged = 0
    for i, part in executor.map_ordered(fn, items, shared=shared, on_done=on_done, label=label):
        if i != merged:
            raise ExecutorError(f"{label}: result {i} arrived in place of {merged}.")
        acc = part if acc is None else merge(acc, part)
        merged += 1
    if merged != len(items) or acc is None:
        raise ExecutorError(
            f"{label}: {merged} of {len(items)} results were merged; a partial result is "
            "never returned. Rerun; if it repeats, check the workers' logs."
        )
    return acc


class _Sized:
    """An iterable with a length (so a progress bar knows its total)."""

    def __init__(self, it: Iterable[Any], n: int) -> None:
        self._it, self._n = it, n

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[Any]:
        return iter(self._it)


def tracked(
    it: Iterable[T], n: int, progress: Callable[..., Iterable[T]] | None, description: str
) -> Iterable[T]:
    """``it`` (``n`` items) through a ``progress(iterable, description=...)`` wrapper (the
    run's progress bar) when one is given."""
    return it if progress is None else progress(_Sized(it, n), description=description)


# -- local ------------------------------------------------------------------------------------
class LocalExecutor(Executor):
    """Every item in this process, one after the other (the same items and merge order as
    a cluster, so the same numbers)."""

    kind = "local"

    def __init__(self, *, shard_cells: int = DEFAULT_SHARD_CELLS) -> None:
        self.shard_cells = int(shard_cells)

    @property
    def parallelism(self) -> int:
        return 1

    def map_ordered(
        self,
        fn: Callable[..., R],
        items: Sequence[Any],
        *,
        shared: Mapping[str, Any] | None = None,
        on_done: Callable[[int], None] | None = None,
        label: str = "task",
    ) -> Iterator[tuple[int, R]]:
        kw = dict(shared or {})
        for i, item in enumerate(items):
            with using(None):  # what a task asks for runs inside the task, as on a worker
                out = fn(item, **kw)
            if on_done is not None:
                on_done(i)
            yield i, out


# -- dask -------------------------------------------------------------------------------------
class _Box:
    """One shared object as a single argument (dask would look into a list or a dict
    for futures, element by element)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _unbox(box: _Box) -> Any:
    return box.value


def _call(fn: Callable[..., R], item: Any, **shared: Any) -> R:
    """A task: ``fn(item, **shared)`` with no executor installed (nested work stays on the
    worker) and the worker's thread count applied to torch and numba."""
    match_worker_threads()
    with using(None):
        return fn(item, **shared)


class DaskExecutor(Executor):
    """Tasks on a Dask ``distributed`` cluster reached through ``client`` (whoever made
    the client closes it, and the cluster if it started one)."""

    kind = "dask"

    def __init__(self, client: Client, *, shard_cells: int = DEFAULT_SHARD_CELLS) -> None:
        self.client = client
        self.shard_cells = int(shard_cells)

    @property
    def parallelism(self) -> int:
        n = sum(self.client.nthreads().values())
        return max(1, int(n))

    def _share(self, shared: Mapping[str, Any], tag: str) -> dict[str, Any]:
        """Shared objects as tasks that return them: the scheduler holds each once, a
        worker fetches it once for all its tasks, and if every worker holding it dies the
        scheduler makes it again (scattered data would be lost with them). A model
        source with a loader travels as it is: the worker loads the model itself."""
        out: dict[str, Any] = {}
        for k, v in shared.items():
            if isinstance(v, ModelSource) and v.loader is not None:
                out[k] = v
            else:
                out[k] = self.client.submit(_unbox, _Box(v), key=f"{k}-{tag}", pure=False)
        return out

    def map_ordered(
        self,
        fn: Callable[..., R],
        items: Sequence[Any],
        *,
        shared: Mapping[str, Any] | None = None,
        on_done: Callable[[int], None] | None = None,
        label: str = "task",
    ) -> Iterator[tuple[int, R]]:
        from distributed import as_completed

        tag = uuid.uuid4().hex[:8]
        kw = self._share(shared or {}, f"{label}-{tag}")
        futures: list[Future[R]] = [
            self.client.submit(_call, fn, item, key=f"{label}-{tag}-{i}", pure=False, **kw)
            for i, item in enumerate(items)
        ]
        index = {f.key: i for i, f in enumerate(futures)}
        done: set[int] = set()
        nxt = 0
        try:
            for fut in as_completed(futures):
                i = index[fut.key]
                if fut.status != "finished":
                    self._result(fut, label, i, len(items))  # raises what went wrong
                done.add(i)
                if on_done is not None:
                    on_done(i)
                # a result is fetched only when it is next in order: one result at a time
                # here (the others wait on their workers), whatever the completion order
                while nxt in done:
                    value = self._result(futures[nxt], label, nxt, len(items))
                    futures[nxt].release()
                    yield nxt, value
                    nxt += 1
        finally:
            self.client.cancel([f for f in futures if not f.done()])
            for v in kw.values():
                if hasattr(v, "release"):
                    v.release()
        if nxt != len(items):
            raise ExecutorError(
                f"{label}: {nxt} of {len(items)} tasks came back from the cluster; "
                "rerun, and check the workers' logs if it repeats."
            )

    @staticmethod
    def _result(fut: Future[R], label: str, i: int, n: int) -> R:
        from distributed import KilledWorker
        from distributed.client import FutureCancelledError

        try:
            return fut.result()
        except KilledWorker as e:
            raise ExecutorError(
                f"{label} {i + 1}/{n}: its workers kept dying while running it ({e}); "
                "the run stops rather than merge partial results. Usual cause: a worker "
                "out of memory — give workers more memory, or fewer threads_per_worker."
            ) from None
        except (FutureCancelledError, OSError) as e:
            raise ExecutorError(
                f"{label} {i + 1}/{n}: the cluster dropped it ({type(e).__name__}: {e}); "
                "the run stops rather than merge partial results. Check that the scheduler "
                "and its workers are still running."
            ) from None

    def describe(self) -> dict[str, Any]:
        info = self.client.scheduler_info()
        workers = info.get("workers", {})
        return {
            "kind": self.kind,
            "address": info.get("address"),
            "n_workers": len(workers),
            "parallelism": self.parallelism,
        }


# -- models on workers ------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSource:
    """How a task gets a model. In the process that made it (``local`` is set: the
    driver, or a :class:`LocalExecutor`) the model object itself. On a worker, by
    calling ``loader(*args, **kwargs)`` once per worker process (``key`` names the
    checkpoint: family, path, file fingerprint, options), or, for a model that was not
    loaded from a checkpoint (``loader`` None), the pickled object ``obj``, sent once to
    every worker. ``local`` never travels."""

    key: str
    loader: Callable[..., Any] | None = None
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    obj: Any = None
    local: Any = field(default=None, compare=False, repr=False)

    def __reduce__(self) -> tuple[Any, ...]:
        return (ModelSource, (self.key, self.loader, self.args, dict(self.kwargs), self.obj))


#: registered sources by id(model); an entry is dropped when its model is collected
_SOURCES: dict[int, ModelSource] = {}
_SOURCES_LOCK = threading.Lock()


def _remember(model: Any, source: ModelSource) -> None:
    import weakref

    with _SOURCES_LOCK:
        new = id(model) not in _SOURCES
        _SOURCES[id(model)] = source
    if new:
        weakref.finalize(model, _SOURCES.pop, id(model), None)


def register_model_source(
    model: Any, key: str, loader: Callable[..., Any], *args: Any, **kwargs: Any
) -> None:
    """Record that ``model`` is ``loader(*args, **kwargs)`` (the runner does this for the
    models of its config), so that workers load it themselves instead of receiving it."""
    _remember(model, ModelSource(key=key, loader=loader, args=args, kwargs=kwargs))


def model_source(model: Any) -> ModelSource:
    """The :class:`ModelSource` of ``model``: its registered loader, else the object itself
    (under a key that stays the same for this object, so workers keep one copy)."""
    src = _SOURCES.get(id(model))
    if src is None:
        src = ModelSource(key=f"object-{uuid.uuid4().hex}", obj=model)
        _remember(model, src)
    return ModelSource(src.key, src.loader, src.args, src.kwargs, src.obj, local=model)


#: models held by this (worker) process, most recently used last, and their locks: a
#: model's hooks are global to it, so one task at a time uses a model
_MODELS: OrderedDict[Hashable, tuple[Any, threading.Lock]] = OrderedDict()
_MODELS_LOCK = threading.Lock()
MAX_WORKER_MODELS = 3


@contextlib.contextmanager
def worker_model(source: ModelSource) -> Iterator[Any]:
    """The model of ``source`` in this process: the object itself where it was made;
    on a worker, loaded once per process and checkpoint (or unpickled once) and held
    while the block runs (one task at a time per model: hooks are per model)."""
    if source.local is not None:
        yield source.local
        return
    loader = source.loader

    def make() -> Any:
        model = source.obj if loader is None else loader(*source.args, **dict(source.kwargs))
        match_worker_threads()  # torch is imported now
        return model

    model, lock = _held(source.key, make)
    with lock:
        yield model


def _held(key: Hashable, make: Callable[[], Any]) -> tuple[Any, threading.Lock]:
    with _MODELS_LOCK:
        if key in _MODELS:
            _MODELS.move_to_end(key)
            return _MODELS[key]
        entry = (make(), threading.Lock())
        _MODELS[key] = entry
        while len(_MODELS) > MAX_WORKER_MODELS:
            _MODELS.popitem(last=False)
        return entry


def loaded_models() -> list[str]:
    """Keys of the models this process holds (tests check one load per worker)."""
    with _MODELS_LOCK:
        return [str(k) for k in _MODELS]


def worker_threads() -> int | None:
    """The threads of the Dask worker this runs on (None outside a worker)."""
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return None


def match_worker_threads() -> None:
    """On a Dask worker, torch's and numba's thread pools get the worker's threads
    (Dask's nanny sets OMP_NUM_THREADS=1, which would leave a multi-threaded worker on
    one core; numba would otherwise take every core of the machine per worker)."""
    n = worker_threads()
    if n is None or n < 1:
        return
    import sys

    torch = sys.modules.get("torch")  # set once torch is in use (a model task imports it)
    if torch is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)
    numba = sys.modules.get("numba")
    if numba is not None:
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
