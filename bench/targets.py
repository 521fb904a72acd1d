"""What a benchmark run talks to: specdec over gRPC (embedded or a running deployment), HF in-process, or any
OpenAI-compatible HTTP server. Each turns (method, prompt) into one timed `Run` with the client-side time to
first token, the time of the last token and, where the target reports it, the memory its services peaked at."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from transformers.generation.streamers import BaseStreamer

from specdec import compute
from specdec.bench.openai_target import OpenAITarget
from specdec.bench.peers import hf_generate
from specdec.bench.suites import Prompt
from specdec.bench.sweep import HF, HF_ASSISTED, Method, SweepConfig
from specdec.modeling import LoadedModel, chat_prompt_ids, load_model
from specdec.orchestrator.client import SpecdecClient
from specdec.usage import process_memory, reset_peak_rss
from specdec.wire import message_dict

MIB = 1024 * 1024


@dataclass
class Run:
    """One timed generation."""

    prompt_id: str
    suite: str
    method: str
    iteration: int  # < 0: warm-up
    tokens: int
    seconds: float  # client-side wall time
    token_ids: list[int]
    text: str = ""
    ttft_s: float | None = None  # client-side time to the first token
    last_token_s: float | None = None  # client-side time to the last token
    server_stats: dict[str, Any] = field(default_factory=dict)  # GenerationStats (specdec rows)
    memory: dict[str, dict[str, float]] = field(default_factory=dict)  # service -> peak figures in MiB

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def inter_token_latency_s(self) -> float | None:
        """Mean time between tokens after the first, as a client sees them (speculative steps deliver bursts)."""
        if self.ttft_s is None or self.last_token_s is None or self.tokens < 2:
            return None
        return (self.last_token_s - self.ttft_s) / (self.tokens - 1)


class Target(Protocol):
    async def run(self, method: Method, prompt: Prompt, cfg: SweepConfig, measure_memory: bool = True) -> Run:
        """One generation. `measure_memory`: reset and read the services' memory peaks around it (off in load
        mode, where concurrent requests share the peaks)."""
        ...


def prompt_ids(lm: LoadedModel, prompt: Prompt) -> list[int]:
    if prompt.prompt:
        return list(lm.tokenizer.encode(prompt.prompt))
    return chat_prompt_ids(lm.tokenizer, [{"role": r, "content": c} for r, c in prompt.messages])


class SpecdecTarget:
    """The orchestrator's streaming gRPC API. With a local model the prompt goes as token ids (the exact ids
    the HF peers get); without one, as text or chat messages for the deployment to tokenise."""

    def __init__(self, client: SpecdecClient, lm: LoadedModel | None) -> None:
        self.client = client
        self.lm = lm

    async def run(self, method: Method, prompt: Prompt, cfg: SweepConfig, measure_memory: bool = True) -> Run:
        request: dict[str, Any] = dict(
            max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=cfg.seed, draft=method.draft,
            k=method.k, policy=method.policy, k_controller=method.controller, tree_nodes=method.tree_nodes,
            draft_min_confidence=cfg.draft_min_confidence,
        )  # fmt: skip
        if self.lm is not None:
            request["prompt_token_ids"] = prompt_ids(self.lm, prompt)
        elif prompt.prompt:
            request["prompt"] = prompt.prompt
        else:
            request["messages"] = [{"role": r, "content": c} for r, c in prompt.messages]
        measured = await self.usage(reset=True) if measure_memory else {}
        start = time.perf_counter()
        first = last = None
        response = None
        async for message in self.client.generate_stream(**request):
            if message.WhichOneof("kind") == "delta":
                if message.delta.token_ids:
                    last = time.perf_counter() - start
                    first = last if first is None else first
            else:
                response = message.done
        seconds = time.perf_counter() - start
        if response is None:
            raise RuntimeError("the stream ended without its final response")
        if measured:
            measured = await self.usage(reset=False)
        completion = response.completions[0]
        return Run(
            "", prompt.suite, method.label, 0, len(completion.token_ids), seconds, list(completion.token_ids),
            completion.text, first, last, message_dict(response.stats), measured,
        )  # fmt: skip

    async def usage(self, reset: bool) -> dict[str, dict[str, float]]:
        """Peak memory per service (empty when the deployment does not answer GetUsage)."""
        try:
            usage = await self.client.usage(reset_peaks=reset)
        except Exception:  # an older or restricted deployment: memory is simply not reported
            return {}
        return {
            u.service: {"peak_rss_mib": u.peak_rss_bytes / MIB, "peak_kv_cache_mib": u.peak_kv_cache_bytes / MIB}
            for u in usage.services
        }


class TimingStreamer(BaseStreamer):
    """Records when HF `generate` emits each new token (its first `put` is the prompt)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.puts = 0
        self.first: float | None = None
        self.last: float | None = None

    def put(self, value: Any) -> None:
        self.puts += 1
        if self.puts > 1:
            self.last = time.perf_counter() - self.start
            self.first = self.last if self.first is None else self.first

    def end(self) -> None:
        pass


