"""The draft service's core, free of gRPC: the loaded draft models and the sessions that use them."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from specdec.draft_service.drafts import Drafter, ModelDrafter, NgramDrafter, Proposal
from specdec.draft_service.suffix import SuffixCache, SuffixConfig, SuffixDrafter
from specdec.draftspec import DraftSpec, parse_draft
from specdec.errors import FailedPrecondition, InvalidArgument, OutOfRange
from specdec.limits import MAX_BLOCK_TOKENS, MAX_NGRAM_SEQUENCE
from specdec.modeling import LoadedModel, canonical_name, load_model, quantize_int8
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

    def propose(self, position: int, max_tokens: int, min_confidence: float = 0.0) -> Iterator[Proposal]:
        if not 1 <= max_tokens <= MAX_BLOCK_TOKENS:
            raise OutOfRange(f"propose.max_tokens must be in [1, {MAX_BLOCK_TOKENS}], got {max_tokens}")
        if not 0.0 <= min_confidence <= 1.0:  # NaN fails too
            raise OutOfRange(f"propose.min_confidence must be in [0, 1], got {min_confidence}")
        if position != len(self.committed):
            raise FailedPrecondition(
                f"propose position {position} does not match the committed length {len(self.committed)}"
            )
        return self.drafter.propose(self.committed, max_tokens, min_confidence)

    def commit(self, position: int, token_ids: list[int]) -> None:
        """Tokens committed from `position` on; anything the draft assumed after it is dropped."""
        if position > len(self.committed):
            raise FailedPrecondition(f"commit position {position} is past the committed length {len(self.committed)}")
        if not token_ids:
            raise InvalidArgument("commit.token_ids must contain at least one token")
        self._check_ids(token_ids, "commit.token_ids")
        self._check_length(position + len(token_ids), "commit.token_ids")
        del self.committed[position:]
        self.committed.extend(token_ids)


class DraftCore:
    """Draft models are loaded on first use (or preloaded) and shared by all sessions."""

    def __init__(self, device: str = "auto", dtype: str = "auto", suffix_config: SuffixConfig | None = None) -> None:
        self.device = device
        self.dtype = dtype
        self.suffix_config = suffix_config or SuffixConfig()
        self.suffix_caches: dict[str, SuffixCache] = {}  # by target vocabulary fingerprint
        self._models: dict[str, LoadedModel] = {}
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
