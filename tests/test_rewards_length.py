"""The length family of docs/methods.md: hand-computed values, the papers' properties, and agreement with
small re-implementations transcribed from the public reference code (plain Python loops)."""

import math
import pickle
import random

import pytest
import torch
from conftest import make_reward_batch
from pydantic import ValidationError

from rshape.rewards import REWARDS
from rshape.rewards.length import (
    CosineLength,
    DapoOverlong,
    DlerTruncation,
    GrpoLambda,
    KimiLength,
    LcpoExact,
    LcpoMax,
    SelfNormalizedLength,
    ShorterBetter,
    StopProperly,
    TltsLength,
    apply_multiplier,
)

make_batch = make_reward_batch

COMPONENTS = REWARDS.defined_in("rshape.rewards.length")


def random_batch(rng, groups, group_size, max_len=200, max_new_tokens=0, p_trunc=0.0):
    lengths = [rng.randint(0, max_len) for _ in range(groups * group_size)]
    correct = [float(rng.random() < 0.5) for _ in lengths]
    truncated = [rng.random() < p_trunc for _ in lengths]
    batch = make_batch(lengths, correct, group_size, truncated=truncated, max_new_tokens=max_new_tokens)
    return batch, lengths, correct, truncated


# ---------------------------------------------------------------------------------------------------------------------
# Re-implementations transcribed from the reference code.


def ref_cosine(gen_len, is_correct, max_len, min_value_wrong=-1.0, max_value_wrong=-0.5, min_value_correct=0.5,
               max_value_correct=1.0):
    """open-r1 src/open_r1/rewards.py::get_cosine_scaled_reward (= demystify-long-cot cosine.py for L < max_len)."""
    progress = gen_len / max_len
    cosine = math.cos(progress * math.pi)
    if is_correct:
        min_value, max_value = min_value_correct, max_value_correct
    else:
        min_value, max_value = max_value_wrong, min_value_wrong
    return min_value + 0.5 * (max_value - min_value) * (1.0 + cosine)


def ref_trl_soft_overlong(completion_length, max_completion_len, soft_punish_cache):
    """trl/rewards/other_rewards.py::_SoftOverlongPunishment.__call__."""
    if completion_length <= max_completion_len - soft_punish_cache:
        return 0.0
    elif max_completion_len - soft_punish_cache < completion_length <= max_completion_len:
        return (max_completion_len - soft_punish_cache - completion_length) / soft_punish_cache
    return -1.0


def ref_openrlhf_overlong(reward, valid_response_length, max_new_tokens, overlong_buffer_len, factor=1.0):
    """openrlhf/trainer/ppo_utils/length_penalty.py::apply_overlong_penalty, one sample."""
    expected_len = max_new_tokens - overlong_buffer_len
    exceed_len = min(valid_response_length - expected_len, overlong_buffer_len)
    if exceed_len > 0:
        reward += -exceed_len / overlong_buffer_len * factor
    return reward


def ref_openrlhf_stop_properly(reward, truncated, coef):
    """openrlhf/trainer/ppo_utils/length_penalty.py::apply_stop_properly_penalty, one sample."""
    if truncated:
        return coef if coef < 0 else reward * coef
    return reward


def ref_dler_scale(reward, stop_properly, coef=0.1):
    """NVlabs/DLER verl-dler/verl/workers/reward_manager/dapo.py::_apply_stop_properly_penalty, one sample."""
    stop_properly = float(stop_properly)
    return reward * ((1.0 - stop_properly) * coef + stop_properly)


def ref_l1(num_tokens, used_tokens, is_correct):
    """L1's deepscaler_reward_fn: num_tokens < 0 means LCPO-Max with target |num_tokens|, else LCPO-Exact."""
    if num_tokens < 0:
        alpha = 1 / 500
        delta = used_tokens - abs(num_tokens)
        sc = -alpha * delta  # beta = alpha for delta < 0
        sc = max(-1, min(1, sc))
        return max(0, (sc + 1) / 2) * (1 if is_correct else 0)
    delta_score = 1 - abs(used_tokens - num_tokens) / 3000
    return delta_score if is_correct else delta_score - 1


