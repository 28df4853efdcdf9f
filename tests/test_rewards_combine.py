"""Composition: weights, schedules, gates, multipliers, normalize_then_sum, user functions, errors."""

import math

import pytest
import torch
from conftest import make_reward_batch
from conftest import make_reward_batch as make_batch

from rshape.rewards import RewardConfigError, RewardRuntimeError, build_rewards
from rshape.rewards.user import UserRewardError
from rshape.rl.advantages import group_normalize, normalize_then_sum

TEXTS = ["<think>a</think><answer>1</answer>", "<think>a</think>1", "<answer>1</answer>", "oops"]


def batch(step=0, correct=(1, 0, 1, 0), lengths=(10, 20, 30, 40)):
    b = make_batch(list(lengths), list(correct), 4, completions=list(TEXTS))
    b.step = step
    return b


def test_scheduled_weight_follows_step():
    rs = build_rewards({"correctness": {"weight": 1.0},
                        "length": {"weight": {"schedule": "linear", "start": 0.0, "end": 0.4, "until": 10}}})
    kimi = torch.tensor([0.5, 0.0, -1 / 6, -0.5])
    for step, w in [(0, 0.0), (5, 0.2), (10, 0.4), (50, 0.4)]:
        s = rs.score(batch(step))
        assert s.total.tolist() == pytest.approx((torch.tensor([1.0, 0, 1, 0]) + w * kimi).tolist(), abs=1e-6)
        assert s.metrics["reward/length/weight"] == pytest.approx(w)


def test_scheduled_parameter():
    rs = build_rewards({"correctness": {"wrong_score": {"schedule": "step", "values": [0.0, -0.5], "milestones": [3]}}})
    assert rs.score(batch(2)).total.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert rs.score(batch(3)).total.tolist() == [1.0, -0.5, 1.0, -0.5]


def test_gate_counts_only_when_gate_passes():
    rs = build_rewards({"correctness": {"weight": 1.0},
                        "length": {"weight": 1.0, "gate": {"on": "correctness", "threshold": 1.0}}})
    s = rs.score(batch(correct=(1, 1, 0, 0)))
    # kimi raw: [0.5, 1/6, min(0,−1/6), min(0,−0.5)]; gate closes the wrong ones
    assert s.total.tolist() == pytest.approx([1.5, 1 + 1 / 6, 0.0, 0.0], abs=1e-6)
    assert s.metrics["reward/length/gate_open"] == 0.5


def test_multiplicative_component():
    rs = build_rewards({"correctness": {"weight": 1.0}, "format": {"weight": 0.5},
                        "fmt_mult": {"type": "format", "combine": "multiply"}})
    s = rs.score(batch())
    # added = c + 0.5·f = [1.5, 0, 1, 0]; multiplier f = [1, 0, 0, 0]
    assert s.total.tolist() == [1.5, 0.0, 0.0, 0.0]
    assert s.metrics["reward/total"] == pytest.approx(1.5 / 4)


def test_normalize_then_sum_by_hand():
    rs = build_rewards({"correctness": {"weight": 1.0}, "format": {"weight": 2.0}}, mode="normalize_then_sum")
    b = make_batch([1] * 4, [1, 0, 0, 0], 2, completions=list(TEXTS))
    s = rs.score(b)
    c = group_normalize(torch.tensor([1.0, 0, 0, 0]), 2)
    f = group_normalize(torch.tensor([1.0, 0, 0, 0]), 2)
    x = c + 2 * f
    want = (x - x.mean()) / (x.std() + 1e-4)
    assert torch.allclose(normalize_then_sum(s.raw, s.added, 2), want, atol=1e-6)
    assert s.total.tolist() == [3.0, 0.0, 0.0, 0.0]  # the logged reward is the plain weighted sum


def test_group_normalize_by_hand_and_nan():
    x = torch.tensor([1.0, 3.0, 2.0, 2.0, 5.0, float("nan")])
    out = group_normalize(x, 2, eps=0.0)
    s = 2 ** 0.5  # unbiased std of (1, 3)
    assert out[:2].tolist() == pytest.approx([-1 / s, 1 / s])
    assert out[2:4].tolist() == [0.0, 0.0]
    assert out[4:].tolist() == [0.0, 0.0]  # NaN is filled with the mean of its group


def test_user_function_trl_signature():
    rs = build_rewards({"bonus": {"type": "user_rewards:length_bonus", "weight": 2.0},
                        "ans": {"type": "user_rewards.answer_in_text", "scale": 3.0}})
    s = rs.score(batch())
    assert s.raw["bonus"].tolist() == pytest.approx([1.0, 2.0, 3.0, 4.0])
    assert s.raw["ans"].tolist() == [3.0, 3.0, 3.0, 0.0]  # gold "1" is in the first three texts
    assert s.total.tolist() == pytest.approx([5.0, 7.0, 9.0, 8.0])


