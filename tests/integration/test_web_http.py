"""The web view's HTTP side (kvs/admin/web.py) in process: the page, its files, and what it refuses."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from kvs.admin.web import Monitor, allowed_hosts, make_app


def with_client(
    test: Callable[[TestClient[web.Request, web.Application]], Awaitable[None]], listen: str = "127.0.0.1"
) -> None:
    async def run() -> None:
        client: TestClient[web.Request, web.Application] = TestClient(
            TestServer(make_app(Monitor([]), listen))
        )
        await client.start_server()
        try:
            await test(client)
        finally:
            await client.close()

    asyncio.run(run())


def test_the_page_and_its_files_are_served_from_the_package() -> None:
    async def test(client: TestClient[web.Request, web.Application]) -> None:
        page = await client.get("/")
        assert page.status == 200
        assert "text/html" in page.headers["Content-Type"]
        html = await page.text()
        assert 'src="static/app.js"' in html
        assert "http" not in html.replace("http-equiv", "")  # nothing fetched from elsewhere
        for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
            served = await client.get(f"/static/{name}")
            assert served.status == 200
            assert kind in served.headers["Content-Type"]
        assert (await client.get("/static/web.py")).status == 404
        assert (await client.get("/static/..%2Fweb.py")).status == 404

    with_client(test)


def test_a_request_under_another_host_name_is_refused() -> None:
    """DNS rebinding: a page of another site that resolves its name to 127.0.0.1 must not read or write."""

    async def test(client: TestClient[web.Request, web.Application]) -> None:
        port = client.port
        assert (await client.get("/", headers={"Host": f"localhost:{port}"})).status == 200
        assert (await client.get("/", headers={"Host": f"[::1]:{port}"})).status == 200
        assert (await client.get("/", headers={"Host": f"evil.example:{port}"})).status == 403
        events = await client.get("/events", headers={"Host": f"evil.example:{port}"})
        assert events.status == 403
        write = await client.post(
            "/api/kv", json={"op": "put", "server": "x", "key": "k"}, headers={"Host": f"evil.example:{port}"}
        )
        assert write.status == 403

    with_client(test)


def test_writes_take_json_only_and_name_a_followed_server() -> None:
    async def test(client: TestClient[web.Request, web.Application]) -> None:
        # A form posted from another site cannot send JSON without the browser asking first.
        form = await client.post("/api/kv", data={"op": "put", "server": "x", "key": "k"})
        assert form.status == 415
        bad = await client.post("/api/kv", json={"op": "put"})
        assert bad.status == 400
        unknown = await client.post("/api/kv", json={"op": "put", "server": "localhost:1", "key": "k"})
        assert await unknown.json() == {"ok": False, "text": "localhost:1 is not a server this page follows"}

    with_client(test)


def test_the_events_stream_starts_with_a_snapshot() -> None:
    async def test(client: TestClient[web.Request, web.Application]) -> None:
        response = await client.get("/events")
        assert response.headers["Content-Type"] == "text/event-stream"
        first = await response.content.readuntil(b"\n\n")
        assert first.startswith(b"retry: 1000\nevent: hello\ndata: {")
        response.close()

    with_client(test)


def test_listening_on_every_interface_takes_any_host_name() -> None:
    assert allowed_hosts("0.0.0.0") is None
    assert allowed_hosts("::") is None
    assert allowed_hosts("10.1.2.3") == {"localhost", "127.0.0.1", "::1", "10.1.2.3"}
    assert allowed_hosts("::1") == {"localhost", "127.0.0.1", "::1"}