def ref_shorter_better(lengths, correct, group_size):
    """ShorterBetter verl/verl/workers/reward_manager/naive.py: check_correctness_and_length + sb_compute_score."""
    out = []
    for g in range(0, len(lengths), group_size):
        ls, cs = lengths[g:g + group_size], correct[g:g + group_size]
        correct_lengths = [x for c, x in zip(cs, ls) if c]
        optimal = min(correct_lengths) if correct_lengths else sum(ls) / len(ls)
        for x, c in zip(ls, cs):
            out.append((2.0 if c else 0.0) - abs(x - optimal) * 0.001)
    return out


def ref_laser_norm(lengths, scores, uids, len_coef=0.4, epsilon=1e-6):
    """hkust-nlp/Laser verl/utils/reward_score/length_penalty.py::compute_norm_length_penalty (scores 1/0 or 1/−0.5)."""
    score_lst = list(scores)
    id2length, id2mean, id2std = {}, {}, {}
    for i in range(len(lengths)):
        if score_lst[i] == 1.0:
            id2length.setdefault(uids[i], []).append(float(lengths[i]))
    for idx, ls in id2length.items():
        if len(ls) == 1:
            id2mean[idx], id2std[idx] = torch.tensor(0.0), torch.tensor(1.0)
        else:
            id2mean[idx], id2std[idx] = torch.mean(torch.tensor(ls)), torch.std(torch.tensor(ls))
    for i in range(len(lengths)):
        if uids[i] in id2mean:
            z = (lengths[i] - id2mean[uids[i]]) / (id2std[uids[i]] + epsilon)
            if score_lst[i] == 1.0:
                score_lst[i] *= float(1 - len_coef * torch.sigmoid(torch.tensor(float(z))))
    return score_lst


# ---------------------------------------------------------------------------------------------------------------------
# cosine


def test_cosine_by_hand():
    b = make_batch([0, 50, 100, 0, 50, 100, 300], [1, 1, 1, 0, 0, 0, 1], 7, max_new_tokens=100)
    assert CosineLength()(b).tolist() == pytest.approx([1.0, 0.75, 0.5, -1.0, -0.75, -0.5, 0.5], abs=1e-6)
    # max_len overrides the generation limit; p is clipped at 1 (L = 300 > L_max)
    assert CosineLength(max_len=200)(b).tolist()[:3] == pytest.approx([1.0, 0.5 + 0.25 * (1 + math.cos(math.pi / 4)),
                                                                        0.75], abs=1e-6)


def test_cosine_matches_reference_code():
    rng = random.Random(0)
    for _ in range(5):
        b, lengths, correct, _ = random_batch(rng, 3, 4, max_len=256, max_new_tokens=256)
        want = [ref_cosine(L, c, 256) for L, c in zip(lengths, correct)]
        assert CosineLength()(b).tolist() == pytest.approx(want, abs=1e-6)
        custom = dict(min_value_wrong=-2.0, max_value_wrong=-0.1, min_value_correct=0.1, max_value_correct=2.0)
        want = [ref_cosine(L, c, 256, **custom) for L, c in zip(lengths, correct)]
        assert CosineLength(**custom)(b).tolist() == pytest.approx(want, abs=1e-6)


def test_cosine_values_in_any_order_as_trl():
    """TRL accepts min_value_correct > max_value_correct: longer correct answers then earn more."""
    b = make_batch([0, 64, 128, 0], [1, 1, 1, 0], 4, max_new_tokens=128)
    r = CosineLength(min_value_correct=1.0, max_value_correct=0.5, min_value_wrong=-0.5, max_value_wrong=-1.0)(b)
    assert r.tolist() == pytest.approx([0.5, 0.75, 1.0, -0.5], rel=1e-12)  # v_lo + ½(v_hi − v_lo)(1 + cos πp)
    assert r.tolist() == pytest.approx([ref_cosine(L, c, 128, min_value_wrong=-0.5, max_value_wrong=-1.0,
                                                   min_value_correct=1.0, max_value_correct=0.5)
                                        for L, c in zip([0, 64, 128, 0], [1, 1, 1, 0])], rel=1e-12)


