"""The built-in tiny model: a real Hugging Face causal LM small enough to train and evolve on two CPU cores.

Why a real architecture (Qwen2 by default, Llama optional) rather than a toy module: every code path of esft
(save_pretrained, AutoModel loading, generate with a KV cache, in-place ES perturbation of named parameters)
is then exercised exactly as with a hub model, so the default demo tests the product, not a stand-in.

Why a byte-level tokenizer: the research probes used an 18-symbol character vocabulary, but a tokenizer that
can only spell arithmetic breaks the moment a user points an eval-only task at free text. A byte-level BPE
with the 256 byte symbols and *no merges* encodes any text, still makes every digit and each of `+-=|>` one
token (so prompts stay 6 tokens and answers 3, as the teacher-forced exact-match shortcut needs), and round
trips through `save_pretrained` / `AutoTokenizer.from_pretrained` with no custom code. Token id = byte value;
the two special tokens follow at 256 and 257. The cost is 243 embedding rows the arithmetic tasks never use
(31k of the model's 559k parameters; the warm-up leaves them at their initial values, see warmup.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from esft.errors import EsftError

PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|endoftext|>"
#: the special tokens follow the 256 byte tokens; `build_tokenizer` checks that they land here
PAD_ID, EOS_ID = 256, 257

_ARCHITECTURES: dict[str, tuple[type, type[PreTrainedModel]]] = {
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "llama": (LlamaConfig, LlamaForCausalLM),
}
#: the `model.tiny` keys that shape the network (the rest, e.g. `warmup`, belong to other code)
_SHAPE_KEYS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map, the alphabet the ByteLevel pre-tokenizer emits.

    Printable Latin-1 bytes map to themselves; the other 68 bytes are shifted to code points 256+. The
    pre-tokenizer rewrites every input byte into this alphabet, so the vocabulary is keyed by exactly these.
    """
    ranges = ((ord("!"), ord("~")), (ord("¡"), ord("¬")), (ord("®"), ord("ÿ")))
    printable = [b for lo, hi in ranges for b in range(lo, hi + 1)]
    mapping = {b: chr(b) for b in printable}
    shifted = (b for b in range(256) if b not in mapping)
    mapping.update({b: chr(256 + n) for n, b in enumerate(shifted)})
    return mapping


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer: one token per UTF-8 byte (id = byte value), `<|pad|>` = 256, `<|endoftext|>` = 257.

    No merges and no regex pre-splitting, so tokenisation is position-independent: encode(a + b) ==
    encode(a) + encode(b), which lets the warm-up concatenate prompt and answer ids. No post-processor, so
    `encode(prompt)` adds no BOS/EOS. Left padding, because batched generation continues on the right.
    """
    alphabet = _bytes_to_unicode()
    vocab = {alphabet[b]: b for b in range(256)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([PAD_TOKEN, EOS_TOKEN])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=PAD_TOKEN, eos_token=EOS_TOKEN, padding_side="left"
    )
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (PAD_ID, EOS_ID), "special token ids moved"
    return tokenizer


def model_config(
    tiny_cfg: Mapping[str, Any], vocab_size: int, pad_token_id: int, eos_token_id: int
) -> Qwen2Config | LlamaConfig:
    """The transformers config for `model.tiny`; shapes come only from the config node (no hidden defaults)."""
    arch = str(tiny_cfg["architecture"])
    if arch not in _ARCHITECTURES:
        known = ", ".join(_ARCHITECTURES)
        raise EsftError(f"model.tiny.architecture={arch!r} is not supported; use one of: {known}")
    missing = [k for k in _SHAPE_KEYS if k not in tiny_cfg]
    if missing:
        raise EsftError(f"model.tiny is missing {', '.join(missing)}; see conf/model/tiny.yaml")
    config_cls, _ = _ARCHITECTURES[arch]
    return config_cls(
        vocab_size=vocab_size,
        **{k: int(tiny_cfg[k]) for k in _SHAPE_KEYS},
        tie_word_embeddings=True,  # as in the research model; the output layer adds no parameters
        initializer_range=0.02,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        bos_token_id=None,
        attn_implementation="sdpa",
        dtype="float32",
    )


def build_model(tiny_cfg: Mapping[str, Any], vocab_size: int) -> PreTrainedModel:
    """A freshly initialised tiny causal LM (fp32, CPU) from the `model.tiny` config node.

    `vocab_size` is `len(build_tokenizer())` (258); pad/eos ids are the tokenizer's fixed PAD_ID/EOS_ID.
    Initialisation is seeded with `init_seed` inside a forked RNG scope, so building a model neither depends
    on nor disturbs the caller's global torch RNG state.
    """
    if vocab_size <= EOS_ID:
        raise EsftError(f"vocab_size={vocab_size} cannot hold the tiny tokenizer's special ids {PAD_ID}, {EOS_ID}")
    config = model_config(tiny_cfg, vocab_size, PAD_ID, EOS_ID)
    _, model_cls = _ARCHITECTURES[str(tiny_cfg["architecture"])]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(tiny_cfg["init_seed"]))
        model = model_cls(config)
    return model.to(dtype=torch.float32)
