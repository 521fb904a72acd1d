"""The orchestrator's spans: the request span (GenAI semantic-convention attributes), one client span per session
stream (its W3C context goes to the verifier / draft service as gRPC metadata), one span per speculative step.

Off by default: the tracer is then OTel's no-op tracer and every function here returns after one check, so the
speculative loop pays nothing measurable.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind

from specdec import tracing

if TYPE_CHECKING:
    from specdec.orchestrator.core import GenerationRequest, GenerationResult
    from specdec.orchestrator.k_control import StepObservation
    from specdec.orchestrator.loop import SampleSpec

STEP_SPAN = "specdec.step"
Metadata = tuple[tuple[str, str], ...] | None


def _tracer() -> trace.Tracer:
    return tracing.tracer(tracing.ORCHESTRATOR)


@contextmanager
def request_span(request: GenerationRequest) -> Iterator[Span]:
    """The request's span, current for the duration (its samples' tasks inherit it), child of the client's
    trace context when the request carried one. Named `{operation} {model}` once the model is known."""
    operation = "chat" if request.messages else "text_completion"
    parent = request.trace_parent if isinstance(request.trace_parent, Context) else None
    attributes: dict[str, Any] = {"gen_ai.operation.name": operation, "gen_ai.provider.name": "specdec"}
    if request.model:
        attributes["gen_ai.request.model"] = request.model
    with _tracer().start_as_current_span(
        operation, context=parent, kind=SpanKind.SERVER, attributes=attributes, record_exception=False
    ) as span:
        try:
            yield span
        except BaseException as exc:
            tracing.record_error(span, exc)
            raise


def describe_request(span: Span, request: GenerationRequest, specs: list[SampleSpec], model: str) -> None:
    """What was asked, once the request is validated: GenAI request attributes and our speculative settings."""
    if not span.is_recording():
        return
    first = specs[0]
    span.update_name(f"{'chat' if request.messages else 'text_completion'} {model}")
    attributes: dict[str, Any] = {
        "gen_ai.request.model": request.model or model,
        "gen_ai.request.max_tokens": first.max_new_tokens,
        "gen_ai.request.temperature": first.sampling.temperature,
        "gen_ai.request.choice.count": len(specs),
        "gen_ai.usage.input_tokens": len(first.prompt_token_ids),
        "specdec.draft": first.draft.name,
        "specdec.k": first.k,
        "specdec.k_controller": first.k_controller,
        "specdec.policy": first.policy,
    }
    if first.sampling.top_p:
        attributes["gen_ai.request.top_p"] = first.sampling.top_p
    if first.sampling.top_k:
        attributes["gen_ai.request.top_k"] = first.sampling.top_k
    if request.seed is not None:
        attributes["gen_ai.request.seed"] = request.seed
    if request.stop:
        attributes["gen_ai.request.stop_sequences"] = list(request.stop)
    if tracing.content_enabled():
        attributes["specdec.prompt"] = json.dumps(request.messages) if request.messages else request.prompt
    span.set_attributes(attributes)


def describe_result(span: Span, result: GenerationResult) -> None:
    """What came out: GenAI usage and response attributes, acceptance and the time split."""
    if not span.is_recording():
        return
    s = result.stats
    attributes: dict[str, Any] = {
        "gen_ai.response.model": result.model,
        "gen_ai.usage.output_tokens": result.generated_tokens,
        "gen_ai.response.finish_reasons": [sample.finish_reason for sample in result.samples],
        "specdec.steps": s.steps,
        "specdec.draft_tokens": s.draft_tokens,
        "specdec.accepted_tokens": s.accepted_tokens,
        "specdec.acceptance_rate": s.acceptance_rate,
        "specdec.mean_accepted_length": s.mean_accepted_length,
        "specdec.draft_ms": s.draft_ms,
        "specdec.verify_ms": s.verify_ms,
        "specdec.network_ms": s.network_ms,
        "specdec.prefill_ms": s.prefill_ms,
        "specdec.wall_ms": result.wall_ms,
        "specdec.time_to_first_token_ms": result.time_to_first_token_ms,
    }
    if s.draft_failure:
        attributes["specdec.draft_failure"] = s.draft_failure
    if tracing.content_enabled():
        attributes["specdec.completions"] = [sample.text for sample in result.samples]
    span.set_attributes(attributes)


@contextmanager
def session_span(service: str, sample: int, enabled: bool = True) -> Iterator[Metadata]:
    """The client span of one session stream (`service`: "Verifier" or "Draft"), child of the current (request)
    span; yields the gRPC metadata that makes it the parent of the service's server span (None when untraced)."""
    parent = trace.get_current_span()
    if not enabled or not parent.is_recording():
        yield None
        return
    span = _tracer().start_span(
        f"specdec.v1.{service}/Session",
        kind=SpanKind.CLIENT,
        attributes={
            "rpc.system": "grpc",
            "rpc.service": f"specdec.v1.{service}",
            "rpc.method": "Session",
            "specdec.sample": sample,
        },
        record_exception=False,
    )
    try:
        yield tracing.outgoing_metadata(span)
    except BaseException as exc:
        tracing.record_error(span, exc)
        raise
    finally:
        span.end()


def step_started() -> int:
    """The clock a step span starts at (it is recorded after the step, with what the step measured)."""
    return time.time_ns()


def record_step(spec: SampleSpec, step: int, observation: StepObservation, committed: int, started_ns: int) -> None:
    """One speculative step as a child of the request span: K, what was proposed, verified, accepted and
    committed, and where its time went. Created after the fact (explicit start and end times), so an untraced
    request pays one `is_recording()` check per step."""
    parent = trace.get_current_span()
    if not parent.is_recording():
        return
    o = observation
    span = _tracer().start_span(
        STEP_SPAN,
        context=tracing.child_of(parent),
        start_time=started_ns,
        attributes={
            "specdec.sample": spec.index,
            "specdec.step": step,
            "specdec.position": o.position,
            "specdec.k": o.k,
            "specdec.proposed": o.proposed,
            "specdec.drafted": o.drafted,
            "specdec.accepted": o.accepted,
            "specdec.committed": committed,
            "specdec.draft_ms": o.draft_ms,
            "specdec.verify_ms": o.verify_ms,
            "specdec.network_ms": o.draft_network_ms + o.verify_network_ms,
            "specdec.draft_network_ms": o.draft_network_ms,
            "specdec.verify_network_ms": o.verify_network_ms,
            "specdec.policy": spec.policy,
            "specdec.draft": spec.draft.name,
            "specdec.draft_method": spec.draft.kind,
        },
    )
    span.end()
