"""The output folder as a transaction.

A run writes its outputs into a staging folder beside the output folder
(``.<name>.scfm-staging-<pid>``) and swaps it in with one atomic ``renameat2(...,
RENAME_EXCHANGE)`` (Linux; elsewhere two renames). So the output folder always holds
either the complete previous run or the complete new one: never a mixture, never a
half-written file, never the previous run's stale figures.

What scfm-audit did not write there (``cache/``, the demo's ``models/``, any file of the
user's) is carried over into the new folder. A lock (``.scfm-audit.lock``, ``flock``,
released by the kernel when the process dies, even on ``kill -9``) keeps a second run out
of the folder while the first one computes or writes. Leftovers of a killed run (its
staging folder, an old folder not yet deleted) are cleaned up, and anything carried that
was still in them is moved back, by the next run on the same folder.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import time
from pathlib import Path

#: Entries of the output folder that one run writes and the next run replaces.
RUN_ENTRIES = frozenset(
    {
        "tables",
        "figures",
        "tests.parquet",
        "tests.csv",
        "scorecard.parquet",
        "scorecard.csv",
        "config.resolved.yaml",
        "run.json",
        "report.html",
    }
)
#: Entries scfm-audit keeps across runs.
KEPT_ENTRIES = frozenset({"cache", "models"})
LOCK_FILE = ".scfm-audit.lock"


class OutputFolderError(ValueError):
    """The output folder cannot be used (a file, not writable, foreign content)."""


class OutputBusyError(RuntimeError):
    """Another run holds the output folder's lock."""


class OutputWriteError(RuntimeError):
    """Writing the run's files failed for want of space (full disk, quota, file too
    large); the message names the path. The previous outputs are untouched and what this
    run had staged is removed."""


#: errno values that mean "no room to write" rather than a bad path
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def no_space(e: BaseException, where: Path) -> OutputWriteError | None:
    """An :class:`OutputWriteError` naming the path for an out-of-space ``OSError`` (None for
    any other error)."""
    if not isinstance(e, OSError) or e.errno not in NO_SPACE:
        return None
    path = e.filename or where
    return OutputWriteError(
        f"no space left to write {path} ({e.strerror}); the run stopped, what it had "
        f"written there is removed and the previous outputs are untouched. Free space on "
        "that disk or choose an output folder on another one (config key `output`, or --out)."
    )


def check_output_path(
    path: str | Path,
    *,
    what: str = "output folder",
    fix: str = "choose another folder (config key `output`, or --out)",
) -> Path:
    """The absolute folder path, after checking it is (or can become) a folder we can
    write in; raises :class:`OutputFolderError` naming the problem and ``fix``. Creates
    nothing."""
    p = Path(path).expanduser().absolute()
    if p.exists() and not p.is_dir():
        raise OutputFolderError(f"The {what} {p} is an existing file, not a folder; {fix}.")
    anc = p
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise OutputFolderError(
            f"The {what} {p} cannot be created: {anc} is a file, not a folder; {fix}."
        )
    if _is_pseudo_fs(p):
        raise OutputFolderError(
            f"The {what} {p} is inside {_pseudo_root(p)}, a kernel file system where "
            f"files cannot be written; {fix}."
        )
    if p.is_dir() and os.path.ismount(p):
        raise OutputFolderError(
            f"The {what} {p} is a mount point: a run stages its outputs beside the folder "
            "and swaps them in with one rename, which a mount point cannot take (the run "
            f"would be lost at the end); use a folder inside it (e.g. {p / 'results'}), or "
            f"{fix.removeprefix('choose ')}."
        )
    if not os.access(anc, os.W_OK | os.X_OK):
        raise OutputFolderError(
            f"The {what} {p} cannot be written: {anc} is not writable "
            f"(read-only mount or no permission); {fix}."
        )
    return p


def refuse_foreign(path: Path) -> None:
    """Raise :class:`OutputFolderError` when ``path`` is a non-empty folder holding
    nothing scfm-audit writes (someone's data: a run would move it aside)."""
    if not path.is_dir():
        return
    names = {e.name for e in path.iterdir()} - {LOCK_FILE}
    if names and not names & (RUN_ENTRIES | KEPT_ENTRIES):
        shown = ", ".join(sorted(names)[:5]) + (" ..." if len(names) > 5 else "")
        raise OutputFolderError(
            f"The output folder {path} already holds files that scfm-audit did not "
            f"write ({shown}); choose a new or empty folder (config key `output`, or --out)."
        )


def _pseudo_root(p: Path) -> str:
    return "/" + p.parts[1] if len(p.parts) > 1 else "/"


