"""Reward-model pieces without models: losses and metrics by hand, data errors, recipes, the `rm` reward's transforms."""

import json
import math
import pickle

import pytest
import torch

from rshape.batch import Batch
from rshape.recipe import RecipeError
from rshape.rewards.model import RewardModelReward
from rshape.rm.data import TINY_CATEGORIES, read_pairs, read_scored, tiny_preferences, tiny_reference
from rshape.rm.losses import bradley_terry_loss, regression_loss
from rshape.rm.metrics import best_of_n_curve, calibration, pearson, preference_metrics, ranks, spearman
from rshape.rm.modeling import EnsembleRM
from rshape.rm.recipe import RMDataConfig, load_rm_recipe
from rshape.tasks import DataError
from rshape.tasks.arithmetic import make_problem, verify_integer_answer
from rshape.tasks.base import Problem

# ---------------------------------------------------------------------------------------------------- losses


def test_bradley_terry_with_margin_centring_and_ties_by_hand():
    rc = torch.tensor([1.0, 0.0, 2.0])
    rr = torch.tensor([0.0, 0.0, 1.0])
    margin = torch.tensor([0.5, 0.0, 0.0])
    tie = torch.tensor([False, False, True])
    l0 = math.log(1 + math.exp(-0.5))  # −log σ(1 − 0.5) = 0.474077
    l1 = math.log(2)  # −log σ(0)
    l2 = 0.5 * math.log(1 + math.exp(-1)) + 0.5 * math.log(1 + math.exp(1))  # tie, d = 1: 0.813262
    assert l0 == pytest.approx(0.474077, abs=1e-6) and l2 == pytest.approx(0.813262, abs=1e-6)
    center = (1.0 + 0.0 + 9.0) / 3  # mean (r_c + r_r)²

    loss, _ = bradley_terry_loss(rc, rr)  # plain BT, every pair a preference
    assert loss.item() == pytest.approx((math.log(1 + math.exp(-1)) + l1 + math.log(1 + math.exp(-1))) / 3, abs=1e-6)
    loss, _ = bradley_terry_loss(rc, rr, margin, tie, center_coef=0.0, ties="half")
    assert loss.item() == pytest.approx((l0 + l1 + l2) / 3, abs=1e-6)  # 0.660162
    loss, stats = bradley_terry_loss(rc, rr, margin, tie, center_coef=0.01, ties="half")
    assert loss.item() == pytest.approx((l0 + l1 + l2) / 3 + 0.01 * center, abs=1e-6)  # 0.693495
    assert stats["loss/center"] == pytest.approx(center)
    loss, _ = bradley_terry_loss(rc, rr, margin, tie, center_coef=0.0, ties="drop")
    assert loss.item() == pytest.approx((l0 + l1) / 2, abs=1e-6)
    loss, _ = bradley_terry_loss(rc, rr, margin, tie, ties="half", tie_weight=2.0)
    assert loss.item() == pytest.approx((l0 + l1 + 2 * l2) / 3, abs=1e-6)
    # a tie is best at equal rewards (loss log 2), and its gradient pushes the two rewards together
    a = torch.tensor([1.0], requires_grad=True)
    loss, _ = bradley_terry_loss(a, torch.tensor([0.0]), tie=torch.tensor([True]))
    loss.backward()
    assert a.grad.item() == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item() - 0.5, abs=1e-6)
    loss, _ = bradley_terry_loss(torch.tensor([0.3]), torch.tensor([0.3]), tie=torch.tensor([True]))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)


def test_regression_loss_skips_unrated():
    pred = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    target = torch.tensor([[2.0, float("nan")], [1.0, -1.0]])
    loss, _ = regression_loss(pred, target)
    assert loss.item() == pytest.approx((1 + 1 + 1) / 3)


# ---------------------------------------------------------------------------------------------------- metrics


