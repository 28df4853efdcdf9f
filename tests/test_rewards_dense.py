"""SAR, PEAR, repetition, cost, reference overlap and rule fraction: hand values and the reference code's values."""

import collections
import math
import pickle
import random
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import make_reward_batch
from pydantic import ValidationError

from rshape.rewards.dense import (
    CostPenalty,
    PhaseEntropy,
    RepetitionPenalty,
    SelfAlignedReward,
    empty_question_prompt,
    find_tag_span,
)
from rshape.rewards.text import (
    ReferenceOverlap,
    RuleFraction,
    ngram_f1,
    sentence_bleu,
    tokenize_13a,
)

ROOT = Path(__file__).resolve().parents[1]
from rshape.rewards import REWARDS  # noqa: E402

DENSE = REWARDS.defined_in("rshape.rewards.dense")
TEXT = REWARDS.defined_in("rshape.rewards.text")


make_batch = make_reward_batch


# ----------------------------------------------------------------------------------------------- SAR


class FakeContext:
    """logprobs: per-token values chosen by whether the prompt still holds the question."""

    tokenizer = None  # RewardContext's tokenizer: these tests give the tag's token id instead

    def __init__(self, with_q, without_q):
        self.with_q, self.without_q, self.calls = with_q, without_q, []

    def logprobs(self, prompts, completion_ids):
        self.calls.append(list(prompts))
        out = []
        for p, ids in zip(prompts, completion_ids):
            has_q = p not in ("", "EMPTY") and not (isinstance(p, list) and any(m["role"] == "user" and not m["content"]
                                                                                for m in p))
            table = self.with_q if has_q else self.without_q
            vals = table(len(ids)) if callable(table) else table
            out.append(torch.tensor(vals[: len(ids)], dtype=torch.float))
        return out


def ref_sar(lp_qa, lp_a):
    """amazon-science SAR: compute_perplexity (ray_trainer.py) + compute_ppl_qa_log defaults (efficiency_reward.py)."""
    ppl_qa = math.exp(-(sum(lp_qa) / len(lp_qa)))
    ppl_a = math.exp(-(sum(lp_a) / len(lp_a)))
    QA_term, A_term = ppl_qa, ppl_a  # use_log False, clip_value -1
    return max((A_term - QA_term) / (A_term + 1e-9), -1)


def test_sar_by_hand():
    # with q: log p = −1 per token → ppl(a|q) = e; without: −2 → ppl(a) = e²; R = (e² − e)/e² = 1 − 1/e
    ctx = FakeContext([-1.0] * 4, [-2.0] * 4)
    b = make_batch([4, 4], [1, 0], 2, context=ctx)
    r = SelfAlignedReward()(b)
    rsa = 1 - 1 / math.e
    assert r.tolist() == pytest.approx([1 + 0.2 * rsa, 0.2 * rsa], abs=1e-6)
    assert ctx.calls == [["p", "p"], ["", ""]]
    # the question makes the answer LESS likely: (e − e³)/e = 1 − e² < −1 → clipped to −1
    b = make_batch([3], [1], 1, context=FakeContext([-3.0] * 3, [-1.0] * 3))
    assert SelfAlignedReward()(b).tolist() == pytest.approx([1 - 0.2])
    # mean over tokens: with q [−0.5, −1.5] (mean −1), without [−1, −3] (mean −2) → 1 − 1/e again
    b = make_batch([2], [0], 1, context=FakeContext([-0.5, -1.5], [-1.0, -3.0]))
    assert SelfAlignedReward(alpha=1.0, include_correctness=False)(b).tolist() == pytest.approx([rsa], abs=1e-6)
    # equal perplexities → 0
    b = make_batch([2], [1], 1, context=FakeContext([-0.7, -0.1], [-0.1, -0.7]))
    assert SelfAlignedReward()(b).tolist() == pytest.approx([1.0], abs=1e-6)


