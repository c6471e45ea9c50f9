"""Which attention backend a device, a request and the installed packages give.

Whether flash-attn or triton is installed is the environment, not the rule under test, so
``importlib.util.find_spec`` answers for those two names only; every decision is the real
``resolve_backend_name``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import pytest
import torch

from model.attention.backend import create_backend, resolve_backend_name

CPU = torch.device("cpu")
CUDA = torch.device("cuda")  # a descriptor only: nothing here touches a GPU


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """``installed("triton")``: from now on only the named optional packages are present."""
    real_find_spec = importlib.util.find_spec

    def set_installed(*names: str) -> None:
        def find_spec(name: str, *args: object, **kwargs: object) -> object:
            if name in ("flash_attn", "triton"):
                return real_find_spec("torch") if name in names else None
            return real_find_spec(name, *args, **kwargs)

        monkeypatch.setattr(importlib.util, "find_spec", find_spec)

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    return set_installed


@pytest.mark.parametrize(("packages", "block_size", "expected"), [
    (("flash_attn", "triton"), 256, "flash_attn"),
    (("flash_attn", "triton"), 512, "flash_attn"),
    (("flash_attn", "triton"), 16, "triton"),  # flash-attn's pages are >= 256 tokens
    (("flash_attn",), 16, "torch"),
    (("triton",), 256, "triton"),
    ((), 256, "torch"),
])
def test_auto_on_cuda(installed: Callable[..., None], packages: tuple[str, ...],
                      block_size: int, expected: str) -> None:
    installed(*packages)
    assert resolve_backend_name("auto", CUDA, block_size) == expected


def test_auto_on_cpu_is_the_paged_kernel_and_torch_stays_torch(
        installed: Callable[..., None]) -> None:
    installed("flash_attn", "triton")
    assert resolve_backend_name("auto", CPU, 256) == "cpu"
    assert resolve_backend_name("cpu", CPU, 16) == "cpu"
    assert resolve_backend_name("torch", CPU, 16) == "torch"
    assert resolve_backend_name("torch", CUDA, 256) == "torch"


def test_cpu_backend_refuses_cuda() -> None:
    with pytest.raises(ValueError, match="'cpu' runs on CPU tensors"):
        resolve_backend_name("cpu", CUDA, 16)


def test_unknown_name_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="auto, torch, cpu, triton, flash_attn.*'flash'"):
        resolve_backend_name("flash", CPU)


@pytest.mark.parametrize(("packages", "device", "block_size", "message"), [
    (("flash_attn",), CPU, 256, "needs a CUDA device"),
    ((), CUDA, 256, "needs the flash-attn package"),
    (("flash_attn",), CUDA, 16, "multiple of 256.*got 16: set block_size=256"),
    (("flash_attn",), CUDA, 384, "multiple of 256.*got 384"),
])
def test_explicit_flash_attn_says_what_to_change(
        installed: Callable[..., None], packages: tuple[str, ...], device: torch.device,
        block_size: int, message: str) -> None:
    installed(*packages)
    with pytest.raises(ValueError, match=message):
        resolve_backend_name("flash_attn", device, block_size)


def test_explicit_flash_attn_accepted(installed: Callable[..., None]) -> None:
    installed("flash_attn")
    assert resolve_backend_name("flash_attn", CUDA, 256) == "flash_attn"
    assert resolve_backend_name("flash_attn", CUDA, 1024) == "flash_attn"


def test_explicit_triton(installed: Callable[..., None],
                         monkeypatch: pytest.MonkeyPatch) -> None:
    installed("triton")
    assert resolve_backend_name("triton", CUDA) == "triton"
    with pytest.raises(ValueError, match="needs a CUDA device.*TRITON_INTERPRET=1"):
        resolve_backend_name("triton", CPU)
    # The interpreter runs the kernels on CPU tensors: how they are tested without a GPU.
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend_name("triton", CPU) == "triton"
    installed()
    with pytest.raises(ValueError, match="needs the triton package"):
        resolve_backend_name("triton", CUDA)


def test_torch_backend_cannot_run_static_shapes() -> None:
    backend = create_backend("torch", CPU)
    assert backend.name == "torch"
    assert backend.supports_static_shapes is False
