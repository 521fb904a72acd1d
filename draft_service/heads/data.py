"""Training data for draft heads: the target's own greedy answers to a prompt set, with its final hidden states.

A head learns to predict what the target will say next from the target's features, so the best data is the
target's own greedy output on prompts like the ones it will serve (chat-template formatted). Generation runs in
batches (left-padded, HF `generate`), and the final hidden state of every fed position is kept from the same
pass: `hidden_states[-1]`, exactly what the verifier returns (`CachedSequence.extend(..., want_hidden=True)`),
post-norm, so `hidden @ embedding.T` are the target's logits. Everything is cached on disk (safetensors), so
re-training does not regenerate it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from specdec.modeling import LoadedModel, chat_prompt_ids, vocab_fingerprint, weights_fingerprint

log = logging.getLogger(__name__)
PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"


@dataclass
class HeadData:
    """Sequences (prompt + greedy answer) concatenated: tokens[N], hidden[N, H] (row i: the target's final hidden
    state after token i; a sequence's last token has none, its row is zero), offsets[S+1], prompt_lengths[S]."""

    tokens: torch.Tensor  # [N] int64
    hidden: torch.Tensor  # [N, H] float16
    offsets: torch.Tensor  # [S+1] int64
    prompt_lengths: torch.Tensor  # [S] int64
    info: dict[str, Any]

    @property
    def num_sequences(self) -> int:
        return len(self.prompt_lengths)

    def sequence(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(tokens [T], hidden [T, H], prompt length) of sequence i."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.tokens[a:b], self.hidden[a:b], int(self.prompt_lengths[i])

    def generated_tokens(self) -> int:
        return int((self.offsets[1:] - self.offsets[:-1] - self.prompt_lengths).sum())

    def subset(self, indices: list[int]) -> HeadData:
        seqs = [self.sequence(i) for i in indices]
        lengths = torch.tensor([0] + [len(t) for t, _, _ in seqs])
        return HeadData(
            tokens=torch.cat([t for t, _, _ in seqs]),
            hidden=torch.cat([h for _, h, _ in seqs]),
            offsets=torch.cumsum(lengths, 0),
            prompt_lengths=torch.tensor([p for _, _, p in seqs]),
            info=self.info,
        )


def concat_data(parts: list[HeadData]) -> HeadData:
    """Several data sets as one (sequences in order); `info` sums what adds up and keeps each part's own."""
    if len(parts) == 1:
        return parts[0]
    lengths = torch.cat([torch.tensor([0])] + [p.offsets[1:] - p.offsets[:-1] for p in parts])
    info: dict[str, Any] = {**parts[0].info, "parts": [p.info for p in parts]}
    for key in ("sequences", "generated_tokens", "generation_s"):
        info[key] = round(sum(p.info.get(key, 0) for p in parts), 1)
    return HeadData(
        tokens=torch.cat([p.tokens for p in parts]),
        hidden=torch.cat([p.hidden for p in parts]),
        offsets=torch.cumsum(lengths, 0),
        prompt_lengths=torch.cat([p.prompt_lengths for p in parts]),
        info=info,
    )


def load_prompt_messages(paths: list[Path]) -> list[list[dict[str, str]]]:
    """Chat messages from jsonl files (`{"messages": [...]}` or `{"prompt": ...}` lines)."""
    messages: list[list[dict[str, str]]] = []
    for path in paths:
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                messages.append(row["messages"] if "messages" in row else [{"role": "user", "content": row["prompt"]}])
    return messages


def shipped_prompt_files() -> list[Path]:
    return sorted(PROMPTS_DIR.glob("*.jsonl"))


def prompt_ids(lm: LoadedModel, messages: list[list[dict[str, str]]], max_prompt_tokens: int) -> list[list[int]]:
    """Each conversation through the target's chat template (raw text when it has none), truncated on the left."""
    out = []
    for m in messages:
        if lm.tokenizer.chat_template:
            ids = chat_prompt_ids(lm.tokenizer, m)
        else:
            ids = list(lm.tokenizer.encode("\n".join(x["content"] for x in m)))
        out.append(ids[-max_prompt_tokens:])
    return out


def data_key(lm: LoadedModel, prompts: list[list[int]], max_new_tokens: int) -> str:
    """Names a cached data set: the target's weights, the prompts and the generation length."""
    h = hashlib.sha256()
    h.update(weights_fingerprint(lm.model).encode())
    h.update(json.dumps(prompts).encode())
    h.update(str(max_new_tokens).encode())
    return h.hexdigest()[:16]


@torch.inference_mode()
def generate_batch(lm: LoadedModel, prompts: list[list[int]], max_new_tokens: int) -> list[tuple[list[int], Any]]:
    """Greedy answers to a batch of prompts and the final hidden state of every fed position.

    Returns per prompt (tokens = prompt + answer up to and including EOS, hidden [len(tokens) - 1, H])."""
    pad = lm.eos_token_ids[0] if lm.eos_token_ids else 0
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=lm.device)  # [B, P]
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=lm.device)  # [B, P]
    out = lm.model.generate(
        input_ids=input_ids,
        attention_mask=mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        output_hidden_states=True,
        return_dict_in_generate=True,
        pad_token_id=pad,
        eos_token_id=lm.eos_token_ids or None,
    )
    # step 0 holds the prompt's rows [B, P, H]; each later step one row [B, 1, H]
    hidden = torch.cat([step[-1] for step in out.hidden_states], dim=1).float().cpu()  # [B, P + new - 1, H]
    sequences = out.sequences.cpu()  # [B, P + new]
    eos = set(lm.eos_token_ids)
    results = []
    for b, prompt in enumerate(prompts):
        answer = []
        for t in sequences[b, width:].tolist():
            answer.append(t)
            if t in eos:
                break
        tokens = prompt + answer
        start = width - len(prompt)
        results.append((tokens, hidden[b, start : start + len(tokens) - 1]))
    return results


