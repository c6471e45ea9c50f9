"""A fresh virtualenv holding only what a plain ``pip install`` of the project brings: the
client SDK (grpc, protobuf, the generated stubs), without the server extra."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# What a build needs from the checkout; copying it keeps build artefacts out of the repo.
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "proto", "model",
           "cluster", "serve")


def install_sdk(directory: Path, timeout_s: float = 300.0) -> Path:
    """Build and install the project with no extras into a new venv; returns its python."""
    source = directory / "src"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "llm_pb2*", ".stubs*")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=ignore)
        else:
            shutil.copy(path, source / name)
    venv = directory / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    str(source)], check=True, timeout=timeout_s, capture_output=True)
    return python
