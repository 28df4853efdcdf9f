"""Curricula: difficulty trackers, stage promotion, retirement, medium upweighting, orders, budgets, exact resume."""

import math
import pickle
from collections import Counter

import pytest
from pydantic import ValidationError

from rshape.curriculum.config import CurriculumConfig
from rshape.curriculum.sampler import CurriculumSampler
from rshape.curriculum.trackers import EmaPassRate, GroupPassRate, ProbePassRate, StaticLabel
from rshape.sampler import PromptSampler
from rshape.tasks.base import Problem


def make_pool(n=12, levels=4, **meta):
    return [Problem(id=f"p{i}", prompt=f"q{i}", answer=str(i), difficulty=i % levels + 1, meta=dict(meta)) for i in range(n)]


def by_id(pool):
    return {p.id: p for p in pool}


def solve_rate(p, step):
    """A scripted policy: easier labels are solved more often, with some step-to-step variation."""
    base = {1: 1.0, 2: 0.75, 3: 0.5, 4: 0.0}[p.difficulty]
    wobble = ((int(p.id[1:]) * 7 + step) % 3 - 1) * 0.25
    return min(1.0, max(0.0, base + wobble)) if p.difficulty in (2, 3) else base


def simulate(sampler, steps, start=1, B=4):
    """What the loop does each step: draw, observe the group pass rates, log metrics, report."""
    log = []
    for step in range(start, start + steps):
        drawn = sampler.next(B)
        rates = [solve_rate(p, step) for p in drawn]
        sampler.observe([p.id for p in drawn], rates, step)
        metrics = {"accuracy": sum(rates) / len(rates), **sampler.metrics()}
        sampler.report(step, metrics)
        log.append(([p.id for p in drawn], [p.meta.get("target_length") for p in drawn], sampler.stage, metrics))
    return log


def is_plain(x):
    if isinstance(x, dict):
        return all(isinstance(k, (str, int)) and is_plain(v) for k, v in x.items())
    if isinstance(x, (list, tuple)):
        return all(is_plain(v) for v in x)
    return x is None or isinstance(x, (bool, int, float, str))


# ------------------------------------------------------------------------------------------------ trackers


def test_group_pass_rate_tracker():
    pool = make_pool(4)
    t = GroupPassRate(pool)
    assert t.pass_rate(pool[0]) is None and t.bucket(pool[0]) is None
    t.observe(["p0", "p1", "p2", "p3"], [1.0, 0.5, 0.25, 2 / 3], step=1)
    assert [t.bucket(p) for p in pool] == ["easy", "medium", "hard", "easy"]
    t.observe(["p0", "p2"], [1 / 3, 0.0], step=2)  # the latest group replaces the old one
    assert t.pass_rate(pool[0]) == pytest.approx(1 / 3) and t.bucket(pool[0]) == "medium"  # 1/3 is not < 1/3
    assert t.visits(pool[0]) == 2 and t.visits(pool[1]) == 1
    m = t.metrics()
    assert m["tracker/known"] == 1.0
    assert (m["tracker/easy"], m["tracker/medium"], m["tracker/hard"]) == (0.25, 0.5, 0.25)
    assert m["tracker/pass_rate_mean"] == pytest.approx((1 / 3 + 0.5 + 0.0 + 2 / 3) / 4)
    assert m["tracker/unsolved"] == 0.25 and m["tracker/solved"] == 0.0
    import torch

    f32 = torch.tensor([1.0, 1.0, 0.0]).mean().item()  # 2/3 as the loop computes it (float32)
    t.observe(["p1"], [f32], 3)
    assert t.bucket(pool[1]) == "easy"


