"""Dynamic batching for one model version on the asyncio event loop: merges concurrent requests into one call.

Requests are queued and awaited on the loop (no thread hop to enqueue or to wake a waiter); only the model call
itself, with the merge of the inputs, runs in a small thread pool so that the loop never blocks on a model.
A request that finds the model idle runs at once: a lone client never waits out the queue delay. The requests
that come after it in the same turn of the event loop (those the transport read with it) make one call together,
also without waiting for the delay. Requests that arrive while the model is busy wait at most
``max_queue_delay_us`` (counted from the oldest) for others to join, and a merged batch holds at most
``max_batch_size`` samples. The queue is bounded by ``max_queue_size`` requests: beyond it ``infer`` refuses at
once with UNAVAILABLE instead of letting latency grow without limit. A request whose deadline passed or whose
caller went away (its task cancelled) leaves the queue and never runs; a caller told that its request is going to
wait (``on_wait``) can watch for its client going away from then on.

With preferred batch sizes (config.pbtxt's ``preferred_batch_size``), a queue whose requests in turn add up to one
of them does not wait out the delay: that batch runs at once, and of what is queued a batch takes the longest run
of requests that adds up to a preferred size, leaving the rest for the next; when none does, it takes what fits,
as without them. Requests are never split, as in Triton.

The queue follows Triton's scheduler where a config asks for more: with priority levels a batch is formed from
the highest-priority requests queued (level 1 first), each level bounded by its own queue size; a request whose
queue timeout passed under ``timeout_action: DELAY`` (``delay_at``) goes behind the requests of its level that
are still in time, and runs when their turn is over. A model whose config has no ``dynamic_batching`` runs every
request in a call of its own (``merges=False``): some models answer differently in a batch they were not built
for, and Triton's default scheduler never merges them.

A version has one or more execution instances (Triton's ``instance_group``), each with its own session, and runs
up to that many batches at once in a pool of as many threads. "Idle" above means that no instance is running;
a request that arrives while one runs waits for the delay like any other, and then takes a free instance. Two
one-thread instances on two cores run the CIFAR-10 CNN 7-20 % faster than one two-thread session in process, and
in a server whose cores the network shares they do not wait for each other's threads at every operator.

Instances that share the cores leave a lone request on one of them, so a version may also have a wide session, with
a thread per core. A request that finds the model idle runs on it, holding every instance until it ends, when its
size took an instance more than ``WIDE_ABOVE_NS`` of CPU and no request has had to wait for the model in the last
``WIDE_AFTER_QUIET_NS``: a lone client of the CIFAR-10 CNN gets both cores (its one-image call takes 1.16 ms on
two threads against 1.72 ms on one, in process with 0.5 ms between calls), while under load, where a request
waits every few milliseconds, every call keeps to one instance. A shorter call loses more to waking a second
thread than it gains (the Fashion-MNIST MLP's one-image call: 20 % slower on two threads). A wide call runs on the
loop itself when its size took the loop's thread under ``WIDE_INLINE_BELOW_NS``: the model is quiet, so there
is nothing of it for the loop to decode meanwhile, and the call takes every core anyway, so the hand-off to a
thread and back would only add its wake-ups to the lone request's path (a lone CIFAR-10 client over REST, twelve
alternating pairs on the 2-core machine: median 480 → 518 requests/s, faster in nine, with less server CPU per
request in nine). Other models' requests and health probes wait that long at most.

A short call runs on the loop itself. Handing a batch to a thread and waking the loop with its result costs about
0.12 ms of CPU on a 2-core machine (more than the whole Fashion-MNIST MLP at batch 1) and two thread wake-ups of
0.1-0.3 ms each on the request's path; what it buys is the loop decoding other requests while the model runs,
and for a call of up to about a millisecond that is worth less than the hand-off (measured: 64-image
Fashion-MNIST requests from 4 clients went from 58-72k to 93k images/s over REST and from 47-50k to 66-72k over
gRPC when their 0.3 ms calls ran inline). So a batch whose size recently took under ``INLINE_BELOW_NS`` of the
calling thread's CPU is executed inline, and the loop, with health probes and other models' requests, pauses that
long at most; longer calls go to the pool. Sizes are grouped by powers of two; a size not yet seen goes to the
thread pool, which measures it. A short call for a request that finds the model idle runs in that request's own
task, with no worker task and no turn of the loop before its answer: 20-25 µs less CPU per batch-1 Fashion-MNIST
request in process; from one client, -1 to +8 % requests/s in four paired runs per front end on the 2-core
machine, at the cost of one more call per burst (batch-1 requests from 32 REST clients, 3-8 % fewer).
This module knows nothing about any protocol.
"""