class HFTarget:
    """HF `generate` in-process on the same model object: plain, prompt lookup, or an assistant model."""

    def __init__(self, lm: LoadedModel) -> None:
        self.lm = lm
        self._assistants: dict[str, LoadedModel] = {}

    async def run(self, method: Method, prompt: Prompt, cfg: SweepConfig, measure_memory: bool = True) -> Run:
        ids = prompt_ids(self.lm, prompt)
        kwargs: dict[str, Any] = {}
        if method.kind == HF_ASSISTED and method.draft == "ngram":
            kwargs = {"prompt_lookup_num_tokens": method.k}
        elif method.kind == HF_ASSISTED:  # a model draft: HF's assistant model, K tokens per step as ours
            kwargs = {
                "assistant_model": (await compute.run(self._assistant, method.draft.removeprefix("model:"))).model,
                "num_assistant_tokens": method.k,
                "num_assistant_tokens_schedule": "constant",
                "assistant_confidence_threshold": 0.0,
            }
        elif method.kind != HF:
            raise ValueError(f"HFTarget cannot run {method.label}")
        if measure_memory:
            reset_peak_rss()
        streamer = TimingStreamer()

        def timed_generate() -> tuple[list[int], float]:
            start = time.perf_counter()
            return hf_generate(
                self.lm, ids, cfg.max_new_tokens, streamer=streamer, **kwargs
            ), time.perf_counter() - start

        tokens, seconds = await compute.run(timed_generate)  # the process's model thread: see specdec/compute.py
        memory = {"bench process": {"peak_rss_mib": process_memory()[1] / MIB}} if measure_memory else {}
        return Run(
            "", prompt.suite, method.label, 0, len(tokens), seconds, tokens, "", streamer.first, streamer.last,
            memory=memory,
        )  # fmt: skip

    def _assistant(self, name: str) -> LoadedModel:
        """The draft model for HF's assisted generation, loaded once, on the target's device and dtype."""
        if name not in self._assistants:
            lm = self.lm
            self._assistants[name] = load_model(name, str(lm.device), str(lm.dtype).removeprefix("torch."))
        return self._assistants[name]


class HttpTarget:
    """An OpenAI-compatible server. Token counts come from its `usage`; our own server also takes the
    speculative options as extra body fields, sent only when the sweep names them (`send_spec_fields`)."""

    def __init__(self, remote: OpenAITarget, send_spec_fields: bool) -> None:
        self.remote = remote
        self.send_spec_fields = send_spec_fields

    async def run(self, method: Method, prompt: Prompt, cfg: SweepConfig, measure_memory: bool = True) -> Run:
        extra: dict[str, Any] = {}
        if self.send_spec_fields:
            extra = {"draft": method.draft, "k": method.k, "policy": method.policy, "k_controller": method.controller,
                     "tree_nodes": method.tree_nodes or None}  # fmt: skip
            extra = {k: v for k, v in extra.items() if v not in ("", None)}
        messages = [{"role": r, "content": c} for r, c in prompt.messages] or None
        result = await self.remote.generate(
            prompt=prompt.prompt or None, messages=messages, max_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature, seed=cfg.seed, extra_body=extra,
        )  # fmt: skip
        if result.usage_missing or result.completion_tokens is None:
            raise ValueError(f"{self.remote.root} sent no `usage`: token counts would be guesses, so none are made")
        last = result.ttft_s + sum(result.itl_s) if result.ttft_s is not None else None
        server = dict(result.extra.get("specdec") or {})
        return Run(
            "", prompt.suite, method.label, 0, result.completion_tokens, result.seconds, [], result.text,
            result.ttft_s, last, server,
        )  # fmt: skip
