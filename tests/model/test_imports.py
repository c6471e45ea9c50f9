"""Package imports stay cheap: no ray or grpc behind ``import model``, no torch behind
``import serve`` / ``import cluster`` (the client SDK and the router import them)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(','.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=60)
    return set(result.stdout.strip().split(","))


@pytest.mark.parametrize("package", ["model", "model.config", "model.tokenizer"])
def test_model_imports_no_ray_or_grpc(package: str) -> None:
    modules = imported_after(f"import {package}")
    assert not {m for m in modules if m.split(".")[0] in ("ray", "grpc")}


@pytest.mark.parametrize("package", ["serve", "cluster", "serve.grpc_api", "serve.engine.block_hash"])
def test_light_packages_import_no_torch(package: str) -> None:
    modules = imported_after(f"import {package}")
    assert not {m for m in modules if m.split(".")[0] in ("torch", "ray", "grpc")}
