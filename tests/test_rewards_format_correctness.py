"""Format, tag count, correctness verifiers and the label-free format-length surrogate, on hand-computed values."""

import pickle
import random
import re

import pytest
from conftest import make_reward_batch
from pydantic import ValidationError

from rshape.rewards.correctness import Correctness
from rshape.rewards.format import Format, TagCount
from rshape.rewards.surrogate import FormatLength, parse_answer, surrogate_length

make_batch = make_reward_batch


# =========================================================================== format and tag_count


def test_format_is_label_free():
    texts = ["<think>a</think><answer>1</answer>", "<answer>1</answer>"]
    a = make_batch([1, 1], [1, 1], 2, completions=texts, answers=["1", "1"])
    b = make_batch([1, 1], [0, 0], 2, completions=texts, answers=["9", "zzz"])
    b.correct = None  # would raise if read
    assert Format()(a).tolist() == Format()(b).tolist() == [1.0, 0.0]
    assert TagCount()(b).tolist() == [0.0, 0.0]


def ref_count_tags(text):
    """open-r1 src/open_r1/rewards.py, tag_count_reward.count_tags."""
    count = 0.0
    if text.count("<think>\n") == 1:
        count += 0.25
    if text.count("\n</think>\n") == 1:
        count += 0.25
    if text.count("\n<answer>\n") == 1:
        count += 0.25
    if text.count("\n</answer>") == 1:
        count += 0.25
    return count


def test_tag_count_by_hand():
    texts = ["<think>\na\n</think>\n<answer>\n1\n</answer>",  # all four
             "<think>a</think><answer>1</answer>",  # no newlines: open-r1 gives nothing
             "<think>\n<think>\na\n</think>\n",  # <think>\n twice: no credit for it; \n</think>\n once
             "", "\n</answer>"]
    b = make_batch([1] * 5, [0] * 5, 5, completions=texts)
    assert TagCount()(b).tolist() == [1.0, 0.0, 0.25, 0.0, 0.25]
    plain = TagCount(tags=("<think>", "</think>", "<answer>", "</answer>"))
    assert plain(b).tolist() == [1.0, 1.0, 0.25, 0.0, 0.25]
    assert TagCount(tags=("<answer>", "</answer>"), per_tag=0.5)(b).tolist() == [1.0, 1.0, 0.0, 0.0, 0.5]


def test_tag_count_agrees_with_open_r1():
    rng = random.Random(0)
    pieces = ["<think>\n", "\n</think>\n", "\n<answer>\n", "\n</answer>", "<think>", "x", "\n", "42"]
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 8))) for _ in range(200)]
    b = make_batch([1] * len(texts), [0] * len(texts), len(texts), completions=texts)
    assert TagCount()(b).tolist() == [ref_count_tags(t) for t in texts]


def test_format_components_pickle_ignore_kwargs_reject_bad_params():
    b = make_batch([1], [1], 1, completions=["<think>\na\n</think>\n<answer>\n1\n</answer>"])
    for comp in (Format(), TagCount(per_tag=0.1)):
        assert pickle.loads(pickle.dumps(comp))(b, extra=1).tolist() == comp(b).tolist()
    for bad, field in [({"tags": []}, "tags"), ({"tags": ["a", ""]}, "tags"), ({"per_tag": 0}, "per_tag")]:
        with pytest.raises(ValidationError) as exc:
            TagCount.model_validate(bad)
        assert field in str(exc.value)


# =========================================================================== correctness verifiers


def test_correctness_task_verdict_by_default():
    b = make_batch([3, 4], [1, 0], 2, completions=["<answer>wrong</answer>", "<answer>1</answer>"])
    assert Correctness()(b).tolist() == [1.0, 0.0]  # batch.correct, not a re-check
    assert Correctness(verifier="exact")(b).tolist() == [0.0, 1.0]


