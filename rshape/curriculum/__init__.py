"""Curricula over the train pool (docs/methods.md): difficulty trackers and a curriculum prompt sampler.

The recipe section `curriculum:` (CurriculumConfig in config.py) configures

- a difficulty **tracker** (`group_pass_rate`, `ema`, `static`, `probe`) that buckets prompts into
  easy / medium / hard (trackers.py);
- the **sampler** (sampler.py), a drop-in for rshape.sampler.PromptSampler: an `order` (`random` epochs
  or `easy_to_hard`), **stages** with a data mixture each, left after fixed `steps` or when a metric
  crosses a threshold over a window (capped by `max_steps`), **retirement** of always-solved prompts,
  **upweighting** of medium prompts, and difficulty-aware **length budgets** written into
  `problem.meta["target_length"]` for the LCPO-style rewards.

With the defaults the sampler draws exactly what PromptSampler draws.

    curriculum:
      tracker: {kind: ema, alpha: 0.3, prior: 0.5, min_visits: 2}
      stages:
        - {name: short, mixture_by: label, mixture: {1: 1.0, 2: 1.0}, until: {metric: accuracy, above: 0.8, window: 5},
           max_steps: 200}
        - {name: all}
      retire: {enabled: true, threshold: 1.0, min_visits: 1}
      medium_weight: 2.0
      budgets: {easy: 48, medium: 64, hard: 96}

The package itself imports nothing: the configuration (`rshape.curriculum.config`) is torch-free and is what recipe
validation reads; the sampler and trackers (`rshape.curriculum.sampler`, `rshape.curriculum.trackers`) import torch.
"""
