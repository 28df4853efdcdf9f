"""A character-level tokenizer for the tiny world, saved in Hugging Face format.

Every character is one token, except the four structure tags, which are one token each, so a
completion's length in tokens is its length in characters with each tag counted once. It is a
`tokenizers` WordLevel model behind `PreTrainedTokenizerFast`, so `AutoTokenizer.from_pretrained`
loads it like any Hub tokenizer and one loading path serves built-in and Hub models.
"""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<pad>", "<eos>", "<unk>"]
TAG_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]
CHARACTERS = list(string.digits + "+-*=?:.,() \n" + string.ascii_lowercase)


def char_vocab() -> dict[str, int]:
    return {tok: i for i, tok in enumerate(SPECIAL_TOKENS + TAG_TOKENS + CHARACTERS)}


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """The tiny world's tokenizer: pad id 0, eos id 1, unk id 2, then the tags, then characters."""
    tok = Tokenizer(models.WordLevel(char_vocab(), unk_token="<unk>"))
    alternatives = "|".join(SPECIAL_TOKENS + TAG_TOKENS)
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(alternatives + r"|[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    fast.padding_side = "left"
    return fast
