"""The batching engine with the real model, in-process: what a row produces must not depend on
its batchmates, and cancel / limits act on one row only."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from transformers import DynamicCache

from tests.conftest import Stack, launch_stack
from textgen_core.engine.batching import EmptyPrompt, Engine, PromptTooLong
from textgen_core.engine.loader import LoadedModel, load
from textgen_core.engine.slots import MIN_WIDTH, RowsKV, SlotCache
from textgen_core.jobs import SamplingParams
from textgen_core.modes import Mode, build_messages
from textgen_core.settings import DEFAULT_MODEL_ID, Settings

# Generous: on a loaded two-core machine a bf16 step can take seconds; no test asserts a duration.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]
WAIT = 600

GREEDY = SamplingParams(temperature=0, max_tokens=24)


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    """float32, as on a CPU without native bf16 (the stack's workers take the machine's default)."""
    settings = Settings(_env_file=None)
    return load(settings.models[0].model_copy(update={"dtype": "float32"}), settings.cache_dir)


@pytest.fixture
def engine(model: LoadedModel) -> Iterator[Engine]:
    eng = Engine(model, max_batch=8, batch_wait_s=0.05).start()
    yield eng
    eng.stop()


def ids(model: LoadedModel, prompt: str) -> list[int]:
    return list(model.tokenizer.apply_chat_template(build_messages(Mode.general, prompt=prompt),
                                                    add_generation_prompt=True, tokenize=True, return_dict=False))


OTHERS = ["Write a poem about the sea.", "List five animals.", "Explain gravity briefly.",
          "What is 2 + 2? Explain in detail."]


def test_greedy_text_is_the_same_alone_and_in_a_batch(model: LoadedModel, engine: Engine) -> None:
    alone = engine.submit("solo", ids(model, "Describe a red apple."), GREEDY).result(WAIT)
    assert alone.batch_size == 1
    mixed = [engine.submit(f"o{i}", ids(model, p), SamplingParams(temperature=0.9, max_tokens=30, seed=i))
             for i, p in enumerate(OTHERS)]
    inside = engine.submit("in-batch", ids(model, "Describe a red apple."), GREEDY)
    result = inside.result(WAIT)
    for f in mixed:
        f.result(WAIT)
    assert result.batch_size >= 2
    assert result.text == alone.text
    assert result.completion_tokens == alone.completion_tokens


def test_rows_joining_and_leaving_do_not_change_a_greedy_row(model: LoadedModel, engine: Engine) -> None:
    long = SamplingParams(temperature=0, max_tokens=112)
    prompt = ids(model, "Write a long story about a fox.")
    alone = engine.submit("long-alone", prompt, long).result(WAIT)
    # The row outgrows the KV slots' first width while visitors come and go, so they grow under it.
    assert len(prompt) + alone.completion_tokens > MIN_WIDTH
    running = engine.submit("long", prompt, long)
    visitors = []
    for i, prompt in enumerate(OTHERS * 2):  # rows of several lengths join at different steps, then leave
        start = engine.steps
        while engine.steps < start + 2 and not running.done():
            time.sleep(0.005)
        params = SamplingParams(temperature=0.7 if i % 2 else 0, max_tokens=3 + i, seed=i)
        visitors.append(engine.submit(f"v{i}", ids(model, prompt), params))
    result = running.result(WAIT)
    sizes = [f.result(WAIT).batch_size for f in visitors]
    assert max(sizes) >= 2, "the visitors shared steps with the long row"
    assert result.text == alone.text
    assert result.completion_tokens == alone.completion_tokens


def test_in_bfloat16_too_greedy_text_is_the_same_alone_admitted_together_and_joining_later() -> None:
    """bf16 rounds every layer's activations to 8 bits, so any difference in how a row's sums are
    grouped shows in its text within a few dozen tokens: what fp32's margin hides, this finds."""
    settings = Settings(_env_file=None)
    half = load(settings.models[0].model_copy(update={"dtype": "bfloat16"}), settings.cache_dir)
    assert (half.dtype, half.weights) == ("bfloat16", "int8")  # on a CPU bf16 goes with int8 weights
    params = SamplingParams(temperature=0, max_tokens=64)
    prompts = OTHERS + ["Describe a red apple.", "Name three rivers and say something about each of them, please."]
    eng = Engine(half, max_batch=8, batch_wait_s=0.1).start()
    try:
        alone = [eng.submit(f"a{i}", ids(half, p), params).result(WAIT) for i, p in enumerate(prompts)]
        together = [eng.submit(f"t{i}", ids(half, p), params) for i, p in enumerate(prompts)]
        joining = []
        for i, p in enumerate(prompts):  # rows join a running batch at different steps and widths
            start = eng.steps
            while eng.steps < start + 3 and not all(f.done() for f in together):
                time.sleep(0.005)
            joining.append(eng.submit(f"j{i}", ids(half, p), params))
        together_results = [f.result(WAIT) for f in together]
        joining_results = [f.result(WAIT) for f in joining]
    finally:
        eng.stop()
    assert max(r.batch_size for r in together_results) >= 4
    assert [r.text for r in together_results] == [r.text for r in alone]
    assert [r.text for r in joining_results] == [r.text for r in alone]
    assert all(r.completion_tokens > 8 for r in alone)