def test_sar_agrees_with_reference_code():
    rng = random.Random(0)
    for _ in range(30):
        L = rng.randint(1, 12)
        lq = [-rng.uniform(0, 4) for _ in range(L)]
        la = [-rng.uniform(0, 4) for _ in range(L)]
        b = make_batch([L], [0], 1, context=FakeContext(lq, la))
        got = SelfAlignedReward(alpha=1.0, include_correctness=False).self_aligned(b).item()
        assert got == pytest.approx(ref_sar(lq, la), abs=1e-6)
        assert -1.0 <= got < 1.0


def test_sar_empty_completion_and_all_empty():
    ctx = FakeContext([-1.0] * 5, [-2.0] * 5)
    b = make_batch([0, 3], [1, 1], 2, completions=["", "abc"], context=ctx)
    r = SelfAlignedReward()(b)
    assert r[0].item() == pytest.approx(1.0)  # R_SA = 0 for an empty completion
    assert r[1].item() == pytest.approx(1 + 0.2 * (1 - 1 / math.e), abs=1e-6)
    assert ctx.calls == [["p"], [""]]  # only the non-empty completion is scored
    ctx = FakeContext([-1.0], [-2.0])
    b = make_batch([0, 0], [0, 1], 2, completions=["", ""], context=ctx)
    assert SelfAlignedReward()(b).tolist() == [0.0, 1.0] and ctx.calls == []


def test_sar_infinite_perplexities():
    inf = float("inf")
    b = make_batch([2, 2, 2], [0, 0, 0], 3, context=None)
    outs = {"q": [[-1.0, -1.0], [-inf, -1.0], [-inf, -inf]], "a": [[-inf, -1.0], [-1.0, -1.0], [-inf, -inf]]}

    class Ctx:
        calls = 0

        def logprobs(self, prompts, ids):
            key = "a" if prompts[0] == "" else "q"
            return [torch.tensor(v) for v in outs[key]]

    b.context = Ctx()
    r = SelfAlignedReward(alpha=1.0, include_correctness=False)(b)
    assert r.tolist() == [1.0, -1.0, 0.0]  # ppl(a)=∞ → 1; ppl(a|q)=∞ → −1; both ∞ → 0


def test_sar_needs_context():
    with pytest.raises(ValueError, match="sar needs the policy"):
        SelfAlignedReward()(make_batch([2], [1], 1))


def test_sar_chat_prompt_keeps_template_and_empties_user_turns():
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"}]
    assert empty_question_prompt(chat) == [{"role": "system", "content": "be brief"}, {"role": "user", "content": ""}]
    assert chat[1]["content"] == "2+2?"  # not mutated
    assert empty_question_prompt("2+2=?\n", "+=?\n") == "+=?\n"
    ctx = FakeContext([-1.0] * 2, [-2.0] * 2)
    b = make_batch([2, 2], [1, 1], 2, prompts=[chat, "q"], context=ctx)
    SelfAlignedReward(empty_prompt="EMPTY")(b)
    assert ctx.calls[1] == [empty_question_prompt(chat), "EMPTY"]


def test_sar_group_relative_property_and_length_check():
    ctx = FakeContext(lambda n: [-1.0] * n, lambda n: [-1.5] * n)
    one = make_batch([3, 5], [1, 0], 2, context=ctx)
    two = make_batch([3, 5, 7, 9], [1, 0, 1, 1], 2, context=ctx)
    assert SelfAlignedReward()(two)[:2].tolist() == SelfAlignedReward()(one).tolist()

    class Short:
        def logprobs(self, prompts, ids):
            return [torch.zeros(1) for _ in ids]

    with pytest.raises(ValueError, match="returned 1 and 1 log-probs for completion 0 of 3 tokens"):
        SelfAlignedReward()(make_batch([3], [1], 1, context=Short()))


# ---------------------------------------------------------------------------------------------- PEAR


class PieceTokenizer:
    """A toy tokenizer whose tokens are arbitrary strings, so `</think>` can straddle token boundaries."""

    def __init__(self, vocab):
        self.vocab = vocab
        self.unk_token_id = None

    def decode(self, ids, skip_special_tokens=False):
        return "".join(self.vocab[i] for i in ids)

    def convert_tokens_to_ids(self, token):
        return self.vocab.index(token) if token in self.vocab else None


