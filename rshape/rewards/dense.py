"""Dense and self-derived rewards: Self-Aligned Reward, PEAR phase entropy, n-gram repetition, cost (docs/methods.md)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from rshape.batch import Batch
from rshape.rewards.base import REWARDS, RewardComponent


def empty_question_prompt(prompt: Any, empty_prompt: str = "") -> Any:
    """The prompt with the question removed and the template kept.

    A plain-text prompt becomes `empty_prompt`; a chat keeps every message but the content of each
    user turn becomes "" (the system prompt and the chat template stay, as in the SAR code).
    """
    if isinstance(prompt, str):
        return empty_prompt
    return [{**m, "content": ""} if m.get("role") == "user" else dict(m) for m in prompt]


@REWARDS.register("sar")
class SelfAlignedReward(RewardComponent):
    """Self-Aligned Reward (SAR): how much better the policy predicts its answer once it sees the question.

    ppl(a|q) = exp(−mean_t log π(a_t | q, a_<t)) with the normal prompt, ppl(a) the same with an
    empty question (same template), both under the current policy (batch.context.logprobs);
    R_SA = clip((ppl(a) − ppl(a|q)) / ppl(a), −1, 1);  r = c + α·R_SA  (or α·R_SA alone when
    `include_correctness` is false, e.g. next to a separate `correctness` entry).
    R_SA < 1 always (ppl(a|q) > 0), so only the lower clip ever acts. Computed as 1 − exp(nll(a|q) − nll(a)),
    which equals the ratio form without overflow.

    Source: Han et al., "Self-Aligned Reward: Towards Effective and Efficient Reasoners", arXiv 2509.05489
    (docs/methods.md). Compared against amazon-science/Self-Aligned-Reward-Towards_Effective_and_Efficient_Reasoners:
    verl/utils/reward_score/efficiency_reward.py `compute_ppl_qa_log` with the defaults of
    verl/trainer/config/ppo_trainer.yaml (use_log false, use_denominator true, clip_value −1):
    max((A − QA)/(A + 1e−9), −1); ppl from verl/trainer/ppo/ray_trainer.py `compute_perplexity`, the empty
    question from `create_ans_only_batch` (system prompt kept, user content ""); α = 0.2 from scripts/SA-grpo-*.sh
    (reward_factors [1, 0.2]). Deviations: (1) the 1e−9 in the denominator is dropped (a relative change of
    < 1e−9, since ppl ≥ 1 in practice); (2) the mean runs over the generated tokens without EOS (rshape's
    completion_ids carry no EOS; the verl response mask includes it); (3) an empty completion gets R_SA = 0
    (the code divides by a zero length), and R_SA = 0 when both perplexities are infinite.
    """

    summary: ClassVar[str] = (
        'r = c + α·clip((ppl(a) − ppl(a|q))/ppl(a), −1, 1) under the current policy, ppl(a) with the '
        'question emptied (one extra forward pass)'
    )
    source: ClassVar[str] = 'Self-Aligned Reward, arXiv 2509.05489'

    alpha: float = 0.2
    """Weight α of R_SA inside this reward (the paper's and code's 0.2)."""
    include_correctness: bool = True
    """Add the verifier's c_i (r = c + α·R_SA, as in the paper); false gives α·R_SA alone."""
    empty_prompt: str = ""
    """Prompt for ppl(a) when prompts are plain text (chat prompts keep their template with empty user turns)."""

    def self_aligned(self, batch: Batch) -> torch.Tensor:
        """R_SA for every completion, [N] float."""
        if batch.context is None:
            raise ValueError("sar needs the policy: batch.context is None, but SAR scores each completion's "
                             "log-probs with and without the question under the current policy; run it inside "
                             "the training loop or give the batch a RewardContext")
        n = len(batch.completion_ids)
        r = torch.zeros(n, dtype=torch.float64)
        rows = [i for i in range(n) if len(batch.completion_ids[i]) > 0]  # empty completions keep R_SA = 0
        if not rows:
            return r.double()
        ids = [list(batch.completion_ids[i]) for i in rows]
        with_q = batch.context.logprobs([batch.prompts[i] for i in rows], ids)
        without_q = batch.context.logprobs([empty_question_prompt(batch.prompts[i], self.empty_prompt) for i in rows], ids)
        for j, i in enumerate(rows):
            lq = torch.as_tensor(with_q[j], dtype=torch.float64).reshape(-1)
            la = torch.as_tensor(without_q[j], dtype=torch.float64).reshape(-1)
            if lq.numel() != len(ids[j]) or la.numel() != len(ids[j]):
                raise ValueError(f"sar: context.logprobs returned {lq.numel()} and {la.numel()} log-probs for "
                                 f"completion {i} of {len(ids[j])} tokens")
            nll_qa, nll_a = -lq.mean(), -la.mean()
            value = (1.0 - torch.exp(nll_qa - nll_a)).clamp(-1.0, 1.0)
            r[i] = 0.0 if torch.isnan(value) else value
        return r.double()

    def __call__(self, batch: Batch, **_: Any) -> torch.Tensor:
        r = self.alpha * self.self_aligned(batch)
        if self.include_correctness:
            r = r + batch.correct.double()
        return r


