"""Loader: errors that name the tensor; the consolidated layout loads to the same logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.config import ModelConfig
from model.factory import build_model
from model.layers.weight_source import WeightShapeError
from model.loader import CheckpointError
from model.random_checkpoint import save_hf_checkpoint, tiny_mistral_config
from tests.model.test_parity import prefill_logits


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    save_hf_checkpoint(tmp_path, tiny_mistral_config())
    return tmp_path


def _rewrite(directory: Path, edit) -> None:
    tensors = load_file(directory / "model.safetensors")
    edit(tensors)
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})


def test_missing_tensor_is_named(checkpoint: Path) -> None:
    _rewrite(checkpoint, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensors.*model\.layers\.1\.mlp\.up_proj"):
        build_model(checkpoint)


def test_renamed_tensor_is_named(checkpoint: Path) -> None:
    def rename(t: dict[str, torch.Tensor]) -> None:
        t["model.layers.0.self_attn.query.weight"] = t.pop("model.layers.0.self_attn.q_proj.weight")

    _rewrite(checkpoint, rename)
    with pytest.raises(CheckpointError, match=r"unexpected tensors.*self_attn\.query\.weight"):
        build_model(checkpoint)


def test_wrong_shape_is_named(checkpoint: Path) -> None:
    def shrink(t: dict[str, torch.Tensor]) -> None:
        t["model.layers.0.mlp.down_proj.weight"] = t["model.layers.0.mlp.down_proj.weight"][:, :8].clone()

    _rewrite(checkpoint, shrink)
    with pytest.raises(WeightShapeError, match=r"model\.layers\.0\.mlp\.down_proj\.weight.*"
                                               r"\[64, 8\], expected \[64, 160\]"):
        build_model(checkpoint)


def test_no_weights_found(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(tiny_mistral_config().to_dict()))
    with pytest.raises(CheckpointError, match="no safetensors weights"):
        build_model(tmp_path)


def _to_interleaved(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """HF rotary layout → Mistral's interleaved layout (the inverse of the loader's view)."""
    rows, columns = weight.shape
    head_dim = rows // num_heads
    return weight.view(num_heads, 2, head_dim // 2, columns).transpose(1, 2).reshape(rows, columns)


def write_consolidated(hf_dir: Path, out: Path) -> None:
    hf = load_file(hf_dir / "model.safetensors")
    config = ModelConfig.from_pretrained(hf_dir)
    renamed = {"tok_embeddings.weight": hf["model.embed_tokens.weight"],
               "norm.weight": hf["model.norm.weight"], "output.weight": hf["lm_head.weight"]}
    names = {"self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk",
             "self_attn.v_proj": "attention.wv", "self_attn.o_proj": "attention.wo",
             "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2",
             "mlp.up_proj": "feed_forward.w3", "input_layernorm": "attention_norm",
             "post_attention_layernorm": "ffn_norm"}
    for i in range(config.num_hidden_layers):
        for hf_part, mistral_part in names.items():
            tensor = hf[f"model.layers.{i}.{hf_part}.weight"]
            if mistral_part == "attention.wq":
                tensor = _to_interleaved(tensor, config.num_attention_heads)
            if mistral_part == "attention.wk":
                tensor = _to_interleaved(tensor, config.num_key_value_heads)
            renamed[f"layers.{i}.{mistral_part}.weight"] = tensor.contiguous()
    out.mkdir()
    save_file(renamed, out / "consolidated.safetensors")
    params = {"dim": config.hidden_size, "n_layers": config.num_hidden_layers,
              "head_dim": config.head_dim, "hidden_dim": config.intermediate_size,
              "n_heads": config.num_attention_heads, "n_kv_heads": config.num_key_value_heads,
              "norm_eps": config.rms_norm_eps, "vocab_size": config.vocab_size,
              "rope_theta": config.rope_theta, "max_seq_len": config.max_position_embeddings}
    (out / "params.json").write_text(json.dumps(params))


def test_consolidated_layout_matches_hf_layout(checkpoint: Path, tmp_path_factory) -> None:
    consolidated = tmp_path_factory.mktemp("c") / "consolidated"
    write_consolidated(checkpoint, consolidated)
    tokens = list(range(5, 69))
    expected = prefill_logits(build_model(checkpoint), tokens)
    actual = prefill_logits(build_model(consolidated), tokens)
    assert (actual - expected).abs().max().item() <= 1e-5


def test_sharded_index_layout_loads(checkpoint: Path, tmp_path_factory) -> None:
    from transformers import MistralForCausalLM

    sharded = tmp_path_factory.mktemp("s")
    hf = MistralForCausalLM.from_pretrained(checkpoint)
    hf.save_pretrained(sharded, max_shard_size="100KB", safe_serialization=True)
    assert (sharded / "model.safetensors.index.json").is_file()
    tokens = list(range(5, 40))
    expected = prefill_logits(build_model(checkpoint), tokens)
    assert torch.equal(prefill_logits(build_model(sharded), tokens), expected)
