"""docs/reproductions.md from the verdicts found under a repro directory (numbers come from the runs only)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from rshape.repro.claims import CLAIMS

SHOWN_FIGURES = ("pareto.png", "curves.png", "difficulty.png", "length_budget.png")


def _effect(t: dict[str, Any]) -> str:
    e = t["effect"]
    if e["n"] == 0:
        return "no data"
    scale, fmt = (100, "{:+.1f}") if t["unit"] == "accuracy" else (1, "{:+.1f}")
    unit = " pts" if t["unit"] == "accuracy" else f" {t['unit']}"
    ci = f" [{fmt.format(scale * e['low'])}, {fmt.format(scale * e['high'])}]" if e["n"] > 1 else " (one seed)"
    return fmt.format(scale * e["mean"]) + unit + ci


def _margin(t: dict[str, Any]) -> str:
    m = t["margin"] * (100 if t["unit"] == "accuracy" else 1)
    unit = " pts" if t["unit"] == "accuracy" else f" {t['unit']}"
    return {"≈": f"within ±{m:.1f}{unit}", ">": f"> 0 (±{m:.1f}{unit} = none)",
            "<": f"< 0 (±{m:.1f}{unit} = none)"}[t["direction"]]


def claim_section(rec: dict[str, Any], fig_dir: Path, doc_dir: Path, sweep_dir: Path) -> list[str]:
    """The markdown of one claim: statement, command, what ran, tests, verdict, table, figures, wall time."""
    methods = ", ".join(f"`{m}` ({len(s)} seeds)" for m, s in rec["methods"].items())
    out = [f"## {rec['claim']}: {rec['title']}", "",
           f"**Paper.** {rec['paper']}. {rec['statement']}", "",
           f"**Command.** `make repro-{rec['claim']}` (= `{rec['command']}`)", "",
           f"**What ran.** {methods}; {rec['steps']} RL steps each on the graded tiny world "
           f"(`recipes/repro/{rec['claim']}.yaml`); wall time {rec['wall_seconds'] / 60:.1f} min on 2 CPU cores.", "",
           f"**Settings.** {rec['transfer']}", "",
           "| test | expected | effect, mean [95% CI over seeds] | verdict |", "|---|---|---|---|"]
    for t in rec["tests"]:
        out.append(f"| {t['statement']} | {_margin(t)} | {_effect(t)} | {t['verdict']} |")
    out += ["", f"**Verdict: {rec['verdict']}**", ""]
    reading = doc_dir / "readings" / f"{rec['claim']}.md"
    if reading.is_file():  # an interpretation written by hand for the run shown here
        out += [f"**Reading** ({reading.relative_to(doc_dir).as_posix()}, written for the run shown). "
                + reading.read_text().strip(), ""]
    table = [line for line in rec.get("results_table", "").splitlines() if line.startswith("|")]
    if table:
        out += ["Final greedy held-out evaluation per method (mean ± sample std over seeds; ★ = highest accuracy):",
                "", *table, ""]
    for name in SHOWN_FIGURES:
        src = sweep_dir / "figures" / name
        if src.is_file():
            dst = fig_dir / rec["claim"] / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            out += [f"![{rec['claim']} {name[:-4]}]({dst.relative_to(doc_dir).as_posix()})", ""]
    return out


def slug(title: str) -> str:
    """The anchor GitHub gives a markdown heading: lower case, punctuation dropped, spaces → hyphens."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def write_doc(root: str | Path, doc: str | Path) -> Path:
    """Write `doc` from `root/<claim>/verdict.json` for every claim; figures go to `doc`'s folder/figures/repro/."""
    root, doc = Path(root), Path(doc)
    doc.parent.mkdir(parents=True, exist_ok=True)
    fig_dir = doc.parent / "figures" / "repro"
    recs = {}
    for c in CLAIMS:
        f = root / c.name / "verdict.json"
        if f.is_file():
            recs[c.name] = json.loads(f.read_text())
    lines = ["# Reproductions", "",
             "Published claims about reward shaping, each re-tested on rshape's graded tiny world (the built-in "
             "`builtin:tiny-graded` policy on 2-5 digit addition, where abbreviating reasoning steps costs accuracy "
             "more on longer numbers). Every number below was written by `make repro-<name>`, which runs the "
             "claim's sweep (methods × seeds), the results table, the figures and the verdict; `make repro-all` "
             "runs them all and rewrites this page. A claim that does not reproduce here is a finding about this "
             "world, not a statement about the paper's setting.", "",
             "**Verdict rule.** Each test's effect is a paired difference over seeds (same seed = same training "
             "prompts and sampling noise; every run is scored on the same 1,000-problem held-out split) with a "
             "Student-t 95% interval. REPRODUCED: the interval lies on the claimed side (for a similarity, inside "
             "the stated band). NOT REPRODUCED: it lies on the other side, or inside the no-effect margin. "
             "Otherwise INCONCLUSIVE. A claim reproduces when all its tests do.", "",
             "| claim | verdict | wall time |", "|---|---|---|"]
    for c in CLAIMS:
        r = recs.get(c.name)
        lines.append(f"| [{c.name}](#{slug(f'{c.name}: {c.title}')}) — {c.title} | "
                     + (f"{r['verdict']}{' (smoke)' if r['smoke'] else ''} | {r['wall_seconds'] / 60:.1f} min |"
                        if r else "not run yet | |"))
    lines.append("")
    for c in CLAIMS:
        if c.name in recs:
            lines += claim_section(recs[c.name], fig_dir, doc.parent, root / c.name)
        else:
            lines += [f"## {c.name}: {c.title}", "", f"**Paper.** {c.paper}. {c.statement}", "",
                      f"Not run yet: `make repro-{c.name}`.", ""]
    doc.write_text("\n".join(lines).rstrip() + "\n")
    return doc
