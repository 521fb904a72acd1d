"""Conversions between protobuf messages and tensors that both sides of a stream need."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from specdec.errors import InvalidArgument
from specdec.sampling import SamplingConfig
from specdec.v1 import common_pb2

DENSE = common_pb2.PROBS_ENCODING_DENSE
SPARSE = common_pb2.PROBS_ENCODING_SPARSE
AUTO = common_pb2.PROBS_ENCODING_UNSPECIFIED


def message_dict(msg: Message) -> dict[str, Any]:
    """Every field of a message as plain JSON-ready values, zeros and empty lists included, with the proto's
    own field names (GenerationStats for the CLI's --json, the HTTP API's `specdec` field and benchmarks)."""
    return MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def sampling_from_pb(msg: common_pb2.SamplingParams) -> SamplingConfig:
    return SamplingConfig.from_wire(msg.temperature, msg.top_k, msg.top_p, msg.seed)


def sampling_to_pb(cfg: SamplingConfig) -> common_pb2.SamplingParams:
    return common_pb2.SamplingParams(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, seed=cfg.seed)


def policy_params_from_pb(msg: common_pb2.PolicyParams) -> dict[str, float]:
    """The lossy policies' parameters that were set (proto3 zero = default, resolved by the verifier)."""
    return {f.name: float(getattr(msg, f.name)) for f in msg.DESCRIPTOR.fields if getattr(msg, f.name)}


def policy_params_to_pb(params: dict[str, float]) -> common_pb2.PolicyParams:
    msg = common_pb2.PolicyParams()
    for name, value in params.items():
        setattr(msg, name, int(value) if name == "agree_top_m" else value)
    return msg


def encode_distribution(q: torch.Tensor, encoding: int) -> common_pb2.TokenDistribution:
    """q[V] -> message. AUTO picks sparse when it is smaller (8 bytes per nonzero vs 4 per token)."""
    q = q.detach().float().cpu()
    support = torch.nonzero(q > 0).squeeze(1)  # [S]
    if encoding == SPARSE or (encoding == AUTO and 2 * support.numel() < q.numel()):
        return common_pb2.TokenDistribution(
            sparse=common_pb2.SparseDistribution(token_ids=support.tolist(), probs=q[support].tolist())
        )
    return common_pb2.TokenDistribution(dense_f32=q.numpy().astype("<f4").tobytes())


def encode_distributions(qs: list[torch.Tensor], encoding: int) -> list[common_pb2.TokenDistribution]:
    """q rows -> messages; a row that is the same tensor as the one before it (a sampled tree's siblings) goes
    as `same_as_previous` instead of a second copy."""
    return [
        common_pb2.TokenDistribution(same_as_previous=True)
        if i and q is qs[i - 1]
        else encode_distribution(q, encoding)
        for i, q in enumerate(qs)
    ]


def is_shared(msg: common_pb2.TokenDistribution) -> bool:
    """Whether an entry stands for the one before it (`same_as_previous` set and true: false is no encoding)."""
    return msg.WhichOneof("encoding") == "same_as_previous" and msg.same_as_previous


def resolve_shared(msgs: list[common_pb2.TokenDistribution]) -> list[common_pb2.TokenDistribution]:
    """The same list with every `same_as_previous` replaced by the message it stands for, so that a subset of the
    entries keeps its meaning."""
    resolved: list[common_pb2.TokenDistribution] = []
    for msg in msgs:
        shared = is_shared(msg)
        if shared and not resolved:
            raise InvalidArgument("the first q of a list cannot be same_as_previous (there is no entry before it)")
        resolved.append(resolved[-1] if shared else msg)
    return resolved


