"""The circuit-breaker state machine as pure functions: record, time and config in, decision out.

No I/O and no locking happen here. :class:`~.backends.memory.MemoryBackend` applies these functions
under a lock; the Redis backend's Lua scripts implement the same rules atomically on the server,
and the property tests hold both to one reference model. Every function that changes the record
bumps ``record.version``.
"""

from __future__ import annotations

import math

from soulspot_jobs.circuit_breaker import window
from soulspot_jobs.circuit_breaker.config import CircuitBreakerConfig
from soulspot_jobs.circuit_breaker.state import (
    ADMITTED_DISABLED,
    BreakerMode,
    BreakerRecord,
    BreakerStats,
    CircuitState,
    Decision,
    Transition,
    Verdict,
)
from soulspot_jobs.errors import ConfigurationError

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN
#: The stored modes (a record's ``mode``); normal is stored as "".
DISABLED, METRICS_ONLY = BreakerMode.DISABLED.value, BreakerMode.METRICS_ONLY.value
#: The modes an operator sets with :func:`set_mode` (forced_open is :func:`force_open`).
SETTABLE_MODES = (BreakerMode.NORMAL.value, DISABLED, METRICS_ONLY)

#: Smallest ``retry_after`` ever given, in seconds, so that a refusal never says "retry now".
MIN_RETRY_AFTER = 0.001
#: Longest an operator may force a breaker OPEN, in seconds (7 days): ``soulspot-jobs open
#: --for``, :meth:`~.breaker.CircuitBreaker.force_open_sync` and the operators' page refuse more
#: (:func:`validate_open_duration`). A longer maintenance is renewed, or ended with a reset.
MAX_FORCE_OPEN = 7 * 24 * 60 * 60.0
#: Largest ``retry_after`` ever given or shown, in seconds (7 days). A refused message cannot be
#: deferred longer anyway (the Redis broker's longest delay is 7 days), and only a stored state
#: that no operation writes asks for more (an ``open_until`` of ``inf`` or ``1e15`` written by an
#: older version or by hand): the breaker is simply asked again once it is over.
MAX_RETRY_AFTER = MAX_FORCE_OPEN


def validate_open_duration(seconds: float) -> float:
    """``seconds`` if it is a forced-open period an operator may ask for, else
    :class:`~soulspot_jobs.errors.ConfigurationError` (a ``ValueError``) naming the value and the
    range: a finite number of seconds, more than 0 and at most :data:`MAX_FORCE_OPEN`.

    The one check of every way a forced-open period comes in (the CLI's ``open --for``, the
    Python API, the operators' page), so that none can store a period without end.
    """
    number = isinstance(seconds, int | float) and not isinstance(seconds, bool)
    if not number or not math.isfinite(seconds) or not 0 < seconds <= MAX_FORCE_OPEN:
        raise ConfigurationError(
            f"a forced-open period must be a number of seconds more than 0 and at most "
            f"{MAX_FORCE_OPEN:.0f} (7 days), got {seconds!r}"
        )
    return seconds


def effective_state(record: BreakerRecord, now: float) -> CircuitState:
    """The state a caller sees at ``now``: OPEN becomes HALF_OPEN once its period is over."""
    if record.state is OPEN and now >= record.open_until:
        return HALF_OPEN
    return record.state


def pending_failures(record: BreakerRecord, config: CircuitBreakerConfig, now: float) -> int:
    """Failures that still count towards opening at ``now`` (they lapse after ``reset_timeout``)."""
    if record.failure_count and now - record.last_failure_at > config.reset_timeout:
        return 0
    return record.failure_count


def admit(record: BreakerRecord, config: CircuitBreakerConfig, now: float, token: str) -> Decision:
    """Decide whether a call may run now; in HALF_OPEN, take a trial slot leased to ``token``.

    A disabled breaker admits without counting; in ``metrics_only`` mode the circuit never
    leaves CLOSED, so every call is admitted (and counted).
    """
    if record.mode == DISABLED:
        return ADMITTED_DISABLED
    record.total_requests += 1
    transition = None
    if record.state is OPEN:
        if now < record.open_until:
            record.total_rejections += 1
            return Decision(Verdict.REJECTED, OPEN, retry_after=positive(record.open_until - now))
        transition = _move(record, HALF_OPEN, now)
    if record.state is HALF_OPEN:
        expire_trials(record, now)
        if len(record.trials) < config.half_open_max_calls:
            record.trials[token] = now + config.trial_lease
            record.version += 1
            return Decision(Verdict.TRIAL, HALF_OPEN, token=token, transition=transition)
        record.total_rejections += 1
        first_free = min(record.trials.values()) - now
        retry_after = positive(min(config.half_open_retry_after, first_free))
        return Decision(Verdict.REJECTED, HALF_OPEN, retry_after=retry_after, transition=transition)
    return Decision(Verdict.ADMITTED, CLOSED)


