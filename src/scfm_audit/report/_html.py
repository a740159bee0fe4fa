"""The run report: one self-contained HTML file (inline CSS, figures as base64 PNG, no
scripts, nothing fetched), scorecard first, then every analysis in run order.

``render_report(run, path)`` is called by the runner after the tables and figures are
written; it reads the figures back from ``<output>/figures``. Every user-provided string
(claims, names, summaries, notes, error messages, config values) is HTML-escaped by
jinja2's autoescaping.
"""

from __future__ import annotations

import base64
import logging
import math
import re
from collections.abc import Callable, Iterable
from datetime import datetime
from importlib import resources
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scfm_audit._io import atomic_write_text
from scfm_audit.analyses._run import RunResult
from scfm_audit.stats._verdict import FAMILY_SENTENCE

log = logging.getLogger("scfm_audit")

#: Rows of each analysis table shown in the report (the full table is in ``tables/``).
TABLE_ROWS = 20
#: Test lists longer than this are collapsed in a ``<details>`` element.
TESTS_OPEN = 12
#: At most this many tests are listed per analysis (all are in ``tests.csv``).
TESTS_MAX = 2000
_MISSING = "—"
#: Tables with more shown columns than this get a sticky first column and a scroll hint.
WIDE_COLUMNS = 8


# ---------------------------------------------------------------------- formatting --
def _is_missing(v: Any) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    if isinstance(v, float | np.floating):
        return math.isnan(v)
    return False


def fmt_num(v: Any, digits: int = 4) -> str:
    """A number to ``digits`` significant digits (integers exactly, large ones with
    thousands separators); missing values as an em dash."""
    if _is_missing(v):
        return _MISSING
    if isinstance(v, bool | np.bool_):
        return "true" if v else "false"
    if isinstance(v, Integral):
        v = int(v)
        return f"{v:,}" if abs(v) >= 1000 else str(v)
    if isinstance(v, Real):
        f = float(v)
        if math.isinf(f):
            return "∞" if f > 0 else "−∞"
        if f == 0:
            return "0"
        if f.is_integer() and 1000 <= abs(f) < 1e15:
            return f"{int(f):,}"
        return f"{f:.{digits}g}"
    return str(v)


def fmt_p(v: Any) -> str:
    """p- and q-values: three significant digits, scientific below 10⁻³."""
    if _is_missing(v):
        return _MISSING
    f = float(v)
    if f == 0:
        return "0"
    if f < 1e-3:
        return f"{f:.2e}"
    return f"{f:.3g}"


def fmt_effect(effect: Any, lo: Any = None, hi: Any = None) -> str:
    """``effect [lo, hi]`` (the CI only when both ends are known)."""
    if _is_missing(effect):
        return _MISSING
    out = fmt_num(effect, 3)
    if not (_is_missing(lo) or _is_missing(hi)):
        out += f" [{fmt_num(lo, 3)}, {fmt_num(hi, 3)}]"
    return out


def fmt_value_ci(value: Any, lo: Any, hi: Any, decimals: int | None) -> str:
    """``value [lo, hi]`` with one precision for all three (``decimals`` from
    :func:`column_decimals`; None: four significant digits each)."""
    if _is_missing(value):
        return _MISSING
    out = _fixed(value, decimals)
    if not (_is_missing(lo) or _is_missing(hi)):
        out += f" [{_fixed(lo, decimals)}, {_fixed(hi, decimals)}]"
    return out


def column_decimals(values: Iterable[Any], *, significant: int = 3) -> int | None:
    """Decimals that give the largest |value| of a column ``significant`` significant
    digits (0–4), so that a column's values line up and compare; None when the column
    spans more than two orders of magnitude (fixed decimals would print a small but
    meaningful value, e.g. a ΔAUROC of −0.0004, as 0.00: format each value on its own)."""
    v = np.abs(np.asarray([float(x) for x in values if not _is_missing(x)], dtype=float))
    v = v[np.isfinite(v) & (v > 0)]
    if v.size == 0:
        return significant
    if v.max() / v.min() > 100:
        return None
    return int(np.clip(significant - 1 - math.floor(math.log10(v.max())), 0, 4))


