"""Wall time of the demo with and without the process beside the run, side by side.

Usage::

    python benchmarks/demo_time.py                 # both modes, full demo (about 8 min)
    python benchmarks/demo_time.py --modes beside  # one mode
    python benchmarks/demo_time.py --quick         # the quick demo

Each mode runs ``scfm-audit run`` on the demo's config (with the demo models
``scfm-audit demo`` would use, made once before the clocks start) in a fresh process and
a fresh output folder, so caches and imports are the same for both:

* ``beside``: ``executor: {kind: local, background: true}`` (the default): figures are
  drawn, and ``synthetic_controls`` runs, in one process beside the run;
* ``alone``: ``background: false``: everything in the run's process.

Printed per mode: wall seconds, CPU seconds (the run and its children), peak resident
memory of the run's process, the load average before and after (on a shared machine wall
time measures the neighbours too; CPU seconds do not), each analysis' seconds and where it
ran; then whether both modes wrote the same outputs (tests, scorecard, standards, every
table and figure, byte for byte) and the BLAS / OpenMP pools that ran (threadpoolctl).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def _config(out: Path, models: dict, *, quick: bool, background: bool) -> Path:
    from scfm_audit.pipeline._config import config_to_yaml
    from scfm_audit.pipeline._demo import demo_config

    cfg = demo_config(out, quick=quick, models=models)
    raw = yaml.safe_load(config_to_yaml(cfg))
    raw["executor"]["background"] = background
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _run(mode: str, root: Path, models: dict, quick: bool) -> dict:
    out = root / mode
    cfg = _config(out, models, quick=quick, background=mode == "beside")
    load0 = os.getloadavg()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    cli = "from scfm_audit.cli import main; main()"
    cmd = [sys.executable, "-c", cli, "run", str(cfg), "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"{mode}: the run failed:\n{proc.stderr[-3000:]}")
    meta = json.loads((out / "run.json").read_text())
    return {
        "mode": mode,
        "out": out,
        "wall": wall,
        "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "peak_mib": after.ru_maxrss / 1024,
        "load": (load0, os.getloadavg()),
        "analyses": {k: v["seconds"] for k, v in meta["analyses"].items()},
        "beside": meta.get("ran_beside", []),
    }


def _same(a: Path, b: Path) -> list[str]:
    """Files of the two output folders whose bytes differ (run.json, the report, the
    config and the lock file, which hold times, paths and process ids, aside)."""
    skip = {"run.json", "report.html", "config.resolved.yaml", ".scfm-audit.lock"}
    diff = []
    for f in sorted(p for p in a.rglob("*") if p.is_file() and "cache" not in p.parts):
        rel = f.relative_to(a)
        if rel.name in skip:
            continue
        g = b / rel
        if not g.is_file() or g.read_bytes() != f.read_bytes():
            diff.append(str(rel))
    return diff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", default="beside,alone", help="comma-separated: beside, alone")
    ap.add_argument("--quick", action="store_true", help="the quick demo")
    ap.add_argument("--out", type=Path, default=None, help="folder for the runs (default tmp)")
    args = ap.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="scfm_demo_time_"))
    root.mkdir(parents=True, exist_ok=True)
    from scfm_audit.pipeline._beside import usable_cores

    print(f"usable cores: {usable_cores()}; outputs under {root}")
    from scfm_audit.pipeline._demo import ensure_demo_models

    # the models `scfm-audit demo` would use (the shipped ones; --quick: trained once, here),
    # made before the clocks start and shared by both modes
    models = ensure_demo_models(root, quick=args.quick)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    runs = [_run(m, root, models, args.quick) for m in modes]
    for r in runs:
        print(
            f"{r['mode']:>7}: wall {r['wall']:.1f} s, CPU {r['cpu']:.1f} s, peak "
            f"{r['peak_mib']:.0f} MiB, load {r['load'][0][0]:.2f} -> {r['load'][1][0]:.2f}"
        )
    names = list(runs[0]["analyses"])
    print("\nseconds per analysis" + "".join(f" | {r['mode']:>8}" for r in runs))
    for n in sorted(names, key=lambda n: -runs[0]["analyses"][n]):
        cells = "".join(
            f" | {r['analyses'][n]:7.1f}{'*' if n in r['beside'] else ' '}" for r in runs
        )
        print(f"{n:32s}{cells}")
    print("(* ran in the process beside the run; its seconds overlap the others')")
    if len(runs) == 2:
        a, b = runs[0]["out"], runs[1]["out"]
        diff = _same(a, b)
        print(
            f"\n{runs[1]['mode']} / {runs[0]['mode']} wall: "
            f"{runs[1]['wall'] / runs[0]['wall']:.2f}x; same outputs: "
            + ("yes (every table, figure, test and scorecard byte)" if not diff else f"NO: {diff}")
        )
    from threadpoolctl import threadpool_info

    for pool in threadpool_info():
        print(
            f"pool: {pool.get('internal_api')} {pool.get('version')} "
            f"({pool.get('architecture')}, {pool.get('num_threads')} threads)"
        )
    print(f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}")


if __name__ == "__main__":
    main()
