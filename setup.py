"""Build hook: every build generates the gRPC stubs from proto/llm.proto (metadata lives in
pyproject.toml). Wheels get fresh stubs, and a copy of llm.proto, in their build dir's
serve/grpc_api/; editable installs get the stubs in the source tree's serve/grpc_api/, where the
editable finder points. proto/ itself is no Python package (proto-plus owns that name); the
sdist carries proto/llm.proto through MANIFEST.in.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from types import ModuleType

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTO_FILE = ROOT / "proto" / "llm.proto"
STUB_PACKAGE = Path("serve", "grpc_api")


def _codegen() -> ModuleType:
    # By file path: inside an isolated build the project itself is not importable.
    spec = importlib.util.spec_from_file_location(
        "_mistral_serve_codegen", ROOT / STUB_PACKAGE / "codegen.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithStubs(build_py):
    def run(self) -> None:
        super().run()
        codegen = _codegen()
        if self.editable_mode:
            try:
                codegen.ensure_stubs(PROTO_FILE, ROOT / STUB_PACKAGE)
            except codegen.StubGenerationError as exc:
                # Not fatal here: the first import retries (serve/grpc_api/__init__.py), and
                # says why.
                warnings.warn(f"gRPC stubs not generated: {exc}", stacklevel=1)
        else:
            # Overwrites whatever stubs the source tree had, stale or not: a wheel always
            # matches the llm.proto it ships (for clients in other languages, next to them).
            out_dir = Path(self.build_lib) / STUB_PACKAGE
            codegen.generate(PROTO_FILE, out_dir)
            self.copy_file(str(PROTO_FILE), str(out_dir / PROTO_FILE.name))


setup(cmdclass={"build_py": BuildPyWithStubs})
