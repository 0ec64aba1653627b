"""What the project's middleware stack costs a healthy tagged message, against plain Dramatiq.

Usage: ``python -m bench.middleware_throughput [--messages N] [--rounds R]``

One embedded Redis, one run, three measurements, each over ``R`` rounds (medians reported, the
machine is noisy):

1. **Throughput.** Each round drains ``N`` tagged no-op messages through one real Worker of 8
   threads on plain Dramatiq (its default middleware plus AsyncIO), then on ``build_broker``'s
   broker (breaker CLOSED, answered from its local view): rounds alternate, each on a flushed
   Redis, and each round's ratio compares the two halves of that round. Target: the median ratio
   >= 0.95.
2. **Hooks.** In one thread, the cost per message of the project's hooks on a healthy tagged
   message (the breaker middleware and the Retries' ``before``/``after_process_message`` and the
   actor's gate), and of the whole stack's dispatch against plain Dramatiq's. Target: the hooks
   <= 3 us.
3. **Job step bookkeeping.** The Redis round trips a job step's record costs (the step wrapper
   around a body that does nothing else), counted client-side. Target: <= 2.

And, for the record, the cost of deferring a backlog while the breaker is OPEN: round trips per
deferral. Round trips are counted client-side: each packed command or pipeline redis-py sends.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import timeit
from collections.abc import Callable

import dramatiq
from dramatiq.broker import MessageProxy

from bench._harness import (
    QUEUE,
    WORKER_THREADS,
    RoundTrips,
    flush,
    guarded_broker,
    plain_broker,
    quiet_logs,
    run_until,
    settings_for,
    stack_middleware,
)
from soulspot_jobs.embedded.server import EmbeddedRedis
from soulspot_jobs.jobs.records import JobState, JobStore
from soulspot_jobs.jobs.steps import job_step
from soulspot_jobs.keys import Keys
from soulspot_jobs.middleware import CircuitBreakerMiddleware, DeferringRetries

#: Targets of issue 15.
MIN_THROUGHPUT_RATIO = 0.95
MAX_HOOK_MICROSECONDS = 3.0
MAX_STEP_ROUND_TRIPS = 2
#: Messages timed per hook measurement.
HOOK_CALLS = 20_000


def drain(broker: dramatiq.Broker, messages: int, **options: object) -> tuple[float, int]:
    """Enqueue ``messages`` no-op messages, run a worker until all ran; (seconds, round trips)."""
    ran = 0
    lock = threading.Lock()

    @dramatiq.actor(broker=broker, queue_name=QUEUE, max_retries=0, **options)
    def noop() -> None:
        nonlocal ran
        with lock:
            ran += 1

    for _ in range(messages):
        noop.send()
    worker = dramatiq.Worker(broker, worker_threads=WORKER_THREADS, worker_timeout=100)
    trips = RoundTrips()
    with trips.counting():
        seconds = run_until(worker, lambda: ran >= messages, timeout=300)
    worker.stop()
    return seconds, trips.count


def throughput_round(url: str, messages: int) -> tuple[float, float, float, float]:
    """One round: (plain msg/s, stack msg/s, plain trips/msg, stack trips/msg)."""
    settings = settings_for(url)
    flush(url)
    plain = plain_broker(url, settings)
    plain_s, plain_trips = drain(plain, messages, **_tag_if_known(plain))
    plain.close()
    flush(url)
    stack = guarded_broker(settings)
    stack_s, stack_trips = drain(stack, messages, service="slskd-api")
    stack.close()
    return (
        messages / plain_s,
        messages / stack_s,
        plain_trips / messages,
        stack_trips / messages,
    )


def _tag_if_known(broker: dramatiq.Broker) -> dict[str, str]:
    """Plain Dramatiq knows no ``service`` option: its messages are the same, untagged."""
    return {"service": "slskd-api"} if "service" in broker.actor_options else {}


def hook_costs(url: str) -> tuple[float, float]:
    """Microseconds per healthy tagged message, in one thread: (the project's hooks and gate,
    the whole stack's dispatch minus plain Dramatiq's)."""
    settings = settings_for(url)
    flush(url)
    stack = guarded_broker(settings)
    plain = plain_broker(url, settings)
    try:
        stack_actor = _noop(stack, service="slskd-api")
        plain_actor = _noop(plain)
        stack_message = MessageProxy(stack_actor.message())
        plain_message = MessageProxy(plain_actor.message())
        admission = stack_middleware(stack, CircuitBreakerMiddleware)
        decision = stack_middleware(stack, DeferringRetries)
        ungated = stack_actor.fn.__wrapped__

        def ours() -> None:
            decision.before_process_message(stack, stack_message)
            admission.before_process_message(stack, stack_message)
            stack_actor.fn()
            admission.after_process_message(stack, stack_message, result=None)
            decision.after_process_message(stack, stack_message, result=None)

        def bare() -> None:
            ungated()

        _dispatch(stack, stack_actor, stack_message)()  # the breaker's view comes up
        wait_for_view = time.monotonic() + 5
        while stack.breakers["slskd-api"].backend.admit_locally(
            "slskd-api", stack.breakers["slskd-api"].config
        ) is None and time.monotonic() < wait_for_view:
            time.sleep(0.05)
        hooks = _best(ours) - _best(bare)
        dispatch = _best(_dispatch(stack, stack_actor, stack_message)) - _best(
            _dispatch(plain, plain_actor, plain_message)
        )
        return hooks, dispatch
    finally:
        stack.close()
        plain.close()


def _noop(broker: dramatiq.Broker, **options: str) -> dramatiq.Actor:
    @dramatiq.actor(broker=broker, queue_name=QUEUE, actor_name="noop", **options)
    def noop() -> None:
        pass

    return noop


def _dispatch(
    broker: dramatiq.Broker, actor: dramatiq.Actor, message: MessageProxy
) -> Callable[[], None]:
    """What a worker thread does around one message, without the queue."""

    def one() -> None:
        broker.emit_before("process_message", message)
        actor(*message.args, **message.kwargs)
        broker.emit_after("process_message", message, result=None)

    return one


def _best(fn: Callable[[], None]) -> float:
    """Microseconds per call: the best of five timings of HOOK_CALLS calls."""
    return min(timeit.repeat(fn, number=HOOK_CALLS, repeat=5)) / HOOK_CALLS * 1e6


def step_round_trips(url: str, steps: int = 200) -> float:
    """Round trips per run of a job step whose body does nothing: the step's own bookkeeping."""
    settings = settings_for(url)
    flush(url)
    import redis

    client = redis.Redis.from_url(url)
    store = JobStore(client, Keys(settings.key_prefix))
    step = job_step(store, JobState.SEARCHING, "slskd-api", max_retries=3)(lambda job_id: None)
    ids = [store.create("download", query="q").id for _ in range(steps)]
    trips = RoundTrips()
    with trips.counting():
        for job_id in ids:
            step(job_id)
    client.close()
    return trips.count / steps


