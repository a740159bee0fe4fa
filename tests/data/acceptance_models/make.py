"""Re-make the acceptance checkpoints of ``tests/test_train.py`` (both families,
the acceptance seeds ``SEEDS``, the test's own benchmark and the demo recipe; about 4
minutes on two idle cores):

    PYTHONPATH=src python tests/data/acceptance_models/make.py [scgpt] [geneformer]

(one family re-makes only that family's checkpoints; PROVENANCE.json is rewritten with the
current settings of both, so re-make a family only when the other's settings are unchanged).

Training is deterministic (fixed steps, seeded, one thread), so this gives bitwise the
same files on the torch build and CPU kernels recorded in each ``train_log.json``
(``torch_version``, ``cpu``); on another processor the weights differ by float rounding.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))  # the repository root (for tests.test_train)

from tests.test_train import GF_TRAIN, SCGPT_TRAIN, SEEDS, SIM  # noqa: E402

from scfm_audit.data._simulate import simulate_perturbseq  # noqa: E402
from scfm_audit.models._train import (  # noqa: E402
    cpu_signature,
    train_geneformer_demo,
    train_scgpt_demo,
)


def main(families: list[str]) -> None:
    known = {"scgpt", "geneformer"}
    if not families or set(families) - known:
        raise SystemExit(f"families must be among {sorted(known)}, got {families}")
    for seed in SEEDS:
        adata = simulate_perturbseq(**{**SIM, "seed": seed}).adata
        for family, fn, kw in (
            ("scgpt", train_scgpt_demo, SCGPT_TRAIN),
            ("geneformer", train_geneformer_demo, GF_TRAIN),
        ):
            if family not in families:
                continue
            fn(adata, HERE / f"{family}_{seed}", **kw, seed=seed, progress=False)
    (HERE / "PROVENANCE.json").write_text(
        json.dumps(
            {
                "command": "PYTHONPATH=src python tests/data/acceptance_models/make.py",
                "seeds": list(SEEDS),
                "simulation": SIM,
                "scgpt": SCGPT_TRAIN,
                "geneformer": GF_TRAIN,
                "torch_version": torch.__version__,
                "cpu": cpu_signature(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:] or ["scgpt", "geneformer"])
