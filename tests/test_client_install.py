"""The client installs alone: the `squeeze-client` wheel (clients/python) in a fresh venv
pulls httpx, pydantic and PyYAML, never the service's libraries, and its `squeeze`
command and `squeeze.Client` work there (issue 19).

Marked `install`: it builds a wheel and lets pip fetch the client's few dependencies
(about 20 s here)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# what the client must never pull (distribution names as pip lists them, lower case)
SERVICE_LIBRARIES = {
    "torch",
    "celery",
    "psycopg",
    "psycopg-binary",
    "onnxruntime",
    "onnx",
    "sqlalchemy",
    "numpy",
    "fastapi",
    "uvicorn",
    "redis",
    "openvino",
}


def run(*command: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, f"{command}: {done.stdout}\n{done.stderr}"
    return done.stdout


def installed_in(python: Path) -> set[str]:
    """The distributions in a venv, named as in their metadata (lower case, dashes)."""
    listed = json.loads(run(python, "-m", "pip", "list", "--format=json"))
    return {entry["name"].lower().replace("_", "-") for entry in listed}


def size_of(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


@pytest.mark.install
@pytest.mark.timeout(240)
def test_the_client_wheel_installs_alone_in_a_fresh_venv(tmp_path: Path) -> None:
    # built from a copy of the two folders it reads, so the work tree gets no build files
    source = tmp_path / "source"
    shutil.copytree(ROOT / "clients" / "python", source / "clients" / "python")
    shutil.copytree(
        ROOT / "squeeze", source / "squeeze", ignore=shutil.ignore_patterns("__pycache__")
    )
    wheels = tmp_path / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels,
        source / "clients" / "python")  # fmt: skip
    (wheel,) = wheels.glob("squeeze_client-*.whl")

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    baseline = installed_in(python)
    run(python, "-m", "pip", "install", "-q", wheel)

    help_text = run(venv / "bin" / "squeeze", "--help")
    assert "usage: squeeze" in help_text and "quantize" in help_text and "serve" in help_text
    # `serve` needs the service, which this install lacks: it says what to install
    serve = subprocess.run(
        [venv / "bin" / "squeeze", "serve", "--data-dir", tmp_path / "data"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert serve.returncode == 2 and "pip install 'squeeze[server]'" in serve.stderr, serve
    assert not (tmp_path / "data").exists()
    loaded = run(
        python,
        "-c",
        "import sys, squeeze; squeeze.Client; import squeeze.cli; "
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))",
    ).split()
    assert not {"numpy", "onnx", "torch", "sqlalchemy", "celery"} & set(loaded), loaded

    installed = installed_in(python)
    assert not SERVICE_LIBRARIES & installed, installed
    added = installed - baseline - {"squeeze-client"}
    # the wheel's declared dependencies and theirs (httpx: anyio, httpcore, h11, idna,
    # certifi; pydantic: pydantic-core, annotated-types, typing-*), nothing else
    assert {"httpx", "pydantic", "pyyaml"} <= added, added
    assert len(added) <= 14, added
    site = next((venv / "lib").glob("python3*/site-packages"))
    # what the install added: all but a fresh venv's own pip and setuptools
    venv_own = ("pip", "setuptools", "_distutils_hack", "pkg_resources", "distutils-precedence")
    added_size = sum(
        size_of(entry) if entry.is_dir() else entry.stat().st_size
        for entry in site.iterdir()
        if not entry.name.startswith(venv_own)
    )
    print(f"\nfresh venv: {len(installed)} packages ({len(added)} added: {sorted(added)}), "
          f"{size_of(venv) / 2**20:.1f} MiB in all, "
          f"of which the client and its dependencies {added_size / 2**20:.1f} MiB")  # fmt: skip


def test_the_client_distribution_declares_only_the_client_libraries() -> None:
    client = tomllib.loads((ROOT / "clients" / "python" / "pyproject.toml").read_text())
    service = tomllib.loads((ROOT / "pyproject.toml").read_text())
    names = {dep.split(">")[0].split("=")[0].split("[")[0].lower()
             for dep in client["project"]["dependencies"]}  # fmt: skip
    assert names == {"httpx", "pydantic", "pyyaml"}
    # the service distribution's base is the client's; its libraries are extras
    assert service["project"]["dependencies"] == client["project"]["dependencies"]
    extras = service["project"]["optional-dependencies"]
    assert {"server", "gpu", "openvino", "dev"} <= set(extras)
    server = " ".join(extras["server"])
    for library in ("torch", "celery", "psycopg", "onnxruntime", "sqlalchemy", "fastapi"):
        assert library in server
    assert client["project"]["scripts"] == service["project"]["scripts"]