def brute_span(ids, tok, tag):
    e = next(t for t in range(len(ids)) if tag in tok.decode(ids[: t + 1]))
    s = max(s for s in range(e + 1) if tag in tok.decode(ids[s : e + 1]))
    return s, e


def test_find_tag_span_multi_token_by_hand_and_against_brute_force():
    tok = PieceTokenizer(["a", "</", "think", ">", "b", "x</th", "ink>y", "<", "/", "k>", "thin"])
    assert find_tag_span([0, 0, 1, 2, 3, 4, 4], "aa</think>bb", "</think>", None, tok) == (2, 4)
    assert find_tag_span([0, 5, 6, 4], "ax</think>yb", "</think>", None, tok) == (1, 2)
    assert find_tag_span([0, 4], "ab", "</think>", None, tok) is None
    rng = random.Random(1)
    found = 0
    for _ in range(600):
        ids = [rng.randrange(len(tok.vocab)) for _ in range(rng.randint(1, 14))]
        text = tok.decode(ids)
        got = find_tag_span(ids, text, "</think>", None, tok)
        if "</think>" in text:
            found += 1
            assert got == brute_span(ids, tok, "</think>")
        else:
            assert got is None
    assert found >= 30


def test_find_tag_span_single_token_paths():
    from rshape.tasks.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    text = "<think>1+2\n</think><answer>3</answer>"
    ids = tok(text)["input_ids"]
    k = ids.index(tok.convert_tokens_to_ids("</think>"))
    assert find_tag_span(ids, text, "</think>", None, tok) == (k, k)
    assert find_tag_span(ids, text, "</think>", ids[k], None) == (k, k)
    assert find_tag_span([7, 7], "??", "</think>", 4, None) is None
    with pytest.raises(ValueError, match="set think_end_token_id"):
        find_tag_span(ids, text, "</think>", None, None)


TAG = 4  # the id of </think> in the hand-made PEAR batches


def pear_batch(rows, correct, ent_rows, width=None, **kw):
    width = width or max(1, max(len(r) for r in rows))
    ent = torch.zeros(len(rows), width)
    for i, h in enumerate(ent_rows):
        ent[i, : len(h)] = torch.tensor(h)
    texts = ["".join("</think>" if t == TAG else "a" for t in r) for r in rows]
    return make_batch([len(r) for r in rows], correct, len(rows), completions=texts, ids=rows, entropies=ent, **kw)


def test_pear_by_hand():
    rows = [[7, 7, TAG, 8, 8], [7, 7, TAG, 8, 8], [7, 7], [7, TAG, 8], [7, 7, TAG], [TAG, 8], []]
    ent = [[1.0, 0.5, 9.0, 0.2, 0.4], [1.0, 0.5, 9.0, 0.2, 0.4], [0.2, 0.4], [0.1, 3.0, 0.5], [2.5, 2.5, 0.0],
           [5.0, 1.0], []]
    b = pear_batch(rows, [1, 0, 1, 1, 1, 1, 1], ent, width=8)  # padded entropies beyond L are ignored
    r = PhaseEntropy(think_end_token_id=TAG)(b)
    # H̄_think .75, H̄_ans .3 → P .45 → .55 | wrong → 0 | no tag: H̄_think .3, H̄_ans 0 → .7 | P = max(0, .1−.5) = 0 → 1
    # tag last: H̄_ans = 0, P = 2.5 → 1 − 2.5 | tag first: H̄_think = 0 → 1 | empty completion, correct → 1
    assert r.tolist() == pytest.approx([0.55, 0.0, 0.7, 1.0, -1.5, 1.0, 1.0], abs=1e-6)
    assert PhaseEntropy(think_end_token_id=TAG, alpha=0.0)(b)[0].item() == pytest.approx(0.25)
    assert PhaseEntropy(think_end_token_id=TAG, wrong_score=-0.5)(b)[1].item() == -0.5
    assert PhaseEntropy.needs_entropies
    assert (r <= 1.0).all()


