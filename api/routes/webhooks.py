"""Webhook secrets: each API key signs the webhooks of the jobs it submits."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from api.auth import CallerDep
from api.deps import SessionDep
from api.routes.docs import problems
from api.routes.tenants import key_audit
from api.schemas import WebhookSecretOut
from store import tenants

router = APIRouter(tags=["webhooks"], responses=problems(401))

KeyId = Annotated[str, Path(min_length=1, max_length=64)]


@router.post("/v1/api-keys/{key_id}/webhook-secret", status_code=201, responses=problems(404))
def rotate_webhook_secret(
    key_id: KeyId, caller: CallerDep, session: SessionDep
) -> WebhookSecretOut:
    """A new webhook secret for one of the tenant's keys (an admin: any key), shown once.
    Deliveries from now on, including retries of earlier ones, are signed with it."""
    row = tenants.rotate_webhook_secret(
        session, key_id, tenant_id=None if caller.is_admin else caller.tenant_id
    )
    key_audit(session, caller, "api_key.webhook_secret_rotated", row)
    return WebhookSecretOut(key_id=row.id, webhook_secret=row.webhook_secret)
