"""LASER, LASER-D, LASER-DE and HAPO: hand-computed values, agreement with transcriptions of the reference code, state."""

import math
import pickle
import random
from collections import defaultdict

import pytest
import torch
from conftest import make_reward_batch
from pydantic import ValidationError

from rshape.rewards.history import Hapo
from rshape.rewards.laser import Laser, LaserD, LaserDE, choose_targets, repetition_start
from rshape.tasks.base import Problem


def make_batch(lengths, correct, group_size, completions=None, truncated=None, max_new_tokens=64, **kw):
    """Reward batches whose completions default to a tagged answer, with a 64-token generation limit."""
    completions = completions or ["<answer>1</answer>" for _ in lengths]
    return make_reward_batch(lengths, correct, group_size, completions, truncated, max_new_tokens=max_new_tokens, **kw)


class FakeContext:
    """Stands in for the loop's RewardContext: a fixed monitor list, and queued monitor batches."""

    def __init__(self, monitor, batches):
        self.monitor = monitor
        self.batches = list(batches)
        self.calls = []

    def generate(self, problems, group_size):
        self.calls.append(([p.id for p in problems], group_size))
        return self.batches.pop(0)

    def logprobs(self, prompts, completion_ids):  # pragma: no cover - unused here
        raise AssertionError("laser_d must not need the policy's log-probs")


# =========================================================================== transcriptions of hkust-nlp/Laser
# verl/utils/reward_score/length_penalty.py, compute_unique_tokens.py and ray_trainer.py, commit 78b09dd,
# as plain loops over scores (1.0 correct, −0.5 wrong, −1.0 format failure) and uids.


def ref_larse(score_lst, response_length, target_length, length_reward_scalar=0.5, length_reward_type="reward"):
    score_lst = list(score_lst)
    for i in range(len(score_lst)):
        if length_reward_type == "reward":
            if score_lst[i] == 1.0 and response_length[i] <= target_length:
                score_lst[i] += length_reward_scalar
        elif length_reward_type == "penalty":
            if score_lst[i] == 1.0 and response_length[i] > target_length:
                score_lst[i] -= length_reward_scalar
        elif length_reward_type == "hybrid":
            if score_lst[i] == 1.0:
                if response_length[i] <= target_length:
                    score_lst[i] += length_reward_scalar
                else:
                    score_lst[i] -= length_reward_scalar
    return score_lst


def ref_monitor_metrics(index, correctness, response_length, length_thresholds):
    """_count_accuracy_bands_metrics: coverage of every band at every threshold."""
    id2c, id2l = defaultdict(list), defaultdict(list)
    for i in range(len(correctness)):
        id2c[index[i]].append(correctness[i])
        id2l[index[i]].append(response_length[i])
    lengths_by_band = {"low": [], "medium": [], "high": []}
    for qid in id2c:
        acc = sum(id2c[qid]) / len(id2c[qid])
        band = "low" if acc <= 1 / 3 else ("medium" if acc <= 2 / 3 else "high")
        lengths_by_band[band].extend(id2l[qid])
    metrics = {}
    for band, lengths in lengths_by_band.items():
        for t in length_thresholds:
            metrics[f"coverage_{band}_accuracy/length_{t}"] = (
                sum(1 for x in lengths if x <= t) / len(lengths) if lengths else 0.0)
    return metrics


def ref_choose_target_length(monitor_metrics, max_response_length, n_rollout, expected_n_correct, length_thresholds,
                             round_method="floor"):
    target_lengths = {}
    for level in ["low", "medium", "high"]:
        target_lengths[level] = max_response_length
        for length in length_thresholds:
            ratio = monitor_metrics[f"coverage_{level}_accuracy/length_{length}"]
            if round_method == "floor":
                lower_n = int(n_rollout * 2 / 3) if level == "high" else (int(n_rollout * 1 / 3) if level == "medium" else 1)
                lower_correct_n = int(ratio * lower_n)
            else:
                lower_n = (math.ceil(n_rollout * 2 / 3) if level == "high"
                           else (math.ceil(n_rollout * 1 / 3) if level == "medium" else 1))
                lower_correct_n = ratio * lower_n
            if lower_correct_n >= expected_n_correct and length < target_lengths[level]:
                target_lengths[level] = length
    return target_lengths


