"""The Prefect server's basic auth, as the infra specs switch it on: with
``PREFECT_SERVER_API_AUTH_STRING`` set, the API refuses requests without the string (the
clients' ``PREFECT_API_AUTH_STRING``) and still answers the health probe."""

from __future__ import annotations

import asyncio
import base64

import httpx


def test_server_with_an_auth_string_refuses_clients_without_it(tmp_path):
    from prefect.server.api.server import create_api_app
    from prefect.settings import PREFECT_HOME, PREFECT_SERVER_API_AUTH_STRING, temporary_settings

    def basic(secret: str) -> dict[str, str]:
        return {"Authorization": f"Basic {base64.b64encode(secret.encode()).decode()}"}

    async def statuses() -> dict[str, int]:
        with temporary_settings(
            {PREFECT_SERVER_API_AUTH_STRING: "sln:s3cret", PREFECT_HOME: tmp_path}
        ):
            app = create_api_app(ignore_cache=True)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return {
                "probe": (await client.get("/health")).status_code,
                "none": (await client.get("/admin/version")).status_code,
                "wrong": (await client.get("/admin/version", headers=basic("sln:x"))).status_code,
                "right": (
                    await client.get("/admin/version", headers=basic("sln:s3cret"))
                ).status_code,
            }

    assert asyncio.run(statuses()) == {"probe": 200, "none": 401, "wrong": 401, "right": 200}


def test_prefect_client_sends_the_auth_string_from_its_setting():
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    with temporary_settings(
        {PREFECT_API_AUTH_STRING: "sln:s3cret", PREFECT_API_URL: "http://p/api"}
    ):
        client = get_client()
    header = client._client.headers["Authorization"]
    assert header == "Basic " + base64.b64encode(b"sln:s3cret").decode()
