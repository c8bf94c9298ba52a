"""The batching engine: one thread owns the model and runs continuous (step-level) batching.

Callers on any thread ``submit`` a tokenized prompt and get a Future. Between two decoding
steps the engine admits waiting requests (prefilled together, then merged into the running
batch's KV cache), samples one token for every row with that row's own parameters, streams
text deltas, and drops rows that finished, were canceled or ran out of time. The batch's KV
cache is a set of preallocated slots (``slots.py``): a row joins or leaves by copying its own
keys and values, never the batch's. Each row keeps its own positions and mask, so its text does
not depend on its batchmates.

Lanes: interactive rows are admitted before waiting bulk rows, and may use
``interactive_headroom`` rows beyond ``max_batch`` that bulk rows never take, so a bulk backlog
delays an interactive job by at most one decoding step. On a CPU a step costs about as much per
row, so while interactive rows run at most ``bulk_rows_with_interactive`` bulk rows share their
steps: the others are parked with a copy of their KV slots and put back, without
recomputing anything, before any new bulk row is prefilled; and new bulk rows are prefilled
``bulk_prefill_rows`` at a time, so an interactive row never waits behind one long prefill.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from textgen_core import metrics
from textgen_core.engine.decode import decoder_for
from textgen_core.engine.device import worker_threads
from textgen_core.engine.loader import LoadedModel
from textgen_core.engine.sampling import choose_tokens, new_generator
from textgen_core.engine.slots import RowsKV, SlotCache
from textgen_core.engine.text import TextState
from textgen_core.jobs import SamplingParams
from textgen_core.priorities import DEFAULT_PRIORITY, admission_order

log = logging.getLogger(__name__)


class PromptTooLong(ValueError):
    """The prompt plus max_tokens does not fit the model's context."""

    error_type = "prompt_too_long"  # the failed job's error type (executor.py)


class EmptyPrompt(ValueError):
    """A prompt of no tokens: nothing to predict the first token from."""

    error_type = "empty_prompt"


@dataclass
class Result:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    batch_size: int
    first_token_at: float | None
    finished_at: float


@dataclass(eq=False)
class _Row:
    job_id: str
    prompt_ids: list[int]
    params: SamplingParams
    future: Future[Result]
    deadline: float
    text: TextState
    generator: torch.Generator | None
    lane: str = "interactive"
    priority: int = DEFAULT_PRIORITY
    arrived_at: float = field(default_factory=time.monotonic)  # in the intake; kept when put back
    generated: list[int] = field(default_factory=list)
    batch_size: int = 0
    first_token_at: float | None = None

    def context_ids(self) -> list[int]:
        return self.prompt_ids + self.generated


@dataclass(eq=False)
class _Parked:
    """Bulk rows out of the running batch, with everything needed to put them back as they were."""

    rows: list[_Row]
    logits: torch.Tensor
    kv: RowsKV

    def take(self, index: list[int]) -> _Parked:
        at = torch.tensor(index, device=self.logits.device)
        return _Parked([self.rows[i] for i in index], self.logits[at], self.kv.take(index))


class _Intake:
    """Rows waiting for a place in the batch, oldest first. Unlike a queue, canceled rows can be
    taken out from anywhere, so a cancel never waits for room in the batch. When fewer rows fit
    than wait, the better (aged) priority goes first (``textgen_core/priorities.py``)."""

    def __init__(self, aging_s: float = 30.0) -> None:
        self._rows: deque[_Row] = deque()
        self._lock = threading.Lock()
        self.aging_s = aging_s

    def put(self, row: _Row) -> None:
        with self._lock:
            self._rows.append(row)

    def take(self, limit: int) -> list[_Row]:
        with self._lock:
            n = min(max(limit, 0), len(self._rows))
            if n == 0:
                return []
            if n == len(self._rows):
                out, self._rows = list(self._rows), deque()
                return out
            waiting = [(r.priority, r.arrived_at) for r in self._rows]
            first = admission_order(waiting, time.monotonic(), self.aging_s)[:n]
            out = [self._rows[i] for i in first]
            taken = set(first)
            self._rows = deque(r for i, r in enumerate(self._rows) if i not in taken)
            return out

    def take_canceled(self, job_ids: set[str]) -> list[_Row]:
        with self._lock:
            out = [r for r in self._rows if r.job_id in job_ids]
            if out:
                self._rows = deque(r for r in self._rows if r.job_id not in job_ids)
            return out

    def __len__(self) -> int:
        return len(self._rows)


