"""The README's table of recipe keys, from the schema (its docstrings are the source).

    python scripts/recipe_keys.py           print the table
    python scripts/recipe_keys.py --write   replace the table between the markers in README.md
"""

import sys
from pathlib import Path

from rshape.recipe import describe_keys

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- keys:start -->", "<!-- keys:end -->"


def table() -> str:
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for key, default, doc in describe_keys():
        doc = " ".join(doc.split())
        rows.append(f"| `{key}` | `{default}` | {doc} |" if default else f"| `{key}` | | {doc} |")
    return "\n".join(rows)


def main() -> None:
    if "--write" in sys.argv:
        text = README.read_text()
        a, b = text.index(START) + len(START), text.index(END)
        README.write_text(text[:a] + "\n" + table() + "\n" + text[b:])
    else:
        print(table())


if __name__ == "__main__":
    main()