def find_tag_span(ids: list[int], text: str, tag: str, tag_token_id: int | None, tokenizer: Any) -> tuple[int, int] | None:
    """Token positions [s, e] (inclusive) of the first `tag` in a completion, or None when it has none.

    `tag_token_id`, when given, is searched for directly. Otherwise the tokenizer locates the tag: first as a
    single vocabulary token, then by decoding — e is the smallest index whose decoded prefix ids[:e+1] contains
    the tag, s the largest index ≤ e whose decoded span ids[s:e+1] still contains it (both by bisection, since
    containment only grows with the span: O(log T) decodes). The text is checked first, so a completion
    without the tag needs neither.
    """
    if tag_token_id is not None:
        return (ids.index(tag_token_id),) * 2 if tag_token_id in ids else None
    if tag not in text:
        return None
    if tokenizer is None:
        raise ValueError(f"pear: cannot find {tag!r} among token ids without a tokenizer; set think_end_token_id "
                         f"or give the batch a tokenizer (batch.tokenizer or batch.context.tokenizer)")

    def decode(part: list[int]) -> str:
        return tokenizer.decode(part, skip_special_tokens=False)

    try:
        single = tokenizer.convert_tokens_to_ids(tag)
    except Exception:  # noqa: BLE001 - any tokenizer without a usable vocabulary lookup
        single = None
    if isinstance(single, int) and single != getattr(tokenizer, "unk_token_id", None) and single in ids \
            and decode([single]) == tag:
        k = ids.index(single)
        return k, k
    if tag not in decode(ids):
        return None
    lo, hi = 0, len(ids) - 1  # smallest e with tag in decode(ids[:e+1])
    while lo < hi:
        mid = (lo + hi) // 2
        if tag in decode(ids[: mid + 1]):
            hi = mid
        else:
            lo = mid + 1
    e = lo
    lo, hi = 0, e  # largest s with tag in decode(ids[s:e+1])
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if tag in decode(ids[mid : e + 1]):
            lo = mid
        else:
            hi = mid - 1
    return lo, e


@REWARDS.register("pear")
class PhaseEntropy(RewardComponent):
    """PEAR, phase-entropy-aware reward: low entropy while thinking, exploration allowed in the answer.

    H_t = sampling entropy of token t (batch.token_entropies); k = position of the first `</think>` token;
    H̄_think = mean H_t for t < k, H̄_answer = mean H_t for t > k (no tag: k = L, H̄_answer = 0; an empty
    phase has mean 0); P = max(0, H̄_think − α·H̄_answer); r = min(1, 1 − P) if correct, else `wrong_score`
    (the format score, 0). When the tag spans several tokens, the whole span is excluded from both phases.
    r ≤ 1 always (P ≥ 0, so the min never acts) but is not bounded below: a very uncertain thinking phase
    (H̄_think > 1 + α·H̄_answer) gives a correct answer a negative reward, as the formula says.

    Source: PEAR ("phase entropy aware reward", docs/methods.md, a secondary summary; no public code exists, so
    this follows docs/methods.md). The tag is located in token ids by `think_end_token_id`, else with a tokenizer read
    from `batch.tokenizer` or `batch.context.tokenizer` (see `find_tag_span`).
    """

    summary: ClassVar[str] = (
        'r = min(1, 1 − max(0, H̄_think − α·H̄_answer)) if correct, else `wrong_score`; entropies of the '
        'sampling policy split at `</think>`'
    )
    source: ClassVar[str] = 'PEAR (phase entropy aware reward)'

    needs_entropies: ClassVar[bool] = True

    alpha: float = Field(default=1.0, ge=0.0)
    """Weight α of the answer-phase entropy subtracted from the thinking-phase entropy."""
    wrong_score: float = 0.0
    """Reward of a wrong completion (the format score in the paper's setting)."""
    think_end: str = Field(default="</think>", min_length=1)
    """The tag that closes the thinking phase."""
    think_end_token_id: int | None = Field(default=None, ge=0)
    """Token id of the tag, when it is one token (e.g. Qwen3's `</think>`); skips the tokenizer search."""

    def __call__(self, batch: Batch, **_: Any) -> torch.Tensor:
        if batch.token_entropies is None:
            raise ValueError("pear needs per-token sampling entropies (batch.token_entropies is None); the loop "
                             "records them when a component sets needs_entropies")
        ent = batch.token_entropies.detach().double().cpu()  # [N, T]
        tokenizer = batch.tokenizer or (batch.context.tokenizer if batch.context is not None else None)
        out = torch.empty(len(batch.completion_ids), dtype=torch.float64)
        for i, ids in enumerate(batch.completion_ids):
            if batch.correct[i] <= 0:
                out[i] = self.wrong_score
                continue
            ids = list(ids)
            L = len(ids)
            if ent.shape[1] < L:
                raise ValueError(f"pear: token_entropies has {ent.shape[1]} columns but completion {i} has {L} tokens")
            span = find_tag_span(ids, batch.completions[i], self.think_end, self.think_end_token_id, tokenizer)
            s, e = span if span is not None else (L, L)
            h = ent[i, :L]
            h_think = h[:s].mean() if s > 0 else torch.tensor(0.0, dtype=torch.float64)
            h_answer = h[e + 1 :].mean() if e + 1 < L else torch.tensor(0.0, dtype=torch.float64)
            p = (h_think - self.alpha * h_answer).clamp(min=0.0)
            out[i] = torch.clamp(1.0 - p, max=1.0)
        return out.double()


