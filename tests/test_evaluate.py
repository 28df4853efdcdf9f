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
