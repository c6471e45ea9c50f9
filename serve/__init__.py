"""The serving layer. Importing it stays cheap: heavy modules load on first attribute use."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from model.sampling_params import SamplingParams
    from serve.llm import LLM

__all__ = ["LLM", "SamplingParams"]


def __getattr__(name: str) -> Any:
    if name == "LLM":
        from serve.llm import LLM

        return LLM
    if name == "SamplingParams":
        from model.sampling_params import SamplingParams

        return SamplingParams
    raise AttributeError(f"module 'serve' has no attribute {name!r}")
