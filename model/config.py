"""Model configuration: one dataclass for the Mistral/Llama family.

Read from a Hugging Face ``config.json`` (``MistralForCausalLM`` / ``LlamaForCausalLM``),
from Mistral's ``params.json`` (the consolidated checkpoint layout), or from a named preset.
Validation happens once, here, so that every later shape computation can trust the numbers.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUPPORTED_ARCHITECTURES = ("MistralForCausalLM", "LlamaForCausalLM")


class ConfigError(ValueError):
    """A checkpoint configuration that cannot describe a model we can run."""


@dataclass(frozen=True)
class ModelConfig:
    """Shapes and hyper-parameters of a decoder-only Mistral/Llama model.

    ``head_dim`` defaults to ``hidden_size // num_attention_heads``; ``sliding_window`` is
    ``None`` when every token attends to the whole context (Mistral v0.2).
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    sliding_window: int | None = None
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    architecture: str = "MistralForCausalLM"

    def __post_init__(self) -> None:
        positive = (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "max_position_embeddings",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ConfigError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2 != 0:
            raise ConfigError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if not self.rope_theta > 0:
            raise ConfigError(f"rope_theta must be > 0, got {self.rope_theta!r}")
        if not self.rms_norm_eps > 0:
            raise ConfigError(f"rms_norm_eps must be > 0, got {self.rms_norm_eps!r}")
        if self.sliding_window is not None and (
            not isinstance(self.sliding_window, int) or self.sliding_window <= 0
        ):
            raise ConfigError(
                f"sliding_window must be a positive integer or null, got {self.sliding_window!r}"
            )
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ConfigError(
                f"architectures[0] is {self.architecture!r}; supported: "
                f"{', '.join(SUPPORTED_ARCHITECTURES)}"
            )

    @property
    def num_queries_per_kv(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V over all layers at 2 bytes per element (bf16/fp16)."""
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim * 2

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    # ---- constructors -------------------------------------------------------------------

    @classmethod
    def from_hf_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        """Build from the dict of an HF ``config.json``."""
        architectures = raw.get("architectures") or ["MistralForCausalLM"]
        if not isinstance(architectures, list) or not architectures:
            raise ConfigError(f"architectures must be a non-empty list, got {architectures!r}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads"):
            if name not in raw:
                raise ConfigError(f"config.json is missing the field {name!r}")
        num_heads = raw["num_attention_heads"]
        head_dim = raw.get("head_dim") or _divide(raw["hidden_size"], num_heads, "hidden_size")
        max_pos = raw.get("max_position_embeddings", 4096)
        sliding_window = raw.get("sliding_window")
        if raw.get("use_sliding_window") is False:
            sliding_window = None
        # A window at least as long as the context never masks anything: treat it as off so
        # the attention backends take their cheaper full-causal path.
        if sliding_window is not None and sliding_window >= max_pos:
            sliding_window = None
        rope_theta = raw.get("rope_theta")
        if rope_theta is None:
            rope_theta = (raw.get("rope_parameters") or {}).get("rope_theta", 10000.0)
        return cls(
            vocab_size=raw["vocab_size"],
            hidden_size=raw["hidden_size"],
            intermediate_size=raw["intermediate_size"],
            num_hidden_layers=raw["num_hidden_layers"],
            num_attention_heads=num_heads,
            num_key_value_heads=raw.get("num_key_value_heads") or num_heads,
            head_dim=head_dim,
            max_position_embeddings=max_pos,
            rope_theta=float(rope_theta),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-5)),
            sliding_window=sliding_window,
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            bos_token_id=_first_id(raw.get("bos_token_id")),
            eos_token_id=_first_id(raw.get("eos_token_id")),
            architecture=architectures[0],
        )

    @classmethod
    def from_mistral_params(cls, raw: dict[str, Any], max_position_embeddings: int = 32768
                            ) -> ModelConfig:
        """Build from Mistral's ``params.json`` (consolidated checkpoints).

        Example (Mistral-7B-v0.2): ``{"dim": 4096, "n_layers": 32, "head_dim": 128,
        "hidden_dim": 14336, "n_heads": 32, "n_kv_heads": 8, "norm_eps": 1e-05,
        "vocab_size": 32000, "rope_theta": 1000000.0}``.
        """
        for name in ("dim", "n_layers", "hidden_dim", "n_heads", "vocab_size"):
            if name not in raw:
                raise ConfigError(f"params.json is missing the field {name!r}")
        window = raw.get("sliding_window")
        if isinstance(window, list):  # some releases store one window per layer
            window = window[0] if window else None
        return cls(
            vocab_size=raw["vocab_size"],
            hidden_size=raw["dim"],
            intermediate_size=raw["hidden_dim"],
            num_hidden_layers=raw["n_layers"],
            num_attention_heads=raw["n_heads"],
            num_key_value_heads=raw.get("n_kv_heads") or raw["n_heads"],
            head_dim=raw.get("head_dim") or _divide(raw["dim"], raw["n_heads"], "dim"),
            max_position_embeddings=raw.get("max_seq_len", max_position_embeddings),
            rope_theta=float(raw.get("rope_theta", 10000.0)),
            rms_norm_eps=float(raw.get("norm_eps", 1e-5)),
            sliding_window=window,
            tie_word_embeddings=False,
        )

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ModelConfig:
        """A preset name, or a checkpoint directory with config.json or params.json."""
        if str(path) in PRESETS:
            return PRESETS[str(path)]
        directory = Path(path)
        if (directory / "config.json").is_file():
            return cls.from_hf_dict(_read_json(directory / "config.json"))
        if (directory / "params.json").is_file():
            return cls.from_mistral_params(_read_json(directory / "params.json"))
        raise ConfigError(
            f"{path!s} is neither a preset ({', '.join(sorted(PRESETS))}) nor a directory "
            "holding config.json or params.json"
        )


def _divide(numerator: int, denominator: int, name: str) -> int:
    if denominator <= 0 or numerator % denominator != 0:
        raise ConfigError(f"{name} ({numerator}) must be divisible by num_attention_heads "
                          f"({denominator}) when head_dim is not given")
    return numerator // denominator


def _first_id(value: Any) -> int | None:
    if isinstance(value, list):
        return value[0] if value else None
    return value


def _read_json(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    return raw


_MISTRAL_7B = dict(
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    rms_norm_eps=1e-5,
)

PRESETS: dict[str, ModelConfig] = {
    "mistral-7b-v0.1": ModelConfig(
        **_MISTRAL_7B, rope_theta=10000.0, max_position_embeddings=8192, sliding_window=4096
    ),
    "mistral-7b-v0.2": ModelConfig(
        **_MISTRAL_7B, rope_theta=1e6, max_position_embeddings=32768, sliding_window=None
    ),
}
