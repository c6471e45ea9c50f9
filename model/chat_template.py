"""Chat formatting: message validation, Mistral's v1 `[INST]` format, and Jinja chat templates.

Two formats live here because a checkpoint brings one or the other:

- Mistral checkpoints use the v1 instruct format, implemented by hand so the token ids match
  `mistral_common`'s `MistralTokenizer.v1().encode_chat_completion` exactly (see
  `encode_mistral_v1_chat`).
- Other checkpoints ship a Jinja template in `tokenizer_config.json`; it is rendered the way
  `transformers`' `apply_chat_template` renders it (see `render_chat_template`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, NoReturn

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROLES = ("system", "user", "assistant")

# mistral_common joins several system messages, and a system prompt with the first user
# message, with a blank line.
_SYSTEM_JOIN = "\n\n"


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class MistralV1Turn:
    """One `[INST] user [/INST] assistant</s>` round; `assistant` is None for the open last turn."""

    user: str
    assistant: str | None


def parse_messages(messages: Sequence[Mapping[str, Any]],
                   continue_final: bool = False) -> list[ChatMessage]:
    """Check the shape every chat format needs: a non-empty list of {role, content} strings.

    The conversation must end with a user message, since the ids returned are a prompt for the
    assistant's next reply; or, with ``continue_final``, with the assistant message whose text
    the reply continues (a prefill of the answer).
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ValueError(
            f"messages must be a list of {{'role': ..., 'content': ...}} dicts, got "
            f"{type(messages).__name__}"
        )
    if not messages:
        raise ValueError("messages is empty: send at least one user message")
    parsed: list[ChatMessage] = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(
                f"messages[{index}] must be a dict with 'role' and 'content', "
                f"got {type(message).__name__}"
            )
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f"messages[{index}] has role {role!r}; use one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise ValueError(
                f"messages[{index}] ({role}) needs a string 'content', got {type(content).__name__}"
            )
        parsed.append(ChatMessage(role=role, content=content))
    if continue_final:
        if parsed[-1].role != "assistant" or not parsed[-1].content:
            raise ValueError(
                "continue_final_message needs the conversation to end with a non-empty "
                f"assistant message to continue, but the last message is {parsed[-1].role!r}"
            )
    elif parsed[-1].role != "user":
        raise ValueError(
            f"the conversation must end with a user message, but the last message is "
            f"{parsed[-1].role!r}: append the user's next message, or set "
            "continue_final_message to continue the assistant's"
        )
    return parsed


def mistral_v1_turns(messages: Sequence[Mapping[str, Any]],
                     continue_final: bool = False) -> list[MistralV1Turn]:
    """Validate a conversation for the v1 format and group it into rounds.

    Leading system messages become one system prompt, prepended to the FIRST user message with a
    blank line, as `mistral_common`'s `InstructTokenizerV1` does. The rest must alternate
    user/assistant, starting and ending with a user message (or, with ``continue_final``, an
    assistant message: the last turn's open reply).

    >>> mistral_v1_turns([{"role": "system", "content": "Be brief."},
    ...                   {"role": "user", "content": "Hi"},
    ...                   {"role": "assistant", "content": "Hello!"},
    ...                   {"role": "user", "content": "Bye"}])  # doctest: +NORMALIZE_WHITESPACE
    [MistralV1Turn(user='Be brief.\\n\\nHi', assistant='Hello!'),
     MistralV1Turn(user='Bye', assistant=None)]
    """
    parsed = parse_messages(messages, continue_final)
    num_system = 0
    while num_system < len(parsed) and parsed[num_system].role == "system":
        num_system += 1
    # Empty system messages are dropped, as mistral_common's normalizer drops them.
    system_parts = [m.content for m in parsed[:num_system] if m.content]
    dialogue = parsed[num_system:]
    for index, message in enumerate(dialogue, start=num_system):
        expected = "user" if (index - num_system) % 2 == 0 else "assistant"
        if message.role == "system":
            raise ValueError(
                f"messages[{index}] is a system message after the conversation started: "
                "put system messages before the first user message"
            )
        if message.role != expected:
            raise ValueError(
                f"messages[{index}] has role {message.role!r} but {expected!r} was expected: the "
                "conversation must alternate user/assistant/user/..., starting with a user "
                "message (after any system messages)"
            )
        if message.role == "assistant" and not message.content:
            raise ValueError(f"messages[{index}] is an assistant message with empty content")

    turns = [
        MistralV1Turn(
            user=dialogue[i].content,
            assistant=dialogue[i + 1].content if i + 1 < len(dialogue) else None,
        )
        for i in range(0, len(dialogue), 2)
    ]
    if system_parts:
        system_prompt = _SYSTEM_JOIN.join(system_parts)
        turns[0] = MistralV1Turn(
            user=system_prompt + _SYSTEM_JOIN + turns[0].user, assistant=turns[0].assistant
        )
    return turns