def test_ema_tracker_prior_and_min_visits():
    pool = make_pool(2)
    t = EmaPassRate(pool, alpha=0.5, prior=0.5, min_visits=2, easy_above=0.8, hard_below=0.3)
    assert t.pass_rate(pool[0]) is None
    t.observe(["p0"], [1.0], 1)
    assert t.pass_rate(pool[0]) == 0.75 and t.bucket(pool[0]) is None  # one visit < min_visits
    t.observe(["p0"], [1.0], 2)
    assert t.pass_rate(pool[0]) == 0.875 and t.bucket(pool[0]) == "easy"
    t.observe(["p0"], [0.0], 3)
    assert t.pass_rate(pool[0]) == 0.4375 and t.bucket(pool[0]) == "medium"
    t.observe(["p0"], [0.0], 4)
    assert t.pass_rate(pool[0]) == 0.21875 and t.bucket(pool[0]) == "hard"
    t2 = EmaPassRate(pool, alpha=0.25, prior=0.0)
    t2.observe(["p1", "p1"], [1.0, 1.0], 1)  # 0.25, then 0.25·0.75 + 0.25 = 0.4375
    assert t2.pass_rate(pool[1]) == 0.4375 and t2.visits(pool[1]) == 2
    m = t.metrics()
    assert m["tracker/known"] == 0.5 and m["tracker/hard"] == 1.0


def test_static_tracker_mapping_terciles_and_meta_label():
    pool = make_pool(8)  # difficulties 1..4, two each
    t = StaticLabel(pool, {1: "easy", 2: "easy", 3: "medium", 4: "hard"})
    assert [t.bucket(p) for p in pool[:4]] == ["easy", "easy", "medium", "hard"]
    assert t.pass_rate(pool[0]) is None
    # terciles: label shares are [0, .25), [.25, .5), [.5, .75), [.75, 1) → midpoints .125 .375 .625 .875
    t = StaticLabel(pool)
    assert [t.bucket(p) for p in pool[:4]] == ["easy", "medium", "medium", "hard"]
    assert StaticLabel(make_pool(6, levels=3)).mapping == {"1": "easy", "2": "medium", "3": "hard"}
    # string keys (a recipe reloaded from JSON) and a meta label column
    pool = [Problem(id=f"q{i}", prompt="", answer="", meta={"hops": h}) for i, h in enumerate([1, 2, 3, None])]
    t = StaticLabel(pool, {"1": "easy", "2": "medium", "3": "hard"}, label_key="hops")
    assert [t.bucket(p) for p in pool] == ["easy", "medium", "hard", None]
    assert t.metrics()["tracker/known"] == 0.75
    with pytest.raises(ValueError, match="numeric"):
        StaticLabel([Problem(id="a", prompt="", answer="", meta={"lvl": "x"})], label_key="lvl")


def test_probe_estimated_once_then_loaded_from_cache(tmp_path):
    pool = make_pool(6)
    calls = []

    def estimate(problems):
        calls.append([p.id for p in problems])
        return [{1: 1.0, 2: 0.5, 3: 0.25, 4: 0.0}[p.difficulty] for p in problems]

    path = tmp_path / "probe.json"
    t = ProbePassRate(pool, estimate, path)
    assert len(calls) == 1 and calls[0] == [p.id for p in pool] and path.is_file()
    assert [t.bucket(p) for p in pool[:4]] == ["easy", "medium", "hard", "hard"]
    t2 = ProbePassRate(pool, estimate, path)
    assert len(calls) == 1 and t2.rates == t.rates  # loaded, not recomputed
    t3 = ProbePassRate(pool + make_pool(8)[6:], estimate, path)  # only the new prompts are estimated
    assert calls[1] == ["p6", "p7"] and len(t3.rates) == 8
    t4 = ProbePassRate(make_pool(20), lambda ps: [0.5] * len(ps), tmp_path / "sub.json", limit=5, seed=1)
    assert len(t4.rates) == 5 and sum(t4.bucket(p) is None for p in t4.pool) == 15
    with pytest.raises(ValueError, match="no estimate callable"):
        ProbePassRate(pool, None, tmp_path / "absent.json")
    # through the sampler: the loop passes estimate and cache_path
    s = CurriculumSampler(pool, 0, {"tracker": {"kind": "probe"}}, estimate=estimate, cache_path=path)
    assert len(calls) == 2 and [s.tracker.pass_rate(p) for p in pool] == [t.pass_rate(p) for p in pool]