def test_pear_all_wrong_all_correct_and_tokenizer_sources():
    rows = [[7, TAG, 8], [7, 7, TAG, 8]]
    ent = [[0.4, 0.0, 0.2], [0.6, 0.2, 0.0, 0.1]]
    assert PhaseEntropy(think_end_token_id=TAG)(pear_batch(rows, [0, 0], ent)).tolist() == [0.0, 0.0]
    want = [1 - 0.2, 1 - 0.3]
    assert PhaseEntropy(think_end_token_id=TAG)(pear_batch(rows, [1, 1], ent)).tolist() == pytest.approx(want)
    vocab = ["?"] * 9
    vocab[TAG], vocab[7], vocab[8] = "</think>", "a", "b"
    tok = PieceTokenizer(vocab)
    b = pear_batch(rows, [1, 1], ent, context=SimpleNamespace(tokenizer=tok))  # the loop's context has .tokenizer
    assert PhaseEntropy()(b).tolist() == pytest.approx(want)
    b = pear_batch(rows, [1, 1], ent)
    b.tokenizer = tok  # Batch.tokenizer, for scoring outside the loop
    assert PhaseEntropy()(b).tolist() == pytest.approx(want)
    with pytest.raises(ValueError, match="set think_end_token_id"):
        PhaseEntropy()(pear_batch(rows, [1, 1], ent))
    b = pear_batch([[7, 8]], [1], [[0.3, 0.1]])  # no tag in the text: no tokenizer needed
    assert PhaseEntropy()(b).tolist() == pytest.approx([0.8])


def test_pear_needs_entropies_and_validates():
    b = make_batch([2], [1], 1)
    with pytest.raises(ValueError, match="token_entropies is None"):
        PhaseEntropy()(b)
    with pytest.raises(ValidationError, match="alpha"):
        PhaseEntropy(alpha=-1)
    with pytest.raises(ValidationError, match="think_end_token_id"):
        PhaseEntropy(think_end_token_id=-3)


# ---------------------------------------------------------------------------------------- repetition


def openr1_repetition(completions, ngram_size, max_penalty):
    """open-r1 src/open_r1/rewards.py get_repetition_penalty_reward (words)."""
    def zipngram(text, ngram_size):
        words = text.lower().split()
        return zip(*[words[i:] for i in range(ngram_size)])

    rewards = []
    for completion in completions:
        if completion == "":
            rewards.append(0.0)
            continue
        if len(completion.split()) < ngram_size:
            rewards.append(0.0)
            continue
        ngrams = set()
        total = 0
        for ng in zipngram(completion, ngram_size):
            ngrams.add(ng)
            total += 1
        scaling = 1 - len(ngrams) / total
        rewards.append(scaling * max_penalty)
    return rewards


def trl_repetition(completion_ids, ngram_size, max_penalty):
    """trl/rewards/other_rewards.py _RepetitionPenalty (token ids)."""
    rewards = []
    for ids in completion_ids:
        if len(ids) < ngram_size:
            rewards.append(0.0)
            continue
        ngrams = list(zip(*[ids[i:] for i in range(ngram_size)]))
        scaling = 1 - len(set(ngrams)) / len(ngrams)
        rewards.append(scaling * max_penalty if scaling else 0.0)
    return rewards