import asyncio
import concurrent.futures
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from serving.errors import RateLimitedLog, ServingError, Status, first_line
from serving.statistics import ModelStats
from serving.tracing import Trace

log = logging.getLogger(__name__)

Tensors = dict[str, np.ndarray]

# Executions measured below this much of the caller's CPU run on the event loop (see the module docstring).
INLINE_BELOW_NS = 1_000_000
# A wide call measured below this much of the loop thread's CPU runs on the loop (see the module docstring).
WIDE_INLINE_BELOW_NS = 5_000_000
# A request that finds the model idle runs on the wide session when one instance's call of its size took more CPU
# than this, and no request has waited for the model for WIDE_AFTER_QUIET_NS (see the module docstring).
WIDE_ABOVE_NS = 500_000
WIDE_AFTER_QUIET_NS = 1_000_000_000
# Weight of the newest measurement in a size's running estimate of its execution time.
_ESTIMATE_WEIGHT = 0.5


class _Pending:
    __slots__ = (
        "inputs",
        "batch_size",
        "shape_key",
        "enqueued_ns",
        "deadline",
        "future",
        "on_wait",
        "level",
        "delay_at",
        "trace",
    )

    def __init__(
        self,
        inputs: Tensors,
        batch_size: int,
        deadline: float | None,
        future: asyncio.Future,
        on_wait: Callable[[], None] | None,
        level: int,
        delay_at: float | None,
        trace: Trace | None,
    ) -> None:
        self.inputs = inputs
        self.batch_size = batch_size
        # Only requests whose non-batch dimensions agree can be concatenated.
        self.shape_key = tuple((name, array.shape[1:]) for name, array in inputs.items())
        self.enqueued_ns = time.monotonic_ns()
        self.deadline = deadline
        self.future = future
        self.on_wait = on_wait
        self.level = level
        self.delay_at = delay_at
        self.trace = trace

    def turn(self, now: float) -> tuple[int, bool]:
        """Where the request stands in the queue: by priority level (lower first), then behind the requests of its
        level whose delay has not passed (``delay_at``), then in order of arrival (the sort is stable)."""
        return self.level, self.delay_at is not None and now > self.delay_at

    def waits(self) -> None:
        """Tells the caller, once, that this request is going to wait (``DynamicBatcher.infer``'s ``on_wait``)."""
        if self.on_wait is not None:
            on_wait, self.on_wait = self.on_wait, None
            on_wait()


# One model call: its outputs, and when (``time.monotonic_ns()``) it started merging the inputs, started the model
# and the model returned. A plain tuple: a named one costs a request 0.2 µs more to make.
_Call = tuple[Tensors, int, int, int]


def _stamp_call(trace: Trace, call: _Call, ended_ns: int) -> None:
    """The call's times in a traced request's trace, as Triton names them."""
    _, started_ns, merged_ns, returned_ns = call
    trace.stamp("COMPUTE_START", started_ns)
    trace.stamp("COMPUTE_INPUT_END", merged_ns)
    trace.stamp("COMPUTE_OUTPUT_START", returned_ns)
    trace.stamp("COMPUTE_END", ended_ns)


