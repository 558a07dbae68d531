"""Health, reflection and readiness of an in-process server."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from kvs._gen import kvs_pb2 as pb
from tests.integration.conftest import Running, start_server


def health_of(channel: grpc.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    status: int = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
    return status


def test_health_says_serving(kvs: Running) -> None:
    assert health_of(kvs.channel) == health_pb2.HealthCheckResponse.SERVING
    assert health_of(kvs.channel, "project.KeyValueStore") == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_service_and_a_client_can_call_it_without_the_proto(kvs: Running) -> None:
    database = ProtoReflectionDescriptorDatabase(kvs.channel)
    assert "project.KeyValueStore" in database.get_services()
    pool = descriptor_pool.DescriptorPool(database)
    service = pool.FindServiceByName("project.KeyValueStore")
    assert [m.name for m in service.methods] == [
        "Get", "GetRange", "GetAll", "Put", "PutAll", "Del", "DelRange", "DelAll", "Trim",
    ]  # fmt: skip

    def call(method: str, **fields: object) -> object:
        descriptor = service.methods_by_name[method]
        request_class = message_factory.GetMessageClass(descriptor.input_type)
        reply_class = message_factory.GetMessageClass(descriptor.output_type)
        stub = kvs.channel.unary_unary(
            f"/project.KeyValueStore/{method}",
            request_serializer=request_class.SerializeToString,
            response_deserializer=reply_class.FromString,
        )
        return stub(request_class(**fields), timeout=5)

    written = call("Put", key="dyn", val="amic")
    assert (written.key, written.ver) == ("dyn", 1000)  # type: ignore[attr-defined]
    got = call("Get", key="dyn")
    assert (got.key, got.val, got.ver) == ("dyn", "amic", 1000)  # type: ignore[attr-defined]


def test_a_server_not_yet_serving_says_so_and_holds_calls(loop: asyncio.AbstractEventLoop) -> None:
    running = start_server(loop, serving=False)
    try:
        assert health_of(running.channel) == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as raised:
            running.stub.Get(pb.KeyRequest(key="k"), timeout=0.3)
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        future = running.stub.Put.future(pb.KeyValueRequest(key="k", val="v"), timeout=10)
        running.run(running.server.serving())
        assert future.result().ver == 1000
        assert health_of(running.channel) == health_pb2.HealthCheckResponse.SERVING
    finally:
        running.channel.close()
        running.run(running.server.stop(0))
