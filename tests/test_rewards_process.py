"""Process rewards with Clip / Delta refinement (Gao et al. 2024): hand values, bounds, scorers, errors."""

import pickle
import random

import pytest
import torch
from conftest import make_reward_batch as make_batch

from rshape.rewards import RewardConfigError, RewardRuntimeError, build_rewards
from rshape.rewards.process import ProcessReward, addition_step_scores, refine_step_rewards
from rshape.rl.advantages import step_advantages
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
    text = "ab; c ;; def"
    assert [text[a:b] for a, b in comp.step_spans(text)] == ["ab", "c", "def"]
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


def test_process_token_advantages_by_hand():
    from rshape.rl.advantages import process_token_advantages

    steps = [[(1, 0.5), (3, -1.0)], [(2, 1.0)], [], [(9, 2.0)]]  # two groups of 2; the last end is past the width
    none = process_token_advantages(steps, 2, 5, "none")
    assert none.tolist() == [[-0.5, -0.5, -1.0, -1.0, 0.0], [1.0, 1.0, 1.0, 0.0, 0.0],
                             [0.0] * 5, [2.0] * 5]
    grp = process_token_advantages(steps, 2, 5, "group", eps=0.0)
    v = torch.tensor([0.5, -1.0, 1.0], dtype=torch.float64)
    z = ((v - v.mean()) / v.std()).tolist()
    torch.testing.assert_close(grp[0], torch.tensor([z[0] + z[1], z[0] + z[1], z[1], z[1], 0.0]))
    torch.testing.assert_close(grp[1], torch.tensor([z[2], z[2], z[2], 0.0, 0.0]))
    assert grp[2:].abs().sum() == 0  # one step in the group: nothing to normalise against
    equal = process_token_advantages([[(0, 1.0)], [(1, 1.0)]], 2, 3, "group")
    assert equal.abs().sum() == 0  # all step rewards equal
    with pytest.raises(ValueError, match="unknown step normalisation"):
        process_token_advantages(steps, 2, 5, "whiten")


class _PieceTokenizer:
    """A tokenizer whose tokens are multi-character pieces (decode = concatenation)."""

    pieces = {1: "ab", 2: "\n", 3: "cde"}

    def decode(self, ids, skip_special_tokens=False):
        return "".join(self.pieces[i] for i in ids)


def test_token_index_of_char():
    from rshape.rewards.process import token_index_of_char
    from rshape.tasks.tokenizer import build_char_tokenizer

    tok = _PieceTokenizer()
    assert [token_index_of_char([1, 2, 3], tok, c) for c in (1, 2, 3, 4, 6, 99)] == [0, 0, 1, 2, 2, 2]
    assert token_index_of_char([], tok, 3) == 0
    chars = build_char_tokenizer()
    ids = chars("12+3\n45", add_special_tokens=False)["input_ids"]
    assert [token_index_of_char(ids, chars, c) for c in (1, 4, 5, 7)] == [0, 3, 4, 6]  # one token per character


def test_step_rewards_point_at_the_step_ends():
    from rshape.tasks.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    text = "<think>8+6+0=14\n7+9+1=18\n</think><answer>184</answer>"
    batch = make_batch([len(text)], [0], 1, completions=[text])
    batch.completion_ids = [tok(text, add_special_tokens=False)["input_ids"]]
    def last_token(char_end):  # independent: how many tokens the text up to there takes (<think> is one token)
        return len(tok(text[:char_end], add_special_tokens=False)["input_ids"]) - 1

    ends = [last_token(15), last_token(24)]  # "…=14" ends at character 15, "…=18" (wrong) at 24
    assert ends == [8, 17]
    assert ProcessReward(refine="clip").step_rewards(batch, tok) == [[(ends[0], 0.0), (ends[1], -1.0)]]
    assert ProcessReward(refine="delta").step_rewards(batch, tok) == [[(ends[0], 1.0), (ends[1], 0.0)]]


def test_per_step_combine_keeps_the_process_reward_out_of_the_total():
    from rshape.tasks.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    texts = ["<think>1+1+0=2\n2+2+0=5\n</think><answer>52</answer>", "<think>1+1+0=2\n</think><answer>2</answer>"]
    batch = make_batch([len(t) for t in texts], [0, 1], 2, completions=texts)
    batch.completion_ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    rs = build_rewards({"correctness": {"weight": 1.0},
                        "steps": {"type": "process", "refine": "clip", "combine": "per_step", "weight": 0.5}})
    scores = rs.score(batch)
    assert scores.total.tolist() == [0.0, 1.0]  # correctness only
    assert scores.raw["steps"].tolist() == [-1.0, 0.0] and scores.metrics["reward/steps/weighted"] == -0.25
    adv = step_advantages(rs.step_rewards(batch, tok), 2, 40)
    assert adv.shape == (2, 40)
    wrong_end = len(tok(texts[0][:22], add_special_tokens=False)["input_ids"]) - 1  # "2+2+0=5" ends at character 22
    assert adv[0, :wrong_end + 1].eq(-0.5).all() and adv[0, wrong_end + 1:].eq(0).all()
    assert adv[1].eq(0).all()
    assert build_rewards({"correctness": {}}).step_rewards(batch, tok) == []
    assert step_advantages([], 2, 40) is None
    with pytest.raises(RewardConfigError) as exc:
        build_rewards({"c": {"type": "correctness", "combine": "per_step"},
                       "p": {"type": "process", "combine": "per_step", "gate": {"on": "c"}},
                       "q": {"type": "process", "combine": "sideways"}})
    lines = [f"{'.'.join(k)}: {m}" for k, m in exc.value.problems]
    assert lines[0].startswith("rewards.c.combine: per_step needs a component with step rewards")
    assert any(line.startswith("rewards.q.combine: add, multiply or per_step") for line in lines)
    assert any(line == "rewards.p.gate: a per_step component cannot be gated" for line in lines)


def test_token_level_advantages_equal_sequence_ones_when_constant():
    from rshape.rl.loss import clipped_policy_loss

    g = torch.Generator().manual_seed(0)
    logp, old = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    adv = torch.tensor([0.5, -1.0, 2.0])
    for agg in ("grpo", "dapo"):
        kw = dict(clip_low=0.2, clip_high=0.3, agg=agg, num_sequences=3, num_tokens=9)
        a = clipped_policy_loss(logp, old, adv, mask, **kw)
        b = clipped_policy_loss(logp, old, adv[:, None].expand(3, 4), mask, **kw)
        assert torch.allclose(a.loss, b.loss) and a.clip_low == b.clip_low and a.clip_high == b.clip_high
