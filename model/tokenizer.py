"""`load_tokenizer`, which picks the implementation for a checkpoint:
`MistralV1Tokenizer` (model/tokenizer_mistral.py) or `HFTokenizer` (model/tokenizer_hf.py).

Both implement the `Tokenizer` protocol (model/tokenizer_protocol.py): encode text, format a
chat into prompt ids, decode, and give `IncrementalDetokenizer` (model/detokenizer.py) what it
needs for streaming.

Cheap to import: no torch, ray or grpc (the ingress imports this).
"""

from __future__ import annotations

from pathlib import Path

from model.config import PRESETS
from model.tokenizer_hf import HF_TOKENIZER_FILE, HFTokenizer, read_json
from model.tokenizer_mistral import MistralV1Tokenizer, bundled_mistral_v1_path
from model.tokenizer_protocol import Tokenizer

__all__ = [
    "HFTokenizer",
    "MistralV1Tokenizer",
    "Tokenizer",
    "bundled_mistral_v1_path",
    "load_model_tokenizer",
    "load_tokenizer",
]

_SP_FILES = ("tokenizer.model", "tokenizer.model.v1")
_MISTRAL_MARKERS = ("params.json",)  # mistral-inference "consolidated" checkpoints


def _is_mistral_checkpoint(directory: Path) -> bool:
    if any((directory / name).is_file() for name in _MISTRAL_MARKERS):
        return True
    return read_json(directory / "config.json").get("model_type") == "mistral"


def load_tokenizer(checkpoint_dir: str | Path) -> Tokenizer:
    """Pick the tokenizer for a checkpoint directory.

    - `tokenizer.model` (SentencePiece) -> `MistralV1Tokenizer`, unless the directory also has
      a `tokenizer.json` and is not a Mistral checkpoint (e.g. a Llama or TinyLlama one): its
      own chat template is then the right format, so -> `HFTokenizer`.
    - `tokenizer.json` alone -> `HFTokenizer`.
    - A Mistral checkpoint (params.json, or config.json with model_type "mistral") without
      tokenizer files -> the v1 tokenizer bundled with mistral_common.
    - `tokenizer.model.v3`, `tekken.json` (Mistral v0.3+) -> ValueError: not supported.
    """
    directory = Path(checkpoint_dir)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
    sp_file = next((directory / n for n in _SP_FILES if (directory / n).is_file()), None)
    has_hf = (directory / HF_TOKENIZER_FILE).is_file()
    is_mistral = _is_mistral_checkpoint(directory)
    if sp_file is not None and (is_mistral or not has_hf):
        return MistralV1Tokenizer.from_file(sp_file)
    if has_hf:
        return HFTokenizer.from_dir(directory)
    # A v0.3+ Mistral checkpoint ships tokenizer.model.v3 or tekken.json; falling back to the
    # bundled v1 file would tokenize its prompts wrongly without any error.
    newer = sorted(p.name for p in directory.glob("tokenizer.model.v*") if p.name not in _SP_FILES)
    newer += [p.name for p in directory.glob("tekken*.json")]
    if newer:
        raise ValueError(
            f"{directory} has {', '.join(newer)}: a newer Mistral tokenizer; only the v1 "
            "tokenizer (Mistral-7B v0.1/v0.2) is supported"
        )
    if is_mistral:
        return MistralV1Tokenizer.from_file(None)
    raise FileNotFoundError(
        f"no tokenizer in {directory}: looked for {', '.join(_SP_FILES)}, {HF_TOKENIZER_FILE}, "
        "and for params.json or a config.json with model_type 'mistral' (which use the bundled "
        "Mistral v1 tokenizer)"
    )


def load_model_tokenizer(source: str | Path) -> Tokenizer:
    """The tokenizer of a checkpoint directory or of a preset name (presets carry no files:
    the Mistral v1 tokenizer is the one they were trained with)."""
    if str(source) in PRESETS:
        return MistralV1Tokenizer.from_file(None)
    return load_tokenizer(Path(source))