def test_correctness_math_numeric_exact():
    texts = ["<answer>\\frac{1}{2}</answer>", "<answer>1,000</answer>", "<answer>  The Answer. </answer>",
             "\\boxed{0.5}", "no answer at all", ""]
    answers = ["0.5", "1000", "the answer", "1/2", "0.5", "0.5"]
    b = make_batch([1] * 6, [0] * 6, 6, completions=texts, answers=answers)
    assert Correctness(verifier="math")(b).tolist() == [1.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    assert Correctness(verifier="numeric")(b).tolist() == [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert Correctness(verifier="exact")(b).tolist() == [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    assert Correctness(verifier="numeric", wrong_score=-0.5)(b).tolist() == [-0.5, 1.0, -0.5, -0.5, -0.5, -0.5]


def test_correctness_rejects_unknown_verifier():
    with pytest.raises(ValidationError) as exc:
        Correctness.model_validate({"verifier": "llm"})
    assert "verifier" in str(exc.value)


# =========================================================================== format_length (label-free surrogate)
# Transcription of insightLLM/rl-without-gt rl/verl/lib/src/rewards/math_reward.py (Format-Length branch of
# RewardMathFn_xrh, length_reward_func_v3, soft_format_reward_func_v2, answer_format_reward_func) with the
# evaluator's parse_answer / val_by_sympy reduced to what the generated answers below exercise.


def ref_length_reward_func_v3(response_token_len, decay_threshold=0.25, max_length=4096):
    p = decay_threshold
    x = response_token_len / max_length
    if x <= p:
        y = 1 - (1 - x / p) ** 2
    elif x > p:
        y = 1 - 2 * ((x - p) / (1 - p)) ** 2
    return y


def ref_extract_boxed(text):
    start = text.rfind("\\boxed")
    if start == -1:
        return None
    first = start + len("\\boxed")
    stack = []
    for i in range(first, len(text)):
        if text[i] == "{":
            stack.append(i)
        elif text[i] == "}":
            if len(stack) > 0:
                left = stack.pop()
                if left == first:
                    return text[first + 1:i]
    return None


def ref_parse_answer(response):
    match = re.search("<answer>(.*)</answer>", response, re.DOTALL)
    if match:
        pred = match.group(1)
        ans = ref_extract_boxed(pred)
        if ans is None:
            found = re.findall(r"\\\((.*?)\\\)", pred, flags=re.DOTALL)
            ans = found[-1] if found else pred.replace(" ", "").replace("\n", "").replace("$", "").strip()
        return ans
    ans = ref_extract_boxed(response.split("</think>")[-1])
    return "" if ans is None else ans


def ref_val_by_sympy(text):
    from sympy.parsing import sympy_parser

    try:
        sympy_parser.parse_expr(re.sub(r"(?<!=)=(?!=)", "==", text).replace("^", "**"), transformations=(
            sympy_parser.standard_transformations + (sympy_parser.implicit_multiplication_application,)))
        return True
    except Exception:
        return False


def ref_format_length(response, response_token_len, max_response_length):
    soft_format_reward = 1.0 if re.search(r"<think>.*?</think>", response, re.DOTALL) else 0.0
    length_reward = ref_length_reward_func_v3(response_token_len, 0.50, max_response_length)
    answer = ref_parse_answer(response)
    answer_format_reward = 1.0 if len(answer) > 0 and ref_val_by_sympy(answer) else 0.0
    if answer_format_reward > 0:
        return (soft_format_reward + answer_format_reward) * 0.5 + length_reward
    return min(0.0, length_reward)


def test_surrogate_length_curve_by_hand():
    assert [surrogate_length(L, 100) for L in (0, 25, 50, 75, 100)] == pytest.approx([0.0, 0.75, 1.0, 0.5, -1.0])


def test_format_length_by_hand():
    texts = ["<think>a</think><answer>7</answer>",  # think + answer, L = p·L_max → 0.5·2 + 1
             "<answer>7</answer>",  # answer only → 0.5 + R_l(25) = 0.5 + 0.75
             "<think>a</think>",  # no answer → min(0, R_l(75))
             "",  # empty → min(0, 0)
             "<think>a</think> so \\boxed{12}",  # boxed after </think> counts → 1 + R_l(100)
             "<think>aaaa",  # truncated, no answer → min(0, −1)
             "<answer>+</answer>",  # not a valid expression → min(0, R_l(50))
             "<answer>\\(x+1\\)</answer>"]  # \( \) content → 0.5 + R_l(40) = 0.5 + 0.96
    b = make_batch([50, 25, 75, 0, 100, 100, 50, 40], [0] * 8, 8, completions=texts, max_new_tokens=100)
    b.correct = None  # label-free: would raise if read
    want = [2.0, 1.25, 0.0, 0.0, 0.0, -1.0, 0.0, 1.46]
    assert FormatLength()(b).tolist() == pytest.approx(want)
    assert FormatLength(max_length=100)(b).tolist() == pytest.approx(want)
    # without validation any non-empty answer counts
    assert FormatLength(validate_answer=False)(b)[6].item() == pytest.approx(0.5 + 1.0)
    assert parse_answer("<answer>a</answer> <answer>\\boxed{3}</answer>") == "3"  # greedy span, boxed inside


def test_format_length_agrees_with_reference_code():
    rng = random.Random(5)
    answers = ["7", "x+1", "12", "", "3^2", "+", "(", "2x"]
    shapes = ["<think>r</think><answer>{a}</answer>", "<answer>{a}</answer>", "<answer>\\boxed{{{a}}}</answer>",
              "<think>r</think> \\boxed{{{a}}}", "no answer {a}", "<think>r</think>", "<answer>\\({a}\\)</answer>"]
    texts, lengths = [], []
    for _ in range(80):
        texts.append(rng.choice(shapes).format(a=rng.choice(answers)))
        lengths.append(rng.randint(0, 3072))
    b = make_batch(lengths, [0] * len(texts), len(texts), completions=texts)
    got = FormatLength(max_length=3072)(b).tolist()
    assert got == pytest.approx([ref_format_length(t, L, 3072) for t, L in zip(texts, lengths)], abs=1e-6)


def test_format_length_bounded_and_errors():
    lengths = list(range(0, 101, 5))
    texts = ["<think>a</think><answer>7</answer>", "junk"] * 11
    b = make_batch(lengths, [0] * 21, 21, completions=texts[:21], max_new_tokens=100)
    r = FormatLength()(b)
    assert r.min() >= -1.0 and r.max() <= 2.0
    with pytest.raises(ValueError, match="max_new_tokens"):
        FormatLength()(make_batch([3], [0], 1))
    for bad, field in [({"peak": 1.0}, "peak"), ({"max_length": 0}, "max_length"), ({"think_pattern": "("}, "think_pattern"),
                       ({"format_weight": -1}, "format_weight")]:
        with pytest.raises(ValidationError) as exc:
            FormatLength.model_validate(bad)
        assert field in str(exc.value)
    comp = FormatLength()
    assert pickle.loads(pickle.dumps(comp))(b, extra=1).tolist() == comp(b).tolist()
