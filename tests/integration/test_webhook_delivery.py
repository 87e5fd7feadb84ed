"""A real worker process delivers a finished job's webhook (its parent's periodic pass),
on both profiles, signed with the submitting key's secret."""

from __future__ import annotations

import json

import pytest

from squeeze.webhooks import SIGNATURE_HEADER, verify_signature
from tests.conftest import DigitsFiles
from tests.integration.conftest import DeploymentFactory
from tests.services import wait_for
from tests.webhook_receiver import running_receiver

pytestmark = pytest.mark.slow


def test_a_worker_posts_the_signed_record_of_a_finished_job(
    deploy: DeploymentFactory, digits_files: DigitsFiles
) -> None:
    deployment = deploy(webhook_interval_s=0.2, webhook_allow_private_hosts=True)
    key_id = deployment.get("/v1/account")["key_id"]
    rotated = deployment.client.post(f"/v1/api-keys/{key_id}/webhook-secret")
    secret = rotated.json()["webhook_secret"]
    with running_receiver() as receiver:
        deployment.start_worker()
        spec = deployment.upload_digits(digits_files)
        job_url = deployment.submit({**spec, "webhook_url": receiver.url})
        job = deployment.wait_final(job_url)
        assert job["state"] == "succeeded", job["error"]
        assert wait_for(lambda: bool(receiver.received), 30), deployment.worker_logs()

    [delivery] = receiver.received
    verify_signature(secret, delivery.body, delivery.headers[SIGNATURE_HEADER])
    assert json.loads(delivery.body)["id"] == job["id"]
    assert json.loads(delivery.body)["state"] == "succeeded"
    kinds = [event["kind"] for event in deployment.get(f"{job_url}/events")["items"]]
    assert kinds[-1] == "webhook_delivered"
