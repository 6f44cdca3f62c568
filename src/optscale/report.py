"""Evaluation reports: result rows, tables (markdown / CSV / JSON) and the accuracy-vs-tokens plot.

:class:`EvalReport` is what :func:`optscale.evaluate.evaluate` and :func:`optscale.evaluate.sweep`
return. Each :class:`EvalRow` is one (method, hyper-parameters, budget, split) point with its mean
accuracy, mean tokens per problem and mean samples drawn, each with a bootstrap 95% interval over problems.

matplotlib is imported inside :func:`plot_accuracy_vs_tokens` only (Agg backend).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from optscale._json import json_default

#: the ``kind`` of a row
KIND_FIXED = "fixed"  # a fixed-budget method (BoN, self-consistency): draws N_max samples
KIND_ADAPTIVE = "adaptive"  # an adaptive method (OptScale, ESC, ASC, DSC, ...)
KIND_ORACLE = "oracle"  # the clairvoyant lower bound
KIND_SWEEP = "sweep"  # a grid point of a sweep (NOT held-out)

#: the ``split`` of a row
SPLIT_ALL = "all"  # every problem (no tuning happened)
SPLIT_TEST = "test"  # held-out problems (hyper-parameters tuned on the calibration split)
SPLIT_CALIB = "calib"  # calibration problems (where hyper-parameters were chosen)
SPLIT_SWEEP = "all (not held-out)"  # grid sweep over every problem: for plots, not for claims


@dataclass
class EvalRow:
    """One evaluated point. Accuracy is a fraction in [0, 1]; tokens and samples are means per problem
    (averaged first over orderings within a problem, then over problems)."""

    method: str  # policy name ("bon", "optscale0", ..., "oracle")
    label: str  # display label ("optscale0 (tuned)", "BoN", ...)
    params: dict[str, Any]
    budget: int  # N_max
    split: str
    kind: str
    accuracy: float
    acc_ci_low: float
    acc_ci_high: float
    tokens: float
    tok_ci_low: float
    tok_ci_high: float
    samples: float
    samples_ci_low: float
    samples_ci_high: float
    n_problems: int
    n_orderings: int
    pareto: bool = False

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


@dataclass
class EvalReport:
    """Rows of an evaluation plus its settings (``meta``: pool, seed, orderings, splits, selection rule,
    tuned hyper-parameters, ...)."""

    rows: list[EvalRow] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ queries
    def select(self, **conditions: Any) -> list[EvalRow]:
        """Rows whose attributes equal every given condition, e.g. ``report.select(method="bon")``."""
        return [r for r in self.rows if all(getattr(r, k) == v for k, v in conditions.items())]

    def get(self, **conditions: Any) -> EvalRow:
        """The one row matching ``conditions``; KeyError if none or several."""
        rows = self.select(**conditions)
        if len(rows) != 1:
            raise KeyError(f"{len(rows)} rows match {conditions}")
        return rows[0]

    def mark_pareto(self) -> None:
        """Set ``pareto`` on the rows (per split, oracle rows excluded) not dominated in (accuracy up,
        tokens down) by any other row of the same split."""
        for r in self.rows:
            r.pareto = False
        for split in {r.split for r in self.rows}:
            cand = [r for r in self.rows if r.split == split and r.kind != KIND_ORACLE]
            for r in pareto_frontier(cand):
                r.pareto = True

    def extend(self, other: EvalReport) -> None:
        self.rows.extend(other.rows)
        for k, v in other.meta.items():
            self.meta.setdefault(k, v)

    # ------------------------------------------------------------------ output
    def to_dict(self) -> dict[str, Any]:
        return {"meta": _jsonable(self.meta), "rows": [r.to_dict() for r in self.rows]}

    def to_json(self, path: str | Path | None = None) -> str:
        """The report as JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False, default=json_default)
        if path is not None:
            _write_text(path, text + "\n")
        return text

    def to_csv(self, path: str | Path | None = None) -> str:
        """One line per row; ``params`` as a JSON object. Also written to ``path`` when given."""
        names = [f.name for f in fields(EvalRow)]
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(names)
        for r in self.rows:
            d = r.to_dict()
            d["params"] = json.dumps(d["params"], sort_keys=True, default=json_default)
            w.writerow([_csv_cell(d[n]) for n in names])
        text = buf.getvalue()
        if path is not None:
            _write_text(path, text)
        return text

    def to_markdown(self, path: str | Path | None = None, *, include_calib: bool = False,
                    include_sweep: bool = False) -> str:
        """A markdown table per split (accuracy in %, 95% bootstrap intervals in brackets; ``*`` marks the
        Pareto frontier). Calibration and sweep rows are left out unless asked for (a line counts the sweep
        rows). Also written to ``path`` when given."""
        lines: list[str] = []
        m = self.meta
        if m:
            head = []
            for key in ("pool", "problems", "orderings", "seed", "calib_frac", "selection"):
                if key in m and m[key] is not None:
                    head.append(f"{key}: {m[key]}")
            if head:
                lines.append("; ".join(str(h) for h in head))
                lines.append("")
            if m.get("cost") == "samples":
                lines.append("Note: the pool has no token counts; cost is counted in samples (each drawn "
                             "sample = 1 in the tokens columns).")
                lines.append("")
        order = [SPLIT_TEST, SPLIT_ALL, SPLIT_CALIB, SPLIT_SWEEP]
        splits = sorted({r.split for r in self.rows}, key=lambda s: order.index(s) if s in order else 99)
        for split in splits:
            if split == SPLIT_CALIB and not include_calib:
                continue
            if split == SPLIT_SWEEP and not include_sweep:
                n_sweep = sum(r.split == SPLIT_SWEEP for r in self.rows)
                lines.append(f"({n_sweep} grid-sweep rows over all problems - not held-out - are in the CSV/JSON "
                             "output and the plot.)")
                lines.append("")
                continue
            rows = [r for r in self.rows if r.split == split]
            n_prob = rows[0].n_problems if rows else 0
            title = {
                SPLIT_TEST: "held-out problems (hyper-parameters tuned on the calibration split)",
                SPLIT_ALL: "all problems",
                SPLIT_CALIB: "calibration problems (used for tuning)",
                SPLIT_SWEEP: "grid sweep over all problems - NOT held-out, for plots only",
            }.get(split, split)
            lines.append(f"### {title} ({n_prob} problems)")
            lines.append("")
            lines.append("| method | params | N_max | accuracy % [95% CI] | tokens/problem [95% CI] | samples |")
            lines.append("|---|---|---:|---|---|---:|")
            for r in rows:
                star = " *" if r.pareto else ""
                lines.append(
                    f"| {r.label}{star} | {_fmt_params(r.params)} | {r.budget} | "
                    f"{100 * r.accuracy:.2f} [{100 * r.acc_ci_low:.2f}, {100 * r.acc_ci_high:.2f}] | "
                    f"{_fmt_num(r.tokens)} [{_fmt_num(r.tok_ci_low)}, {_fmt_num(r.tok_ci_high)}] | "
                    f"{r.samples:.2f} |"
                )
            lines.append("")
        if any(r.pareto for r in self.rows):
            lines.append("`*` = on the accuracy-vs-tokens Pareto frontier of its split (oracle excluded).")
        text = "\n".join(lines).rstrip() + "\n"
        if path is not None:
            _write_text(path, text)
        return text