def _is_pseudo_fs(p: Path) -> bool:
    return len(p.parts) > 1 and p.parts[1] in ("proc", "sys", "dev")


class OutputTransaction:
    """``open()`` before computing (checks, creates, locks, recovers); ``staging`` is where
    the run writes; ``commit()`` swaps it in; ``close()`` releases the lock and removes an
    uncommitted staging folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = check_output_path(path)
        self.staging = self.path.parent / f".{self.path.name}.scfm-staging-{os.getpid()}"
        self._locks: list[int] = []

    # -- opening -------------------------------------------------------------------------
    def open(self) -> OutputTransaction:
        p = self.path
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputFolderError(
                f"The output folder {p} cannot be created ({e.strerror}); choose a writable "
                "location (config key `output`, or --out)."
            ) from None
        if Path.cwd().is_relative_to(p):
            raise OutputFolderError(
                f"The output folder {p} contains the working folder; a run replaces the "
                "output folder as a whole, so run from another folder or choose another output."
            )
        self._refuse_foreign()
        self._lock(p / LOCK_FILE)
        self._recover()
        try:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging.mkdir()
            probe = self.staging / ".probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            self.close()
            raise OutputFolderError(
                f"The output folder {p} is not writable: a run stages its files in "
                f"{p.parent} before swapping them in, and that failed ({e.strerror}); "
                "choose a writable location (config key `output`, or --out)."
            ) from None
        return self

    def _lock(self, lock_path: Path) -> None:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutputFolderError(
                f"The output folder {self.path} is not writable ({e.strerror}); choose a "
                "writable location (config key `output`, or --out)."
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown process"
            os.close(fd)
            raise OutputBusyError(
                f"Another scfm-audit run ({holder}) is writing into {self.path}; wait for it "
                "to finish or choose another output folder."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
        self._locks.append(fd)

    def _refuse_foreign(self) -> None:
        refuse_foreign(self.path)

    def _recover(self) -> None:
        """Clean up after killed runs: carry back kept entries (cache, models, user files)
        left in their folders (a staging folder killed after the swap holds the previous
        run), then delete those folders."""
        for stale in sorted(self.path.parent.glob(f".{self.path.name}.scfm-*")):
            if stale == self.staging or not stale.is_dir():
                continue
            self._carry(stale, self.path)
            shutil.rmtree(stale, ignore_errors=True)

    # -- committing ----------------------------------------------------------------------
    def commit(self) -> None:
        """Swap the staging folder in; the previous outputs are deleted, the kept entries
        (cache, models, the user's own files) move into the new folder."""
        # lock the new folder before it becomes visible, so no run slips in mid-swap
        self._lock(self.staging / LOCK_FILE)
        old = self.path.parent / f".{self.path.name}.scfm-old-{os.getpid()}"
        _exchange(self.staging, self.path, old)
        if self.staging.exists():  # exchanged: the staging path now holds the old folder
            os.rename(self.staging, old)
        self._carry(old, self.path)
        shutil.rmtree(old, ignore_errors=True)

    @staticmethod
    def _carry(old: Path, new: Path) -> None:
        for entry in old.iterdir():
            if entry.name in RUN_ENTRIES or entry.name == LOCK_FILE or _is_write_tmp(entry.name):
                continue
            target = new / entry.name
            if not target.exists():
                os.rename(entry, target)

    def close(self) -> None:
        """Release the locks; delete the staging folder if it was not committed."""
        shutil.rmtree(self.staging, ignore_errors=True)
        for fd in self._locks:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._locks.clear()

    def __enter__(self) -> OutputTransaction:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _is_write_tmp(name: str) -> bool:
    """A half-written output of a killed run (``.<entry>.<random>.tmp``, see
    ``_io.atomic_path``): never the user's, never carried."""
    if not (name.startswith(".") and name.endswith(".tmp")):
        return False
    stem = name[1:].rsplit(".", 2)[0]
    return stem in RUN_ENTRIES or any(stem.startswith(e + ".") for e in RUN_ENTRIES)


def _exchange(new: Path, current: Path, old: Path) -> None:
    """Atomically exchange ``new`` and ``current`` (afterwards ``new`` holds the previous
    content); where the kernel or file system cannot, rename ``current`` to ``old`` and
    ``new`` to ``current`` (a short window in which ``current`` is missing; the next run
    recovers from it)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        rc = libc.renameat2(
            _AT_FDCWD, os.fsencode(new), _AT_FDCWD, os.fsencode(current), _RENAME_EXCHANGE
        )
        if rc == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(code, os.strerror(code), str(current))
    except AttributeError:  # no renameat2 in this C library
        pass
    os.rename(current, old)
    os.rename(new, current)
