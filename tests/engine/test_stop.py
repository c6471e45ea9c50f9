"""Stop strings over streamed text: matches across chunks, earliest match, hold-back."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from serve.engine.stop import (
    StopMatch,
    StopStrings,
    check_stop,
    find_stop,
    num_held_back_chars,
)


def stream(chunks: list[str], stop: list[str], include: bool) -> tuple[list[str], str, str | None]:
    """Feed chunks as the engine does; return what the client saw after each chunk, the final
    output and the matched stop string. Asserts the streamed text only ever grows."""
    text, emitted, checked_len = "", "", 0
    seen: list[str] = []
    for chunk in chunks:
        text += chunk
        result = check_stop(text, checked_len, stop, include)
        checked_len = len(text)
        assert result.emit_len >= len(emitted)
        emitted = text[: result.emit_len]
        seen.append(emitted)
        if result.match is not None:
            return seen, text[: result.match.truncate_to], result.match.stop_str
    return seen, text, None  # finished for another reason: flush the held-back text


def test_worked_example_from_docstring() -> None:
    text = "The answer is 42.\nEND"
    match = find_stop(text, 19, ["END", "\n\n"], include_stop_str_in_output=False)
    assert match == StopMatch("END", start=18, truncate_to=18)
    match = find_stop(text, 19, ["END", "\n\n"], include_stop_str_in_output=True)
    assert match == StopMatch("END", start=18, truncate_to=21)
    assert find_stop("no stop here", 0, ["END"], False) is None
    assert find_stop("anything", 0, [], False) is None


def test_stop_string_spanning_several_chunks_is_never_partly_streamed() -> None:
    seen, output, stop_str = stream(["Hel", "lo S", "T", "OP now"], ["STOP"], include=False)
    assert seen == ["Hel", "Hello ", "Hello ", "Hello "]
    assert output == "Hello " and stop_str == "STOP"


def test_include_stop_str_in_output() -> None:
    seen, output, stop_str = stream(["Hel", "lo S", "T", "OP now"], ["STOP"], include=True)
    # Nothing is held back: a partial stop string is shown either way.
    assert seen == ["Hel", "Hello S", "Hello ST", "Hello STOP"]
    assert output == "Hello STOP" and stop_str == "STOP"


def test_false_alarm_is_released() -> None:
    seen, output, stop_str = stream(["ab#", "#", "x"], ["###"], include=False)
    assert seen == ["ab", "ab", "ab##x"]
    assert output == "ab##x" and stop_str is None


def test_check_stop_docstring_example() -> None:
    seen, output, _ = stream(["ab#", "#", "#c"], ["###"], include=False)
    assert seen == ["ab", "ab", "ab"] and output == "ab"


def test_earliest_of_several_stop_strings_regardless_of_list_order() -> None:
    for stop in (["END", "STOP"], ["STOP", "END"]):
        match = find_stop("a STOP b END", 0, stop, False)
        assert match == StopMatch("STOP", start=2, truncate_to=2)


def test_first_to_complete_wins_then_longest() -> None:
    # "c" completes (at 3) before "bcd" (at 4), as it would if text arrived char by char.
    assert find_stop("abcd", 0, ["bcd", "c"], False) == StopMatch("c", 2, 2)
    # Both end at 4: the one starting first, so no part of either is shown.
    assert find_stop("xabc", 0, ["bc", "abc"], False) == StopMatch("abc", 1, 1)


def test_only_the_unchecked_tail_is_searched() -> None:
    # An occurrence wholly inside the checked text was seen before; not found again.
    assert find_stop("STOP and more", 4, ["STOP"], False) is None
    # One that straddles the checked boundary is found.
    assert find_stop("xSTOP", 3, ["STOP"], False) == StopMatch("STOP", 1, 1)
    assert find_stop("xSTOP", 2, ["STOP"], False) == StopMatch("STOP", 1, 1)


def test_result_does_not_depend_on_chunking() -> None:
    rng = random.Random(0)
    text = "Q: what? A: it is ## not ### maybe #### END and more"
    stops = ["###", "END", "t is #"]
    _, whole, whole_stop = stream([text], stops, include=False)
    assert whole == "Q: what? A: i" and whole_stop == "t is #"
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(1, 12)))
        chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        seen, output, stop_str = stream(chunks, stops, include=False)
        assert (output, stop_str) == (whole, whole_stop)
        assert all(output.startswith(s) for s in seen)


@pytest.mark.parametrize(
    ("text", "stop", "held"),
    [
        ("Hello, wor", ["world!", "or not"], 3),
        ("Hello, wx", ["or not"], 0),
        ("Hello, o", ["world!", "or not"], 1),
        ("wo", ["world!"], 2),  # the whole text may be held
        ("ab##", ["###"], 2),
        ("ab#", ["#"], 0),  # a one-character stop string is never partial
        ("abc", [], 0),
        ("", ["###"], 0),
    ],
)
def test_num_held_back_chars(text: str, stop: list[str], held: int) -> None:
    assert num_held_back_chars(text, stop) == held


def test_stop_import_is_light() -> None:
    code = (
        "import sys, serve.engine.stop; sys.exit(bool({'torch', 'ray', 'grpc'} & set(sys.modules)))"
    )
    repo_root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], cwd=repo_root, check=False)
    assert result.returncode == 0


def test_prepared_stop_strings_answer_as_check_stop() -> None:
    """The engine's per-request matcher against the reference functions, on random text over
    a small alphabet (so that prefixes and matches are frequent)."""
    rng = random.Random(3)
    for _ in range(3000):
        stop = ["".join(rng.choice("ab#\n") for _ in range(rng.randint(1, 5)))
                for _ in range(rng.randint(1, 4))]
        include = rng.random() < 0.3
        text = "".join(rng.choice("ab#\nc") for _ in range(rng.randint(0, 12)))
        checked = rng.randint(0, len(text))
        prepared = StopStrings(stop, include)
        assert prepared.held_back(text) == num_held_back_chars(text, stop), (text, stop)
        assert prepared.check(text, checked) == check_stop(text, checked, stop, include)
