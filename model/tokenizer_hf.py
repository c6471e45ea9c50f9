"""HF checkpoints: `tokenizer.json` through the `tokenizers` library, plus the Jinja chat
template from `tokenizer_config.json` (or `chat_template.jinja`)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tokenizers

from model.chat_template import render_chat_template

HF_TOKENIZER_FILE = "tokenizer.json"


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def _token_text(value: Any) -> str | None:
    # tokenizer_config.json stores a special token as a string or as a serialized AddedToken.
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _select_chat_template(value: Any) -> str | None:
    # A list of named templates is allowed; "default" is the one for plain chat.
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, Mapping)}
        value = named.get("default")
    return value if isinstance(value, str) else None


@dataclass(frozen=True, eq=False)
class HFTokenizer:
    """A checkpoint's `tokenizer.json` (the `tokenizers` library) plus its Jinja chat template."""

    tokenizer: tokenizers.Tokenizer
    path: Path
    bos_token_id: int | None
    eos_token_id: int
    vocab_size: int
    special_token_ids: frozenset[int]
    chat_template: str | None
    # Token texts the template sees, e.g. {"bos_token": "<s>", "eos_token": "</s>"}.
    template_tokens: Mapping[str, str]

    @classmethod
    def from_dir(cls, checkpoint_dir: str | Path) -> HFTokenizer:
        directory = Path(checkpoint_dir)
        tok = tokenizers.Tokenizer.from_file(str(directory / HF_TOKENIZER_FILE))
        config = read_json(directory / "tokenizer_config.json")
        template_tokens = {
            name: text
            for name in ("bos_token", "eos_token", "unk_token", "pad_token")
            if (text := _token_text(config.get(name))) is not None
        }

        def token_id(name: str) -> int | None:
            text = template_tokens.get(name)
            if text is None:
                return None
            found = tok.token_to_id(text)
            if found is None:
                raise ValueError(
                    f"{directory / 'tokenizer_config.json'}: {name} {text!r} is not in the "
                    "vocabulary of tokenizer.json"
                )
            return found

        eos_token_id = token_id("eos_token")
        if eos_token_id is None:
            # Some checkpoints name EOS only in generation_config.json (possibly as a list).
            eos = read_json(directory / "generation_config.json").get("eos_token_id")
            eos_token_id = eos[0] if isinstance(eos, list) and eos else eos
        if not isinstance(eos_token_id, int):
            raise ValueError(
                f"{directory}: no EOS token; set eos_token in tokenizer_config.json or "
                "eos_token_id in generation_config.json"
            )

        chat_template = _select_chat_template(config.get("chat_template"))
        jinja_file = directory / "chat_template.jinja"  # where newer transformers save it
        if chat_template is None and jinja_file.is_file():
            chat_template = jinja_file.read_text(encoding="utf-8")

        added = tok.get_added_tokens_decoder()
        return cls(
            tokenizer=tok,
            path=directory,
            bos_token_id=token_id("bos_token"),
            eos_token_id=eos_token_id,
            vocab_size=tok.get_vocab_size(with_added_tokens=True),
            special_token_ids=frozenset(i for i, t in added.items() if t.special),
            chat_template=chat_template,
            template_tokens=template_tokens,
        )

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """`add_bos` applies the checkpoint's own post-processor, as `AutoTokenizer.encode`
        does: it prepends <s> for Llama-style tokenizers and nothing for ChatML ones, whose
        "bos_token" (e.g. SmolLM2's <|im_start|>) is a turn marker, not a text prefix."""
        return self.tokenizer.encode(text, add_special_tokens=add_bos).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: Sequence[Mapping[str, str]],
                            continue_final_message: bool = False) -> list[int]:
        """Render the template, then encode the text as is: the template writes BOS and the
        turn markers itself (as transformers' `apply_chat_template(tokenize=True)` does).
        ``continue_final_message``: the last (assistant) message stays open."""
        if self.chat_template is None:
            raise ValueError(
                f"the checkpoint at {self.path} has no chat template (tokenizer_config.json "
                "'chat_template' or chat_template.jinja): send a plain prompt instead"
            )
        text = render_chat_template(self.chat_template, messages, self.template_tokens,
                                    continue_final_message)
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self.tokenizer.id_to_token(i) or "" for i in ids]