def test_repetition_by_hand():
    texts = ["a b a b a b", "A b a B", "", "a b", "a b c", "x y z w"]
    b = make_batch([len(t) for t in texts], [0] * 6, 6, completions=texts)
    # trigrams of a b a b a b: 4, unique 2 → −0.5 | bigrams of "a b a b" (lower-cased): 3, unique 2 → −1/3
    assert RepetitionPenalty()(b).tolist() == pytest.approx([-0.5, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert RepetitionPenalty(ngram_size=2)(b).tolist() == pytest.approx([-0.6, -1 / 3, 0.0, 0.0, 0.0, 0.0])
    # TRL's docstring example, over token ids
    b = make_batch([4, 5], [0, 0], 2, ids=[[1, 2, 3, 4], [5, 5, 5, 5, 5]])
    assert RepetitionPenalty(ngram_size=2, unit="tokens")(b).tolist() == pytest.approx([0.0, -0.75])
    assert RepetitionPenalty(ngram_size=2, unit="tokens", max_penalty=-0.1)(b).tolist() == pytest.approx([0.0, -0.075])


def test_repetition_agrees_with_openr1_and_trl():
    rng = random.Random(2)
    words = ["the", "The", "cat", "sat", "mat", "on"]
    for n in (1, 2, 3, 4):
        texts = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 12))) for _ in range(20)]
        ids = [[rng.randrange(4) for _ in range(rng.randint(0, 12))] for _ in range(20)]
        b = make_batch([len(i) for i in ids], [0] * 20, 4, completions=texts, ids=ids)
        got_w = RepetitionPenalty(ngram_size=n, max_penalty=-0.7)(b).tolist()
        got_t = RepetitionPenalty(ngram_size=n, max_penalty=-0.7, unit="tokens")(b).tolist()
        assert got_w == pytest.approx(openr1_repetition(texts, n, -0.7), abs=1e-6)
        assert got_t == pytest.approx(trl_repetition(ids, n, -0.7), abs=1e-6)
        assert all(-0.7 <= v <= 0.0 for v in got_w + got_t)


def test_repetition_bad_params():
    with pytest.raises(ValidationError, match="max_penalty"):
        RepetitionPenalty(max_penalty=0.5)
    with pytest.raises(ValidationError, match="ngram_size"):
        RepetitionPenalty(ngram_size=0)
    with pytest.raises(ValidationError, match="unit"):
        RepetitionPenalty(unit="chars")


# ---------------------------------------------------------------------------------------------- cost


def test_cost_tokens_and_meta_column():
    b = make_batch([0, 10, 100], [1, 0, 1], 3, truncated=[False, False, True])
    assert CostPenalty()(b).tolist() == pytest.approx([0.0, -0.01, -0.1])
    assert CostPenalty(rate=0.5)(b).tolist() == pytest.approx([0.0, -5.0, -50.0])
    b = make_batch([3, 3], [1, 1], 2, metas=[{"price": 2.5}, {"price": "4"}])
    assert CostPenalty(rate=0.1, cost_key="price")(b).tolist() == pytest.approx([-0.25, -0.4])
    b = make_batch([3, 3], [1, 1], 2, metas=[{"price": 1}, {}])
    with pytest.raises(ValueError, match="sample 1 .* no meta column 'price'"):
        CostPenalty(cost_key="price")(b)
    b = make_batch([3], [1], 1, metas=[{"price": "cheap"}])
    with pytest.raises(ValueError, match="non-numeric 'price'"):
        CostPenalty(cost_key="price")(b)
    with pytest.raises(ValidationError, match="rate"):
        CostPenalty(rate=-1)


def test_cost_non_increasing_in_length():
    r = CostPenalty()(make_batch([1, 5, 9, 40], [1, 1, 1, 1], 4)).tolist()
    assert r == sorted(r, reverse=True)


# ------------------------------------------------------------------------------------------ overlap


def nmt_compute_bleu(reference_corpus, translation_corpus, max_order=4, smooth=False):
    """huggingface/evaluate metrics/bleu/nmt_bleu.py compute_bleu (from tensorflow/nmt), transcribed."""
    def _get_ngrams(segment, max_order):
        ngram_counts = collections.Counter()
        for order in range(1, max_order + 1):
            for i in range(0, len(segment) - order + 1):
                ngram_counts[tuple(segment[i:i + order])] += 1
        return ngram_counts

    matches_by_order = [0] * max_order
    possible_matches_by_order = [0] * max_order
    reference_length = 0
    translation_length = 0
    for (references, translation) in zip(reference_corpus, translation_corpus):
        reference_length += min(len(r) for r in references)
        translation_length += len(translation)
        merged_ref_ngram_counts = collections.Counter()
        for reference in references:
            merged_ref_ngram_counts |= _get_ngrams(reference, max_order)
        translation_ngram_counts = _get_ngrams(translation, max_order)
        overlap = translation_ngram_counts & merged_ref_ngram_counts
        for ngram in overlap:
            matches_by_order[len(ngram) - 1] += overlap[ngram]
        for order in range(1, max_order + 1):
            possible_matches = len(translation) - order + 1
            if possible_matches > 0:
                possible_matches_by_order[order - 1] += possible_matches
    precisions = [0] * max_order
    for i in range(0, max_order):
        if smooth:
            precisions[i] = (matches_by_order[i] + 1.) / (possible_matches_by_order[i] + 1.)
        elif possible_matches_by_order[i] > 0:
            precisions[i] = float(matches_by_order[i]) / possible_matches_by_order[i]
        else:
            precisions[i] = 0.0
    if min(precisions) > 0:
        geo_mean = math.exp(sum((1. / max_order) * math.log(p) for p in precisions))
    else:
        geo_mean = 0
    if reference_length == 0 or translation_length == 0:
        bp = 0.0
    else:
        ratio = float(translation_length) / reference_length
        bp = 1.0 if ratio > 1.0 else math.exp(1 - 1.0 / ratio)
    return geo_mean * bp


