"""The draft service's core, free of gRPC: the loaded draft models and the sessions that use them."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from specdec.draft_service.drafts import Drafter, FeatureDrafter, ModelDrafter, NgramDrafter, Proposal
from specdec.draft_service.heads.eagle import EagleDrafter, EagleHead, TreeBlock
from specdec.draft_service.heads.medusa import MedusaDrafter, MedusaHead
from specdec.draft_service.heads.store import DEFAULT_HEADS_DIR, HeadConfig, TargetIdentity, load_head
from specdec.draft_service.suffix import SuffixCache, SuffixConfig, SuffixDrafter
from specdec.draftspec import HEAD_KINDS, DraftSpec, parse_draft
from specdec.errors import FailedPrecondition, InvalidArgument, OutOfRange
from specdec.limits import MAX_BLOCK_TOKENS, MAX_NGRAM_SEQUENCE
from specdec.modeling import (
    LoadedModel,
    canonical_name,
    embedding_fingerprint,
    load_input_embedding,
    load_model,
    quantize_int8,
    weights_fingerprint,
)
from specdec.sampling import SamplingConfig

log = logging.getLogger(__name__)


@dataclass
class DraftOptions:
    prompt_token_ids: list[int]
    draft: str
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    target_name: str = ""
    target_fingerprint: str = ""  # empty: not checked (the caller vouches for the vocabulary)
    target_vocab_size: int = 0
    target_weights_fingerprint: str = ""  # trained heads: the exact target they fit; empty: not checked
    target_hidden_size: int = 0


class DraftSession:
    """One sequence: the committed tokens both services agree on, and the drafter proposing after them."""

    def __init__(
        self, spec: DraftSpec, drafter: Drafter, prompt: list[int], vocab_size: int = 0, max_length: int = 0
    ) -> None:
        if not prompt:
            raise InvalidArgument("prompt_token_ids must contain at least one token")
        self.spec = spec
        self.drafter = drafter
        self.vocab_size = vocab_size  # 0: not checked (an n-gram draft never embeds tokens)
        self.max_length = max_length or MAX_NGRAM_SEQUENCE  # the longest sequence this draft can hold
        self._check_ids(prompt, "prompt_token_ids")
        self._check_length(len(prompt), "prompt_token_ids")
        self.committed = list(prompt)

    def _check_length(self, length: int, field_name: str) -> None:
        if length > self.max_length:
            raise OutOfRange(
                f"{field_name} would make the sequence {length} tokens long; the draft's context is {self.max_length}"
            )

    def _check_ids(self, ids: list[int], field_name: str) -> None:
        if self.vocab_size and any(not 0 <= t < self.vocab_size for t in ids):
            bad = [t for t in ids if not 0 <= t < self.vocab_size][:5]
            raise InvalidArgument(f"{field_name} has ids outside the vocabulary [0, {self.vocab_size}): {bad}")

    def propose(
        self, position: int, max_tokens: int, min_confidence: float = 0.0, assumed: Sequence[int] = ()
    ) -> Iterator[Proposal]:
        """Up to max_tokens proposals for positions position + len(assumed) ..; `assumed` (draft-ahead) are
        tokens being verified that the draft takes as accepted without committing them."""
        if not 1 <= max_tokens <= MAX_BLOCK_TOKENS:
            raise OutOfRange(f"propose.max_tokens must be in [1, {MAX_BLOCK_TOKENS}], got {max_tokens}")
        self._check_propose(position, min_confidence)
        if len(assumed) > MAX_BLOCK_TOKENS:
            raise OutOfRange(f"propose.assumed_token_ids has {len(assumed)} tokens; at most {MAX_BLOCK_TOKENS}")
        self._check_ids(list(assumed), "propose.assumed_token_ids")
        self._check_length(position + len(assumed), "propose.assumed_token_ids")
        if assumed and isinstance(self.drafter, SuffixDrafter):  # keeps assumed tokens out of its trees
            return self.drafter.propose_ahead(self.committed, assumed, max_tokens)
        # The other drafters roll back by position on the next call, so assumed tokens are just context here.
        return self.drafter.propose([*self.committed, *assumed], max_tokens, min_confidence)

    def _check_propose(self, position: int, min_confidence: float) -> None:
        if not 0.0 <= min_confidence <= 1.0:  # NaN fails too
            raise OutOfRange(f"propose.min_confidence must be in [0, 1], got {min_confidence}")
        if position != len(self.committed):
            raise FailedPrecondition(
                f"propose position {position} does not match the committed length {len(self.committed)}"
            )

    def propose_tree(self, position: int, depth: int, nodes: int, min_probability: float = 0.0) -> TreeBlock | None:
        """A token tree (at most `nodes` tokens, `depth` deep, each with a path probability under the draft of at
        least `min_probability`) from committed length `position`, or None when this draft builds chains only (the
        caller proposes a chain instead)."""
        if not isinstance(self.drafter, EagleDrafter):
            return None
        if not 1 <= depth <= MAX_BLOCK_TOKENS or not 1 <= nodes <= MAX_BLOCK_TOKENS:
            raise OutOfRange(f"a tree must be 1 to {MAX_BLOCK_TOKENS} deep and hold 1 to {MAX_BLOCK_TOKENS} tokens; "
                             f"got depth {depth}, {nodes} tokens")  # fmt: skip
        self._check_propose(position, min_probability)
        return self.drafter.propose_tree(self.committed, depth, nodes, min_probability=min_probability)

    def commit(self, position: int, token_ids: list[int], hidden: tuple[int, torch.Tensor] | None = None) -> None:
        """Tokens committed from `position` on; anything the draft assumed after it is dropped. `hidden`: the
        target's final hidden states (start position, [N, H]) that came with them, for drafts that use them."""
        if position > len(self.committed):
            raise FailedPrecondition(f"commit position {position} is past the committed length {len(self.committed)}")
        if not token_ids:
            raise InvalidArgument("commit.token_ids must contain at least one token")
        self._check_ids(token_ids, "commit.token_ids")
        self._check_length(position + len(token_ids), "commit.token_ids")
        if hidden is not None:
            start, rows = hidden
            if start > position or start + len(rows) > position + len(token_ids):
                raise InvalidArgument(
                    f"commit.hidden_states cover positions {start} .. {start + len(rows) - 1}; they must start at or "
                    f"before the commit's position {position} and end before {position + len(token_ids)}"
                )
        del self.committed[position:]
        self.committed.extend(token_ids)
        if hidden is not None and isinstance(self.drafter, FeatureDrafter):
            self.drafter.observe_hidden(*hidden)