def fmt_seconds(s: float) -> str:
    if _is_missing(s):
        return _MISSING
    s = float(s)
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(round(s), 60)
    if m < 60:
        return f"{m} min {sec:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def _cell(v: Any, max_chars: int = 120) -> dict[str, str]:
    """One table cell: text, CSS class, full text for the tooltip when truncated."""
    if _is_missing(v):
        return {"text": _MISSING, "cls": "missing", "title": ""}
    if isinstance(v, bool | np.bool_):
        return {"text": "true" if v else "false", "cls": "bool", "title": ""}
    if isinstance(v, Real):
        return {"text": fmt_num(v), "cls": "num", "title": ""}
    text = v if isinstance(v, str) else str(v)
    if len(text) > max_chars:
        return {"text": text[: max_chars - 1] + "…", "cls": "", "title": text}
    return {"text": text, "cls": "", "title": ""}


def _slug(name: str) -> str:
    return "a-" + re.sub(r"[^A-Za-z0-9_-]+", "-", str(name)).strip("-")


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", text or "") if p.strip()]


# ----------------------------------------------------------------------- sections --
def _header(run: RunResult, path: Path) -> dict[str, Any]:
    from scfm_audit import __version__

    cfg = run.config
    tests = run.tests
    n_p = int(tests["p"].notna().sum()) if "p" in tests else 0
    n_sig = int((tests["q"] < run.alpha).sum()) if "q" in tests else 0
    names = {}
    for section in ("datasets", "models", "references"):
        names[section] = ", ".join(map(str, getattr(cfg, section, {}) or {})) or _MISSING
    return {
        "title": f"scfm-audit report — {Path(run.output).name or run.output}",
        "output": str(Path(run.output).resolve()),
        "date": datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "version": __version__,
        "seed": getattr(cfg, "seed", _MISSING),
        "alpha": fmt_num(run.alpha),
        "n_tests": len(tests),
        "n_tests_p": n_p,
        "n_sig": n_sig,
        "n_claims": int((tests["family"] == "claim").sum()) if "family" in tests else 0,
        "n_descriptive": int((tests["family"] == "descriptive").sum()) if "family" in tests else 0,
        # wall time: an analysis run beside the others overlaps them, so no sum of timings
        "runtime": _total_time(run),
        "n_analyses": len(_analysis_order(run)),
        "n_failed": len(run.errors),
        **names,
        "notes": list(run.notes or []),
        "report_path": str(path),
    }


def _analysis_order(run: RunResult) -> list[str]:
    """Run order: the config's analyses (specs keep it), then anything else reported."""
    order = list(dict.fromkeys([*run.specs, *run.results, *run.errors]))
    return order


_BADGE = {
    "yes": ("yes", "✓ yes"),
    "opposite": ("opp", "⇄ opposite"),
    "no evidence": ("no", "✗ no evidence"),
}


def _scorecard(run: RunResult) -> dict[str, Any]:
    try:
        verdicts = run.verdicts()
    except Exception as e:  # the report must still render
        log.exception("scorecard failed")
        return {"groups": [], "error": f"{type(e).__name__}: {e}", "n": 0}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in verdicts.to_dict("records"):
        key = (r.get("model"), r.get("dataset"))
        # claims without a model are about co-expression / gene-level scores or (without
        # a dataset) the calibration on simulated controls: say so, not "—"
        key = (
            "none (co-expression, baselines)" if _is_missing(key[0]) else str(key[0]),
            "simulated controls" if _is_missing(key[1]) else str(key[1]),
        )
        answer = str(r.get("answer", "n/a"))
        cls, label = _BADGE.get(answer, ("na", "– n/a"))
        q = r.get("q")
        effect_name = "" if _is_missing(r.get("effect")) else (r.get("effect_name") or "effect")
        layer = r.get("layer")
        groups.setdefault(key, []).append(
            {
                "claim": str(r.get("claim", "")),
                "answer": answer,
                "badge_cls": cls,
                "badge": label,
                "reason": "" if _is_missing(r.get("reason")) else str(r.get("reason")),
                "power_note": "" if _is_missing(r.get("power_note")) else str(r.get("power_note")),
                "q": fmt_p(q),
                "p": fmt_p(r.get("p")),
                "effect_name": effect_name,
                "effect": fmt_effect(r.get("effect"), r.get("ci_low"), r.get("ci_high")),
                "null_value": "" if _is_missing(r.get("null_value")) else f"{r['null_value']:g}",
                "layer": "" if _is_missing(layer) else str(int(layer)),
                "layer_choice": str(r.get("layer_choice") or ""),
                "test": str(r.get("test") or _MISSING),
                "reference": _MISSING if _is_missing(r.get("reference")) else str(r["reference"]),
                "analysis": str(r.get("analysis", "")),
                "anchor": _slug(r.get("analysis", "")),
            }
        )
    out = [{"model": m, "dataset": d, "rows": rows} for (m, d), rows in groups.items()]
    counts = verdicts["answer"].value_counts().to_dict() if len(verdicts) else {}
    return {
        "groups": out,
        "error": None,
        "n": len(verdicts),
        "n_yes": counts.get("yes", 0),
        "n_opposite": counts.get("opposite", 0),
        "n_no": counts.get("no evidence", 0),
        "n_na": counts.get("n/a", 0),
    }


