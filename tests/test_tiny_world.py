"""The tiny addition world: traces, splits, tokenizer, verifier and the shipped warm-start policy."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from rshape.tasks.arithmetic import (  # noqa: E402
    GRADED_TRACE_MODES,
    TRACE_MODES,
    addition_task,
    column_steps,
    make_problem,
    make_prompt,
    make_trace,
    sample_pairs,
    short_step,
    verify_integer_answer,
)
from rshape.tasks.tokenizer import TAG_TOKENS, build_char_tokenizer  # noqa: E402
from rshape.tasks.warmstart import (  # noqa: E402
    abbreviated_columns,
    build_warmstart,
    classify_trace,
    forced_prefix,
    format_table,
    measure_policy,
    normalise_mixes,
)
from rshape.tasks.worlds import ASSET_DIR  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    """The tiny model is overhead-bound: one torch thread is as fast and immune to oversubscription."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class FixedRandom:
    """Stands in for random.Random: random() returns the given values in turn."""

    def __init__(self, values):
        self.values = iter(values)

    def random(self):
        return next(self.values)


class FixedRng:
    """Stands in for random.Random to pick a given malformed kind."""

    def __init__(self, k):
        self.k = k

    def randrange(self, n):
        return self.k


# ------------------------------------------------------------------ traces


def test_column_steps():
    assert column_steps(58, 67) == ["8+7+0=15", "5+6+1=12"]
    assert column_steps(12, 34) == ["2+4+0=6", "1+3+0=4"]
    assert column_steps(999, 1) == ["9+1+0=10", "9+0+1=10", "9+0+1=10"]
    assert column_steps(0, 0) == ["0+0+0=0"]
    assert column_steps(5, 8) == ["5+8+0=13"]


def test_make_trace_every_mode():
    steps = "2+4+0=6\n1+3+0=4\n"
    assert make_prompt(12, 34) == "12+34=?\n"
    assert make_trace(12, 34, "full") == f"<think>{steps}</think><answer>46</answer>"
    assert make_trace(12, 34, "overthink") == f"<think>{steps}check:\n{steps}</think><answer>46</answer>"
    assert make_trace(12, 34, "direct") == "<think></think><answer>46</answer>"
    assert make_trace(12, 34, "malformed", FixedRng(0)) == f"<think>{steps}</think>46"
    assert make_trace(12, 34, "malformed", FixedRng(1)) == "<answer>46</answer>"
    assert make_trace(12, 34, "malformed", FixedRng(2)) == f"<think>{steps}<answer>46</answer>"
    assert make_trace(58, 67, "full") == "<think>8+7+0=15\n5+6+1=12\n</think><answer>125</answer>"
    with pytest.raises(ValueError):
        make_trace(1, 2, "verbose")


def test_graded_traces():
    full = "5+0+0=5\n4+9+0=13\n3+8+1=12\n2+7+1=10\n1+6+1=8\n"  # 12345 + 67890 = 80235
    assert make_trace(12345, 67890, "full") == f"<think>{full}</think><answer>80235</answer>"
    short = "5\n13\n12\n10\n8\n"
    assert short_step("4+9+0=13") == "13" and short_step("5+0+0=5") == "5"
    assert make_trace(12345, 67890, "short") == f"<think>{short}</think><answer>80235</answer>"
    assert make_trace(12345, 67890, "overthink_short") == f"<think>{short}check:\n{short}</think><answer>80235</answer>"
    # mixed: each column written or abbreviated by the rng; the check pass repeats the same lines
    mixed = make_trace(12345, 67890, "mixed", FixedRandom([0.1, 0.9, 0.9, 0.2, 0.7]))
    assert mixed == "<think>5\n4+9+0=13\n3+8+1=12\n10\n1+6+1=8\n</think><answer>80235</answer>"
    assert make_trace(12345, 67890, "mixed") == make_trace(12345, 67890, "mixed")  # seeded by the problem
    # partial: the first two columns written out, the rest abbreviated — on two digits it is the full trace
    assert make_trace(12345, 67890, "partial") == "<think>5+0+0=5\n4+9+0=13\n12\n10\n8\n</think><answer>80235</answer>"
    assert make_trace(12, 67, "partial") == make_trace(12, 67, "full")
    assert abbreviated_columns(make_trace(12345, 67890, "overthink_partial")) == 3
    assert set(TRACE_MODES) < set(GRADED_TRACE_MODES)
    for mode in GRADED_TRACE_MODES:
        if mode not in ("malformed", "mixed", "overthink_mixed"):
            assert classify_trace(make_trace(12345, 67890, mode)) == mode
    assert classify_trace(mixed) == "mixed" and abbreviated_columns(mixed) == 2
    overthink_mixed = make_trace(12345, 67890, "overthink_mixed", FixedRandom([0.1, 0.9, 0.9, 0.9, 0.9]))
    assert classify_trace(overthink_mixed) == "overthink_mixed"
    assert abbreviated_columns(make_trace(12345, 67890, "overthink_short")) == 5  # the first pass only
    assert abbreviated_columns(make_trace(12345, 67890, "overthink")) == 0
    assert abbreviated_columns("<think></think><answer>1</answer>") == 0