def encode_mistral_v1_chat(
    messages: Sequence[Mapping[str, Any]],
    encode: Callable[[str], list[int]],
    bos_token_id: int,
    eos_token_id: int,
    continue_final: bool = False,
) -> list[int]:
    """Token ids of a conversation in the v1 format, ready for the assistant's reply.

    `encode` turns text into ids without BOS/EOS. Each `[INST] ... [/INST]` block and each
    assistant reply is encoded on its own (so each gets SentencePiece's leading "▁"), exactly as
    `mistral_common` does; concatenating the text first would tokenize differently.

    Layout: `<s>` `[INST] u1 [/INST]` `a1` `</s>` `[INST] u2 [/INST]`; with
    ``continue_final`` the last reply stays open: `... [INST] u2 [/INST]` `a2` (no `</s>`), as
    `mistral_common` encodes an assistant message with ``prefix=True``.
    """
    ids = [bos_token_id]
    turns = mistral_v1_turns(messages, continue_final)
    for index, turn in enumerate(turns):
        ids += encode(f"[INST] {turn.user} [/INST]")
        if turn.assistant is not None:
            ids += encode(turn.assistant)
            if not (continue_final and index == len(turns) - 1):
                ids.append(eos_token_id)
    return ids


class _GenerationTag(Extension):
    """Accept `{% generation %}...{% endgeneration %}` (assistant-mask markers) and render the body.

    transformers uses the tag to find assistant tokens for training; serving only needs the text.
    """

    tags = {"generation"}

    def parse(self, parser: Parser) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _raise_exception(message: str) -> NoReturn:
    # Templates call this to reject conversations they cannot format (e.g. non-alternating roles).
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson HTML-escapes "<", ">" and "&", which would change the prompt text.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=16)
def compile_chat_template(source: str) -> jinja2.Template:
    """Compile a template in the same environment as transformers.

    Sandboxed because templates come with downloaded checkpoints and are untrusted code.
    trim_blocks/lstrip_blocks change whitespace, so they must match transformers for the ids
    to match.
    """
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationTag, loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise ValueError(f"the checkpoint's chat template does not compile: {exc}") from exc


def render_chat_template(
    source: str,
    messages: Sequence[Mapping[str, Any]],
    special_tokens: Mapping[str, str],
    continue_final: bool = False,
) -> str:
    """Render a conversation with `add_generation_prompt=True`; with ``continue_final``,
    without it and cut just after the final assistant message's text, so the reply goes on
    from there (as transformers' ``continue_final_message``)::

        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello! I am<|im_end|>\n"
        → "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello! I am"

    `special_tokens` maps names such as "bos_token"/"eos_token" to their text, which templates
    use (e.g. `{{ bos_token }}`).
    """
    parsed = parse_messages(messages, continue_final)
    try:
        text = compile_chat_template(source).render(
            messages=[{"role": m.role, "content": m.content} for m in parsed],
            tools=None,  # templates test `tools is not none`; an undefined name would pass that
            documents=None,
            add_generation_prompt=not continue_final,
            **special_tokens,
        )
    except jinja2.exceptions.TemplateError as exc:
        raise ValueError(f"the chat template rejected the conversation: {exc}") from exc
    return cut_after_final_message(text, parsed[-1].content) if continue_final else text


def cut_after_final_message(text: str, final: str) -> str:
    """The rendered conversation up to the end of its final message. Templates often strip
    a message's surrounding whitespace, so the stripped text is searched; its trailing
    whitespace is kept only where the template kept it."""
    stripped = final.strip()
    start = text.rfind(stripped)
    if not stripped or start < 0:
        raise ValueError("this model's chat template changes the final assistant message, so "
                         "it cannot be continued: leave continue_final_message unset")
    kept = final.lstrip()
    if text[start:start + len(kept)] == kept:
        return text[:start + len(kept)]
    return text[:start + len(stripped)]
