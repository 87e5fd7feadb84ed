"""The client against the service in-process (FastAPI's TestClient as its httpx client)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from squeeze.client import Client

# the API tests' service and files, shared here
from tests.api.conftest import (  # noqa: F401
    ADMIN_TOKEN,
    Api,
    api,
    assets,
    dataset_file,
    make_api,
    model_file,
)


def client_for(service: Api, token: str) -> Client:
    """A squeeze Client sending `token` through a TestClient of the service's app."""
    return Client("http://testserver", api_key=token, http=TestClient(service.client.app))


@pytest.fixture
def admin(api: Api) -> Iterator[Client]:  # noqa: F811
    with client_for(api, ADMIN_TOKEN) as client:
        yield client


@pytest.fixture
def client(api: Api, admin: Client) -> Iterator[Client]:  # noqa: F811
    """A tenant's client (its own key)."""
    tenant = admin.create_tenant("client-tests")
    key = admin.create_tenant_key(tenant.id)
    with client_for(api, key.token) as tenant_client:
        yield tenant_client