def test_preference_metrics_on_scripted_rewards():
    rc = torch.tensor([2.0, 1.0, 0.0, 3.0])
    rr = torch.tensor([1.0, 1.0, 1.0, 0.0])
    m = preference_metrics(rc, rr, [10, 20, 5, 7], [20, 10, 5, 9], ["a", "a", "b", "b"])
    assert m["accuracy"] == pytest.approx(2.5 / 4)  # equal scores count ½
    assert m["accuracy/a"] == pytest.approx(0.75) and m["accuracy/b"] == pytest.approx(0.5)
    assert m["length/accuracy_chosen_shorter"] == 1.0 and m["length/pairs_chosen_shorter"] == 2  # pairs 0 and 3
    assert m["length/accuracy_chosen_longer"] == 0.5 and m["length/pairs_chosen_longer"] == 1  # pair 1
    # ECE: confidences .731 (bin 4, twice: right once, wrong once), .5 (bin 0), .953 (bin 9, right)
    s1 = 1 / (1 + math.exp(-1))
    s3 = 1 / (1 + math.exp(-3))
    assert m["calibration/ece"] == pytest.approx(2 / 4 * abs(0.5 - s1) + 1 / 4 * abs(1 - s3), abs=1e-9)
    bins = m["calibration/bins"]
    assert [b["n"] for b in bins] == [1, 0, 0, 0, 2, 0, 0, 0, 0, 1]
    rewards = [2, 1, 0, 3, 1, 1, 1, 0]
    lengths = [10, 20, 5, 7, 20, 10, 5, 9]
    import numpy as np

    assert m["length/pearson"] == pytest.approx(float(np.corrcoef(rewards, lengths)[0, 1]), abs=1e-9)
    assert m["reward/mean"] == pytest.approx(np.mean(rewards)) and m["reward/std"] == pytest.approx(np.std(rewards))
    # ties are left out of accuracy and reported apart
    m = preference_metrics(rc, rr, [1, 1, 1, 1], [2, 2, 2, 2], ties=[False, False, False, True])
    assert m["pairs"] == 3 and m["ties"] == 1 and m["ties/mean_abs_diff"] == pytest.approx(3.0)
    assert m["accuracy"] == pytest.approx(1.5 / 3)


def test_rank_correlations_and_calibration_by_hand():
    assert ranks(torch.tensor([1.0, 2.0, 2.0, 3.0])).tolist() == [1.0, 2.5, 2.5, 4.0]
    import numpy as np

    want = float(np.corrcoef([1, 2.5, 2.5, 4], [1, 3, 2, 4])[0, 1])
    assert spearman(torch.tensor([1.0, 2.0, 2.0, 3.0]), torch.tensor([10.0, 30.0, 20.0, 40.0])) == pytest.approx(want)
    assert pearson(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 6.0])) == pytest.approx(1.0)
    assert math.isnan(pearson(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 2.0])))
    # perfectly calibrated: confidence σ(d) equal to the accuracy in its bin
    d = math.log(3)  # σ = 0.75; 3 right, 1 wrong
    ece, _ = calibration(torch.tensor([d, d, d, -d]), torch.zeros(4))
    assert ece == pytest.approx(0.0, abs=1e-6)