def test_cosine_properties():
    lengths = list(range(0, 130, 5))
    n = len(lengths)
    good = CosineLength()(make_batch(lengths, [1] * n, n, max_new_tokens=128)).tolist()
    bad = CosineLength()(make_batch(lengths, [0] * n, n, max_new_tokens=128)).tolist()
    assert all(a >= b for a, b in zip(good, good[1:]))  # correct: non-increasing in length
    assert all(a <= b for a, b in zip(bad, bad[1:]))  # wrong: short wrong answers punished most
    assert all(0.5 - 1e-6 <= v <= 1.0 + 1e-6 for v in good) and all(-1.0 - 1e-6 <= v <= -0.5 + 1e-6 for v in bad)
    assert min(good) > max(bad)  # every correct answer beats every wrong one


def test_cosine_exceed_value_and_missing_limit():
    b = make_batch([10, 128], [1, 1], 2, truncated=[False, True], max_new_tokens=128)
    assert CosineLength(exceed_value=-1.0)(b).tolist()[1] == -1.0
    assert CosineLength()(b).tolist()[1] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="max_len"):
        CosineLength()(make_batch([1, 2], [1, 0], 2))  # no max_len and no generation limit


# ---------------------------------------------------------------------------------------------------------------------
# dapo_overlong


def test_dapo_overlong_by_hand():
    b = make_batch([0, 60, 80, 90, 100, 120], [1, 0, 1, 0, 1, 0], 6, max_new_tokens=100)
    assert DapoOverlong(cache_len=20)(b).tolist() == pytest.approx([0, 0, 0, -0.5, -1.0, -1.0])
    # default cache = max_len // 4 = 25: zone (75, 100]
    assert DapoOverlong()(b).tolist() == pytest.approx([0, 0, -0.2, -0.6, -1.0, -1.0])
    assert DapoOverlong(max_len=200, cache_len=100)(b).tolist() == pytest.approx([0, 0, 0, 0, 0, -0.2])
    assert DapoOverlong(cache_len=20, penalty_factor=0.5)(b).tolist()[3] == pytest.approx(-0.25)
    # verl's uncapped penalty keeps growing past max_len: L = 120 with L_max 100, L_c 20 → −(120 − 80)/20 = −2
    assert DapoOverlong(cache_len=20, cap=False)(b).tolist() == pytest.approx([0, 0, 0, -0.5, -1.0, -2.0], rel=1e-12)
    # cache_len 0: a hard step at max_len (0 up to it, −1 above), as TRL computes it
    assert DapoOverlong(max_len=80, cache_len=0)(b).tolist() == [0, 0, 0, -1.0, -1.0, -1.0]


def test_dapo_overlong_matches_trl_and_openrlhf():
    rng = random.Random(1)
    for cache in (0, 1, 16, 64, 128):  # 0: TRL's hard step (no soft zone)
        b, lengths, _, _ = random_batch(rng, 2, 8, max_len=128, max_new_tokens=128)
        got = DapoOverlong(cache_len=cache)(b).tolist()
        assert got == pytest.approx([ref_trl_soft_overlong(L, 128, cache) for L in lengths], abs=1e-6)
        assert got == pytest.approx([ref_openrlhf_overlong(0.0, L, 128, cache) for L in lengths], abs=1e-6)


def test_dapo_overlong_needs_consistent_lengths():
    with pytest.raises(ValueError, match="cache_len"):
        DapoOverlong(cache_len=300)(make_batch([1], [1], 1, max_new_tokens=100))
    with pytest.raises(ValueError, match="max_len"):
        DapoOverlong()(make_batch([1], [1], 1))


# ---------------------------------------------------------------------------------------------------------------------
# truncation (DLER) and stop_properly (ProRL): multipliers


def test_truncation_by_hand():
    b = make_batch([10, 64, 65, 128], [1, 1, 0, 1], 4, truncated=[False, False, False, True], max_new_tokens=128)
    assert DlerTruncation()(b).tolist() == [1.0, 1.0, 1.0, 0.0]  # B = generation limit: only the truncated one
    assert DlerTruncation(budget=64)(b).tolist() == [1.0, 1.0, 0.0, 0.0]
    assert DlerTruncation(budget=64, mode="scale")(b).tolist() == pytest.approx([1.0, 1.0, 0.1, 0.1])
    assert DlerTruncation(budget=64, mode="scale", scale_factor=0.5)(b).tolist() == pytest.approx([1, 1, 0.5, 0.5])


