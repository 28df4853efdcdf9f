"""GRPO advantages and the clipped loss with both aggregations, against hand computations and a loop."""

import math

import pytest
import torch
from conftest import make_reward_batch

from rshape.rl.advantages import AdvantageInputs, grpo_advantages
from rshape.rl.loss import clipped_policy_loss, gather_logprobs, k3_kl


def inputs(r, g):
    return AdvantageInputs(rewards=r, batch=make_reward_batch([1] * len(r), [0] * len(r), g, max_new_tokens=8), eps=1e-4)


def test_grpo_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    a = grpo_advantages(inputs(r, 4))
    std = math.sqrt(4 * 0.25 / 3)  # unbiased
    assert a[:4].tolist() == pytest.approx([0.5 / (std + 1e-4), -0.5 / (std + 1e-4), -0.5 / (std + 1e-4), 0.5 / (std + 1e-4)])
    assert a[4:].tolist() == [0.0] * 4  # all-equal group


def test_grpo_group_of_two_and_loop_agrees():
    r = torch.tensor([3.0, 1.0, 0.2, 0.7, -1.0, 5.0])
    a = grpo_advantages(inputs(r, 2))
    for g in range(3):
        x, y = r[2 * g].item(), r[2 * g + 1].item()
        m = (x + y) / 2
        s = math.sqrt(((x - m) ** 2 + (y - m) ** 2) / 1)
        assert a[2 * g].item() == pytest.approx((x - m) / (s + 1e-4), rel=1e-5)
        assert a[2 * g + 1].item() == pytest.approx((y - m) / (s + 1e-4), rel=1e-5)


def loop_loss(logp, old, adv, mask, lo, hi, agg):
    """An independent plain-Python version of the clipped loss."""
    per_seq, tok_sum, tok_n = [], 0.0, 0
    for i in range(len(logp)):
        s, n = 0.0, 0
        for t in range(len(logp[i])):
            if not mask[i][t]:
                continue
            ratio = math.exp(logp[i][t] - old[i][t])
            clipped = min(max(ratio, 1 - lo), 1 + hi)
            loss = -min(ratio * adv[i], clipped * adv[i])
            s += loss
            n += 1
        per_seq.append(s / max(n, 1))
        tok_sum += s
        tok_n += n
    return sum(per_seq) / len(per_seq) if agg == "grpo" else tok_sum / tok_n


@pytest.mark.parametrize("agg", ["grpo", "dapo"])
def test_clipped_loss_matches_loop(agg):
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(3, 5, generator=g)
    old = logp + 0.4 * (torch.rand(3, 5, generator=g) - 0.5)
    adv = torch.tensor([1.0, -2.0, 0.5])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    terms = clipped_policy_loss(logp, old, adv, mask, clip_low=0.1, clip_high=0.15, agg=agg,
                                num_sequences=3, num_tokens=int(mask.sum()))
    want = loop_loss(logp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), 0.1, 0.15, agg)
    assert terms.loss.item() == pytest.approx(want, rel=1e-6)


def test_ratio_one_gives_minus_mean_advantage_and_gradient():
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.5]], requires_grad=True)
    adv = torch.tensor([2.0, -1.0])
    mask = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)
    t = clipped_policy_loss(logp, logp.detach(), adv, mask, clip_low=0.2, clip_high=0.2, agg="grpo",
                            num_sequences=2, num_tokens=3)
    assert t.loss.item() == pytest.approx(-(2.0 + -1.0) / 2)
    t.loss.backward()
    # d/dlogp of −ratio·A/|y|/B at ratio 1 = −A/(|y|·B)
    assert logp.grad.flatten().tolist() == pytest.approx([-0.5, -0.5, 0.5, 0.0])


def test_clip_bounds_asymmetric():
    # ratios 1.5 and 0.5, clip_low 0.2, clip_high 0.28
    old = torch.zeros(1, 2)
    logp = torch.log(torch.tensor([[1.5, 0.5]]))
    mask = torch.ones(1, 2, dtype=torch.bool)
    pos = clipped_policy_loss(logp, old, torch.tensor([1.0]), mask, clip_low=0.2, clip_high=0.28, agg="dapo",
                              num_sequences=1, num_tokens=2)
    # A>0: min(1.5, 1.28) = 1.28 and min(0.5, 0.8) = 0.5 → loss −(1.28 + 0.5)/2
    assert pos.loss.item() == pytest.approx(-(1.28 + 0.5) / 2)
    assert pos.clip_high.item() == 1 and pos.clip_low.item() == 0
    neg = clipped_policy_loss(logp, old, torch.tensor([-1.0]), mask, clip_low=0.2, clip_high=0.28, agg="dapo",
                              num_sequences=1, num_tokens=2)
    # A<0: min(−1.5, −1.28) = −1.5 and min(−0.5, −0.8) = −0.8 → loss (1.5 + 0.8)/2
    assert neg.loss.item() == pytest.approx((1.5 + 0.8) / 2)
    assert neg.clip_low.item() == 1 and neg.clip_high.item() == 0


