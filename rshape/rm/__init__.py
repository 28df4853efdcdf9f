"""Reward models: `rshape train-rm` and `rshape eval-rm` (docs/methods.md), served to `rl` by rshape.rewards.model (§4).

    data.py       preference pairs / scored examples from JSONL, `datasets` files or the built-in tiny set
    modeling.py   sequence-classification backbones (decoder or encoder, LoRA, 4-bit), export and loading
    losses.py     Bradley-Terry (margin, centring), ties, regression / multi-attribute
    metrics.py    pairwise accuracy, length bias, calibration, best-of-N — pure functions of scores
    evaluate.py   scoring an eval set with a model and building the JSON report and table
    train.py      the training loop, ensembles, export
    recipe.py     the `train-rm` recipe schema
"""