_STD_BADGE = {
    "yes": ("yes", "✓ yes"),
    "opposite": ("opp", "⇄ opposite"),
    "no evidence": ("no", "✗ no evidence"),
    "not detected": ("nd", "○ not detected"),
    "mixed": ("mix", "± mixed"),
    "n/a": ("na", "– n/a"),
    "not run": ("nr", "not run"),
}


def _standards(run: RunResult) -> dict[str, Any]:
    """The QC standard on top: rows = standards, columns = model × dataset, each cell
    the answer (colour + word), its effect [CI] and q below, the claims on hover."""
    from scfm_audit.report._standards import STANDARDS, run_standards

    try:
        m = run_standards(run)
    except Exception as e:  # the report must still render
        log.exception("standards matrix failed")
        return {"columns": [], "rows": [], "error": f"{type(e).__name__}: {e}"}
    pairs = list(dict.fromkeys(zip(m["model"], m["dataset"], strict=True)))
    look = {(r["standard"], r["model"], r["dataset"]): r for r in m.to_dict("records")}
    rows = []
    for st in STANDARDS:
        cells = []
        for model, ds in pairs:
            r = look[(st.id, model, ds)]
            cls, word = _STD_BADGE.get(r["answer"], ("na", r["answer"]))
            # two significant digits below the word (the hover and standards.csv have more)
            est = "" if _is_missing(r["effect"]) else fmt_num(r["effect"], 2)
            if est and not (_is_missing(r["ci_low"]) or _is_missing(r["ci_high"])):
                est += f" [{fmt_num(r['ci_low'], 2)}, {fmt_num(r['ci_high'], 2)}]"
            full = fmt_effect(r["effect"], r["ci_low"], r["ci_high"])
            q = "" if _is_missing(r["q"]) else f"q {fmt_p(r['q'])}"
            hover = [f"{st.title} · {model} · {ds}: {r['answer']}"]
            if est:
                hover.append(f"{r['effect_name'] or 'effect'} {full}" + (f", {q}" if q else ""))
            if r["n_claims"] > 1:
                hover.append(f"{r['n_claims']} claims behind it")
            if r["claims"]:
                hover += [c.strip() for c in str(r["claims"]).split("; ")]
            cells.append({"cls": cls, "word": word, "est": est, "q": q, "title": "\n".join(hover)})
        rows.append({"title": st.title, "meaning": st.meaning, "cells": cells})
    return {
        "columns": [{"model": mo, "dataset": d} for mo, d in pairs],
        "rows": rows if pairs else [],
        "error": None,
    }


def _family_sensitivity(run: RunResult) -> list[dict[str, str]]:
    fs = run.family_sensitivity
    if fs is None or fs.empty:
        return []
    return [{k: fmt_num(v) for k, v in row.items()} for row in fs.to_dict("records")]


def _numeric(col: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)


_P_COLUMN = re.compile(r"^(p|q)(_|$)|_(p|q)$")
_CI_SUFFIXES = (("_ci_low", "_ci_high"), ("_lo", "_hi"), ("_low", "_high"))


