"""The README's result tables, generated from a run's ``report.json`` (never hand-copied).

Reads one ``report.json`` (:mod:`~tasks.evaluation.report.serialise`); writes Markdown to
stdout: AUC with its 95% CI per model and set, per-site AUCs within each set (``too few``
where a site lacks the cases), drift flags, and the features each model kept with the
LASSO fallback, and every model's AUCs under each scanner harmonisation option. Usage::

    python -m tasks.evaluation.report.readme store/reports/<run_id>/report.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tasks.evaluation.results import EVALUATION_SETS

LABELS = {
    "training": "training",
    "training_new": "training (new)",
    "validation": "external validation",
    "testing": "testing",
}


def _auc(m: dict[str, Any] | None) -> str:
    if not m or m.get("auc") is None:
        return "—"
    lo, hi = m.get("auc_ci") or (None, None)
    ci = f" ({lo:.3f}–{hi:.3f})" if lo is not None and hi is not None else ""
    return f"{m['auc']:.3f}{ci}"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def readme_tables(report: dict[str, Any]) -> str:
    """The Markdown of every README result table for one report."""
    models = report["models"]
    sets = [s for s in EVALUATION_SETS if any(s in by_set for by_set in models.values())]
    parts = [f"Run `{report['run_id']}` ({report['kind']}, {report['created_at']}).", ""]
    parts.append(
        _table(
            ["model", *(f"AUC {LABELS[s]} (n)" for s in sets)],
            [
                [name, *(f"{_auc(by_set.get(s))} ({by_set.get(s, {}).get('n', 0)})" for s in sets)]
                for name, by_set in models.items()
            ],
        )
    )
    rows = []
    for split, by_site in report.get("per_site", {}).items():
        for site, by_model in sorted(by_site.items()):
            for name, m in by_model.items():
                auc = _auc(m) if m["enough"] else "too few"
                rows.append([LABELS.get(split, split), site, name, str(m["n"]), auc])
    if rows:
        parts += ["", _table(["set", "site", "model", "n", "AUC (95% CI)"], rows)]
    rows = [
        [LABELS.get(split, split), site, str(d["n"]), f"{d['features_flagged']} of {d['features']}"]
        for split, by_site in report.get("drift", {}).items()
        for site, d in sorted(by_site.items())
    ]
    if rows:
        parts += ["", _table(["set", "site", "n", "inputs drifted (permutation null)"], rows)]
    fits = report.get("model_fits", {})
    rows = [
        [
            name,
            str(len(feats)),
            "yes" if (fits.get(name, {}).get("lasso") or {}).get("fallback") else "no",
            fits.get(name, {}).get("penalty", "—"),
        ]
        for name, feats in report["selected_features"].items()
    ]
    parts += ["", _table(["model", "features kept", "LASSO 1-SE fallback", "final penalty"], rows)]
    parts += _harmonisation(report.get("harmonisation") or {}, sets)
    return "\n".join(parts) + "\n"


def _harmonisation(h: dict[str, Any], sets: list[str]) -> list[str]:
    """Every model's AUC per set under each harmonisation option, the chosen one marked."""
    if not h.get("options"):
        return []
    rows = [
        [
            f"**{option}** (chosen)" if option == h["chosen"] else option,
            name,
            *(_auc(by_set.get(s)) for s in sets),
        ]
        for option, by_model in h["options"].items()
        for name, by_set in by_model.items()
    ]
    headers = ["harmonisation", "model", *(f"AUC {LABELS[s]}" for s in sets)]
    return ["", f"Harmonisation chosen: {h['chosen']} ({h['rule']}).", "", _table(headers, rows)]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    sys.stdout.write(readme_tables(json.loads(Path(args[0]).read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
