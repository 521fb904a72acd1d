"""Workload suites shipped with specdec (`bench/suites/NAME.jsonl`) and user prompt files in the same format:
one JSON object per line, {"id": "...", "messages": [{"role": "user", "content": "..."}]} or
{"id": "...", "prompt": "raw text"}."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

SUITES_DIR = Path(__file__).parent / "suites"
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Prompt:
    """One benchmark prompt: chat messages (sent through the target's chat template) or raw text."""

    id: str
    suite: str
    messages: tuple[tuple[str, str], ...] = field(default_factory=tuple)  # (role, content)
    prompt: str = ""


def suite_names() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.jsonl"))


def load_suite(name: str) -> list[Prompt]:
    path = SUITES_DIR / f"{name}.jsonl"
    if not path.is_file():
        raise ValueError(f"unknown suite {name!r}; the suites are {', '.join(suite_names())}")
    return load_prompts(path, suite=name)


def load_prompts(path: Path, suite: str = "") -> list[Prompt]:
    """Read a JSONL prompt file; every problem is reported with its line number."""
    prompts: list[Prompt] = []
    seen: set[str] = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not JSON: {exc.msg}") from None
        prompts.append(_prompt(record, where, suite or path.stem))
        if prompts[-1].id in seen:
            raise ValueError(f"{where}: duplicate id {prompts[-1].id!r}")
        seen.add(prompts[-1].id)
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def _prompt(record: object, where: str, suite: str) -> Prompt:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: each line must be a JSON object")
    prompt_id = str(record.get("id", "")) or where.rsplit(":", 1)[-1]
    if ("messages" in record) == ("prompt" in record):
        raise ValueError(f"{where}: set exactly one of `messages` and `prompt`")
    if "prompt" in record:
        if not isinstance(record["prompt"], str) or not record["prompt"]:
            raise ValueError(f"{where}: `prompt` must be a non-empty string")
        return Prompt(prompt_id, suite, prompt=record["prompt"])
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: `messages` must be a non-empty list")
    pairs = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"{where}: messages[{i}] needs a role ({', '.join(ROLES)}) and a string content")
        pairs.append((m["role"], m["content"]))
    return Prompt(prompt_id, suite, messages=tuple(pairs))
