"""The advantage-estimator menu of docs/methods.md: hand values, plain-loop transcriptions of the reference
code (OpenRLHF, verl/DLER, Optimization-AI/DRPO, biuboomc/CANON, CodeGoat24/Pref-GRPO), DRPO's gradient."""

import itertools
import math
import random

import pytest
import torch
from conftest import make_reward_batch

from rshape.rl.advantages import (
    ADVANTAGES,
    AdvantageInputs,
    batch_norm_advantages,
    canon_advantages,
    check_advantage_params,
    dr_grpo_advantages,
    drpo_advantages,
    pref_grpo_advantages,
    reinforce_pp_baseline_advantages,
    rloo_advantages,
)
from rshape.rl.loss import clipped_policy_loss

NAMES = ["dr_grpo", "rloo", "reinforce_pp_baseline", "batch_norm", "drpo", "canon", "pref_grpo"]


def inputs(r, g, lengths=None, correct=None, max_new_tokens=10, logp=None, ent=None):
    r = torch.as_tensor(r, dtype=torch.float32)
    n = len(r)
    lengths = torch.as_tensor(lengths if lengths is not None else [1] * n, dtype=torch.long).tolist()
    correct = torch.as_tensor(correct if correct is not None else (r > 0.5).float().tolist(), dtype=torch.float32)
    return AdvantageInputs(
        rewards=r, batch=make_reward_batch(lengths, correct.tolist(), g, max_new_tokens=max_new_tokens),
        seq_logprobs=None if logp is None else torch.as_tensor(logp, dtype=torch.float32),
        seq_entropies=None if ent is None else torch.as_tensor(ent, dtype=torch.float32))


def random_inputs(seed, B, G, C=12):
    rng = random.Random(seed)
    n = B * G
    correct = [float(rng.random() < 0.5) for _ in range(n)]
    if B > 1:  # make sure an all-correct and an all-wrong group are present
        correct[:G] = [1.0] * G
        correct[G:2 * G] = [0.0] * G
    rewards = [c + rng.choice([0.0, 0.0, 0.25, -0.5, rng.uniform(-1, 1)]) for c in correct]
    lengths = [rng.choice([0, 3, 5, 5, C - 1, C, rng.randint(0, C)]) for _ in range(n)]
    logp = [-rng.uniform(0.05, 3.0) for _ in range(n)]
    ent = [rng.choice([0.5, rng.uniform(0, 2)]) for _ in range(n)]
    return inputs(rewards, G, lengths, correct, C, logp, ent)


def tokens(L, C):
    return min(L + 1, C)  # loss-mask tokens, EOS included


# ----------------------------------------------------------------------------- plain-loop references