@REWARDS.register("repetition")
class RepetitionPenalty(RewardComponent):
    """N-gram repetition penalty: r = p·(1 − #unique n-grams / #n-grams), p = max_penalty ≤ 0.

    A completion with fewer than n units (or empty) gets 0; a fully repetitive one approaches p.
    Source: "Demystifying Long Chain-of-Thought Reasoning" (arXiv 2502.03373) App. C.2, as coded in open-r1
    (src/open_r1/rewards.py `get_repetition_penalty_reward`: lower-cased whitespace words, the default `unit:
    words`) and in TRL (trl/rewards/other_rewards.py `get_repetition_penalty_reward`, which in its current
    version counts token ids: `unit: tokens`). docs/methods.md.
    """

    summary: ClassVar[str] = 'r = p·(1 − unique n-grams / total n-grams); 0 when shorter than n'
    source: ClassVar[str] = 'arXiv 2502.03373; open-r1 / TRL'

    ngram_size: int = Field(default=3, gt=0)
    """n, the n-gram size."""
    max_penalty: float = Field(default=-1.0, le=0.0)
    """p, the (non-positive) reward of a fully repetitive completion."""
    unit: Literal["words", "tokens"] = "words"
    """`words`: lower-cased whitespace words of the text (open-r1); `tokens`: the generated token ids (TRL)."""

    def penalty(self, units: list[Any]) -> float:
        n = self.ngram_size
        if len(units) < n:
            return 0.0
        grams = list(zip(*[units[j:] for j in range(n)]))
        scaling = 1.0 - len(set(grams)) / len(grams)
        return scaling * self.max_penalty if scaling else 0.0

    def __call__(self, batch: Batch, **_: Any) -> torch.Tensor:
        if self.unit == "words":
            seqs = [text.lower().split() for text in batch.completions]
        else:
            seqs = [list(ids) for ids in batch.completion_ids]
        return torch.tensor([self.penalty(s) for s in seqs], dtype=torch.float64)


@REWARDS.register("cost")
class CostPenalty(RewardComponent):
    """A negative reward proportional to a cost: r = −rate·L (L in tokens), or −rate·meta[cost_key].

    Source: Router-R1 (arXiv 2506.09033), cost reward (docs/methods.md, [abs]). With `cost_key` set, every problem
    must carry a numeric meta column of that name (e.g. the price of the model a router called).
    """

    summary: ClassVar[str] = 'r = −rate·L, or −rate·(a numeric data column)'
    source: ClassVar[str] = 'Router-R1, arXiv 2506.09033'

    rate: float = Field(default=0.001, ge=0.0)
    """Cost per token (or per unit of the meta column)."""
    cost_key: str | None = None
    """Name of a numeric problem.meta column to use instead of the token length."""

    def __call__(self, batch: Batch, **_: Any) -> torch.Tensor:
        if self.cost_key is None:
            return -self.rate * batch.lengths.double()
        costs = []
        for i, p in enumerate(batch.problems):
            if self.cost_key not in p.meta:
                raise ValueError(f"cost: sample {i} (problem {p.id!r}) has no meta column {self.cost_key!r}")
            value = p.meta[self.cost_key]
            try:
                costs.append(float(value))
            except (TypeError, ValueError):
                raise ValueError(f"cost: sample {i} (problem {p.id!r}) has a non-numeric {self.cost_key!r}: {value!r}") from None
        return -self.rate * torch.tensor(costs, dtype=torch.float64)
