"""The README's generated tables: recipe keys (from the schema's docstrings), reward components and advantage
estimators (from each registered class's or function's `summary`, `source` and parameters).

    python scripts/readme_tables.py           print the tables
    python scripts/readme_tables.py --write   replace each table between its markers in README.md
    python scripts/readme_tables.py --check   exit 1 when README.md differs from the code
"""

import inspect
import sys
import typing
from pathlib import Path

from rshape.recipe import describe_keys
from rshape.rewards import REWARDS
from rshape.rl.advantages import ADVANTAGES

README = Path(__file__).resolve().parents[1] / "README.md"


def _value(v: object) -> str:
    if v == "":
        return '""'
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, float) and v == int(v) and abs(v) < 1e6:
        return str(int(v))
    return str(v).replace("\n", "\\n")


def _param(name: str, annotation: object, default: object) -> str:
    """`name (default)`, with the other choices of a Literal (`name (a | b | c)`)."""
    choices = [a for a in typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal]
    if choices and default in choices:
        choices = [default] + [c for c in choices if c != default]
        return f"`{name}` ({' | '.join(_value(c) for c in choices)})"
    return f"`{name}`" if default is None else f"`{name}` ({_value(default)})"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def keys_table() -> str:
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for key, default, doc in describe_keys():
        doc = " ".join(doc.split())
        rows.append(f"| `{key}` | `{default}` | {doc} |" if default else f"| `{key}` | | {doc} |")
    return "\n".join(rows)


def rewards_table() -> str:
    rows = ["| type | meaning | keys (defaults) | source |", "|---|---|---|---|"]
    for name in REWARDS.names():
        cls = REWARDS.get(name)
        params = [_param(f, info.annotation, info.get_default(call_default_factory=True))
                  for f, info in cls.model_fields.items()]
        rows.append(f"| `{name}` | {_cell(cls.summary)} | {_cell(', '.join(params)) or '—'} | {_cell(cls.source)} |")
    return "\n".join(rows)


def estimators_table() -> str:
    rows = ["| estimator | meaning | params (defaults) | source |", "|---|---|---|---|"]
    for name in ADVANTAGES.names():
        fn = ADVANTAGES.get(name)
        params = [_param(p.name, p.annotation, p.default) for p in inspect.signature(fn).parameters.values()
                  if p.kind is p.KEYWORD_ONLY]
        rows.append(f"| `{name}` | {_cell(fn.summary)} | {_cell(', '.join(params)) or '—'} | {_cell(fn.source)} |")
    return "\n".join(rows)


TABLES = {"keys": keys_table, "rewards": rewards_table, "estimators": estimators_table}


def rendered(text: str) -> str:
    """README text with every generated table replaced between `<!-- NAME:start -->` and `<!-- NAME:end -->`."""
    for name, make in TABLES.items():
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        a, b = text.index(start) + len(start), text.index(end)
        text = text[:a] + "\n" + make() + "\n" + text[b:]
    return text


def main() -> None:
    if "--write" in sys.argv:
        README.write_text(rendered(README.read_text()))
    elif "--check" in sys.argv:
        if rendered(README.read_text()) != README.read_text():
            sys.exit("README.md's generated tables differ from the code: run `make readme-tables`")
    else:
        print("\n\n".join(make() for make in TABLES.values()))


if __name__ == "__main__":
    main()