def _ci_columns(df: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """``column -> (low, high)`` for numeric columns shown with their CI (``x_ci_low`` /
    ``x_ci_high`` beside ``x``)."""
    out = {}
    for c in df.columns:
        for lo, hi in _CI_SUFFIXES:
            if f"{c}{lo}" in df and f"{c}{hi}" in df and _numeric(df[c]):
                out[str(c)] = (f"{c}{lo}", f"{c}{hi}")
                break
    return out


def _table(df: pd.DataFrame, *, n_rows: int = TABLE_ROWS) -> dict[str, Any]:
    """An analysis table for the report: each value with its CI in one cell
    (``auroc [CI]``), one precision per column, p-/q-values in p-value notation."""
    shown = df.head(n_rows)
    cis = _ci_columns(df)
    folded = {c for pair in cis.values() for c in pair}
    columns = [c for c in df.columns if c not in folded]
    header: list[dict[str, str]] = []
    formats: list[Callable[..., dict[str, str]]] = []  # row -> cell (column bound as a default)
    for c in columns:
        col = df[c]
        if str(c) in cis:
            lo, hi = cis[str(c)]
            d = column_decimals(pd.concat([col, df[lo], df[hi]]))
            header.append({"text": f"{c} [CI]", "cls": "num"})
            formats.append(
                lambda r, c=c, lo=lo, hi=hi, d=d: _text(fmt_value_ci(r[c], r[lo], r[hi], d))
            )
        elif _numeric(col) and _P_COLUMN.search(str(c)):
            header.append({"text": str(c), "cls": "num"})
            formats.append(lambda r, c=c: _text(fmt_p(r[c])))
        elif _numeric(col) and not pd.api.types.is_integer_dtype(col) and not _whole(col):
            d = column_decimals(col)
            header.append({"text": str(c), "cls": "num"})
            formats.append(lambda r, c=c, d=d: _text(_fixed(r[c], d)))
        elif _numeric(col) and _whole(col):
            header.append({"text": str(c), "cls": "num"})
            formats.append(lambda r, c=c: _text(_fixed(r[c], 0)))
        else:
            header.append({"text": str(c), "cls": "num" if _numeric(col) else ""})
            formats.append(lambda r, c=c: _cell(r[c]))
    rows = [[f(r) for f in formats] for r in shown.to_dict("records")]
    return {
        "header": header,
        "rows": rows,
        "n_rows": len(df),
        "n_cols": df.shape[1],
        "n_shown": len(shown),
        "wide": len(header) > WIDE_COLUMNS,
    }


def _whole(col: pd.Series) -> bool:
    """A float column holding only whole numbers (layer, head with NaN for 'pooled')."""
    v = pd.to_numeric(col, errors="coerce").dropna().to_numpy(dtype=float)
    return bool(v.size) and bool(np.all(np.isfinite(v) & (v == np.round(v))))


def _fixed(v: Any, decimals: int | None) -> str:
    if _is_missing(v):
        return _MISSING
    return fmt_num(v) if decimals is None else f"{float(v):,.{decimals}f}"


def _text(text: str) -> dict[str, str]:
    return {"text": text, "cls": "missing" if text == _MISSING else "num", "title": ""}


def _figure_uri(png: Path | None, fig: Any = None) -> str | None:
    data = None
    if png is not None and png.is_file():
        data = png.read_bytes()
    elif fig is not None:  # not written (e.g. rendering a RunResult by hand): draw it now
        from scfm_audit.plotting._render import render_png

        data = render_png(fig)
    if data is None:
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _figures(run: RunResult, name: str, res: Any) -> list[dict[str, Any]]:
    out = Path(run.output)
    written = [Path(p) for p in run.files.get(name, []) if str(p).endswith(".png")]
    figs: list[dict[str, Any]] = []
    seen: set[str] = set()
    for fname, fig in (res.figures if res is not None else {}).items():
        png = out / "figures" / f"{name}__{fname}.png"
        match = next((p for p in written if p.name == png.name), png)
        seen.add(match.name)
        uri = _figure_uri(match, fig)
        figs.append({"name": str(fname), "uri": uri, "file": f"figures/{png.name}"})
    for p in written:
        if p.name not in seen:
            stem = p.stem.split("__", 1)[-1]
            figs.append({"name": stem, "uri": _figure_uri(p), "file": f"figures/{p.name}"})
    return figs


_TEST_COLS = ("hypothesis", "model", "dataset", "reference", "method", "layer", "head", "test")
#: Columns hoisted above the tests table when one value holds for every test.
_HOISTABLE = ("model", "dataset", "reference", "method", "layer", "head", "test", "null", "family")


def _at_floor(r: dict[str, Any]) -> bool:
    p, floor = r.get("p"), r.get("p_floor")
    if p is None or floor is None or _is_missing(p) or _is_missing(floor):
        return False
    return float(p) <= float(floor) * (1 + 1e-9)


def _nulls(t: pd.DataFrame) -> list[dict[str, str]]:
    """Each null hypothesis the analysis' tests used, named once, with its statement."""
    if "null" not in t:
        return []
    names = t["null_name"] if "null_name" in t else pd.Series("", index=t.index)
    pairs = dict.fromkeys(zip(names.fillna("").astype(str), t["null"].fillna("").astype(str)))
    return [{"name": n or "H0", "h0": h} for n, h in pairs if h]


def _tests_table(run: RunResult, name: str) -> dict[str, Any]:
    """The analysis' tests; columns that are empty for every test are dropped and those
    with one value for every test are stated once above the table."""
    t = run.tests
    if t is None or t.empty or "analysis" not in t:
        return {"n": 0}
    t = t[t["analysis"] == name]
    n = len(t)
    if n == 0:
        return {"n": 0}
    n_sig = int((t["q"] < run.alpha).sum())

    def single(col: str) -> Any:
        """The one value of ``col`` when every test has the same non-missing value."""
        if col not in t or t[col].isna().any():
            return None
        vals = t[col].unique()
        return vals[0] if len(vals) == 1 and str(vals[0]) else None

    def named(col: str) -> str | None:
        vals = [v for v in t[col].dropna().unique() if str(v)] if col in t else []
        return str(vals[0]) if len(vals) == 1 else None

    common = []
    hoisted = set()
    if n > 1:
        for c in _HOISTABLE:
            v = single(c)
            if v is not None:
                common.append({"name": c, "value": fmt_num(v) if isinstance(v, Real) else str(v)})
                hoisted.add(c)
    elif single("null") is not None:
        common.append({"name": "null", "value": str(single("null"))})
        hoisted.add("null")
    cols = [
        c
        for c in _TEST_COLS
        if c in t and c not in hoisted and not (c != "hypothesis" and t[c].isna().all())
    ]
    show_family = "family" not in hoisted
    stat_name = named("statistic_name")
    eff_name = named("effect_name")
    shifts = [_shift(r) for r in t.to_dict("records")]
    natural = all(s is not None for s in shifts)  # effect = statistic - c: show the statistic
    eff_cols = [t[c] for c in ("effect", "ci_low", "ci_high") if c in t]
    d_eff = column_decimals(pd.concat(eff_cols)) if eff_cols else 3
    d_stat = column_decimals(t["statistic"]) if "statistic" in t else 3
    stat_head = f"{stat_name}" if stat_name else "statistic"
    if natural:
        value_heads = [{"text": f"{stat_head} [CI]", "cls": "num"}]
    else:
        value_heads = [
            {"text": f"statistic ({stat_name})" if stat_name else "statistic", "cls": "num"},
            {"text": f"{eff_name} [CI]" if eff_name else "effect [CI]", "cls": "num"},
        ]
    header = [{"text": c, "cls": ""} for c in cols] + [
        *value_heads,
        {"text": "n", "cls": "num"},
        {"text": "p", "cls": "num"},
        {"text": "q", "cls": "num"},
        *([{"text": "family", "cls": ""}] if show_family else []),
        {"text": "q < α", "cls": ""},
    ]
    rows = []
    n_floor = 0
    for r in t.head(TESTS_MAX).to_dict("records"):
        cells = []
        for c in cols:
            cell = _cell(r.get(c), max_chars=200)
            if c in ("hypothesis", "test"):
                cell["cls"] += " wrap"
            if c == "test" and "null" not in hoisted and not _is_missing(r.get("null")):
                cell["title"] = f"null: {r['null']}"
            cells.append(cell)
        if natural:
            shift = _shift(r) or 0.0
            lo, hi = r.get("ci_low"), r.get("ci_high")
            stat = fmt_value_ci(
                r.get("statistic"),
                None if _is_missing(lo) else float(lo) + shift,
                None if _is_missing(hi) else float(hi) + shift,
                d_stat,
            )
        else:
            stat = fmt_value_ci(r.get("statistic"), None, None, d_stat)
        if not stat_name and r.get("statistic_name") and stat != _MISSING:
            stat = f"{r['statistic_name']} = {stat}"
        eff = fmt_value_ci(r.get("effect"), r.get("ci_low"), r.get("ci_high"), d_eff)
        if not eff_name and r.get("effect_name") and eff != _MISSING:
            eff = f"{r['effect_name']} = {eff}"
        passed = "n/a" if _is_missing(r.get("q")) else ("yes" if bool(r.get("passed")) else "no")
        p_cell = {"text": fmt_p(r.get("p")), "cls": "num", "title": ""}
        if _at_floor(r):
            p_cell.update(
                text=p_cell["text"] + " ▾", title="at its Monte-Carlo floor: true p ≤ this"
            )
            n_floor += 1
        cells += [
            {"text": stat, "cls": "num", "title": ""},
            *([] if natural else [{"text": eff, "cls": "num", "title": ""}]),
            _cell(r.get("n")),
            p_cell,
            {"text": fmt_p(r.get("q")), "cls": "num", "title": ""},
            *([_cell(r.get("family"))] if show_family else []),
            {"text": passed, "cls": f"passed-{passed.replace('/', '')}", "title": ""},
        ]
        rows.append({"cells": cells, "sig": passed == "yes"})
    return {
        "n": n,
        "n_sig": n_sig,
        "common": common,
        "header": header,
        "rows": rows,
        "collapsed": n > TESTS_OPEN,
        "truncated": n > TESTS_MAX,
        "n_floor": n_floor,
        "nulls": _nulls(t),
        "max": TESTS_MAX,
    }


_SHIFT = re.compile(r"^\s*(.+?)\s*([-+−])\s*([0-9]*\.?[0-9]+)\s*$")


def _shift(r: dict[str, Any]) -> float | None:
    """``c`` when the test's effect is its statistic minus ``c`` (``AUROC - 0.5``), so the
    report can show the statistic and its CI on the natural scale; else None."""
    m = _SHIFT.match(str(r.get("effect_name") or ""))
    if not m or m.group(1) != str(r.get("statistic_name")):
        return None
    c = float(m.group(3)) * (1 if m.group(2) in "-−" else -1)
    stat, eff = r.get("statistic"), r.get("effect")
    if stat is None or eff is None or _is_missing(stat) or _is_missing(eff):
        return c
    return c if abs(float(stat) - float(eff) - c) < 1e-9 else None


def _section(run: RunResult, name: str) -> dict[str, Any]:
    spec = run.specs.get(name)
    res = run.results.get(name)
    sec: dict[str, Any] = {
        "name": name,
        "anchor": _slug(name),
        "version": getattr(spec, "version", _MISSING),
        "category": getattr(spec, "category", "") or "",
        "description": getattr(spec, "description", "") or "",
        "error": run.errors.get(name),
        "seconds": fmt_seconds(run.timings.get(name, math.nan)),
        "summary": _paragraphs(res.summary) if res is not None else [],
        "notes": list(res.notes) if res is not None else [],
        "figures": [],
        "tables": [],
        "tests": {"n": 0},
        "render_error": None,
    }
    try:
        sec["figures"] = _figures(run, name, res)
        if res is not None:
            for tname, df in res.tables.items():
                tab = _table(df)
                tab["name"] = str(tname)
                tab["file"] = f"tables/{name}__{tname}.csv"
                sec["tables"].append(tab)
        sec["tests"] = _tests_table(run, name)
    except Exception as e:  # one bad table must not lose the report
        log.exception("report section %s failed", name)
        sec["render_error"] = f"{type(e).__name__}: {e}"
    if res is None and sec["error"] is None:
        sec["error"] = "The analysis returned no result."
    return sec


def _toc(sections: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "name": s["name"],
            "anchor": s["anchor"],
            "category": s["category"],
            "failed": s["error"] is not None,
            "n_tests": s["tests"].get("n", 0),
            "n_sig": s["tests"].get("n_sig", 0),
        }
        for s in sections
    ]


