"""One process beside the run, for work that needs nothing of the run's state.

Two kinds of work qualify: the analyses that simulate their own data (declared with
``self_contained=True``, e.g. ``synthetic_controls``) and the rendering of finished
figures to PNG. The analyses themselves run one after the other in the run's process and
keep about one core busy (their numpy and torch kernels are small), so on a machine with
two or more cores this work costs no wall time.

Equality. The work done beside is the same function of the same inputs as it would be in
the run's process: an analysis' random draws come from the run seed and its name only,
its tests come back as records and take their place in the registry in config order, and
a figure is the pickled figure drawn by the same matplotlib, byte for byte the same PNG
(``tests/test_beside.py`` checks both).

The process is ``python -c`` (not :mod:`multiprocessing`'s spawn, which re-runs the
caller's ``__main__`` script in the child unless the script guards it); it gets the
caller's ``sys.path``, so it imports this very package. Jobs and results travel pickled
over pipes, one job at a time, in order. If the process cannot start, imports another
copy of the package, or dies, every job not yet answered raises :class:`BesideLost` and
the caller does that work in its own process, as if there were no process beside.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

log = logging.getLogger("scfm_audit")

# The child's first lines: read the caller's sys.path from the job pipe, then serve.
_BOOT = (
    "import os, pickle, sys\n"
    "src = os.fdopen(0, 'rb')\n"
    "sys.path[:] = pickle.loads(src.read(int.from_bytes(src.read(8), 'little')))\n"
    "from scfm_audit.pipeline._beside import _serve\n"
    "_serve(src)\n"
)


class BesideLost(RuntimeError):
    """The process beside the run is gone (or never started); do the work here."""


class BesideFailed(RuntimeError):
    """A job raised in the process beside; ``kind`` and ``message`` are the exception's
    type name and text (the exception itself need not be picklable)."""

    def __init__(self, kind: str, message: str, trace: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind, self.message, self.trace = kind, message, trace


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class Beside:
    """A child process that runs ``fn(*args, **kwargs)`` jobs one at a time, in the order
    they were submitted, and answers each with a :class:`~concurrent.futures.Future`.

    ``fn`` must be importable by name (a module-level function of this package). Close it
    with :meth:`close` (or use it as a context manager); ``kill=True`` drops pending jobs.
    """

    def __init__(self) -> None:
        self._pending: dict[int, Future[Any]] = {}
        self._lock = threading.Lock()
        self._next = 0
        self._jobs: queue.Queue[bytes | None] = queue.Queue()
        self._lost: str | None = None
        self._stderr = tempfile.TemporaryFile()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
        )
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._jobs.put(pickle.dumps(list(sys.path), protocol=pickle.HIGHEST_PROTOCOL))
        self._writer = threading.Thread(target=self._write, name="beside-writer", daemon=True)
        self._reader = threading.Thread(target=self._read, name="beside-reader", daemon=True)
        self._writer.start()
        self._reader.start()
        # the child answers job 0 with the file of the package it imported: another copy
        # (an editable install beside a wheel, say) would compute with other code
        from scfm_audit import __file__ as here

        self._identity = self.submit(_package_file)
        self._here = os.path.realpath(here or "")

    # -- parent side ---------------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future[Any]:
        """Queue ``fn(*args, **kwargs)``; the future raises :class:`BesideLost` if the
        process goes away first, :class:`BesideFailed` if the job raised."""
        fut: Future[Any] = Future()
        with self._lock:
            if self._lost is not None:
                fut.set_exception(BesideLost(self._lost))
                return fut
            job_id = self._next
            self._next += 1
            self._pending[job_id] = fut
        blob = pickle.dumps((job_id, fn, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        self._jobs.put(blob)
        return fut

    def same_package(self, timeout: float = 120.0) -> bool:
        """Whether the child imported this very package (waits for its answer)."""
        try:
            there = self._identity.result(timeout=timeout)
        except Exception:
            return False
        return bool(there == self._here)

    def _write(self) -> None:
        stdin = self._proc.stdin
        assert stdin is not None
        try:
            while (blob := self._jobs.get()) is not None:
                stdin.write(len(blob).to_bytes(8, "little"))
                stdin.write(blob)
                stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass  # the reader sees the process end and fails what is pending
        finally:
            try:
                stdin.close()
            except OSError:
                pass

    def _read(self) -> None:
        stdout = self._proc.stdout
        assert stdout is not None
        try:
            while (head := stdout.read(8)) and len(head) == 8:
                job_id, ok, value = pickle.loads(
                    _read_exact(stdout, int.from_bytes(head, "little"))
                )
                with self._lock:
                    fut = self._pending.pop(job_id, None)
                if fut is None:
                    continue
                if ok:
                    fut.set_result(value)
                elif ok is None:
                    fut.set_exception(BesideLost(value))
                else:
                    fut.set_exception(BesideFailed(*value))
        except Exception as e:  # a truncated or unreadable answer: the process is unusable
            log.debug("process beside the run: unreadable answer (%s)", e)
        code = self._proc.wait()
        self._fail_pending(f"the process beside the run ended (exit code {code}){self._tail()}")

    def _fail_pending(self, why: str) -> None:
        with self._lock:
            self._lost = self._lost or why
            pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(BesideLost(why))

    def _tail(self) -> str:
        try:
            self._stderr.seek(0, io.SEEK_END)
            size = self._stderr.tell()
            self._stderr.seek(max(0, size - 2000))
            text = self._stderr.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""
        return f"; its last output:\n{text}" if text else ""

    def close(self, *, kill: bool = False, timeout: float = 30.0) -> None:
        """Stop taking jobs; let the child finish what it has (``kill``: stop it now)."""
        with self._lock:
            self._lost = self._lost or "the process beside the run was closed"
        self._jobs.put(None)
        if kill:
            self._proc.kill()
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._reader.join(timeout=5)
        self._fail_pending("the process beside the run was closed")
        for f in (self._proc.stdout, self._stderr):
            if f is not None:
                f.close()

    def __enter__(self) -> Beside:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        # after a run every job has been answered (the child is idle and ends as its job
        # pipe closes); after an error or an interrupt nothing more is wanted from it
        self.close(kill=exc_type is not None, timeout=2.0)


def _read_exact(f: Any, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = f.read(n - len(buf))
        if not chunk:
            raise EOFError(f"expected {n} bytes, got {len(buf)}")
        buf += chunk
    return bytes(buf)


def open_beside(enabled: bool, *, min_cores: int = 2) -> Beside | None:
    """A process beside the run when ``enabled`` and this process may use at least
    ``min_cores`` CPUs (on one core it would only take turns with the run); None if it
    cannot start or imports another copy of this package (logged at debug level)."""
    if not enabled or usable_cores() < min_cores:
        return None
    try:
        beside = Beside()
    except OSError as e:
        log.debug("no process beside the run: %s", e)
        return None
    if not beside.same_package():
        log.debug("no process beside the run: it imported another copy of scfm_audit")
        beside.close(kill=True)
        return None
    return beside


# -- child side --------------------------------------------------------------------------------
def _serve(src: Any) -> None:
    """The child's loop: read a job, run it, answer; until the job pipe closes. Anything a
    library prints goes to stderr: stdout carries the answers only."""
    import traceback

    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    while (head := src.read(8)) and len(head) == 8:
        job_id, fn, args, kwargs = pickle.loads(_read_exact(src, int.from_bytes(head, "little")))
        try:
            value = fn(*args, **kwargs)
        except Exception as e:  # the job's failure is the caller's to report
            value = (type(e).__name__, str(e), traceback.format_exc())
            blob = pickle.dumps((job_id, False, value), protocol=pickle.HIGHEST_PROTOCOL)
        else:
            try:
                blob = pickle.dumps((job_id, True, value), protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as e:  # done, but it cannot travel: the caller does it itself
                why = f"its result does not pickle ({type(e).__name__}: {e})"
                blob = pickle.dumps((job_id, None, why), protocol=pickle.HIGHEST_PROTOCOL)
        out.write(len(blob).to_bytes(8, "little"))
        out.write(blob)
        out.flush()


def _package_file() -> str:
    from scfm_audit import __file__ as there

    return os.path.realpath(there or "")


# -- the jobs -----------------------------------------------------------------------------------
def run_self_contained(
    name: str, params: Any, *, seed: int, alpha: float
) -> tuple[Any, list[Any], float, dict[str, int], dict[str, bytes]]:
    """Run analysis ``name`` (declared ``self_contained``) as the runner would, with a
    context that has no run inputs. Returns its result (claims attached), its test
    records in order, its seconds, the warnings it raised ("Category: message" → count)
    and its figures drawn as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from scfm_audit.analyses._contract import ANALYSES
    from scfm_audit.pipeline._config import analysis_base_name
    from scfm_audit.pipeline._runner import Progress, RunContext, _routed_warnings
    from scfm_audit.plotting._render import render_png
    from scfm_audit.stats._registry import TestRegistry

    spec = ANALYSES.get(analysis_base_name(name))
    registry = TestRegistry(alpha=alpha)
    ctx = RunContext(name, seed, _NoRunInputs(name), registry, Progress(quiet=True), alpha=alpha)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    with _routed_warnings() as caught:
        res = spec.run(ctx, params)
    known = {id(v) for v in ctx.claims}
    res.verdicts = ctx.claims + [v for v in res.verdicts if id(v) not in known]
    seconds = time.perf_counter() - t0
    pngs = {fname: render_png(fig) for fname, fig in res.figures.items()}
    return res, registry.records(), seconds, dict(caught), pngs


class _NoRunInputs:
    """The resources of a context beside the run: a self-contained analysis that asks for
    a dataset, model, reference, edge score or the cache is declared wrongly."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        raise RuntimeError(
            f"analysis {self._name!r} is registered self_contained=True but asked for the "
            f"run's {attr!r}; a self-contained analysis reads nothing of the run. Register "
            "it without self_contained."
        )


def merge_counts(into: dict[str, int], more: Mapping[str, int]) -> None:
    """Add the counts of ``more`` into ``into`` (warnings by "Category: message")."""
    for k, v in more.items():
        into[k] = into.get(k, 0) + v