# ------------------------------------------------------------------------------------------------ sampler


def test_default_config_is_prompt_sampler():
    pool = make_pool(12)
    a, b = CurriculumSampler(pool, 3), PromptSampler(pool, 3)
    for _ in range(10):  # batches that tile the epochs: the same draws
        x, y = a.next(4), b.next(4)
        assert all(u is v for u, v in zip(x, y))  # the pool's own objects: no copies without budgets
    assert [p.id for p in a.next(30)] == [p.id for p in b.next(30)]  # n > pool: repeats allowed, as PromptSampler
    c = CurriculumSampler(pool, 0)
    c.load_state_dict(b.state_dict())  # a PromptSampler checkpoint resumes where it was
    assert [p.id for p in c.next(2)] == [p.id for p in b.next(2)]  # (to the epoch end: no postponing)


def test_walk_never_repeats_within_a_step_across_epochs():
    pool = make_pool(7)
    s = CurriculumSampler(pool, 1)
    per_epoch = Counter()
    for _ in range(35):  # 35·3 = 105 = 15 epochs of 7
        drawn = s.next(3)
        assert len({p.id for p in drawn}) == 3
        per_epoch.update(p.id for p in drawn)
    assert set(per_epoch.values()) == {15}  # coverage kept: every prompt once per epoch


def _promotion_sampler(metric="accuracy", **until):
    cfg = {"stages": [{"name": "warm", "until": {"metric": metric, **until}}, {"name": "rest"}]}
    return CurriculumSampler(make_pool(), 0, cfg)


def test_promotion_window_mean_leaves_at_the_right_step():
    s = _promotion_sampler(above=0.9, window=3)
    stream = [0.95, 0.5, 0.95, 0.95, 0.9, 0.2]  # window means: -, -, .8, .8, .933 → leave after step 5
    stages = []
    for step, acc in enumerate(stream, 1):
        s.next(2)
        s.report(step, {"accuracy": acc})
        stages.append(s.stage)
    assert stages == [0, 0, 0, 0, 1, 1] and s.stage_name == "rest"
    assert s.history == [{"stage": 1, "name": "rest", "step": 6}]
    # steps without the metric, or NaN, do not enter the window
    s = _promotion_sampler("length/mean", below=10.0, window=2)  # windows: [14], [14], [14], [14, 12], [12, 7]
    for step, m in enumerate([{"length/mean": 14.0}, {}, {"length/mean": float("nan")}, {"length/mean": 12.0},
                              {"length/mean": 7.0}], 1):
        s.report(step, m)
        assert s.stage == (1 if step == 5 else 0), step


def test_promotion_max_steps_cap_and_fixed_steps():
    s = CurriculumSampler(make_pool(), 0, {"stages": [
        {"steps": 2}, {"until": {"metric": "accuracy", "above": 0.99, "window": 1}, "max_steps": 3}, {"name": "end"}]})
    stages = []
    for step in range(1, 9):
        s.next(1)
        s.report(step, {"accuracy": 0.0})
        stages.append(s.stage)
    assert stages == [0, 1, 1, 1, 2, 2, 2, 2]
    assert [h["step"] for h in s.history] == [3, 6] and s.stage_name == "end"
    assert s.metrics()["curriculum/stage"] == 2.0