def test_user_function_sees_columns_and_step():
    b = batch(step=7)
    b.problems = [type(p)(id=p.id, prompt=p.prompt, answer=p.answer, difficulty=2) for p in b.problems]
    s = build_rewards({"u": {"type": "user_rewards:sees_columns"}}).score(b)
    assert s.raw["u"].tolist() == [9.0] * 4


@pytest.mark.parametrize("fn, text", [("raises", "raised ValueError: boom"), ("returns_nan", "returned NaN"),
                                      ("wrong_count", "returned 1 values for 4 completions")])
def test_user_function_errors_name_the_component(fn, text):
    rs = build_rewards({"mine": {"type": f"user_rewards:{fn}"}})
    with pytest.raises(RewardRuntimeError) as exc:
        rs.score(batch(step=3))
    msg = str(exc.value)
    assert msg.startswith(f"reward 'mine' (user_rewards:{fn}) at step 3") or msg.startswith(f"reward 'mine' (user_rewards:{fn})")
    assert text in msg and "\n" not in msg
    assert isinstance(exc.value.__cause__, UserRewardError) or "returned 1 values" in msg


def test_bad_configs_each_named():
    with pytest.raises(RewardConfigError) as exc:
        build_rewards({
            "correctness": {"weight": -1.0},
            "length": {"weight": {"schedule": "linear", "start": 0, "end": 1, "begin": 5, "until": 2}},
            "g": {"type": "format", "gate": {"on": "nothing"}},
            "m": {"type": "format", "combine": "multiply", "weight": 2.0},
            "u": {"type": "user_rewards:not_there"},
            "s": {"type": "format", "pattern": {"schedule": "bogus"}},
        })
    keys = {".".join(k): m for k, m in exc.value.problems}
    assert "must be ≥ 0" in keys["rewards.correctness.weight"]
    assert "until (2) must be after begin (5)" in keys["rewards.length.weight"]
    assert "must name another entry" in keys["rewards.g.gate.on"]
    assert "leave weight at 1" in keys["rewards.m.weight"]
    assert "cannot import" in keys["rewards.u.type"]
    assert "unknown schedule 'bogus'" in keys["rewards.s.pattern"]


def test_negative_weight_allowed_for_user_functions():
    rs = build_rewards({"u": {"type": "user_rewards:length_bonus", "weight": -1.0}})
    assert rs.score(batch()).total.tolist() == pytest.approx([-1.0, -2.0, -3.0, -4.0])


def test_multiplier_negative_value_overrides_total():
    """stop_properly with a negative coefficient: a truncated completion's total becomes the coefficient."""
    b = make_batch([10, 20, 30, 40], [1, 1, 0, 0], 4, completions=list(TEXTS), truncated=[False, True, False, True])
    rs = build_rewards({"correctness": {"weight": 1.0}, "stop": {"type": "stop_properly", "coef": -0.5}})
    assert rs.components[1].combine == "multiply"  # a multiplier by nature
    assert rs.score(b).total.tolist() == [1.0, -0.5, 0.0, -0.5]
    with pytest.raises(RewardConfigError, match="use combine: multiply"):
        build_rewards({"stop": {"type": "stop_properly", "combine": "add"}})


def test_constraint_lagrange_multiplier_by_hand():
    """at_least 0.75 on correctness: λ grows by η·(θ − mean) while the mean is below θ, never below 0."""
    rs = build_rewards({"format": {"weight": 1.0},
                        "correctness": {"constraint": {"at_least": 0.75, "lr": 2.0, "initial": 0.1}}})
    b = batch(correct=(1, 0, 1, 0))  # mean correctness 0.5
    s = rs.score(b)
    assert s.total.tolist() == pytest.approx([1.0 + 0.1, 0.0, 0.1, 0.0])  # format [1,0,0,0] + λ·c with λ = 0.1
    rs.update_multipliers(s.raw)
    assert rs.components[1].constraint.value == pytest.approx(0.1 + 2.0 * (0.75 - 0.5))
    state = rs.state_dict()
    again = build_rewards({"format": {"weight": 1.0},
                           "correctness": {"constraint": {"at_least": 0.75, "lr": 2.0, "initial": 0.1}}})
    again.load_state_dict(state)
    assert again.components[1].constraint.value == pytest.approx(0.6)
    rs.update_multipliers({"format": s.raw["format"], "correctness": torch.ones(4)})  # mean 1 > θ: λ shrinks
    assert rs.components[1].constraint.value == pytest.approx(0.6 - 0.5)
    upper = build_rewards({"length": {"constraint": {"at_most": 0.0, "lr": 1.0, "initial": 1.0}}})
    s = upper.score(batch())
    assert s.total.tolist() == pytest.approx([-0.5, 0.0, 1 / 6, 0.5])  # −λ·kimi with λ = 1
    with pytest.raises(RewardConfigError, match="expected"):
        build_rewards({"correctness": {"constraint": {"above": 1}}})


