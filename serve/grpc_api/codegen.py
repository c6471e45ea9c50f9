"""Generates the Python stubs of ``proto/llm.proto`` with grpcio-tools; stdlib only until
it runs.

The source is ``<repo>/proto/llm.proto`` (a plain folder, not a Python package: proto-plus owns
the top-level name ``proto``); the stubs go into ``serve/grpc_api/``. Used three ways, all
through ``ensure_stubs``/``generate``:

- ``setup.py``'s ``build_py`` hook, at wheel/editable build time (loaded by file path, because
  the project is not importable inside an isolated build);
- ``serve/grpc_api/__init__.py``, lazily, the first time ``serve.grpc_api.llm_pb2``/
  ``llm_pb2_grpc`` is imported in a fresh clone or after ``llm.proto`` changed;
- by hand: ``python -m serve.grpc_api.codegen [--force] [--out DIR]``.

Each generated file ends with a ``# source-sha256: <hex>`` line naming the ``llm.proto`` it
came from. Freshness is "every stub at least as new as llm.proto" (cheap, no read), else "every
stub's stamp matches llm.proto's content": a git checkout or a wheel install can leave the
.proto with a newer mtime than unchanged stubs, and an installed package may be read-only.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

STUB_DIR = Path(__file__).resolve().parent
# In a source checkout (or an unpacked sdist); an installed wheel has none.
PROTO_FILE = STUB_DIR.parents[1] / "proto" / "llm.proto"
STUB_FILES = ("llm_pb2.py", "llm_pb2.pyi", "llm_pb2_grpc.py")
STAMP_PREFIX = "# source-sha256: "
LOCK_FILE = ".stubs.lock"
LOCK_TIMEOUT_S = 120.0
# protoc emits an absolute import of the sibling module (``from proto import llm_pb2 as``
# with ``-I <repo>``, ``import llm_pb2 as`` with ``-I proto``): it is made relative, so the
# stubs work inside ``serve.grpc_api`` and never reach for proto-plus's ``proto``.
_SIBLING_IMPORT = re.compile(r"^(?:from [\w.]+ )?import llm_pb2 as ", re.MULTILINE)
_RELATIVE_IMPORT = "from . import llm_pb2 as "
# protoc also bakes the module path it derived from the include root ("proto.llm_pb2") into
# the message classes' __module__; Ray pickles request messages between the gRPC proxy and
# the replicas, so classes must name the module they really live in.
_BAKED_MODULE = re.compile(r"BuildTopDescriptorsAndMessages\(DESCRIPTOR, '[\w.]+', ")
_REAL_MODULE = "BuildTopDescriptorsAndMessages(DESCRIPTOR, __name__, "


class StubGenerationError(ImportError):
    """The stubs are missing or stale and could not be generated."""


def source_sha256(source: Path) -> str:
    return hashlib.sha256(source.read_bytes()).hexdigest()


def _stamp(path: Path) -> str | None:
    for line in reversed(path.read_text(encoding="utf-8").splitlines()[-3:]):
        if line.startswith(STAMP_PREFIX):
            return line[len(STAMP_PREFIX) :].strip()
    return None


def stubs_missing(out_dir: Path) -> bool:
    return not all((out_dir / name).is_file() for name in STUB_FILES)


def stubs_fresh(source: Path, out_dir: Path) -> bool:
    """True when the stubs in ``out_dir`` match ``source`` (llm.proto), or when there is no
    ``source`` to match (an installed wheel: the stubs are all there is)."""
    if stubs_missing(out_dir):
        return False
    if not source.is_file():
        return True
    oldest_stub = min((out_dir / name).stat().st_mtime_ns for name in STUB_FILES)
    if oldest_stub >= source.stat().st_mtime_ns:
        return True
    digest = source_sha256(source)
    return all(_stamp(out_dir / name) == digest for name in STUB_FILES)


def generate(source: Path, out_dir: Path) -> list[Path]:
    """Runs protoc on ``source`` (llm.proto) into ``out_dir``, replacing each file atomically.

    The include root is the folder above ``source``'s, so the descriptor is registered as
    ``proto/llm.proto``, the same name in every process. No lock: see ``ensure_stubs``.
    """
    try:
        from grpc_tools import protoc
    except ImportError as exc:
        raise StubGenerationError(
            f"cannot generate the gRPC stubs of {source}: grpcio-tools is not "
            "installed (pip install 'grpcio-tools==1.85.1')"
        ) from exc
    source = source.resolve()
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    folder = source.parent.name
    digest = source_sha256(source)
    # The temporary dir sits in out_dir so that os.replace stays on one filesystem (atomic).
    scratch = Path(tempfile.mkdtemp(prefix=".stubs-", dir=out_dir))
    try:
        well_known = Path(protoc.__file__).parent / "_proto"
        args = [
            "grpc_tools.protoc",
            f"-I{source.parent.parent}",
            f"-I{well_known}",
            f"--python_out={scratch}",
            f"--pyi_out={scratch}",
            f"--grpc_python_out={scratch}",
            f"{folder}/{source.name}",
        ]
        code = protoc.main(args)
        if code != 0:
            raise StubGenerationError(f"protoc exited with {code} on {source}")
        written = []
        for name in STUB_FILES:
            text = (scratch / folder / name).read_text(encoding="utf-8")
            text = _SIBLING_IMPORT.sub(_RELATIVE_IMPORT, text)
            text = _BAKED_MODULE.sub(_REAL_MODULE, text)
            if name == "llm_pb2.py" and _REAL_MODULE not in text:
                raise StubGenerationError(f"no message module name to fix in {name}")
            if name == "llm_pb2_grpc.py" and _RELATIVE_IMPORT not in text:
                raise StubGenerationError(f"no import of llm_pb2 to make relative in {name}")
            staged = scratch / name
            staged.write_text(f"{text.rstrip()}\n{STAMP_PREFIX}{digest}\n", encoding="utf-8")
            os.replace(staged, out_dir / name)
            written.append(out_dir / name)
        return written
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def file_lock(path: Path, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """An exclusive inter-process lock on ``path``; polls so a stuck holder cannot hang us."""
    with open(path, "a+b") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                _lock(handle.fileno())
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"waited {timeout_s:.0f} s for the lock {path}") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            _unlock(handle.fileno())


if os.name == "nt":
    import msvcrt

    def _lock(fd: int) -> None:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

    def _unlock(fd: int) -> None:
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


def ensure_stubs(source: Path, out_dir: Path, force: bool = False) -> bool:
    """Generates the stubs of ``source`` into ``out_dir`` unless they are fresh; True if it
    generated.

    Without ``source`` (an installed wheel) the stubs in ``out_dir`` are used as they are, and
    nothing is generated, even with ``force``. Parallel processes (pytest-xdist, Ray workers)
    serialize on a lock file and re-check after taking it, so only the first one runs protoc.
    Stale stubs that cannot be rebuilt (read-only tree, no grpcio-tools) are used as they are,
    with a warning.
    """
    if not source.is_file():
        if stubs_missing(out_dir):
            raise StubGenerationError(
                f"the gRPC stubs are missing from {out_dir} and there is no {source} to "
                "generate them from"
            )
        return False
    if not force and stubs_fresh(source, out_dir):
        return False
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with file_lock(out_dir / LOCK_FILE):
            if not force and stubs_fresh(source, out_dir):
                return False
            generate(source, out_dir)
            return True
    except (OSError, StubGenerationError) as exc:
        if stubs_missing(out_dir):
            if isinstance(exc, StubGenerationError):
                raise
            raise StubGenerationError(f"cannot generate the stubs in {out_dir}: {exc}") from exc
        warnings.warn(
            f"using the existing stubs in {out_dir}, which do not match {source}: {exc}",
            RuntimeWarning,
            stacklevel=2,
        )
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="regenerate even if fresh")
    parser.add_argument("--out", type=Path, help=f"write here instead of into {STUB_DIR}")
    args = parser.parse_args(argv)
    if args.out is not None:
        written = generate(PROTO_FILE, args.out)
        print("\n".join(str(path) for path in written))
    else:
        generated = ensure_stubs(PROTO_FILE, STUB_DIR, force=args.force)
        print("generated" if generated else "up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