def pareto_frontier(rows: list[EvalRow]) -> list[EvalRow]:
    """The rows not dominated by another row: no other row has accuracy >= and tokens <= with one strict.
    Returned in increasing tokens."""
    if not rows:
        return []
    tok = np.array([r.tokens for r in rows], dtype=float)
    acc = np.array([r.accuracy for r in rows], dtype=float)
    order = np.lexsort((-acc, tok))  # tokens ascending, accuracy descending among equal tokens
    out: list[EvalRow] = []
    best = -np.inf
    for i in order:
        if acc[i] > best:
            out.append(rows[i])
            best = acc[i]
    return out


# ---------------------------------------------------------------------------------------------- plot
def plot_accuracy_vs_tokens(report: EvalReport, path: str | Path, *, split: str | None = None,
                            title: str | None = None) -> Path:
    """Accuracy (%) vs mean tokens per problem, written as a PNG to ``path``.

    Draws the BoN (or self-consistency) curve over budgets, each other method's points joined over budgets,
    the oracle lower bound, sweep points (faint) and the Pareto frontier (dashed). ``split`` picks the rows
    (default: the held-out split if present, else all problems; sweep rows are always added faintly).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    splits = {r.split for r in report.rows}
    if split is None:
        split = SPLIT_TEST if SPLIT_TEST in splits else SPLIT_ALL
    rows = [r for r in report.rows if r.split == split]
    sweep_rows = [r for r in report.rows if r.split == SPLIT_SWEEP]
    if not rows and sweep_rows:
        rows, sweep_rows = sweep_rows, []

    fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=110)
    try:
        if sweep_rows:
            ax.scatter([r.tokens for r in sweep_rows], [100 * r.accuracy for r in sweep_rows], s=6,
                       color="0.75", label="sweep (not held-out)", zorder=1)
        by_label: dict[str, list[EvalRow]] = {}
        for r in rows:
            by_label.setdefault(r.label, []).append(r)
        for label, rs in by_label.items():
            rs = sorted(rs, key=lambda r: (r.budget, r.tokens))
            x = [r.tokens for r in rs]
            y = [100 * r.accuracy for r in rs]
            kind = rs[0].kind
            if kind == KIND_ORACLE:
                ax.plot(x, y, ls=":", marker="v", color="black", label=label, zorder=3)
            elif kind == KIND_FIXED:
                ax.plot(x, y, ls="-", marker="s", lw=2, label=label, zorder=3)
                if rs[0].method == "bon":
                    for r in rs:
                        ax.annotate(f"N={r.budget}", (r.tokens, 100 * r.accuracy), fontsize=7,
                                    textcoords="offset points", xytext=(3, -10))
            else:
                ax.plot(x, y, ls="-", marker="o", ms=4, lw=1, label=label, zorder=4)
        front = pareto_frontier([r for r in rows if r.kind != KIND_ORACLE])
        if front:
            ax.plot([r.tokens for r in front], [100 * r.accuracy for r in front], ls="--", color="red",
                    lw=1, alpha=0.7, label="Pareto frontier", zorder=2)
        ax.set_xlabel("mean tokens per problem")
        ax.set_ylabel("accuracy (%)")
        if all(r.tokens > 0 for r in rows + sweep_rows) and rows:
            tk = [r.tokens for r in rows + sweep_rows]
            if max(tk) / max(min(tk), 1e-12) > 20:
                ax.set_xscale("log")
        ax.grid(True, alpha=0.3)
        ax.set_title(title or f"accuracy vs tokens ({split})")
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------- helpers
def _fmt_params(params: dict[str, Any]) -> str:
    if not params:
        return ""
    return ", ".join(f"{k}={_fmt_val(v)}" for k, v in params.items())


def _fmt_val(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _fmt_num(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.2f}"


def _csv_cell(v: Any) -> Any:
    if isinstance(v, float):
        return repr(v)
    return v


def _jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays (recursively) to plain Python, non-finite floats to None."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _write_text(path, text: str) -> None:
    """Atomic UTF-8 write (temporary file renamed into place; see optscale.jsonio.atomic_write)."""
    from optscale.jsonio import write_text

    write_text(path, text, param="path")
