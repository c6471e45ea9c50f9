"""Mistral's v1 tokenizer (Mistral-7B v0.1/v0.2): SentencePiece encode/decode, `[INST]` chat.

Cheap to import: sentencepiece only (mistral_common is located, never imported).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import sentencepiece

from model.chat_template import encode_mistral_v1_chat


def bundled_mistral_v1_path() -> Path:
    """Path of the v1 `tokenizer.model` shipped inside the installed mistral_common package.

    Found through the import system, without importing mistral_common (it pulls in pydantic,
    numpy and more).
    """
    spec = importlib.util.find_spec("mistral_common")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "mistral_common is not installed, so there is no bundled Mistral v1 tokenizer: "
            "install mistral-common or put tokenizer.model in the checkpoint directory"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / "tokenizer.model.v1"
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"mistral_common at {list(spec.submodule_search_locations)} has no data/tokenizer.model.v1"
    )


@dataclass(frozen=True, eq=False)
class MistralV1Tokenizer:
    """Mistral's v1 tokenizer: 32,000-piece SentencePiece BPE with byte fallback.

    Encoding and decoding go straight to the sentencepiece library; the `[INST]` chat format is
    built in `model.chat_template` and matches mistral_common's v1 instruct tokenizer.
    """

    sp: sentencepiece.SentencePieceProcessor
    path: Path
    bos_token_id: int
    eos_token_id: int
    vocab_size: int
    special_token_ids: frozenset[int]

    @classmethod
    def from_file(cls, path: str | Path | None = None) -> MistralV1Tokenizer:
        """Load `path`, or the v1 model bundled with mistral_common when `path` is None."""
        path = Path(path) if path is not None else bundled_mistral_v1_path()
        sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        # v2+ models have [INST] as a control token and a different chat encoding; treating
        # one as v1 would silently produce prompts the model was not trained on.
        inst_id = sp.piece_to_id("[INST]")
        if inst_id != sp.unk_id() and sp.IsControl(inst_id):
            raise ValueError(
                f"{path} is a Mistral v2+ tokenizer ([INST] is a control token); only the v1 "
                "tokenizer (Mistral-7B v0.1/v0.2) is supported"
            )
        num_pieces = sp.get_piece_size()
        return cls(
            sp=sp,
            path=path,
            bos_token_id=sp.bos_id(),
            eos_token_id=sp.eos_id(),
            vocab_size=num_pieces,
            special_token_ids=frozenset(i for i in range(num_pieces) if sp.IsControl(i)),
        )

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids: list[int] = self.sp.encode(text)
        return [self.bos_token_id, *ids] if add_bos else ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        ids = list(ids)
        if skip_special_tokens:
            # Filtered out rather than left to sentencepiece, which treats a control token as a
            # start of text and drops the next piece's space: [▁a, </s>, ▁b] -> "a b", not "ab".
            return self.sp.decode([i for i in ids if i not in self.special_token_ids])
        return self._decode_keeping_special(ids)

    def _decode_keeping_special(self, ids: list[int]) -> str:
        """Decode with control tokens written out ("<s>", "</s>").

        Runs of ordinary tokens are decoded separately. sentencepiece drops the "▁" of a run's
        first piece; only a piece at index 0 should lose it (as HF's Llama tokenizer does), so
        other runs get it back. E.g. [<s>, ▁Hi, </s>, ▁you] -> "<s>" + " Hi" + "</s>" + " you".
        Keeping the space after a control token also keeps `IncrementalDetokenizer` exact when
        its window starts at one.
        """
        parts: list[str] = []
        run: list[int] = []

        def close_run() -> None:
            if not run:
                return
            text = self.sp.decode(run)
            if parts and self.sp.id_to_piece(run[0]).startswith("▁"):
                text = " " + text
            parts.append(text)
            run.clear()

        for token_id in ids:
            if token_id in self.special_token_ids:
                close_run()
                parts.append(self.sp.id_to_piece(token_id))
            else:
                run.append(token_id)
        close_run()
        return "".join(parts)

    def apply_chat_template(self, messages: Sequence[Mapping[str, str]],
                            continue_final_message: bool = False) -> list[int]:
        return encode_mistral_v1_chat(
            messages,
            encode=self.sp.encode,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
            continue_final=continue_final_message,
        )

    def appended_texts(self) -> dict[int, str]:
        """The text each normal piece adds when decoded after another normal piece.

        SentencePiece decodes normal pieces by joining their surfaces ("▁" read as a space)
        and dropping one leading space of the whole text, so after a normal piece a normal
        piece adds exactly its surface. Control, unknown, unused and byte pieces are left out:
        they decode by other rules. The incremental detokenizer uses this to skip a decode.
        """
        sp = self.sp
        return {i: sp.IdToPiece(i).replace("\u2581", " ") for i in range(self.vocab_size)
                if not (sp.IsControl(i) or sp.IsUnknown(i) or sp.IsUnused(i) or sp.IsByte(i))}

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self.sp.id_to_piece(i) for i in ids]
