"""``CircuitBreakerMiddleware``: a tagged message runs only while its service's breaker admits it.

An actor tagged ``service="slskd-api"`` (or a message sent with that option) asks that service's
breaker once per message, in ``before_process_message``, and reports the outcome in
``after_process_message``: success, failure (by the breaker's classification), or no outcome (the
trial slot is given back). Untagged messages cost a dictionary look-up and nothing else. The
healthy path -- the breaker CLOSED in this process's view -- takes no :class:`Permit` and no
context change: :attr:`~CircuitBreaker.admit_from_view` and
:attr:`~CircuitBreaker.count_view_success`, and the thread's
:class:`~soulspot_jobs.circuit_breaker.breaker.Holds` names the breaker while the actor runs
(a client guarded by the same breaker inside the actor neither asks it again nor counts twice).

A message its breaker refuses must not run, and must not look like a failure or a success to the
other middleware (Results would store ``None``; Callbacks would fire). So the refusal is raised
*in place of the actor's call*: each actor's function is wrapped once, when it is declared, in a
gate that raises the refusal this middleware decided for the message being processed, and
otherwise calls the function as it is. The refusal is a :class:`CircuitBreakerError`, a
:class:`dramatiq.Retry`: the worker logs nothing for it, and the project's Retries
(:mod:`.retries`) defers the message. The same gate turns the worker's call of a tagged message
whose arguments do not fit the actor into :class:`~soulspot_jobs.errors.MalformedMessage` (its
message is dead-lettered at once, where retrying could never help); the arguments are checked only
when the call raised ``TypeError``, so a healthy message pays nothing for it. A direct Python call
of an actor's function is the function: the gate acts only on the worker's own call of the
message it was decided for (while no refusal waits for its gate, a gate does not even look).

The middleware decides nothing about what a message becomes; :class:`.retries.DeferringRetries`
does, asking :meth:`CircuitBreakerMiddleware.failure_left_open` whether a failure left a breaker
OPEN. It therefore comes after that middleware in the broker's list (Dramatiq calls ``after_*``
hooks in reverse order, so its report is in when Retries decides): :func:`~.stack.middleware_stack`
puts it there.
"""

from __future__ import annotations

import functools
import inspect
import sys
import threading
from collections.abc import Callable
from typing import Any

import dramatiq
import structlog
from dramatiq.middleware import Middleware
from dramatiq.middleware.time_limit import TimeLimitExceeded

from soulspot_jobs.circuit_breaker import (
    Breakers,
    CircuitBreaker,
    CircuitBreakerError,
    CircuitState,
    MemoryBackend,
    Permit,
    RedisBackend,
)
from soulspot_jobs.circuit_breaker.breaker import NOTHING_HELD, Holds
from soulspot_jobs.circuit_breaker.state import Transition
from soulspot_jobs.deferral.deferrals import Refusal
from soulspot_jobs.errors import Failure, MalformedMessage, classify, is_service_failure
from soulspot_jobs.keys import Keys
from soulspot_jobs.middleware.fields import message_fields
from soulspot_jobs.settings import Settings, load_settings

__all__ = ["CircuitBreakerMiddleware"]

log = structlog.get_logger("soulspot_jobs.middleware")

#: Failures that give the trial slot back without counting anything.
_NO_OUTCOME = frozenset({Failure.HOLD, Failure.MALFORMED, Failure.NEUTRAL})


class _Delivery(Holds):
    """What the middleware holds for the message one worker thread processes; as the thread's
    :class:`Holds`, ``held`` names the admitted message's breaker, which clients guarded by the
    same breaker inside the actor see."""

    __slots__ = ("actor", "refusal", "breaker", "permit", "left_open")

    def __init__(self) -> None:
        super().__init__()
        self.enter()
        #: The actor of the tagged message this thread processes (``None`` between messages, and
        #: once the gate raised its refusal), and the refusal to raise instead of calling it.
        self.actor: str | None = None
        self.refusal: BaseException | None = None
        #: The admitted message's breaker, and its permit (``None``: admitted from the
        #: breaker's view, :meth:`~CircuitBreaker.admit_from_view`, the healthy path).
        self.breaker: CircuitBreaker | None = None
        self.permit: Permit | None = None
        #: Set when the message's failure left a breaker OPEN (see ``failure_left_open``).
        self.left_open: Refusal | None = None


