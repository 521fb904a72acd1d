"""Saving and loading trained heads: `model.safetensors` (float weights in fp16, the draft vocabulary's ids as
int64) and `config.json`, which names the target the head was trained for (its name, vocabulary fingerprint,
a fingerprint of its weights, hidden and vocabulary sizes), the architecture, and how it was trained."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from specdec import cpu_linear
from specdec.draft_service.heads.eagle import EagleHead
from specdec.draft_service.heads.layers import LayerShape
from specdec.draft_service.heads.medusa import MedusaHead
from specdec.errors import FailedPrecondition

FORMAT = "specdec-draft-head"
METHODS = ("eagle", "medusa")
DEFAULT_HEADS_DIR = Path(__file__).resolve().parent / "default"


@dataclass(frozen=True)
class TargetIdentity:
    """What a head must match: a head drafts only for the exact target whose features it learned."""

    name: str
    vocab_fingerprint: str
    weights_fingerprint: str  # modeling.weights_fingerprint of the target's token embedding
    hidden_size: int
    vocab_size: int


@dataclass
class HeadConfig:
    method: str  # "eagle" | "medusa"
    target: TargetIdentity
    draft_vocab_size: int
    layer: LayerShape | None = None  # eagle
    medusa_heads: int = 0  # medusa
    training: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": 1, **asdict(self)}

    @staticmethod
    def from_json(raw: dict[str, Any], where: str) -> HeadConfig:
        if raw.get("format") != FORMAT or raw.get("method") not in METHODS:
            raise FailedPrecondition(f"{where} is not a draft head config (format {FORMAT}, method eagle or medusa)")
        try:
            return HeadConfig(
                method=raw["method"],
                target=TargetIdentity(**raw["target"]),
                draft_vocab_size=int(raw["draft_vocab_size"]),
                layer=LayerShape(**raw["layer"]) if raw.get("layer") else None,
                medusa_heads=int(raw.get("medusa_heads", 0)),
                training=dict(raw.get("training", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise FailedPrecondition(f"{where} is malformed: {exc}") from exc


def build_head(config: HeadConfig) -> EagleHead | MedusaHead:
    if config.method == "eagle":
        if config.layer is None:
            raise FailedPrecondition("an eagle head config needs `layer`")
        return EagleHead(config.layer, config.draft_vocab_size)
    return MedusaHead(config.target.hidden_size, config.medusa_heads, config.draft_vocab_size)


def save_head(head: EagleHead | MedusaHead, config: HeadConfig, out: Path) -> None:
    """Write `out/model.safetensors` (fp16 floats) and `out/config.json`."""
    out.mkdir(parents=True, exist_ok=True)
    tensors = {
        name: (t.detach().half() if t.is_floating_point() else t.detach()).contiguous().cpu()
        for name, t in head.state_dict().items()
    }
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": FORMAT, "method": config.method})
    (out / "config.json").write_text(json.dumps(config.to_json(), indent=2) + "\n")


def load_head(folder: Path) -> tuple[EagleHead | MedusaHead, HeadConfig]:
    """The head in float32 and eval mode, and its config."""
    config_path, weights_path = folder / "config.json", folder / "model.safetensors"
    if not config_path.is_file() or not weights_path.is_file():
        raise FailedPrecondition(f"{folder} holds no trained head (config.json and model.safetensors)")
    try:
        raw = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise FailedPrecondition(f"{config_path} is not JSON: {exc}") from exc
    config = HeadConfig.from_json(raw, str(config_path))
    head = build_head(config)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(weights_path)).items()}
    try:
        head.load_state_dict(state)
    except RuntimeError as exc:
        raise FailedPrecondition(f"{weights_path} does not match its config: {exc}") from exc
    if cpu_linear.wanted():
        cpu_linear.use_onednn_linears(head)  # a draft step is a few one-row products: see specdec/cpu_linear.py
    return head.eval(), config


def files_digest(folder: Path) -> str:
    """A short hash of a head's files, to tell two heads apart in caches and logs."""
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        h.update((folder / name).read_bytes())
    return h.hexdigest()[:16]
