"""Float32 master weights (rshape.rl.masters, `optim.float32_master`) for full fine-tuning in 16 bits: AdamW on the
masters is AdamW in float32 on the same gradients, the model holds the masters rounded, small steps accumulate
instead of rounding away, and a resumed run continues from the saved masters exactly."""

import pytest
import torch
from test_rl_integration import comparable, tiny_recipe

from rshape.rl.loop import train
from rshape.rl.masters import Float32Masters
from rshape.runs import read_jsonl


def bf16_params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter((0.02 + 0.01 * torch.rand(200, generator=g)).to(torch.bfloat16)),
            torch.nn.Parameter((-0.03 - 0.01 * torch.rand(50, generator=g)).to(torch.bfloat16))]


def test_adamw_on_masters_is_float32_adamw_and_small_steps_accumulate():
    params = bf16_params()
    reference = [torch.nn.Parameter(p.detach().float().clone()) for p in params]  # independent float32 AdamW
    masters = Float32Masters(params)
    opt = torch.optim.AdamW(masters.params, lr=3e-6, weight_decay=0.0)
    ref_opt = torch.optim.AdamW(reference, lr=3e-6, weight_decay=0.0)
    plain = [torch.nn.Parameter(p.detach().clone()) for p in params]  # AdamW on the bf16 weights themselves
    plain_opt = torch.optim.AdamW(plain, lr=3e-6, weight_decay=0.0)
    start = [p.detach().clone() for p in params]
    g = torch.Generator().manual_seed(1)
    for _ in range(100):
        grads = [(1.0 + torch.rand(p.shape, generator=g)).to(torch.bfloat16) for p in params]  # positive: w decreases
        for p, r, q, grad in zip(params, reference, plain, grads):
            p.grad, r.grad, q.grad = grad.clone(), grad.float(), grad.clone()
        masters.take_gradients()
        assert all(p.grad is None for p in params) and all(m.grad.dtype == torch.float32 for m in masters.params)
        opt.step()
        masters.write_back()
        ref_opt.step()
        plain_opt.step()
    for p, m, r in zip(params, masters.params, reference):
        assert torch.equal(m.detach(), r.detach())  # the same float32 arithmetic on the same gradients
        assert torch.equal(p.detach(), m.detach().to(torch.bfloat16))  # the model holds the masters, rounded
    # 100 steps of ~3e-6 move each weight by ~3e-4, more than the bfloat16 spacing at |w| ≈ 0.02–0.04 (2^-13, 2^-12);
    # each step alone is under half a spacing, so without masters every one of them rounds away:
    moved = [(p.detach() != s).float().mean().item() for p, s in zip(params, start)]
    stuck = [(q.detach() == s).float().mean().item() for q, s in zip(plain, start)]
    assert min(moved) > 0.5  # with masters most weights have moved
    assert min(stuck) == 1.0  # without, every step rounded away


def test_masters_only_for_16_bit_weights_and_load_without_state():
    f32 = [torch.nn.Parameter(torch.ones(3))]
    assert not Float32Masters.needed(f32, True)
    assert Float32Masters.needed(bf16_params(), True) and not Float32Masters.needed(bf16_params(), False)
    params = bf16_params()
    masters = Float32Masters(params)
    with torch.no_grad():
        masters.params[0].add_(1.0)
    masters.load_state_dict(None)  # a checkpoint from before masters: start again from the model's weights
    assert torch.equal(masters.params[0].detach(), params[0].detach().float())
    saved = [m + 0.5 for m in masters.state_dict()]
    masters.load_state_dict(saved)
    assert torch.equal(masters.params[1].detach(), saved[1]) and torch.equal(params[1].detach(),
                                                                               saved[1].to(torch.bfloat16))


@pytest.fixture(scope="module")
def bf16_runs(random_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("masters")
    over = {"dtype": "bfloat16", "model.lora.enabled": False, "optim.lr": 3e-5, "train.checkpoint_every": 1}
    train(tiny_recipe(random_model_dir, root / "straight", steps=3, **over))
    train(tiny_recipe(random_model_dir, root / "split", steps=2, **over))
    train(tiny_recipe(random_model_dir, root / "split", steps=3, **over), resume=True)
    return root


def test_bf16_full_fine_tuning_keeps_masters_and_resumes_exactly(bf16_runs):
    def state(run):
        return torch.load(bf16_runs / run / "checkpoints" / "step_000003" / "state.pt", weights_only=False)

    straight, split = state("straight"), state("split")
    assert straight["masters"] and all(m.dtype == torch.float32 for m in straight["masters"])
    assert all(v.dtype == torch.bfloat16 for v in straight["trainable"].values())
    for a, b in zip(straight["masters"], split["masters"]):
        assert torch.equal(a, b)  # the resumed run continued from the saved masters, not from the rounded weights
    for k, v in straight["trainable"].items():
        assert torch.equal(v, split["trainable"][k])
    assert comparable(read_jsonl(bf16_runs / "straight" / "metrics.jsonl")) == \
        comparable(read_jsonl(bf16_runs / "split" / "metrics.jsonl"))
    weights = list(straight["trainable"].values())  # the same order: the model's trainable parameters
    assert all(torch.equal(m.to(torch.bfloat16), w) for m, w in zip(straight["masters"], weights))
    assert any(not torch.equal(m, w.float()) for m, w in zip(straight["masters"], weights))  # finer than bf16