def test_retirement_stops_drawing_solved_prompts():
    pool = make_pool(6)
    for extra in ({}, {"medium_weight": 2.0}):  # walk and weighted draws
        s = CurriculumSampler(pool, 0, {"retire": {"enabled": True, "threshold": 1.0, "min_visits": 1}, **extra})
        seen_after = Counter()
        retired_at = None
        for step in range(1, 40):
            drawn = s.next(2)
            assert len({p.id for p in drawn}) == 2  # without replacement within a step
            if retired_at is not None:
                seen_after.update(p.id for p in drawn)
            s.observe([p.id for p in drawn], [1.0 if p.id == "p0" else 0.5 for p in drawn], step)
            if retired_at is None and s.tracker.visits(pool[0]):
                retired_at = step
            m = s.metrics()
            s.report(step, m)
        assert retired_at is not None and seen_after["p0"] == 0 and len(seen_after) == 5, extra
        assert m["curriculum/retired"] == 1 and m["curriculum/retired_frac"] == pytest.approx(1 / 6)
        assert m["curriculum/retire_fallback"] == 0.0


def test_retirement_never_empties_the_pool():
    pool = make_pool(4)
    for extra in ({}, {"medium_weight": 2.0}, {"stages": [{"mixture_by": "label", "mixture": {1: 1.0}}]}):
        s = CurriculumSampler(pool, 0, {"retire": {"enabled": True, "min_visits": 2}, **extra})
        s.observe([p.id for p in pool] * 2, [1.0] * 8, 1)  # every prompt solved twice
        drawn = s.next(3)
        assert len(drawn) == 3, extra
        m = s.metrics()
        assert m["curriculum/retired"] == 4 and m["curriculum/retire_fallback"] == 1.0
        if "stages" in extra:
            assert {p.id for p in drawn} == {"p0"}  # the mixture still holds: its one prompt repeats in passes
    s = CurriculumSampler(pool, 0, {"retire": {"enabled": True, "signal": "tracker", "threshold": 0.9},
                                    "tracker": {"kind": "ema", "alpha": 0.5}})
    s.observe(["p1", "p1", "p1"], [1.0, 1.0, 1.0], 1)  # ema .75 → .875 → .9375
    assert s.metrics()["curriculum/retired"] == 1


def test_medium_upweighting_frequencies():
    pool = make_pool(8)  # static buckets: labels 1,2 easy; 3 medium; 4 hard → 4 easy, 2 medium, 2 hard
    cfg = {"tracker": {"kind": "static", "mapping": {1: "easy", 2: "easy", 3: "medium", 4: "hard"}}, "medium_weight": 3.0}
    s = CurriculumSampler(pool, 0, cfg)
    n = 4000
    counts = Counter(p.id for _ in range(n) for p in s.next(1))
    total = 4 * 1 + 2 * 3 + 2 * 1
    for p in pool:
        expected = (3.0 if p.difficulty == 3 else 1.0) / total
        assert abs(counts[p.id] / n - expected) < 0.025, (p.id, counts[p.id] / n, expected)
    m = s.metrics()
    assert m["curriculum/drawn/medium"] == pytest.approx(counts["p2"] / n + counts["p6"] / n)


def test_stage_mixture_frequencies_by_label_and_bucket():
    pool = make_pool(12)  # three prompts per label
    s = CurriculumSampler(pool, 0, {"stages": [{"mixture_by": "label", "mixture": {1: 0.75, 2: 0.25}}]})
    n = 3000
    labels = Counter(p.difficulty for _ in range(n) for p in s.next(1))
    assert set(labels) == {1, 2} and abs(labels[1] / n - 0.75) < 0.03
    # bucket mixture before anything is known: nobody is in easy/medium/hard → uniform, flagged
    s = CurriculumSampler(pool, 0, {"stages": [{"mixture": {"hard": 1.0}}]})
    s.next(4)
    assert s.metrics()["curriculum/mixture_fallback"] == 1.0
    s.observe([p.id for p in pool], [{1: 1.0, 2: 0.75, 3: 0.5, 4: 0.0}[p.difficulty] for p in pool], 0)
    s.report(0, {})
    assert {p.difficulty for _ in range(30) for p in s.next(2)} == {4}
    assert s.metrics()["curriculum/mixture_fallback"] == 0.0