StepSink = Callable[[dict[str, str]], None]

# Rows prefilled together have lengths within this factor (plus PREFILL_SLACK tokens) of each other.
PREFILL_SPREAD = 2
PREFILL_SLACK = 64


def length_groups(lengths: list[int]) -> list[list[int]]:
    """Indexes of rows to prefill together, shortest first, in groups whose longest is at most
    ``PREFILL_SPREAD`` times the shortest plus ``PREFILL_SLACK``: a prefill pads every row to the
    longest, and its attention costs rows x width squared, so one long prompt among short ones
    would cost each of them its width (measured: 8 rows, one of 1,000 tokens, 56 s together
    against 8 s apart)."""
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if groups and lengths[i] <= PREFILL_SPREAD * lengths[groups[-1][0]] + PREFILL_SLACK:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups

RECOVER_STEPS = 64


class Engine:
    def __init__(
        self,
        loaded: LoadedModel,
        *,
        max_batch: int,
        batch_wait_s: float = 0.005,
        time_limit_s: float = 300.0,
        on_step: StepSink | None = None,
        interactive_headroom: int = 0,
        bulk_rows_with_interactive: int | None = None,
        bulk_prefill_rows: int | None = None,
        priority_aging_s: float = 30.0,
        threads: int | None = None,
    ):
        self.loaded = loaded
        # Intra-op threads of the engine thread, set there (None: one per CPU this process may use).
        # torch runs a CPU kernel on an OpenMP team of the calling thread: ``device.own_parallelism``.
        self.threads = worker_threads(threads)
        self.model = loaded.model
        # Decoding steps skip the library's module machinery where the architecture allows (decode.py).
        self.decoder = decoder_for(loaded.model)
        self.tokenizer = loaded.tokenizer
        self.device = torch.device(loaded.device)
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_s
        self.time_limit_s = time_limit_s
        self.on_step = on_step
        self.interactive_headroom = interactive_headroom
        # None: bulk rows share steps with interactive rows up to the batch cap.
        self.bulk_rows_with_interactive = bulk_rows_with_interactive
        # New bulk rows prefilled per step (None: as many as fit); an interactive row that arrives
        # during a prefill waits for it, and a prefill of many rows costs many steps.
        self.bulk_prefill_rows = bulk_prefill_rows
        self._intake = _Intake(priority_aging_s)
        self._bulk_intake = _Intake(priority_aging_s)
        self._parked: list[_Parked] = []  # bulk rows set aside for interactive rows, oldest first
        self._arrived = threading.Event()
        # Ids asked to cancel, kept until the last row under the id ends (rows of one id: a retry
        # submitted while an attempt is still in the engine), and the rows held per id.
        self._cancel: set[str] = set()
        self._live: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # The running batch.
        self._rows: list[_Row] = []  # row i holds slot i of the cache
        self._cache: SlotCache | None = None
        self._logits: torch.Tensor | None = None  # [rows, vocab] next-token logits
        # Rows allowed at once: max_batch, lowered after running out of device memory and
        # raised again by one row every RECOVER_STEPS clean steps.
        self._cap = max_batch
        self._clean_steps = 0
        self.steps = 0
        # Observed once per step, not per row: the hot loop stays cheap.
        self._batch_size = metrics.BATCH_SIZE.labels(loaded.spec.id)
        self._inter_token = metrics.INTER_TOKEN_LATENCY.labels(loaded.spec.id)
        self._last_step_at: float | None = None

    # -- public, any thread -------------------------------------------------------------

    def start(self) -> Engine:
        self._thread = threading.Thread(target=self._run, name="textgen-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)

    def submit(self, job_id: str, prompt_ids: list[int], params: SamplingParams,
               lane: str = "interactive", priority: int = DEFAULT_PRIORITY) -> Future[Result]:
        limit = self.loaded.context_length
        if not prompt_ids:
            raise EmptyPrompt("the prompt is empty: it must hold at least one token")
        if len(prompt_ids) + params.max_tokens > limit:
            raise PromptTooLong(
                f"prompt is {len(prompt_ids)} tokens; with max_tokens={params.max_tokens} it exceeds "
                f"the model's context of {limit} tokens"
            )
        future: Future[Result] = Future()
        row = _Row(
            job_id=job_id,
            prompt_ids=list(prompt_ids),
            params=params,
            future=future,
            deadline=time.monotonic() + self.time_limit_s,
            text=TextState(stop=list(params.stop)),
            generator=new_generator(params),
            lane=lane,
            priority=priority,
        )
        with self._lock:
            self._live[job_id] += 1
        self._put(row)
        return future

    def _put(self, row: _Row) -> None:
        (self._bulk_intake if row.lane == "bulk" else self._intake).put(row)
        self._arrived.set()

    def cancel(self, job_id: str) -> None:
        """Cancel every row of ``job_id`` the engine holds; an id it holds none of is ignored (a
        cancel that arrives after its row ended would otherwise cancel the next attempt)."""
        with self._lock:
            if job_id not in self._live:
                return
            self._cancel.add(job_id)
        self._arrived.set()  # an idle engine wakes to settle a row still waiting in its intake

    @property
    def running(self) -> int:
        return len(self._rows)

    @property
    def waiting(self) -> int:
        return len(self._intake) + len(self._bulk_intake) + sum(len(p.rows) for p in self._parked)

    # -- engine thread ------------------------------------------------------------------

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        torch.set_num_threads(self.threads)
        while not self._stop.is_set():
            try:
                self._admit(self._take_new())
                if self._rows:
                    self._step()
            except Exception as exc:  # a model failure fails the rows, never the engine
                log.exception("engine step failed")
                self._fail_all(exc)

    def _take_new(self) -> list[_Row]:
        """Rows to prefill now; parked bulk rows are merged back here, as room allows."""
        idle = not self._rows and not self._parked
        if idle and not len(self._intake) and not len(self._bulk_intake):
            # Nothing anywhere: block for the first arrival (or a cancel), then wait briefly for company.
            if not self._arrived.wait(0.2):
                return []
            self._arrived.clear()
            if self.batch_wait_s:
                time.sleep(self.batch_wait_s)
        if self._cancel:
            self._cancel_waiting()
        new = self._intake.take(self._cap + self.interactive_headroom - len(self._rows))
        room = self._cap - len(self._rows) - len(new)
        limit = self.bulk_rows_with_interactive
        if limit is not None and (new or any(r.lane != "bulk" for r in self._rows)):
            # Interactive rows run: only a few bulk rows share their steps.
            bulk = sum(r.lane == "bulk" for r in self._rows)
            if bulk > limit:
                self._park_bulk(bulk - limit)
            room = min(room, limit - bulk)
        room -= self._unpark(room)  # parked rows first: they cost no prefill
        if self.bulk_prefill_rows is not None:
            room = min(room, self.bulk_prefill_rows)
        return new + self._bulk_intake.take(room)

    def _park_bulk(self, count: int) -> None:
        """Set aside ``count`` bulk rows, those with the fewest tokens first (the rest finish sooner)."""
        assert self._cache is not None and self._logits is not None
        bulk = sorted((i for i, r in enumerate(self._rows) if r.lane == "bulk"),
                      key=lambda i: len(self._rows[i].generated))
        out = sorted(bulk[:count])
        at = torch.tensor(out, device=self.device)
        self._parked.append(_Parked([self._rows[i] for i in out], self._logits[at], self._cache.take(out)))
        self._remove(out)

    def _cancel_waiting(self) -> None:
        """A canceled row that waits (in an intake, or parked) ends now, not when it would have
        been admitted or merged back: a canceled backlog settles with no other traffic."""
        with self._lock:
            wanted = set(self._cancel)
        waiting = self._intake.take_canceled(wanted) + self._bulk_intake.take_canceled(wanted)
        self._settle_canceled(waiting)
        if self._parked:
            self._cancel_parked(wanted)

    def _settle_canceled(self, rows: Iterable[_Row]) -> None:
        for row in rows:
            self._resolve(row, "canceled")

    def _cancel_parked(self, wanted: set[str]) -> None:
        canceled = wanted & {r.job_id for group in self._parked for r in group.rows}
        if not canceled:
            return
        groups = []
        for group in self._parked:
            keep = [i for i, r in enumerate(group.rows) if r.job_id not in canceled]
            for r in group.rows:
                if r.job_id in canceled:
                    self._resolve(r, "canceled")
            if keep:
                groups.append(group if len(keep) == len(group.rows) else group.take(keep))
        self._parked = groups

    def _unpark(self, room: int) -> int:
        """Merge up to ``room`` parked rows back into the batch, oldest first; how many came back."""
        back = 0
        while self._parked and back < room:
            group = self._parked.pop(0)
            n = min(room - back, len(group.rows))
            if n < len(group.rows):
                self._parked.insert(0, group.take(list(range(n, len(group.rows)))))
                group = group.take(list(range(n)))
            try:
                self._merge(group.rows, group.logits, group.kv)
            except torch.OutOfMemoryError as exc:
                _empty_device_cache()
                if not self._rows:  # they do not fit even alone: they fail rather than retry forever
                    self._fail(group.rows, exc)
                else:  # they wait, parked, until running rows finish and give memory back
                    self._parked.insert(0, group)
                return back
            back += n
        return back

    def _admit(self, rows: list[_Row]) -> None:
        """Prefill the rows and merge them into the batch: together (in groups of similar length) where
        the linear layers compute each row alone (int8 weights; float32's by margin), else each alone.

        The prefill's attention keeps a row's numbers whatever its batchmates (``attention.py``),
        but bf16 and fp16 matrix kernels may take another path for another number of rows, and
        round that into another greedy token within a few dozen; alone costs one forward per row,
        about twice the prefill time of a batch on a CPU."""
        rows = [r for r in rows if not self._resolve_if_canceled(r)]
        together = self.loaded.dtype == "float32" or self.loaded.weights == "int8"
        groups = [[rows[i] for i in g] for g in length_groups([len(r.prompt_ids) + len(r.generated) for r in rows])] \
            if together else [[r] for r in rows]
        for i, group in enumerate(groups):
            if not group:
                continue
            try:
                self._join(group)
            except torch.OutOfMemoryError as exc:
                _empty_device_cache()
                later = [r for g in groups[i + 1:] for r in g]
                if len(group) > 1:  # half of them may fit: the others wait over a lowered cap
                    half = len(group) // 2
                    self._cap, self._clean_steps = max(1, len(self._rows) + half), 0
                    for r in group[half:] + later:
                        self._put(r)
                    self._admit(group[:half])
                    return
                if self._rows:  # no more rows until running ones finish and give memory back
                    self._cap, self._clean_steps = len(self._rows), 0
                    later = group + later
                else:  # this row alone does not fit: it fails, the others wait their turn
                    self._fail(group, exc)
                for r in later:
                    self._put(r)
                return

    def _join(self, rows: list[_Row]) -> None:
        """Prefill ``rows`` and merge them into the batch. Out of memory is raised for the caller to
        split them; any other error fails these rows alone (they are in no list the engine's own
        handler fails, so they would wait forever) and the running batch goes on."""
        try:
            logits, kv = self._prefill(rows)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # the model refused these prompts
            log.exception("prefill of %d rows failed", len(rows))
            self._fail(rows, exc)
            return
        self._merge(rows, logits, kv)

    def _prefill(self, rows: list[_Row]) -> tuple[torch.Tensor, RowsKV]:
        """The rows' prompts (and tokens so far) through the model at once, left-padded to the longest.
        In bf16 or fp16 the attention counts its blocks from the last column, so each row's tokens
        sit where they would alone and its numbers are the same to the bit (``attention.py``);
        float32 keeps the library's kernel, faster, its margin holding the greedy text. Where the
        engine has its own decoding step it has its own prefill too (``decode.py``), the same numbers."""
        seqs = [r.context_ids() for r in rows]
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=self.device)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        lengths, starts = [len(s) for s in seqs], [width - len(s) for s in seqs]
        if self.decoder is not None and self.decoder.prefills and width > 1:  # one token: the library's kernel
            logits, keys, values = self.decoder.prefill(ids, mask, positions)
            return logits, RowsKV(keys, values, lengths, starts)
        cache = DynamicCache()
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         logits_to_keep=1, **{self.loaded.cache_kwarg: cache})
        # The model filled ``cache`` in place.
        kv = RowsKV([layer.keys for layer in cache.layers], [layer.values for layer in cache.layers], lengths, starts)
        return out.logits[:, -1, :].float(), kv

    def _merge(self, rows: list[_Row], logits: torch.Tensor, kv: RowsKV) -> None:
        """Rows join the batch: their keys and values go into free slots, the batch's stay put.

        A join that fails leaves the batch as it was; out of memory is raised, any other error
        fails the joining rows alone (as in :meth:`_join`)."""
        if self._cache is None or self._logits is None:
            self._cache, self._logits = SlotCache(), logits
            before = 0
        else:
            before = self._cache.rows
        try:
            self._cache.add(kv)
            if before:
                self._logits = torch.cat([self._logits, logits], dim=0)  # [rows, vocab]: small beside the cache
        except Exception as exc:
            if not before:
                self._clear()
            elif self._cache.rows > before:
                self._cache.remove(range(before, self._cache.rows))  # the tail: nothing moves
            if isinstance(exc, torch.OutOfMemoryError):
                raise
            log.exception("merging %d rows into the batch failed", len(rows))
            self._fail(rows, exc)
            return
        self._rows = self._rows + rows
        size = len(self._rows)
        for r in self._rows:
            r.batch_size = max(r.batch_size, size)

    def _step(self) -> None:
        assert self._logits is not None and self._cache is not None
        now = time.monotonic()
        if self._last_step_at is not None:
            self._inter_token.observe(now - self._last_step_at)
        self._last_step_at = now
        self._batch_size.observe(len(self._rows))
        with self._lock:
            canceled = self._cancel & {r.job_id for r in self._rows}
        deltas: dict[str, str] = {}
        done: list[tuple[_Row, str]] = [(r, "canceled") for r in self._rows if r.job_id in canceled]
        live = [i for i, r in enumerate(self._rows) if r.job_id not in canceled]
        chosen: list[int] = []
        if live:  # every row canceled (a client left): nothing to sample
            logits = self._logits if len(live) == len(self._rows) else \
                self._logits[torch.tensor(live, dtype=torch.long, device=self.device)]
            chosen = choose_tokens(logits, [self._rows[i] for i in live])
        tokens = dict(zip(live, chosen, strict=True))
        for i, token in tokens.items():
            row = self._rows[i]
            row.generated.append(token)
            row.first_token_at = row.first_token_at or time.time()
            reason = None
            if token in self.loaded.eos_token_ids:
                reason = "stop"
            elif row.text.push(self.tokenizer, token):
                reason = "stop"
            elif len(row.generated) >= row.params.max_tokens:
                reason = "length"
            elif now > row.deadline:
                reason = "time_limit"
            delta = row.text.take_delta(final=reason is not None)
            if delta:
                deltas[row.job_id] = delta
            if reason:
                done.append((row, reason))
        if deltas and self.on_step:
            try:
                self.on_step(deltas)
            except Exception:  # streaming is best effort; the result is what counts
                log.exception("delta sink failed")
        self.steps += 1
        finished = {id(r) for r, _ in done}
        for row, reason in done:
            self._resolve(row, reason)
        if finished:
            self._remove([i for i, r in enumerate(self._rows) if id(r) in finished])
        if self._rows:  # every row left has just chosen a token
            self._forward(torch.tensor([[r.generated[-1]] for r in self._rows], device=self.device))

    def _remove(self, index: list[int]) -> None:
        """Rows leave the batch (finished, or parked): their slots are freed and the last rows move
        into them, so rows, logits and slots keep one order."""
        assert self._cache is not None and self._logits is not None
        moves = self._cache.remove(index)
        n = self._cache.rows
        if not n:
            self._clear()
            return
        if moves:
            src = torch.tensor([i for i, _ in moves], device=self.device)
            dst = torch.tensor([j for _, j in moves], device=self.device)
            self._logits[dst] = self._logits[src]
            for i, j in moves:
                self._rows[j] = self._rows[i]
        self._rows, self._logits = self._rows[:n], self._logits[:n]

    def _clear(self) -> None:
        self._rows, self._cache, self._logits = [], None, None
        self._last_step_at = None

    def _forward(self, next_ids: torch.Tensor) -> None:
        assert self._cache is not None
        mask, positions = self._cache.step_inputs()
        try:
            if self.decoder is not None:
                logits = self.decoder(next_ids, self._cache, mask, positions)
            else:
                out = self.model(input_ids=next_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                                 **{self.loaded.cache_kwarg: self._cache})
                logits = out.logits[:, -1, :].float()
        except torch.OutOfMemoryError as exc:
            self._preempt_half(exc)
            return
        self._cache.advance()
        self._logits = logits
        if self._cap < self.max_batch:
            self._clean_steps += 1
            if self._clean_steps >= RECOVER_STEPS:
                self._cap, self._clean_steps = self._cap + 1, 0

    def _preempt_half(self, exc: torch.OutOfMemoryError) -> None:
        """Out of device memory mid-batch: the newer half goes back to the intake and the older
        half is prefilled again from its tokens so far; both resume where they were."""
        _empty_device_cache()
        rows = self._rows
        self._rows, self._cache, self._logits = [], None, None
        if len(rows) == 1:
            self._fail(rows, exc)
            return
        keep = len(rows) // 2
        self._cap, self._clean_steps = keep, 0
        for r in rows[keep:]:
            self._put(r)
        self._admit(rows[:keep])

    def _resolve_if_canceled(self, row: _Row) -> bool:
        with self._lock:
            if row.job_id not in self._cancel:
                return False
        self._resolve(row, "canceled")
        return True

    def _ended(self, row: _Row) -> None:
        """``row`` leaves the engine for good: with the last row of its id goes any cancel for it."""
        with self._lock:
            self._live[row.job_id] -= 1
            if self._live[row.job_id] <= 0:
                del self._live[row.job_id]
                self._cancel.discard(row.job_id)

    def _resolve(self, row: _Row, reason: str) -> None:
        if row.future.done():
            return
        self._ended(row)
        row.future.set_result(
            Result(
                text=row.text.text,
                finish_reason=reason,
                prompt_tokens=len(row.prompt_ids),
                completion_tokens=len(row.generated),
                batch_size=max(row.batch_size, 1),
                first_token_at=row.first_token_at,
                finished_at=time.time(),
            )
        )

    def _fail(self, rows: Iterable[_Row], exc: BaseException) -> None:
        """End each row's job with ``exc``, unless it ended already. A cancel asked meanwhile goes
        with it (``_ended``): left behind, it would cancel the next attempt under the same id."""
        for row in rows:
            if not row.future.done():
                self._ended(row)
                row.future.set_exception(exc)

    def _fail_all(self, exc: Exception) -> None:
        self._fail(self._rows, exc)
        self._clear()



def _empty_device_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