PASSAGE = ("The lighthouse stood at the edge of the cliff, its white paint worn by a hundred winters. Every "
           "night the keeper climbed the narrow stairs, trimmed the wick and watched the beam sweep across the "
           "dark water, so that the fishing boats could find their way home through the fog.")


def perplexity(lm: LoadedModel, text: str) -> float:
    """Token by token, as decoding steps compute (with int8 weights, a prefill takes the bf16 ones)."""
    ids = torch.tensor([lm.tokenizer(text)["input_ids"]])
    cache = DynamicCache()
    with torch.no_grad():
        logits = torch.cat([lm.model(input_ids=ids[:, i:i + 1], use_cache=True, **{lm.cache_kwarg: cache}).logits
                            for i in range(ids.shape[1])], dim=1).float()
    return float(torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).exp())


def test_int8_weights_keep_the_models_perplexity_within_a_few_percent_of_float32(model: LoadedModel) -> None:
    """The text stays the model's: int8 weights with bf16 activations predict a plain English passage
    about as well as float32 does."""
    settings = Settings(_env_file=None)
    int8 = load(settings.models[0].model_copy(update={"dtype": "bfloat16", "weights": "int8"}), settings.cache_dir)
    full, small = perplexity(model, PASSAGE), perplexity(int8, PASSAGE)
    assert model.weights == "full" and model.dtype == "float32"
    assert small < full * 1.05, (full, small)


def test_seeded_sampling_is_reproducible_across_batches(model: LoadedModel, engine: Engine) -> None:
    params = SamplingParams(temperature=1.0, top_p=0.9, top_k=40, seed=1234, max_tokens=24)
    first = engine.submit("s1", ids(model, "Invent a name for a cat."), params).result(WAIT)
    crowd = [engine.submit(f"c{i}", ids(model, p), GREEDY) for i, p in enumerate(OTHERS)]
    second = engine.submit("s2", ids(model, "Invent a name for a cat."), params).result(WAIT)
    for f in crowd:
        f.result(WAIT)
    assert second.text == first.text
    other_seed = engine.submit("s3", ids(model, "Invent a name for a cat."),
                               params.model_copy(update={"seed": 99})).result(WAIT)
    assert other_seed.text != first.text


def test_cancel_stops_one_row_and_leaves_the_others_intact(model: LoadedModel, engine: Engine) -> None:
    solo = {p: engine.submit(f"solo{i}", ids(model, p), GREEDY).result(WAIT) for i, p in enumerate(OTHERS[:2])}
    long_row = engine.submit("long", ids(model, "Write a very long story about a dragon."),
                             SamplingParams(temperature=0, max_tokens=200))
    others = {p: engine.submit(f"b{i}", ids(model, p), GREEDY) for i, p in enumerate(OTHERS[:2])}
    time.sleep(0.5)
    engine.cancel("long")
    canceled = long_row.result(WAIT)
    assert canceled.finish_reason == "canceled"
    assert canceled.completion_tokens < 200
    for prompt, future in others.items():
        result = future.result(WAIT)
        assert result.text == solo[prompt].text