def test_truncation_matches_dler_code():
    rng = random.Random(2)
    b, lengths, correct, truncated = random_batch(rng, 4, 4, max_len=100, max_new_tokens=100, p_trunc=0.3)
    m = DlerTruncation(mode="scale")(b)  # budget = the generation limit, as in the DLER script (4000 = max_response_length)
    got = apply_multiplier(torch.tensor(correct), m).tolist()
    assert got == pytest.approx([ref_dler_scale(c, not t) for c, t in zip(correct, truncated)], abs=1e-6)


def test_truncation_difficulty_aware():
    # group 0: 3/4 correct → easy → budget 20; group 1: 1/4 correct → hard → budget 40
    b = make_batch([10, 30, 50, 5, 10, 30, 50, 5], [1, 1, 1, 0, 1, 0, 0, 0], 4, max_new_tokens=100)
    m = DlerTruncation(easy_budget=20, hard_budget=40)(b).tolist()
    assert m == [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0]
    # ratio exactly at the threshold counts as easy; an unset budget falls back to `budget`/the generation limit
    b = make_batch([10, 30, 30, 10], [1, 0, 1, 0], 2, max_new_tokens=100)
    assert DlerTruncation(easy_budget=20)(b).tolist() == [1.0, 0.0, 0.0, 1.0]
    assert DlerTruncation(easy_budget=20, easy_threshold=0.75)(b).tolist() == [1.0, 1.0, 1.0, 1.0]


def test_stop_properly_multiplier_and_override():
    b = make_batch([10, 128, 128, 5], [1, 1, 0, 0], 2, truncated=[False, True, True, False], max_new_tokens=128)
    assert StopProperly()(b).tolist() == [1.0, 0.0, 0.0, 1.0]
    assert StopProperly(coef=0.5)(b).tolist() == [1.0, 0.5, 0.5, 1.0]
    assert StopProperly(coef=-0.5)(b).tolist() == [1.0, -0.5, -0.5, 1.0]
    task = torch.tensor([1.2, 1.2, 0.2, 0.0])
    assert apply_multiplier(task, StopProperly(coef=0.5)(b)).tolist() == pytest.approx([1.2, 0.6, 0.1, 0.0])
    assert apply_multiplier(task, StopProperly(coef=-0.5)(b)).tolist() == pytest.approx([1.2, -0.5, -0.5, 0.0])
    assert apply_multiplier(task, torch.tensor([float("nan")] * 4)).tolist() == pytest.approx(task.tolist())


