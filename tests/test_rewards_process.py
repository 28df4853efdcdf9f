"""Process rewards with Clip / Delta refinement (Gao et al. 2024): hand values, bounds, scorers, errors."""

import pickle
import random

import pytest
import torch
from test_rewards_basic import make_batch

from rshape.rewards import RewardConfigError, RewardRuntimeError, build_rewards
from rshape.rewards.process import ProcessReward, addition_step_scores, refine_step_rewards
from rshape.tasks.arithmetic import make_trace


def test_refinements_by_hand():
    r = [0.7, 0.2, 0.4, 0.8]
    assert refine_step_rewards(r, "none") == r
    assert refine_step_rewards(r, "clip", eta=0.5) == pytest.approx([0.0, -0.3, -0.1, 0.0])
    assert refine_step_rewards(r, "delta") == pytest.approx([0.5, -0.2, -0.4, 0.0])
    assert sum(refine_step_rewards(r, "delta")) == pytest.approx(0.7 - 0.8)  # telescopes to r_1 − r_K
    for refine in ("none", "clip", "delta"):
        assert refine_step_rewards([], refine) == []
    assert refine_step_rewards([0.9], "delta") == [0.0] and refine_step_rewards([0.9], "clip", eta=0.5) == [0.0]
    with pytest.raises(ValueError, match="unknown refine"):
        refine_step_rewards(r, "cut")


def test_repeating_good_steps_pays_only_without_refinement():
    """The paper's point: with the naive sum, appending correct steps raises the return; Clip and Delta
    bound it (Clip ≤ 0, Delta within the score range) whatever the number of steps."""
    rng = random.Random(0)
    for _ in range(200):
        scores = [rng.random() for _ in range(rng.randint(1, 12))]
        longer = scores + [1.0] * rng.randint(1, 10)  # repeat good steps
        assert sum(refine_step_rewards(longer, "none")) > sum(refine_step_rewards(scores, "none"))
        assert sum(refine_step_rewards(longer, "clip", eta=1.0)) == pytest.approx(sum(refine_step_rewards(scores, "clip")))
        assert sum(refine_step_rewards(longer, "clip", eta=0.5)) <= 0.0
        assert -1.0 <= sum(refine_step_rewards(longer, "delta")) <= 1.0


def test_addition_step_scorer():
    assert addition_step_scores("p", ["8+6+0=14", "7+9+1=18", "check:", "4+0+1=5"]) == [1.0, 0.0, None, 1.0]


TEXTS = {
    "full": make_trace(478, 96, "full"),  # 3 correct column steps
    "overthink": make_trace(478, 96, "overthink"),  # the same 3 steps twice, around "check:"
    "direct": make_trace(478, 96, "direct"),  # <think></think>: no steps
    "wrong_middle": "<think>8+6+0=14\n7+9+1=18\n4+0+1=5\n</think><answer>584</answer>",
    "wrong_first": "<think>8+6+0=13\n7+9+1=17\n4+0+1=5\n</think><answer>574</answer>",
    "truncated": "<think>8+6+0=14\n7+9+",  # cut by the generation limit: the partial line is not a step
    "no_think": "574",
    "empty": "",
}
# Σ of refined step rewards, η = 1 for clip: (none, clip, delta)
WANT = {
    "full": (3, 0, 0), "overthink": (6, 0, 0), "direct": (0, 0, 0), "wrong_middle": (2, -1, 0),
    "wrong_first": (2, -1, -1), "truncated": (1, 0, 0), "no_think": (0, 0, 0), "empty": (0, 0, 0),
}


@pytest.mark.parametrize("refine,col", [("none", 0), ("clip", 1), ("delta", 2)])
def test_process_reward_on_completions(refine, col):
    names = list(TEXTS)
    batch = make_batch([len(TEXTS[n]) for n in names], [0] * len(names), len(names),
                       completions=[TEXTS[n] for n in names], truncated=[n == "truncated" for n in names])
    comp = ProcessReward(refine=refine)
    got = comp(batch, unused=1)
    assert got.tolist() == [float(WANT[n][col]) for n in names]
    assert pickle.loads(pickle.dumps(comp))(batch).tolist() == got.tolist()


def test_steps_split_by_region_and_pattern():
    comp = ProcessReward(region=None, step_pattern=r"\s*;\s*", scorer="user_rewards:step_lengths", refine="none")
    assert comp.steps("ab; c ;; def") == ["ab", "c", "def"]
    assert comp(make_batch([1], [1], 1, completions=["ab; c ;; def"])).tolist() == [6.0]


def test_rm_scorer_scores_each_prefix(monkeypatch):
    from rshape.rewards.model import RewardModelReward

    seen = {}

    def fake_score(self, prompts, completions):
        seen["prompts"], seen["prefixes"] = prompts, completions
        return torch.tensor([0.9, 0.4, 0.8]), None

    monkeypatch.setattr(RewardModelReward, "score", fake_score)
    comp = ProcessReward(scorer="rm", rm_path="some/rm", refine="delta")
    out = comp(make_batch([1], [1], 1, completions=["<think>a\nb\nc\n</think>"]))
    assert seen["prefixes"] == ["a", "a\nb", "a\nb\nc"] and seen["prompts"] == ["p"] * 3
    assert out.tolist() == [pytest.approx(0.9 - 0.8)]


def test_bad_process_config_and_scorer_errors():
    with pytest.raises(RewardConfigError) as exc:
        build_rewards({"a": {"type": "process", "scorer": "rm"}, "b": {"type": "process", "region": "<think>.*"},
                       "c": {"type": "process", "step_pattern": "("}, "d": {"type": "process", "scorer": "nonsense"},
                       "e": {"type": "process", "refine": "cut"}})
    lines = [f"{'.'.join(k)}: {m}" for k, m in exc.value.problems]
    assert len(lines) == 5
    assert "rm_path" in lines[0] and "capture group" in lines[1] and "regular expression" in lines[2]
    assert "unknown scorer 'nonsense'" in lines[3] and lines[4].startswith("rewards.e.refine")
    rs = build_rewards({"steps": {"type": "process", "scorer": "user_rewards:too_few_step_scores"}})
    with pytest.raises(RewardRuntimeError, match="reward 'steps' \\(process\\).*returned 1 scores for 2 steps"):
        rs.score(make_batch([1], [1], 1, completions=["<think>1+1+0=2\n2+2+0=4\n</think>"]))
