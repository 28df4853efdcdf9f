"""Held-out evaluation: binomial intervals, avg@k, per-difficulty summaries."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rshape.evaluate import evaluate_policy, summarize
from rshape.stats import cluster_interval, wilson_interval
from rshape.tasks.arithmetic import addition_task


def test_wilson_interval_hand_values():
    # 0/10: centre = (z²/20)/(1 + z²/10), half = z·√(z²/400)/(1 + z²/10) → (0, 0.2775), the textbook value
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.27754, abs=1e-5)
    lo, hi = wilson_interval(5, 10)  # symmetric around 0.5
    assert (lo, hi) == (pytest.approx(0.23659, abs=1e-5), pytest.approx(0.76341, abs=1e-5))
    lo, hi = wilson_interval(10, 10)
    assert lo == pytest.approx(0.72247, abs=1e-5) and hi == pytest.approx(1.0)
    # 990 / 1000: an interval of about ±0.6 points
    z = 1.959963984540054
    p, n = 0.99, 1000
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert wilson_interval(990, 1000) == (pytest.approx(centre - half), pytest.approx(centre + half))
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


def test_cluster_interval_hand_values():
    # per-problem accuracies 0.4, 0.5, 0.6: mean 0.5, sample std 0.1 → 0.5 ± 1.96·0.1/√3 = 0.5 ± 0.11316
    lo, hi = cluster_interval([0.4, 0.5, 0.6])
    assert (lo, hi) == (pytest.approx(0.38684, abs=1e-5), pytest.approx(0.61316, abs=1e-5))
    assert cluster_interval([0.0, 0.5, 1.0])[0] == 0.0  # clipped to [0, 1]
    assert cluster_interval([1.0, 1.0]) == (1.0, 1.0)
    assert cluster_interval([0.25]) == (0.0, 1.0)


def _rec(pid, d, correct, length, sample=0):
    return {"id": pid, "difficulty": d, "sample": sample, "correct": correct, "length": length, "truncated": False}


def test_summarize_greedy_and_avg_at_k():
    greedy = [_rec("a", 1, True, 10), _rec("b", 1, False, 20), _rec("c", 2, True, 30), _rec("d", 2, True, 40)]
    m = summarize(greedy)
    assert m["eval/accuracy"] == 0.75 and m["eval/length"] == 25
    assert (m["eval/accuracy_low"], m["eval/accuracy_high"]) == wilson_interval(3, 4)
    assert m["eval/accuracy/difficulty_1"] == 0.5 and m["eval/length/difficulty_2"] == 35
    assert (m["eval/accuracy_low/difficulty_2"], m["eval/accuracy_high/difficulty_2"]) == wilson_interval(2, 2)
    assert m["eval/problems"] == 4 and m["eval/samples_per_problem"] == 1
    # avg@2: problem a 2/2, b 1/2 → 0.75, interval over the two per-problem means
    sampled = [_rec("a", 1, True, 10, 0), _rec("a", 1, True, 12, 1), _rec("b", 1, True, 20, 0),
               _rec("b", 1, False, 22, 1)]
    m = summarize(sampled)
    assert m["eval/accuracy"] == 0.75 and m["eval/samples_per_problem"] == 2 and m["eval/problems"] == 2
    assert (m["eval/accuracy_low"], m["eval/accuracy_high"]) == cluster_interval([1.0, 0.5])


def test_pass_at_k_by_hand():
    from rshape.stats import pass_at_k

    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 − C(3,2)/C(4,2)
    assert pass_at_k(5, 2, 3) == pytest.approx(1 - 1 / 10)  # 1 − C(3,3)/C(5,3)
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 3, 2) == 1.0 and pass_at_k(4, 4, 1) == 1.0
    assert pass_at_k(8, 3, 1) == pytest.approx(3 / 8)  # pass@1 is the fraction right
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_summarize_pass_at_k_and_token_splits_by_hand():
    """3 problems × 4 samples. a: right once (lengths 10..40); b: right twice (10, 10; wrong 50, 50); c: never right
    (60 × 4, one truncated)."""
    recs = [_rec("a", 1, c, n, i) for i, (c, n) in enumerate([(True, 10), (False, 20), (False, 30), (False, 40)])]
    recs += [_rec("b", 1, c, n, i) for i, (c, n) in enumerate([(True, 10), (True, 10), (False, 50), (False, 50)])]
    recs += [_rec("c", 2, False, 60, i) for i in range(4)]
    recs[-1]["truncated"] = True
    m = summarize(recs)
    assert m["eval/accuracy"] == pytest.approx(3 / 12)  # avg@4
    assert m["eval/pass@2"] == pytest.approx((0.5 + 5 / 6 + 0) / 3)  # a: 1 − 3/6, b: 1 − 1/6, c: 0
    assert m["eval/pass@4"] == pytest.approx(2 / 3) and "eval/pass@8" not in m and "eval/pass@3" not in m
    assert (m["eval/pass@4_low"], m["eval/pass@4_high"]) == cluster_interval([1.0, 1.0, 0.0])
    assert m["eval/length"] == pytest.approx(460 / 12)
    assert m["eval/length_correct"] == pytest.approx(30 / 3) and m["eval/length_wrong"] == pytest.approx(430 / 9)
    # equal cluster sizes: the clustered interval is mean ± 1.96·sd(per-problem means)/√n
    means = [25.0, 30.0, 60.0]
    mu = sum(means) / 3
    half = 1.959963984540054 * math.sqrt(sum((x - mu) ** 2 for x in means) / 2) / math.sqrt(3)
    assert (m["eval/length_low"], m["eval/length_high"]) == (pytest.approx(mu - half), pytest.approx(mu + half))
    assert m["eval/truncation"] == pytest.approx(1 / 12)
    assert m["eval/pass@4/difficulty_1"] == 1.0 and m["eval/pass@4/difficulty_2"] == 0.0
    assert math.isnan(m["eval/length_correct/difficulty_2"])  # no right answer: no mean


def test_evaluate_policy_greedy_and_sampled(random_model_dir):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(random_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(random_model_dir)
    task = addition_task((1, 2), train_per_difficulty=1, eval_per_difficulty=3)
    m, recs = evaluate_policy(model, tok, task, max_new_tokens=6, batch_size=4)
    assert len(recs) == 6 and m["eval/samples_per_problem"] == 1 and m["eval/problems"] == 6
    m2, recs2 = evaluate_policy(model, tok, task, max_new_tokens=6, batch_size=4)
    assert [r["completion"] for r in recs] == [r["completion"] for r in recs2]  # greedy is deterministic
    m3, recs3 = evaluate_policy(model, tok, task, max_new_tokens=6, batch_size=4, samples=3, seed=5)
    assert len(recs3) == 18 and m3["eval/samples_per_problem"] == 3
    assert [r["sample"] for r in recs3[:3]] == [0, 1, 2]
    # sampling noise keyed by (seed, problem, sample) only: another batch size gives the same completions
    _, recs4 = evaluate_policy(model, tok, task, max_new_tokens=6, batch_size=9, samples=3, seed=5)
    assert [r["completion"] for r in recs3] == [r["completion"] for r in recs4]
    _, recs5 = evaluate_policy(model, tok, task, max_new_tokens=6, batch_size=9, samples=3, seed=6)
    assert [r["completion"] for r in recs3] != [r["completion"] for r in recs5]
