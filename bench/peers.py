"""Peers measured beside specdec in the same run. For now: HF `generate` in-process (the greedy reference)."""

from __future__ import annotations

from typing import Any

import torch

from specdec.modeling import LoadedModel


def hf_generate(lm: LoadedModel, prompt_ids: list[int], max_new_tokens: int, **kwargs: Any) -> list[int]:
    """Plain HF `generate` on the same model object, greedy unless kwargs say otherwise.

    Returns the new token ids (an EOS that ended generation included)."""
    inputs = torch.tensor([prompt_ids], device=lm.device)
    with torch.inference_mode():
        out = lm.model.generate(
            inputs,
            attention_mask=torch.ones_like(inputs),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=lm.eos_token_ids,
            pad_token_id=lm.eos_token_ids[0],
            **kwargs,
        )
    return [int(t) for t in out[0, len(prompt_ids) :].tolist()]
