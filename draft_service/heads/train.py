"""`specdec train-draft`: train an EAGLE or Medusa head for a target on this machine.

1. data: the target's greedy answers to the shipped prompt set (chat template), generated in batches with the
   final hidden states kept (heads/data.py; cached on disk, so re-training skips it);
2. draft vocabulary: the N most frequent tokens of the training answers (EAGLE-3's reduced LM head; the head's
   q is zero elsewhere), its rows initialised from the target's (tied) embedding;
3. training, for a time budget with a cosine schedule: EAGLE with cross-entropy against the target's next token
   plus a feature-regression loss, unrolled for a few drafting steps (training-time test) so that drafting on its
   own predictions holds up; Medusa with cross-entropy of each head on the cached features;
4. a held-out report: speculative decoding replayed on held-out prompts' greedy answers with the real drafter
   classes (acceptance per position, mean accepted length with the target's own token included).
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from specdec.draft_service.heads.data import (
    HeadData,
    concat_data,
    data_key,
    generate_data,
    load_prompt_messages,
    prompt_ids,
    shipped_prompt_files,
)
from specdec.draft_service.heads.eagle import EagleDrafter, EagleHead
from specdec.draft_service.heads.layers import LayerShape
from specdec.draft_service.heads.medusa import MedusaDrafter, MedusaHead
from specdec.draft_service.heads.store import HeadConfig, TargetIdentity, build_head, load_head, save_head
from specdec.modeling import LoadedModel, cache_dir, weights_fingerprint
from specdec.sampling import SamplingConfig

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    method: str  # "eagle" | "medusa"
    minutes: float = 5.0  # training time budget (data generation not included)
    draft_vocab: int = 8192  # N: the draft vocabulary's size (0 or >= V: the whole vocabulary)
    max_new_tokens: int = 160  # answer length when generating data
    max_prompt_tokens: int = 1024
    gen_batch: int = 96  # prompts per batched generate call (96: 2,470 s for the shipped set here, 48: 5,326 s)
    holdout_every: int = 25  # about one prompt in n (by a hash of its tokens) is held out for the report
    eval_k: int = 4  # drafts per step in the held-out report
    eval_sequences: int = 0  # replay only the first n held-out sequences (quick experiments); 0: all of them
    lr: float = 1e-3
    batch_tokens: int = 2048  # EAGLE: ~tokens per batch; Medusa: positions per batch
    window: int = 384  # EAGLE: the longest training window (the end of a sequence)
    depth: int = 3  # EAGLE: training-time test steps
    feature_weight: float = 1.0  # EAGLE: the feature-regression loss's weight
    noise: float = 0.05  # EAGLE: std of Gaussian noise on input features, relative to their std
    prompt_weight: float = 0.3  # loss weight of positions inside the prompt (answers weigh 1)
    labels: str = "target"  # "target" distils the target's distribution, "tokens" fits the data's next tokens
    freeze_lm_head: bool = False  # keep the draft-vocabulary rows of the target's LM head as they are
    init_from: str = ""  # a trained head's folder to continue from (same method, target, shapes, draft vocabulary)
    medusa_heads: int = 4
    seed: int = 0
    prompt_files: list[str] = field(default_factory=list)  # empty: the shipped prompt set
    data_dir: str = ""  # where generated data is cached (default: the specdec cache)
    max_steps: int = 0  # stop after this many steps even within the time budget (tests); 0: no limit

    def __post_init__(self) -> None:
        if self.labels not in ("target", "tokens"):
            raise ValueError(f"labels must be 'target' or 'tokens', not {self.labels!r}")


@dataclass
class EvalReport:
    k: int
    steps: int
    drafted_per_position: list[int]
    accepted_per_position: list[int]
    committed: int

    @property
    def acceptance_per_position(self) -> list[float]:
        return [a / d if d else 0.0 for a, d in zip(self.accepted_per_position, self.drafted_per_position, strict=True)]

    @property
    def mean_accepted_length(self) -> float:
        return self.committed / self.steps if self.steps else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "steps": self.steps,
            "mean_accepted_length": round(self.mean_accepted_length, 3),
            "acceptance_per_position": [round(a, 3) for a in self.acceptance_per_position],
        }

    def text(self) -> str:
        per = ", ".join(f"{a:.2f}" for a in self.acceptance_per_position)
        return (
            f"held-out acceptance (K={self.k}, greedy, {self.steps} steps): mean accepted length "
            f"{self.mean_accepted_length:.2f} (target token included); acceptance per position [{per}]"
        )


def split_indices(data: HeadData, every: int) -> tuple[list[int], list[int]]:
    """(training, held-out) sequence indices: about one sequence in `every` is held out, chosen by a hash of its
    prompt's tokens, so a sequence stays on its side when prompt files are added (a head continued on more data
    is never evaluated on prompts it trained on); at least one is held out when there are two or more."""
    if not every or data.num_sequences < 2:
        return list(range(data.num_sequences)), []
    digests = [_prompt_digest(data, i) for i in range(data.num_sequences)]
    held = {i for i, d in enumerate(digests) if d % every == 0} or {digests.index(min(digests))}
    return [i for i in range(data.num_sequences) if i not in held], sorted(held)


def _prompt_digest(data: HeadData, i: int) -> int:
    tokens, _, prompt_len = data.sequence(i)
    return int.from_bytes(hashlib.blake2b(tokens[:prompt_len].numpy().tobytes(), digest_size=8).digest(), "little")


def answer_mask(data: HeadData) -> torch.Tensor:
    """[N] True at answer tokens (positions >= the prompt's length)."""
    mask = torch.zeros(len(data.tokens), dtype=torch.bool)
    for i in range(data.num_sequences):
        mask[int(data.offsets[i]) + int(data.prompt_lengths[i]) : int(data.offsets[i + 1])] = True
    return mask


def draft_vocabulary(data: HeadData, size: int, vocab_size: int, always: list[int]) -> torch.Tensor:
    """The `size` most frequent answer tokens (then prompt tokens, then the lowest ids), `always` included: [N]."""
    if size <= 0 or size >= vocab_size:
        return torch.arange(vocab_size)
    answers = data.tokens[answer_mask(data)]
    counts = torch.bincount(answers, minlength=vocab_size).double() * 1e6  # answers first
    counts += torch.bincount(data.tokens, minlength=vocab_size).double()  # then prompts
    counts[torch.tensor(always, dtype=torch.long)] = float("inf")
    counts -= torch.arange(vocab_size, dtype=torch.float64) * 1e-9  # ties: the lower id
    return torch.topk(counts, size).indices.sort().values


def coverage(data: HeadData, vocab_ids: torch.Tensor) -> float:
    answers = data.tokens[answer_mask(data)]
    inside = torch.zeros(int(max(int(answers.max()), int(vocab_ids.max())) + 1), dtype=torch.bool)
    inside[vocab_ids] = True
    return float(inside[answers].float().mean())


def target_identity(lm: LoadedModel) -> TargetIdentity:
    return TargetIdentity(
        name=lm.name,
        vocab_fingerprint=lm.fingerprint,
        weights_fingerprint=weights_fingerprint(lm.model),
        hidden_size=int(lm.model.config.hidden_size),
        vocab_size=lm.vocab_size,
    )


def layer_shape(lm: LoadedModel) -> LayerShape:
    """The EAGLE layer has the target's decoder-layer shape (so it can start from the target's last layer)."""
    c = lm.model.config
    theta = getattr(c, "rope_theta", None) or (getattr(c, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    return LayerShape(
        hidden_size=int(c.hidden_size),
        num_heads=int(c.num_attention_heads),
        num_kv_heads=int(getattr(c, "num_key_value_heads", None) or c.num_attention_heads),
        intermediate_size=int(c.intermediate_size),
        rope_theta=float(theta),
        rms_eps=float(getattr(c, "rms_norm_eps", 1e-5)),
    )


def init_head(head: EagleHead | MedusaHead, lm: LoadedModel, vocab_ids: torch.Tensor, feature_std: float = 1.0) -> None:
    """Draft vocabulary rows from the target's LM head; EAGLE's layer from the target's last decoder layer (same
    shape) when the names match, its fc as 'feature + token embedding', the embedding scaled up to the features'
    size (else the token, the main news, starts drowned in the feature: 0.14 vs 1.9 std on the default model)."""
    with torch.no_grad():
        out_rows = lm.model.get_output_embeddings().weight.detach().float().cpu()
        head.vocab_ids.copy_(vocab_ids)
        head.lm_head.weight.copy_(out_rows[vocab_ids])
        layers = getattr(getattr(lm.model, "model", None), "layers", None)
        if isinstance(head, EagleHead) and layers is not None:
            last = layers[-1]
            pairs = {
                "q_proj": last.self_attn.q_proj, "k_proj": last.self_attn.k_proj, "v_proj": last.self_attn.v_proj,
                "o_proj": last.self_attn.o_proj, "gate_proj": last.mlp.gate_proj, "up_proj": last.mlp.up_proj,
                "down_proj": last.mlp.down_proj, "input_norm": last.input_layernorm,
                "post_attention_norm": last.post_attention_layernorm,
            }  # fmt: skip
            for name, source in pairs.items():
                getattr(head.layer, name).weight.copy_(source.weight.detach().float().cpu())
            h = head.shape.hidden_size
            head.fc.weight.zero_()
            head.fc.weight[:, :h] = torch.eye(h)
            embedding_std = float(lm.model.get_input_embeddings().weight.detach().float().std())
            head.fc.weight[:, h:] = torch.eye(h) * (feature_std / max(embedding_std, 1e-6))
            head.fc.bias.zero_()
            head.norm.weight.copy_(lm.model.model.norm.weight.detach().float().cpu())


def continue_from(head: EagleHead | MedusaHead, trained: EagleHead | MedusaHead) -> int:
    """Load a trained head's weights into `head`, whose draft vocabulary was chosen on this training's data: the
    LM-head rows of tokens in both vocabularies are the trained ones, those of new tokens keep `head`'s
    initialisation (the target's LM head). Returns how many rows were carried over."""
    state = trained.state_dict()
    old_row = {int(t): i for i, t in enumerate(trained.vocab_ids.tolist())}
    pairs = [(i, old_row[t]) for i, t in enumerate(head.vocab_ids.tolist()) if t in old_row]  # (new row, old row)
    lm_head = head.lm_head.weight.detach().clone()  # [N, H] initialised rows
    if pairs:
        new_rows, old_rows = (torch.tensor(x) for x in zip(*pairs, strict=True))
        lm_head[new_rows] = state["lm_head.weight"][old_rows].to(lm_head.dtype)
    state["lm_head.weight"], state["vocab_ids"] = lm_head, head.vocab_ids.clone()
    head.load_state_dict(state)
    return len(pairs)


def check_continuable(config: HeadConfig, trained: HeadConfig) -> None:
    """A head can be trained further only as the same method, for the same target, in the same shapes and draft
    vocabulary size (the vocabulary itself is chosen anew on the new data: see `continue_from`)."""
    if replace(trained, training={}) != replace(config, training={}):
        raise ValueError(
            f"--init holds a head of another method, target, shape or draft vocabulary than this training's "
            f"({config.method} for {config.target.name}, draft vocabulary {config.draft_vocab_size})"
        )


# ---- batches --------------------------------------------------------------------------------------------------


@dataclass
class EagleBatch:
    features: torch.Tensor  # [B, T, H] f_j
    next_embeddings: torch.Tensor  # [B, T, H] emb(t_{j+1})
    target_features: torch.Tensor  # [B, T, H] f_{j+1}
    labels: torch.Tensor  # [B, T] draft-vocabulary index of t_{j+2}, -100 outside it or past the end
    weights: torch.Tensor  # [B, T] loss weight of row j
    key_mask: torch.Tensor  # [B, T] real pairs


def eagle_batches(
    data: HeadData, indices: list[int], embedding: torch.Tensor, to_draft: torch.Tensor, cfg: TrainConfig
) -> Iterator[EagleBatch]:
    """Endless random batches of sequence windows (each a sequence's last `window` tokens: RoPE attention depends
    only on relative positions, so a window starting at 0 is as good as the original offsets)."""
    rng = random.Random(cfg.seed)
    hidden_size = embedding.shape[1]
    length = {i: min(cfg.window, int(data.offsets[i + 1] - data.offsets[i])) for i in indices}
    while True:
        order = indices[:]
        rng.shuffle(order)
        batches: list[list[int]] = []
        for chunk in range(0, len(order), 64):  # similar lengths share a batch (less padding), within random chunks
            batch: list[int] = []
            for i in sorted(order[chunk : chunk + 64], key=length.__getitem__):
                if batch and (len(batch) + 1) * length[i] > cfg.batch_tokens:
                    batches.append(batch)
                    batch = []
                batch.append(i)
            batches.append(batch)
        rng.shuffle(batches)
        for batch in batches:
            yield _eagle_batch(data, batch, embedding, to_draft, cfg, hidden_size)


def _eagle_batch(
    data: HeadData, batch: list[int], embedding: torch.Tensor, to_draft: torch.Tensor, cfg: TrainConfig, h: int
) -> EagleBatch:
    seqs = []
    for i in batch:
        tokens, hidden, prompt_len = data.sequence(i)
        start = max(0, len(tokens) - cfg.window)
        seqs.append((tokens[start:], hidden[start:].float(), prompt_len - start))
    t = max(len(s[0]) for s in seqs) - 1  # pairs j = 0 .. L-2
    b = len(seqs)
    out = EagleBatch(
        features=torch.zeros(b, t, h),
        next_embeddings=torch.zeros(b, t, h),
        target_features=torch.zeros(b, t, h),
        labels=torch.full((b, t), -100, dtype=torch.long),
        weights=torch.zeros(b, t),
        key_mask=torch.zeros(b, t, dtype=torch.bool),
    )
    for r, (tokens, hidden, prompt_len) in enumerate(seqs):
        pairs = len(tokens) - 1
        out.features[r, :pairs] = hidden[:pairs]
        out.next_embeddings[r, :pairs] = embedding[tokens[1:]]
        out.key_mask[r, :pairs] = True
        labelled = pairs - 1  # rows j <= L-3 have t_{j+2} and a real f_{j+1}
        out.target_features[r, :labelled] = hidden[1 : labelled + 1]
        out.labels[r, :labelled] = to_draft[tokens[2:]]
        label_pos = torch.arange(2, labelled + 2)
        out.weights[r, :labelled] = torch.where(label_pos >= prompt_len, 1.0, cfg.prompt_weight)
    return out


def teacher_log_probs(target_features: torch.Tensor, teacher_rows: torch.Tensor) -> torch.Tensor:
    """The target's next-token distribution over the draft vocabulary, log-softmaxed: [B, T, N].

    target_features [B, T, H] are the target's own final hidden states f_{j+1} and teacher_rows [N, H] its (tied)
    LM-head rows of the draft vocabulary, so this is exactly what verification compares a draft with, at the
    prompt's positions too (there the data's next token is the user's, not the target's)."""
    with torch.no_grad():
        return F.log_softmax(F.linear(target_features, teacher_rows), dim=-1)


def eagle_loss(
    head: EagleHead, batch: EagleBatch, cfg: TrainConfig, feature_std: float, teacher_rows: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """Per unrolled step s (weight 0.8^s): classification of the token at j+2 (cross-entropy against the target's
    distribution when teacher_rows is given, else against the data's token) plus smooth-L1 regression of f_{j+1}.
    acc{s}: how often the draft's top token is the target's (or the data's) over answer rows."""
    features = batch.features
    if cfg.noise > 0:
        features = features + torch.randn_like(features) * cfg.noise * feature_std
    outputs = head.unrolled(features, batch.next_embeddings, cfg.depth, batch.key_mask)
    teacher = None if teacher_rows is None else teacher_log_probs(batch.target_features, teacher_rows)  # [B, T, N]
    teacher_probs = None if teacher is None else teacher.exp()  # [B, T, N]
    best = batch.labels if teacher is None else teacher.argmax(-1)  # [B, T] the token a draft should name
    scored = batch.weights >= 1.0  # answer rows (with a real f_{j+1}); hard labels: inside the draft vocabulary too
    if teacher is None:
        scored &= batch.labels != -100
    total = torch.zeros(())
    stats: dict[str, float] = {}
    for s, pred in enumerate(outputs):
        w = batch.weights[:, s:]  # rows j >= s are meaningful at step s
        logits = head.lm_head(pred[:, s:])  # [B, T-s, N]
        if teacher_probs is None:
            ce = F.cross_entropy(logits.transpose(1, 2), batch.labels[:, s:], reduction="none")  # [B, T-s]
        else:
            ce = -(teacher_probs[:, s:] * F.log_softmax(logits, dim=-1)).sum(-1)  # [B, T-s]
        diff = (pred[:, s:] - batch.target_features[:, s:]) / feature_std
        reg = F.smooth_l1_loss(diff, torch.zeros_like(diff), reduction="none").mean(-1)  # [B, T-s]
        denom = w.sum().clamp_min(1e-6)
        loss = ((ce + cfg.feature_weight * reg) * w).sum() / denom
        total = total + loss * 0.8**s
        hits = (logits.argmax(-1) == best[:, s:]) & scored[:, s:]
        stats[f"acc{s}"] = float(hits.sum()) / max(1.0, float(scored[:, s:].sum()))
    stats["loss"] = float(total.detach())
    return total, stats


@dataclass
class MedusaBatch:
    features: torch.Tensor  # [P, H] f_j
    labels: torch.Tensor  # [P, M] head k: draft-vocabulary index of t_{j+2+k}, -100 past the end or outside it
    weights: torch.Tensor  # [P, M] loss weight of head k at row j (0 past the end)
    target_features: torch.Tensor | None  # [P, M] x H: f_{j+1+k}, from which the target predicts t_{j+2+k}


def medusa_batches(
    data: HeadData, indices: list[int], to_draft: torch.Tensor, cfg: TrainConfig
) -> Iterator[MedusaBatch]:
    """Endless random batches of positions j (every position of every sequence but the last)."""
    rows, labels, weights, teacher = [], [], [], []
    for i in indices:
        a, length, prompt_len = (
            int(data.offsets[i]),
            int(data.offsets[i + 1] - data.offsets[i]),
            int(data.prompt_lengths[i]),
        )
        for j in range(length - 1):
            rows.append(a + j)
            lab, wt, tea = [], [], []
            for k in range(cfg.medusa_heads):
                pos = j + 2 + k
                lab.append(int(to_draft[data.tokens[a + pos]]) if pos < length else -100)
                wt.append((1.0 if pos >= prompt_len else cfg.prompt_weight) if pos < length else 0.0)
                tea.append(a + pos - 1 if pos < length else a + j)  # past the end: any real row (weight 0)
            labels.append(lab)
            weights.append(wt)
            teacher.append(tea)
    all_rows, all_labels, all_weights = torch.tensor(rows), torch.tensor(labels), torch.tensor(weights)
    all_teacher = torch.tensor(teacher)  # [rows, M] the hidden-state row the target predicts t_{j+2+k} from
    gen = torch.Generator().manual_seed(cfg.seed)
    while True:
        perm = torch.randperm(len(all_rows), generator=gen)
        for start in range(0, len(perm) - cfg.batch_tokens + 1, cfg.batch_tokens):
            pick = perm[start : start + cfg.batch_tokens]
            yield MedusaBatch(
                features=data.hidden[all_rows[pick]].float(),
                labels=all_labels[pick],
                weights=all_weights[pick],
                target_features=data.hidden[all_teacher[pick]].float() if cfg.labels == "target" else None,
            )


def medusa_loss(
    head: MedusaHead, batch: MedusaBatch, teacher_rows: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """Per head k (weight 0.8^k): cross-entropy of t_{j+2+k} against the target's own distribution there when
    teacher_rows is given (self-distillation, as Medusa-2), else against the data's token. acc{k}: how often the
    head's top token is the target's (or the data's) over answer rows."""
    teacher = None
    if teacher_rows is not None:
        assert batch.target_features is not None
        teacher = teacher_log_probs(batch.target_features, teacher_rows)  # [P, M, N]
    total = torch.zeros(())
    stats: dict[str, float] = {}
    for k, logits in enumerate(head(batch.features)):  # logits [P, N]
        w = batch.weights[:, k]  # [P]
        if teacher is None:
            ce = F.cross_entropy(logits, batch.labels[:, k], reduction="none")  # [P]
            best, valid = batch.labels[:, k], (batch.labels[:, k] != -100) & (w >= 1.0)
        else:
            ce = -(teacher[:, k].exp() * F.log_softmax(logits, dim=-1)).sum(-1)  # [P]
            best, valid = teacher[:, k].argmax(-1), w >= 1.0
        total = total + (ce * w).sum() / w.sum().clamp_min(1e-6) * 0.8**k
        stats[f"acc{k}"] = float(((logits.argmax(-1) == best) & valid).sum()) / max(1.0, float(valid.sum()))
    stats["loss"] = float(total.detach())
    return total, stats


# ---- evaluation -----------------------------------------------------------------------------------------------


@torch.inference_mode()
def replay_acceptance(
    head: nn.Module, data: HeadData, indices: list[int], embedding: torch.Tensor | None, vocab_size: int, k: int
) -> EvalReport:
    """Greedy speculative decoding replayed on held-out greedy answers with the real drafter classes: the target's
    greedy continuation is the data, so a draft is accepted exactly when it equals the next data tokens. The first
    step of each answer is target-only (no features yet), as in serving."""
    report = EvalReport(k, 0, [0] * k, [0] * k, 0)
    for i in indices:
        tokens, hidden, prompt_len = data.sequence(i)
        ids = tokens.tolist()
        drafter = _drafter(head, embedding, vocab_size)
        n = prompt_len + 1  # after the first, target-only step: features for positions 0 .. n-2
        drafter.observe_hidden(0, hidden[: n - 1].float())
        while n < len(ids):
            drafts = [t for t, _ in drafter.propose(ids[:n], min(k, len(ids) - n - 1))] if n < len(ids) - 1 else []
            accepted = 0
            while accepted < len(drafts) and drafts[accepted] == ids[n + accepted]:
                accepted += 1
            for p in range(len(drafts)):
                report.drafted_per_position[p] += 1
                report.accepted_per_position[p] += p < accepted
            report.steps += 1
            report.committed += accepted + 1
            # the verifier fed [t_{n-1}, accepted drafts]: features for positions n-1 .. n-1+accepted
            drafter.observe_hidden(n - 1, hidden[n - 1 : n + accepted].float())
            n += accepted + 1
    return report


def _drafter(head: nn.Module, embedding: torch.Tensor | None, vocab_size: int) -> Any:
    if isinstance(head, EagleHead):
        assert embedding is not None
        return EagleDrafter(head, embedding, vocab_size, SamplingConfig())
    assert isinstance(head, MedusaHead)
    return MedusaDrafter(head, vocab_size, SamplingConfig())


# ---- the whole run --------------------------------------------------------------------------------------------


def load_training_data(lm: LoadedModel, cfg: TrainConfig) -> HeadData:
    """The target's answers to every prompt file, generated once per file and cached (adding a file generates
    only its own answers)."""
    files = [Path(p) for p in cfg.prompt_files] or shipped_prompt_files()
    folder = Path(cfg.data_dir) if cfg.data_dir else cache_dir() / "head-data"
    parts = []
    for file in files:
        prompts = prompt_ids(lm, load_prompt_messages([file]), cfg.max_prompt_tokens)
        key = data_key(lm, prompts, cfg.max_new_tokens)
        part = generate_data(lm, prompts, cfg.max_new_tokens, cfg.gen_batch, folder / f"{key}.safetensors")
        part.info["prompt_files"] = [file.name]
        parts.append(part)
    data = concat_data(parts)
    data.info["prompt_files"] = [p.name for p in files]
    return data


def cosine_lr(base: float, fraction: float, warmup_fraction: float = 0.03) -> float:
    if fraction < warmup_fraction:
        return base * max(0.05, fraction / warmup_fraction)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, fraction)))


def train(
    lm: LoadedModel, cfg: TrainConfig, out: Path, command: str = ""
) -> tuple[EagleHead | MedusaHead, HeadConfig, EvalReport]:
    """Generate (or load) the data, train a head for cfg.minutes, report held-out acceptance, save to `out`."""
    torch.manual_seed(cfg.seed)
    started = time.perf_counter()
    identity = target_identity(lm)
    config = HeadConfig(
        method=cfg.method,
        target=identity,
        draft_vocab_size=cfg.draft_vocab if 0 < cfg.draft_vocab < identity.vocab_size else identity.vocab_size,
        layer=layer_shape(lm) if cfg.method == "eagle" else None,
        medusa_heads=cfg.medusa_heads if cfg.method == "medusa" else 0,
    )
    continued = load_head(Path(cfg.init_from)) if cfg.init_from else None
    if continued is not None:
        check_continuable(config, continued[1])  # before data generation (up to 40 min): fail fast
    data = load_training_data(lm, cfg)
    train_idx, held_idx = split_indices(data, cfg.holdout_every)
    train_data = data.subset(train_idx)
    vocab_ids = draft_vocabulary(train_data, config.draft_vocab_size, identity.vocab_size, list(lm.eos_token_ids))
    print(
        f"data: {data.num_sequences} sequences ({len(train_idx)} training, {len(held_idx)} held out), "
        f"{len(data.tokens)} tokens of which {data.generated_tokens()} generated; draft vocabulary {len(vocab_ids)} "
        f"tokens covers {coverage(train_data, vocab_ids):.1%} of training answer tokens"
    )
    to_draft = torch.full((identity.vocab_size,), -100, dtype=torch.long)
    to_draft[vocab_ids] = torch.arange(len(vocab_ids))
    feature_std = float(train_data.hidden[: min(len(train_data.hidden), 200_000)].float().std())
    head = build_head(config)
    init_head(head, lm, vocab_ids, feature_std)
    kept = 0
    if continued is not None:
        kept = continue_from(head, continued[0])
        print(f"continuing from {cfg.init_from}: {kept} of {len(vocab_ids)} draft-vocabulary rows carried over")
    embedding = lm.model.get_input_embeddings().weight.detach().float().cpu()  # [V, H]
    teacher_rows = None  # [N, H] the target's LM-head rows of the draft vocabulary (frozen), when distilling
    if cfg.labels == "target":
        teacher_rows = lm.model.get_output_embeddings().weight.detach().float().cpu()[vocab_ids]

    head.train()
    if cfg.freeze_lm_head:
        head.lm_head.weight.requires_grad_(False)
    params = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    batches: Iterator[Any]
    if isinstance(head, EagleHead):
        batches = eagle_batches(train_data, list(range(train_data.num_sequences)), embedding, to_draft, cfg)
    else:
        batches = medusa_batches(train_data, list(range(train_data.num_sequences)), to_draft, cfg)
    budget = cfg.minutes * 60
    train_start = time.perf_counter()
    step, stats = 0, dict[str, float]()
    bar = tqdm(total=round(budget), desc=f"training {cfg.method} head", unit="s")
    while True:
        elapsed = time.perf_counter() - train_start
        if elapsed >= budget or (cfg.max_steps and step >= cfg.max_steps):
            break
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(cfg.lr, elapsed / budget)
        batch: Any = next(batches)
        if isinstance(head, EagleHead):
            loss, stats = eagle_loss(head, batch, cfg, feature_std, teacher_rows)
        else:
            assert isinstance(head, MedusaHead)
            loss, stats = medusa_loss(head, batch, teacher_rows)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        step += 1
        bar.update(min(round(budget), round(time.perf_counter() - train_start)) - bar.n)
        bar.set_postfix(step=step, **{k: f"{v:.3f}" for k, v in stats.items()})
    bar.close()
    train_s = time.perf_counter() - train_start
    head.eval()

    k = cfg.eval_k if cfg.method == "eagle" else min(cfg.eval_k, cfg.medusa_heads)
    replayed = held_idx[: cfg.eval_sequences] if cfg.eval_sequences else held_idx
    report = replay_acceptance(head, data, replayed, embedding, identity.vocab_size, k)
    print(report.text())
    config.training = {
        "command": command,
        "train_config": asdict(cfg),
        "data": {**data.info, "sequences_train": len(train_idx), "sequences_held_out": len(held_idx)},
        "draft_vocab_coverage": round(coverage(train_data, vocab_ids), 4),
        "steps": step,
        "train_seconds": round(train_s, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "final_batch": {k: round(v, 4) for k, v in stats.items()},
        "held_out": {**report.summary(), "sequences": len(replayed)},
        **({"continued_from": continued[1].training, "rows_carried_over": kept} if continued is not None else {}),
    }
    save_head(head, config, out)
    print(f"saved {cfg.method} head to {out} ({step} steps in {train_s:.0f} s)")
    return head, config, report