class _PerThread(threading.local):
    """Each worker thread's :class:`_Delivery` (one thread-local look-up per hook), made the
    first time a hook of that thread asks for it."""

    def __init__(self) -> None:
        self.delivery = _Delivery()


class _Refusals:
    """The refusals decided for worker threads and not raised by their gate yet.

    ``pending`` counts them: while it is 0, as in the healthy case, a gate calls its function
    without looking at its thread's delivery.
    """

    __slots__ = ("pending", "_lock")

    def __init__(self) -> None:
        self.pending = 0
        self._lock = threading.Lock()

    def put(self, delivery: _Delivery, refusal: BaseException) -> None:
        """Have the gate raise ``refusal`` in place of the delivery's call of its actor."""
        with self._lock:
            self.pending += 1
        delivery.refusal = refusal

    def take(self, delivery: _Delivery) -> BaseException | None:
        """The delivery's refusal not raised yet (``None``: there is none), taken."""
        refusal = delivery.refusal
        if refusal is not None:
            delivery.refusal = None
            with self._lock:
                self.pending -= 1
        return refusal


#: The permit :meth:`CircuitBreakerMiddleware.current_permit` shows for a message admitted from
#: its breaker's view: no trial, and its outcome is the middleware's to report.
_VIEW_PERMIT = Permit(None, True)
_VIEW_PERMIT.done = True


