"""End to end on the real default model (SmolLM2-135M-Instruct) through the CLI's embedded services."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import assert_greedy_identical, hf_greedy, load

pytestmark = pytest.mark.real_model

PROMPTS = {
    "code-edit": (
        "Add type hints to this function and keep everything else the same:\n\n"
        "def mean(values):\n    total = 0\n    for value in values:\n        total += value\n"
        "    return total / len(values)\n"
    ),
    "summarise": (
        "Summarise in two sentences: The city council voted on Tuesday to extend the bike lane network by "
        "twelve kilometres. The new lanes will connect the train station with the university campus and the "
        "hospital. Construction starts in March and should end before the summer holidays."
    ),
}
MAX_NEW = 64


@pytest.fixture(scope="module")
def default_model():
    return load("")


@pytest.mark.parametrize(
    ("name", "k", "controller"),
    [("code-edit", 4, "fixed"), ("code-edit", 8, "fixed"), ("summarise", 4, "fixed"), ("summarise", 8, "fixed"),
     ("code-edit", 4, "")],  # "": the server's default, the cost controller, starting cold
)  # fmt: skip
def test_cli_greedy_identity_on_the_default_model(default_model, name: str, k: int, controller: str) -> None:
    chosen = ["--k-controller", controller] if controller else []
    out = subprocess.run(
        [sys.executable, "-m", "specdec.orchestrator.cli", "generate", "--chat", "--prompt", PROMPTS[name],
         "--max-new-tokens", str(MAX_NEW), "--draft", "ngram", "--k", str(k), *chosen, "--json"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    prompt_ids = result["prompt_token_ids"]
    reference = hf_greedy(default_model, prompt_ids, MAX_NEW)
    assert_greedy_identical(default_model, prompt_ids, result["token_ids"], reference)
    assert len(result["token_ids"]) >= min(MAX_NEW, len(reference))
    assert result["stats"]["accepted_tokens"] > 0, result["stats"]
    assert result["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
