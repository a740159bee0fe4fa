"""Every benchmark script is listed in the README's benchmark table and run by
``make bench``, and nothing is listed that does not exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_makefile_and_scripts_agree():
    scripts = {p.stem for p in (ROOT / "benchmarks").glob("*.py") if not p.stem.startswith("_")}
    readme = set(
        re.findall(r"^\| `benchmarks/(\w+)\.py` \|", (ROOT / "README.md").read_text(), re.M)
    )
    make = (ROOT / "Makefile").read_text()
    block = re.search(r"^BENCHMARKS := (.*?)\n(?!\t)", make, re.M | re.S)
    assert block is not None
    in_make = set(block.group(1).replace("\\", " ").split())
    assert scripts == readme, (scripts - readme, readme - scripts)
    assert scripts == in_make, (scripts - in_make, in_make - scripts)
