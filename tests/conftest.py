"""Fixtures: tiny random-init models built from a config (fast), real gRPC servers on port 0."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import torch

from tests.helpers import TinySpec, build_tiny_model, build_tiny_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRITON_INTERPRET", "1")  # Triton kernels run on CPU tensors through the interpreter
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session")
def tokenizer_dir(tiny_dir: Path) -> Path:
    return build_tiny_tokenizer(tiny_dir / "tokenizer", vocab_size=320)


@pytest.fixture(scope="session")
def other_tokenizer_dir(tiny_dir: Path) -> Path:
    return build_tiny_tokenizer(tiny_dir / "other-tokenizer", vocab_size=300)


@pytest.fixture(scope="session")
def tiny_target(tiny_dir: Path, tokenizer_dir: Path) -> Path:
    return build_tiny_model(tiny_dir / "target", tokenizer_dir, TinySpec(seed=0))


@pytest.fixture(scope="session")
def tiny_unrelated(tiny_dir: Path, tokenizer_dir: Path) -> Path:
    """Same tokenizer, different random weights: a draft that (almost) never agrees."""
    return build_tiny_model(tiny_dir / "unrelated", tokenizer_dir, TinySpec(seed=1))


@pytest.fixture(scope="session")
def tiny_other_vocab(tiny_dir: Path, other_tokenizer_dir: Path) -> Path:
    return build_tiny_model(tiny_dir / "other-vocab", other_tokenizer_dir, TinySpec(seed=2))


@pytest.fixture(scope="session")
def small_vocab_target(tiny_dir: Path, tokenizer_dir: Path) -> Path:
    """16 output tokens: distributions small enough to estimate from samples."""
    return build_tiny_model(tiny_dir / "v16-target", tokenizer_dir, TinySpec(seed=10, vocab_size=16, init_std=0.6))


@pytest.fixture(scope="session")
def small_vocab_draft(tiny_dir: Path, tokenizer_dir: Path) -> Path:
    return build_tiny_model(tiny_dir / "v16-draft", tokenizer_dir, TinySpec(seed=11, vocab_size=16, init_std=0.6))


@pytest.fixture
async def tiny_stack(tiny_target: Path) -> AsyncIterator[object]:
    """The three services on loopback ports, the tiny target as the model."""
    from specdec.orchestrator.embedded import EmbeddedStack

    async with EmbeddedStack(target=str(tiny_target), device="cpu") as stack:
        yield stack