def test_easy_to_hard_orders():
    pool = make_pool(12)
    s = CurriculumSampler(pool, 5, {"order": "easy_to_hard", "tracker": {"kind": "static"}})
    first = s.next(12)
    assert [p.difficulty for p in first] == sorted(p.difficulty for p in pool)
    ties = [p.id for p in first if p.difficulty == 1]
    other = [p.id for p in CurriculumSampler(pool, 6, {"order": "easy_to_hard", "tracker": {"kind": "static"}}).next(3)]
    assert sorted(ties) == sorted(other) == ["p0", "p4", "p8"]  # same tie set; seeded order within it
    # by probe pass rate, easiest (highest) first; pass rates come from the initial policy
    rates = {p.id: (int(p.id[1:]) % 5) / 4 for p in pool}
    s = CurriculumSampler(pool, 0, {"order": "easy_to_hard", "tracker": {"kind": "probe"}},
                          estimate=lambda ps: [rates[p.id] for p in ps])
    got = [rates[p.id] for p in s.next(12)]
    assert got == sorted(got, reverse=True)
    # by tracked pass rate: epoch 0 is random (nothing known), epoch 1 is sorted, unknown last
    s = CurriculumSampler(pool, 0, {"order": "easy_to_hard", "tracker": {"kind": "ema"}})
    s.next(12)
    s.observe([p.id for p in pool[:10]], [rates[p.id] for p in pool[:10]], 1)
    nxt = s.next(12)
    assert [p.id for p in nxt[10:]] == sorted(["p10", "p11"], key=[p.id for p in nxt].index)
    got = [s.tracker.pass_rate(p) for p in nxt[:10]]
    assert got == sorted(got, reverse=True) and {p.id for p in nxt[10:]} == {"p10", "p11"}


def test_budgets_target_length():
    pool = make_pool(8)
    cfg = {"tracker": {"kind": "static", "mapping": {1: "easy", 2: "medium", 3: "hard"}},
           "budgets": {"easy": 48, "medium": 64, "hard": {"schedule": "linear", "start": 96, "end": 128, "until": 10}}}
    s = CurriculumSampler(pool, 0, cfg)
    assert [s.target_length(p) for p in pool[:4]] == [48.0, 64.0, pytest.approx(96 + 32 / 10), None]  # next step = 1
    drawn = s.next(8, step=5)
    for p in drawn:
        want = {1: 48.0, 2: 64.0, 3: 96 + 32 * 0.5, 4: None}[p.difficulty]
        assert p.meta.get("target_length") == want
    assert all("target_length" not in p.meta for p in pool)  # the pool itself is untouched
    assert s.metrics()["curriculum/target_length_mean"] == pytest.approx((48 + 64 + 112) * 2 / 6)
    own = [Problem(id="x", prompt="", answer="", difficulty=1, meta={"target_length": 10})]
    assert CurriculumSampler(own, 0, cfg).next(1)[0].meta["target_length"] == 10
    cfg["budgets"]["keep_existing"] = False
    assert CurriculumSampler(own, 0, cfg).next(1)[0].meta["target_length"] == 48.0


FULL = {
    "stages": [
        {"name": "short", "mixture_by": "label", "mixture": {1: 1.0, 2: 1.0, 3: 0.5}, "steps": 4},
        {"name": "grow", "until": {"metric": "accuracy", "above": 0.55, "window": 2}, "max_steps": 6},
        {"name": "all"},
    ],
    "retire": {"enabled": True, "threshold": 1.0, "min_visits": 2},
    "medium_weight": 2.0,
    "budgets": {"easy": 48, "medium": 64, "hard": {"schedule": "linear", "start": 96, "end": 64, "until": 20},
                "unknown": 80},
}
TRACKERS = {
    "group_pass_rate": {"kind": "group_pass_rate"},
    "ema": {"kind": "ema", "alpha": 0.4, "min_visits": 2},
    "static": {"kind": "static"},
    "probe": {"kind": "probe", "limit": 10},
}