class CircuitBreakerMiddleware(Middleware):
    """Admits each tagged message through its service's breaker and reports its outcome.

    Parameters:
      breakers: the deployment's breakers (:class:`~soulspot_jobs.circuit_breaker.Breakers`);
        default: built here from ``settings`` on ``backend``, classifying with ``is_failure``.
      settings: breaker configs per service; default: :func:`load_settings`.
      backend: where breaker state lives, when ``breakers`` is not given; default: Redis at
        ``settings.redis_url`` when set, else process memory. A backend built here is closed
        with the middleware; a backend passed in is the caller's to close.
      is_failure: which exceptions escaping an actor count against its service's breaker
        (default :func:`~soulspot_jobs.errors.is_service_failure`: the service's own
        failures, never the job's own errors or bugs).
    """

    def __init__(
        self,
        *,
        breakers: Breakers | None = None,
        settings: Settings | None = None,
        backend: Any = None,
        is_failure: Callable[[BaseException], bool] = is_service_failure,
    ) -> None:
        if breakers is None:
            settings = settings if settings is not None else load_settings()
            owns_backend = backend is None
            if backend is None:
                url = settings.redis_url
                keys = Keys(settings.key_prefix)
                backend = (
                    RedisBackend.from_url(url, prefix=keys.breakers) if url else MemoryBackend()
                )
            breakers = Breakers(
                backend,
                config_for=settings.observability.circuit_breaker.config_for,
                is_failure=is_failure,
                owns_backend=owns_backend,
            )
        self.breakers = breakers
        self._threads = _PerThread()
        self._refusals = _Refusals()
        #: The breaker of each declared actor's ``service`` option (``None``: untagged).
        self._actor_breakers: dict[str, CircuitBreaker | None] = {}

    @property
    def actor_options(self) -> set[str]:
        return {"service"}

    def breaker(self, service: str) -> CircuitBreaker:
        """The breaker of ``service`` (the same object as ``self.breakers[service]``)."""
        return self.breakers[service]

    def current_permit(self) -> Permit | None:
        """The permit of the message the calling worker thread runs (``None``: untagged, refused,
        or not in a worker); ``permit.is_trial`` tells a HALF_OPEN trial. A message admitted
        from the breaker's view shows one shared permit, already reported (its outcome is the
        middleware's to report)."""
        delivery = self._threads.delivery
        if delivery.breaker is None:
            return None
        return delivery.permit or _VIEW_PERMIT

    def failure_left_open(self) -> Refusal | None:
        """For the message the calling worker thread just reported: whether its failure left a
        breaker OPEN, and until when (read once; the project's Retries asks)."""
        delivery = self._threads.delivery
        left_open, delivery.left_open = delivery.left_open, None
        return left_open

    # -- the worker's life ---------------------------------------------------------------

    def after_declare_actor(self, broker: dramatiq.Broker, actor: dramatiq.Actor) -> None:
        service = actor.options.get("service")
        self._actor_breakers[actor.actor_name] = self.breakers[service] if service else None
        if not getattr(actor.fn, "_soulspot_gate", False):
            actor.fn = _Gate(actor.fn, actor.actor_name, self._threads, self._refusals).wrapper()

    def before_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        self.breakers.reopen()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the breakers' backend when it was built here (its view watcher)."""
        self.breakers.close()

    # -- the message's life --------------------------------------------------------------

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        fields = message_fields(message)
        actor_name = fields.actor_name
        service = fields.options.get("service")
        if service is None:
            breaker = self._actor_breakers.get(actor_name)
            if breaker is None:
                return
        else:
            breaker = self.breakers[service]
        delivery = self._threads.delivery
        delivery.actor = actor_name
        if not breaker.admit_from_view():
            try:
                delivery.permit = breaker.acquire_sync()
            except CircuitBreakerError as refusal:
                self._refusals.put(delivery, refusal)
                return
        delivery.breaker = breaker
        delivery.held = breaker.held_alone

    def after_process_message(
        self, broker: dramatiq.Broker, message: Any, *, result: Any = None, exception: Any = None
    ) -> None:
        delivery = self._threads.delivery
        breaker = delivery.breaker
        if breaker is None:
            if delivery.actor is not None:  # refused, and its gate was never called
                self._refusals.take(delivery)
                delivery.actor = None
            return
        permit = delivery.permit
        delivery.actor = delivery.breaker = delivery.permit = None
        delivery.held = NOTHING_HELD
        if exception is None:
            if permit is not None:
                breaker.record_success_sync(permit)
            elif not breaker.count_view_success():
                breaker.record_success_sync(Permit(None, False))
            return
        delivery.left_open = self._report_failure(breaker, permit or Permit(None, True), exception)

    def after_skip_message(self, broker: dramatiq.Broker, message: Any) -> None:
        """A skipped message never ran to an outcome: give its trial slot back."""
        delivery = self._threads.delivery
        self._refusals.take(delivery)
        breaker, permit = delivery.breaker, delivery.permit
        delivery.actor = delivery.left_open = None
        delivery.breaker = delivery.permit = None
        delivery.held = NOTHING_HELD
        if breaker is not None and permit is not None:
            breaker.release_sync(permit)

    # -- reporting -----------------------------------------------------------------------

    def _report_failure(
        self, breaker: CircuitBreaker, permit: Permit, exc: BaseException
    ) -> Refusal | None:
        """Report a failed message to its breaker; whether a breaker is OPEN because of it."""
        service = breaker.name
        if classify(exc) in _NO_OUTCOME:
            breaker.release_sync(permit)
            return None
        if isinstance(exc, TimeLimitExceeded):
            transition = breaker.record_failure_sync(permit)
            return self._if_open(service, exc, _opened_for(transition))
        failed_service = getattr(exc, "service", None) or service
        if failed_service != service:
            # Another service's client counted this failure on its own breaker already.
            breaker.release_sync(permit)
            if not breaker.is_failure(exc):
                return None
            return self._held_by(failed_service, exc, None)
        if not breaker.is_failure(exc):
            breaker.release_sync(permit)
            return None
        transition = breaker.record_outcome_sync(permit, exc)
        return self._held_by(service, exc, _opened_for(transition))

    def _held_by(
        self, service: str, exc: BaseException, opened_for: float | None
    ) -> Refusal | None:
        """What holds the failed message back: the OPEN breaker; or, for an outage
        (:class:`~soulspot_jobs.errors.ServiceOutage`) met before the breaker opened, the
        breaker's ``timeout`` (the job is deferred, never retried, for an outage)."""
        refusal = self._if_open(service, exc, opened_for)
        if refusal is not None or classify(exc) is not Failure.OUTAGE:
            return refusal
        breaker = self.breakers[service]
        detail = getattr(exc, "detail", str(exc))
        retry_after = max(breaker.config.timeout, getattr(exc, "retry_after", None) or 0.0)
        reason = (
            f"{service} cannot serve jobs now ({detail}). Retry after {retry_after:.1f} seconds."
        )
        return Refusal(service, retry_after, reason, breaker.stats.state.value)

    def _if_open(
        self, service: str, exc: BaseException, opened_for: float | None
    ) -> Refusal | None:
        """How long ``service``'s breaker stays OPEN after this failure (``None``: it is not)."""
        if opened_for is None:
            stats = self.breakers[service].stats
            if stats.state is not CircuitState.OPEN or not stats.retry_after:
                return None
            opened_for = stats.retry_after
        retry_after = max(opened_for, getattr(exc, "retry_after", None) or 0.0)
        detail = getattr(exc, "detail", str(exc))
        reason = (
            f"Circuit breaker {service} is OPEN after a failure ({detail}). "
            f"Retry after {retry_after:.1f} seconds."
        )
        return Refusal(service, retry_after, reason, CircuitState.OPEN.value)


