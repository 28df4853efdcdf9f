"""Measure a built-in world's warm-started policy and print its achievable front (the README's tables).

    python scripts/world_front.py                      # builtin:tiny-graded on its 1,000-problem eval split
    python scripts/world_front.py --world addition     # builtin:tiny-addition
    python scripts/world_front.py --model DIR --world graded --json out.json

Greedy accuracy / tokens per digit count, the same after a forced prefix (a written first step, or no steps),
and ≥ 400 samples per digit count at temperature 1 classified by trace kind and by number of abbreviated steps.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rshape.models import BUILTIN_WORLDS, resolve_model_path
from rshape.tasks.arithmetic import addition_task
from rshape.tasks.warmstart import (
    format_abbreviated,
    format_front,
    format_kinds,
    format_table,
    measure_options,
    measure_policy,
)
from rshape.tasks.worlds import WORLDS


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", choices=sorted(WORLDS), default="graded")
    ap.add_argument("--model", default=None, help="model directory (default: the world's built-in policy)")
    ap.add_argument("--samples", type=int, default=8, help="samples per prompt (at least 400 per digit count)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the measurements here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    builtin = {w: name for name, w in BUILTIN_WORLDS.items()}[args.world]
    path = args.model or resolve_model_path(builtin)
    w = WORLDS[args.world]
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    task = addition_task(w.difficulties, train_per_difficulty=0, eval_per_difficulty=w.eval_per_difficulty)
    t0 = time.time()
    stats = measure_policy(model, tok, task, samples_per_prompt=args.samples, max_new_tokens=w.max_new_tokens,
                           **measure_options(args.world))
    print(f"{path}: {len(task.eval)} eval problems, measured in {time.time() - t0:.0f} s\n")
    if args.world == "addition":
        print(format_table(stats))
    else:
        print("\n\n".join([format_front(stats), format_abbreviated(stats), format_kinds(stats)]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(stats, f, indent=2)


if __name__ == "__main__":
    main()
