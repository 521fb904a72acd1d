"""Health v1 and server reflection on all three servers; a client built from reflection alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from tests.helpers import load


async def test_all_servers_report_serving(tiny_stack) -> None:
    for server in tiny_stack.servers:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for name in ["", *server.service_names]:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=name))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_generate_through_reflection_only(tiny_stack, tiny_target: Path) -> None:
    """No generated stubs: descriptors come from the orchestrator's reflection service. The blocking client
    runs in a thread while the servers keep serving on this event loop."""
    ids = load(str(tiny_target)).tokenizer.encode("def add(a, b):")
    response = await asyncio.to_thread(generate_via_reflection, tiny_stack.address, ids)
    assert len(response.completions) == 1
    assert len(response.completions[0].token_ids) == 8
    assert response.stats.steps >= 1


def generate_via_reflection(address: str, ids: list[int]):
    with grpc.insecure_channel(address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = database.get_services()
        assert "specdec.v1.Orchestrator" in services
        assert "grpc.health.v1.Health" in services
        pool = descriptor_pool.DescriptorPool(database)
        method = pool.FindServiceByName("specdec.v1.Orchestrator").methods_by_name["Generate"]
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        call = channel.unary_unary(
            "/specdec.v1.Orchestrator/Generate",
            request_serializer=request_cls.SerializeToString,
            response_deserializer=response_cls.FromString,
        )
        return call(request_cls(prompt_token_ids=ids, max_new_tokens=8, draft="ngram"))


def services_via_reflection(port: int) -> set[str]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return set(ProtoReflectionDescriptorDatabase(channel).get_services())


async def test_every_server_lists_its_services_over_reflection(tiny_stack) -> None:
    expected = ["specdec.v1.Verifier", "specdec.v1.Draft", "specdec.v1.Orchestrator"]
    for server, name in zip(tiny_stack.servers, expected, strict=True):
        services = await asyncio.to_thread(services_via_reflection, server.port)
        assert {name, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services
