"""Test helpers: tiny models built from a config, HF reference decoding, near-tie aware comparison."""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from specdec.bench.peers import hf_generate

CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "The quick brown fox jumps over the lazy dog.",
    "Speculative decoding drafts tokens cheaply and verifies them with the target model.",
    "for i in range(10):\n    print(i * i)\n",
    "Summarise: the meeting moved to Tuesday because the room was booked.",
    "Hello! How can I help you today? I am a helpful assistant.",
] * 20
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def prerequisite(ok: bool, reason: str) -> None:
    """A test's outside prerequisite (root, Docker, namespaces): in CI (CI set) its absence fails the test, on a
    developer laptop it skips it."""
    import pytest

    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must run this test, but {reason}")
    pytest.skip(reason)


def build_tiny_tokenizer(out: Path, vocab_size: int) -> Path:
    """A byte-level BPE trained in-process on a small corpus (no hub access)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    return out


@dataclass(frozen=True)
class TinySpec:
    seed: int
    vocab_size: int = 0  # 0: the tokenizer's size
    hidden: int = 64
    layers: int = 2
    init_std: float = 0.2  # peakier than HF's 0.02, so greedy choices are rarely near-ties


def build_tiny_model(out: Path, tokenizer_dir: Path, spec: TinySpec) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=spec.vocab_size or len(tokenizer),
        hidden_size=spec.hidden,
        intermediate_size=2 * spec.hidden,
        num_hidden_layers=spec.layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=spec.init_std,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@functools.lru_cache(maxsize=8)
def load(path: str) -> Any:
    from specdec.modeling import load_model

    return load_model(path, device="cpu")


def hf_greedy(lm: Any, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """The reference: plain HF generate, greedy, same dtype and device."""
    return hf_generate(lm, prompt_ids, max_new_tokens)


def top2_gap(lm: Any, ids: list[int]) -> float:
    with torch.inference_mode():
        logits = lm.model(torch.tensor([ids])).logits[0, -1].float()
    top = torch.topk(logits, 2).values
    return float(top[0] - top[1])


NEAR_TIE = 1e-3


def assert_greedy_identical(lm: Any, prompt_ids: list[int], ours: list[int], reference: list[int]) -> None:
    """Token-identical, except that a divergence at a numeric near-tie (top-2 gap < 1e-3) is reported, not
    hidden: it warns, and only the prefix before it is compared."""
    n = min(len(ours), len(reference))
    for i in range(n):
        if ours[i] != reference[i]:
            gap = top2_gap(lm, prompt_ids + reference[:i])
            assert gap < NEAR_TIE, (
                f"diverged at generated token {i}: ours {ours[i]} vs reference {reference[i]} "
                f"(top-2 gap {gap:.2e} is not a near-tie)"
            )
            warnings.warn(f"near-tie divergence at token {i} (top-2 gap {gap:.2e})", stacklevel=2)
            return
    assert len(ours) == len(reference), f"lengths differ: {len(ours)} vs {len(reference)}"