class DraftCore:
    """Draft models are loaded on first use (or preloaded) and shared by all sessions."""

    def __init__(self, device: str = "auto", dtype: str = "auto", suffix_config: SuffixConfig | None = None) -> None:
        self.device = device
        self.dtype = dtype
        self.suffix_config = suffix_config or SuffixConfig()
        self.suffix_caches: dict[str, SuffixCache] = {}  # by target vocabulary fingerprint
        self._models: dict[str, LoadedModel] = {}
        self._heads: dict[str, LoadedHead] = {}  # by kind and folder
        self._lock = threading.Lock()
        self.sessions: set[DraftSession] = set()

    @property
    def live_sessions(self) -> int:
        return len(self.sessions)

    def kv_cache_bytes(self) -> int:
        """Bytes held by the model drafts' KV caches (prompt lookup holds none)."""
        return sum(session.drafter.kv_cache_bytes() for session in list(self.sessions))

    def register(self, lm: LoadedModel) -> None:
        """Serve an already loaded model as `model:NAME` (embedded mode shares the target's weights)."""
        with self._lock:
            self._models[lm.name] = lm

    def model(self, name: str) -> LoadedModel:
        key = canonical_name(name)
        with self._lock:
            if key not in self._models:
                start = time.perf_counter()
                self._models[key] = load_model(name, self.device, self.dtype)
                log.info("loaded draft model %s in %.1f s", key, time.perf_counter() - start)
            return self._models[key]

    def warm_up(self, lm: LoadedModel) -> None:
        """One short proposal with the model, so the first real session does not pay for lazy initialisation."""
        eos = lm.eos_token_ids[0] if lm.eos_token_ids else 0
        drafter = ModelDrafter(lm, SamplingConfig())
        try:
            list(drafter.propose([eos] * 4, 2, 0.0))
        finally:
            drafter.close()

    def quantized(self, name: str) -> LoadedModel:
        """`name`'s int8 copy (loaded, or shared with the target in embedded mode, then quantized once)."""
        if not name:
            raise InvalidArgument("draft 'quantized' needs the target's name (target_name) or quantized:ID_OR_PATH")
        key = f"quantized:{canonical_name(name)}"
        with self._lock:
            cached = self._models.get(key)
        if cached is None:
            start = time.perf_counter()
            cached = quantize_int8(self.model(name))
            log.info("quantized %s to int8 in %.1f s", name, time.perf_counter() - start)
            with self._lock:
                cached = self._models.setdefault(key, cached)
        return cached

    def open_session(self, options: DraftOptions) -> DraftSession:
        spec = parse_draft(options.draft)
        drafter: Drafter
        vocab_size = options.target_vocab_size
        max_length = 0
        if spec.kind == "ngram":
            drafter = NgramDrafter(spec.ngram_max)
        elif spec.kind == "suffix":  # the shared tree is per vocabulary: token ids mean nothing across them
            key = options.target_fingerprint or str(options.target_vocab_size)
            drafter = SuffixDrafter(self.suffix_caches.setdefault(key, SuffixCache(self.suffix_config)))
        elif spec.kind in HEAD_KINDS:
            head = self.head(spec)
            head.check_target(spec, options)
            drafter = self._head_drafter(head, options.sampling)
            vocab_size = head.config.target.vocab_size
        elif spec.uses_model:
            lm = self.model(spec.model) if spec.kind == "model" else self.quantized(spec.model or options.target_name)
            self._check_vocabulary(lm, options)
            drafter = ModelDrafter(lm, options.sampling)
            vocab_size, max_length = lm.vocab_size, lm.max_context
        else:
            raise InvalidArgument("draft 'none' needs no draft session")
        session = DraftSession(spec, drafter, options.prompt_token_ids, vocab_size, max_length)
        self.sessions.add(session)
        return session

    def head(self, spec: DraftSpec) -> LoadedHead:
        """The trained head named by `spec` (its folder, or the shipped one), loaded once."""
        folder = Path(spec.model).expanduser() if spec.model else DEFAULT_HEADS_DIR / spec.kind
        key = f"{spec.kind}:{folder.resolve()}"
        with self._lock:
            if key not in self._heads:
                module, config = load_head(folder)
                if config.method != spec.kind:
                    raise FailedPrecondition(
                        f"{folder} holds a {config.method} head; use --draft {config.method}:{folder}"
                    )
                self._heads[key] = LoadedHead(folder, module, config)
                log.info("loaded %s head from %s (trained for %s)", spec.kind, folder, config.target.name)
            return self._heads[key]

    def preload_head(self, spec: DraftSpec) -> None:
        """Load a head (and an eagle head's target embedding) before the first session needs it."""
        head = self.head(spec)
        if isinstance(head.module, EagleHead) and head.embedding is None:
            head.embedding = self._target_embedding(head.config.target)

    def _head_drafter(self, head: LoadedHead, sampling: SamplingConfig) -> Drafter:
        vocab_size = head.config.target.vocab_size
        if isinstance(head.module, MedusaHead):
            return MedusaDrafter(head.module, vocab_size, sampling)
        assert isinstance(head.module, EagleHead)
        if head.embedding is None:
            head.embedding = self._target_embedding(head.config.target)
        return EagleDrafter(head.module, head.embedding, vocab_size, sampling)

    def _target_embedding(self, target: TargetIdentity) -> torch.Tensor:
        """The token embedding [V, H] of the head's target (EAGLE's input): a registered target's own weights
        (embedded mode), else the one tensor read from the target's safetensors; checked by fingerprint."""
        with self._lock:
            registered = list(self._models.values())
        for lm in registered:
            if lm.name == target.name and weights_fingerprint(lm.model) == target.weights_fingerprint:
                return lm.model.get_input_embeddings().weight.detach().float().cpu()
        embedding = load_input_embedding(target.name)
        if embedding is None:
            raise FailedPrecondition(
                f"an eagle head needs its target's token embedding, but no safetensors folder of {target.name} "
                "is available to the draft service (pass a local path as --target when training)"
            )
        found = embedding_fingerprint(embedding)
        if found != target.weights_fingerprint:
            raise FailedPrecondition(
                f"the weights of {target.name} found by the draft service (fingerprint {found}) are not those the "
                f"head was trained for ({target.weights_fingerprint})"
            )
        return embedding

    def close_session(self, session: DraftSession) -> None:
        session.drafter.close()
        self.sessions.discard(session)

    @staticmethod
    def _check_vocabulary(lm: LoadedModel, options: DraftOptions) -> None:
        target = f"target model {options.target_name}" if options.target_name else "the target"
        if options.target_fingerprint and lm.fingerprint != options.target_fingerprint:
            raise FailedPrecondition(
                f"draft model {lm.name} has a different vocabulary from {target} "
                f"(fingerprints {lm.fingerprint} vs {options.target_fingerprint}); "
                "a draft must share the target's tokenizer"
            )
        if options.target_vocab_size and lm.vocab_size != options.target_vocab_size:
            raise FailedPrecondition(
                f"draft model {lm.name} has {lm.vocab_size} output tokens (vocabulary) but {target} has "
                f"{options.target_vocab_size}"
            )