def ref_tokenize_13a(line):
    """huggingface/evaluate metrics/bleu/tokenizer_13a.py Tokenizer13a (from sacrebleu), transcribed."""
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    line = f" {line} "
    for rx, repl in [(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])", r" \1 "), (r"([^0-9])([\.,])", r"\1 \2 "),
                     (r"([\.,])([^0-9])", r" \1 \2"), (r"([0-9])(-)", r"\1 \2 ")]:
        line = re.sub(rx, repl, line)
    return line.split()


def test_tokenize_13a():
    assert tokenize_13a("Hello, world.") == ["Hello", ",", "world", "."]
    assert tokenize_13a("pi is 3.14, not 1,000-ish!") == ["pi", "is", "3.14", ",", "not", "1,000", "-", "ish", "!"]
    assert tokenize_13a("a&amp;b\nc") == ["a", "&", "b", "c"]


def test_bleu_by_hand():
    toks = str.split
    assert sentence_bleu(toks("the cat sat on the mat"), [toks("the cat sat on the mat")]) == pytest.approx(1.0)
    # smoothed precisions all 1 (orders without n-grams give (0+1)/(0+1)); BP = exp(1 − 3/2)
    assert sentence_bleu(toks("the cat"), [toks("the cat sat")]) == pytest.approx(math.exp(-0.5))
    # a b c d vs a b x d: p = 4/5, 2/4, 1/3, 1/2; BP = 1
    want = (0.8 * 0.5 * (1 / 3) * 0.5) ** 0.25
    assert sentence_bleu(toks("a b c d"), [toks("a b x d")]) == pytest.approx(want)
    assert sentence_bleu(toks("a b c d"), [toks("a b x d")], smooth=False) == 0.0  # no 3-gram match
    # two references: counts clipped by the max over references, BP from the shortest reference (4)
    # unigrams: a clipped at 2 (second ref), b at 1 (first) → 3/4; bigrams (a a) ✓ (a b) ✓ (b b) ✗ → 2/3
    got = sentence_bleu(toks("a a b b"), [toks("a b q q"), toks("a a z z z")], max_order=2, smooth=False)
    assert got == pytest.approx(math.sqrt(0.75 * (2 / 3)))
    assert sentence_bleu([], [toks("a")]) == 0.0


def test_bleu_agrees_with_evaluate_nmt_bleu():
    rng = random.Random(3)
    words = ["the", "cat", "sat", "on", "mat", "a", "dog", ",", "."]
    for _ in range(60):
        cand = " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))
        refs = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 12))) for _ in range(rng.randint(1, 3))]
        for smooth in (True, False):
            for order in (1, 2, 4):
                want = nmt_compute_bleu([[ref_tokenize_13a(r) for r in refs]], [ref_tokenize_13a(cand)], order, smooth)
                got = sentence_bleu(tokenize_13a(cand), [tokenize_13a(r) for r in refs], order, smooth)
                assert got == pytest.approx(want, abs=1e-9)
        assert tokenize_13a(cand) == ref_tokenize_13a(cand)