class DynamicBatcher:
    """Queues requests of one model version and executes them in merged batches, one at a time per instance."""

    def __init__(
        self,
        *,
        name: str,
        instances: Sequence[Callable[[Tensors], Tensors]],
        max_batch_size: int,
        max_queue_delay_us: int,
        max_queue_size: int,
        stats: ModelStats,
        level_queue_sizes: Mapping[int, int] | None = None,
        merges: bool = True,
        on_batch: Callable[[int], None] = lambda size: None,
        inline_below_ns: int = INLINE_BELOW_NS,
        wide: Callable[[Tensors], Tensors] | None = None,
        wide_above_ns: int = WIDE_ABOVE_NS,
        wide_after_quiet_ns: int = WIDE_AFTER_QUIET_NS,
        wide_inline_below_ns: int = WIDE_INLINE_BELOW_NS,
        preferred_batch_sizes: Sequence[int] = (),
    ) -> None:
        """Creates the batcher; no event-loop object is made until the first request, on the running loop.

        Args:
            max_queue_size: the bound of each priority level's queue, unless ``level_queue_sizes`` has its own.
            preferred_batch_sizes: batch sizes that run as soon as the queue's requests in turn add up to one of
                them (sizes above ``max_batch_size`` are left out).
            merges: False runs every request in a call of its own (a model without Triton's dynamic batching):
                requests still queue for a free instance, but never wait for a delay or share a call.
            instances: one function per execution instance, each running one merged batch at a time: in a thread
                of the batcher's own pool (one thread per instance), or on the loop when that size's calls take
                less than ``inline_below_ns`` (0: never on the loop).
            wide: a function running a batch on every core (a session with a thread per core), for a request that
                finds every instance idle and whose size took an instance more than ``wide_above_ns`` of CPU, when
                no request has waited for the model in the last ``wide_after_quiet_ns``; it holds all the instances
                while it runs, on the loop when that size's wide calls took less than ``wide_inline_below_ns``.
        """
        if not instances:
            raise ValueError(f"model '{name}': a batcher needs at least one execution instance")
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_queue_delay_us = max_queue_delay_us
        self.max_queue_size = max_queue_size
        self._level_queue_sizes = dict(level_queue_sizes or {})
        self._merges = merges
        self._preferred = frozenset(size for size in preferred_batch_sizes if 0 < size <= max_batch_size)
        self._instances = tuple(instances)
        self._wide = wide
        self._wide_above_ns = wide_above_ns
        self._wide_after_quiet_ns = wide_after_quiet_ns
        self._wide_inline_below_ns = wide_inline_below_ns
        # When a request last had to wait for the model (queued behind an execution, or with others read in the
        # same turn): until ``wide_after_quiet_ns`` after it, the model is under load and every call takes one
        # instance.
        self._waited_ns: int | None = None
        # Indices of the instances not executing; an execution pops one and pushes it back when it ends.
        self._free = list(range(len(self._instances)))[::-1]
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._stats = stats
        self._on_batch = on_batch
        self._inline_below_ns = inline_below_ns
        self._queue: deque[_Pending] = deque()
        self._queued_samples = 0
        self._closing = False
        # The worker task exists only while requests are queued; a lone request runs in its own task instead.
        self._worker: asyncio.Task | None = None
        # The worker sleeps on this future while it waits for the delay or for a free instance; a full batch, an
        # execution ending or close wakes it early.
        self._wakeup: asyncio.Future | None = None
        # The worker was started for requests that found the model idle and has not taken its first batch: what
        # arrives now joins that batch in the next turn of the loop instead of waiting.
        self._starting = False
        self._failure_log = RateLimitedLog(log)
        # Running estimates of the model call's time in ns, by batch size's bit length (1, 2-3, 4-7, ...): one
        # for the instances and one for the wide session, whose caller shares the work with its other threads.
        self._call_ns: dict[int, float] = {}
        self._wide_call_ns: dict[int, float] = {}
        # A request ran on the loop in this turn of it: those arriving after it in the same turn came with it, and
        # queue for one call together instead of running one by one.
        self._ran_this_turn = False

    @property
    def instance_count(self) -> int:
        return len(self._instances)

    def measuring_runners(self) -> list[Callable[[Tensors], Tensors]]:
        """Each session's runner (every instance's, and the wide session's) as a call that also measures its size,
        as a request's call does: a warmup (config.pbtxt's model_warmup) run through these, before the batcher
        serves, sends the first requests of those sizes where their calls belong (on the loop or to the pool, on
        an instance or wide) instead of measuring them in the pool first."""
        sessions = [(runner, self._call_ns) for runner in self._instances]
        if self._wide is not None:
            sessions.append((self._wide, self._wide_call_ns))
        return [
            lambda inputs, runner=runner, estimates=estimates: self._merge_and_run(runner, estimates, [inputs])[0]
            for runner, estimates in sessions
        ]

    @property
    def queue_depth(self) -> int:
        """Requests waiting for an execution (not counting the batch being executed)."""
        return len(self._queue)

    async def infer(
        self,
        inputs: Tensors,
        batch_size: int,
        deadline: float | None = None,
        on_wait: Callable[[], None] | None = None,
        *,
        level: int = 0,
        delay_at: float | None = None,
        trace: Trace | None = None,
    ) -> Tensors:
        """Queues one request whose inputs all have ``batch_size`` rows and returns its own rows of the outputs.

        Args:
            inputs: validated arrays by input name, first dimension the batch.
            batch_size: rows in this request, at most ``max_batch_size``.
            deadline: ``time.monotonic()`` after which the request fails with DEADLINE_EXCEEDED unless it runs.
            on_wait: called once if the request is going to wait past this turn of the event loop (queued behind
                an execution or for the delay, or run in the pool), and never for one answered in the next turn:
                a caller that must notice its client going away starts watching only then, because a short answer
                is cheaper to finish than to watch for.
            level: the request's priority level; a batch is taken from the lowest level queued first.
            delay_at: ``time.monotonic()`` after which a queued request goes behind the others of its level that
                are not delayed (Triton's ``timeout_action: DELAY``); it still runs.
            trace: the request's trace, if it is traced: the model call's times are stamped in it.

        Raises:
            ServingError: UNAVAILABLE when the queue is full or the batcher is closing; DEADLINE_EXCEEDED;
                INTERNAL when the model fails.
        """
        if self._closing:
            raise ServingError(Status.UNAVAILABLE, f"model '{self.name}' is shutting down; retry")
        limit = self._level_queue_sizes.get(level, self.max_queue_size)
        # Levels share one deque: counting one level's requests is a scan, only where there are levels.
        queued = sum(p.level == level for p in self._queue) if level else len(self._queue)
        if queued >= limit:
            where = f"queue of priority level {level}" if level else "queue"
            raise ServingError(
                Status.UNAVAILABLE, f"model '{self.name}' {where} is full ({limit} requests waiting); retry later"
            )
        loop = asyncio.get_running_loop()
        idle = self._running == 0 and self._worker is None
        if idle:
            wide = self._runs_wide(batch_size)
            inline = self._runs_inline(batch_size, wide)
            if not inline or not self._ran_this_turn:
                if not inline and on_wait is not None:
                    on_wait()
                return await self._run_alone(loop, inputs, batch_size, deadline, inline, wide, trace)
        pending = _Pending(inputs, batch_size, deadline, loop.create_future(), on_wait, level, delay_at, trace)
        self._waited_ns = pending.enqueued_ns
        self._queue.append(pending)
        self._queued_samples += batch_size
        if idle:
            # The worker's first step comes after the requests that arrived with this one, which join its first
            # call; they waited for nothing, so that call does not wait for the delay either.
            self._starting = True
            self._worker = loop.create_task(self._run(delay_first=False), name=f"batcher-{self.name}")
        else:
            self._notify()
            if self._worker is None and self._free:
                # Another instance is running: this request waits the delay for others to join, then takes a free
                # one. (Run at once, each request would make a call of its own while the model is under load.)
                self._worker = loop.create_task(self._run(), name=f"batcher-{self.name}")
            # Otherwise an execution that ends hands the queue to a worker.
            if not self._starting:
                pending.waits()
        timer = None if deadline is None else loop.call_later(deadline - time.monotonic(), self._expire, pending)
        try:
            return await pending.future
        finally:
            if timer is not None:
                timer.cancel()
            if not pending.future.done() or pending.future.cancelled():
                self._forget(pending)  # the caller went away while queued: it must not run

    async def close(self) -> None:
        """Stops accepting requests, executes everything already queued without waiting for the delay, and stops
        the instances' threads."""
        self._closing = True
        self._notify()
        while self._worker is not None or self._running:
            if self._worker is not None:
                await self._worker
            else:
                await asyncio.sleep(0.001)  # an execution is finishing in its thread
        if self._executor is not None:
            self._executor.shutdown(wait=False)  # every call has ended: nothing is left to wait for

    @property
    def _running(self) -> int:
        return len(self._instances) - len(self._free)

    def _wake(self) -> None:
        if self._wakeup is not None:
            _resolve(self._wakeup)

    def _notify(self) -> None:
        if self._closing or self._queued_samples >= self.max_batch_size or self._preferred_formed():
            self._wake()

    def _preferred_formed(self) -> bool:
        """Whether the queue's requests in turn add up to a preferred batch size."""
        if not self._preferred or self._queued_samples < min(self._preferred):
            return False
        total = 0
        for pending in self._queue:
            total += pending.batch_size
            if total in self._preferred:
                return True
        return False

    def _forget(self, pending: _Pending) -> None:
        try:
            self._queue.remove(pending)
        except ValueError:
            return  # already taken into a batch
        self._queued_samples -= pending.batch_size

    def _expire(self, pending: _Pending) -> None:
        if pending.future.done():
            return
        waited_ms = (time.monotonic_ns() - pending.enqueued_ns) / 1e6
        self._forget(pending)
        pending.future.set_exception(
            ServingError(
                Status.DEADLINE_EXCEEDED,
                f"model '{self.name}': request timed out after {waited_ms:.1f} ms in the queue",
            )
        )

    async def _run_alone(
        self,
        loop: asyncio.AbstractEventLoop,
        inputs: Tensors,
        batch_size: int,
        deadline: float | None,
        inline: bool,
        wide: bool,
        trace: Trace | None,
    ) -> Tensors:
        """The model is idle: this request's own task runs it at once, with no worker task, on one instance or, for
        a long call, on the wide session with every instance held. A call short enough for the loop (the wide
        session has its own threshold) runs on the loop before it turns, and the requests read after it in this
        turn queue for one call together; a longer one goes to a thread of the pool, and requests arriving
        meanwhile queue and wait for the delay."""
        if deadline is not None and time.monotonic() > deadline:
            raise ServingError(Status.DEADLINE_EXCEEDED, f"model '{self.name}': request timed out before it ran")
        held = tuple(self._free) if wide else (self._free[-1],)
        del self._free[-len(held) :]
        runner = self._wide if wide else self._instances[held[0]]
        estimates = self._wide_call_ns if wide else self._call_ns
        if inline:
            self._ran_this_turn = True
            loop.call_soon(self._next_turn)
            try:
                call = self._merge_and_run(runner, estimates, [inputs])
            except Exception as error:  # the model failing must fail this request, never the server
                raise self._failure(error, batch_size) from None
            finally:
                self._free.extend(held)
        else:
            work = self._submit(runner, estimates, [inputs])
            try:
                call = await asyncio.wrap_future(work, loop=loop)
            except asyncio.CancelledError:
                # The caller went away during the thread's call; the instances are free only when that call is done.
                work.add_done_callback(lambda _: _call_on(loop, self._execution_ended, loop, held))
                raise
            except Exception as error:  # the model failing must fail this request, never the server
                self._execution_ended(loop, held)
                raise self._failure(error, batch_size) from None
            self._execution_ended(loop, held)
        outputs, started_ns, merged_ns, returned_ns = call
        self._record(batch_size, 1, 0, merged_ns - started_ns, returned_ns - merged_ns, 0)  # nothing to split
        if trace is not None:
            _stamp_call(trace, call, returned_ns)
        return outputs

    def _record(self, samples: int, requests: int, queue_ns: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """Counts one execution in the statistics and the metrics, and describes it in a DEBUG line (the logging
        extension's verbose level)."""
        self._stats.record_execution(samples, requests, queue_ns, input_ns, infer_ns, output_ns)
        self._on_batch(samples)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "model '%s': one call for %d request(s), %d sample(s): %.3f ms in the model, %.3f ms queued in all",
                self.name,
                requests,
                samples,
                infer_ns / 1e6,
                queue_ns / 1e6,
            )

    def _next_turn(self) -> None:
        self._ran_this_turn = False

    def _execution_ended(self, loop: asyncio.AbstractEventLoop, instances: tuple[int, ...]) -> None:
        self._free.extend(instances)
        if self._worker is not None:
            self._wake()  # a worker waiting for a free instance takes the next batch
        elif self._queue:
            self._worker = loop.create_task(self._run(), name=f"batcher-{self.name}")

    def _runs_wide(self, samples: int) -> bool:
        if self._wide is None:
            return False
        size = samples.bit_length()
        estimate, wide_estimate = self._call_ns.get(size), self._wide_call_ns.get(size)
        if estimate is None or estimate <= self._wide_above_ns:
            return False
        # The instances' estimate is not updated while the wide session runs the size: a cold first call could
        # keep a short model there. The wide session's caller does at least its share of the work, so a wide
        # call that cost it under the threshold divided among the instances was short: back to an instance,
        # which measures the size again.
        if wide_estimate is not None and wide_estimate * len(self._instances) <= self._wide_above_ns:
            return False
        return self._waited_ns is None or time.monotonic_ns() - self._waited_ns > self._wide_after_quiet_ns

    def _runs_inline(self, samples: int, wide: bool = False) -> bool:
        if wide:
            estimate, below_ns = self._wide_call_ns.get(samples.bit_length()), self._wide_inline_below_ns
        else:
            estimate, below_ns = self._call_ns.get(samples.bit_length()), self._inline_below_ns
        return estimate is not None and estimate < below_ns

    def _submit(
        self, runner: Callable[[Tensors], Tensors], estimates: dict[int, float], parts: list[Tensors]
    ) -> concurrent.futures.Future:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                len(self._instances), thread_name_prefix=f"batcher-{self.name}"
            )
        return self._executor.submit(self._merge_and_run, runner, estimates, parts)

    def _failure(self, error: Exception, samples: int) -> ServingError:
        self._failure_log.warning(
            "model '%s': execution of a batch of %d failed: %s", self.name, samples, first_line(error)
        )
        return ServingError(Status.INTERNAL, f"model '{self.name}' failed to execute: {first_line(error)}")

    async def _run(self, delay_first: bool = True) -> None:
        """Hands the queue to free instances batch after batch until it is empty: what queued while an instance ran
        waits for the delay; ``delay_first=False`` runs the first batch at once (requests that found the model
        idle)."""
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                if not self._free:
                    for pending in self._queue:
                        pending.waits()
                    await self._sleep(loop, None)  # until an execution ends (or close)
                    continue
                # What queued during an execution waits for the delay, counted from its oldest request.
                if delay_first:
                    await self._fill(loop)
                delay_first = True
                batch = self._take()
                self._starting = False
                if batch:
                    self._execute_batch(loop, batch)
        except Exception as error:  # a bug here must fail the waiting requests, not leave them hanging
            log.exception("model '%s': batcher stopped", self.name)
            failure = ServingError(Status.INTERNAL, f"model '{self.name}': batcher failed: {first_line(error)}")
            while self._queue:
                pending = self._queue.popleft()
                if not pending.future.done():
                    pending.future.set_exception(failure)
            self._queued_samples = 0
        finally:
            self._worker = None
            self._starting = False

    async def _sleep(self, loop: asyncio.AbstractEventLoop, timeout_s: float | None) -> None:
        self._wakeup = wakeup = loop.create_future()
        timer = None if timeout_s is None else loop.call_later(timeout_s, _resolve, wakeup)
        try:
            await wakeup
        finally:
            self._wakeup = None
            if timer is not None:
                timer.cancel()

    async def _fill(self, loop: asyncio.AbstractEventLoop) -> None:
        """Waits until the oldest request's delay is over or a full batch is queued (at once if nothing merges)."""
        if not self._queue or not self._merges:
            return
        flush_at_ns = self._queue[0].enqueued_ns + self.max_queue_delay_us * 1000
        while not self._closing and self._queued_samples < self.max_batch_size and not self._preferred_formed():
            remaining_s = (flush_at_ns - time.monotonic_ns()) / 1e9
            if remaining_s <= 0:
                return
            for pending in self._queue:
                pending.waits()
            await self._sleep(loop, remaining_s)

    def _take(self) -> list[_Pending]:
        """Takes the requests that fit with the first live one in turn (it always fits, so none starves): the
        oldest, unless priority levels or delayed requests reorder the queue; only that one when nothing merges."""
        now = time.monotonic()
        live: list[_Pending] = []
        reordered = False
        for pending in list(self._queue):
            if pending.future.done():
                continue
            if pending.deadline is not None and now > pending.deadline:
                self._expire(pending)
                continue
            live.append(pending)
            reordered = reordered or pending.level != 0 or pending.delay_at is not None
        if reordered:
            live.sort(key=lambda pending: pending.turn(now))
        batch, kept, samples = [], deque(), 0
        for pending in live:
            if batch and not self._merges:
                kept.append(pending)
            elif pending.shape_key == live[0].shape_key and samples + pending.batch_size <= self.max_batch_size:
                batch.append(pending)
                samples += pending.batch_size
            else:
                kept.append(pending)
        if self._preferred and len(batch) > 1:
            batch = self._preferred_part(batch)
            taken = set(map(id, batch))
            kept = deque(pending for pending in live if id(pending) not in taken)
        self._queue = kept
        self._queued_samples = sum(p.batch_size for p in kept)
        return batch

    def _preferred_part(self, batch: list[_Pending]) -> list[_Pending]:
        """The longest first part of ``batch`` whose samples add up to a preferred size, or all of it if none
        does."""
        total, cut = 0, 0
        for count, pending in enumerate(batch, start=1):
            total += pending.batch_size
            if total in self._preferred:
                cut = count
        return batch[:cut] if cut else batch

    def _execute_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        """Runs the batch on a free instance: inline, done when this returns; or in the instance's thread, whose
        end delivers the results and frees the instance while the worker goes on with the queue."""
        instance = self._free.pop()
        runner, parts = self._instances[instance], [p.inputs for p in batch]
        started = time.monotonic_ns()
        if self._runs_inline(sum(p.batch_size for p in batch)):
            try:
                self._settle(batch, started, lambda: self._merge_and_run(runner, self._call_ns, parts))
            finally:
                self._free.append(instance)
            return
        for pending in (*batch, *self._queue):
            pending.waits()
        work = self._submit(runner, self._call_ns, parts)
        work.add_done_callback(
            lambda _: _call_on(loop, self._pool_execution_ended, loop, instance, batch, started, work)
        )

    def _pool_execution_ended(
        self,
        loop: asyncio.AbstractEventLoop,
        instance: int,
        batch: list[_Pending],
        started: int,
        work: concurrent.futures.Future,
    ) -> None:
        try:
            self._settle(batch, started, work.result)
        finally:
            self._execution_ended(loop, (instance,))

    def _settle(self, batch: list[_Pending], started: int, result_of: Callable[[], _Call]) -> None:
        """Delivers the execution's result to the batch's requests, or fails them with what it raised."""
        try:
            result = result_of()
        except Exception as error:  # the model failing must fail these requests, never the server
            self._fail(batch, error)
        else:
            self._deliver(batch, started, result)

    def _fail(self, batch: list[_Pending], error: Exception) -> None:
        failure = self._failure(error, sum(p.batch_size for p in batch))
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(failure)

    def _deliver(self, batch: list[_Pending], started: int, call: _Call) -> None:
        """Gives each request its own rows of the merged outputs, and records the execution."""
        split_started = time.monotonic_ns()
        outputs, started_ns, merged_ns, returned_ns = call
        offset = 0
        for pending in batch:
            if not pending.future.done():
                rows = slice(offset, offset + pending.batch_size)
                pending.future.set_result(
                    outputs if len(batch) == 1 else {name: array[rows] for name, array in outputs.items()}
                )
            offset += pending.batch_size
        split_ended = time.monotonic_ns()
        samples = sum(p.batch_size for p in batch)
        queue_ns = sum(started - p.enqueued_ns for p in batch)
        self._record(
            samples, len(batch), queue_ns, merged_ns - started_ns, returned_ns - merged_ns, split_ended - split_started
        )
        for pending in batch:
            if pending.trace is not None:
                _stamp_call(pending.trace, call, split_ended)

    def _merge_and_run(
        self, runner: Callable[[Tensors], Tensors], estimates: dict[int, float], parts: list[Tensors]
    ) -> _Call:
        """Runs in a thread of the pool, or on the loop for a cheap call: concatenates the inputs, calls the model
        once, and updates the runner's estimate of that size's call."""
        started = time.monotonic_ns()
        merged = parts[0] if len(parts) == 1 else {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        merged_at, thread_started = time.monotonic_ns(), time.thread_time_ns()
        outputs = runner(merged)
        returned_at = time.monotonic_ns()
        # The estimate is the calling thread's CPU time, not the wall time: on a shared machine a call that was
        # preempted half-way would otherwise look slow and send a fast model back to the pool. (ONNX Runtime's
        # caller works with its intra-op threads and waits for them, so its CPU time is close to the call's.)
        call_ns = time.thread_time_ns() - thread_started
        # Written from the pool's thread or the loop, read on the loop: a float per key, no lock needed.
        size = next(iter(merged.values())).shape[0].bit_length()
        previous = estimates.get(size)
        estimates[size] = call_ns if previous is None else previous + _ESTIMATE_WEIGHT * (call_ns - previous)
        return outputs, started, merged_at, returned_at


def _call_on(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: object) -> None:
    """Schedules ``callback`` on the loop from a pool thread; a loop already closed (the server stopped without
    draining) has no one left to tell."""
    if not loop.is_closed():
        loop.call_soon_threadsafe(callback, *args)


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