def test_rewards_stay_float64_to_the_total():
    """0.3 comes back as 0.3, not 0.30000001192 (float32): components, weights and the sum are float64."""
    rs = build_rewards({"correctness": {"correct_score": 0.3, "wrong_score": -0.1, "weight": 0.7},
                        "stop": {"type": "stop_properly", "coef": 0.1}})
    s = rs.score(make_reward_batch([3, 4, 5, 6], [1, 0, 1, 0], 2, truncated=[False, False, True, False]))
    assert s.total.dtype == torch.float64 and s.raw["correctness"].dtype == torch.float64
    assert s.total.tolist() == [0.7 * 0.3, 0.7 * -0.1, 0.7 * 0.3 * 0.1, 0.7 * -0.1]
    assert s.metrics["reward/correctness/raw"] == (0.3 - 0.1 + 0.3 - 0.1) / 4


def test_hapo_length_weight_is_its_own_parameter():
    """HAPO's length weight is `length_weight`; the entry's `weight` scales the whole reward (c + w·r_len)."""
    def first_two_steps(spec):
        rs = build_rewards({"hapo": spec})
        rs.score(make_reward_batch([20, 40], [1, 1], 2, prompt_ids=["a", "a"]))  # history h = 20
        return rs.score(make_reward_batch([10, 30], [1, 0], 2, prompt_ids=["a", "a"], step=1)).total.tolist()

    s, w = math.cos(math.pi / 4), math.cos(3 * math.pi / 4)  # L/h = 0.5 (correct), 1.5 (wrong: min(s, 0))
    assert first_two_steps({"type": "hapo", "length_weight": 0.5}) == pytest.approx([1 + 0.5 * s, 0.5 * w], rel=1e-12)
    assert first_two_steps({"type": "hapo", "weight": 0.5}) == pytest.approx([0.5 * (1 + s), 0.5 * w], rel=1e-12)


def test_a_parameter_named_like_an_entry_key_is_refused(tmp_path, monkeypatch):
    (tmp_path / "clash_rewards.py").write_text(
        "from rshape.rewards.base import RewardComponent\n\n"
        "class Clash(RewardComponent):\n"
        "    weight: float = 1.0\n    gate: int = 0\n\n"
        "    def __call__(self, batch, **_):\n        return batch.lengths.double()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RewardConfigError) as exc:
        build_rewards({"c": {"type": "clash_rewards:Clash"}})
    assert exc.value.problems == [(("rewards", "c", "type"), "clash_rewards:Clash has a parameter named like an entry "
                                   "key (gate, weight); rename the parameter")]


def test_unscorable_completions_get_a_nan_total_and_gdpo_leaves_them_out():
    """answer "skip" → the only added reward returns None: the total is NaN (TRL), logged statistics skip it, and
    GDPO's normalise-then-sum gives it 0 while its siblings are normalised without it."""
    b = make_batch([1, 2, 3, 4], [1, 0, 0, 0], 4, completions=["7", "8", "7", "x"], answers=["7", "skip", "7", "7"])
    rs = build_rewards({"hit": {"type": "user_rewards:answer_in_text", "weight": 2.0},
                        "stop": {"type": "stop_properly", "coef": 0.5}})
    s = rs.score(b)
    assert math.isnan(s.total[1]) and [s.total[i].item() for i in (0, 2, 3)] == [2.0, 2.0, 0.0]
    assert s.metrics["reward/total"] == pytest.approx(4.0 / 3) and s.metrics["reward/unscorable"] == 0.25
    gdpo = build_rewards({"hit": {"type": "user_rewards:answer_in_text"}}, mode="normalize_then_sum")
    g = gdpo.score(b)
    adv = normalize_then_sum(g.raw, g.added, 4)
    vals = [1.0, 1.0, 0.0]  # rows 0, 2, 3: group mean 2/3, unbiased std √(1/3), then whitened over the three
    m = sum(vals) / 3
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / 2)
    z = [(v - m) / (sd + 1e-4) for v in vals]
    zm = sum(z) / 3
    zs = math.sqrt(sum((v - zm) ** 2 for v in z) / 2)
    want = [(z[0] - zm) / (zs + 1e-4), 0.0, (z[1] - zm) / (zs + 1e-4), (z[2] - zm) / (zs + 1e-4)]
    assert adv.tolist() == pytest.approx(want, rel=1e-5)