def test_ngram_f1_by_hand():
    toks = str.split
    assert ngram_f1(toks("a b c"), toks("a b d"), 1) == pytest.approx(2 / 3)
    assert ngram_f1(toks("a b c"), toks("a b d"), 2) == pytest.approx((2 / 3 + 0.5) / 2)
    assert ngram_f1(toks("a b c"), toks("a b d"), 4) == pytest.approx((2 / 3 + 0.5 + 0) / 3)  # no 4-grams: skipped
    assert ngram_f1(toks("a b"), toks("a b"), 4) == pytest.approx(1.0)


def test_reference_overlap_component():
    texts = ["the cat", "<think>hmm</think><answer>the cat sat</answer>", "", "the cat sat", "no tags", "the dog"]
    metas = [{}, {}, {}, {"references": []}, {}, {"references": ["the dog", "a cat"]}]
    b = make_batch([len(t) for t in texts], [0] * 6, 6, completions=texts, metas=metas, answers=["the cat sat"] * 6)
    r = ReferenceOverlap()(b)
    assert r[0].item() == pytest.approx(math.exp(-0.5), abs=1e-6)
    assert r[1].item() < 1.0  # the whole completion, tags and all, is compared
    assert r[2].item() == 0.0 and math.isnan(r[3].item()) and r[5].item() == pytest.approx(1.0)
    ra = ReferenceOverlap(extract="answer")(b)
    assert ra[1].item() == pytest.approx(1.0) and ra[4].item() == 0.0 and ra[0].item() == 0.0
    rf = ReferenceOverlap(metric="f1", max_order=1)(b)
    assert rf[0].item() == pytest.approx(2 * 2 / (2 + 3))  # unigram F1 of "the cat" vs "the cat sat"
    b = make_batch([3], [0], 1, completions=["a b"], metas=[{"refs": "a b"}])
    assert ReferenceOverlap(references_key="refs")(b).item() == pytest.approx(1.0)
    with pytest.raises(ValidationError, match="max_order"):
        ReferenceOverlap(max_order=5)
    with pytest.raises(ValidationError, match="metric"):
        ReferenceOverlap(metric="rouge")


# ------------------------------------------------------------------------------------- rule fraction


CONSTRAINTS = [{"type": "max_words", "value": 3}, {"type": "contains", "value": "foo"},
               {"type": "regex", "value": "^ba"}, {"type": "ends_with", "value": "!"}]


def test_rule_fraction_by_hand():
    texts = ["bar foo baz!", "foo bar baz qux", "", "anything", "<answer>Foo!</answer>"]
    metas = [{"constraints": CONSTRAINTS}, {"constraints": CONSTRAINTS}, {"constraints": CONSTRAINTS}, {},
             {"constraints": [{"type": "contains", "value": "foo", "ignore_case": True},
                              {"type": "not_contains", "value": "Foo"}, {"type": "min_words", "value": 2},
                              {"type": "starts_with", "value": "<answer>"}]}]
    b = make_batch([len(t) for t in texts], [0] * 5, 5, completions=texts, metas=metas)
    r = RuleFraction()(b).tolist()
    # "" satisfies only max_words; sample 3 has no constraints → NaN; sample 4 (full text, words answer/Foo/answer)
    # contains foo (ignore case) ✓, not_contains Foo ✗, min_words 2 ✓, starts_with <answer> ✓
    assert r[:3] == pytest.approx([1.0, 0.25, 0.25]) and math.isnan(r[3]) and r[4] == pytest.approx(0.75)
    ra = RuleFraction(extract="answer")(b).tolist()
    # on the answer "Foo!": contains(ignore case) ✓, not_contains Foo ✗, min_words 2 ✗, starts_with <answer> ✗
    assert ra[0] == 0.0 and ra[4] == pytest.approx(0.25)
    b = make_batch([1], [0], 1, completions=["x"], metas=[{"rules": [{"type": "max_chars", "value": 1},
                                                                     {"type": "not_regex", "value": "X", "ignore_case": True}]}])
    assert RuleFraction(constraints_key="rules")(b).tolist() == [0.5]


