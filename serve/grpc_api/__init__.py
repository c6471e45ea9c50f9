"""The Python stubs of the public gRPC API, ``proto/llm.proto`` at the repository root.

The stubs (``llm_pb2.py``, ``llm_pb2_grpc.py``, ``llm_pb2.pyi``) live in this package and are
never committed. A wheel ships them (``setup.py`` generates them at build time, and adds a copy
of ``llm.proto`` here); in a source checkout they are generated on first import, and again
whenever ``proto/llm.proto`` changes::

    from serve.grpc_api import llm_pb2, llm_pb2_grpc    # generates first if missing or stale
    import serve.grpc_api.llm_pb2                        # the same
    llm_pb2, llm_pb2_grpc = serve.grpc_api.stubs()       # the same, explicitly

An installed wheel has no ``proto/llm.proto`` next to it: its stubs are used as they are.

Importing ``serve.grpc_api`` itself stays cheap: standard library only, no grpc, no protobuf.
(This package is not called ``proto``: proto-plus, a dependency of ray[serve], owns that
top-level name.)
"""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from serve.grpc_api import llm_pb2, llm_pb2_grpc

__all__ = ["PROTO_FILE", "STUB_DIR", "ensure_stubs", "llm_pb2", "llm_pb2_grpc", "stubs"]

STUB_DIR = Path(__file__).resolve().parent
# In a source checkout: <repo>/proto/llm.proto. Absent from an installed wheel.
PROTO_FILE = Path(__file__).resolve().parents[2] / "proto" / "llm.proto"
_STUB_MODULES = frozenset({"llm_pb2", "llm_pb2_grpc"})
_lock = threading.Lock()
_checked = False


def ensure_stubs(force: bool = False) -> bool:
    """Generates the stubs if missing or out of date with llm.proto; True if it generated.

    Checked once per process: the stubs a process imported are the ones it keeps using.
    """
    global _checked
    if _checked and not force:
        return False
    # Imported before taking the lock, so no import lock is ever awaited while holding it.
    from . import codegen

    with _lock:
        if _checked and not force:
            return False
        generated = codegen.ensure_stubs(PROTO_FILE, STUB_DIR, force=force)
        _checked = True
        return generated


def stubs() -> tuple[ModuleType, ModuleType]:
    """``(llm_pb2, llm_pb2_grpc)``, generated first if needed."""
    ensure_stubs()
    return (
        importlib.import_module(f"{__name__}.llm_pb2"),
        importlib.import_module(f"{__name__}.llm_pb2_grpc"),
    )


def __getattr__(name: str) -> ModuleType:
    # ``serve.grpc_api.llm_pb2`` after a bare ``import serve.grpc_api``; ``from serve.grpc_api
    # import x`` lands here too.
    if name in _STUB_MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _StubFinder:
    """Runs ``ensure_stubs`` before the stub modules are looked up, then steps aside.

    A meta path hook rather than only ``__getattr__``: ``import serve.grpc_api.llm_pb2`` goes
    straight to the import system and never asks the package for the attribute.
    """

    def __init__(self, package: str) -> None:
        self.names = frozenset(f"{package}.{name}" for name in _STUB_MODULES)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname in self.names:
            ensure_stubs()
        return None  # the regular path finder loads the (now present) file


# One finder per package name, even if this module is reloaded.
sys.meta_path[:] = [
    finder
    for finder in sys.meta_path
    if not (
        type(finder).__name__ == "_StubFinder"
        and f"{__name__}.llm_pb2" in getattr(finder, "names", ())
    )
]
sys.meta_path.insert(0, _StubFinder(__name__))
