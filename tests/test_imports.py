"""Every import arrow points down (serve -> cluster -> model), and the light packages stay
light: ``import model`` loads no ray or grpc, the client SDK no torch or ray, the Ingress and
the router no torch. The arrows are checked on the source (every import statement, also the
ones inside functions), the weights at run time in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What the SDK may import besides the standard library and its own modules.
SDK_DEPENDENCIES = {"grpc", "google", "typing_extensions"}


def imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(','.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=120, cwd=ROOT)
    return set(result.stdout.strip().split(","))


def top_level(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


def imports_of(path: Path) -> list[str]:
    """Every module an ``import`` or ``from ... import`` in the file names (absolute only:
    the project uses no relative imports, which this asserts too)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            assert node.module is not None
            names.append(node.module)
    return names


def sources(package: str) -> list[Path]:
    files = sorted((ROOT / package).rglob("*.py"))
    return [f for f in files if not f.name.endswith(("_pb2.py", "_pb2_grpc.py"))]


@pytest.mark.parametrize(("package", "forbidden"), [
    ("model", {"cluster", "serve"}),
    ("cluster", {"serve"}),
])
def test_imports_point_down(package: str, forbidden: set[str]) -> None:
    upward = [f"{path.relative_to(ROOT)} imports {name}"
              for path in sources(package) for name in imports_of(path)
              if name.split(".")[0] in forbidden]
    assert not upward


def test_the_sdk_imports_only_grpc_protobuf_and_its_stubs() -> None:
    allowed = set(sys.stdlib_module_names) | SDK_DEPENDENCIES
    stray = []
    for path in sources("serve/client"):
        for name in imports_of(path):
            if name.startswith(("serve.client", "serve.grpc_api")) or name == "__future__":
                continue
            if name.split(".")[0] not in allowed or name.split(".")[0] == "serve":
                stray.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not stray


@pytest.mark.parametrize("package", ["model", "model.config", "model.tokenizer",
                                     "model.runner_config"])
def test_model_imports_no_ray_or_grpc(package: str) -> None:
    assert not top_level(imported_after(f"import {package}")) & {"ray", "grpc", "serve"}


@pytest.mark.parametrize("package", ["serve", "cluster", "serve.grpc_api",
                                     "serve.engine.block_hash", "serve.engine.errors",
                                     "serve.errors"])
def test_light_packages_import_no_torch(package: str) -> None:
    assert not top_level(imported_after(f"import {package}")) & {"torch", "ray", "grpc"}


def test_the_sdk_loads_neither_torch_nor_ray() -> None:
    modules = top_level(imported_after("import serve.client"))
    assert not modules & {"torch", "ray", "model", "cluster", "transformers", "pydantic"}


@pytest.mark.parametrize("module", ["serve.ingress.deployment", "serve.routing.router", "serve.openai.app"])
def test_front_door_and_router_load_no_torch(module: str) -> None:
    assert "torch" not in top_level(imported_after(f"import {module}"))