def test_max_tokens_stop_strings_and_time_limit(model: LoadedModel) -> None:
    eng = Engine(model, max_batch=4, time_limit_s=0.3).start()
    try:
        slow = eng.submit("t", ids(model, "Write a long essay about rivers."),
                          SamplingParams(temperature=0, max_tokens=1000)).result(WAIT)
        assert slow.finish_reason == "time_limit"
        assert 0 < slow.completion_tokens < 1000
    finally:
        eng.stop()
    eng = Engine(model, max_batch=4).start()
    try:
        capped = eng.submit("m", ids(model, "Write a long essay about rivers."),
                            SamplingParams(temperature=0, max_tokens=5)).result(WAIT)
        assert (capped.finish_reason, capped.completion_tokens) == ("length", 5)
        free = eng.submit("f", ids(model, "List the numbers from 1 to 10, one per line."),
                          SamplingParams(temperature=0, max_tokens=60)).result(WAIT)
        stopped = eng.submit("s", ids(model, "List the numbers from 1 to 10, one per line."),
                             SamplingParams(temperature=0, max_tokens=60, stop=["5"])).result(WAIT)
        assert stopped.finish_reason == "stop"
        assert "5" not in stopped.text
        assert free.text.startswith(stopped.text)
    finally:
        eng.stop()


def test_prompt_longer_than_the_context_is_refused(model: LoadedModel, engine: Engine) -> None:
    with pytest.raises(PromptTooLong, match="context"):
        engine.submit("big", [1] * (model.context_length - 10), SamplingParams(max_tokens=64))


def test_an_empty_prompt_is_refused_at_submit_alone_or_beside_others(model: LoadedModel, engine: Engine) -> None:
    """Regression: alone it failed inside the model; beside another row it was padded and 'succeeded'."""
    other = engine.submit("other", ids(model, "Name a colour."), GREEDY)
    with pytest.raises(EmptyPrompt, match="empty"):
        engine.submit("empty", [], GREEDY)
    assert other.result(WAIT).completion_tokens > 0


def test_a_prompt_the_model_cannot_take_fails_alone_and_never_hangs(model: LoadedModel, engine: Engine) -> None:
    """A prefill that raises (here: a token id past the vocabulary) fails its own rows; rows already
    running go on."""
    running = engine.submit("long", ids(model, "Write a long story about a dragon."),
                            SamplingParams(temperature=0, max_tokens=40))
    deadline = time.monotonic() + WAIT
    while not engine.running:
        assert time.monotonic() < deadline, "the first row never started"
        time.sleep(0.01)
    bad = engine.submit("unknown", [10 ** 9], GREEDY)
    assert bad.exception(timeout=120) is not None  # a TimeoutError here: the row was lost, its job would hang
    result = running.result(WAIT)  # raised before: its batch was failed with the bad row's error
    assert result.finish_reason in ("length", "stop") and result.completion_tokens > 0
    again = engine.submit("after", ids(model, "Say hi."), SamplingParams(temperature=0, max_tokens=4)).result(WAIT)
    assert again.completion_tokens > 0


class FailingAdd:
    """``SlotCache.add`` that raises ``exc`` on its next call once armed, then works again."""

    def __init__(self, exc: Exception):
        self.exc, self.armed, self.raised = exc, False, 0
        self.real = SlotCache.add

    @classmethod
    def install(cls, monkeypatch: pytest.MonkeyPatch, exc: Exception) -> FailingAdd:
        add = cls(exc)

        def failing_add(cache: SlotCache, kv: RowsKV) -> None:  # a function: it binds as a method
            if add.armed:
                add.armed, add.raised = False, add.raised + 1
                raise add.exc
            add.real(cache, kv)

        monkeypatch.setattr(SlotCache, "add", failing_add)
        return add


def wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_a_row_that_cannot_join_the_batch_fails_alone_and_never_hangs(
        model: LoadedModel, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A join into the running slots that raises (not for memory) fails the joining row; the
    batch's slots are left as they were, so the running row goes on and writes its own text."""
    story = ids(model, "Write a long story about a dragon.")
    params = SamplingParams(temperature=0, max_tokens=40)
    expected = engine.submit("story-alone", story, params).result(WAIT)
    add = FailingAdd.install(monkeypatch, RuntimeError("simulated: slots refused the rows"))
    running = engine.submit("story", story, params)
    wait_until(lambda: engine.running == 1, "the first row never started")
    add.armed = True
    joiner = engine.submit("joiner", ids(model, "Say hi."), GREEDY)
    assert isinstance(joiner.exception(timeout=120), RuntimeError)  # a TimeoutError: the row was lost
    assert add.raised == 1
    result = running.result(WAIT)
    assert result.text == expected.text and result.finish_reason == expected.finish_reason
    again = engine.submit("after", ids(model, "Say hi."), SamplingParams(temperature=0, max_tokens=4)).result(WAIT)
    assert again.completion_tokens > 0


def fail_parked_rows_coming_back(monkeypatch: pytest.MonkeyPatch, exc: Exception) -> FailingAdd:
    """Arms ``add`` (once) on the engine's thread just before parked rows are merged back."""
    add = FailingAdd.install(monkeypatch, exc)
    unpark = Engine._unpark

    def arming(eng: Engine, room: int) -> int:
        if room > 0 and eng._parked and not add.raised:
            add.armed = True
        return unpark(eng, room)

    monkeypatch.setattr(Engine, "_unpark", arming)
    return add


def test_parked_rows_that_run_out_of_memory_coming_back_wait_and_then_resume(
        model: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    prompts = OTHERS[:3]
    plain = Engine(model, max_batch=4).start()
    try:
        alone = [plain.submit(f"a{i}", ids(model, p), GREEDY, lane="bulk").result(WAIT) for i, p in enumerate(prompts)]
    finally:
        plain.stop()
    add = fail_parked_rows_coming_back(monkeypatch, torch.OutOfMemoryError("simulated: CUDA out of memory"))
    eng = Engine(model, max_batch=4, batch_wait_s=0.2, interactive_headroom=1, bulk_rows_with_interactive=1).start()
    try:
        bulk = [eng.submit(f"b{i}", ids(model, p), GREEDY, lane="bulk") for i, p in enumerate(prompts)]
        wait_until(lambda: eng.running == 3 and eng.steps >= 2, "the bulk rows never started")
        question = eng.submit("q", ids(model, "Say hi."), SamplingParams(temperature=0, max_tokens=3))
        assert question.result(WAIT).completion_tokens > 0
        results = [f.result(WAIT) for f in bulk]
    finally:
        eng.stop()
    assert add.raised == 1
    assert [r.text for r in results] == [r.text for r in alone]


def test_parked_rows_that_do_not_fit_even_alone_fail_and_never_hang(
        model: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    add = fail_parked_rows_coming_back(monkeypatch, torch.OutOfMemoryError("simulated: CUDA out of memory"))
    eng = Engine(model, max_batch=4, batch_wait_s=0.2, interactive_headroom=1, bulk_rows_with_interactive=0).start()
    try:
        bulk = eng.submit("b", ids(model, OTHERS[0]), SamplingParams(temperature=0, max_tokens=200), lane="bulk")
        wait_until(lambda: eng.running == 1 and eng.steps >= 2, "the bulk row never started")
        question = eng.submit("q", ids(model, "Say hi."), SamplingParams(temperature=0, max_tokens=3))
        assert question.result(WAIT).completion_tokens > 0
        assert isinstance(bulk.exception(timeout=120), torch.OutOfMemoryError)
        after = eng.submit("after", ids(model, "Say hi."), SamplingParams(temperature=0, max_tokens=3)).result(WAIT)
        assert after.completion_tokens > 0
    finally:
        eng.stop()
    assert add.raised == 1


class SlowFailingPrefill:
    """The real model, whose next prefill raises after ``delay`` seconds (time to ask a cancel)."""

    def __init__(self, model: object, delay: float):
        self.model, self.delay, self.armed = model, delay, True
        self.forward = model.forward  # type: ignore[attr-defined]  # the engine reads its signature

    def __call__(self, *, input_ids: torch.Tensor, **kwargs: object) -> object:
        if input_ids.shape[1] > 1 and self.armed:
            self.armed = False
            time.sleep(self.delay)
            raise RuntimeError("simulated: the model refused the prompt")
        return self.model(input_ids=input_ids, **kwargs)


def test_a_cancel_asked_while_a_row_fails_does_not_cancel_the_next_attempt_under_its_id(
        model: LoadedModel) -> None:
    slow = SlowFailingPrefill(model.model, delay=1.0)
    eng = Engine(dataclasses.replace(model, model=slow), max_batch=4).start()
    try:
        first = eng.submit("k", ids(model, "Say hi."), GREEDY)
        time.sleep(0.3)  # inside the failing prefill
        eng.cancel("k")
        assert isinstance(first.exception(timeout=120), RuntimeError)
        again = eng.submit("k", ids(model, "Say hi."), GREEDY).result(WAIT)  # a retry: same id
    finally:
        eng.stop()
    assert again.finish_reason in ("stop", "length") and again.completion_tokens > 0


class ThreadsSeen:
    """The real model, noting the intra-op threads each forward ran with."""

    def __init__(self, model: object):
        self.model, self.seen = model, set()
        self.forward = model.forward  # type: ignore[attr-defined]  # the engine reads its signature

    def __call__(self, **kwargs: object) -> object:
        self.seen.add(torch.get_num_threads())
        return self.model(**kwargs)


def test_a_cancel_that_comes_after_a_job_ended_does_not_cancel_its_next_attempt(
        model: LoadedModel, engine: Engine) -> None:
    """The executor forwards a cancel while the job is in its in-flight table, which it leaves just
    after the result: a cancel landing there, for a row already gone, must not wait for the id."""
    first = engine.submit("again", ids(model, "Say hi."), GREEDY).result(WAIT)
    engine.cancel("again")  # the row has ended: nothing to cancel
    retry = engine.submit("again", ids(model, "Say hi."), GREEDY).result(WAIT)
    assert retry.finish_reason == first.finish_reason != "canceled"
    assert retry.text == first.text


def test_a_cancel_reaches_every_row_of_its_id_the_engine_holds(model: LoadedModel) -> None:
    """Two rows under one id (a retry submitted while the first attempt still runs; or one running
    and one waiting in the bulk lane): a cancel asked while both are held ends both, whatever order
    the engine meets them in."""
    long = SamplingParams(temperature=0, max_tokens=400)
    eng = Engine(model, max_batch=4, batch_wait_s=0.05, interactive_headroom=1, bulk_rows_with_interactive=0).start()
    try:
        running = eng.submit("same", ids(model, "Write a long story about a fox."), long)
        wait_until(lambda: eng.running == 1, "the first row never started")
        eng.cancel("same")
        again = eng.submit("same", ids(model, "Write a long story about a fox."), long)  # at once, as a retry
        assert running.result(WAIT).finish_reason == "canceled"
        assert again.result(WAIT).finish_reason == "canceled"  # held when the cancel came: canceled too
        interactive = eng.submit("both", ids(model, "Write a long story about a fox."), long)
        wait_until(lambda: eng.running == 1, "the interactive row never started")
        bulk = eng.submit("both", ids(model, "Say hi."), long, lane="bulk")  # waits: no bulk rows beside it
        eng.cancel("both")
        assert bulk.result(WAIT).finish_reason == "canceled"
        assert interactive.result(WAIT).finish_reason == "canceled"
        assert interactive.result().completion_tokens < 400
    finally:
        eng.stop()


def test_the_engine_thread_computes_with_its_own_thread_count_whatever_the_callers_have(
        model: LoadedModel) -> None:
    """The worker's main thread keeps one thread (no OpenMP team of its own, device.own_parallelism);
    the engine's kernels must still get the worker's thread count, or every step runs on one core."""
    seen = ThreadsSeen(model.model)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    eng = Engine(dataclasses.replace(model, model=seen), max_batch=4, threads=2).start()
    try:
        eng.submit("t", ids(model, "Say hi."), SamplingParams(temperature=0, max_tokens=3)).result(WAIT)
        assert torch.get_num_threads() == 1  # the caller's own setting is left alone
    finally:
        eng.stop()
        torch.set_num_threads(before)
    assert seen.seen == {2}


class OutOfMemoryAbove:
    """The real model, on a device that runs out of memory above ``rows`` rows per forward."""

    def __init__(self, model: object, rows: int):
        self.model, self.rows, self.raised = model, rows, 0
        self.forward = model.forward  # type: ignore[attr-defined]  # the engine reads its signature

    def __call__(self, *, input_ids: torch.Tensor, **kwargs: object) -> object:
        if input_ids.shape[0] > self.rows:
            self.raised += 1
            raise torch.OutOfMemoryError("simulated: CUDA out of memory")
        return self.model(input_ids=input_ids, **kwargs)


class PrefillOutOfMemory:
    """The real model, out of memory on the prefills numbered ``failing`` (1 is the first)."""

    def __init__(self, model: object, failing: set[int]):
        self.model, self.failing, self.prefills = model, failing, 0
        self.forward = model.forward  # type: ignore[attr-defined]  # the engine reads its signature

    def __call__(self, *, input_ids: torch.Tensor, **kwargs: object) -> object:
        if input_ids.shape[1] > 1:
            self.prefills += 1
            if self.prefills in self.failing:
                raise torch.OutOfMemoryError("simulated: CUDA out of memory")
        return self.model(input_ids=input_ids, **kwargs)


def test_a_row_out_of_memory_alone_fails_and_one_beside_running_rows_waits_for_room(model: LoadedModel) -> None:
    story, question = ids(model, "Write a long story about a dragon."), ids(model, "Say hi.")
    params = SamplingParams(temperature=0, max_tokens=30)
    plain = Engine(model, max_batch=4).start()
    try:
        expected = [plain.submit(f"p{i}", p, params).result(WAIT).text for i, p in enumerate((story, question))]
    finally:
        plain.stop()
    oom = PrefillOutOfMemory(model.model, failing={1, 3})
    eng = Engine(dataclasses.replace(model, model=oom), max_batch=4).start()
    try:
        alone = eng.submit("alone", question, params)  # prefill 1: nothing runs, so it cannot fit at all
        assert isinstance(alone.exception(timeout=120), torch.OutOfMemoryError)
        first = eng.submit("first", story, params)  # prefill 2
        wait_until(lambda: eng.running == 1, "the first row never started")
        second = eng.submit("second", question, params)  # prefill 3 fails: it waits for the first to finish
        results = [first.result(WAIT), second.result(WAIT)]
    finally:
        eng.stop()
    assert oom.prefills == 4
    assert results[1].first_token_at is not None and results[1].first_token_at >= results[0].finished_at
    assert [r.text for r in results] == expected


def test_out_of_memory_splits_the_batch_and_loses_no_job(model: LoadedModel) -> None:
    plain = Engine(model, max_batch=8).start()
    try:
        expected = [plain.submit(f"p{i}", ids(model, p), GREEDY).result(WAIT).text for i, p in enumerate(OTHERS)]
    finally:
        plain.stop()
    small = OutOfMemoryAbove(model.model, rows=2)
    eng = Engine(dataclasses.replace(model, model=small), max_batch=8, batch_wait_s=0.2).start()
    try:
        futures = [eng.submit(f"o{i}", ids(model, p), GREEDY) for i, p in enumerate(OTHERS)]
        texts = [f.result(WAIT).text for f in futures]
    finally:
        eng.stop()
    assert small.raised > 0
    assert texts == expected


def test_bulk_rows_pause_for_an_interactive_row_and_resume_unchanged(model: LoadedModel, engine: Engine) -> None:
    prompts = OTHERS + ["Name three rivers.", "Describe a red apple."]
    alone = [engine.submit(f"a{i}", ids(model, p), GREEDY, lane="bulk").result(WAIT) for i, p in enumerate(prompts)]
    question = ids(model, "What colour is the sky?")
    expected = engine.submit("q-alone", question, GREEDY).result(WAIT)
    eng = Engine(model, max_batch=8, batch_wait_s=0.05, interactive_headroom=2, bulk_rows_with_interactive=1).start()
    try:
        bulk = [eng.submit(f"b{i}", ids(model, p), GREEDY, lane="bulk") for i, p in enumerate(prompts)]
        deadline = time.monotonic() + 60
        while eng.steps < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        interactive = eng.submit("q", question, GREEDY).result(WAIT)
        results = [f.result(WAIT) for f in bulk]
    finally:
        eng.stop()
    # The interactive row shared its steps with one bulk row; the others waited, then resumed
    # where they were and wrote what they write alone.
    assert interactive.batch_size == 2
    assert interactive.text == expected.text
    assert sum(r.finished_at > interactive.finished_at for r in results) >= 4
    assert [r.text for r in results] == [r.text for r in alone]
    assert [r.completion_tokens for r in results] == [r.completion_tokens for r in alone]


def test_a_parked_bulk_row_can_be_canceled_while_interactive_rows_run(model: LoadedModel) -> None:
    eng = Engine(model, max_batch=4, batch_wait_s=0.05, interactive_headroom=1, bulk_rows_with_interactive=0).start()
    try:
        bulk = [eng.submit(f"b{i}", ids(model, p), GREEDY, lane="bulk") for i, p in enumerate(OTHERS[:2])]
        deadline = time.monotonic() + 60
        while eng.steps < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        story = eng.submit("story", ids(model, "Write a very long story about a dragon."),
                           SamplingParams(temperature=0, max_tokens=200))
        while eng.running != 1 and time.monotonic() < deadline:  # both bulk rows parked
            time.sleep(0.01)
        assert eng.running == 1 and eng.waiting == 2
        eng.cancel("b0")
        canceled = bulk[0].result(WAIT)
        assert canceled.finish_reason == "canceled" and 0 < canceled.completion_tokens < GREEDY.max_tokens
        assert not story.done(), "the parked row ended at once, not after the interactive row"
        eng.cancel("story")
        assert bulk[1].result(WAIT).finish_reason in ("stop", "length")
    finally:
        eng.stop()


def engine_waiting(stack: Stack) -> int:
    """Rows waiting in the engine's intake, as the worker's heartbeat last reported them."""
    r = stack.redis()
    beats = [json.loads(v) for k in r.scan_iter(stack.keys.workers_pattern()) if (v := r.get(k))]
    return sum(m["waiting"] for beat in beats for m in beat["models"])


def test_a_canceled_batch_settles_without_other_traffic(tmp_path: Path) -> None:
    """Canceled bulk rows still waiting in the engine's intake end by themselves, not when an
    unrelated job happens to wake the engine (they used to wait there, the batch `cancelling`)."""
    # The default max batch lets all 40 items into the engine, which prefills a few per step.
    with launch_stack(tmp_path, [{"id": DEFAULT_MODEL_ID}], DEFAULT_MODEL_ID) as stack, stack.client() as client:
        items = [{"custom_id": f"k-{i}", "prompt": f"Count to {i}."} for i in range(40)]
        resp = client.post("/v1/batches", json={"items": items, "temperature": 0, "max_tokens": 4})
        assert resp.status_code == 202, resp.text
        batch_id = resp.json()["id"]
        time.sleep(0.3)
        deadline = time.monotonic() + 120  # on a loaded machine, until the backlog reaches the engine
        while engine_waiting(stack) < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.post(f"/v1/batches/{batch_id}/cancel").status_code == 200
        deadline = time.monotonic() + 60  # a step or two suffice; generous for a loaded CPU
        while (batch := client.get(f"/v1/batches/{batch_id}").json())["status"] == "cancelling":
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        counts = batch["request_counts"]
        assert batch["status"] == "canceled", counts
        assert counts["canceled"] > 0
        assert counts["completed"] + counts["failed"] + counts["canceled"] == 40
        rows = [json.loads(line) for line in client.get(f"/v1/batches/{batch_id}/results").text.splitlines()]
        assert len(rows) == 40 and {r["status"] for r in rows} <= {"succeeded", "failed", "canceled"}
        deadline = time.monotonic() + 10  # the next heartbeats show an empty intake
        while engine_waiting(stack) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert engine_waiting(stack) == 0
