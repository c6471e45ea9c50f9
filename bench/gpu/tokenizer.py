"""The tokenizer the engine gets. Token ids are what the benchmark sends; the tokenizer only
detokenizes the outputs, so a synthetic one times the same as Mistral's own."""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
from pathlib import Path


def write_synthetic_tokenizer(directory: Path, vocab: int) -> Path:
    """A word-level ``tokenizer.json`` over the model's vocabulary, for machines without
    mistral_common (which carries the only copy of the Mistral v1 tokenizer a preset uses)."""
    import tokenizers

    names = ["<unk>", "<s>", "</s>"] + [f"t{i}" for i in range(3, vocab)]
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(
        {name: i for i, name in enumerate(names)}, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([tokenizers.AddedToken(t, special=True) for t in names[:3]])
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    return directory


def choose_tokenizer(args: argparse.Namespace, vocab: int) -> tuple[str, str]:
    """(what EngineConfig.tokenizer gets, how to describe it in the records)."""
    if args.tokenizer:
        return args.tokenizer, args.tokenizer
    if importlib.util.find_spec("mistral_common") is not None:
        return args.preset, "mistral-v1 (bundled with mistral_common)"
    path = write_synthetic_tokenizer(Path(tempfile.mkdtemp(prefix="gpu-serving-tok-")), vocab)
    return str(path), "synthetic word-level (mistral_common not installed)"
