"""What a `specdec bench` run measures: the sweep (suites or a prompt file; drafts x K x policies x K
controllers), the target-only baseline every row is compared with, and the HF peers beside them."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from pathlib import Path

from specdec.bench.suites import Prompt, load_prompts, load_suite
from specdec.draftspec import parse_draft
from specdec.policies import LOSSY_POLICIES

BASELINE = "none"  # the target-only row, through the same services
HF = "hf"  # HF `generate` in-process on the same model object
HF_ASSISTED = "hf-assisted"  # HF assisted generation with the equivalent draft (prompt lookup or assistant model)
REMOTE = "remote"  # an OpenAI-compatible server as it is configured (its speculative settings are its own)


@dataclass(frozen=True)
class Method:
    """One way to generate. `kind`: "specdec" (through the services), "hf", "hf-assisted" or "remote"."""

    kind: str
    draft: str = BASELINE
    k: int = 0
    policy: str = ""
    controller: str = ""
    tree_nodes: int = 0  # token trees of up to this many tokens (GenerateRequest.tree_nodes); 0: chains

    @property
    def label(self) -> str:
        if self.kind in (HF, REMOTE):
            return self.kind
        if self.kind == HF_ASSISTED:
            return f"{HF_ASSISTED} {self.draft} k={self.k}"
        if self.draft == BASELINE:
            return BASELINE
        parts = [self.draft, f"k={self.k}"]
        if self.tree_nodes:
            parts.append(f"tree={self.tree_nodes}")
        if self.controller:
            parts.append(self.controller)
        if self.policy:
            parts.append(self.policy)
        return " ".join(parts)


@dataclass
class SweepConfig:
    suites: list[str] = field(default_factory=lambda: ["chat", "code", "summarise"])
    prompts_file: Path | None = None  # JSONL; replaces the suites
    prompts_per_suite: int = 3  # 0: all
    drafts: list[str] = field(default_factory=lambda: ["ngram"])
    ks: list[int] = field(default_factory=lambda: [4])
    policies: list[str] = field(default_factory=lambda: [""])  # "": by temperature
    controllers: list[str] = field(default_factory=lambda: ["fixed"])  # a sweep over K means fixed K
    tree_nodes: list[int] = field(default_factory=lambda: [0])  # 0: chains
    draft_min_confidence: float = 0.0  # GenerateRequest.draft_min_confidence for every specdec method
    max_new_tokens: int = 64
    iterations: int = 1
    warmup: int = 1
    temperature: float = 0.0
    seed: int = 0
    hf_peers: bool = True  # HF generate and, for n-gram drafts, HF prompt-lookup decoding
    remote_as_is: bool = False  # an OpenAI-compatible server benchmarked as configured: one "remote" method

    def validate(self) -> None:
        if self.iterations < 1 or self.warmup < 0 or self.max_new_tokens < 1 or self.prompts_per_suite < 0:
            raise ValueError("iterations and max_new_tokens must be >= 1; warmup and prompts per suite >= 0")
        if any(k < 0 for k in self.ks) or not self.ks or not self.drafts:
            raise ValueError("give at least one draft and K >= 0")
        if not self.tree_nodes or any(n < 0 for n in self.tree_nodes):
            raise ValueError("tree sizes must be >= 0 (0: chains)")
        if any(self.tree_nodes) and any(policy in LOSSY_POLICIES for policy in self.policies):
            raise ValueError("token trees are verified losslessly: --tree-nodes needs the exact or rejection policy")

    def to_dict(self) -> dict[str, object]:
        """JSON-ready (paths as strings)."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}

    def prompts(self) -> list[Prompt]:
        if self.prompts_file is not None:
            return load_prompts(self.prompts_file)
        chosen: list[Prompt] = []
        for suite in self.suites:
            prompts = load_suite(suite)
            chosen += prompts[: self.prompts_per_suite] if self.prompts_per_suite else prompts
        return chosen

    def methods(self) -> list[Method]:
        """The baseline first, the HF peers, then every specdec combination."""
        if self.remote_as_is:
            return [Method(REMOTE)] + ([Method(HF)] if self.hf_peers and self.temperature == 0 else [])
        methods = [Method("specdec")]
        greedy = self.temperature == 0
        if self.hf_peers and greedy:
            methods.append(Method(HF))
            equivalent = [d for d in self.drafts if d == "ngram" or d.startswith("model:")]
            methods += [Method(HF_ASSISTED, d, k) for d in equivalent for k in self.ks if k > 0]
        grid = itertools.product(self.drafts, self.ks, self.policies, self.controllers, self.tree_nodes)
        for draft, k, policy, controller, tree_nodes in grid:
            if draft == BASELINE:
                continue
            # a draft that builds no trees answers a tree request with its chain: one chain row
            method = Method(
                "specdec", draft, k, policy, controller, tree_nodes if parse_draft(draft).builds_trees else 0
            )
            if method not in methods:
                methods.append(method)
        return methods
