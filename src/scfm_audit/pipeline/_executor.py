"""The run's executor, from the config's ``executor:`` section.

```yaml
executor: {kind: dask, n_workers: 4, threads_per_worker: 2}     # a LocalCluster
executor: {kind: dask, address: tcp://scheduler.example:8786}  # a running cluster
```

:func:`open_executor` makes it for the duration of a run: ``local`` runs the tasks in
this process; ``dask`` without an address starts a ``LocalCluster`` (worker processes)
and closes it at the end of the run, also when the run fails or is interrupted; with an
address it connects to that scheduler and leaves the cluster running. Problems are one
line naming the fix: the dask extra not installed, a malformed address (at validation),
a scheduler that cannot be reached (when the run starts, before anything is computed).
The work itself is split by the layers that do it (``edges/_attention_shards.py``,
``evaluate/_de_tasks.py``, ``analyses/_calibration.py``, ``evaluate/_ablation_tasks.py``)
through :mod:`scfm_audit._executor`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from scfm_audit._executor import DaskExecutor, Executor, LocalExecutor, using
from scfm_audit.pipeline._config import ConfigError

if TYPE_CHECKING:
    from distributed import Client, LocalCluster

    from scfm_audit.pipeline._config import ExecutorConfig

__all__ = [
    "DASK_MISSING",
    "WORKER_CONFIG",
    "executor_config_problem",
    "local_cluster",
    "open_executor",
]

log = logging.getLogger("scfm_audit")

DASK_MISSING = (
    "executor.kind: 'dask' needs Dask distributed, which is not installed; "
    "pip install 'scfm-audit[dask]' (or use kind: local)"
)
#: scheme of a scheduler address Dask's comms understand
SCHEMES = ("tcp://", "tls://", "ucx://", "inproc://", "ws://", "wss://")
#: seconds to wait for a scheduler given by address
CONNECT_TIMEOUT = 15


def dask_available() -> bool:
    return importlib.util.find_spec("distributed") is not None


def executor_config_problem(cfg: ExecutorConfig) -> str | None:
    """One line saying what is wrong with ``cfg`` and how to fix it, or None."""
    if cfg.kind == "local":
        extra = [k for k in ("address", "n_workers", "threads_per_worker") if getattr(cfg, k)]
        if extra:
            return (
                f"{', '.join(extra)} only apply to kind: dask; set kind: dask or remove "
                f"{'them' if len(extra) > 1 else 'it'}"
            )
        return None
    if not dask_available():
        return DASK_MISSING
    if cfg.address is not None:
        if not cfg.address.startswith(SCHEMES):
            return (
                f"address {cfg.address!r} is not a scheduler address; write it as "
                "tcp://host:8786 (what `dask scheduler` prints)"
            )
        given = [k for k in ("n_workers", "threads_per_worker") if getattr(cfg, k)]
        if given:
            return (
                f"{', '.join(given)} apply to a cluster this run starts, not to one at an "
                "address; start workers with `dask worker <address> --nworkers N "
                "--nthreads T`, or remove address"
            )
    return None


#: Dask config while a LocalCluster of this run lives (read when a nanny spawns or restarts
#: a worker): glibc's own malloc trimming. Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536,
#: which hands every freed attention tensor back to the OS and faults it in again for the
#: next batch: measured on the demo models, 2.5× the CPU of an extraction, most of it in
#: the kernel (docs/scaling.md). Workers started by ``dask worker`` need the same setting.
WORKER_CONFIG: dict[str, object] = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
}


@contextlib.contextmanager
def local_cluster(
    n_workers: int | None = None, threads_per_worker: int = 1
) -> Iterator[LocalCluster]:
    """A ``LocalCluster`` of worker processes as the runner starts one (closed on exit)."""
    import dask
    from distributed import LocalCluster

    with dask.config.set(WORKER_CONFIG):
        # distributed's constructors carry no annotations (so no-untyped-call below)
        cluster = LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            dashboard_address=None,
            # numba (DE) and torch size their pools from these: one thread per worker thread
            env={
                "NUMBA_NUM_THREADS": str(threads_per_worker),
                "OMP_NUM_THREADS": str(threads_per_worker),
            },
        )
        try:
            yield cluster
        finally:
            cluster.close()


@contextlib.contextmanager
def open_executor(cfg: ExecutorConfig) -> Iterator[Executor]:
    """The run's executor, installed for the block (see the module docstring); a cluster
    it started is closed on exit, also when the block raises."""
    problem = executor_config_problem(cfg)
    if problem:
        raise ConfigError(f"Invalid config:\n  executor: {problem}")
    with contextlib.ExitStack() as stack:
        if cfg.kind == "local":
            ex: Executor = LocalExecutor(shard_cells=cfg.shard_cells)
        else:
            ex = DaskExecutor(stack.enter_context(_client(cfg)), shard_cells=cfg.shard_cells)
        stack.enter_context(using(ex))
        yield ex


@contextlib.contextmanager
def _client(cfg: ExecutorConfig) -> Iterator[Client]:
    from distributed import Client

    if cfg.address is not None:
        try:
            client = Client(cfg.address, timeout=CONNECT_TIMEOUT)  # type: ignore[no-untyped-call]
        except (OSError, TimeoutError) as e:
            raise ConfigError(
                f"Invalid config:\n  executor.address: cannot reach the Dask scheduler at "
                f"{cfg.address} ({type(e).__name__}); start it with `dask scheduler` and "
                "workers with `dask worker <address>`, or fix the address"
            ) from None
        with client:
            if not client.scheduler_info().get("workers"):
                log.warning("the Dask scheduler at %s has no workers yet", cfg.address)
            yield client
        return
    with (
        local_cluster(cfg.n_workers, cfg.threads_per_worker or 1) as cluster,
        Client(cluster) as client,  # type: ignore[no-untyped-call]
    ):
        yield client