def record_success(
    record: BreakerRecord,
    config: CircuitBreakerConfig,
    now: float,
    token: str | None,
    *,
    slow: bool = False,
    batched: int = 0,
) -> Transition | None:
    """Count a success: it clears pending failures in CLOSED and counts as a trial in HALF_OPEN.

    With a sliding window it is added to the window instead, after ``batched`` earlier successes
    a process counted locally, and a ``slow`` one may open the circuit by the slow-call rate. A
    slow trial counts as a failed one: the service answers, but not yet well.
    """
    if record.mode == DISABLED:
        return None
    record.total_successes += 1
    transition = record_successes(record, config, now, batched)
    if transition is not None:  # the batch decided already
        return transition
    if record.state is CLOSED:
        if config.windowed:
            kind = window.SLOW_SUCCESS if slow else window.SUCCESS
            _add_to_window(record, config, now, kind, 1)
            return _judge_window(record, config, now, "")
        if record.failure_count:
            record.failure_count = 0
            record.version += 1
        return None
    if record.state is HALF_OPEN and _end_trial(record, now, token):
        if slow and config.slow_call_duration is not None:
            record.reason = f"trial call took {config.slow_call_duration:g} s or more"
            return _open(record, config, now, reopens=record.reopens + 1)
        record.trial_successes += 1
        if record.trial_successes >= config.success_threshold:
            return _close(record, now)
    return None


def record_successes(
    record: BreakerRecord, config: CircuitBreakerConfig, now: float, count: int
) -> Transition | None:
    """Count ``count`` successes of ordinary calls a process counted locally and now flushes:
    totals always, the window only while CLOSED (the window of an earlier CLOSED period is gone).
    They may complete ``minimum_calls`` and so open the circuit by rate."""
    if record.mode == DISABLED or count <= 0:
        return None
    record.total_successes += count
    if record.state is not CLOSED or not config.windowed:
        return None
    _add_to_window(record, config, now, window.SUCCESS, count)
    return _judge_window(record, config, now, "")


def record_failure(
    record: BreakerRecord,
    config: CircuitBreakerConfig,
    now: float,
    token: str | None,
    hold_open: float | None = None,
    reason: str = "",
    *,
    slow: bool = False,
    batched: int = 0,
) -> Transition | None:
    """Count a failure; open the circuit at the threshold (or failure rate) or when a trial fails.

    ``hold_open`` (seconds) is the service's own "retry after": the circuit opens at once and stays
    OPEN at least that long, whatever the failure count. ``reason`` (the failure's, when given)
    becomes the breaker's reason. ``batched`` successes this process counted locally are added to
    the window first, so that the rate is judged on every outcome known here. In
    ``metrics_only`` mode an opening is only counted and returned as ``would``.
    """
    if record.mode == DISABLED:
        return None
    record.total_failures += 1
    transition = record_successes(record, config, now, batched)
    if transition is not None:  # the batch decided already
        return transition
    if reason:
        record.reason = reason
    if hold_open is not None:
        if record.mode == METRICS_ONLY:
            return _would_open(record, now, hold_open)
        return _hold_open(record, config, now, hold_open)
    if record.state is CLOSED:
        if config.windowed:
            kind = window.SLOW_FAILURE if slow else window.FAILURE
            _add_to_window(record, config, now, kind, 1)
            return _judge_window(record, config, now, reason)
        record.failure_count = pending_failures(record, config, now) + 1
        record.last_failure_at = now
        record.version += 1
        if record.failure_count >= config.failure_threshold:
            return _trip(record, config, now)
        return None
    if record.state is HALF_OPEN and _end_trial(record, now, token):
        return _open(record, config, now, reopens=record.reopens + 1)
    return None


def set_mode(record: BreakerRecord, now: float, mode: str) -> Transition | None:
    """An operator's mode for every process: ``normal``, ``disabled`` or ``metrics_only``.

    Disabling or watching (``metrics_only``) starts from a CLOSED circuit with nothing counted;
    ``normal`` also ends an operator's forced OPEN period. Returns the transition, if any.
    """
    stored = "" if mode == BreakerMode.NORMAL.value else mode
    forced = record.state is OPEN and now < record.forced_until
    if record.mode == stored and not (forced and not stored):
        return None
    record.mode = stored
    record.version += 1
    if stored or forced:
        if record.state is not CLOSED:
            return _close(record, now)
        record.failure_count = 0
        record.window = ""
    return None


def release(record: BreakerRecord, now: float, token: str | None) -> None:
    """Give a trial slot back without counting an outcome (excluded error, skipped call)."""
    if record.state is HALF_OPEN:
        _end_trial(record, now, token)


def reset(record: BreakerRecord, now: float) -> Transition | None:
    """Force the circuit CLOSED with no pending failures; totals are kept."""
    if record.state is CLOSED and not record.failure_count:
        return None
    return _close(record, now)


def force_open(
    record: BreakerRecord, now: float, seconds: float, reason: str = ""
) -> Transition | None:
    """An operator's maintenance switch: OPEN now for exactly ``seconds``, whatever the state.

    The period then ends like any OPEN period (HALF_OPEN, trials). Totals and the failure count
    are kept; the transition is returned when the circuit was not OPEN already.
    """
    transition = None if record.state is OPEN else _move(record, OPEN, now, seconds)
    record.open_until = now + seconds
    record.forced_until = now + seconds
    record.mode = ""  # forced_open replaces any other mode
    if reason:
        record.reason = reason
    record.version += 1
    return transition


