"""Continuing the final assistant message (a prefill of the answer), checked against the
references: mistral_common's ``prefix=True`` assistant message for the Mistral v1 format,
transformers' ``continue_final_message`` for the default checkpoint's ChatML template."""

from __future__ import annotations

from pathlib import Path

import pytest
from mistral_common.protocol.instruct.messages import AssistantMessage, UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from model.chat_template import cut_after_final_message
from model.tokenizer import MistralV1Tokenizer, load_tokenizer

CONVERSATIONS = {
    "one_turn": [{"role": "user", "content": "Name a colour."},
                 {"role": "assistant", "content": "The colour is"}],
    "two_turns": [{"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello!"},
                  {"role": "user", "content": "Write JSON."},
                  {"role": "assistant", "content": '{"name": "'}],
    "trailing_space": [{"role": "user", "content": "Count:"},
                       {"role": "assistant", "content": "1, 2, "}],
}


def reference_message(message: dict[str, str], last: bool) -> UserMessage | AssistantMessage:
    if message["role"] == "user":
        return UserMessage(content=message["content"])
    return AssistantMessage(content=message["content"], prefix=last)


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_mistral_v1_continuation_matches_mistral_common(name: str) -> None:
    messages = CONVERSATIONS[name]
    reference = MistralTokenizer.v1()
    request = ChatCompletionRequest(messages=[
        reference_message(m, i == len(messages) - 1) for i, m in enumerate(messages)])
    expected = reference.encode_chat_completion(request).tokens
    tokenizer = MistralV1Tokenizer.from_file()
    assert tokenizer.apply_chat_template(messages, continue_final_message=True) == expected
    assert expected[-1] != tokenizer.eos_token_id


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_chatml_continuation_matches_transformers(smollm2_dir: Path, name: str) -> None:
    transformers = pytest.importorskip("transformers")
    reference = transformers.AutoTokenizer.from_pretrained(smollm2_dir)
    messages = CONVERSATIONS[name]
    expected = reference.apply_chat_template(messages, tokenize=True, return_dict=False,
                                             continue_final_message=True,
                                             add_generation_prompt=False)
    tokenizer = load_tokenizer(smollm2_dir)
    assert tokenizer.apply_chat_template(messages, continue_final_message=True) == expected
    text = tokenizer.decode(expected, skip_special_tokens=False)
    assert text.rstrip().endswith(messages[-1]["content"].rstrip())


def test_continuation_needs_a_final_assistant_message() -> None:
    tokenizer = MistralV1Tokenizer.from_file()
    user_last = [{"role": "user", "content": "Hi"}]
    with pytest.raises(ValueError, match="end with a non-empty assistant message"):
        tokenizer.apply_chat_template(user_last, continue_final_message=True)
    with pytest.raises(ValueError, match="set continue_final_message"):
        tokenizer.apply_chat_template(CONVERSATIONS["one_turn"])


def test_a_template_that_rewrites_the_final_message_cannot_continue_it() -> None:
    assert cut_after_final_message("<u>Hi</u><a>Hello </a>", "Hello ") == "<u>Hi</u><a>Hello "
    # The template stripped the trailing space: the cut keeps what the template wrote.
    assert cut_after_final_message("<u>Hi</u><a>Hello</a>", "Hello ") == "<u>Hi</u><a>Hello"
    with pytest.raises(ValueError, match="cannot be continued"):
        cut_after_final_message("<u>Hi</u><a>HELLO</a>", "Hello")