@dataclass
class LoadedHead:
    """A trained head shared by all sessions that draft with it."""

    folder: Path
    module: torch.nn.Module
    config: HeadConfig
    embedding: torch.Tensor | None = None  # EAGLE: the target's token embedding [V, H], loaded on first use

    def check_target(self, spec: DraftSpec, options: DraftOptions) -> None:
        """Refuse a session whose target is not the one the head was trained for (FAILED_PRECONDITION)."""
        t = self.config.target
        wrong = []
        if options.target_weights_fingerprint and options.target_weights_fingerprint != t.weights_fingerprint:
            wrong.append(f"weights fingerprint {options.target_weights_fingerprint} vs {t.weights_fingerprint}")
        if options.target_fingerprint and options.target_fingerprint != t.vocab_fingerprint:
            wrong.append(f"vocabulary fingerprint {options.target_fingerprint} vs {t.vocab_fingerprint}")
        if options.target_hidden_size and options.target_hidden_size != t.hidden_size:
            wrong.append(f"hidden size {options.target_hidden_size} vs {t.hidden_size}")
        if options.target_vocab_size and options.target_vocab_size != t.vocab_size:
            wrong.append(f"vocabulary size {options.target_vocab_size} vs {t.vocab_size}")
        same_name = canonical_name(options.target_name) == canonical_name(t.name)
        if not options.target_weights_fingerprint and options.target_name and not same_name:
            wrong.append(f"name {options.target_name!r} vs {t.name!r}")  # the weights are unknown: trust names
        if wrong:
            target = options.target_name or "this session's target"
            raise FailedPrecondition(
                f"draft {spec.name} is a {self.config.method} head trained for {t.name}, not for {target} "
                f"({'; '.join(wrong)}); train one for it with: specdec train-draft --target {target} "
                f"--method {self.config.method} --out DIR"
            )