def generate_data(
    lm: LoadedModel, prompts: list[list[int]], max_new_tokens: int, batch_size: int, out_file: Path
) -> HeadData:
    """Generate (or load from `out_file`) the target's greedy answers with their hidden states."""
    if out_file.exists():
        return load_data(out_file)
    start = time.perf_counter()
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a batch: less padding
    results: dict[int, tuple[list[int], Any]] = {}
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    bar = tqdm(batches, desc="generating training data", unit="batch")
    produced = 0
    for batch in bar:
        for i, r in zip(batch, generate_batch(lm, [prompts[i] for i in batch], max_new_tokens), strict=True):
            results[i] = r
            produced += len(r[0]) - len(prompts[i])
        bar.set_postfix(tokens=produced, tok_s=f"{produced / (time.perf_counter() - start):.0f}")
    hidden_size = int(lm.model.config.hidden_size)
    tokens, hidden, lengths = [], [], [0]
    for i in range(len(prompts)):  # back in prompt order
        seq, h = results[i]
        tokens.append(torch.tensor(seq))
        hidden.append(torch.cat([h, torch.zeros(1, hidden_size)]).half())  # the last token has no hidden state
        lengths.append(len(seq))
    data = HeadData(
        tokens=torch.cat(tokens),
        hidden=torch.cat(hidden),
        offsets=torch.cumsum(torch.tensor(lengths), 0),
        prompt_lengths=torch.tensor([len(p) for p in prompts]),
        info={
            "target": lm.name,
            "vocab_fingerprint": vocab_fingerprint(lm.tokenizer),
            "sequences": len(prompts),
            "max_new_tokens": max_new_tokens,
            "generation_s": round(time.perf_counter() - start, 1),
        },
    )
    data.info["generated_tokens"] = data.generated_tokens()
    save_data(data, out_file)
    return data


def save_data(data: HeadData, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        "tokens": data.tokens,
        "hidden": data.hidden.contiguous(),
        "offsets": data.offsets,
        "prompt_lengths": data.prompt_lengths,
    }
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"info": json.dumps(data.info)})
    tmp.rename(path)


def load_data(path: Path) -> HeadData:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        info = json.loads((f.metadata() or {}).get("info", "{}"))
    t = load_file(str(path))
    return HeadData(t["tokens"], t["hidden"], t["offsets"], t["prompt_lengths"], info)
