"""Tokenizers the model tests share, built once per module."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from model.tokenizer import MistralV1Tokenizer, bundled_mistral_v1_path
from tests.model.tokenizer_cases import MISTRAL_HF_TEMPLATE, train_byte_level_bpe


@pytest.fixture(scope="module")
def mistral() -> MistralV1Tokenizer:
    return MistralV1Tokenizer.from_file()


@pytest.fixture(scope="module")
def reference() -> MistralTokenizer:
    return MistralTokenizer.v1()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("chatml")
    train_byte_level_bpe(directory)
    return directory


@pytest.fixture(scope="module")
def hf_mistral_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Mistral's tokenizer.model converted by transformers to tokenizer.json (a Llama-style
    Metaspace/ByteFallback/Strip pipeline), with the HF Mistral-Instruct template."""
    transformers = pytest.importorskip("transformers")
    source = tmp_path_factory.mktemp("mistral_sp")
    shutil.copy(bundled_mistral_v1_path(), source / "tokenizer.model")
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>"}
    (source / "tokenizer_config.json").write_text(json.dumps(config))
    converted = tmp_path_factory.mktemp("mistral_hf")
    transformers.AutoTokenizer.from_pretrained(source).save_pretrained(converted)
    config_path = converted / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = MISTRAL_HF_TEMPLATE
    config_path.write_text(json.dumps(config))
    (converted / "chat_template.jinja").unlink(missing_ok=True)
    return converted