def _cache_info(run: RunResult) -> dict[str, Any]:
    """Cache hits/misses when the run recorded them, else what lies in the cache folder."""
    hits = getattr(run, "cache_hits", None)
    misses = getattr(run, "cache_misses", None)
    cache = getattr(run, "cache", None)
    if hits is None and cache is not None:
        hits, misses = getattr(cache, "hits", None), getattr(cache, "misses", None)
    on_disk: dict[str, int] = {}
    root = Path(run.output) / "cache"
    if root.is_dir():
        for kind in sorted(p for p in root.iterdir() if p.is_dir()):
            n = sum(1 for a in kind.iterdir() if (a / "DONE").exists())
            if n:
                on_disk[kind.name] = n
    return {
        "hits": None if hits is None else list(hits),
        "misses": None if misses is None else list(misses),
        "on_disk": on_disk,
    }


def _config_yaml(run: RunResult) -> str:
    import yaml

    try:  # the report reads the config it is given; it never imports the pipeline
        return yaml.safe_dump(run.config.model_dump(mode="json"), sort_keys=False)
    except Exception:  # a hand-built RunResult may carry something else
        return repr(run.config)


def _timings(run: RunResult) -> list[dict[str, str]]:
    rows = []
    for name in _analysis_order(run):
        spec = run.specs.get(name)
        rows.append(
            {
                "name": name,
                "anchor": _slug(name),
                "version": str(getattr(spec, "version", _MISSING)),
                "seconds": fmt_seconds(run.timings.get(name, math.nan)),
                "status": "failed" if name in run.errors else "ok",
                # its seconds overlap the others' (pipeline/_beside.py)
                "where": "beside the run" if name in getattr(run, "ran_beside", ()) else "",
            }
        )
    return rows


