"""User reward functions for the tests, written exactly as TRL users write them."""


def length_bonus(prompts, completions, completion_ids, **kwargs):
    return [len(ids) / 10 for ids in completion_ids]


def answer_in_text(prompts, completions, answer, scale=1.0, **kwargs):
    return [scale * float(a in c) if a != "skip" else None for c, a in zip(completions, answer)]


def raises(prompts, completions, **kwargs):
    raise ValueError("boom")


def returns_nan(prompts, completions, **kwargs):
    return [float("nan")] * len(completions)


def wrong_count(prompts, completions, **kwargs):
    return [1.0]


def sees_columns(prompts, completions, completion_ids, answer, difficulty, trainer_state, **kwargs):
    return [float(d) + trainer_state["global_step"] for d in difficulty]


def constant(prompts, completions, **kwargs):
    return [1.0] * len(completions)


def step_lengths(prompt, steps, problem=None):
    """A process scorer: each step scored by its length in characters."""
    return [float(len(s)) for s in steps]


def too_few_step_scores(prompt, steps, problem=None):
    return [1.0] * (len(steps) - 1)


def returns_inf(prompts, completions, **kwargs):
    return [float("inf")] + [0.0] * (len(completions) - 1)


def returns_text(prompts, completions, **kwargs):
    return ["0.5"] * len(completions)


def calls_exit(prompts, completions, **kwargs):
    import sys

    sys.exit(3)
