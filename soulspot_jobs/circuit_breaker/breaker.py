"""The :class:`CircuitBreaker` facade: guards calls, classifies outcomes, logs transitions.

All decisions are delegated to a backend (:mod:`.backends`), which makes each one atomically; the
facade adds what callers see: :class:`CircuitBreakerError` on refusal, the design's log lines,
sync and async call forms, and the store-error policy (fail open or closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import inspect
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ParamSpec, TypeVar

import structlog

from soulspot_jobs.circuit_breaker.backends.base import Backend
from soulspot_jobs.circuit_breaker.backends.memory import MemoryBackend
from soulspot_jobs.circuit_breaker.config import CircuitBreakerConfig
from soulspot_jobs.circuit_breaker.errors import BackendUnavailableError, CircuitBreakerError
from soulspot_jobs.circuit_breaker.policy import SETTABLE_MODES, validate_open_duration
from soulspot_jobs.circuit_breaker.state import (
    ADMITTED_LOCALLY,
    BreakerMode,
    BreakerStats,
    CircuitState,
    Decision,
    Transition,
    Verdict,
)
from soulspot_jobs.errors import (
    ConfigurationError,
    HoldBack,
    ServiceOutage,
    ServiceUnavailableError,
    failure_reason,
)

log = structlog.get_logger("soulspot_jobs.circuit_breaker")

P = ParamSpec("P")
R = TypeVar("R")

#: ``retry_after`` (seconds) of calls refused because the store is unreachable and the breaker
#: fails closed (``on_backend_error="reject"``).
STORE_RETRY_AFTER = 5.0
#: What an operator's force-open records as the breaker's reason.
FORCED_REASON = "forced open by an operator"

_monotonic = time.monotonic

#: Nothing held.
NOTHING_HELD: frozenset[str] = frozenset()


class Holds:
    """The breakers whose permit the current context holds: ``held``, their names.

    A call guarded by a held breaker neither takes a second permit nor counts its outcome twice
    (:func:`holding`). A context variable refers to one ``Holds``; a :func:`holding` block puts
    a new one in place for its duration. The Dramatiq middleware holds the actor's own service
    for the whole message without a context change per message: each worker thread puts one
    ``Holds`` of its own in its context once (:meth:`enter`), and the middleware sets and clears
    its ``held`` per message (setting and resetting a context variable would cost more than the
    rest of a healthy message's admission). An async actor runs in a copy of the worker
    thread's context, which refers to the same object: it sees the hold of the message it runs
    for.
    """

    __slots__ = ("held",)

    def __init__(self, held: frozenset[str] = NOTHING_HELD) -> None:
        self.held = held

    def enter(self) -> None:
        """Make this the current context's holds; from a worker thread itself, outside any
        copied context, so that the thread keeps it."""
        _holds.set(self)


#: The current context's holds. Its default holds nothing and is never changed: only a ``Holds``
#: put in place by :meth:`Holds.enter` has its ``held`` set, by its owner.
_holds: ContextVar[Holds] = ContextVar("soulspot_held_breakers", default=Holds())  # noqa: B039


@contextmanager
def holding(name: str) -> Iterator[None]:
    """Within this block, calls guarded by breakers named ``name`` run unguarded: the caller
    holds a permit of that breaker and reports the outcome itself."""
    token = _holds.set(Holds(_holds.get().held | {name}))
    try:
        yield
    finally:
        _holds.reset(token)


class Permit:
    """Permission for one call, returned by :meth:`CircuitBreaker.acquire_sync`.

    Report the call's outcome with exactly one of ``record_success*``, ``record_failure*``,
    ``release*`` or ``record_outcome*``; later reports of the same permit are ignored.
    """

    __slots__ = ("token", "local", "done", "stand_in", "disabled", "started")

    def __init__(
        self, token: str | None, local: bool, stand_in: bool = False, disabled: bool = False
    ) -> None:
        #: The HALF_OPEN trial slot this call holds, if it is a trial.
        self.token = token
        #: Admitted from the local view; its success may be counted without a round trip.
        self.local = local
        #: Admitted by this process's own breaker while the store was unreachable; its outcome
        #: is counted there.
        self.stand_in = stand_in
        #: Admitted by a disabled breaker: its outcome counts nowhere.
        self.disabled = disabled
        #: ``time.monotonic()`` when the call was admitted: tells a slow call.
        self.started = _monotonic()
        self.done = disabled

    @property
    def is_trial(self) -> bool:
        return self.token is not None


class CircuitBreaker:
    """One service's circuit breaker; every instance with the same name and store shares state.

    Exceptions count as service failures when ``is_failure(exc)`` is true; by default, instances
    of ``failure_exceptions`` that are not instances of ``exclude``. A hold raised inside the
    guarded call (another breaker's :class:`CircuitBreakerError`, a
    :class:`~soulspot_jobs.errors.RetryLater`) never counts. Calls that end in a non-failure
    exception count nothing and give their HALF_OPEN trial slot back.
    """

    def __init__(
        self,
        name: str,
        config: CircuitBreakerConfig | None = None,
        *,
        backend: Backend | None = None,
        failure_exceptions: tuple[type[BaseException], ...] = (Exception,),
        exclude: tuple[type[BaseException], ...] = (),
        is_failure: Callable[[BaseException], bool] | None = None,
    ) -> None:
        self.name = name
        #: What a context holding this breaker alone holds (:class:`Holds`).
        self.held_alone = frozenset((name,))
        self.config = config if config is not None else CircuitBreakerConfig()
        self.backend = backend if backend is not None else MemoryBackend()
        self._failure_exceptions = failure_exceptions
        self._exclude = (HoldBack, *exclude)
        self._is_failure = is_failure
        #: This process's own breaker, with the same settings, while the shared store is
        #: unreachable and the policy is "allow" (see :meth:`_standing_in`).
        self._stand_in: MemoryBackend | None = None
        #: The healthy path of a caller that reports its own outcome (the Dramatiq middleware),
        #: without a :class:`Permit`, one call each way. ``admit_from_view()``: ``True`` when a
        #: call was admitted, and counted, from this process's view of a CLOSED breaker (never
        #: while calls are timed, ``slow_call_duration``, or the breaker stands in for its
        #: store); ``False``: nothing was decided, ask :meth:`acquire_sync`. Its success:
        #: ``count_view_success()``, and when that is ``False``
        #: ``record_success_sync(Permit(None, False))``; any other outcome with a
        #: ``Permit(None, True)``.
        self._admit_from_view: Callable[[], bool] = functools.partial(
            self.backend.admit_from_view, name, self.config
        )
        self.count_view_success: Callable[[], bool] = functools.partial(
            self.backend.record_success_locally, name, self.config
        )
        self._set_stand_in(None)
        self.backend.listen(name, self._log_transition)

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, backend={type(self.backend).__name__})"

    # -- monitoring -------------------------------------------------------------------------

    @property
    def stats(self) -> BreakerStats:
        """A snapshot of this breaker's state and totals (one round trip on Redis). While the
        store is unreachable and this process stands in for it, the stand-in's snapshot, marked
        ``local``."""
        try:
            return self.backend.stats(self.name, self.config)
        except BackendUnavailableError:
            stand_in = self._stand_in
            if stand_in is None:
                raise
            return dataclasses.replace(stand_in.stats(self.name, self.config), local=True)

    @property
    def standing_in(self) -> bool:
        """Whether this process decides alone now, its store being unreachable."""
        return self._stand_in is not None

    @property
    def state(self) -> CircuitState:
        """The effective state now (one round trip on Redis)."""
        return self.stats.state

    def is_failure(self, exc: BaseException) -> bool:
        """Whether ``exc`` counts as a failure of this breaker's service."""
        if isinstance(exc, self._exclude):
            return False
        if self._is_failure is not None:
            return self._is_failure(exc)
        return isinstance(exc, self._failure_exceptions)

    def _hold_open_for(self, exc: BaseException) -> float | None:
        """Seconds the failure ``exc`` keeps the circuit OPEN whatever the count (``None``: the
        count decides): the service's ``Retry-After``, or ``timeout`` for an outage that opens
        at once."""
        retry_after = _service_retry_after(exc)
        if isinstance(exc, ServiceOutage) and exc.opens_at_once:
            return max(retry_after or 0.0, self.config.timeout)
        return retry_after

    # -- the two-step form, synchronous ------------------------------------------------------

    def acquire_sync(self) -> Permit:
        """Ask before a call; raises :class:`CircuitBreakerError` when the call must not run."""
        if self._stand_in is None:
            decision = self.backend.admit_locally(self.name, self.config)
            if decision is ADMITTED_LOCALLY:
                return Permit(None, True)  # the healthy path, kept short
            try:
                if decision is None:
                    token = uuid.uuid4().hex
                    decision = self._ask(self.backend.admit, self.name, self.config, token)
            except BackendUnavailableError:
                if self.config.on_backend_error == "reject":
                    decision = Decision(Verdict.REJECTED, CircuitState.OPEN, STORE_RETRY_AFTER)
            else:
                return self._permit(decision)
            if self._stand_in is None:  # "reject": refused while the store is away
                return self._permit(decision)
        return self._admit_standing_in()

    def record_success_sync(self, permit: Permit) -> None:
        """Report that the call admitted by ``permit`` succeeded (a slow success when it took
        ``slow_call_duration`` or more)."""
        if permit.done:
            return
        permit.done = True
        if permit.stand_in:
            self._stand_in_report("record_success", permit.token)
            return
        if self._slow(permit):
            self._report(self.backend.record_success, permit.token, slow=True)
            return
        if permit.local and self.backend.record_success_locally(self.name, self.config):
            return
        self._report(self.backend.record_success, permit.token)

    def _slow(self, permit: Permit) -> bool:
        """Whether the call of ``permit`` took ``slow_call_duration`` or more."""
        limit = self.config.slow_call_duration
        return limit is not None and _monotonic() - permit.started >= limit

    def record_failure_sync(
        self, permit: Permit, *, hold_open: float | None = None, reason: str = ""
    ) -> Transition | None:
        """Report that the call failed; ``hold_open`` keeps the circuit OPEN that many seconds,
        ``reason`` says why (shown by ``stats.reason`` while the circuit is not CLOSED).

        Returns the transition the failure caused (to OPEN, with its duration), if any.
        """
        if permit.done:
            return None
        permit.done = True
        if permit.stand_in:
            return self._stand_in_report("record_failure", permit.token, hold_open, reason)
        return self._report(
            self.backend.record_failure,
            permit.token,
            hold_open,
            reason,
            reason=reason,
            slow=self._slow(permit),
        )

    def release_sync(self, permit: Permit) -> None:
        """Report that the call ended without an outcome that counts (or never ran)."""
        if permit.done:
            return
        permit.done = True
        if permit.token is not None and permit.stand_in:
            self._stand_in_report("release", permit.token)
        elif permit.token is not None:
            self._report(self.backend.release, permit.token)

    def record_outcome_sync(self, permit: Permit, exc: BaseException | None) -> Transition | None:
        """Report the call's outcome: success when ``exc`` is None, else per :meth:`is_failure`.

        A :class:`ServiceUnavailableError` carrying the service's ``Retry-After`` keeps the
        circuit OPEN at least that long; a :class:`~soulspot_jobs.errors.ServiceOutage` that
        ``opens_at_once`` opens it now, for its ``timeout``. The failure's reason
        (:func:`~soulspot_jobs.errors.failure_reason`) becomes the breaker's. Returns the
        transition a failure caused, if any.
        """
        if exc is None:
            self.record_success_sync(permit)
        elif self.is_failure(exc):
            return self.record_failure_sync(
                permit, hold_open=self._hold_open_for(exc), reason=failure_reason(exc)
            )
        else:
            self.release_sync(permit)
        return None

    def reset_sync(self) -> None:
        """Force the circuit CLOSED; totals are kept."""
        transition = self._ask(self.backend.reset, self.name, self.config)
        if transition is not None:
            log.info(
                f"Circuit breaker {self.name} was reset to CLOSED state.",
                event_name="circuit_breaker.reset",
                circuit_breaker=self.name,
                state=CircuitState.CLOSED.value,
            )

    def force_open_sync(self, seconds: float, *, reason: str = FORCED_REASON) -> None:
        """Force the circuit OPEN for ``seconds`` (maintenance), for every process sharing it.

        Calls are refused meanwhile (jobs are deferred); afterwards the circuit turns HALF_OPEN
        as after any OPEN period. :meth:`reset_sync` ends it early. Totals are kept. ``seconds``
        must be finite, more than 0 and at most :data:`~.policy.MAX_FORCE_OPEN` (7 days), else
        :class:`~soulspot_jobs.errors.ConfigurationError` (a ``ValueError``) is raised and
        nothing changes (:func:`~.policy.validate_open_duration`).
        """
        validate_open_duration(seconds)
        self._ask(self.backend.force_open, self.name, self.config, float(seconds), reason)
        log.warning(
            f"Circuit breaker {self.name} was forced OPEN for {seconds:.1f} seconds.",
            event_name="circuit_breaker.forced_open",
            circuit_breaker=self.name,
            state=CircuitState.OPEN.value,
            retry_after=round(float(seconds), 3),
        )

    def set_mode_sync(self, mode: str, *, seconds: float | None = None) -> None:
        """Set this breaker's mode for every process sharing it, within a second:
        ``normal``; ``disabled`` (admit everything, count nothing); ``metrics_only`` (count and
        log the openings it would make, never refuse); ``forced_open`` (refuse for ``seconds``,
        as :meth:`force_open_sync`). ``normal`` also ends a forced OPEN period. An unknown mode
        raises :class:`~soulspot_jobs.errors.ConfigurationError` and changes nothing."""
        if mode == BreakerMode.FORCED_OPEN.value:
            if seconds is None:
                raise ConfigurationError("forced_open needs a period: give seconds")
            self.force_open_sync(seconds)
            return
        if mode not in SETTABLE_MODES:
            known = ", ".join((*SETTABLE_MODES, BreakerMode.FORCED_OPEN.value))
            raise ConfigurationError(f"unknown breaker mode {mode!r}: use one of {known}")
        transition = self._ask(self.backend.set_mode, self.name, self.config, mode)
        log.warning(
            f"Circuit breaker {self.name} mode set to {mode}.",
            event_name="circuit_breaker.mode",
            circuit_breaker=self.name,
            mode=mode,
        )
        if transition is not None:
            self._log_transition(transition)

    def call_sync(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``fn(*args, **kwargs)`` behind the breaker, from a worker thread."""
        if self.name in _holds.get().held:
            return fn(*args, **kwargs)
        permit = None if self.admit_from_view() else self._acquire_logged()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self.record_outcome_sync(permit or Permit(None, True), exc)
            raise
        if permit is not None:
            self.record_success_sync(permit)
        elif not self.count_view_success():
            self.record_success_sync(Permit(None, False))
        return result

    # -- the same, for coroutines ------------------------------------------------------------

    async def acquire(self) -> Permit:
        """Async :meth:`acquire_sync`; round trips run in a thread, never on the event loop."""
        if self._stand_in is None:
            decision = self.backend.admit_locally(self.name, self.config)
            if decision is not None:
                return self._permit(decision)
        return await self._off_loop(self.acquire_sync)

    async def record_success(self, permit: Permit) -> None:
        """Async :meth:`record_success_sync`."""
        if permit.done:
            return
        local = permit.local and not permit.stand_in and not self._slow(permit)
        if local and self.backend.record_success_locally(self.name, self.config):
            permit.done = True
            return
        await self._off_loop(self.record_success_sync, permit)

    async def record_failure(
        self, permit: Permit, *, hold_open: float | None = None, reason: str = ""
    ) -> None:
        """Async :meth:`record_failure_sync`."""
        await self._off_loop(
            functools.partial(self.record_failure_sync, hold_open=hold_open, reason=reason), permit
        )

    async def release(self, permit: Permit) -> None:
        """Async :meth:`release_sync`."""
        if permit.token is None:
            permit.done = True
            return
        await self._off_loop(self.release_sync, permit)

    async def record_outcome(self, permit: Permit, exc: BaseException | None) -> None:
        """Async :meth:`record_outcome_sync`."""
        if exc is None:
            await self.record_success(permit)
        elif self.is_failure(exc):
            await self.record_failure(
                permit, hold_open=self._hold_open_for(exc), reason=failure_reason(exc)
            )
        else:
            await self.release(permit)

    async def reset(self) -> None:
        """Force the circuit CLOSED; totals are kept."""
        await self._off_loop(self.reset_sync)

    async def force_open(self, seconds: float, *, reason: str = FORCED_REASON) -> None:
        """Async :meth:`force_open_sync`."""
        await self._off_loop(functools.partial(self.force_open_sync, reason=reason), seconds)

    async def set_mode(self, mode: str, *, seconds: float | None = None) -> None:
        """Async :meth:`set_mode_sync`."""
        await self._off_loop(functools.partial(self.set_mode_sync, seconds=seconds), mode)

    async def call(
        self, fn: Callable[P, Awaitable[R] | R], /, *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """Run ``fn`` behind the breaker, awaiting it when it returns an awaitable."""
        if self.name in _holds.get().held:
            result = fn(*args, **kwargs)
            return await result if inspect.isawaitable(result) else result  # type: ignore[return-value]
        try:
            permit = await self.acquire()
        except CircuitBreakerError as exc:
            self._log_blocked(exc)
            raise
        try:
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
        except BaseException as exc:
            await self.record_outcome(permit, exc)
            raise
        await self.record_success(permit)
        return result  # type: ignore[return-value]

    # -- internals ---------------------------------------------------------------------------

    async def _off_loop(self, fn: Callable[..., R], *args: Any) -> R:
        if self.backend.in_memory:
            return fn(*args)
        return await asyncio.to_thread(fn, *args)

    def _acquire_logged(self) -> Permit:
        try:
            return self.acquire_sync()
        except CircuitBreakerError as exc:
            self._log_blocked(exc)
            raise

    def _permit(self, decision: Decision) -> Permit:
        if decision.transition is not None:
            self._log_transition(decision.transition)
        if decision.verdict is Verdict.REJECTED:
            raise CircuitBreakerError(self.name, decision.retry_after, decision.state)
        return Permit(decision.token, decision.local, disabled=decision.disabled)

    def _report(
        self,
        operation: Callable[..., Transition | None],
        *args: Any,
        reason: str = "",
        slow: bool = False,
    ) -> Transition | None:
        """Run an outcome report; a store failure is logged once per episode, never raised.
        ``reason`` goes into the log line of a transition to OPEN; ``slow`` is passed on only
        when set (a backend of an older shape takes no such argument)."""
        extra = {"slow": True} if slow else {}
        try:
            transition = self._ask(
                functools.partial(operation, **extra) if extra else operation,
                self.name,
                self.config,
                *args,
            )
        except BackendUnavailableError:
            # the store went away during the call: the stand-in counts it (as no trial's)
            if self._stand_in is None or operation.__name__ == "release":
                return None
            token, *rest = args
            return self._stand_in_report(operation.__name__, None, *rest)
        if transition is not None:
            self._log_transition(transition, reason)
        return transition

    def _admit_standing_in(self) -> Permit:
        """Admit by this process's own breaker; once a second, the store is asked first (one
        snapshot), and when it answers its shared state is used again."""
        if not self.backend.store_suspended():
            with contextlib.suppress(BackendUnavailableError):
                self._ask(self.backend.stats, self.name, self.config)
        stand_in = self._stand_in
        if stand_in is None:  # the store is back
            return self.acquire_sync()
        decision = stand_in.admit(self.name, self.config, uuid.uuid4().hex)
        if decision.transition is not None:
            self._log_transition(decision.transition)
        if decision.verdict is Verdict.REJECTED:
            raise CircuitBreakerError(self.name, decision.retry_after, decision.state)
        return Permit(decision.token, False, stand_in=True)

    def _stand_in_report(self, operation: str, token: str | None, *args: Any) -> Transition | None:
        stand_in = self._stand_in
        if stand_in is None:  # the store came back during the call: it was one call
            return None
        transition = getattr(stand_in, operation)(self.name, self.config, token, *args)
        if transition is not None:
            reason = args[1] if operation == "record_failure" and len(args) > 1 else ""
            self._log_transition(transition, reason)
        return transition

    def _ask(self, operation: Callable[..., R], *args: Any) -> R:
        """Run a backend decision, logging the start and end of store outages once each.

        While an outage is on, the store is tried once per ``STORE_RETRY_INTERVAL``; calls in
        between fail at once, so a dead store costs no timeout per call.
        """
        if self.backend.store_suspended():
            self._stand_in_if_allowed()
            raise BackendUnavailableError("the store failed moments ago; not asking it yet")
        try:
            result = operation(*args)
        except BackendUnavailableError as exc:
            first = self.backend.begin_outage()
            if self._stand_in_if_allowed() or first:
                if self.config.on_backend_error == "allow":
                    policy = (
                        "deciding alone with a breaker of this process's own (same settings) "
                        "until it is back"
                    )
                else:
                    policy = "refusing calls (fail closed)"
                log.error(
                    f"Circuit breaker {self.name} cannot reach its store; {policy}.",
                    event_name="circuit_breaker.store_unavailable",
                    circuit_breaker=self.name,
                    state="local" if self._stand_in is not None else "unknown",
                    error=str(exc),
                )
            raise
        ended = self.backend.end_outage()
        if self._stand_in is not None or ended:
            self._set_stand_in(None)
            log.info(
                f"Circuit breaker {self.name} reached its store again; its shared state is "
                "used from now on.",
                event_name="circuit_breaker.store_available",
                circuit_breaker=self.name,
                state="unknown",
            )
        return result

    def _stand_in_if_allowed(self) -> bool:
        """Under the "allow" policy, start standing in for the store; True if this started it."""
        if self.config.on_backend_error != "allow" or self._stand_in is not None:
            return False
        self._set_stand_in(MemoryBackend())
        return True

    def _set_stand_in(self, stand_in: MemoryBackend | None) -> None:
        """Start (a backend) or stop (``None``) standing in for the store; the view path is
        open only while the store decides and no call is timed."""
        self._stand_in = stand_in
        timed = self.config.slow_call_duration is not None
        self.admit_from_view = _no_view if stand_in is not None or timed else self._admit_from_view

    def _log_blocked(self, exc: CircuitBreakerError) -> None:
        log.warning(
            str(exc),
            event_name="circuit_breaker.blocked",
            circuit_breaker=self.name,
            state=exc.state.value,
            retry_after=round(exc.retry_after, 3),
        )

    def _log_transition(self, transition: Transition, reason: str = "") -> None:
        to_state = transition.to_state
        fields: dict[str, Any] = {"circuit_breaker": self.name, "state": to_state.value}
        if transition.would:
            log.warning(
                f"Circuit breaker {self.name} would have transitioned to OPEN state "
                f"(metrics_only mode: calls are still admitted).",
                event_name="circuit_breaker.would_open",
                circuit_breaker=self.name,
                state=CircuitState.CLOSED.value,
                mode=BreakerMode.METRICS_ONLY.value,
                **({"reason": reason} if reason else {}),
            )
            return
        if to_state is CircuitState.OPEN:
            if reason:
                fields["reason"] = reason
            log.warning(
                f"Circuit breaker {self.name} transitioned to OPEN state. "
                f"Blocking requests for {transition.open_for:.1f} seconds.",
                event_name="circuit_breaker.opened",
                from_state=transition.from_state.value,
                retry_after=round(transition.open_for, 3),
                **fields,
            )
        elif to_state is CircuitState.HALF_OPEN:
            log.info(
                f"Circuit breaker {self.name} transitioned to HALF_OPEN state. "
                "Testing service recovery.",
                event_name="circuit_breaker.half_open",
                **fields,
            )
        else:
            log.info(
                f"Circuit breaker {self.name} transitioned to CLOSED state. Service recovered.",
                event_name="circuit_breaker.closed",
                **fields,
            )


def _no_view() -> bool:
    """``admit_from_view`` of a breaker whose calls must go through :meth:`acquire_sync`."""
    return False


def _service_retry_after(exc: BaseException) -> float | None:
    """The service's own ``Retry-After`` carried by ``exc``, if any."""
    if isinstance(exc, ServiceUnavailableError) and exc.retry_after:
        return exc.retry_after
    return None


def circuit_breaker(
    name: str,
    config: CircuitBreakerConfig | None = None,
    *,
    backend: Backend | None = None,
    **options: Any,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a sync or async function so that every call goes through the breaker ``name``.

    The breaker is available as the wrapper's ``circuit_breaker`` attribute.
    """
    breaker = CircuitBreaker(name, config, backend=backend, **options)

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                return await breaker.call(fn, *args, **kwargs)

            async_wrapper.circuit_breaker = breaker  # type: ignore[attr-defined]
            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            return breaker.call_sync(fn, *args, **kwargs)

        wrapper.circuit_breaker = breaker  # type: ignore[attr-defined]
        return wrapper

    return decorate