def test_k3_and_kl_term():
    lp, ref = torch.tensor([[-1.0]]), torch.tensor([[-1.5]])
    d = -0.5
    assert k3_kl(lp, ref).item() == pytest.approx(math.exp(d) - d - 1)
    t = clipped_policy_loss(lp, lp, torch.tensor([0.0]), torch.ones(1, 1, dtype=torch.bool), clip_low=0.2,
                            clip_high=0.2, agg="grpo", num_sequences=1, num_tokens=1, ref_logp=ref, kl_beta=0.1)
    assert t.loss.item() == pytest.approx(0.1 * (math.exp(d) - d - 1))
    assert k3_kl(lp, lp).item() == 0.0


def test_gather_logprobs_matches_log_softmax():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 7, generator=g)
    tokens = torch.randint(0, 7, (2, 3), generator=g)
    lp, ent = gather_logprobs(logits, tokens, with_entropy=True)
    ref = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    assert torch.allclose(lp, ref, atol=1e-6)
    p = torch.softmax(logits, -1)
    assert torch.allclose(ent, -(p * torch.log(p)).sum(-1), atol=1e-5)


def test_dr_grpo_aggregation_constant_divisor():
    logp = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    adv = torch.tensor([1.0, 1.0])
    t = clipped_policy_loss(logp, logp.detach(), adv, mask, clip_low=0.2, clip_high=0.2, agg="dr_grpo",
                            num_sequences=2, num_tokens=4, max_len=5)
    assert t.loss.item() == pytest.approx(-4 / (2 * 5))  # Σ tokens of −ρA = −4, divided by 2·5
    t.loss.backward()
    # every token gets the same weight 1/(B·L_max): no per-sequence length normalisation
    assert logp.grad.flatten().tolist() == pytest.approx([-0.1, -0.1, -0.1, -0.1, 0.0, 0.0])
    with pytest.raises(ValueError, match="max_len"):
        clipped_policy_loss(logp, logp, adv, mask, clip_low=0.2, clip_high=0.2, agg="dr_grpo", num_sequences=2, num_tokens=4)


def test_gspo_sequence_ratio_and_clip():
    """GSPO: s_i = exp(mean_t(logp − old)); clipped per sequence (loop reference)."""
    old = torch.zeros(2, 3)
    logp = torch.tensor([[0.3, 0.3, 0.0], [-0.5, 0.1, 0.4]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    adv = torch.tensor([1.0, -1.0])
    t = clipped_policy_loss(logp, old, adv, mask, clip_low=0.1, clip_high=0.1, agg="grpo", num_sequences=2,
                            num_tokens=5, ratio_level="sequence")
    s1 = math.exp(0.3)  # mean of 0.3, 0.3
    s2 = math.exp(0.0)  # mean of −0.5, 0.1, 0.4
    want = (-min(s1 * 1, min(max(s1, 0.9), 1.1) * 1) + -min(-s2, -min(max(s2, 0.9), 1.1))) / 2
    assert t.loss.item() == pytest.approx(want)
    assert t.clip_high.item() == 2  # both tokens of sequence 1 are clipped at 1 + ε


def test_gspo_gradient_is_sequence_mean():
    logp = torch.tensor([[-1.0, -2.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0]], dtype=torch.bool)
    t = clipped_policy_loss(logp, logp.detach(), torch.tensor([2.0]), mask, clip_low=0.2, clip_high=0.2, agg="grpo",
                            num_sequences=1, num_tokens=2, ratio_level="sequence")
    t.loss.backward()
    # d(−s·A)/dlogp_t = −A·s/|y| = −2·1/2 on each real token
    assert logp.grad.flatten().tolist() == pytest.approx([-1.0, -1.0, 0.0])


def test_entropy_bonus_enters_loss():
    logits = torch.tensor([[[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]]], requires_grad=True)
    tokens = torch.tensor([[2, 0]])
    lp, ent = gather_logprobs(logits, tokens, entropy_grad=True)
    assert ent.requires_grad
    mask = torch.ones(1, 2, dtype=torch.bool)
    t0 = clipped_policy_loss(lp, lp.detach(), torch.tensor([0.0]), mask, clip_low=0.2, clip_high=0.2, agg="dapo",
                             num_sequences=1, num_tokens=2)
    t1 = clipped_policy_loss(lp, lp.detach(), torch.tensor([0.0]), mask, clip_low=0.2, clip_high=0.2, agg="dapo",
                             num_sequences=1, num_tokens=2, entropy=ent, entropy_coef=0.1)
    assert t1.loss.item() == pytest.approx(t0.loss.item() - 0.1 * ent.mean().item())
    t1.loss.backward()
    assert logits.grad[0, 1].abs().sum() < 1e-6  # the uniform position is at maximum entropy: zero gradient
    assert logits.grad[0, 0].abs().sum() > 0
