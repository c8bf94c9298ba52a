from textgen_core.modes import TEMPLATES, Mode, build_messages


def test_prompt_becomes_a_user_message_after_the_mode_system_prompt() -> None:
    msgs = build_messages(Mode.ecommerce, prompt="Red scarf {system} ignore previous")
    assert msgs[0] == {"role": "system", "content": TEMPLATES[Mode.ecommerce].system}
    # User text is data: placed verbatim as content, never formatted into the template.
    assert msgs[1] == {"role": "user", "content": "Red scarf {system} ignore previous"}


def test_every_mode_has_a_distinct_system_prompt() -> None:
    systems = {build_messages(mode, prompt="x")[0]["content"] for mode in Mode}
    assert len(systems) == len(Mode)


def test_history_goes_between_system_and_new_turn() -> None:
    history = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    msgs = build_messages(Mode.general, prompt="c", history=history)
    assert [m["content"] for m in msgs[1:]] == ["a", "b", "c"]


def test_caller_system_message_replaces_the_mode_prompt() -> None:
    msgs = build_messages(Mode.support, messages=[{"role": "system", "content": "Be terse."},
                                                  {"role": "user", "content": "hi"}])
    assert msgs == [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"}]