def test_forced_prefix():
    p = make_problem(5867, 1234)
    assert forced_prefix(p, "full") == "<think>7+"
    assert forced_prefix(p, "direct") == "<think></think>"
    assert make_trace(5867, 1234, "full").startswith(forced_prefix(p, "full"))
    with pytest.raises(ValueError):
        forced_prefix(p, "short")


def test_classify_trace_matches_make_trace():
    for mode in ("full", "overthink", "direct"):
        assert classify_trace(make_trace(58, 67, mode)) == mode
    for k in range(3):
        assert classify_trace(make_trace(58, 67, "malformed", FixedRng(k))) == "malformed"
    assert classify_trace("") == "malformed"
    assert classify_trace("<think>8+7+0=15\n</think><answer>15</answer>junk") == "malformed"


def test_verify_integer_answer():
    p = make_problem(12, 34)
    assert p.answer == "46" and p.difficulty == 2
    assert verify_integer_answer(make_trace(12, 34, "full"), p)
    assert verify_integer_answer("<answer> 4 6 </answer>", p)
    assert not verify_integer_answer("<think></think><answer>47</answer>", p)
    assert not verify_integer_answer("<think>2+4+0=6\n</think>46", p)  # missing tag
    assert not verify_integer_answer("<answer>46", p)  # unclosed tag
    assert verify_integer_answer("<answer>12</answer><answer>46</answer>", p)  # the last tag counts
    assert not verify_integer_answer("<answer>46</answer><answer>12</answer>", p)


# ------------------------------------------------------------------ splits


def test_train_eval_splits_disjoint():
    task = addition_task(train_per_difficulty=500, eval_per_difficulty=50)
    train = {p.prompt for p in task.train}
    evals = {p.prompt for p in task.eval}
    assert train and evals and not train & evals
    assert task.difficulties() == [1, 2, 3, 4]
    # one-digit space is enumerated: the two splits partition the 100 pairs
    tr, ev = sample_pairs(1, 1000, "train", 0, 0.2), sample_pairs(1, 1000, "eval", 0, 0.2)
    assert len(tr) + len(ev) == 100 and not set(tr) & set(ev)
    # the split of a pair does not depend on the seed
    assert not set(sample_pairs(3, 300, "train", 1, 0.2)) & set(sample_pairs(3, 300, "eval", 2, 0.2))


def test_eval_split_does_not_depend_on_the_training_seed():
    a = addition_task((2, 3), train_per_difficulty=100, eval_per_difficulty=250, seed=0)
    b = addition_task((2, 3), train_per_difficulty=100, eval_per_difficulty=250, seed=1)
    assert [p.id for p in a.eval] == [p.id for p in b.eval] and len(a.eval) == 500
    assert [p.id for p in a.train] != [p.id for p in b.train]  # the training draw still follows the seed
    c = addition_task((2, 3), train_per_difficulty=100, eval_per_difficulty=250, seed=0, eval_seed=1)
    assert [p.id for p in c.eval] != [p.id for p in a.eval]
    assert not {p.id for p in c.eval} & {p.id for p in b.train}


# ------------------------------------------------------------------ tokenizer


def test_tokenizer_round_trip_and_lengths():
    tok = build_char_tokenizer()
    assert (tok.pad_token_id, tok.eos_token_id, tok.padding_side) == (0, 1, "left")
    for tag in TAG_TOKENS:
        assert len(tok(tag, add_special_tokens=False)["input_ids"]) == 1
    def n_tokens(s):
        return len(tok(s, add_special_tokens=False)["input_ids"])

    assert n_tokens(make_prompt(12, 34)) == 8
    # <think> + 2 steps of 8 chars + </think> + <answer> + "46" + </answer>
    assert n_tokens(make_trace(12, 34, "full")) == 1 + 16 + 1 + 1 + 2 + 1 == 22
    assert n_tokens(make_trace(12, 34, "overthink")) == 22 + len("check:\n") + 16 == 45
    assert n_tokens(make_trace(12, 34, "direct")) == 6
    for mode in TRACE_MODES:
        text = make_prompt(58, 67) + make_trace(58, 67, mode)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == text
    ids = tok("1+1=?\n<eos>", add_special_tokens=False)["input_ids"]
    assert ids[-1] == 1 and tok.decode(ids, skip_special_tokens=True) == "1+1=?\n"
    batch = tok(["1+1=?\n", "12+34=?\n"], padding=True, add_special_tokens=False)
    assert batch["input_ids"][0][:2] == [0, 0] and batch["attention_mask"][0][:2] == [0, 0]


