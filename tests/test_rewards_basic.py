"""Correctness, format, Kimi length and the weighted sum, on hand-computed values."""

import math
import pickle

import pytest
import torch
from conftest import make_reward_batch

from rshape.rewards import RewardConfigError, build_rewards
from rshape.rewards.correctness import Correctness
from rshape.rewards.format import Format
from rshape.rewards.length import KimiLength

make_batch = make_reward_batch


def test_correctness_scores():
    b = make_batch([3, 4, 0], [1, 0, 0], 3)
    assert Correctness()(b).tolist() == [1.0, 0.0, 0.0]
    assert Correctness(correct_score=1.0, wrong_score=-0.5)(b).tolist() == [1.0, -0.5, -0.5]


def test_format_strict_structure():
    texts = ["<think>a</think><answer>1</answer>", "<think>a</think>1", "<answer>1</answer>",
             "<think>\n</think>\n<answer>2</answer>\n", "", "<think>a</think><answer>1</answer>junk"]
    b = make_batch([1] * 6, [0] * 6, 6, completions=texts)
    assert Format()(b).tolist() == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]


def test_kimi_by_hand():
    # one group, L = 10, 20, 30, 40; λ = 0.5 − (L−10)/30 = 0.5, 1/6, −1/6, −0.5
    b = make_batch([10, 20, 30, 40], [1, 0, 1, 0], 4)
    r = KimiLength()(b)
    # correct keep λ; wrong get min(0, λ)
    assert r.tolist() == pytest.approx([0.5, 0.0, -1 / 6, -0.5], abs=1e-6)


def test_kimi_equal_lengths_and_all_correct_all_wrong():
    b = make_batch([7, 7, 7], [1, 1, 1], 3)
    assert KimiLength()(b).tolist() == [0.0, 0.0, 0.0]
    b = make_batch([0, 5, 10], [1, 1, 1], 3)  # all correct, with an empty completion
    assert KimiLength()(b).tolist() == pytest.approx([0.5, 0.0, -0.5])
    b = make_batch([0, 5, 10], [0, 0, 0], 3)  # all wrong: never positive
    assert KimiLength()(b).tolist() == pytest.approx([0.0, 0.0, -0.5])


def test_kimi_is_per_group_not_per_batch():
    one = make_batch([10, 20], [1, 1], 2)
    two = make_batch([10, 20, 100, 500], [1, 1, 0, 1], 2)
    assert KimiLength()(two)[:2].tolist() == KimiLength()(one).tolist()


def test_kimi_truncated_completion_is_just_long():
    b = make_batch([5, 128], [1, 0], 2, truncated=[False, True])
    assert KimiLength()(b).tolist() == pytest.approx([0.5, -0.5])


def test_weighted_sum_logged_total_equals_optimised_total():
    rs = build_rewards({"correctness": {"weight": 1.0}, "format": {"weight": 0.2}, "length": {"weight": 0.4}})
    texts = ["<think>a</think><answer>1</answer>", "<think>a</think>1", "<answer>1</answer>", "oops"]
    b = make_batch([10, 20, 30, 40], [1, 0, 1, 0], 4, completions=texts)
    s = rs.score(b)
    want = torch.tensor([1, 0, 1, 0]) + 0.2 * torch.tensor([1, 0, 0, 0]) + 0.4 * torch.tensor([0.5, 0.0, -1 / 6, -0.5])
    assert s.total.tolist() == pytest.approx(want.tolist(), abs=1e-6)
    assert s.metrics["reward/total"] == pytest.approx(s.total.mean().item())
    assert s.metrics["reward/length/weighted"] == pytest.approx(0.4 * (0.5 - 1 / 6 - 0.5) / 4, abs=1e-6)
    assert s.metrics["reward/correctness/raw"] == pytest.approx(0.5)


def test_nan_is_not_applicable():
    class Half(Correctness):
        def __call__(self, batch, **_):
            return torch.tensor([1.0, float("nan")])

    from rshape.rewards.combine import RewardSet, WeightedComponent

    rs = RewardSet([WeightedComponent("half", 2.0, Half())])
    s = rs.score(make_batch([1, 1], [1, 1], 2))
    assert s.total[0] == 2.0 and math.isnan(s.total[1])  # no added component applies: unscorable (TRL)
    with_other = RewardSet([WeightedComponent("half", 2.0, Half()), WeightedComponent("c", 1.0, Correctness())])
    assert with_other.score(make_batch([1, 1], [1, 1], 2)).total.tolist() == [3.0, 1.0]  # NaN adds nothing
    assert s.metrics["reward/half/applicable"] == 0.5
    assert s.metrics["reward/half/raw"] == 1.0


def test_components_pickle_and_ignore_extra_kwargs():
    b = make_batch([10, 20], [1, 0], 2)
    for comp in (Correctness(wrong_score=-0.5), Format(), KimiLength()):
        again = pickle.loads(pickle.dumps(comp))
        assert again(b, unused="x").tolist() == comp(b).tolist()


def test_bad_reward_config_names_each_key():
    with pytest.raises(RewardConfigError) as exc:
        build_rewards({"nope": {"weight": 1}, "format": {"pattern": "("}, "correctness": {"bogus": 1}})
    keys = [".".join(k) for k, _ in exc.value.problems]
    assert keys == ["rewards.nope.type", "rewards.format.pattern", "rewards.correctness.bogus"]
    assert "valid:" in exc.value.problems[0][1]
