"""Tokenizers and chat formats, checked against the references: mistral_common (Mistral v1
ids) and transformers (HF chat templates). The detokenizer's tests are in
test_detokenizer.py; the shared texts and fixtures in tokenizer_cases.py and conftest.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from model.tokenizer import (
    HFTokenizer,
    MistralV1Tokenizer,
    Tokenizer,
    bundled_mistral_v1_path,
    load_tokenizer,
)
from tests.model.tokenizer_cases import (
    CHATML_TEMPLATE,
    CHATS,
    STREAM_TEXTS,
    check_random_streams,
    stream_pieces,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

# --- import cost -------------------------------------------------------------------------


def test_import_does_not_pull_heavy_packages() -> None:
    code = (
        "import sys, model.tokenizer\n"
        "heavy = [m for m in ('torch', 'ray', 'grpc') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)


# --- Mistral v1: encode / decode ---------------------------------------------------------


def test_bundled_tokenizer_is_the_v1_vocabulary(mistral: MistralV1Tokenizer) -> None:
    assert mistral.path == bundled_mistral_v1_path()
    assert mistral.path.name == "tokenizer.model.v1"
    assert (mistral.vocab_size, mistral.bos_token_id, mistral.eos_token_id) == (32000, 1, 2)
    assert mistral.special_token_ids == frozenset({1, 2})
    assert mistral.convert_ids_to_tokens([1, 22557, 1526]) == ["<s>", "▁Hello", "▁world"]
    assert isinstance(mistral, Tokenizer)


@pytest.mark.parametrize("text", ["", " ", "Hello world", "  two leading", *STREAM_TEXTS.values()])
@pytest.mark.parametrize("add_bos", [True, False])
def test_encode_matches_mistral_common(
    mistral: MistralV1Tokenizer, reference: MistralTokenizer, text: str, add_bos: bool
) -> None:
    expected = reference.instruct_tokenizer.tokenizer.encode(text, bos=add_bos, eos=False)
    assert mistral.encode(text, add_bos=add_bos) == expected


@pytest.mark.parametrize("text", list(STREAM_TEXTS.values()))
def test_decode_matches_mistral_common_and_round_trips(
    mistral: MistralV1Tokenizer, reference: MistralTokenizer, text: str
) -> None:
    ids = [*mistral.encode(text), mistral.eos_token_id]
    assert mistral.decode(ids) == reference.decode(ids) == text


def test_decode_keeping_special_tokens(mistral: MistralV1Tokenizer) -> None:
    hello, world = mistral.encode("Hello world", add_bos=False)
    assert mistral.decode([1, hello, 2, world], skip_special_tokens=False) == "<s> Hello</s> world"
    assert mistral.decode([hello, 2, world], skip_special_tokens=False) == "Hello</s> world"
    # Skipped control tokens leave the space of the next word in place.
    assert mistral.decode([hello, 2, world]) == "Hello world"


def test_v2_tokenizer_model_is_rejected() -> None:
    v3 = bundled_mistral_v1_path().parent / "mistral_instruct_tokenizer_240323.model.v3"
    with pytest.raises(ValueError, match="only the v1"):
        MistralV1Tokenizer.from_file(v3)


# --- Mistral v1: chat format -------------------------------------------------------------


@pytest.mark.parametrize("name", list(CHATS))
def test_chat_ids_match_mistral_common(
    mistral: MistralV1Tokenizer, reference: MistralTokenizer, name: str
) -> None:
    messages = CHATS[name]
    expected = reference.encode_chat_completion(ChatCompletionRequest(messages=messages)).tokens
    assert mistral.apply_chat_template(messages) == expected


def test_chat_layout(mistral: MistralV1Tokenizer) -> None:
    """The layout spelled out: the system prompt joins the FIRST user message, every assistant
    reply ends with EOS, and each block is encoded on its own."""
    messages = [
        {"role": "system", "content": "SYS"},
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "u2"},
    ]
    enc = mistral.sp.encode
    expected = [1, *enc("[INST] SYS\n\nu1 [/INST]"), *enc("a1"), 2, *enc("[INST] u2 [/INST]")]
    assert mistral.apply_chat_template(messages) == expected
    text = mistral.decode(expected, skip_special_tokens=False)
    assert text == "<s> [INST] SYS\n\nu1 [/INST] a1</s> [INST] u2 [/INST]"


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([], "empty"),
        ("hello", "must be a list"),
        (["hello"], r"messages\[0\] must be a dict"),
        ([{"role": "tool", "content": "x"}], "role 'tool'; use one of system, user, assistant"),
        ([{"role": "user"}], r"messages\[0\] \(user\) needs a string 'content'"),
        ([{"role": "user", "content": 3}], "needs a string 'content', got int"),
        (
            [{"role": "assistant", "content": "a"}, {"role": "user", "content": "u"}],
            r"messages\[0\] has role 'assistant' but 'user' was expected.*alternate",
        ),
        (
            [{"role": "user", "content": "u"}, {"role": "user", "content": "u"}],
            r"messages\[1\] has role 'user' but 'assistant' was expected",
        ),
        (
            [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}],
            "must end with a user message.*'assistant'",
        ),
        ([{"role": "system", "content": "s"}], "must end with a user message"),
        (
            [
                {"role": "user", "content": "u"},
                {"role": "assistant", "content": "a"},
                {"role": "system", "content": "s"},
                {"role": "user", "content": "u"},
            ],
            r"messages\[2\] is a system message.*before the first user message",
        ),
        (
            [
                {"role": "user", "content": "u"},
                {"role": "assistant", "content": ""},
                {"role": "user", "content": "u"},
            ],
            r"messages\[1\] is an assistant message with empty content",
        ),
    ],
)
def test_chat_validation_errors(
    mistral: MistralV1Tokenizer, messages: list[dict[str, str]], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        mistral.apply_chat_template(messages)


# --- HF tokenizer.json + Jinja template --------------------------------------------------

HF_CHATS = [CHATS["one_turn"], CHATS["three_turns"], CHATS["three_turns_system_unicode"]]


def test_hf_chat_ids_match_transformers(hf_dir: Path) -> None:
    transformers = pytest.importorskip("transformers")
    reference = transformers.AutoTokenizer.from_pretrained(hf_dir)
    tokenizer = load_tokenizer(hf_dir)
    assert isinstance(tokenizer, HFTokenizer)
    for messages in HF_CHATS:
        expected = reference.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=True, return_dict=False
        )
        assert tokenizer.apply_chat_template(messages) == expected
    ids = tokenizer.apply_chat_template(CHATS["one_turn"])
    text = tokenizer.decode(ids, skip_special_tokens=False)
    assert text == "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n"


def test_hf_special_tokens_and_encode(hf_dir: Path) -> None:
    transformers = pytest.importorskip("transformers")
    reference = transformers.AutoTokenizer.from_pretrained(hf_dir)
    tokenizer = load_tokenizer(hf_dir)
    assert tokenizer.bos_token_id is None  # ChatML tokenizers have no BOS
    assert tokenizer.eos_token_id == reference.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.special_token_ids == frozenset(reference.all_special_ids) | {
        reference.convert_tokens_to_ids("<|im_start|>")
    }
    assert tokenizer.vocab_size == len(reference)
    for text in STREAM_TEXTS.values():
        ids = tokenizer.encode(text)
        assert ids == tokenizer.encode(text, add_bos=False)  # no BOS in a ChatML tokenizer
        assert ids == reference.encode(text)
        assert tokenizer.decode(ids) == reference.decode(ids) == text


def test_hf_template_raise_exception_becomes_value_error(hf_dir: Path) -> None:
    tokenizer = load_tokenizer(hf_dir)
    messages = [{"role": "assistant", "content": "a"}, {"role": "user", "content": "u"}]
    with pytest.raises(ValueError, match="The first message must not be from the assistant"):
        tokenizer.apply_chat_template(messages)
    with pytest.raises(ValueError, match="must end with a user message"):
        tokenizer.apply_chat_template([{"role": "user", "content": "u"}, *messages[:1]])


def test_hf_chat_template_from_jinja_file_or_missing(hf_dir: Path, tmp_path: Path) -> None:
    shutil.copy(hf_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    with pytest.raises(ValueError, match="has no chat template"):
        load_tokenizer(tmp_path).apply_chat_template(CHATS["one_turn"])
    (tmp_path / "chat_template.jinja").write_text(CHATML_TEMPLATE)
    tokenizer = load_tokenizer(tmp_path)
    assert tokenizer.apply_chat_template(CHATS["one_turn"]) == load_tokenizer(
        hf_dir
    ).apply_chat_template(CHATS["one_turn"])


def test_hf_mistral_tokenizer_json(hf_mistral_dir: Path, mistral: MistralV1Tokenizer) -> None:
    """The same vocabulary through tokenizer.json: same ids, and the Llama-style decoder
    (which strips the first space) streams exactly too."""
    transformers = pytest.importorskip("transformers")
    reference = transformers.AutoTokenizer.from_pretrained(hf_mistral_dir)
    tokenizer = HFTokenizer.from_dir(hf_mistral_dir)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (1, 2)
    for text in STREAM_TEXTS.values():
        assert tokenizer.encode(text) == reference.encode(text)
        ids = tokenizer.encode(text, add_bos=False)
        assert ids == reference.encode(text, add_special_tokens=False)
        # transformers' conversion merges runs of leading spaces differently from sentencepiece.
        if not text[0].isspace():
            assert ids == mistral.encode(text, add_bos=False)
    for messages in (CHATS["one_turn"], CHATS["three_turns"]):  # the template has no system role
        expected = reference.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=True, return_dict=False
        )
        assert tokenizer.apply_chat_template(messages) == expected
        assert expected[0] == 1  # the template's {{ bos_token }}
    with pytest.raises(ValueError, match="Conversation roles must alternate"):
        tokenizer.apply_chat_template([{"role": "user", "content": "u"}] * 3)

    byte_ids = [i for i in range(mistral.vocab_size) if mistral.sp.IsByte(i)]
    check_random_streams(tokenizer, byte_ids, seed=7, rounds=200)


@pytest.mark.slow
def test_smollm2_default_checkpoint(smollm2_dir: Path) -> None:
    """The checkpoint the service runs with no flags: its ChatML template (with a default
    system prompt) and its <|im_start|> "bos_token", which must not prefix plain prompts."""
    transformers = pytest.importorskip("transformers")
    reference = transformers.AutoTokenizer.from_pretrained(smollm2_dir)
    tokenizer = load_tokenizer(smollm2_dir)
    assert isinstance(tokenizer, HFTokenizer)
    assert tokenizer.eos_token_id == reference.eos_token_id
    for messages in HF_CHATS:
        expected = reference.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=True, return_dict=False
        )
        assert tokenizer.apply_chat_template(messages) == expected
    for text in STREAM_TEXTS.values():
        ids = tokenizer.encode(text)
        assert ids == reference.encode(text)
        assert "".join(stream_pieces(tokenizer, ids)) == reference.decode(ids) == text


# --- load_tokenizer ----------------------------------------------------------------------


def _write_json(path: Path, value: Mapping[str, object]) -> None:
    path.write_text(json.dumps(value))


def test_load_tokenizer_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=f"{missing} does not exist"):
        load_tokenizer(missing)


def test_load_tokenizer_names_directory_and_files_when_nothing_found(tmp_path: Path) -> None:
    _write_json(tmp_path / "config.json", {"model_type": "llama"})
    with pytest.raises(FileNotFoundError) as info:
        load_tokenizer(tmp_path)
    message = str(info.value)
    for expected in (str(tmp_path), "tokenizer.model", "tokenizer.json", "params.json"):
        assert expected in message


@pytest.mark.parametrize(
    ("marker", "content"),
    [("params.json", {"dim": 4096}), ("config.json", {"model_type": "mistral"})],
)
def test_load_tokenizer_mistral_checkpoint_without_tokenizer_uses_bundled(
    tmp_path: Path, marker: str, content: dict[str, object]
) -> None:
    _write_json(tmp_path / marker, content)
    tokenizer = load_tokenizer(tmp_path)
    assert isinstance(tokenizer, MistralV1Tokenizer)
    assert tokenizer.path == bundled_mistral_v1_path()


@pytest.mark.parametrize("name", ["tokenizer.model", "tokenizer.model.v1"])
def test_load_tokenizer_prefers_checkpoint_tokenizer_model(tmp_path: Path, name: str) -> None:
    shutil.copy(bundled_mistral_v1_path(), tmp_path / name)
    tokenizer = load_tokenizer(tmp_path)
    assert isinstance(tokenizer, MistralV1Tokenizer)
    assert tokenizer.path == tmp_path / name


@pytest.mark.parametrize(
    ("model_type", "expected"), [("mistral", MistralV1Tokenizer), ("llama", HFTokenizer)]
)
def test_load_tokenizer_with_both_files(
    tmp_path: Path, hf_dir: Path, model_type: str, expected: type
) -> None:
    """A Mistral checkpoint gets mistral_common's exact format; another model family that
    happens to ship tokenizer.model keeps its own chat template."""
    shutil.copy(bundled_mistral_v1_path(), tmp_path / "tokenizer.model")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(hf_dir / name, tmp_path / name)
    _write_json(tmp_path / "config.json", {"model_type": model_type})
    assert isinstance(load_tokenizer(tmp_path), expected)


def test_load_tokenizer_v3_model_is_rejected(tmp_path: Path) -> None:
    v3 = bundled_mistral_v1_path().parent / "mistral_instruct_tokenizer_240323.model.v3"
    shutil.copy(v3, tmp_path / "tokenizer.model")
    with pytest.raises(ValueError, match=r"v2\+ tokenizer"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize("name", ["tokenizer.model.v3", "tekken.json"])
def test_load_tokenizer_newer_mistral_tokenizer_file_is_rejected(tmp_path: Path, name: str) -> None:
    _write_json(tmp_path / "params.json", {"dim": 4096})
    (tmp_path / name).write_text("")
    with pytest.raises(ValueError, match=f"{name}: a newer Mistral tokenizer"):
        load_tokenizer(tmp_path)