def defer_backlog(url: str, messages: int) -> tuple[float, float]:
    """Deferring ``messages`` while OPEN: (deferrals per second, round trips per deferral)."""
    flush(url)
    deferrals = 0
    lock = threading.Lock()

    def count_deferral(message: object, job: object) -> None:
        nonlocal deferrals
        with lock:
            deferrals += 1

    broker = guarded_broker(settings_for(url))
    stack_middleware(broker, DeferringRetries).deferrals.on_defer = count_deferral

    @dramatiq.actor(broker=broker, queue_name=QUEUE, service="slskd-api", max_retries=0)
    def noop() -> None:
        raise AssertionError("must not run while the breaker is OPEN")

    broker.breakers["slskd-api"].force_open_sync(600.0)
    for _ in range(messages):
        noop.send()
    worker = dramatiq.Worker(broker, worker_threads=WORKER_THREADS, worker_timeout=100)
    trips = RoundTrips()
    with trips.counting():
        seconds = run_until(worker, lambda: deferrals >= messages, timeout=300)
    worker.stop()
    broker.close()
    return messages / seconds, trips.count / messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3_000)
    parser.add_argument("--rounds", type=int, default=7)
    options = parser.parse_args()
    n, rounds = options.messages, options.rounds
    quiet_logs()
    with EmbeddedRedis() as server:
        url = server.url
        results = [throughput_round(url, n) for _ in range(rounds)]
        hooks = [hook_costs(url) for _ in range(rounds)]
        step_trips = step_round_trips(url)
        defer_rate, defer_trips = defer_backlog(url, n)

    ratios = [stack / plain for plain, stack, _, _ in results]
    ratio = statistics.median(ratios)
    plain_rate = statistics.median(r[0] for r in results)
    stack_rate = statistics.median(r[1] for r in results)
    plain_trips = statistics.median(r[2] for r in results)
    stack_trips = statistics.median(r[3] for r in results)
    hook_us = statistics.median(h[0] for h in hooks)
    dispatch_us = statistics.median(h[1] for h in hooks)

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    print(f"{rounds} rounds of {n} tagged no-op messages, one worker of {WORKER_THREADS} threads")
    print("ratios per round: " + ", ".join(f"{r:.3f}" for r in ratios))
    print(
        f"throughput ratio, median: {ratio:.3f} (target >= {MIN_THROUGHPUT_RATIO}) "
        f"{verdict(ratio >= MIN_THROUGHPUT_RATIO)}"
    )
    print(
        f"hooks of a healthy tagged message, median: {hook_us:.2f} us "
        f"(target <= {MAX_HOOK_MICROSECONDS}) {verdict(hook_us <= MAX_HOOK_MICROSECONDS)}"
    )
    print(
        f"job step bookkeeping: {step_trips:.2f} round trips "
        f"(target <= {MAX_STEP_ROUND_TRIPS}) {verdict(step_trips <= MAX_STEP_ROUND_TRIPS)}"
    )
    print()
    print("| metric | value |")
    print("| --- | --- |")
    print(f"| plain Dramatiq, {n} no-op messages, {WORKER_THREADS} threads | {plain_rate:.0f} msg/s |")
    print(f"| `build_broker`'s stack, tagged, breaker CLOSED | {stack_rate:.0f} msg/s |")
    print(f"| throughput ratio, median of {rounds} alternating rounds | {ratio:.3f} |")
    print(f"| round trips per message, plain / stack | {plain_trips:.2f} / {stack_trips:.2f} |")
    print(f"| the project's hooks per healthy tagged message, one thread | {hook_us:.2f} us |")
    print(f"| the whole stack's dispatch over plain Dramatiq's, one thread | {dispatch_us:.2f} us |")
    print(f"| a job step's record bookkeeping | {step_trips:.2f} round trips |")
    print(f"| deferring a {n}-message backlog while OPEN | {defer_rate:.0f} msg/s |")
    print(f"| round trips per deferral | {defer_trips:.2f} |")


if __name__ == "__main__":
    main()