def loop_dr_grpo(x):
    r, G = x.rewards.tolist(), x.group_size
    out = []
    for b in range(len(r) // G):
        grp = r[b * G:(b + 1) * G]
        out += [v - sum(grp) / G for v in grp]
    return out


def loop_rloo(x):  # OpenRLHF: baseline = (sum − r_i)/(G − 1)
    r, G = x.rewards.tolist(), x.group_size
    out = []
    for b in range(len(r) // G):
        grp = r[b * G:(b + 1) * G]
        out += [v - (sum(grp) - v) / (G - 1) for v in grp]
    return out


def loop_whiten(x, weighting, bessel, boost=0.0, threshold=1.0):
    """OpenRLHF (bessel=False: population var, clamp 1e-8) / verl masked_whiten (bessel=True, + 1e-8), over
    a token-expanded list: each completion's scalar advantage repeated over its loss-mask tokens."""
    r, G, C = x.rewards.tolist(), x.group_size, x.max_new_tokens
    a = []
    for b in range(len(r) // G):
        grp = r[b * G:(b + 1) * G]
        a += [v - (sum(grp) / G if G > 1 else 0.0) for v in grp]
    reps = [tokens(L, C) if weighting == "token" else 1 for L in x.lengths.tolist()]
    flat = [v for v, k in zip(a, reps) for _ in range(k)]
    mean = sum(flat) / len(flat)
    var = sum((v - mean) ** 2 for v in flat) / len(flat)
    if bessel:
        var = var * len(flat) / (len(flat) - 1)
        rstd = 1 / math.sqrt(var + 1e-8)
    else:
        rstd = 1 / math.sqrt(max(var, 1e-8))
    return [(v - mean) * rstd + (boost if rv >= threshold - 1e-5 else 0.0) for v, rv in zip(a, r)]


def loop_drpo(x, lam=0.1, tau=10.0):
    """Transcribed from compute_policy_loss_drpo: d(pg_loss)/d(score), times G (sequences per question)."""
    s, c, L, G, C = x.seq_logprobs.tolist(), x.correct.tolist(), x.lengths.tolist(), x.group_size, x.max_new_tokens
    out = []
    for b in range(len(s) // G):
        idx = range(b * G, (b + 1) * G)
        pos = [i for i in idx if c[i] == 1]
        neg = [i for i in idx if c[i] == 0]
        if not pos or not neg:
            out += [0.0] * G
            continue
        weight = {i: math.exp((1 - tokens(L[i], C) / C) / lam) for i in pos}
        wsum = sum(weight.values())
        z = max(s[j] / tau for j in neg)
        e = {j: math.exp(s[j] / tau - z) for j in neg}
        esum = sum(e.values())
        for i in idx:
            out.append(G * (weight[i] / wsum if i in weight else -e[i] / esum))
    return out


def loop_canon(x, metric="length", alpha=1.0, beta=0.0, lam=1.0, max_length=1.0):
    """Transcribed from compute_dr_length_on_mean_group_outcome_advantage / ..._entropy_per_token_group_..."""
    scores, G = x.rewards.tolist(), x.group_size
    key = [tokens(L, x.max_new_tokens) for L in x.lengths.tolist()] if metric == "length" else x.seq_entropies.tolist()
    out = [0.0] * len(scores)
    for b in range(len(scores) // G):
        ids = list(range(b * G, (b + 1) * G))
        paired = sorted(zip([key[i] for i in ids], [scores[i] for i in ids], ids), key=lambda t: t[0])
        mid = len(paired) // 2
        is_long = {item: i >= mid for i, (_, _, item) in enumerate(paired)}
        short = [sc for (_, sc, _) in paired[:mid]]
        long_ = [sc for (_, sc, _) in paired[mid:]]
        ms, ml = (0.0, 0.0) if G == 1 else (sum(short) / len(short), sum(long_) / len(long_))
        for i in ids:
            v = scores[i]
            if metric == "length":
                if is_long[i]:
                    out[i] = (lam * (alpha * v - ms + beta) + (1 - lam) * (v - ml)) / max_length
                else:
                    out[i] = (lam * (v - alpha * ml - beta) + (1 - lam) * (v - ms)) / max_length
            else:
                if is_long[i]:
                    out[i] = (lam * (v - alpha * ms + beta) + (1 - lam) * (v - ml)) / max_length
                else:
                    out[i] = (lam * (alpha * v - ml - beta) + (1 - lam) * (v - ms)) / max_length
    return out


def loop_pref_grpo(x, adv_clip_max=5.0, ndigits=3):
    """Transcribed from cal_win_rate + the use_group normalisation + the advantage clamp."""
    r, G = x.rewards.tolist(), x.group_size
    out = []
    for b in range(len(r) // G):
        grp = r[b * G:(b + 1) * G]
        win, cnt = [0.0] * G, [0] * G
        for (i, ri), (j, rj) in itertools.combinations(enumerate(grp), 2):
            cnt[i] += 1
            cnt[j] += 1
            if ri > rj:
                win[i] += 1
            elif rj > ri:
                win[j] += 1
            else:
                win[i] += 0.5
                win[j] += 0.5
        w = [round(win[i] / cnt[i], ndigits) for i in range(G)]
        m = sum(w) / G
        sd = math.sqrt(sum((v - m) ** 2 for v in w) / (G - 1)) + 1e-8
        out += [min(max((v - m) / sd, -adv_clip_max), adv_clip_max) for v in w]
    return out


def close(a, b, tol=1e-5):
    assert a.shape == (len(b),)
    assert torch.allclose(a.double(), torch.tensor(b, dtype=torch.float64), rtol=tol, atol=tol), (a.tolist(), b)


# ----------------------------------------------------------------------------- registry and parameters


def test_registered_with_signatures():
    for name in NAMES:
        fn = ADVANTAGES.get(name)
        assert check_advantage_params(fn, {}) == []
        assert check_advantage_params(fn, {"bogus": 1})[0][0] == ("bogus",)
    assert ADVANTAGES.get("drpo").needs == {"seq_logprobs"}
    assert ADVANTAGES.get("canon").needs(metric="entropy") == {"seq_entropies"}
    assert ADVANTAGES.get("canon").needs() == set()
    assert check_advantage_params(drpo_advantages, {"lam": 0.2, "tau": 5}) == []
    assert check_advantage_params(canon_advantages, {"metric": "entropy", "l_max": "max_new_tokens", "mu": 0.5}) == []
    assert check_advantage_params(pref_grpo_advantages, {"adv_clip_max": 3.0, "decimals": -1}) == []
    assert check_advantage_params(batch_norm_advantages, {"correct_boost": 0.0}) == []


@pytest.mark.parametrize("fn, kw, field", [
    (drpo_advantages, {"lam": 0}, "lam"), (drpo_advantages, {"tau": -1.0}, "tau"),
    (canon_advantages, {"metric": "size"}, "metric"), (canon_advantages, {"mu": 1.5}, "mu"),
    (canon_advantages, {"l_max": 0}, "l_max"), (canon_advantages, {"l_max": "max_len"}, "l_max"),
    (pref_grpo_advantages, {"adv_clip_max": 0}, "adv_clip_max"), (pref_grpo_advantages, {"decimals": 1.5}, "decimals"),
    (reinforce_pp_baseline_advantages, {"weighting": "prompt"}, "weighting"),
    (batch_norm_advantages, {"var_eps": 0}, "var_eps"),
])
def test_bad_parameters_name_the_field(fn, kw, field):
    x = inputs([1, 0, 0, 1], 4, logp=[-1.0] * 4, ent=[1.0] * 4)
    with pytest.raises(ValueError, match=field):
        fn(x, **kw)


def test_missing_policy_statistics_is_a_clear_error():
    x = inputs([1, 0, 0, 1], 4)
    with pytest.raises(ValueError, match="seq_logprobs"):
        drpo_advantages(x)
    with pytest.raises(ValueError, match="seq_entropies"):
        canon_advantages(x, metric="entropy")
    canon_advantages(x)  # length needs nothing


def test_group_of_one_rejected_where_undefined():
    x = inputs([1.0, 0.0], 1)
    for fn in (rloo_advantages, pref_grpo_advantages):
        with pytest.raises(ValueError, match="at least 2"):
            fn(x)


# ----------------------------------------------------------------------------- hand values


def test_dr_grpo_by_hand():
    x = inputs([1, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 3, 3, 3, 3], 4)  # mixed, all-correct, all-wrong, all-equal
    assert dr_grpo_advantages(x).tolist() == [0.5, -0.5, -0.5, 0.5] + [0.0] * 12
    assert dr_grpo_advantages(inputs([2.0, 0.5], 2)).tolist() == [0.75, -0.75]


def test_rloo_by_hand():
    a = rloo_advantages(inputs([1, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0], 4))
    third = 1 / 3
    close(a, [1 - third, -2 * third, -2 * third, 1 - third] + [0.0] * 8)
    assert rloo_advantages(inputs([2.0, 0.5], 2)).tolist() == [1.5, -1.5]  # G = 2: r_i − r_j


def test_reinforce_pp_baseline_by_hand():
    # group A: rewards 1, 0 (a = ±0.5), group B all-correct (a = 0); lengths → tokens 2, 4, 1, 1 (C = 10)
    x = inputs([1, 0, 1, 1], 2, lengths=[1, 3, 0, 0])
    # token weighting: flat = [.5,.5,-.5,-.5,-.5,-.5,0,0]: mean = -1/8; var = (2·.625² + 4·.375² + 2·.125²)/8
    mean = -1 / 8
    var = (2 * 0.625**2 + 4 * 0.375**2 + 2 * 0.125**2) / 8
    close(reinforce_pp_baseline_advantages(x), [(a - mean) / math.sqrt(var) for a in (0.5, -0.5, 0.0, 0.0)])
    # sequence weighting: a = [.5, -.5, 0, 0]: mean 0, population var 1/8
    close(reinforce_pp_baseline_advantages(x, weighting="sequence"), [0.5 * math.sqrt(8), -0.5 * math.sqrt(8), 0.0, 0.0])
    # every group constant: all advantages 0 (variance clamped, no division by zero)
    assert reinforce_pp_baseline_advantages(inputs([1, 1, 0, 0], 2)).tolist() == [0.0] * 4


def test_batch_norm_by_hand():
    x = inputs([1, 0, 1, 1], 2, lengths=[1, 3, 0, 0])
    mean = -1 / 8
    var = (2 * 0.625**2 + 4 * 0.375**2 + 2 * 0.125**2) / 7 + 1e-8  # Bessel over the 8 tokens, eps added
    plain = [(a - mean) / math.sqrt(var) for a in (0.5, -0.5, 0.0, 0.0)]
    close(batch_norm_advantages(x, correct_boost=0.0), plain)
    close(batch_norm_advantages(x), [plain[0] + 0.1, plain[1], plain[2] + 0.1, plain[3] + 0.1])  # reward ≥ 1 boosted
    # a truncated correct answer scaled to 0.1 by DLER's stop-properly penalty is not boosted
    close(batch_norm_advantages(inputs([0.1, 0.0], 2), weighting="sequence") - batch_norm_advantages(
        inputs([0.1, 0.0], 2), weighting="sequence", correct_boost=0.0), [0.0, 0.0])


def test_drpo_by_hand():
    # group 1: correct, correct, wrong, wrong; lengths 3, 7 → 4, 8 mask tokens of C = 10; group 2 all correct
    x = inputs([1, 1, 0, 0, 1, 1, 1, 1], 4, lengths=[3, 7, 5, 9, 1, 2, 3, 4], max_new_tokens=10,
               logp=[-0.5, -0.7, -1.0, -3.0, -1, -1, -1, -1])
    w1 = 1 / (1 + math.exp(-4))  # softmax([6, 2])
    p1 = 1 / (1 + math.exp(-0.2))  # softmax([-0.1, -0.3])
    close(drpo_advantages(x), [4 * w1, 4 * (1 - w1), -4 * p1, -4 * (1 - p1)] + [0.0] * 4)
    # all-wrong group and groups of two
    y = inputs([0, 0, 1, 0], 2, correct=[0, 0, 1, 0], logp=[-1, -2, -1, -2])
    close(drpo_advantages(y), [0.0, 0.0, 2.0, -2.0])
    # λ → ∞: uniform weights over the positives (DisCO)
    close(drpo_advantages(x, lam=1e9)[:2], [2.0, 2.0])


def test_canon_by_hand():
    # lengths 9, 1, 5, 3 → sorted 1, 3 | 5, 9: S = {1, 3} (rewards 1, 1), H = {0, 2} (rewards 0, 1)
    x = inputs([0, 1, 1, 1], 4, lengths=[9, 1, 5, 3], max_new_tokens=20)
    mean_s, mean_h = 1.0, 0.5
    close(canon_advantages(x), [0 - mean_s, 1 - mean_h, 1 - mean_s, 1 - mean_h])  # μ = 1
    mu, al, be = 0.25, 2.0, 0.1
    hi = [mu * (al * r - mean_s + be) + (1 - mu) * (r - mean_h) for r in (0, 1)]
    lo = [mu * (r - al * mean_h - be) + (1 - mu) * (r - mean_s) for r in (1, 1)]
    close(canon_advantages(x, mu=mu, alpha=al, beta=be, l_max=4), [hi[0] / 4, lo[0] / 4, hi[1] / 4, lo[1] / 4])
    close(canon_advantages(x, l_max="max_new_tokens"), [v / 20 for v in (-1.0, 0.5, 0.0, 0.5)])
    # all-equal rewards, all-correct, all-wrong: 0 at the defaults; G = 2: short − long
    assert canon_advantages(inputs([1, 1, 1, 1, 0, 0, 0, 0], 4, lengths=[1, 2, 3, 4] * 2)).tolist() == [0.0] * 8
    close(canon_advantages(inputs([1, 0], 2, lengths=[8, 2])), [1.0, -1.0])  # long correct vs short wrong
    # ties in the metric keep the sampling order (stable sort): equal lengths → first half is S
    close(canon_advantages(inputs([1, 0, 0, 0], 4, lengths=[5] * 4)), [1 - 0.0, 0 - 0.0, 0 - 0.5, 0 - 0.5])
    # entropy variant with α ≠ 1 puts α on the other side
    e = inputs([0, 1, 1, 1], 4, ent=[0.9, 0.1, 0.5, 0.3])
    close(canon_advantages(e, metric="entropy", alpha=2.0), [0 - 2 * 1.0, 2 * 1 - 0.5, 1 - 2 * 1.0, 2 * 1 - 0.5])


def test_pref_grpo_by_hand():
    # rewards 3, 1, 1, 0: wins 3, 1.5, 1.5, 0 out of 3 → 1, .5, .5, 0
    x = inputs([3, 1, 1, 0], 4)
    w = [1.0, 0.5, 0.5, 0.0]
    sd = math.sqrt(sum((v - 0.5) ** 2 for v in w) / 3) + 1e-8
    close(pref_grpo_advantages(x), [(v - 0.5) / sd for v in w])
    # tiny gaps are not amplified beyond rank order: the same as a large gap
    close(pref_grpo_advantages(inputs([1.0001, 1, 1, 0], 4)), pref_grpo_advantages(x).tolist())
    # all-equal, all-correct, all-wrong → 0; G = 2 → ±1/√2
    assert pref_grpo_advantages(inputs([1, 1, 0, 0, 2, 2], 2)).tolist() == [0.0] * 6
    close(pref_grpo_advantages(inputs([1, 0], 2)), [1 / math.sqrt(2), -1 / math.sqrt(2)])
    # clamp at ±5: one winner among 30 would get (G − 1)/√G ≈ 5.29
    a = pref_grpo_advantages(inputs([1.0] + [0.0] * 29, 30))
    assert a[0].item() == pytest.approx(5.0)
    # rounding to 3 places as the reference: win = 14/29 = 0.48275.. → 0.483
    assert pref_grpo_advantages(inputs([1.0] + [0.0] * 29, 30), adv_clip_max=100, decimals=-1)[0].item() == pytest.approx(
        29 / math.sqrt(30), rel=1e-5)


# ----------------------------------------------------------------------------- properties


def test_drpo_properties():
    for seed in range(20):
        x = random_inputs(seed, B=4, G=6)
        a = drpo_advantages(x).view(4, 6)
        c = x.correct.view(4, 6) > 0.5
        assert (a[c] >= 0).all() and (a[~c] <= 0).all()  # correct answers never pushed down
        mixed = c.any(1) & (~c).any(1)
        assert torch.allclose(a[mixed].sum(1), torch.zeros(int(mixed.sum())), atol=1e-5)  # G·(1 − 1) per group
        assert (a[~mixed] == 0).all()
        # length never touches negatives: change every length, the wrong answers' advantages stay
        y = inputs(x.rewards, 6, torch.randint(0, 12, (24,)).tolist(), x.correct, 12, x.seq_logprobs)
        b = drpo_advantages(y).view(4, 6)
        assert torch.equal(a[~c], b[~c])
        # among the correct answers of a group, shorter gets at least as much
        for g in range(4):
            idx = [i for i in range(6) if c[g, i]]
            for i, j in itertools.permutations(idx, 2):
                if x.lengths[g * 6 + i] < x.lengths[g * 6 + j]:
                    assert a[g, i] >= a[g, j]


@pytest.mark.parametrize("name", ["dr_grpo", "rloo", "drpo", "canon", "pref_grpo"])
def test_group_relative_estimators_ignore_other_groups(name):
    fn = ADVANTAGES.get(name)
    x = random_inputs(3, B=3, G=4)
    y = random_inputs(4, B=3, G=4)
    for f in ("rewards", "lengths", "correct", "seq_logprobs", "seq_entropies"):  # same first group, other groups differ
        getattr(y, f)[:4] = getattr(x, f)[:4]
    assert torch.equal(fn(x)[:4], fn(y)[:4])


# ----------------------------------------------------------------------------- vectorised == plain loop


@pytest.mark.parametrize("seed, B, G", [(0, 4, 2), (1, 3, 3), (2, 5, 4), (3, 2, 7), (4, 6, 8), (5, 1, 5)])
def test_vectorised_matches_reference_loops(seed, B, G):
    x = random_inputs(seed, B, G)
    close(dr_grpo_advantages(x), loop_dr_grpo(x))
    close(rloo_advantages(x), loop_rloo(x))
    for weighting in ("token", "sequence"):
        close(reinforce_pp_baseline_advantages(x, weighting=weighting), loop_whiten(x, weighting, bessel=False))
        close(batch_norm_advantages(x, weighting=weighting), loop_whiten(x, weighting, bessel=True, boost=0.1))
        close(batch_norm_advantages(x, weighting=weighting, correct_boost=0.0, boost_threshold=0.5),
              loop_whiten(x, weighting, bessel=True))
    for lam, tau in ((0.1, 10.0), (0.5, 1.0)):
        close(drpo_advantages(x, lam=lam, tau=tau), loop_drpo(x, lam, tau))
    for metric in ("length", "entropy"):
        for alpha, beta, mu, l_max in ((1.0, 0.0, 1.0, 1.0), (1.5, 0.2, 0.3, 7.0), (0.5, -0.1, 0.0, 1.0)):
            close(canon_advantages(x, metric=metric, alpha=alpha, beta=beta, mu=mu, l_max=l_max),
                  loop_canon(x, metric, alpha, beta, mu, l_max))
    close(pref_grpo_advantages(x), loop_pref_grpo(x))
    close(pref_grpo_advantages(x, adv_clip_max=1.0, decimals=2), loop_pref_grpo(x, 1.0, 2))


def test_group_of_one_conventions():
    x = inputs([1.0, 0.0, 0.5], 1, lengths=[1, 2, 3])
    close(canon_advantages(x), [1.0, 0.0, 0.5])  # the reference's half means are 0
    close(batch_norm_advantages(x, weighting="sequence", correct_boost=0.0), loop_whiten(x, "sequence", bessel=True))
    close(reinforce_pp_baseline_advantages(x, weighting="sequence"), loop_whiten(x, "sequence", bessel=False))


# ----------------------------------------------------------------------------- DRPO: the gradient is DRPO's


def drpo_objective(s, correct, lengths, G, C, lam=0.1, tau=10.0):
    """−mean_q J_q written directly, J_q = Σ_P w̃·s − τ·log Σ_N exp(s/τ); Q counts every question."""
    Q = len(s) // G
    total = 0.0
    for b in range(Q):
        idx = list(range(b * G, (b + 1) * G))
        pos = [i for i in idx if correct[i] == 1]
        neg = [i for i in idx if correct[i] == 0]
        if not pos or not neg:
            continue
        w = torch.softmax(torch.tensor([(1 - min(lengths[i] + 1, C) / C) / lam for i in pos], dtype=torch.float64), 0)
        total = total + (w * s[pos]).sum() - tau * torch.logsumexp(s[neg] / tau, 0)
    return -total / Q


@pytest.mark.parametrize("seed", range(5))
def test_drpo_gradient_equals_direct_objective(seed):
    B, G, C = 4, 5, 12
    x = random_inputs(seed, B, G, C)
    s = x.seq_logprobs.double().clone().requires_grad_(True)
    drpo_objective(s, x.correct.tolist(), x.lengths.tolist(), G, C).backward()
    direct = s.grad.clone()
    a = drpo_advantages(x).double()
    s.grad = None
    (-(a * s).sum() / (B * G)).backward()  # the `grpo` aggregation at ratio 1: −mean_i A_i·s_i
    assert torch.allclose(s.grad, direct, rtol=1e-5, atol=1e-7)


def test_drpo_gradient_through_the_loop_loss():
    """Token log-probs → the loop's clipped `grpo` loss with drpo advantages has DRPO's gradient."""
    B, G, C, T = 3, 4, 6, 6
    x = random_inputs(11, B, G, C)
    g = torch.Generator().manual_seed(0)
    logp = (-torch.rand(B * G, T, generator=g, dtype=torch.float64)).requires_grad_(True)
    n_tok = torch.tensor([min(L + 1, C) for L in x.lengths.tolist()])
    mask = torch.arange(T)[None, :] < n_tok[:, None]
    s = (logp * mask).sum(1) / mask.sum(1)
    drpo_objective(s, x.correct.tolist(), x.lengths.tolist(), G, C).backward()
    direct = logp.grad.clone()
    logp.grad = None
    x.seq_logprobs = s.detach().float()
    adv = drpo_advantages(x).double()
    terms = clipped_policy_loss(logp, logp.detach(), adv, mask, clip_low=0.2, clip_high=0.2, agg="grpo",
                                num_sequences=B * G, num_tokens=int(mask.sum()))
    terms.loss.backward()
    assert torch.allclose(logp.grad, direct, rtol=1e-5, atol=1e-8)


def test_unscorable_completions_leave_the_statistics_as_in_trl():
    """A NaN reward (no added component applied) is left out of its group's mean and std and gets advantage 0;
    the siblings get what they would get in a group without it (TRL's nanmean / nanstd)."""
    from rshape.rl.advantages import estimate

    nan = float("nan")
    r = [1.0, nan, 0.0, 0.5, 2.0, 2.0, nan, nan]  # group 2: two equal scorable rows → 0
    x = inputs(r, 4, correct=[1, 0, 0, 0, 1, 1, 0, 0])
    got = estimate(ADVANTAGES.get("grpo"), x)
    vals = [1.0, 0.0, 0.5]
    m = sum(vals) / 3
    s = math.sqrt(sum((v - m) ** 2 for v in vals) / 2)  # unbiased over the three scorable rows
    want = [(1.0 - m) / (s + 1e-4), 0.0, (0.0 - m) / (s + 1e-4), (0.5 - m) / (s + 1e-4), 0.0, 0.0, 0.0, 0.0]
    assert got.tolist() == pytest.approx(want, rel=1e-6)
    # every group estimator: the scorable rows of a group get what a group of just them gets
    for name in ("grpo", "dr_grpo", "rloo", "pref_grpo", "canon"):
        fn = ADVANTAGES.get(name)
        alone = fn(inputs([1.0, 0.0, 0.5], 3, lengths=[1, 1, 1], correct=[1, 0, 0])).tolist()
        full = estimate(fn, inputs(r[:4], 4, lengths=[1, 1, 1, 1], correct=[1, 0, 0, 0])).tolist()
        assert [full[0], full[2], full[3]] == pytest.approx(alone, rel=1e-6, abs=1e-9), name
        assert full[1] == 0.0, name
    # batch statistics (REINFORCE++-baseline): nan-aware group means, whitening over the scorable rows only
    rpp = estimate(ADVANTAGES.get("reinforce_pp_baseline"), inputs(r, 4, correct=[1, 0, 0, 0, 1, 1, 0, 0]),
                   weighting="sequence").tolist()
    a = [1.0 - m, 0.0 - m, 0.5 - m, 0.0, 0.0]  # centred rewards of the five scorable rows (population statistics)
    mu = sum(a) / 5
    sd = math.sqrt(max(sum((v - mu) ** 2 for v in a) / 5, 1e-8))
    w = [(v - mu) / sd for v in a]
    assert rpp == pytest.approx([w[0], 0.0, w[1], w[2], w[3], w[4], 0.0, 0.0], rel=1e-6)


def test_grpo_scale_rewards_as_trl():
    """TRL's scale_rewards: group (the default), batch (group-centred / std of all raw rewards + eps), none."""
    r = [1.0, 0.0, 0.0, 0.0, 2.0, 3.0, 1.0, 2.0]
    x = inputs(r, 4)
    groups = [r[:4], r[4:]]
    means = [sum(g) / 4 for g in groups]

    def sd(v):  # unbiased
        m = sum(v) / len(v)
        return math.sqrt(sum((a - m) ** 2 for a in v) / (len(v) - 1))

    want_group = [(v - means[i // 4]) / (sd(groups[i // 4]) + 1e-4) for i, v in enumerate(r)]
    want_batch = [(v - means[i // 4]) / (sd(r) + 1e-4) for i, v in enumerate(r)]
    want_none = [v - means[i // 4] for i, v in enumerate(r)]
    grpo = ADVANTAGES.get("grpo")
    assert grpo(x).tolist() == pytest.approx(want_group, rel=1e-6)
    assert grpo(x, scale_rewards="group").tolist() == pytest.approx(want_group, rel=1e-6)
    assert grpo(x, scale_rewards="batch").tolist() == pytest.approx(want_batch, rel=1e-6)
    assert grpo(x, scale_rewards="none").tolist() == pytest.approx(want_none, rel=1e-6)
    from rshape.rl.advantages import check_advantage_params

    assert check_advantage_params(grpo, {"scale_rewards": "global"}) == [
        (("scale_rewards",), "'global' is not one of group, batch, none")]
