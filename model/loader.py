"""Load weights from safetensors into a (possibly sharded) model.

Two layouts are understood:

* HF: ``model.safetensors`` or shards listed in ``model.safetensors.index.json``;
* Mistral consolidated: ``consolidated.safetensors`` with ``params.json``.

Each tensor is opened with ``safe_open(...).get_slice`` and the layer that owns it reads only
its own rank's rows or columns, so a tp=8 rank reads about one eighth of the file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from model.layers.weight_source import SafetensorsSlice, WeightSource
from model.mistral import MistralForCausalLM


class CheckpointError(ValueError):
    """The checkpoint does not match the model: missing, unexpected or misshapen tensors."""


@dataclass(frozen=True)
class CheckpointFiles:
    layout: str  # "hf" or "consolidated"
    files: list[Path]


def find_checkpoint_files(directory: str | Path) -> CheckpointFiles:
    root = Path(directory)
    index = root / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        names = sorted(set(weight_map.values()))
        missing = [name for name in names if not (root / name).is_file()]
        if missing:
            raise CheckpointError(f"{index} lists shard files that do not exist: {missing}")
        return CheckpointFiles("hf", [root / name for name in names])
    if (root / "model.safetensors").is_file():
        return CheckpointFiles("hf", [root / "model.safetensors"])
    if (root / "consolidated.safetensors").is_file():
        return CheckpointFiles("consolidated", [root / "consolidated.safetensors"])
    shards = sorted(root.glob("model-*.safetensors"))
    if shards:
        return CheckpointFiles("hf", shards)
    raise CheckpointError(
        f"no safetensors weights in {root}: expected model.safetensors, "
        "model.safetensors.index.json or consolidated.safetensors"
    )


class InterleavedToHalfRotary:
    """Presents a consolidated q/k weight in the HF rotary layout.

    Mistral's own checkpoints rotate interleaved pairs (x0, x1), (x2, x3)…; HF's layout
    rotates (x0, x_{d/2}), (x1, x_{d/2+1})…. Within each head, row ``j * d/2 + i`` of the HF
    weight is row ``2 * i + j`` of the consolidated one. Row slices must cover whole heads,
    which they always do since tensor parallelism splits by heads.
    """

    def __init__(self, inner: WeightSource, head_dim: int) -> None:
        self.inner = inner
        self.head_dim = head_dim

    @property
    def shape(self) -> tuple[int, ...]:
        return self.inner.shape

    def __getitem__(self, index: Any) -> torch.Tensor:
        rows = self.inner[index]
        if rows.shape[0] % self.head_dim != 0:
            raise ValueError("q/k row slices must cover whole heads")
        columns = rows.shape[-1]
        return (rows.reshape(-1, self.head_dim // 2, 2, columns).transpose(1, 2)
                .reshape(-1, columns))


_CONSOLIDATED_LAYER = {
    "attention.wq": "self_attn.q_proj",
    "attention.wk": "self_attn.k_proj",
    "attention.wv": "self_attn.v_proj",
    "attention.wo": "self_attn.o_proj",
    "feed_forward.w1": "mlp.gate_proj",
    "feed_forward.w2": "mlp.down_proj",
    "feed_forward.w3": "mlp.up_proj",
    "attention_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_CONSOLIDATED_TOP = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAME = re.compile(r"layers\.(\d+)\.(.+)\.weight")


def hf_name(name: str, layout: str) -> str:
    """Map a checkpoint tensor name to the HF name the model's loaders are keyed by."""
    if layout == "hf":
        return name
    if name in _CONSOLIDATED_TOP:
        return _CONSOLIDATED_TOP[name]
    match = _LAYER_NAME.fullmatch(name)
    if match and match.group(2) in _CONSOLIDATED_LAYER:
        return f"model.layers.{match.group(1)}.{_CONSOLIDATED_LAYER[match.group(2)]}.weight"
    return name


def _is_ignored(name: str, model: MistralForCausalLM) -> bool:
    # Precomputed rotary tables are rebuilt from rope_theta; a tied LM head shares the
    # embedding, so a stored copy of it is redundant.
    if name.endswith("rotary_emb.inv_freq"):
        return True
    return model.config.tie_word_embeddings and name == "lm_head.weight"


def load_weights(model: MistralForCausalLM, directory: str | Path, progress: bool = True
                 ) -> None:
    """Fill every parameter of ``model`` from the checkpoint at ``directory``."""
    checkpoint = find_checkpoint_files(directory)
    loaders = model.weight_loaders()
    loaded: set[str] = set()
    unexpected: list[str] = []
    bar = tqdm(total=len(loaders), desc="Loading weights", unit="tensor", disable=not progress)
    with torch.no_grad():
        for path in checkpoint.files:
            with safe_open(str(path), framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118 - safe_open is not a dict
                    target = hf_name(name, checkpoint.layout)
                    if _is_ignored(target, model):
                        continue
                    if target not in loaders:
                        unexpected.append(name)
                        continue
                    source: WeightSource = SafetensorsSlice(handle, name)
                    if checkpoint.layout == "consolidated" and name.endswith(
                            ("attention.wq.weight", "attention.wk.weight")):
                        source = InterleavedToHalfRotary(source, model.config.head_dim)
                    loaders[target](source, name)
                    loaded.add(target)
                    bar.update(1)
    bar.close()
    if unexpected:
        raise CheckpointError(f"unexpected tensors in {directory}: {', '.join(unexpected[:5])}"
                              + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""))
    missing = sorted(set(loaders) - loaded)
    if missing:
        raise CheckpointError(f"missing tensors in {directory}: {', '.join(missing[:5])}"
                              + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))


def load_dummy_weights(model: MistralForCausalLM, seed: int = 0) -> None:
    """Random weights in the right shapes, for benchmarks: timing does not depend on values.

    Scaled small (std 0.02, norms at 1) so activations stay finite through 32 layers.
    """
    generators: dict[torch.device, torch.Generator] = {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
                continue
            # Drawn on the parameter's own device: 7B values drawn on the host would take
            # longer than the benchmark they serve.
            if param.device not in generators:
                generators[param.device] = torch.Generator(device=param.device).manual_seed(seed)
            param.normal_(0.0, 0.02, generator=generators[param.device])
