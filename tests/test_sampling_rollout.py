"""Counter-based sampling, batched generation with left padding, and train/generate log-prob agreement."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from rshape.models import load_tokenizer
from rshape.rl.loss import token_logprobs
from rshape.rl.rollout import completion_mask, encode_prompts, generate, rollout
from rshape.rl.sampling import pick_tokens, sample_keys, top_p_mask, uniform_noise
from rshape.tasks.base import Problem


def test_keys_depend_only_on_their_tuple():
    a = sample_keys(0, 5, ["p1", "p2", "p1"], [0, 0, 1])
    b = sample_keys(0, 5, ["p2", "p1"], [0, 1])
    assert a[1] == b[0] and a[2] == b[1]
    assert len(set(a.tolist())) == 3
    assert sample_keys(1, 5, ["p1"], [0]) != sample_keys(0, 5, ["p1"], [0])
    assert sample_keys(0, 6, ["p1"], [0]) != sample_keys(0, 5, ["p1"], [0])


def test_uniform_noise_range_and_moments():
    u = uniform_noise(sample_keys(0, 0, [f"p{i}" for i in range(200)], list(range(200))), 3, 500)
    assert u.min() > 0 and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.005 and abs(u.var().item() - 1 / 12) < 0.002


def test_gumbel_sampling_matches_softmax():
    logits = torch.tensor([0.0, 1.0, 2.0]).repeat(30000, 1)
    keys = sample_keys(0, 0, ["p"] * 30000, list(range(30000)))
    picks = pick_tokens(logits, keys, 0, temperature=1.0)
    freq = torch.bincount(picks, minlength=3).float() / 30000
    want = torch.softmax(torch.tensor([0.0, 1.0, 2.0]), -1)
    assert torch.allclose(freq, want, atol=0.01)
    hot = pick_tokens(logits, keys, 0, temperature=2.0)
    want_t = torch.softmax(torch.tensor([0.0, 0.5, 1.0]), -1)
    assert torch.allclose(torch.bincount(hot, minlength=3).float() / 30000, want_t, atol=0.01)


def test_top_p_mask_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert top_p_mask(logits, 0.5).tolist() == [[True, False, False, False]]
    assert top_p_mask(logits, 0.6).tolist() == [[True, True, False, False]]
    assert top_p_mask(logits, 0.81).tolist() == [[True, True, True, False]]
    assert top_p_mask(logits, 1.0).all()


def test_greedy_is_argmax():
    logits = torch.tensor([[0.1, 3.0, -1.0], [2.0, 0.0, 0.0]])
    assert pick_tokens(logits, None, 0).tolist() == [1, 0]


def test_completion_mask_lengths_truncation():
    eos = 1
    toks = torch.tensor([[5, 6, 1, 0], [1, 0, 0, 0], [5, 5, 5, 5]])
    mask, lengths, trunc = completion_mask(toks, eos)
    assert mask.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]]
    assert lengths.tolist() == [2, 0, 4]  # EOS not counted; empty completion has length 0
    assert trunc.tolist() == [False, False, True]


@pytest.fixture(scope="module")
def model_and_tok(random_model_dir):
    model = AutoModelForCausalLM.from_pretrained(random_model_dir).eval()
    return model, load_tokenizer(random_model_dir)


def test_left_padding_does_not_change_generation(model_and_tok):
    model, tok = model_and_tok
    alone_ids, alone_mask = encode_prompts(["1+2=?\n"], tok, torch.device("cpu"))
    both_ids, both_mask = encode_prompts(["1+2=?\n", "1234+5678=?\n"], tok, torch.device("cpu"))
    assert both_mask[0, 0] == 0  # the short prompt is left-padded
    for keys_alone, keys_both in [(None, None), (sample_keys(0, 1, ["a"], [0]), sample_keys(0, 1, ["a", "b"], [0, 0]))]:
        a, _ = generate(model, alone_ids, alone_mask, max_new_tokens=12, eos_token_id=1, pad_token_id=0, keys=keys_alone)
        b, _ = generate(model, both_ids, both_mask, max_new_tokens=12, eos_token_id=1, pad_token_id=0, keys=keys_both)
        n = a.shape[1]
        assert b[0, :n].tolist() == a[0].tolist()


def test_training_logprobs_match_generation_logits(model_and_tok):
    """The log-probs the loss uses (full forward) equal the ones the KV-cached decoder sampled from."""
    model, tok = model_and_tok
    problems = [Problem(id="a", prompt="12+3=?\n", answer="15"), Problem(id="b", prompt="999+1=?\n", answer="1000")]
    ro = rollout(model, tok, problems, group_size=2, max_new_tokens=10, keys=sample_keys(0, 0, ["a"] * 2 + ["b"] * 2, [0, 1] * 2))
    with torch.no_grad():
        lp, _ = token_logprobs(model, ro, temperature=1.0, chunk=3)
        # recompute step by step without cache for row 0
        ids = torch.cat([ro.prompt_ids[:1], ro.token_ids[:1]], 1)
        mask = torch.cat([ro.prompt_mask[:1], ro.token_mask[:1].long()], 1)
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        P = ro.prompt_ids.shape[1]
        full = torch.log_softmax(model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[0], -1)
    for t in range(int(ro.token_mask[0].sum())):
        want = full[P - 1 + t, ro.token_ids[0, t]].item()
        assert lp[0, t].item() == pytest.approx(want, abs=1e-4)
    assert math.isfinite(lp[ro.token_mask].sum().item())


def test_trimmed_drops_only_all_padding_columns():
    from rshape.batch import Batch

    ro = Batch(prompts=["", ""], completions=["", ""], completion_ids=[[3], [4, 4]], lengths=torch.tensor([1, 2]),
               truncated=torch.tensor([False, False]), correct=None, problems=[None, None], group_size=2,
               prompt_ids=torch.tensor([[0, 0, 5, 6], [0, 7, 8, 9]]), prompt_mask=torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]]),
               token_ids=torch.tensor([[3, 1, 0, 0, 0], [4, 4, 1, 0, 0]]),
               token_mask=torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 0, 0]], dtype=torch.bool))
    t = ro.trimmed()
    assert t.prompt_ids.tolist() == [[0, 5, 6], [7, 8, 9]] and t.prompt_mask.tolist() == [[0, 1, 1], [1, 1, 1]]
    assert t.token_ids.tolist() == [[3, 1, 0], [4, 4, 1]] and t.token_mask.shape == (2, 3)
    assert t.completion_ids == [[3], [4, 4]]  # the reward view has no padding to trim
    assert t.trimmed() is t  # nothing left to drop


def test_batch_select_and_concat():
    """select keeps whole rows of every per-row field; concat re-pads prompts on the left and tokens on the right."""
    from rshape.batch import Batch, grouped

    def batch(pids, toks, group_size, P, T):
        n = len(pids)
        return Batch(prompts=[str(p) for p in pids], completions=[str(t) for t in toks], completion_ids=toks,
                     lengths=torch.tensor([len(t) for t in toks]), truncated=torch.zeros(n, dtype=torch.bool),
                     correct=torch.arange(n, dtype=torch.float), problems=[None] * n, group_size=group_size, step=7,
                     prompt_ids=torch.tensor([[0] * (P - len(p)) + p for p in pids]),
                     prompt_mask=torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in pids]),
                     token_ids=torch.tensor([t + [0] * (T - len(t)) for t in toks]),
                     token_mask=torch.tensor([[1] * len(t) + [0] * (T - len(t)) for t in toks], dtype=torch.bool))

    a = batch([[5], [6, 7]], [[1], [2, 3]], 2, P=3, T=2)
    b = batch([[9]], [[4]], 1, P=1, T=1)  # narrower prompt and token blocks
    both = Batch.concat([a, b], pad_token_id=0)
    assert both.prompts == ["[5]", "[6, 7]", "[9]"] and both.completion_ids == [[1], [2, 3], [4]]
    assert both.prompt_ids.tolist() == [[0, 0, 5], [0, 6, 7], [0, 0, 9]]  # left-padded to the widest
    assert both.token_ids.tolist() == [[1, 0], [2, 3], [4, 0]] and both.token_mask.tolist() == [
        [True, False], [True, True], [True, False]]
    assert both.correct.tolist() == [0.0, 1.0, 0.0] and both.step == 7 and both.group_size == 2
    second = both.select(torch.tensor([1]))
    assert second.completions == ["[2, 3]"] and second.token_ids.tolist() == [[2, 3]] and second.lengths.tolist() == [2]
    assert grouped(torch.arange(6), 3).tolist() == [[0, 1, 2], [3, 4, 5]]


def test_logprobs_do_not_depend_on_chunking_or_trimming(model_and_tok):
    """Length-sorted, trimmed chunks give each row the log-probs of its own untrimmed forward; 0 past its end."""
    from rshape.rl.loss import completion_logits, gather_logprobs

    model, tok = model_and_tok
    problems = [Problem(id=str(i), prompt=p, answer="0") for i, p in enumerate(["1+2=?\n", "12345+678=?\n", "9+9=?\n"])]
    keys = sample_keys(0, 0, [p.id for p in problems for _ in range(2)], [0, 1] * 3)
    ro = rollout(model, tok, problems, group_size=2, max_new_tokens=12, keys=keys)
    eos = tok.eos_token_id
    cut = torch.tensor([2, 12, 5, 0, 9, 7])  # give the rows very different lengths: EOS at these positions
    ids = ro.token_ids.clone()
    ids = torch.nn.functional.pad(ids, (0, 12 - ids.shape[1]), value=3)
    ids[ids == eos] = 3
    idx = torch.arange(12)[None]
    ids = torch.where(idx == cut[:, None], eos, torch.where(idx > cut[:, None], tok.pad_token_id, ids))
    ro.token_ids, ro.token_mask = ids, idx <= cut[:, None]
    with torch.no_grad():
        want, _ = gather_logprobs(completion_logits(model, ro), ro.token_ids)  # one untrimmed forward
        for chunk in (1, 2, 4, 6):
            got, _ = token_logprobs(model, ro, chunk=chunk)
            torch.testing.assert_close(got[ro.token_mask], want[ro.token_mask], atol=1e-5, rtol=1e-5)
            assert (got[~ro.token_mask] == 0).all()


def test_reward_lengths_with_eos_as_verl():
    """`reward_lengths: with_eos`: rewards see L + 1 for completions that stopped (verl counts the EOS), L for
    truncated ones; DAPO's soft zone then starts one token earlier, as in verl."""
    from conftest import make_reward_batch

    from rshape.rewards.length import DapoOverlong

    b = make_reward_batch([5, 7, 8, 8], [1, 1, 1, 1], 4, truncated=[False, False, False, True], max_new_tokens=8)
    v = b.counting_eos()
    assert v.lengths.tolist() == [6, 8, 9, 8] and b.lengths.tolist() == [5, 7, 8, 8]
    dapo = DapoOverlong(cache_len=2)
    assert dapo(b).tolist() == [0.0, -0.5, -1.0, -1.0] and dapo(v).tolist() == [0.0, -1.0, -1.0, -1.0]
