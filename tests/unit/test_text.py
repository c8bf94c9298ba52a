"""Incremental text and stop strings, with a fake tokenizer (pure logic)."""

from textgen_core.engine.text import TextState


class CharTokenizer:
    """Token id = a character's code point; enough to exercise the text logic."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i) for i in ids)


def feed(state: TextState, text: str) -> tuple[str, bool]:
    streamed, stopped = "", False
    for ch in text:
        stopped = state.push(CharTokenizer(), ord(ch))
        streamed += state.take_delta(final=stopped)
        if stopped:
            break
    return streamed, stopped


def test_text_accumulates_and_streams_everything() -> None:
    state = TextState(stop=[])
    streamed, stopped = feed(state, "hello world")
    assert (streamed, stopped, state.text) == ("hello world", False, "hello world")


def test_stop_string_cuts_text_and_is_never_streamed() -> None:
    state = TextState(stop=["END"])
    streamed, stopped = feed(state, "abc ENDxyz")
    assert stopped and state.text == "abc " and streamed == "abc "


def test_partial_stop_prefix_is_held_back_then_released() -> None:
    state = TextState(stop=["STOP"])
    state.push(CharTokenizer(), ord("a"))
    state.push(CharTokenizer(), ord("S"))
    state.push(CharTokenizer(), ord("T"))
    assert state.take_delta() == "a"  # "ST" might begin "STOP"
    state.push(CharTokenizer(), ord("x"))
    assert state.take_delta() == "STx"


def test_earliest_of_several_stop_strings_wins() -> None:
    state = TextState(stop=["\n\n", "3."])
    _, stopped = feed(state, "1. a\n2. b\n3. c\n\n")
    assert stopped and state.text == "1. a\n2. b\n"
