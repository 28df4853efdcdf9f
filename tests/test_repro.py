"""`rshape repro`: the verdict rule by hand, every claim's sweep validates, and each claim runs end to end (smoke)."""

import json
import math
import re
from pathlib import Path

import pytest

from rshape.repro.claims import CLAIMS, decide_front, get_claim
from rshape.repro.stats import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, Check, combine, effect, paired
from rshape.stats import t975
from rshape.sweep import load_sweep

ROOT = Path(__file__).resolve().parent.parent


def test_effect_hand_values():
    e = effect([1.0, 2.0, 3.0])  # mean 2, s = 1, t(2) = 4.303 → 2 ± 4.303/√3
    assert e.mean == 2.0 and e.n == 3
    assert e.low == pytest.approx(2 - 4.303 / math.sqrt(3)) and e.high == pytest.approx(2 + 4.303 / math.sqrt(3))
    one = effect([0.5])
    assert (one.low, one.high, one.n) == (0.5, 0.5, 1)
    assert effect([]).n == 0 and math.isnan(effect([float("nan")]).mean)
    d = paired({0: 0.9, 1: 0.8, 2: 0.7}, {0: 0.85, 1: 0.8, 3: 0.1})  # seeds 0 and 1 only: 0.05, 0.0
    assert d.values == pytest.approx([0.05, 0.0]) and d.mean == pytest.approx(0.025)
    assert d.high == pytest.approx(0.025 + 12.706 * math.sqrt(0.00125) / math.sqrt(2))
    assert t975(1) == 12.706 and t975(100) == 1.96


def _t(values, direction, margin=0.01):
    return Check("s", effect(values), direction, margin)


def test_verdict_rule():
    assert _t([0.05, 0.06, 0.07], ">").verdict == REPRODUCED       # interval above 0
    assert _t([-0.05, -0.06, -0.07], ">").verdict == NOT_REPRODUCED  # wholly on the other side
    assert _t([0.001, -0.001, 0.0], ">").verdict == NOT_REPRODUCED   # inside ±margin: no effect
    assert _t([0.05, -0.03, 0.02], ">").verdict == INCONCLUSIVE
    assert _t([-0.05, -0.06, -0.07], "<").verdict == REPRODUCED
    assert _t([0.5], ">").verdict == INCONCLUSIVE                     # one seed: no interval
    assert _t([0.001, 0.002, 0.0], "≈", 0.01).verdict == REPRODUCED  # inside the band
    assert _t([0.05, 0.06, 0.07], "≈", 0.01).verdict == NOT_REPRODUCED
    assert _t([0.0, 0.02, 0.01], "≈", 0.01).verdict == INCONCLUSIVE
    assert combine([REPRODUCED, REPRODUCED]) == REPRODUCED
    assert combine([REPRODUCED, INCONCLUSIVE]) == INCONCLUSIVE
    assert combine([REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE]) == NOT_REPRODUCED


def test_front_rule():
    up, down, none, unclear = [0.05, 0.06, 0.07], [-0.05, -0.06, -0.07], [0.0, 0.001, -0.001], [0.05, -0.03, 0.02]
    acc = lambda v: _t(v, ">")  # noqa: E731
    tok = lambda v: _t([-x for x in v], "<")  # noqa: E731  fewer tokens is better
    assert decide_front([acc(up), tok(none)]) == REPRODUCED            # more accurate, same length
    assert decide_front([acc(none), tok(up)]) == REPRODUCED            # as accurate, shorter
    assert decide_front([acc(up), tok(down)]) == INCONCLUSIVE          # a trade-off, not a better front
    assert decide_front([acc(down), tok(none)]) == NOT_REPRODUCED      # worse
    assert decide_front([acc(none), tok(none)]) == NOT_REPRODUCED      # no difference
    assert decide_front([acc(unclear), tok(none)]) == INCONCLUSIVE


def test_heading_anchor_like_github():
    from rshape.repro.report import slug

    assert slug("laser-d: LASER-D beats LASER; fixed + adaptive") == "laser-d-laser-d-beats-laser-fixed--adaptive"
    assert slug("GRPO-λ prevents it") == "grpo-λ-prevents-it"


def test_sweep_wall_time_from_trials(tmp_path):
    """Two trials in parallel (0-100 s, 10-120 s), then one (120-220 s): 220 s of wall time, 310 s of trials."""
    from rshape.repro.run import sweep_seconds

    trials = [{"started_at": "2026-01-01T00:00:00", "finished_at": "2026-01-01T00:01:40", "duration_s": 100},
              {"started_at": "2026-01-01T00:00:10", "finished_at": "2026-01-01T00:02:00", "duration_s": 110},
              {"started_at": "2026-01-01T00:02:00", "finished_at": "2026-01-01T00:03:40", "duration_s": 100},
              {"status": "pending"}]
    (tmp_path / "trials.json").write_text(json.dumps({"trials": trials}))
    assert sweep_seconds(tmp_path) == (220.0, 310.0)
    assert sweep_seconds(tmp_path / "none") == (0.0, 0.0)


def test_every_claim_has_a_valid_sweep_and_make_target():
    makefile = (ROOT / "Makefile").read_text()
    listed = re.search(r"^REPRO_CLAIMS := (.*)$", makefile, re.M)[1].split()
    assert listed == [c.name for c in CLAIMS] and len(CLAIMS) == 6
    import typing

    from rshape.cli import repro  # the command's help names every claim
    help_text = typing.get_type_hints(repro, include_extras=True)["names"].__metadata__[0].help
    assert all(c.name in help_text for c in CLAIMS)
    for claim in CLAIMS:
        sweep = load_sweep(ROOT / claim.sweep_file, output_dir="/tmp/unused")
        assert len(sweep.seeds) >= 3, claim.name
        assert all(t.error is None for t in sweep.trials), [t.error for t in sweep.trials if t.error]
        assert get_claim(claim.name) is claim
    with pytest.raises(KeyError):
        get_claim("nope")


@pytest.mark.parametrize("name", [c.name for c in CLAIMS])
def test_claim_runs_end_to_end_in_smoke_mode(name, tmp_path, monkeypatch):
    """Prepare → sweep (2 steps, 1 seed) → results → figures → verdict.json, as `rshape repro NAME --smoke`."""
    from rshape.repro.report import write_doc
    from rshape.repro.run import format_verdict, run_claim

    monkeypatch.chdir(ROOT)
    rec = run_claim(get_claim(name), tmp_path / name, smoke=True)
    assert rec["smoke"] and rec["verdict"] == INCONCLUSIVE  # one seed can never decide
    assert set(rec["methods"]) and all(seeds == [0] for seeds in rec["methods"].values())
    assert rec["tests"] and rec["results_table"] and "pareto.png" in " ".join(rec["figures"])
    saved = json.loads((tmp_path / name / "verdict.json").read_text())
    assert saved["claim"] == name and "verdict: INCONCLUSIVE" in format_verdict(saved)
    doc = write_doc(tmp_path, tmp_path / "docs" / "reproductions.md")
    text = doc.read_text()
    assert f"## {name}:" in text and "INCONCLUSIVE (smoke)" in text
    assert (tmp_path / "docs" / "figures" / "repro" / name / "pareto.png").is_file()