def ref_dynamic_targets(score_lst, index, target_lengths):
    id2acc = defaultdict(list)
    for i in range(len(score_lst)):
        id2acc[index[i]].append(1 if score_lst[i] == 1.0 else 0)
    out = []
    for i in range(len(score_lst)):
        acc = sum(id2acc[index[i]]) / len(id2acc[index[i]])
        if acc >= (2 / 3):
            out.append(target_lengths["high"])
        elif acc < (2 / 3) and acc >= (1 / 3):
            out.append(target_lengths["medium"])
        else:
            out.append(target_lengths["low"])
    return out


def ref_larse_d(score_lst, index, response_length, target_lengths, length_reward_scalar=0.5, length_reward_type="reward"):
    dyn = ref_dynamic_targets(score_lst, index, target_lengths)
    score_lst = list(score_lst)
    for i in range(len(score_lst)):
        if length_reward_type == "reward":
            if score_lst[i] == 1.0 and response_length[i] <= dyn[i]:
                score_lst[i] += length_reward_scalar
        elif length_reward_type == "penalty":
            if score_lst[i] == 1.0 and response_length[i] > dyn[i]:
                score_lst[i] -= length_reward_scalar
        else:
            if score_lst[i] == 1.0:
                score_lst[i] += length_reward_scalar if response_length[i] <= dyn[i] else -length_reward_scalar
    return score_lst


def ref_detect_repetition(tokens, n=4):
    if len(tokens) <= n * 2:
        return len(tokens)
    if len(tokens) < 30:
        n = 2
    elif len(tokens) < 100:
        n = 3
    else:
        n = min(4, n)
    ngram_positions = defaultdict(list)
    repeat_threshold = 2 if len(tokens) < 200 else 3
    for i in range(len(tokens) - n, -1, -1):
        ngram = tuple(tokens[i:i + n])
        if len(set(ngram)) == 1 and len(ngram) > 2:
            continue
        ngram_positions[ngram].append(i)
        if len(ngram_positions[ngram]) >= repeat_threshold:
            positions = sorted(ngram_positions[ngram])
            for j in range(len(positions) - 1):
                if positions[j + 1] - positions[j] < len(tokens) // 3:
                    return min(positions)
    if len(tokens) >= n * 4:
        pattern_positions = {}
        for i in range(len(tokens) - n * 2, -1, -1):
            pattern = tuple(tokens[i:i + n * 2])
            if pattern in pattern_positions:
                return min(i, pattern_positions[pattern])
            pattern_positions[pattern] = i
    return len(tokens)


def ref_larse_de(score_lst, index, response_length, responses, target_lengths, length_reward_scalar=0.5):
    dyn = ref_dynamic_targets(score_lst, index, target_lengths)
    score_lst = list(score_lst)
    for i in range(len(score_lst)):
        if score_lst[i] == 1.0:
            if response_length[i] <= dyn[i]:
                score_lst[i] += length_reward_scalar
        elif score_lst[i] == -0.5:
            if response_length[i] > dyn[i]:
                true_length = ref_detect_repetition(responses[i][:response_length[i]])
                if not true_length < response_length[i]:
                    score_lst[i] += length_reward_scalar
    return score_lst


def random_batch(rng, G, B, max_new_tokens, vocab=3, unparsed_p=0.2):
    lengths, correct, texts, ids = [], [], [], []
    for _ in range(B):
        p = rng.random()
        for _ in range(G):
            L = rng.randint(0, max_new_tokens)
            lengths.append(L)
            correct.append(1.0 if rng.random() < p else 0.0)
            ids.append([rng.randrange(vocab) for _ in range(L)])
            texts.append("no answer here" if (correct[-1] == 0 and rng.random() < unparsed_p) else "<answer>7</answer>")
    return lengths, correct, texts, ids


