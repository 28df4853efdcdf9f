import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def make_random_model(path, hidden=32, layers=2, seed=0):
    """A random-init tiny Llama with the tiny world's tokenizer, saved in HF format."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from rshape.tasks.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=256, pad_token_id=0, eos_token_id=1, bos_token_id=None)
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def random_model_dir(tmp_path_factory):
    return make_random_model(tmp_path_factory.mktemp("rand-tiny"))


def make_reward_batch(lengths, correct, group_size, completions=None, truncated=None, *, ids=None, prompts=None,
                      metas=None, answers=None, prompt_ids=None, entropies=None, context=None, step=0,
                      max_new_tokens=0, schedule=None):
    """A Batch of N = len(lengths) completions in groups of `group_size`, for reward tests.

    Defaults: completion i is "x"·lengths[i] with token ids [5]·lengths[i], prompt "p", gold answer "1",
    problem id = its group index (or `prompt_ids`), empty metadata, not truncated."""
    from rshape.batch import Batch
    from rshape.tasks.base import Problem

    n = len(lengths)
    metas = metas or [{} for _ in range(n)]
    answers = answers or ["1"] * n
    pids = prompt_ids or [str(i // group_size) for i in range(n)]
    return Batch(
        prompts=prompts or ["p"] * n,
        completions=completions if completions is not None else ["x" * L for L in lengths],
        completion_ids=ids if ids is not None else [[5] * L for L in lengths],
        lengths=torch.tensor(lengths), truncated=torch.tensor(truncated or [False] * n),
        correct=torch.tensor(correct, dtype=torch.float),
        problems=[Problem(id=pids[i], prompt="p", answer=answers[i], meta=metas[i]) for i in range(n)],
        group_size=group_size, step=step, max_new_tokens=max_new_tokens, schedule=schedule or {},
        token_entropies=entropies, context=context)
