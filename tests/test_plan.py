"""`rshape rl --dry-run`: parameter counts from a config alone, the memory terms by hand, nothing written."""

import pytest
from typer.testing import CliRunner

from rshape.cli import app
from rshape.plan import lora_parameters, memory_estimate, model_shape
from rshape.recipe import Recipe

# Qwen2.5-1.5B's published architecture: the config is written here, no weights exist
QWEN15 = {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
          "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True, "max_position_embeddings": 4096}


@pytest.fixture(scope="module")
def qwen_config_dir(tmp_path_factory):
    from transformers import Qwen2Config

    path = tmp_path_factory.mktemp("qwen15")
    Qwen2Config(**QWEN15).save_pretrained(path)
    return path


def test_parameters_counted_from_the_config_alone(qwen_config_dir):
    shape = model_shape(str(qwen_config_dir))
    h, f, n, v, kv = 1536, 8960, 28, 151936, 2 * 128  # k and v project to 2 heads × 128
    layer = (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * f + 2 * h  # q, k, v (biased), o; MLP; two norms
    assert shape["parameters"] == v * h + n * layer + h == 1_543_714_304  # tied output layer counted once
    assert (shape["layers"], shape["kv_heads"], shape["head_dim"], shape["vocab"]) == (28, 2, 128, 151936)
    per_layer = (h + h) + (h + kv) + (h + kv) + (h + h) + 2 * (h + f) + (f + h)  # r·(in + out) per adapted layer
    assert lora_parameters(shape, 16, "all-linear") == 16 * per_layer * n  # the output layer is not adapted
    assert lora_parameters(shape, 8, ["q_proj", "v_proj"]) == 8 * ((h + h) + (h + kv)) * n
    assert model_shape("no-such-org/no-such-model") is None  # offline: no config, no estimate


def test_memory_terms_by_hand(qwen_config_dir):
    shape = model_shape(str(qwen_config_dir))
    recipe = Recipe.model_validate({"rollout": {"prompts_per_step": 2, "group_size": 4, "max_new_tokens": 100},
                                    "model": {"lora": {"enabled": False}}, "algorithm": {"kl_beta": 0.01,
                                                                                          "logprob_chunk": 2}})
    m = memory_estimate(recipe, shape, prompt_tokens=28, dtype="bfloat16")
    p = 1_543_714_304
    assert m["weights"] == 2 * p and m["frozen reference"] == 2 * p  # full fine-tuning with KL keeps a copy
    assert m["trainable state"] == (2 + 4 + 4 + 8) * p  # bf16 gradient; float32 master, its gradient, two moments
    pure = Recipe.model_validate({**recipe.model_dump(), "optim": {"float32_master": False}})
    assert memory_estimate(pure, shape, prompt_tokens=28, dtype="bfloat16")["trainable state"] == 3 * 2 * p
    assert m["KV cache"] == 2 * 28 * 2 * 128 * 2 * 8 * 128  # k and v, layers, kv heads, head dim, bytes, rows, tokens
    assert m["logits"] == 3 * 2 * 128 * 151936 * 4 and m["activations"] == 28 * 34 * 2 * 128 * 1536
    lora = memory_estimate(Recipe.model_validate({"model": {"load_in_4bit": True}}), shape, 28, "bfloat16")
    assert lora["frozen reference"] == 0 and lora["trainable state"] == 16 * lora["trainable_parameters"]
    linear = shape["linear_parameters"]
    assert lora["weights"] == linear * 0.5 + (p - linear) * 2  # NF4 linear layers, the rest in bf16


def test_dry_run_prints_the_plan_and_writes_nothing(qwen_config_dir, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(f'{{"problem": "{i}+1", "answer": "{i + 1}"}}\n' for i in range(30)))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"output_dir: {tmp_path / 'run'}\nmodel: {{name: {qwen_config_dir}}}\n"
                      "task: {name: dataset, train_file: d.jsonl, prompt_template: '{problem}=', eval_size: 10}\n"
                      "rollout: {prompts_per_step: 4, group_size: 8, max_new_tokens: 1024}\ntrain: {steps: 50}\n")
    result = CliRunner().invoke(app, ["rl", str(recipe), "--dry-run"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Qwen2ForCausalLM, 1,543.7 M parameters" in out and "LoRA r=16 on all-linear: 18.46 M trainable" in out
    assert "20 training problems; eval: 10" in out and "tokenizer not loaded" in out
    assert "50 × 4 prompts × 8 completions = 32 completions per step (1,600 in all)" in out
    assert "≤ 32,768 generated per step" in out and "GPU memory (estimate" in out and "peak" in out
    assert not (tmp_path / "run").exists()
    offline = CliRunner().invoke(app, ["rl", str(recipe), "--dry-run", "model.name=builtin:tiny-graded",
                                       "task.train_file=" + str(tmp_path / "missing.jsonl")])
    assert offline.exit_code == 2 and "file not found" in offline.output  # validation still comes first


def test_logprob_chunk_rows_by_hand(qwen_config_dir):
    """`algorithm.logprob_chunk: null` (the default): ≤ 16 rows, fewer while their logits pass 2^25 float32s."""
    from rshape.recipe import chunk_rows

    assert Recipe().algorithm.logprob_chunk is None
    assert chunk_rows(None, 76, 55) == 16  # tiny world: 2^25 // (76·55) = 8027 rows, capped at 16
    assert chunk_rows(None, 1024, 2048) == 16  # exactly 2^25 floats for 16 rows
    assert chunk_rows(None, 1024, 2049) == 15
    assert chunk_rows(None, 1124, 151936) == 1  # Qwen's vocabulary at 1,124 tokens: 2^25 // 170.8 M = 0 → 1 row
    assert chunk_rows(4, 1124, 151936) == 4  # a number is taken as it is
    shape = model_shape(str(qwen_config_dir))
    m = memory_estimate(Recipe.model_validate({"rollout": {"max_new_tokens": 1024}}), shape, 100, "bfloat16")
    assert m["chunk_rows"] == 1 and m["logits"] == 3 * 1 * 1124 * 151936 * 4