def code_scores(correct, texts):
    return [1.0 if c else (-0.5 if "<answer>" in t else -1.0) for c, t in zip(correct, texts)]


# =========================================================================== LASER


def test_laser_by_hand_variants():
    # L_T = 25: correct 10 (within), wrong 20, correct 30 (beyond), wrong 40
    b = make_batch([10, 20, 30, 40], [1, 0, 1, 0], 4)
    assert Laser(target_length=25)(b).tolist() == [1.5, -0.5, 1.0, -0.5]
    assert Laser(target_length=25, variant="penalty")(b).tolist() == [1.0, -0.5, 0.5, -0.5]
    assert Laser(target_length=25, variant="hybrid")(b).tolist() == [1.5, -0.5, 0.5, -0.5]
    assert Laser(target_length=30)(b).tolist() == [1.5, -0.5, 1.5, -0.5]  # L ≤ L_T is inclusive
    assert Laser(target_length=25, alpha=0.2, correct_score=1.0, wrong_score=0.0)(b).tolist() == pytest.approx(
        [1.2, 0.0, 1.0, 0.0])


def test_laser_target_from_budget_schedule_and_missing_target():
    b = make_batch([10, 30], [1, 1], 2, schedule={"budget": 20.0})
    assert Laser()(b).tolist() == [1.5, 1.0]
    with pytest.raises(ValueError, match="target_length"):
        Laser()(make_batch([10, 30], [1, 1], 2))


def test_laser_all_correct_all_wrong_empty_truncated_unparsed():
    texts = ["<answer>1</answer>", "", "<answer>2</answer>", "junk"]
    b = make_batch([0, 0, 64, 64], [1, 0, 0, 0], 4, completions=texts, truncated=[False, False, True, True])
    assert Laser(target_length=10)(b).tolist() == [1.5, -0.5, -0.5, -0.5]
    assert Laser(target_length=10, unparsed_score=-1.0)(b).tolist() == [1.5, -1.0, -0.5, -1.0]
    assert Laser(target_length=10)(make_batch([5, 5, 5], [1, 1, 1], 3)).tolist() == [1.5] * 3
    assert Laser(target_length=10)(make_batch([5, 5, 5], [0, 0, 0], 3)).tolist() == [-0.5] * 3


def test_laser_agrees_with_reference_code():
    rng = random.Random(0)
    for _ in range(30):
        G, B = rng.choice([2, 3, 4, 8]), rng.randint(1, 4)
        lengths, correct, texts, _ = random_batch(rng, G, B, 64)
        target = rng.randint(1, 64)
        variant = rng.choice(["step", "penalty", "hybrid"])
        code_type = {"step": "reward"}.get(variant, variant)
        b = make_batch(lengths, correct, G, completions=texts)
        got = Laser(target_length=target, variant=variant, unparsed_score=-1.0)(b).tolist()
        want = ref_larse(code_scores(correct, texts), lengths, target, 0.5, code_type)
        assert got == pytest.approx(want)


def test_laser_correct_reward_non_increasing_in_length_and_bounded():
    lengths = list(range(0, 65))
    b = make_batch(lengths, [1] * len(lengths), len(lengths))
    for variant in ("step", "penalty", "hybrid"):
        r = Laser(target_length=30, variant=variant)(b)
        assert all(x >= y for x, y in zip(r[:-1].tolist(), r[1:].tolist()))
        assert r.min() >= 0.5 and r.max() <= 1.5


# =========================================================================== repetition test and target choice


def test_repetition_by_hand():
    assert repetition_start(list(range(1, 11))) == 10  # no repeated bigram, no repeated 4-gram
    assert repetition_start([1, 2] * 5) == 6  # bigram (1,2) at 8 and 6, gap 2 < 10 // 3
    assert repetition_start([1, 2] * 4) == 8  # ≤ 2n = 8 tokens: never repetitive
    assert repetition_start([]) == 0


def test_repetition_agrees_with_reference_code():
    rng = random.Random(1)
    for _ in range(300):
        L = rng.choice([0, 5, 9, 20, 29, 31, 60, 99, 120, 210])
        toks = [rng.randrange(rng.choice([2, 5, 50])) for _ in range(L)]
        assert repetition_start(toks) == ref_detect_repetition(toks)