def decode_distribution(msg: common_pb2.TokenDistribution, vocab_size: int) -> torch.Tensor:
    """message -> q[V] float32, validated."""
    kind = msg.WhichOneof("encoding")
    if kind == "dense_f32":
        if len(msg.dense_f32) != 4 * vocab_size:
            raise InvalidArgument(
                f"draft_probs.dense_f32 must hold {vocab_size} float32 values, got {len(msg.dense_f32)} bytes"
            )
        q = torch.from_numpy(np.frombuffer(msg.dense_f32, dtype="<f4").astype(np.float32))
    elif kind == "sparse":
        ids, probs = list(msg.sparse.token_ids), list(msg.sparse.probs)
        if len(ids) != len(probs) or not ids:
            raise InvalidArgument("draft_probs.sparse needs as many probs as token_ids, at least one")
        if max(ids) >= vocab_size:
            raise InvalidArgument(f"draft_probs.sparse.token_ids must be < {vocab_size}")
        q = torch.zeros(vocab_size, dtype=torch.float32)
        q[torch.tensor(ids)] = torch.tensor(probs, dtype=torch.float32)
    else:
        raise InvalidArgument("draft_probs entry has no encoding set")
    if not bool(torch.isfinite(q).all()) or bool((q < 0).any()) or bool((q > 1).any()):
        raise InvalidArgument("draft_probs must be finite and in [0, 1]")
    total = float(q.sum())
    if abs(total - 1.0) > 1e-3:
        raise InvalidArgument(f"draft_probs must sum to 1 per position, got {total:.4f}")
    return q


def decode_distributions(
    msgs: list[common_pb2.TokenDistribution], num_tokens: int, vocab_size: int
) -> torch.Tensor | None:
    """The q rows of a block as [K, V], or None (one-hot q) when none were sent."""
    if not msgs:
        return None
    if len(msgs) != num_tokens:
        raise InvalidArgument(f"draft_probs has {len(msgs)} entries for {num_tokens} draft tokens")
    rows: list[torch.Tensor] = []
    previous = None
    for msg in resolve_shared(msgs):  # a shared q is one message object there: decoded and validated once
        rows.append(rows[-1] if msg is previous else decode_distribution(msg, vocab_size))
        previous = msg
    return torch.stack(rows)


def hidden_to_pb(start: int, hidden: torch.Tensor) -> common_pb2.HiddenStates:
    """hidden [N, H] for positions start .. start+N-1 -> message (little-endian float32)."""
    data = hidden.detach().float().cpu().numpy().astype("<f4").tobytes()
    return common_pb2.HiddenStates(start_position=start, hidden_size=hidden.shape[1], data_f32=data)


def hidden_from_pb(msg: common_pb2.HiddenStates) -> tuple[int, torch.Tensor]:
    """message -> (start position, hidden [N, H] float32), validated."""
    width = msg.hidden_size
    if width == 0 or len(msg.data_f32) % (4 * width):
        raise InvalidArgument(
            f"hidden_states.data_f32 must hold whole rows of hidden_size ({width}) float32 values, "
            f"got {len(msg.data_f32)} bytes"
        )
    rows = np.frombuffer(msg.data_f32, dtype="<f4").astype(np.float32).reshape(-1, width)
    hidden = torch.from_numpy(rows)
    if not bool(torch.isfinite(hidden).all()):
        raise InvalidArgument("hidden_states must be finite")
    return int(msg.start_position), hidden


def merge_hidden(first: common_pb2.HiddenStates, second: common_pb2.HiddenStates) -> common_pb2.HiddenStates:
    """Two blocks as one when `second` starts where `first` ends (rows of consecutive verdicts); otherwise the
    later block replaces from its start, so the result keeps `first`'s rows before it."""
    if not first.data_f32:
        return second
    width = first.hidden_size
    rows = len(first.data_f32) // (4 * width) if width else 0
    keep = max(0, min(rows, second.start_position - first.start_position))
    return common_pb2.HiddenStates(
        start_position=first.start_position,
        hidden_size=width,
        data_f32=first.data_f32[: 4 * width * keep] + second.data_f32,
    )
