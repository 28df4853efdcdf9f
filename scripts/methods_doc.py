"""docs/methods.md: the methods reference, written from the code so that it cannot drift from it.

Every reward component, advantage estimator, loss aggregation and curriculum tracker gets a section: its formula
and provenance (the docstring: formula, parameters, the paper, the reference implementation it was compared with
and every deliberate difference), its parameters with defaults and meaning (the fields), and its one-line summary.
The hand-written conventions and open differences live in docs/methods_intro.md and are put first.

    python scripts/methods_doc.py           print the document
    python scripts/methods_doc.py --write   write docs/methods.md
    python scripts/methods_doc.py --check   exit 1 when docs/methods.md differs from the code
"""

import inspect
import sys
import typing
from pathlib import Path

from rshape.curriculum.config import EmaTracker, GroupPassRateTracker, ProbeTracker, StaticTracker
from rshape.rewards import REWARDS
from rshape.rewards.combine import Constraint, apply_multiplier
from rshape.rl.advantages import ADVANTAGES, normalize_then_sum, process_token_advantages
from rshape.rl.loss import clipped_policy_loss

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "methods.md"
INTRO = ROOT / "docs" / "methods_intro.md"


def _default(v: object) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v).lower()
    if v == "":
        return '""'
    return f"`{v!r}`" if isinstance(v, str) else f"`{v}`"


def _doc(obj: object) -> str:
    return inspect.cleandoc(obj.__doc__ or "").strip()


def _fields_table(model: type) -> list[str]:
    rows = ["| parameter | default | meaning |", "|---|---|---|"]
    for name, info in model.model_fields.items():
        choices = typing.get_args(info.annotation) if typing.get_origin(info.annotation) is typing.Literal else ()
        meaning = " ".join((info.description or "").split()).replace("|", "\\|")
        if choices:
            meaning = f"one of {', '.join(map(str, choices))}. " + meaning
        rows.append(f"| `{name}` | {_default(info.get_default(call_default_factory=True))} | {meaning} |")
    return rows if len(rows) > 2 else []


def _section(title: str, summary: str, source: str, body: str, table: list[str]) -> list[str]:
    out = [f"### {title}", ""]
    if summary:
        out += [f"**In one line:** {summary}", ""]
    if source:
        out += [f"**Source:** {source}", ""]
    out += ["```text", body, "```", ""] if body else []
    return out + (table + [""] if table else [])


def document() -> str:
    lines = [INTRO.read_text().rstrip(), "", "## Reward components", ""]
    for name in REWARDS.names():
        cls = REWARDS.get(name)
        lines += _section(f"`{name}` ({cls.__module__}.{cls.__name__})", cls.summary, cls.source, _doc(cls),
                          _fields_table(cls))
    lines += ["## How rewards combine", ""]
    for title, obj in (("Lagrange constraints (`constraint:`)", Constraint), ("Multipliers (`combine: multiply`)",
                                                                              apply_multiplier)):
        lines += _section(title, "", "", _doc(obj), [])
    lines += ["## Advantage estimators", ""]
    for name in ADVANTAGES.names():
        fn = ADVANTAGES.get(name)
        params = [p for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY]
        table = (["| parameter | default |", "|---|---|"] + [f"| `{p.name}` | {_default(p.default)} |" for p in params]
                 if params else [])
        lines += _section(f"`{name}`", fn.summary, fn.source, _doc(fn), table)
    lines += ["## Routes that replace or add to the estimator", ""]
    for title, obj in (("GDPO: `reward_combine: normalize_then_sum`", normalize_then_sum),
                       ("Process rewards: `combine: per_step`", process_token_advantages)):
        lines += _section(title, "", "", _doc(obj), [])
    lines += ["## Losses", ""]
    lines += _section("`algorithm.loss_agg`, clipping, KL, entropy", "", "", _doc(clipped_policy_loss), [])
    lines += ["## Curriculum difficulty signals", ""]
    for cls in (GroupPassRateTracker, EmaTracker, StaticTracker, ProbeTracker):
        lines += _section(f"`{cls.model_fields['kind'].default}`", "", "", _doc(cls), _fields_table(cls))
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    if "--write" in sys.argv:
        DOC.write_text(document())
    elif "--check" in sys.argv:
        if not DOC.is_file() or DOC.read_text() != document():
            sys.exit("docs/methods.md differs from the code: run `make methods-doc`")
    else:
        print(document())


if __name__ == "__main__":
    main()