@pytest.mark.parametrize("order", ["random", "easy_to_hard"])
@pytest.mark.parametrize("kind", list(TRACKERS))
def test_resume_is_exact(kind, order, tmp_path):
    cfg = {**FULL, "tracker": TRACKERS[kind], "order": order}
    if order == "easy_to_hard":  # walks: no medium weighting; a mixture-free first stage so the walk is exercised
        cfg = {**cfg, "medium_weight": 1.0, "stages": [{"steps": 3}, *FULL["stages"][1:]]}
    kwargs = {"estimate": lambda ps: [solve_rate(p, 0) for p in ps], "cache_path": tmp_path / "probe.json"}
    pool = make_pool(16)
    a = CurriculumSampler(pool, 7, cfg, **kwargs)
    simulate(a, 6)
    state = pickle.loads(pickle.dumps(a.state_dict()))
    assert is_plain(state)
    rest_a = simulate(a, 14, start=7)
    b = CurriculumSampler(pool, 7, cfg, **kwargs)
    b.load_state_dict(state)
    rest_b = simulate(b, 14, start=7)
    assert rest_a == rest_b
    assert a.state_dict() == b.state_dict()
    stages = [stage for *_, stage, _ in rest_a]
    assert stages[-1] == 2  # the run went through the stages
    assert any(t is not None for _, targets, *_ in rest_a for t in targets)


def test_state_mismatch_and_tracker_state():
    pool = make_pool(6)
    s = CurriculumSampler(pool, 0)
    with pytest.raises(ValueError, match="pool of 6"):
        CurriculumSampler(make_pool(5), 0).load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="tracker state"):
        EmaPassRate(pool).load_state_dict(GroupPassRate(pool).state_dict())


def test_config_validation():
    ok = CurriculumConfig.model_validate({
        "tracker": {"kind": "ema", "alpha": 0.2, "prior": 0.5, "min_visits": 3},
        "stages": [{"name": "a", "until": {"metric": "accuracy", "above": 0.9, "window": 5}, "max_steps": 100},
                   {"name": "b"}],
        "budgets": {"easy": 48, "hard": {"schedule": "step", "values": [96, 64], "milestones": [50]}}})
    assert ok.stage_name(1) == "b" and CurriculumConfig().stage_name(0) == "stage0"
    bad = [
        {"tracker": {"kind": "ema", "mapping": {1: "easy"}}},  # a static key on ema
        {"tracker": {"kind": "static", "mapping": {1: "trivial"}}},
        {"tracker": {"kind": "group_pass_rate", "easy_above": 0.2, "hard_below": 0.5}},
        {"stages": [{"steps": 5, "until": {"metric": "accuracy", "above": 0.5}}]},
        {"stages": [{"max_steps": 5}]},
        {"stages": [{"name": "a"}, {"name": "b"}]},  # a non-last stage that never ends
        {"stages": [{"steps": 1, "name": "a"}, {"name": "a"}]},
        {"stages": [{"until": {"metric": "accuracy"}}]},
        {"stages": [{"until": {"metric": "accuracy", "above": 1, "below": 0}}]},
        {"stages": [{"mixture": {"trivial": 1.0}}]},
        {"stages": [{"mixture": {"easy": 0.0}}]},
        {"stages": []},
        {"order": "easy_to_hard", "medium_weight": 2.0},
        {"tracker": {"kind": "static"}, "order_by": "pass_rate"},
        {"budgets": {"easy": -1}},
        {"budgets": {"easy": {"start": 1}}},
        {"budgets": {"easy": {"schedule": "linear", "start": 1}}},
        {"retire": {"threshold": 1.5}},
        {"unknown_key": 1},
    ]
    for b in bad:
        with pytest.raises(ValidationError):
            CurriculumConfig.model_validate(b)
    for cls in (CurriculumConfig, *(type(x) for x in (ok.tracker, ok.stages[0], ok.stages[0].until, ok.retire, ok.budgets))):
        for name, f in cls.model_fields.items():
            assert f.description, f"{cls.__name__}.{name} has no docstring"
    assert not math.isnan(ok.tracker.alpha)
