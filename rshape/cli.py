"""The `rshape` command: load → validate → dispatch. User mistakes exit 2 with one line each."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Reward-shaping experiments for RL fine-tuning of language models.")


@app.callback()
def _root() -> None:
    """Reward-shaping experiments for RL fine-tuning of language models."""


def fail(lines: list[str] | str, code: int = 2) -> None:
    for line in [lines] if isinstance(lines, str) else lines:
        print(f"error: {line}", file=sys.stderr)
    raise typer.Exit(code)


@app.command()
def rl(
    recipe: Annotated[str, typer.Argument(help="Recipe YAML file.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="Dotted overrides, e.g. train.steps=50.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in output_dir from its latest checkpoint.")] = False,
) -> None:
    """Train a policy with a GRPO-family algorithm as RECIPE says."""
    from rshape.recipe import RecipeError, load_recipe
    from rshape.rewards import RewardRuntimeError
    from rshape.runs import RunDirError
    from rshape.tasks import DataError

    try:
        cfg = load_recipe(recipe, overrides or [])
    except RecipeError as exc:
        fail(exc.lines)
    from rich.console import Console

    from rshape.report import print_summary
    from rshape.rl.loop import train

    console = Console(stderr=True)
    try:
        summary = train(cfg, resume=resume, console=console)
    except (RunDirError, DataError, RewardRuntimeError) as exc:
        fail(str(exc))
    print_summary(summary, Console())


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":
    main()
