"""The import rules of docs/architecture.md, checked by reading every module's imports."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT_PACKAGES = {"api", "worker", "core", "store", "squeeze", "service"}
# package -> project packages it must never import
FORBIDDEN = {
    "core": {"api", "worker", "store", "squeeze", "service"},
    "store": {"api", "worker"},
    "worker": {"api"},
    # the client installs alone: it never reaches into the service
    "squeeze": {"api", "worker", "store", "core", "service"},
    "service": {"api", "worker", "store"},
}
# the engine stays free of web, queue and database libraries
CORE_FORBIDDEN_LIBRARIES = {
    "fastapi",
    "starlette",
    "celery",
    "kombu",
    "sqlalchemy",
    "redis",
    "psycopg",
    "alembic",
    "httpx",
    "uvicorn",
}
# The one import from the client into the service: `squeeze serve` starts the service
# through its runner, imported inside the command (never at module import), so the
# client alone still installs and imports; without the service it says what to install.
LAZY_SERVICE_IMPORTS = {("squeeze/cli/serve.py", "service")}
# what the client's modules import when they load: the standard library, its own
# package and its declared dependencies (clients/python/pyproject.toml)
CLIENT_LIBRARIES = {"squeeze", "httpx", "pydantic", "yaml"}
# the API may only reach the worker through its enqueue module
API_ALLOWED_WORKER_MODULES = {"worker.enqueue", "worker.celery_app"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def module_level_imports(path: Path) -> set[str]:
    """The modules imported when `path` loads (not those imported inside functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.If | ast.Try | ast.With):
            for block in ("body", "orelse", "finalbody", "handlers"):
                for child in getattr(node, block, []):
                    pending.extend(child.body if isinstance(child, ast.ExceptHandler) else [child])
    return names


def modules_of(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_do_not_import_upwards(package: str) -> None:
    violations = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in modules_of(package)
        for name in imported_modules(path)
        if name.split(".")[0] in FORBIDDEN[package]
        and (
            (path.relative_to(ROOT).as_posix(), name.split(".")[0]) not in LAZY_SERVICE_IMPORTS
            or name in module_level_imports(path)
        )
    ]
    assert violations == []


def test_the_client_loads_with_its_own_dependencies_only() -> None:
    # numpy, onnx and torch only inside the functions that need them (torch_export)
    allowed = CLIENT_LIBRARIES | set(sys.stdlib_module_names)
    violations = [
        f"{path.relative_to(ROOT)} imports {name} when it loads"
        for path in modules_of("squeeze")
        for name in module_level_imports(path)
        if name.split(".")[0] not in allowed
    ]
    assert violations == []


def test_core_imports_no_web_queue_or_database_library() -> None:
    violations = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in modules_of("core")
        for name in imported_modules(path)
        if name.split(".")[0] in CORE_FORBIDDEN_LIBRARIES
    ]
    assert violations == []


def test_api_reaches_the_worker_only_through_enqueue() -> None:
    violations = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in modules_of("api")
        for name in imported_modules(path)
        if name.split(".")[0] == "worker" and name not in API_ALLOWED_WORKER_MODULES
    ]
    assert violations == []


def test_every_package_is_checked() -> None:
    assert {"core", "store", "worker", "squeeze"} <= set(FORBIDDEN)
    assert all((ROOT / package / "__init__.py").exists() for package in PROJECT_PACKAGES)


@pytest.mark.parametrize("package", ["core.prune", "core.quantize", "core.recipe", "core.tune"])
def test_the_modules_of_an_engine_package_import_each_other_without_a_cycle(
    package: str,
) -> None:
    # e.g. the prune step, its sensitivity sweep and the structured kind: step ->
    # sensitivity -> structured -> kinds, never back (lazy imports count too)
    folder = ROOT / package.replace(".", "/")
    modules = {
        f"{package}.{path.relative_to(folder).with_suffix('').as_posix().replace('/', '.')}": path
        for path in folder.rglob("*.py")
        if path.name != "__init__.py"
    }
    graph = {
        name: {m for m in imported_modules(path) if m in modules and m != name}
        for name, path in modules.items()
    }
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> None:
        if name in done:
            return
        assert name not in visiting, " -> ".join([*trail, name])
        visiting.add(name)
        for target in graph[name]:
            visit(target, [*trail, name])
        visiting.discard(name)
        done.add(name)

    for name in graph:
        visit(name, [])
