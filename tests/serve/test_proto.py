"""The gRPC stubs in ``serve.grpc_api``: generated lazily from proto/llm.proto (once, under a
lock), rebuilt when it changes, and built into wheels. Each test works on a copy of proto/llm.proto
and serve/grpc_api/ in a temporary dir, in subprocesses, so it never races other processes over
the real generated files. proto/ is no Python package: proto-plus owns the name ``proto``."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("__init__.py", "codegen.py")
STUBS = ("llm_pb2.py", "llm_pb2_grpc.py", "llm_pb2.pyi")
API = Path("serve", "grpc_api")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A source tree holding proto/llm.proto and a fresh ``serve.grpc_api`` (under an empty
    ``serve``): the sources only, no stubs."""
    (tmp_path / "proto").mkdir()
    shutil.copy2(REPO / "proto" / "llm.proto", tmp_path / "proto" / "llm.proto")
    (tmp_path / API).mkdir(parents=True)
    (tmp_path / "serve" / "__init__.py").write_text("")
    for name in SOURCES:
        shutil.copy2(REPO / API / name, tmp_path / API / name)
    return tmp_path


def python(root: Path, code: str) -> subprocess.Popen[str]:
    # cwd first on sys.path: this copy of ``serve`` wins over the repo's (editable install).
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=root, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def run(root: Path, code: str) -> object:
    """Runs ``code`` in a fresh interpreter; returns what it printed, parsed as JSON."""
    process = python(root, code)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    return json.loads(stdout.strip().splitlines()[-1])


def mtimes(root: Path) -> dict[str, int]:
    return {name: (root / API / name).stat().st_mtime_ns for name in STUBS}


def test_import_grpc_api_is_cheap_and_generates_nothing(root: Path) -> None:
    loaded = run(root, """if True:
        import json, sys, serve.grpc_api
        heavy = [m for m in sys.modules if m.split(".")[0] in ("grpc", "google", "grpc_tools")]
        print(json.dumps([serve.grpc_api.__file__, heavy]))""")  # fmt: skip
    assert loaded == [str(root / API / "__init__.py"), []]
    assert not any((root / API / name).exists() for name in STUBS)


def test_proto_folder_is_no_package_and_shadows_nothing() -> None:
    """proto/ holds only the API; ``import proto`` from the repo root is proto-plus's (or,
    without proto-plus, an empty namespace package), never a module of ours."""
    assert not list((REPO / "proto").glob("*.py"))
    code = "import proto; print(getattr(proto, '__file__', None) or '')"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    if done.returncode == 0 and done.stdout.strip():
        # A virtualenv inside the checkout is fine; the repo's own proto/ folder is not.
        assert not Path(done.stdout.strip()).resolve().is_relative_to(REPO / "proto"), \
            done.stdout


def test_client_sdk_imports_only_grpc_and_the_stubs() -> None:
    code = "import sys, serve.client; print(*{m.split('.')[0] for m in sys.modules})"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not {"torch", "ray", "numpy"} & set(done.stdout.split())


@pytest.mark.parametrize(
    "statement",
    [
        "from serve.grpc_api import llm_pb2_grpc",
        "import serve.grpc_api.llm_pb2_grpc; llm_pb2_grpc = serve.grpc_api.llm_pb2_grpc",
        "import serve.grpc_api; llm_pb2_grpc = serve.grpc_api.llm_pb2_grpc",
        "import serve.grpc_api; _, llm_pb2_grpc = serve.grpc_api.stubs()",
    ],
)
def test_first_import_generates_working_stubs(root: Path, statement: str) -> None:
    names = run(root, f"""if True:
        import json
        {statement}
        from serve.grpc_api import llm_pb2
        request = llm_pb2.GenerateRequest(text="hi")
        print(json.dumps([request.WhichOneof("prompt"), llm_pb2_grpc.__name__,
            [n for n in dir(llm_pb2_grpc) if "LLMService" in n]]))""")  # fmt: skip
    assert names == [
        "text",
        "serve.grpc_api.llm_pb2_grpc",
        ["LLMService", "LLMServiceServicer", "LLMServiceStub", "add_LLMServiceServicer_to_server"],
    ]
    assert all((root / API / name).is_file() for name in STUBS)
    assert not any((root / "proto" / name).exists() for name in STUBS)
    # protoc's absolute ``from proto import llm_pb2`` is made relative: it would otherwise
    # import proto-plus's ``proto``.
    grpc_stub = (root / API / "llm_pb2_grpc.py").read_text()
    assert "from . import llm_pb2 as" in grpc_stub
    assert "from proto import" not in grpc_stub


ENSURE = "import json, serve.grpc_api as api; print(json.dumps(api.ensure_stubs()))"