def _training(run: RunResult) -> list[dict[str, Any]]:
    """Training curves of the run's models that scfm-audit trained (``train_log.json``)."""
    from scfm_audit.report._training import training_summaries

    try:
        items = training_summaries(getattr(run.config, "models", None) or {})
    except Exception as e:  # the block is optional: never lose the report over it
        log.warning("model training block not rendered: %s", e)
        return []
    for m in items:
        m["uri"] = _figure_uri(None, m.pop("figure"))
    return items


# ------------------------------------------------------------------------- render --
def _template():
    import jinja2

    env = jinja2.Environment(
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = fmt_num
    env.filters["pval"] = fmt_p
    src = resources.files("scfm_audit.report").joinpath("templates/report.html.j2")
    return env.from_string(src.read_text(encoding="utf-8"))


def _total_time(run: RunResult) -> str:
    """Wall time of the whole run (inputs, analyses, writing) when recorded, else the sum
    of the analyses' times."""
    total = getattr(run, "total_seconds", None)
    if total is not None:
        return fmt_seconds(total)
    return fmt_seconds(sum(run.timings.values())) if run.timings else _MISSING


def render_report(run: RunResult, path: str | Path) -> Path:
    """Write the run's HTML report to ``path`` (atomically) and return the path.

    One self-contained file: header (run folder, date, package version, seed, α, number
    of tests, run time), the scorecard (one row per verdict, grouped by model and
    dataset, with the family-definition sensitivity table), a table of contents, one
    section per analysis in run order (description, summary, notes, error, figures,
    tables, tests) and a footer (resolved config, timings, cache).
    """
    path = Path(path)
    sections = [_section(run, name) for name in _analysis_order(run)]
    html = _template().render(
        h=_header(run, path),
        standards=_standards(run),
        scorecard=_scorecard(run),
        family=_family_sensitivity(run),
        family_sentence=FAMILY_SENTENCE,
        toc=_toc(sections),
        sections=sections,
        config_yaml=_config_yaml(run),
        timings=_timings(run),
        total_time=_total_time(run),
        cache=_cache_info(run),
        alpha=fmt_num(run.alpha),
        table_rows=TABLE_ROWS,
        training=_training(run),
    )
    atomic_write_text(path, html)
    return path