def test_choose_targets_by_hand():
    # G = 3: easy needs ⌊cov·2⌋ ≥ 1 (two thirds covered), medium ⌊cov·1⌋ ≥ 1 and hard 1·cov ≥ 1 (all covered)
    lengths = [10, 20, 30, 15, 25, 35, 40, 50, 60]
    correct = [1, 1, 1, 1, 1, 0, 0, 0, 0]  # accuracies 1 (easy), 2/3 (medium for the monitor), 0 (hard)
    grid = list(range(8, 72, 8))
    assert choose_targets(lengths, correct, 3, grid) == {"easy": 24, "medium": 40, "hard": 64}
    # nothing on the grid qualifies → None (no limit); an empty band never qualifies
    assert choose_targets(lengths, correct, 3, [8]) == {"easy": None, "medium": None, "hard": None}


# =========================================================================== LASER-D


def monitor_batch_1():
    # G = 3, the three groups of test_choose_targets_by_hand → targets easy 24, medium 40, hard 64
    return make_batch([10, 20, 30, 15, 25, 35, 40, 50, 60], [1, 1, 1, 1, 1, 0, 0, 0, 0], 3)


def monitor_batch_2():
    # everything shorter: easy 8 (cov(8) = 2/3), medium 16, hard 24
    return make_batch([4, 6, 30, 9, 10, 12, 20, 21, 22], [1, 1, 1, 1, 1, 0, 0, 0, 0], 3)


def training_batch(step, ctx):
    # group 0: all correct → easy; group 1: 1/3 correct → medium (scoring buckets use a ≥ 1/3); group 2: none → hard
    return make_batch([20, 24, 30, 14, 41, 50, 10, 63, 64], [1, 1, 1, 1, 0, 0, 0, 0, 0], 3,
                      step=step, max_new_tokens=64, context=ctx)


def test_laser_d_refreshes_from_monitor_every_20_steps():
    monitor = [Problem(id=f"m{i}", prompt="p", answer="1") for i in range(5)]
    ctx = FakeContext(monitor, [monitor_batch_1(), monitor_batch_2()])
    comp = LaserD(grid_step=8, monitor_size=3, initial_target=1)
    r1 = comp(training_batch(1, ctx))  # first call: refresh (the code monitors before training)
    assert ctx.calls == [(["m0", "m1", "m2"], 3)]
    assert comp.current_targets() == {"easy": 24, "medium": 40, "hard": 64}
    assert r1.tolist() == [1.5, 1.5, 1.0, 1.5, -0.5, -0.5, -0.5, -0.5, -0.5]
    for step in range(2, 21):  # no refresh until step 21 (the code: after the update of step 20)
        comp(training_batch(step, ctx))
    assert len(ctx.calls) == 1
    r21 = comp(training_batch(21, ctx))
    assert len(ctx.calls) == 2
    assert comp.current_targets() == {"easy": 8, "medium": 16, "hard": 24}
    assert r21.tolist() == [1.0, 1.0, 1.0, 1.5, -0.5, -0.5, -0.5, -0.5, -0.5]
    assert comp.state_dict() == {"targets": {"easy": 8, "medium": 16, "hard": 24}, "last_refresh": 21}


def test_laser_d_without_context_keeps_initial_targets_or_uses_batch():
    b = training_batch(1, None)
    comp = LaserD(initial_target=22)
    assert comp(b).tolist() == [1.5, 1.0, 1.0, 1.5, -0.5, -0.5, -0.5, -0.5, -0.5]
    assert comp.current_targets() == {"easy": 22, "medium": 22, "hard": 22}
    assert comp.state_dict()["last_refresh"] is None
    # no initial target: the budget schedule, else no limit
    assert LaserD()(make_batch([10, 30], [1, 1], 2, schedule={"budget": 20})).tolist() == [1.5, 1.0]
    assert LaserD()(make_batch([10, 30], [1, 1], 2)).tolist() == [1.5, 1.5]
    # monitor: batch → targets from the batch itself (G = 3, grid 8..64)
    comp = LaserD(monitor="batch", grid_step=8)
    comp(monitor_batch_1())
    assert comp.current_targets() == {"easy": 24, "medium": 40, "hard": 64}