def test_second_import_does_not_regenerate(root: Path) -> None:
    assert run(root, ENSURE) is True
    before = mtimes(root)
    time.sleep(0.05)
    assert run(root, ENSURE) is False
    assert mtimes(root) == before


def test_stubs_regenerate_when_llm_proto_changes(root: Path) -> None:
    run(root, "import serve.grpc_api.llm_pb2; print(1)")
    before = mtimes(root)
    source = root / "proto" / "llm.proto"
    future = time.time() + 10
    # Newer but the same content (a git checkout, a wheel install): the stamp says fresh.
    os.utime(source, (future, future))
    assert run(root, ENSURE) is False
    assert mtimes(root) == before
    source.write_text(source.read_text() + "\nmessage Added { int32 x = 1; }\n")
    os.utime(source, (future, future))
    added = run(root, "import json; from serve.grpc_api import llm_pb2; print(json.dumps(hasattr(llm_pb2, 'Added')))")  # fmt: skip
    assert added is True
    assert all(after > before[name] for name, after in mtimes(root).items())


def test_parallel_processes_generate_once(root: Path) -> None:
    processes = [python(root, ENSURE) for _ in range(4)]
    results = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stderr
        results.append(json.loads(stdout))
    assert sorted(results) == [False, False, False, True]


def _can_build_wheels() -> bool:
    import setuptools

    major, minor = (int(part) for part in setuptools.__version__.split(".")[:2])
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


def _build(source: Path, out: Path, kind: str) -> Path:
    """``kind``: wheel or sdist, built with the setuptools in this environment (no network)."""
    code = f"from setuptools import build_meta as b; print(b.build_{kind}({str(out)!r}))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=source, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out / done.stdout.strip().splitlines()[-1]


@pytest.mark.skipif(not _can_build_wheels(), reason="needs setuptools>=70.1 or wheel")
def test_wheels_and_sdists_carry_generated_stubs(root: Path, tmp_path_factory: pytest.TempPathFactory) -> None:  # fmt: skip
    for name in ("pyproject.toml", "setup.py", "README.md", "MANIFEST.in"):
        shutil.copy2(REPO / name, root / name)
    out = tmp_path_factory.mktemp("dist")
    wheels = [_build(root, out, "wheel")]
    sdist = _build(root, out, "sdist")
    with tarfile.open(sdist) as archive:
        archive.extractall(out / "sdist")
    (unpacked,) = (out / "sdist").iterdir()
    assert (unpacked / "proto" / "llm.proto").is_file()
    assert not (unpacked / "proto" / "__init__.py").exists()
    (out / "from-sdist").mkdir()
    wheels.append(_build(unpacked, out / "from-sdist", "wheel"))
    for wheel in wheels:
        names = set(zipfile.ZipFile(wheel).namelist())
        expected = {f"serve/grpc_api/{name}" for name in (*STUBS, *SOURCES, "llm.proto")}
        assert expected <= names, wheel
        # No top-level ``proto``: installing the wheel must leave proto-plus's alone.
        assert not {name for name in names if name.split("/")[0] == "proto"}, wheel
    # The installed wheel (no proto/llm.proto beside it) imports its stubs as they are:
    # nothing generated, no warning, even if the copy of llm.proto it ships has changed.
    site = out / "site"
    zipfile.ZipFile(wheels[0]).extractall(site)
    shipped = site / API / "llm.proto"
    shipped.write_text(shipped.read_text() + "\nmessage Added { int32 x = 1; }\n")
    before = {name: (site / API / name).stat().st_mtime_ns for name in STUBS}
    installed = run(site, """if True:
        import json, warnings
        warnings.simplefilter("error")
        import serve.grpc_api as api
        from serve.grpc_api import llm_pb2_grpc
        print(json.dumps([api.ensure_stubs(), api.ensure_stubs(force=True),
                          llm_pb2_grpc.__file__]))""")  # fmt: skip
    assert installed == [False, False, str(site / API / "llm_pb2_grpc.py")]
    assert before == {name: (site / API / name).stat().st_mtime_ns for name in STUBS}
    # An editable build generates the stubs in the source tree it points at.
    assert not (root / API / "llm_pb2.py").exists()
    _build(root, out / "editable", "editable")
    assert all((root / API / name).is_file() for name in STUBS)


def test_messages_pickle_under_their_real_module() -> None:
    """Ray pickles request messages between Serve's gRPC proxy and the replicas."""
    import pickle

    from serve.grpc_api import llm_pb2

    message = llm_pb2.GenerateRequest(text="hello", session_id="s")
    assert type(message).__module__ == "serve.grpc_api.llm_pb2"
    assert pickle.loads(pickle.dumps(message)) == message
