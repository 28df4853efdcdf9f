"""The built-in worlds: each one's warm-start recipe and where its policy is shipped (`builtin:tiny-<world>`).

A table without heavy imports, so that recipes can be validated before torch or transformers load; the builds
are rshape.tasks.warmstart's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODE_MIX: dict[str, float] = {"overthink": 0.55, "full": 0.27, "direct": 0.11, "malformed": 0.07}
DEFAULT_DIFFICULTIES = (1, 2, 3, 4)
# 1-digit problems are cheap and the only ones where a direct answer can be learnt (by heart)
DEFAULT_DIFFICULTY_WEIGHTS = (2.0, 1.5, 2.0, 2.5)
ASSETS = Path(__file__).resolve().parent.parent / "assets"
ASSET_DIR = ASSETS / "tiny-addition"


@dataclass(frozen=True)
class World:
    """A built-in world's warm-start recipe: its trace mixture, digit counts and SFT length; its policy is
    `builtin:tiny-<key>` in `WORLDS`, shipped in `out_dir`."""

    out_dir: Path
    mode_mix: dict  # {mode: weight}, or {difficulty: {mode: weight}} for a mixture per difficulty
    difficulties: tuple[int, ...]
    difficulty_weights: tuple[float, ...]
    steps: int
    eval_per_difficulty: int
    max_new_tokens: int = 128


WORLDS: dict[str, World] = {
    # the original world: overthink / full / direct / malformed on 1-4 digits
    "addition": World(ASSET_DIR, DEFAULT_MODE_MIX, DEFAULT_DIFFICULTIES, DEFAULT_DIFFICULTY_WEIGHTS,
                      steps=900, eval_per_difficulty=50),
    # the graded world: abbreviated column steps (short / mixed traces) on 2-5 digits
    "graded": World(ASSETS / "tiny-graded",
                    {"overthink_partial": 0.24, "partial": 0.08, "overthink": 0.12, "full": 0.10,
                     "overthink_mixed": 0.10, "mixed": 0.08, "overthink_short": 0.06, "short": 0.06,
                     "direct": 0.09, "malformed": 0.07},
                    (2, 3, 4, 5), (1.0, 1.0, 1.2, 1.4), steps=2400, eval_per_difficulty=250),
}

BUILTIN_WORLDS = {f"builtin:tiny-{world}": world for world in WORLDS}  # model name → world
BUILTIN_MODELS = {name: WORLDS[world].out_dir for name, world in BUILTIN_WORLDS.items()}  # model name → directory
