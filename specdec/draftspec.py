"""The `--draft` syntax, parsed once for the CLI, the orchestrator and the draft service."""

from __future__ import annotations

from dataclasses import dataclass

from specdec.errors import InvalidArgument

DEFAULT_NGRAM_MAX = 3
SYNTAX = (
    "none, ngram, ngram:MAX (1-8), suffix, quantized[:ID_OR_PATH], model:ID_OR_PATH, eagle[:DIR] or medusa[:DIR] "
    "(a trained head; no DIR: the shipped one for the default target)"
)
HEAD_KINDS = ("eagle", "medusa")


@dataclass(frozen=True)
class DraftSpec:
    kind: str  # "none" | "ngram" | "suffix" | "quantized" | "model" | "eagle" | "medusa"
    # kind "model": an HF id or a path; "quantized": the same, empty for the target itself; "eagle", "medusa": the
    # trained head's folder, empty for the shipped head of the default target
    model: str = ""
    ngram_max: int = DEFAULT_NGRAM_MAX  # for kind == "ngram": longest suffix n-gram to look up

    @property
    def uses_model(self) -> bool:
        """A neural draft: it costs a forward per token and, when sampling, sends q."""
        return self.kind in ("model", "quantized", *HEAD_KINDS)

    @property
    def needs_hidden_states(self) -> bool:
        """A trained head drafts from the target's final hidden states: the verifier must return them."""
        return self.kind in HEAD_KINDS

    @property
    def builds_trees(self) -> bool:
        """EAGLE answers a tree request with a token tree (draft_service: EagleDrafter.propose_tree); every other
        draft with a chain."""
        return self.kind == "eagle"

    @property
    def name(self) -> str:
        if self.kind == "model" or (self.kind in ("quantized", *HEAD_KINDS) and self.model):
            return f"{self.kind}:{self.model}"
        if self.kind == "ngram" and self.ngram_max != DEFAULT_NGRAM_MAX:
            return f"ngram:{self.ngram_max}"
        return self.kind


def parse_draft(text: str) -> DraftSpec:
    kind, _, arg = text.strip().partition(":")
    if kind in ("none", "suffix") and not arg:
        return DraftSpec(kind)
    if kind == "ngram":
        if not arg:
            return DraftSpec("ngram")
        if arg.isdigit() and 1 <= int(arg) <= 8:
            return DraftSpec("ngram", ngram_max=int(arg))
    if kind == "model" and arg:
        return DraftSpec("model", model=arg)
    if kind in ("quantized", *HEAD_KINDS) and (not arg or arg.strip()):
        return DraftSpec(kind, model=arg)
    raise InvalidArgument(f"draft must be {SYNTAX}; got {text!r}")