# ------------------------------------------------------------------ warm start


def _greedy(model, tok, prompts, max_new_tokens=128):
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def test_shipped_checkpoint_answers():
    assert (ASSET_DIR / "model.safetensors").exists()
    tok = AutoTokenizer.from_pretrained(ASSET_DIR)
    model = AutoModelForCausalLM.from_pretrained(ASSET_DIR).eval()
    assert tok.eos_token_id == 1 and tok.pad_token_id == 0
    problems = [make_problem(12, 34), make_problem(58, 67), make_problem(3, 4)]
    outs = _greedy(model, tok, [p.prompt for p in problems])
    for text, p in zip(outs, problems, strict=True):
        assert verify_integer_answer(text, p), (p.prompt, text)
        assert classify_trace(text) in ("overthink", "full")
    assert outs[0] == make_trace(12, 34, "overthink")  # greedy is the redundant mode
    info = json.loads((ASSET_DIR / "warmstart.json").read_text())
    assert info["stats"]["greedy"]["all"]["accuracy"] >= 0.9
    assert sum(p.numel() for p in model.parameters()) == info["n_parameters"]


def test_build_warmstart_smoke(tmp_path):
    kwargs = dict(seed=3, steps=4, batch_size=8, measure=False, verbose=False)
    info = build_warmstart(tmp_path / "a", **kwargs)
    assert info["params"]["steps"] == 4 and info["n_parameters"] > 100_000
    for name in ("config.json", "model.safetensors", "tokenizer.json", "warmstart.json"):
        assert (tmp_path / "a" / name).exists(), name
    tok = AutoTokenizer.from_pretrained(tmp_path / "a")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "a").eval()
    assert len(_greedy(model, tok, ["1+2=?\n", "12+34=?\n"], max_new_tokens=4)) == 2
    # deterministic for a seed
    build_warmstart(tmp_path / "b", **kwargs)
    model_b = AutoModelForCausalLM.from_pretrained(tmp_path / "b")
    for (n, p), (_, q) in zip(model.named_parameters(), model_b.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    # measurement runs and reports every mode per difficulty
    task = addition_task((1, 2), train_per_difficulty=0, eval_per_difficulty=2)
    stats = measure_policy(model, tok, task, samples_per_prompt=2, min_samples_per_difficulty=0,
                           max_new_tokens=8)
    assert set(stats["greedy"]) == {"1", "2", "all"}
    assert set(stats["sampled"]["1"]) == set(TRACE_MODES)
    assert abs(sum(m["fraction"] for m in stats["sampled"]["all"].values()) - 1) < 1e-9
    assert format_table(stats).count("\n") == 4


def test_trace_mixture_per_difficulty():
    import random

    from rshape.tasks.warmstart import _sft_examples

    one = {"full": 3.0, "direct": 1.0}
    assert normalise_mixes(one, (2, 3)) == {2: {"full": 0.75, "direct": 0.25}, 3: {"full": 0.75, "direct": 0.25}}
    per = normalise_mixes({"2": {"direct": 2.0}, "3": {"full": 1.0, "short": 1.0}}, (2, 3))  # JSON keys are strings
    assert per == {2: {"direct": 1.0}, 3: {"full": 0.5, "short": 0.5}}
    with pytest.raises(ValueError, match=r"no mixture for difficulties \[3\]"):
        normalise_mixes({2: {"full": 1.0}}, (2, 3))
    with pytest.raises(ValueError, match="unknown trace modes"):
        normalise_mixes({2: {"fulll": 1.0}, 3: {"full": 1.0}}, (2, 3))
    # each difficulty's examples follow its own mixture: 2 digits only direct, 3 digits never direct
    tok = build_char_tokenizer()
    pools = {d: sample_pairs(d, 50, "train", 0, 0.2) for d in (2, 3)}
    groups = _sft_examples(pools, (2, 3), (1.0, 1.0), per, 64, random.Random(0), tok)
    texts = {d: [tok.decode([t for t, lab in zip(ids, labels) if lab != -100], skip_special_tokens=True)
                 for ids, labels in g] for d, g in groups.items()}
    assert texts[2] and all(classify_trace(t) == "direct" for t in texts[2])
    assert texts[3] and {classify_trace(t) for t in texts[3]} == {"full", "short"}