def test_laser_d_resume_keeps_the_refresh_schedule():
    monitor = [Problem(id="m0", prompt="p", answer="1")]
    ctx = FakeContext(monitor, [monitor_batch_1(), monitor_batch_2()])
    comp = LaserD(grid_step=8)
    comp(training_batch(1, ctx))
    again = LaserD(grid_step=8)
    again.load_state_dict(pickle.loads(pickle.dumps(comp.state_dict())))
    again(training_batch(15, ctx))
    assert len(ctx.calls) == 1 and again.current_targets() == comp.current_targets()
    again(training_batch(21, ctx))
    assert len(ctx.calls) == 2


def test_laser_d_agrees_with_reference_code():
    rng = random.Random(2)
    for _ in range(30):
        G, max_new = rng.choice([3, 4, 6, 8]), 64
        m_lengths, m_correct, _, _ = random_batch(rng, G, rng.randint(1, 6), max_new)
        lengths, correct, texts, _ = random_batch(rng, G, rng.randint(1, 4), max_new)
        variant = rng.choice(["step", "penalty", "hybrid"])
        rnd = rng.choice(["floor", "ceil"])
        ctx = FakeContext([Problem(id="m", prompt="p", answer="1")], [make_batch(m_lengths, m_correct, G)])
        b = make_batch(lengths, correct, G, completions=texts, step=1, max_new_tokens=max_new, context=ctx)
        got = LaserD(grid_step=8, variant=variant, round_method=rnd, unparsed_score=-1.0)(b).tolist()
        thresholds = list(range(8, max_new + 8, 8))
        m_index = [i // G for i in range(len(m_lengths))]
        metrics = ref_monitor_metrics(m_index, m_correct, m_lengths, thresholds)
        targets = ref_choose_target_length(metrics, max(lengths), G, 1, thresholds, rnd)
        index = [i // G for i in range(len(lengths))]
        want = ref_larse_d(code_scores(correct, texts), index, lengths, targets, 0.5,
                           {"step": "reward"}.get(variant, variant))
        assert got == pytest.approx(want)


def test_laser_d_is_group_relative():
    one = make_batch([20, 24, 30], [1, 1, 1], 3)
    two = make_batch([20, 24, 30, 5, 6, 7], [1, 1, 1, 0, 1, 0], 3)
    comp = LaserD(initial_target=25)
    assert comp(two)[:3].tolist() == comp(one).tolist()


# =========================================================================== LASER-DE


def test_laser_de_exploration_by_hand():
    varied = list(range(1, 41))  # 40 distinct tokens: not repetitive
    loop = [1, 2, 3] * 14  # repetitive
    ids = [varied[:10], varied, loop[:40], varied, varied]
    texts = ["<answer>1</answer>", "<answer>2</answer>", "<answer>2</answer>", "no answer", "<answer>2</answer>"]
    b = make_batch([10, 40, 40, 40, 40], [1, 0, 0, 0, 0], 5, completions=texts, ids=ids,
                   truncated=[False, False, False, False, True])
    r = LaserDE(initial_target=20)(b).tolist()
    # correct & short: +α; wrong, long, parsed, varied: +α; repetitive: none; unparsed: none; truncated: none
    assert r == [1.5, 0.0, -0.5, -0.5, -0.5]
    # wrong answers within the target get nothing
    assert LaserDE(initial_target=64)(b).tolist() == [1.5, -0.5, -0.5, -0.5, -0.5]


def test_laser_de_agrees_with_reference_code():
    rng = random.Random(3)
    for _ in range(30):
        G, max_new = rng.choice([3, 4, 8]), 64
        m_lengths, m_correct, _, _ = random_batch(rng, G, rng.randint(1, 6), max_new)
        lengths, correct, texts, ids = random_batch(rng, G, rng.randint(1, 4), max_new, vocab=rng.choice([3, 40]))
        ctx = FakeContext([Problem(id="m", prompt="p", answer="1")], [make_batch(m_lengths, m_correct, G)])
        b = make_batch(lengths, correct, G, completions=texts, ids=ids, step=1, max_new_tokens=max_new, context=ctx)
        got = LaserDE(grid_step=8, unparsed_score=-1.0)(b).tolist()
        thresholds = list(range(8, max_new + 8, 8))
        metrics = ref_monitor_metrics([i // G for i in range(len(m_lengths))], m_correct, m_lengths, thresholds)
        targets = ref_choose_target_length(metrics, max(lengths), G, 1, thresholds)
        want = ref_larse_de(code_scores(correct, texts), [i // G for i in range(len(lengths))], lengths, ids, targets)
        assert got == pytest.approx(want)


# =========================================================================== LASER common


def test_laser_family_pickles_ignores_kwargs_and_rejects_bad_params():
    monitor = [Problem(id="m0", prompt="p", answer="1")]
    for comp in (Laser(target_length=25), LaserD(grid_step=8), LaserDE(grid_step=8)):
        b = training_batch(1, FakeContext(monitor, [monitor_batch_1()]))
        first = comp(b, unused="x")
        again = pickle.loads(pickle.dumps(comp))
        b2 = training_batch(2, None)
        assert again(b2).tolist() == comp(b2).tolist()
        assert first.shape == (9,) and first.dtype == torch.float64
    for cls, bad, field in [(Laser, {"alpha": -1}, "alpha"), (Laser, {"variant": "cliff"}, "variant"),
                            (Laser, {"target_length": 0}, "target_length"), (LaserD, {"update_every": 0}, "update_every"),
                            (LaserD, {"monitor": "policy"}, "monitor"), (LaserDE, {"grid_step": -8}, "grid_step"),
                            (LaserDE, {"variant": "step"}, "variant")]:
        with pytest.raises(ValidationError) as exc:
            cls.model_validate(bad)
        assert field in str(exc.value)


def test_laser_d_state_is_shared_by_shallow_copies():
    comp = LaserD(monitor="batch", grid_step=8)
    copy = comp.model_copy(update={"alpha": 0.25})
    copy(monitor_batch_1())
    assert comp.current_targets() == {"easy": 24, "medium": 40, "hard": 64}


def test_laser_d_needs_a_generation_limit_for_its_grid():
    with pytest.raises(ValueError, match="max_new_tokens"):
        LaserD(monitor="batch")(make_batch([1, 2], [1, 0], 2, max_new_tokens=0))


# =========================================================================== HAPO
# Transcription of HCY123902/HAPO utils.py (compute_len_reward, compute_len_reward_linear) and grpo_trainer.py
# (combined_reward_func, single process, rep_penalty = 0).

MAX_LEN = 100000


def ref_len_reward(history_len, seq_len, is_corr, w_lr):
    if history_len < MAX_LEN and history_len > 0:
        r = math.cos((seq_len / history_len) * (math.pi / 2)) if seq_len < 2 * history_len else math.cos(math.pi)
        r = max(-0.7, r) if is_corr else min(0, r)
    else:
        r = 0
    return r * w_lr


def ref_len_reward_linear(history_len, seq_len, is_corr, tolerance_ratio, w_lr):
    if history_len < MAX_LEN and history_len > 0:
        if is_corr:
            if seq_len < history_len:
                r = 1.0 - seq_len / history_len
            elif seq_len >= history_len and seq_len < (1 + tolerance_ratio) * history_len:
                r = 0
            else:
                r = max(-0.7, -1.0 * ((seq_len - (1 + tolerance_ratio) * history_len) / history_len))
        else:
            if seq_len < (1 + tolerance_ratio) * history_len:
                r = 0
            else:
                r = max(-1.0, -1.0 * ((seq_len - (1 + tolerance_ratio) * history_len) / history_len))
    else:
        r = 0
    return r * w_lr


class RefTracker:
    def __init__(self, w_lr=1.0, type_lr="cosine", mode="min"):
        self.lens = defaultdict(lambda: float(MAX_LEN))
        self.count = defaultdict(float)
        self.w_lr, self.type_lr, self.mode = w_lr, type_lr, mode

    def __call__(self, lengths, corrects, prompt_idx):
        rewards = []
        curr = {p: [] for p in prompt_idx}
        for seq_len, r_corr, p in zip(lengths, corrects, prompt_idx):
            h = self.lens[p]
            if self.type_lr == "cosine":
                r_len = ref_len_reward(h, seq_len, r_corr >= 1.0, self.w_lr)
            else:
                r_len = ref_len_reward_linear(h, seq_len, r_corr >= 1.0, 0.1, self.w_lr)
            rewards.append(r_corr + r_len)
            if r_corr >= 1:
                curr[p].append(seq_len)
        for p in prompt_idx:
            if len(curr[p]) == 0:
                continue
            if self.mode == "min":
                self.lens[p] = min(min(curr[p]), self.lens[p])
            else:
                mean = sum(curr[p]) / len(curr[p])
                if self.count[p] <= 0:
                    self.lens[p] = mean
                else:
                    ratio = len(curr[p]) / (self.count[p] + len(curr[p]))
                    self.lens[p] = ratio * mean + (1 - ratio) * self.lens[p]
                self.count[p] = self.count[p] + len(curr[p])
        return rewards


def test_hapo_two_steps_by_hand_cosine():
    hapo = Hapo()
    s1 = make_batch([40, 20, 60, 10], [1, 1, 0, 0], 4, prompt_ids=["a"] * 4)
    assert hapo(s1).tolist() == [1.0, 1.0, 0.0, 0.0]  # no history yet: no length term
    assert hapo.history() == {"a": 20.0}  # updated after scoring
    s2 = make_batch([10, 20, 30, 45], [1, 1, 0, 1], 4, prompt_ids=["a"] * 4)
    # h = 20: cos(π/4) = 0.7071; cos(π/2) = 0; wrong cos(3π/4) = −0.7071; L ≥ 2h → −1 → max(−1, −0.7)
    assert hapo(s2).tolist() == pytest.approx([1 + math.sqrt(0.5), 1.0, -math.sqrt(0.5), 0.3], abs=1e-6)
    assert hapo.history() == {"a": 10.0}
    half = Hapo(length_weight=0.5)
    half(s1)
    assert half(s2).tolist() == pytest.approx([1 + 0.5 * math.sqrt(0.5), 1.0, -0.5 * math.sqrt(0.5), 0.65], abs=1e-6)


def test_hapo_two_steps_by_hand_linear():
    hapo = Hapo(shape="linear")
    hapo(make_batch([40, 20, 60, 10], [1, 1, 0, 0], 4, prompt_ids=["a"] * 4))
    # h = 20, tolerance edge 22: 1 − 10/20; in [h, 1.1h) → 0; wrong −(30 − 22)/20; correct −(45 − 22)/20 → −0.7
    r = hapo(make_batch([10, 20, 30, 45], [1, 1, 0, 1], 4, prompt_ids=["a"] * 4))
    assert r.tolist() == pytest.approx([1.5, 1.0, -0.4, 0.3])


def test_hapo_history_is_per_prompt_and_zero_means_none():
    hapo = Hapo()
    hapo(make_batch([5, 9, 0, 3], [1, 0, 1, 0], 2, prompt_ids=["a", "a", "b", "b"]))
    assert hapo.history() == {"a": 5.0, "b": 0.0}
    r = hapo(make_batch([5, 9, 0, 3], [1, 0, 1, 0], 2, prompt_ids=["a", "a", "b", "b"]))
    # a: h = 5, L = 5 → cos(π/2) ≈ 0; L = 9 wrong → cos(0.9π) < 0. b: h = 0 counts as no history (code: h > 0)
    assert r.tolist() == pytest.approx([1.0, math.cos(0.9 * math.pi), 1.0, 0.0], abs=1e-6)


def test_hapo_agrees_with_reference_code():
    rng = random.Random(4)
    for shape in ("cosine", "linear"):
        for mode in ("min", "mean"):
            w = rng.choice([1.0, 0.5, 0.3])
            hapo, ref = Hapo(shape=shape, mode=mode, length_weight=w), RefTracker(w, shape, mode)
            for step in range(8):
                G = 4
                # one group per prompt and batch, as in the code's setting (its per-completion loop then
                # repeats the mean update G times per prompt, which telescopes to the plain running mean)
                pids = [p for p in rng.sample("abcde", 3) for _ in range(G)]
                lengths = [rng.randint(0, 60) for _ in pids]
                correct = [float(rng.random() < 0.5) for _ in pids]
                got = hapo(make_batch(lengths, correct, G, prompt_ids=pids, step=step)).tolist()
                assert got == pytest.approx(ref(lengths, correct, pids), abs=1e-6)


def test_hapo_correct_always_beats_wrong_and_is_bounded():
    hapo = Hapo()
    hapo(make_batch([30, 30], [1, 1], 2, prompt_ids=["a", "a"]))
    lengths = list(range(0, 100))
    right = hapo(make_batch(lengths, [1] * 100, 100, prompt_ids=["a"] * 100))
    hapo.load_state_dict({"history": {"a": 30.0}})
    wrong = hapo(make_batch(lengths, [0] * 100, 100, prompt_ids=["a"] * 100))
    assert right.min() >= 0.3 and right.max() <= 2.0 and wrong.max() <= 0.0 and wrong.min() >= -1.0
    assert right.min() > wrong.max()
    assert all(x >= y - 1e-9 for x, y in zip(right[:-1].tolist(), right[1:].tolist()))  # non-increasing in L


def test_hapo_history_survives_pickle_and_state_dict():
    hapo = Hapo()
    hapo(make_batch([12, 7], [1, 1], 2, prompt_ids=["q", "q"]))
    again = pickle.loads(pickle.dumps(hapo))
    assert again.history() == {"q": 7.0}
    fresh = Hapo()
    fresh.load_state_dict(pickle.loads(pickle.dumps(hapo.state_dict())))
    b = make_batch([7, 14, 3], [1, 0, 1], 3, prompt_ids=["q"] * 3)
    assert fresh(b, unused=1).tolist() == again(b).tolist() == hapo(b).tolist()
    # shallow copies (scheduled parameters) share the same history
    copy = fresh.model_copy(update={"weight": 0.5})
    copy(make_batch([2, 3], [1, 1], 2, prompt_ids=["z", "z"]))
    assert fresh.history()["z"] == 2.0


def test_hapo_without_correctness_and_bad_params():
    hapo = Hapo(include_correctness=False)
    assert hapo(make_batch([3, 4], [1, 0], 2)).tolist() == [0.0, 0.0]
    for bad, field in [({"weight": 1.5}, "weight"), ({"shape": "exp"}, "shape"), ({"mode": "max"}, "mode"),
                       ({"correct_floor": 0.5}, "correct_floor"), ({"tolerance": -0.1}, "tolerance")]:
        with pytest.raises(ValidationError) as exc:
            Hapo.model_validate(bad)
        assert field in str(exc.value)


def test_laser_d_grid_follows_the_code():
    """hkust-nlp/Laser verl/utils/reward_score/constants.py::get_length_threshold, transcribed: a lower bound under
    the interval (1024 there) is followed by the interval's multiples."""
    from rshape.rewards.laser import length_grid

    def reference(lower, upper, interval):
        if lower < 1024:
            return [lower] + list(range(1024, upper + interval, interval))
        return list(range(lower, upper + interval, interval))

    for lower, upper in ((512, 16384), (256, 8192), (1024, 16384), (4096, 16384), (2048, 8000)):
        assert length_grid(upper, 1024, lower) == reference(lower, upper, 1024), (lower, upper)
    assert length_grid(128, 8, 3) == [3, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104, 112, 120, 128]
    assert length_grid(128, None, None) == list(range(8, 136, 8))  # step = 128 // 16, start = step