def _opened_for(transition: Transition | None) -> float | None:
    """Seconds the failure opened the breaker for; ``None`` when it did not (``metrics_only``
    mode only says it would have: the job is not held)."""
    if transition is None or transition.would:
        return None
    return transition.open_for


class _Gate:
    """What stands in for an actor's function: the function, except for the worker's call of a
    tagged message (see the module docstring)."""

    def __init__(
        self, fn: Callable[..., Any], actor_name: str, threads: _PerThread, refusals: _Refusals
    ) -> None:
        self.fn = fn
        self.actor_name = actor_name
        self.threads = threads
        self.refusals = refusals
        self._signature: inspect.Signature | None = None

    def wrapper(self) -> Callable[..., Any]:
        fn, actor_name, threads, refusals = self.fn, self.actor_name, self.threads, self.refusals

        @functools.wraps(fn)
        def gate(*args: Any, **kwargs: Any) -> Any:
            if refusals.pending:
                delivery = threads.delivery
                if delivery.actor == actor_name:
                    refusal = refusals.take(delivery)
                    if refusal is not None:
                        delivery.actor = None
                        raise refusal
            try:
                return fn(*args, **kwargs)
            except TypeError as exc:
                if threads.delivery.actor != actor_name or _called_by_a_gate():
                    raise  # untagged, or a direct Python call
                problem = self.argument_problem(args, kwargs)
                if problem is None:
                    raise
                raise MalformedMessage(problem) from exc

        gate._soulspot_gate = True  # type: ignore[attr-defined]
        _GATE_CODES.add(gate.__code__)
        return gate

    def argument_problem(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        """Why the actor cannot be called with these arguments (``None``: it can)."""
        if self._signature is None:
            try:
                self._signature = inspect.signature(self.fn)
            except (TypeError, ValueError):
                return None
        try:
            self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            return f"wrong arguments for {self.actor_name}: {exc}"
        return None


#: The code of the gates (every gate is a closure of the same code; a set, as a module reloaded
#: in development makes another).
_GATE_CODES: set[Any] = set()


def _called_by_a_gate() -> bool:
    """Whether the gate calling this is inside another gate's call: an actor's function called
    directly from inside an actor (its TypeError is the caller's, not a malformed message).
    Looked at only when a call raised ``TypeError``."""
    frame = sys._getframe(2)  # the gate's caller
    while frame is not None:
        if frame.f_code in _GATE_CODES:
            return True
        frame = frame.f_back
    return False