def stats(
    record: BreakerRecord, config: CircuitBreakerConfig, name: str, now: float
) -> BreakerStats:
    """A monitoring snapshot of ``record`` as seen at ``now``."""
    state = effective_state(record, now)
    live_trials = sum(1 for lease in record.trials.values() if lease > now)
    forced = state is OPEN and now < record.forced_until
    calls, failures, slow = window.counts(record.window, config, now)
    return BreakerStats(
        name=name,
        state=state,
        total_requests=record.total_requests,
        total_failures=record.total_failures,
        total_successes=record.total_successes,
        total_rejections=record.total_rejections,
        failure_count=(
            pending_failures(record, config, now) if state is CLOSED else record.failure_count
        ),
        last_state_change=record.last_state_change,
        retry_after=positive(record.open_until - now) if state is OPEN else None,
        trials_in_flight=live_trials if state is HALF_OPEN else 0,
        reopens=record.reopens,
        forced_until=record.forced_until if forced else None,
        transitions=dict(record.transitions),
        reason=(record.reason or None) if state is not CLOSED else None,
        mode=BreakerMode.FORCED_OPEN.value if forced else (record.mode or BreakerMode.NORMAL.value),
        window_calls=calls,
        window_failures=failures,
        window_slow_calls=slow,
        would_opens=record.would_opens,
    )


def positive(seconds: float) -> float:
    """``seconds`` as a ``retry_after``: never below :data:`MIN_RETRY_AFTER` (NaN included), never
    above :data:`MAX_RETRY_AFTER` (infinity included)."""
    if not seconds > MIN_RETRY_AFTER:
        return MIN_RETRY_AFTER
    return min(seconds, MAX_RETRY_AFTER)


def _move(
    record: BreakerRecord, state: CircuitState, now: float, open_for: float = 0.0
) -> Transition:
    transition = Transition(record.state, state, open_for)
    record.state = state
    record.last_state_change = now
    record.trial_successes = 0
    record.trials.clear()
    record.forced_until = 0.0
    record.window = ""
    record.transitions[state.value] = record.transitions.get(state.value, 0) + 1
    record.version += 1
    return transition


def _open(
    record: BreakerRecord, config: CircuitBreakerConfig, now: float, reopens: int
) -> Transition:
    duration = config.open_duration(reopens)
    record.reopens = reopens
    record.open_until = now + duration
    return _move(record, OPEN, now, duration)


def _trip(record: BreakerRecord, config: CircuitBreakerConfig, now: float) -> Transition:
    """Open the circuit from CLOSED, or in ``metrics_only`` mode say that it would have."""
    if record.mode == METRICS_ONLY:
        return _would_open(record, now, config.open_duration(0))
    return _open(record, config, now, reopens=0)


def _would_open(record: BreakerRecord, now: float, duration: float) -> Transition:
    """``metrics_only``: count the opening and start counting afresh, as if it had opened and
    closed again; the circuit stays CLOSED."""
    record.would_opens += 1
    record.failure_count = 0
    record.window = ""
    record.version += 1
    return Transition(CLOSED, OPEN, duration, would=True)


def _add_to_window(
    record: BreakerRecord, config: CircuitBreakerConfig, now: float, kind: str, count: int
) -> None:
    if count > 0:
        record.window = window.add(record.window, config, now, kind, count)
        record.version += 1


def _judge_window(
    record: BreakerRecord, config: CircuitBreakerConfig, now: float, reason: str
) -> Transition | None:
    """Open the circuit when the window's rates say so (see :func:`.window.verdict`)."""
    why = window.verdict(record.window, config, now, reason)
    if why is None:
        return None
    record.reason = why
    return _trip(record, config, now)


def _hold_open(
    record: BreakerRecord, config: CircuitBreakerConfig, now: float, hold_open: float
) -> Transition | None:
    until = now + hold_open
    if record.state is OPEN and record.open_until >= until:
        return None
    if record.state is OPEN:
        record.open_until = until
        record.version += 1
        return None
    record.open_until = until
    return _move(record, OPEN, now, hold_open)


def _close(record: BreakerRecord, now: float) -> Transition:
    record.failure_count = 0
    record.reopens = 0
    record.reason = ""
    return _move(record, CLOSED, now)


def expire_trials(record: BreakerRecord, now: float) -> None:
    """Free the trial slots whose lease ended by ``now`` (their holders never reported)."""
    expired = [token for token, lease in record.trials.items() if lease <= now]
    for token in expired:
        del record.trials[token]
    if expired:
        record.version += 1


def _end_trial(record: BreakerRecord, now: float, token: str | None) -> bool:
    """Remove ``token``'s slot; True when it held a live one (so its outcome counts)."""
    expire_trials(record, now)
    if token is None or token not in record.trials:
        return False
    del record.trials[token]
    record.version += 1
    return True