def test_rule_fraction_errors_name_sample_and_type():
    metas = [{"constraints": CONSTRAINTS}, {"constraints": [{"type": "max_sentences", "value": 2}]}]
    b = make_batch([3, 3], [0, 0], 2, completions=["a", "b"], metas=metas)
    with pytest.raises(ValueError, match="sample 1: unknown constraint type 'max_sentences'"):
        RuleFraction()(b)
    for bad, msg in [({"value": 3}, "must be a dict with a 'type'"), ({"type": "contains"}, "has no 'value'"),
                     ({"type": "max_words", "value": "ten"}, "non-negative integer"),
                     ({"type": "regex", "value": "("}, "bad regex")]:
        b = make_batch([1], [0], 1, completions=["a"], metas=[{"constraints": [bad]}])
        with pytest.raises(ValueError, match=f"sample 0: .*{re.escape(msg)}"):
            RuleFraction()(b)
    # a malformed constraint is reported even when there is no <answer> to check
    b = make_batch([1], [0], 1, completions=["a"], metas=[{"constraints": [{"type": "nope", "value": 1}]}])
    with pytest.raises(ValueError, match="unknown constraint type 'nope'"):
        RuleFraction(extract="answer")(b)


# ------------------------------------------------------------------------------------------- common


def test_registry_tables_and_pickling_and_extra_kwargs():
    assert set(DENSE) == {"sar", "pear", "repetition", "cost"} and set(TEXT) == {"reference_overlap", "rule_fraction"}
    texts = ["<think>a a a</think><answer>bar foo baz!</answer>", "foo foo foo foo"]
    ids = [[7, TAG, 8], [7, 7, 7]]
    ent = torch.tensor([[0.5, 0.0, 0.1], [0.3, 0.3, 0.3]])
    b = make_batch([3, 3], [1, 0], 2, completions=texts, ids=ids, entropies=ent,
                   metas=[{"constraints": CONSTRAINTS}] * 2, context=FakeContext([-1.0] * 3, [-2.0] * 3))
    comps = [SelfAlignedReward(alpha=0.3), PhaseEntropy(think_end_token_id=TAG), RepetitionPenalty(ngram_size=2),
             CostPenalty(rate=0.01), ReferenceOverlap(metric="f1"), RuleFraction(extract="answer")]
    for comp in comps:
        again = pickle.loads(pickle.dumps(comp))
        want = comp(b)
        assert want.shape == (2,) and want.dtype == torch.float64
        assert again(b, step=3, unused="x").tolist() == want.tolist()
        assert comp.state_dict() == {}


def test_unknown_parameter_rejected():
    for cls in (SelfAlignedReward, PhaseEntropy, RepetitionPenalty, CostPenalty, ReferenceOverlap, RuleFraction):
        with pytest.raises(ValidationError, match="bogus"):
            cls.model_validate({"bogus": 1})


@pytest.mark.parametrize("name", ["sar", "pear"])
def test_recipes_validate(name, monkeypatch):
    from rshape.rewards import REWARDS
    from rshape.validate import load_recipe

    path = ROOT / "recipes" / f"{name}.yaml"
    text = path.read_text()
    assert text.splitlines()[0] == f"# rshape rl recipes/{name}.yaml"
    data = yaml.safe_load(text)
    assert data["output_dir"] == f"runs/{name}"
    quick = yaml.safe_load((ROOT / "recipes" / "length_cosine.yaml").read_text())
    same = ("model", "task", "rollout", "algorithm", "optim")  # the method recipes' world; train length may differ
    assert {k: data[k] for k in same} == {k: quick[k] for k in same}
    ours = {**DENSE, **TEXT}
    entries = [spec for spec in data["rewards"].values() if spec.get("type") in ours]
    assert entries
    for spec in entries:
        ours[spec["type"]].model_validate({k: v for k, v in spec.items() if k not in ("type", "weight")})
    for reg_name, cls in ours.items():  # until rshape.rewards lists these modules in FAMILY_MODULES
        if reg_name not in REWARDS:
            monkeypatch.setitem(REWARDS._table, reg_name, cls)
    recipe = load_recipe(path)
    assert name in recipe.rewards