def test_best_of_n_curve_by_hand():
    rewards = torch.tensor([[0.1, 0.9, 0.5, 0.2], [0.3, 0.2, 0.8, 0.1]])
    correct = torch.tensor([[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    curve = best_of_n_curve(rewards, correct)
    assert [r["n"] for r in curve] == [1, 2, 4]
    assert [r["accuracy"] for r in curve] == [0.5, 1.0, 0.5]  # at n=4 the RM picks a wrong answer for prompt 2
    assert [r["mean"] for r in curve] == [0.5, 0.5, 0.25]
    assert [r["oracle"] for r in curve] == [0.5, 1.0, 1.0]


# ---------------------------------------------------------------------------------------------------- data


def test_builtin_preferences():
    train = tiny_preferences(300, "train", seed=0)
    evals = tiny_preferences(100, "eval", seed=0)
    assert len(train) == 300 and {p.category for p in train} == set(TINY_CATEGORIES)
    assert not {p.prompt for p in train} & {p.prompt for p in evals}  # held-out prompts
    for p in train:
        a, b = (int(x) for x in p.prompt.split("=")[0].split("+"))
        prob = make_problem(a, b)
        if p.tie:
            assert not verify_integer_answer(p.chosen, prob) and not verify_integer_answer(p.rejected, prob)
            assert p.chosen != p.rejected
            continue
        assert verify_integer_answer(p.chosen, prob)
        if p.category in ("correct", "correct_short"):
            assert not verify_integer_answer(p.rejected, prob)
        if p.category == "concise":
            assert len(p.chosen) < len(p.rejected)
        if p.category == "correct_short":
            assert len(p.chosen) > len(p.rejected)
        assert p.margin == TINY_CATEGORIES[p.category][1]
    assert not any(p.tie for p in tiny_preferences(200, "train", ties=False))
    prob = make_problem(58, 67)
    assert verify_integer_answer(tiny_reference(prob)[0], prob) and "8+7+0=15" in tiny_reference(prob)[0]


def _write(path, lines):
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return str(path)


GOOD = {"prompt": "1+1=?", "chosen": "2", "rejected": "3"}


@pytest.mark.parametrize("bad, message", [
    ({"prompt": "1+1=?", "chosen": "2"}, ":2: missing 'rejected'"),
    ({"prompt": "1+1=?", "rejected": "2"}, ":2: missing 'chosen'"),
    ({"prompt": "1+1=?", "chosen": "  ", "rejected": "3"}, ":2: 'chosen' is an empty string"),
    ({"prompt": "", "chosen": "2", "rejected": "3"}, ":2: 'prompt' is an empty string"),
    ({"prompt": "x", "chosen": "2", "rejected": "3", "margin": "big"}, ":2: 'margin' must be a number, got 'big'"),
    ({"prompt": "x", "chosen": "2", "rejected": "3", "tie": "maybe"}, ":2: 'tie' must be true or false"),
    ({"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
      "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "b"}]}, ":2: 'chosen' and 'rejected' "
     "have mismatched prompts"),
    ("{not json", ":2: not valid JSON"),
    ([1, 2], ":2: expected a JSON object"),
])
def test_bad_pairs_name_file_and_line(tmp_path, bad, message):
    path = _write(tmp_path / "pairs.jsonl", [GOOD, bad])
    with pytest.raises(DataError) as exc:
        read_pairs(path, RMDataConfig(train=path))
    assert str(exc.value).startswith(path + ":2") and message in str(exc.value) and "\n" not in str(exc.value)


def test_chat_pairs_and_columnar_json(tmp_path):
    conv = {"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}],
            "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "bad"}], "category": 3}
    path = _write(tmp_path / "chat.jsonl", [conv])
    (p,) = read_pairs(path, RMDataConfig(train=path))
    assert p.prompt == [{"role": "user", "content": "q"}] and p.chosen[0]["content"] == "good" and p.category == "3"
    cols = tmp_path / "cols.json"
    cols.write_text(json.dumps({"prompt": ["a", "b"], "chosen": ["x", "y"], "rejected": ["z"]}))
    with pytest.raises(DataError, match="mismatched lengths: prompt 2, chosen 2, rejected 1"):
        read_pairs(str(cols), RMDataConfig(train=str(cols)))
    cols.write_text(json.dumps({"prompt": ["a", "b"], "chosen": ["x", "y"], "rejected": ["z", "w"]}))
    assert [q.rejected for q in read_pairs(str(cols), RMDataConfig(train=str(cols)))] == ["z", "w"]
    csv = tmp_path / "pairs.csv"
    csv.write_text("prompt,chosen,rejected,margin\nq,a,b,1.5\nq,a,b,oops\n")
    with pytest.raises(DataError, match=r"pairs.csv:3: 'margin' must be a number"):
        read_pairs(str(csv), RMDataConfig(train=str(csv)))


def test_bad_scored_examples(tmp_path):
    cfg = RMDataConfig(train="x", format="scored", rating_keys=["helpful", "correct"])
    path = _write(tmp_path / "s.jsonl", [{"prompt": "p", "response": "r", "helpful": 3, "correct": 4},
                                         {"prompt": "p", "response": "r", "helpful": "good", "correct": 1}])
    with pytest.raises(DataError, match=r"s.jsonl:2: 'helpful' must be a number, got 'good'"):
        read_scored(path, cfg, 2)
    path = _write(tmp_path / "s2.jsonl", [{"prompt": "p", "response": "r", "ratings": [1, 2, 3]}])
    with pytest.raises(DataError, match=r"s2.jsonl:1: 3 ratings for 2 attributes \(mismatched lengths\)"):
        read_scored(path, RMDataConfig(train="x", format="scored", rating_keys=["ratings"]), 2)
    path = _write(tmp_path / "s3.jsonl", [{"prompt": "p", "response": "r"}])
    with pytest.raises(DataError, match=r"s3.jsonl:1: no rating"):
        read_scored(path, cfg, 2)
    path = _write(tmp_path / "s4.jsonl", [{"prompt": "p", "response": "r", "helpful": 2}])  # one attribute missing: fine
    assert read_scored(path, cfg, 2)[0].ratings == (2.0, None)


def test_rm_recipe_errors_name_file_line_and_key(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model:\n  name: random:tiny-llama\n  haed: bt\ntrain:\n  batch_size: 0\n"
                    "data:\n  train: missing.jsonl\n")
    with pytest.raises(RecipeError) as exc:
        load_rm_recipe(path)
    assert exc.value.lines[0] == f"{path}:3: model.haed: unknown key"
    assert exc.value.lines[1].startswith(f"{path}:5: train.batch_size: Input should be greater than 0")
    path.write_text("data:\n  train: missing.jsonl\n")
    with pytest.raises(RecipeError) as exc:
        load_rm_recipe(path, ["loss.ties=sometimes"])
    assert any(line.startswith("command line: loss.ties:") for line in exc.value.lines)
    with pytest.raises(RecipeError) as exc:
        load_rm_recipe(path)
    assert exc.value.lines == [f"{path}:2: data.train: file not found: missing.jsonl"]
    path.write_text("model: {head: regression}\n")
    with pytest.raises(RecipeError, match="data.format: scored"):
        load_rm_recipe(path)


# ---------------------------------------------------------------------------------------------------- the `rm` reward


class FakeRM:
    """Scores a response by a table (default: its length), like RewardModel.score."""

    def __init__(self, table=None, offset=0.0, mean=None, std=None):
        self.table, self.offset, self.mean, self.std = table or {}, offset, mean, std
        self.calls = 0

    def score(self, prompts, responses, batch_size=32, attribute_weights=None):
        self.calls += 1
        return torch.tensor([self.table.get(r, float(len(r))) + self.offset for r in responses])


def _batch(completions, refs=None):
    problems = [Problem(id=f"p{i}", prompt=f"q{i}", answer="7", meta={} if refs is None else {"references": refs})
                for i in range(len(completions))]
    n = len(completions)
    return Batch(prompts=[p.prompt for p in problems], completions=completions, completion_ids=[[0]] * n,
                       lengths=torch.ones(n, dtype=torch.long), truncated=torch.zeros(n, dtype=torch.bool),
                       correct=torch.ones(n), problems=problems, group_size=1)


def _component(scorer, **params):
    c = RewardModelReward(path="unused", **params)
    c._cache["scorer"] = scorer
    c._cache["refs"] = {}
    return c


def test_par_and_lsc_by_hand():
    table = {"y": 2.0, "ref_a": 1.0, "ref_b": 3.0}
    batch = _batch(["y"], refs=["ref_a", "ref_b"])
    par = _component(FakeRM(table), transform="par")
    assert par(batch).item() == pytest.approx(0.5, abs=1e-6)  # (σ(1) + σ(−1))/2
    assert par.last_metrics()["ref_mean"] == pytest.approx(2.0)
    par2 = _component(FakeRM(table), transform="par", sigmoid_k=2.0, max_references=1)
    assert par2(batch).item() == pytest.approx(1 / (1 + math.exp(-2.0)), abs=1e-6)  # σ(2·(2 − 1)), first reference only
    z85 = 1.0364333894937898  # the PAR repo's NORMAL_85TH_PERCENTILE
    for max_refs in (10, 1):  # LSC fits its normal to every reference, whatever max_references says
        lsc = _component(FakeRM(table), transform="lsc", max_references=max_refs)
        r_ref = 2.0 + z85 * (math.sqrt(2.0) + 1e-5)  # mean + z·(sample std + 1e-5): ((1−2)² + (3−2)²)/(2−1) = 2
        assert lsc(batch).item() == pytest.approx(math.log(1 / (1 + math.exp(-(2.0 - r_ref)))), rel=1e-12)
    one = _component(FakeRM(table), transform="lsc")(_batch(["y"], refs=["ref_a"]))
    assert one.item() == pytest.approx(math.log(1 / (1 + math.exp(-(2.0 - (1.0 + z85 * 1e-5))))), rel=1e-12)
    # references from reference_fn, then the template; reference rewards are cached
    fake = FakeRM({"y": 2.0, "ans=7": 1.0})
    tmpl = _component(fake, transform="par", reference_template="ans={answer}")
    assert tmpl(_batch(["y"])).item() == pytest.approx(1 / (1 + math.exp(-1.0)), abs=1e-6)
    calls = fake.calls
    tmpl(_batch(["y"]))
    assert fake.calls == calls + 1  # the completion only; the reference came from the cache
    fn = _component(FakeRM({"y": 2.0}), transform="par", reference_fn="rshape.rm.data:tiny_reference")
    add = make_problem(3, 4)
    batch = Batch(prompts=[add.prompt], completions=["y"], completion_ids=[[0]], lengths=torch.ones(1, dtype=torch.long),
                        truncated=torch.zeros(1, dtype=torch.bool), correct=torch.ones(1), problems=[add], group_size=1)
    assert fn.references(add) == tiny_reference(add)
    none = _component(FakeRM({"y": 2.0}), transform="par", reference_template=None)
    assert none(_batch(["y"])).item() == pytest.approx(2.0)  # no reference: raw passes through (PAR code)
    assert fn(batch).item() == pytest.approx(1 / (1 + math.exp(-(2.0 - len(tiny_reference(add)[0])))), abs=1e-6)


def test_clip_and_zscore():
    clip = _component(FakeRM(), transform="clip", clip_low=0.0, clip_high=1.5)
    assert clip(_batch(["", "a", "abc"])).tolist() == [0.0, 1.0, 1.5]
    saved = _component(FakeRM(mean=1.0, std=2.0), transform="zscore")
    assert saved(_batch(["a", "abc"])).tolist() == pytest.approx([0.0, 1.0])
    run = _component(FakeRM(), transform="zscore", zscore_stats="running")
    z = run(_batch(["a", "ab", "abc"]))
    assert z.tolist() == pytest.approx([-math.sqrt(1.5), 0.0, math.sqrt(1.5)], abs=1e-6)  # mean 2, std √(2/3)
    state = run.state_dict()
    resumed = _component(FakeRM(), transform="zscore", zscore_stats="running")
    resumed.load_state_dict(json.loads(json.dumps(state)))
    # second batch [4]: count 4, mean 2.5, M2 = 2 + 3 = 5, std √(5/4)
    assert resumed(_batch(["abcd"])).item() == pytest.approx(1.5 / math.sqrt(1.25), abs=1e-6)
    assert run(_batch(["abcd"])).item() == pytest.approx(1.5 / math.sqrt(1.25), abs=1e-6)
    no_stats = _component(FakeRM(), transform="zscore")
    with pytest.raises(ValueError, match="no saved reward_mean"):
        no_stats(_batch(["a"]))


def test_ensemble_aggregation_and_disagreement():
    members = [FakeRM(), FakeRM(offset=2.0)]  # r and r + 2: std 1 over members
    batch = _batch(["a", "abc"])
    for how, want in [("mean", [2.0, 4.0]), ("min", [1.0, 3.0]), ("mean_minus_std", [1.0, 3.0])]:
        c = _component(EnsembleRM(members, aggregate=how, k=1.0))
        assert c(batch).tolist() == pytest.approx(want)
        m = c.last_metrics()
        assert m["disagreement"] == pytest.approx(1.0) and m["member_1_mean"] == pytest.approx(4.0)
    c = _component(EnsembleRM(members, aggregate="mean_minus_std", k=2.0))
    assert c(batch).tolist() == pytest.approx([0.0, 2.0])


def test_component_validation_pickling_and_kwargs():
    with pytest.raises(ValueError, match="exactly one"):
        RewardModelReward()
    with pytest.raises(ValueError, match="exactly one"):
        RewardModelReward(path="a", paths=["b"])
    with pytest.raises(ValueError, match="clip_low and/or clip_high"):
        RewardModelReward(path="a", transform="clip")
    with pytest.raises(ValueError):
        RewardModelReward(path="a", transform="arctan")  # PAR has it; rshape does not
    c = _component(FakeRM(), transform="raw")
    assert c(_batch(["ab"]), step=3, extra="ignored").tolist() == [2.0]
    clone = pickle.loads(pickle.dumps(c))
    assert clone.model_dump() == c.model_dump() and "scorer" not in clone._cache and "scorer" in c._cache  # weights never pickled
    from rshape.models import resolve_device
    from rshape.rm.modeling import RewardModelError

    assert resolve_device(c.device).type in ("cpu", "cuda")
    with pytest.raises(RewardModelError, match="no reward model at"):
        RewardModelReward(path="no/such/dir").scorer()


def test_render_plain_chat_and_template():
    from rshape.rm.modeling import render_example, response_lengths
    from rshape.tasks.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    assert render_example("1+1=?\n", "2", tok, pair_encoding=False) == ("1+1=?\n2", None)
    assert render_example("1+1=?\n", "2", tok, pair_encoding=True) == ("1+1=?\n", "2")
    chat = [{"role": "user", "content": "q"}]
    assert render_example(chat, "a", tok, False) == ("user: q\nassistant: a", None)
    assert render_example(chat, "a", tok, False, system_prompt="s") == ("system: s\nuser: q\nassistant: a", None)
    assert render_example(chat, [{"role": "assistant", "content": "a"}], tok, True) == ("user: q", "a")
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    assert render_example(chat, "a", tok, False) == ("<user>q<assistant>a", None)
    assert response_lengths(tok, ["<answer>12</answer>", [{"role": "assistant", "content": "ab"}]]) == [4, 2]


def test_par_pipeline_shapes_and_length_penalty_by_hand():
    """PAR's reward_shaper.py: sigmoid σ(k·r), centered mean(r − r_ref), relative tanh mean tanh(r − r_ref), and its
    pre-transform length penalty r − 0.01·(L − 300) beyond 300 tokens."""
    table = {"y": 2.0, "r1": 1.0, "r2": 0.5}
    batch = _batch(["y"], refs=["r1", "r2"])
    assert _component(FakeRM(table), transform="sigmoid", sigmoid_k=2.0)(batch).item() == pytest.approx(
        1 / (1 + math.exp(-4.0)), rel=1e-12)
    assert _component(FakeRM(table), transform="centered")(batch).item() == pytest.approx((1.0 + 1.5) / 2, rel=1e-12)
    assert _component(FakeRM(table), transform="tanh")(batch).item() == pytest.approx(
        (math.tanh(1.0) + math.tanh(1.5)) / 2, rel=1e-12)
    long = _batch(["y", "y"], refs=["r1"])
    long.lengths = torch.tensor([290, 350])
    got = _component(FakeRM(table), length_penalty=0.01, penalty_from=300)(long).tolist()
    assert got == pytest.approx([2.0, 2.0 - 0.01 * 50], rel=1e-12)  # only the 50 tokens beyond 300 count
    par = _component(FakeRM(table), transform="par", length_penalty=0.01)(long).tolist()  # penalty first, then PAR
    assert par == pytest.approx([1 / (1 + math.exp(-1.0)), 1 / (1 + math.exp(-0.5))], rel=1e-12)