def test_stop_properly_matches_openrlhf():
    rng = random.Random(3)
    for coef in (0.0, 0.3, 1.0, -0.5, -1.0):
        b, _, correct, truncated = random_batch(rng, 2, 6, p_trunc=0.4)
        rewards = [c + rng.uniform(-0.5, 0.5) for c in correct]
        got = apply_multiplier(torch.tensor(rewards), StopProperly(coef=coef)(b)).tolist()
        want = [ref_openrlhf_stop_properly(r, t, coef) for r, t in zip(rewards, truncated)]
        assert got == pytest.approx(want, abs=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# lcpo_exact / lcpo_max


def test_lcpo_by_hand():
    meta = [{"target_length": 100}] * 4
    b = make_batch([100, 50, 200, 0], [1, 1, 0, 1], 4, metas=meta)
    assert LcpoExact()(b).tolist() == pytest.approx([1.0, 1 - 0.015, -0.03, 1 - 0.03], abs=1e-6)
    # max: c·clip(0.0003·(100 − L) + 0.5, 0, 1)
    assert LcpoMax()(b).tolist() == pytest.approx([0.5, 0.515, 0.0, 0.53], abs=1e-6)
    far = make_batch([5000, 0], [1, 1], 2, metas=[{"target_length": 100}, {"target_length": 5000}])
    assert LcpoMax()(far).tolist() == pytest.approx([0.0, 1.0])  # clipped at both ends


def test_lcpo_matches_l1_code():
    rng = random.Random(4)
    for _ in range(5):
        lengths = [rng.randint(0, 4000) for _ in range(8)]
        correct = [float(rng.random() < 0.5) for _ in lengths]
        targets = [rng.choice([512, 1024, 2048, 3600]) for _ in lengths]
        b = make_batch(lengths, correct, 4, metas=[{"target_length": t} for t in targets])
        want = [ref_l1(t, L, c) for t, L, c in zip(targets, lengths, correct)]
        assert LcpoExact(alpha=1 / 3000)(b).tolist() == pytest.approx(want, abs=1e-5)
        want = [ref_l1(-t, L, c) for t, L, c in zip(targets, lengths, correct)]
        assert LcpoMax(alpha=1 / 1000)(b).tolist() == pytest.approx(want, abs=1e-5)  # the code's slope is α/2, α = 1/500


def test_lcpo_target_sources():
    b = make_batch([10, 20], [1, 1], 2, schedule={"budget": 20})
    assert LcpoExact(alpha=0.01)(b).tolist() == pytest.approx([0.9, 1.0])  # falls back to the schedule
    b = make_batch([10, 20], [1, 1], 2)
    assert LcpoExact(alpha=0.01, target=10)(b).tolist() == pytest.approx([1.0, 0.9])  # then to `target`
    b = make_batch([10, 20], [1, 1], 2, metas=[{"n": 10}, {"n": 10}], schedule={"budget": 20})
    assert LcpoExact(alpha=0.01, target_key="n")(b).tolist() == pytest.approx([1.0, 0.9])  # meta wins
    b = make_batch([10, 20, 30, 40], [1, 1, 0, 0], 2, metas=[{"target_length": 5}, {"target_length": 5}, {}, {}])
    with pytest.raises(ValueError, match=r"sample 2 \(problem '1'\).*target_length"):
        LcpoMax()(b)
    b = make_batch([10], [1], 1, metas=[{"target_length": -3}])
    with pytest.raises(ValueError, match="positive"):
        LcpoExact()(b)


# ---------------------------------------------------------------------------------------------------------------------
# shorter_better


def test_shorter_better_by_hand():
    # SOL = 20 (shortest correct); r = 2c − 0.001|L − 20|
    b = make_batch([10, 20, 40, 100], [0, 1, 1, 0], 4)
    assert ShorterBetter()(b).tolist() == pytest.approx([-0.01, 2.0, 1.98, -0.08], abs=1e-6)
    # no correct answer: SOL = group mean = 40
    b = make_batch([10, 30, 80, 40], [0, 0, 0, 0], 4)
    assert ShorterBetter()(b).tolist() == pytest.approx([-0.03, -0.01, -0.04, 0.0], abs=1e-6)
    # all correct, equal lengths, and an empty completion
    assert ShorterBetter()(make_batch([7, 7, 7], [1, 1, 1], 3)).tolist() == pytest.approx([2.0, 2.0, 2.0])
    assert ShorterBetter()(make_batch([0, 50], [1, 1], 2)).tolist() == pytest.approx([2.0, 1.95])


def test_shorter_better_matches_reference_code():
    rng = random.Random(5)
    for _ in range(5):
        b, lengths, correct, _ = random_batch(rng, 4, 6, max_len=3000)
        assert ShorterBetter()(b).tolist() == pytest.approx(ref_shorter_better(lengths, correct, 6), abs=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# self_normalized and grpo_lambda


def test_self_normalized_by_hand():
    # correct lengths 10, 30: μ = 20, s = std([10, 30]) = 14.142 (unbiased)
    b = make_batch([10, 30, 5, 99], [1, 1, 0, 0], 4)
    z = 10 / math.sqrt(200)
    want = [1 - 0.4 / (1 + math.exp(z)), 1 - 0.4 / (1 + math.exp(-z)), 0.0, 0.0]
    assert SelfNormalizedLength()(b).tolist() == pytest.approx(want, abs=1e-6)
    assert SelfNormalizedLength(wrong_score=-0.5)(b).tolist()[2:] == [-0.5, -0.5]
    # equal correct lengths: z = 0 → 1 − α/2; all wrong: wrong_score everywhere
    assert SelfNormalizedLength()(make_batch([7, 7, 7], [1, 1, 1], 3)).tolist() == pytest.approx([0.8] * 3)
    assert SelfNormalizedLength()(make_batch([0, 5, 9], [0, 0, 0], 3)).tolist() == [0.0, 0.0, 0.0]
    # a single correct answer: Laser uses μ = 0, s = 1, so z = L (an empty one gets σ(0) = 0.5)
    b = make_batch([40, 3, 0, 3], [1, 0, 1, 0], 2)
    assert SelfNormalizedLength()(b).tolist() == pytest.approx([1 - 0.4 / (1 + math.exp(-40)), 0.0, 0.8, 0.0], abs=1e-6)


def test_self_normalized_matches_laser():
    rng = random.Random(6)
    for _ in range(5):
        b, lengths, correct, _ = random_batch(rng, 4, 5, max_len=500)
        uids = [i // 5 for i in range(len(lengths))]
        assert SelfNormalizedLength()(b).tolist() == pytest.approx(ref_laser_norm(lengths, correct, uids), abs=1e-5)
        laser_scores = [1.0 if c else -0.5 for c in correct]  # Laser's own correctness scoring
        got = SelfNormalizedLength(wrong_score=-0.5, alpha=0.2)(b).tolist()
        assert got == pytest.approx(ref_laser_norm(lengths, laser_scores, uids, len_coef=0.2), abs=1e-5)


def test_self_normalized_properties():
    lengths = [3, 10, 20, 50, 120, 121]
    r = SelfNormalizedLength()(make_batch(lengths, [1] * 6, 6)).tolist()
    assert all(a >= b for a, b in zip(r, r[1:]))  # non-increasing in length among correct answers
    assert all(0.6 <= v <= 1.0 for v in r)  # bounded in [1 − α, 1]


def test_grpo_lambda_by_hand():
    # 5 groups of 2, ratios 1, 0.5, 1, 0, 0.5 → k = ⌈0.2·5⌉ = 1: the first group with ratio 1 (stable order)
    lengths = [10, 30, 10, 30, 10, 30, 10, 30, 10, 30]
    correct = [1, 1, 1, 0, 1, 1, 0, 0, 0, 1]
    r = GrpoLambda()(make_batch(lengths, correct, 2)).tolist()
    z = 10 / math.sqrt(200)
    assert r[:2] == pytest.approx([1 - 0.6 / (1 + math.exp(z)), 1 - 0.6 / (1 + math.exp(-z))], abs=1e-6)
    assert r[2:] == pytest.approx([1, 0, 1, 1, 0, 0, 0, 1])  # plain 0/1 elsewhere
    # λ = 0.5: ⌈2.5⌉ = 3 groups: both ratio-1 groups and the first ratio-0.5 group
    r = GrpoLambda(top_fraction=0.5)(make_batch(lengths, correct, 2)).tolist()
    assert r[4:6] == pytest.approx(r[:2]) and r[2:4] == pytest.approx([1 - 0.6 / (1 + math.exp(-10)), 0.0], abs=1e-6)
    assert r[6:] == pytest.approx([0, 0, 0, 1])
    # λ = 1 is the self-normalised penalty with α = 0.6 everywhere
    b = make_batch(lengths, correct, 2)
    assert GrpoLambda(top_fraction=1.0)(b).tolist() == pytest.approx(SelfNormalizedLength(alpha=0.6)(b).tolist())


def test_grpo_lambda_at_least_one_group_and_bounded():
    rng = random.Random(7)
    b, _, correct, _ = random_batch(rng, 3, 4)
    r = GrpoLambda(top_fraction=0.01)(b)
    penalised = ((r > 0) & (r < 1)).view(3, 4).any(dim=1)
    assert penalised.sum() <= 1
    assert ((r >= 0) & (r <= 1)).all() and (r[torch.tensor(correct) == 0] == 0).all()


# ---------------------------------------------------------------------------------------------------------------------
# tlts_length


def test_tlts_by_hand():
    b = make_batch([0, 25, 50, 75, 100, 150], [1, 0, 1, 0, 1, 0], 6, schedule={"budget": 50})
    assert TltsLength()(b).tolist() == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0, 0.0])
    assert TltsLength(shape="band")(b).tolist() == pytest.approx([1.0, 1.0, 1.0, 0.5, 0.0, 0.0])
    assert TltsLength(r_max=2.0)(b).tolist() == pytest.approx([0.0, 1.0, 2.0, 1.0, 0.0, 0.0])
    # the fixed budget is used only when the schedule has none
    b = make_batch([0, 25, 50], [1, 0, 1], 3)
    assert TltsLength(budget=100)(b).tolist() == pytest.approx([0.0, 0.25, 0.5])
    with pytest.raises(ValueError, match="budget"):
        TltsLength()(b)


# ---------------------------------------------------------------------------------------------------------------------
# Shared properties


ALL = [CosineLength(), DapoOverlong(), DlerTruncation(), StopProperly(coef=0.3), LcpoExact(target=64), LcpoMax(target=64),
       ShorterBetter(), SelfNormalizedLength(), GrpoLambda(), TltsLength(budget=64), KimiLength()]


def test_registry_names():
    assert set(COMPONENTS) == {"kimi_length", "cosine", "dapo_overlong", "truncation", "stop_properly", "lcpo_exact",
                               "lcpo_max", "shorter_better", "self_normalized", "grpo_lambda", "tlts_length"}
    assert {type(c) for c in ALL} == set(COMPONENTS.values())


def test_pickle_extra_kwargs_and_empty_completions():
    b = make_batch([0, 30, 128, 0], [1, 0, 1, 0], 2, completions=["", "x" * 30, "y" * 128, ""],
                   truncated=[False, False, True, False], max_new_tokens=128)
    for comp in ALL:
        r = comp(b, unused="x", step=3)
        assert r.shape == (4,) and r.dtype == torch.float64 and torch.isfinite(r).all(), type(comp).__name__
        again = pickle.loads(pickle.dumps(comp))
        assert again(b).tolist() == r.tolist()


def test_group_relative_rewards_ignore_other_groups():
    one = make_batch([10, 20, 35], [1, 0, 1], 3, max_new_tokens=128)
    two = make_batch([10, 20, 35, 100, 3, 128], [1, 0, 1, 0, 1, 1], 3, truncated=[False] * 5 + [True], max_new_tokens=128)
    for comp in ALL:
        if isinstance(comp, GrpoLambda):  # ranks groups against each other by design
            continue
        assert comp(two)[:3].tolist() == pytest.approx(comp(one).tolist()), type(comp).__name__


@pytest.mark.parametrize("cls, params, field", [
    (CosineLength, {"max_len": 0}, "max_len"),
    (DapoOverlong, {"cache_len": -1}, "cache_len"),
    (DapoOverlong, {"penalty_factor": -1}, "penalty_factor"),
    (DlerTruncation, {"mode": "half"}, "mode"),
    (DlerTruncation, {"scale_factor": 2}, "scale_factor"),
    (DlerTruncation, {"easy_threshold": 1.5}, "easy_threshold"),
    (StopProperly, {"coef": 1.5}, "coef"),
    (LcpoExact, {"alpha": -1}, "alpha"),
    (LcpoMax, {"target": 0}, "target"),
    (ShorterBetter, {"beta": -0.1}, "beta"),
    (SelfNormalizedLength, {"alpha": 2}, "alpha"),
    (GrpoLambda, {"top_fraction": 0}, "top_fraction"),
    (TltsLength, {"shape": "square"}, "shape"),
    (TltsLength, {"bogus": 1}, "bogus"),
])
def test_bad_parameters_name_the_field(cls, params, field):
    with pytest.raises(ValidationError) as exc:
        cls.model_validate(params)
    assert field in str(exc.value)


def test_laser_third_score_level_for_unparsed_answers():
    """Laser scores correct 1, wrong-but-formatted −0.5, unparsed −1 and gives unparsed answers no length term."""
    from rshape.rewards.correctness import Correctness

    texts = ["<answer>3</answer>", "<answer>4</answer>", "x" * 30, "no tags at all"]
    b = make_batch([10, 20, 30, 40], [1, 1, 0, 0], 4, completions=texts)
    b.completions[1] = "\\boxed{5}"  # parsed through \boxed{}
    assert Correctness(wrong_score=-0.5, unparsed_score=-1.0)(b).tolist() == [1.0, 1.0, -1.0, -1.0]
    assert Correctness(wrong_score=-0.5)(b).tolist() == [1.0, 1.0, -0.5, -0.5]
    # Kimi: λ = 0.5 − (L − 10)/30 = 0.5, 1/6, −1/6, −0.5; wrong → min(0, λ), unparsed → unparsed_score
    lam = [0.5 - (L - 10) / 30 for L in (10, 20, 30, 40)]
    assert KimiLength()(b).tolist() == pytest.approx([lam[0], lam[1], lam[2], lam[3]], rel=1e-12)
    assert KimiLength(unparsed_score=0.0)(b).tolist() == pytest.approx([lam[0], lam[1], 0.0, 0.0], rel=1e-12)
    # self-normalised: μ = 15, s = √50 over the two correct lengths; wrong → −0.5 or, unparsed, −1
    s = math.sqrt(50) + 1e-6
    want = [1 - 0.4 / (1 + math.exp(-(L - 15) / s)) for L in (10, 20)]
    got = SelfNormalizedLength(wrong_score=-0.5, unparsed_score=-1.0)(b).tolist()
    assert got == pytest.approx(want + [-1.0, -1.0], rel=1e-12)
    parsed_wrong = make_batch([10, 20, 30, 40], [1, 1, 0, 0], 4, completions=texts[:2] + ["<answer>9</answer>"] * 2)
    assert SelfNormalizedLength(wrong_score=-0.5, unparsed_score=-1.0)(parsed_wrong).tolist()[2:] == [-0.5, -0.5]


# cmu-l3/l1 math_reward.py (commit 93dd330), transcribed: δ functions and math_reward_fn's combination
def l1_linear(num_tokens, used, alpha):
    return (1 - abs(used - num_tokens) * alpha) - 1


def l1_linear_both(num_tokens, used, alpha):
    if num_tokens < 0:
        delta = used - abs(num_tokens)
        sc = alpha * delta * -1
        return (max(-1, min(1, sc)) + 1) / 2
    return l1_linear(num_tokens, used, alpha)


def l1_sigmoid(num_tokens, used, alpha):
    delta = abs(num_tokens) - used
    s = 1 / (1 + math.exp(-delta * alpha))
    return max(0, min(1, s + (0.1 if delta >= 0 else 0.0)))


def l1_sigmoid_exact(num_tokens, used, alpha):
    return max(0, min(1, 1 / (1 + math.exp(-abs(num_tokens - used) * alpha))))


def l1_reward(correct, num_tokens, used, alpha, sigmoid, multiplier):
    if num_tokens == -1:
        return float(correct)
    if num_tokens < 0:
        d = l1_sigmoid(num_tokens, used, alpha) if sigmoid else l1_linear_both(num_tokens, used, alpha)
    else:
        d = l1_sigmoid_exact(num_tokens, used, alpha) if sigmoid else l1_linear(num_tokens, used, alpha)
    c = 1 if correct else 0
    return max(0, d) * c if multiplier else d + c


def test_lcpo_forms_match_the_reference_code():
    rng = random.Random(7)
    for _ in range(4):
        n = 8
        lengths = [rng.randint(0, 200) for _ in range(n)]
        correct = [rng.random() < 0.6 for _ in range(n)]
        targets = [rng.choice([40, 100, -1]) for _ in range(n)]  # −1: no constraint (plain correctness)
        b = make_batch(lengths, [float(c) for c in correct], n, metas=[{"target_length": t} for t in targets])
        for shape in ("linear", "sigmoid"):
            for form in ("add", "multiply"):
                alpha = 0.01 if shape == "sigmoid" else 0.002
                sig, mult = shape == "sigmoid", form == "multiply"
                exact = LcpoExact(alpha=alpha, form=form, shape=shape, no_target="correctness")(b).tolist()
                assert exact == pytest.approx([l1_reward(c, t, L, alpha, sig, mult)
                                               for c, t, L in zip(correct, targets, lengths)], rel=1e-12, abs=1e-12)
                mx = LcpoMax(alpha=alpha, form=form, shape=shape, no_target="correctness")(b).tolist()
                assert mx == pytest.approx([l1_reward(c, -t if t > 0 else t, L, alpha, sig, mult)
                                            for c, t, L in zip(correct, targets, lengths)], rel=1e-12, abs=1e-12)
    # the default (paper) forms are unchanged, and a missing target is still an error unless asked otherwise
    b = make_batch([30, 50], [1, 1], 2, metas=[{"target_length": 40}] * 2)
    assert LcpoMax()(b).tolist() == pytest.approx([min(1, 0.0003 * 10 + 0.5), 0.0003 * -10 + 0.5], rel=1e-12)
    with pytest.raises(ValueError, match="target length"):
        LcpoExact()(make_batch([30], [1], 1, metas=[{"target_length": -1}]))
