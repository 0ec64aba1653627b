"""Breaker state in Redis: one hash per breaker, one atomic Lua script per decision.

Every process sharing the Redis server sees one breaker per name. Decisions that change shared
state (a failure, a success while failures are pending, a HALF_OPEN trial, a reset) are one
EVALSHA each, timed by the Redis server's clock so that hosts with skewed clocks agree. The
healthy path (CLOSED, or OPEN with time left) is answered from a local view kept fresh by
pub/sub (see :mod:`.local_view`), so it costs no round trip.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import redis

from soulspot_jobs.circuit_breaker import policy
from soulspot_jobs.circuit_breaker.backends.base import Backend
from soulspot_jobs.circuit_breaker.backends.local_view import LocalView, ViewWatcher
from soulspot_jobs.circuit_breaker.backends.scripts import register_scripts
from soulspot_jobs.circuit_breaker.config import CircuitBreakerConfig
from soulspot_jobs.circuit_breaker.errors import BackendUnavailableError
from soulspot_jobs.circuit_breaker.state import (
    ADMITTED_DISABLED,
    ADMITTED_LOCALLY,
    BreakerRecord,
    BreakerStats,
    CircuitState,
    Decision,
    Transition,
    Verdict,
)

#: Default prefix of the breaker hashes (``<prefix>:<name>``) and the pub/sub channel.
DEFAULT_PREFIX = "soulspot:breaker"
#: Seconds between two refreshes of the local views (and flushes of local counts).
DEFAULT_REFRESH_INTERVAL = 1.0
#: Seconds between two flushes of the successes counted locally for sliding windows: short
#: enough that a window which crosses its threshold by them opens well within a second.
OUTCOME_FLUSH_INTERVAL = 0.25
#: A view older than this many refresh intervals is not trusted (the watcher is stuck).
STALE_AFTER_INTERVALS = 3
#: Socket timeouts, in seconds, of clients made by :meth:`RedisBackend.from_url`.
SOCKET_TIMEOUT = 2.0

#: Any valid config: the snapshot script reads no thresholds.
_SNAPSHOT_CONFIG = CircuitBreakerConfig()
_VERDICTS = {v.value: v for v in Verdict}
#: Looked up once: the healthy path runs them on every call.
_CLOSED = CircuitState.CLOSED
_monotonic = time.monotonic
_STATES = {s.value: s for s in CircuitState}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisBackend(Backend):
    """Cluster-wide breaker state in Redis 6.2+ or Valkey.

    ``clock`` replaces the Redis server clock (tests move time with it); ``local_view=False``
    sends every decision to Redis (no pub/sub, no background thread).

    With a sliding window, the successes of ordinary calls are counted in this process and
    flushed every ``outcome_flush_interval`` seconds in one pipeline (and with any failure this
    process reports, before it), so a healthy call costs a fraction of a round trip.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        clock: Callable[[], float] | None = None,
        local_view: bool = True,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
        outcome_flush_interval: float = OUTCOME_FLUSH_INTERVAL,
    ) -> None:
        super().__init__()
        self.client = client
        self.outcome_flush_interval = outcome_flush_interval
        self.prefix = prefix
        self.channel = f"{prefix}:events"
        self.refresh_interval = refresh_interval
        self._clock = clock
        self._use_local_view = local_view
        self._stale_after = refresh_interval * STALE_AFTER_INTERVALS
        self._scripts = register_scripts(client)
        self._views: dict[str, LocalView] = {}
        #: Guards the views' counters and the watcher's start.
        self._lock = threading.Lock()
        #: Held while local counts are on their way to Redis, so ``stats`` never misses them.
        self._flush_lock = threading.Lock()
        self._watcher: ViewWatcher | None = None
        self._refreshed_at = float("-inf")
        #: ``time.monotonic()`` until which the local views may answer: the last refresh plus the
        #: staleness bound, while the watcher is live; ``-inf`` otherwise.
        self._trusted_until = float("-inf")
        #: Redis server time minus ``time.monotonic()``, from the latest reply.
        self._offset = time.time() - time.monotonic()
        self._closed = False
        #: Set by :meth:`from_url`: the client was made here, and :meth:`close` closes it.
        self._owns_client = False
        _forget_after_fork(self)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisBackend:
        """A backend on a new client for ``url`` (``redis://``, ``rediss://``, ``unix://``);
        :meth:`close` closes that client too."""
        client = redis.Redis.from_url(
            url, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT
        )
        backend = cls(client, **options)
        backend._owns_client = True
        return backend

    def key(self, name: str) -> str:
        """The Redis key of the breaker ``name``."""
        return f"{self.prefix}:{name}"

    # -- the healthy path, answered from the local view ------------------------------------

    def admit_from_view(self, name: str, config: CircuitBreakerConfig) -> bool:
        view = self._views.get(name)
        if view is None or not view.admits or _monotonic() >= self._trusted_until:
            return False
        view.requests.add_one()
        return True

    def admit_locally(self, name: str, config: CircuitBreakerConfig) -> Decision | None:
        if self.admit_from_view(name, config):
            return ADMITTED_LOCALLY
        view = self._views.get(name)
        if view is None:
            return None
        mono = _monotonic()
        if mono >= self._trusted_until:
            return None
        state = view.state
        if state is _CLOSED:  # disabled, or closed since ``admit_from_view`` looked
            return ADMITTED_DISABLED if view.mode == "disabled" else None
        now = self._clock() if self._clock else mono + self._offset
        if state is CircuitState.OPEN:
            until = view.open_until
        elif state is CircuitState.HALF_OPEN:
            until = view.busy_until
        else:
            return None
        if now >= until:
            return None
        view.requests.add_one()
        view.rejections.add_one()
        return Decision(Verdict.REJECTED, state, policy.positive(until - now), local=True)

    def record_success_locally(self, name: str, config: CircuitBreakerConfig) -> bool:
        view = self._views.get(name)
        if view is None or view.state is not _CLOSED:
            return False
        if _monotonic() >= self._trusted_until:
            return False
        if config.sliding_window_type != "consecutive":  # ``config.windowed``, without a call
            view.config = config
            view.window_successes.add_one()
            return True
        if view.failure_count:
            # Even lapsed failures go to Redis once: the success resets the shared count, which
            # an OPEN period reached through a ``hold_open`` would otherwise report.
            return False
        view.successes.add_one()
        return True

    # -- atomic decisions, one Lua script each ---------------------------------------------

    def admit(self, name: str, config: CircuitBreakerConfig, token: str) -> Decision:
        reply = self._run("admit", name, config, token)
        verdict, retry_after, transition, state = _decision_parts(reply)
        if verdict is Verdict.REJECTED and state is CircuitState.HALF_OPEN:
            view = self._views.get(name)
            if view is not None:
                view.busy_until = float(reply[5]) + retry_after
        return Decision(
            verdict,
            state,
            retry_after=retry_after,
            token=token if verdict is Verdict.TRIAL else None,
            transition=transition,
            disabled=_text(reply[11]) == "disabled",
        )

    def record_success(
        self, name: str, config: CircuitBreakerConfig, token: str | None, *, slow: bool = False
    ) -> Transition | None:
        return _transition(self._report("record_success", name, config, token, slow=slow))

    def record_failure(
        self,
        name: str,
        config: CircuitBreakerConfig,
        token: str | None,
        hold_open: float | None = None,
        reason: str = "",
        *,
        slow: bool = False,
    ) -> Transition | None:
        reply = self._report("record_failure", name, config, token, hold_open, reason, slow=slow)
        return _transition(reply)

    def set_mode(self, name: str, config: CircuitBreakerConfig, mode: str) -> Transition | None:
        return _transition(self._run("set_mode", name, config, None, mode=mode))

    def release(self, name: str, config: CircuitBreakerConfig, token: str) -> None:
        self._run("release", name, config, token)

    def reset(self, name: str, config: CircuitBreakerConfig) -> Transition | None:
        return _transition(self._run("reset", name, config, None))

    def force_open(
        self, name: str, config: CircuitBreakerConfig, seconds: float, reason: str = ""
    ) -> Transition | None:
        return _transition(self._run("force_open", name, config, None, seconds, reason))

    def stats(self, name: str, config: CircuitBreakerConfig) -> BreakerStats:
        with self._flush_lock:  # no flush may move local counts to Redis in between
            now_text, flat = self._call("snapshot", name, config, None, None)
            record = record_from_hash(flat)
            view = self._views.get(name)
            if view is not None:
                with self._lock:
                    requests, successes, rejections = view.pending_counts()
                    successes += view.window_successes.pending()
                record.total_requests += requests
                record.total_successes += successes
                record.total_rejections += rejections
        return policy.stats(record, config, name, float(now_text))

    def reopen(self) -> None:
        self._closed = False

    def close(self) -> None:
        self._closed = True
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher.join(timeout=self.refresh_interval + SOCKET_TIMEOUT)
            self._watcher = None
        with contextlib.suppress(redis.RedisError):
            self.flush_outcomes()
            self._flush_counts()
        if self._owns_client:
            self.client.close()

    # -- used by the view watcher -----------------------------------------------------------

    def refresh(self) -> None:
        """Re-read every breaker this process uses and flush local counts, in one round trip."""
        names = list(self._views)
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            self._scripts["snapshot"](
                keys=[self.key(name)],
                args=self._args(name, _SNAPSHOT_CONFIG, None, None, ""),
                client=pipe,
            )
        with self._flush_lock:
            flushed = self._queue_counts(pipe)
            try:
                replies = pipe.execute()
            except redis.RedisError:
                self._restore_counts(flushed)
                raise
        for name, (now_text, flat) in zip(names, replies, strict=False):
            self._offset = float(now_text) - time.monotonic()
            record = record_from_hash(flat)
            self._views[name].update(
                record.state,
                record.failure_count,
                record.last_failure_at,
                record.open_until,
                record.version,
                record.mode,
            )
        self._refreshed_at = time.monotonic()

    def flush_outcomes(self) -> None:
        """Send the successes counted locally for sliding windows, one script per breaker, in
        one round trip; a transition they cause is handed to the breaker's listener."""
        batches = []
        with self._lock:
            for name, view in self._views.items():
                if view.config is not None:
                    count = view.window_successes.take()
                    if count:
                        batches.append((name, view, count))
        if not batches:
            return
        pipe = self.client.pipeline(transaction=False)
        for name, view, count in batches:
            self._scripts["record_outcomes"](
                keys=[self.key(name)],
                args=self._args(name, view.config, None, None, "", batched=count),
                client=pipe,
            )
        try:
            replies = pipe.execute()
        except redis.RedisError:
            with self._lock:
                for _, view, count in batches:
                    view.window_successes.give_back(count)
            raise
        for (name, view, _), reply in zip(batches, replies, strict=True):
            view.update(*_view_parts(reply))
            transition = _transition(reply)
            if transition is not None:
                self.notify(name, transition)

    def apply_event(self, event: Sequence[str]) -> None:
        """Apply a view change published by a Lua script:
        ``[name, now, state, failure_count, last_failure_at, open_until, version, mode]``."""
        name, _now, state, failure_count, last_failure_at, open_until, version = event[:7]
        view = self._views.get(name)
        if view is not None:
            view.update(
                _state(state),
                _whole(failure_count),
                _number(last_failure_at),
                _number(open_until),
                int(version),
                event[7] if len(event) > 7 else "",
            )

    def note_watcher_error(self, exc: redis.RedisError) -> None:
        """The watcher lost Redis: decisions go to Redis (and its error policy) until it is back."""
        self._refreshed_at = float("-inf")
        self.distrust_views()

    def trust_views(self) -> None:
        """The watcher is live and has just refreshed: the views may answer for a while."""
        self._trusted_until = self._refreshed_at + self._stale_after

    def distrust_views(self) -> None:
        """The watcher is not live: every decision goes to Redis until it is again."""
        self._trusted_until = float("-inf")

    # -- internals --------------------------------------------------------------------------

    def _ensure_watcher(self) -> None:
        if not self._use_local_view or self._watcher is not None or self._closed:
            return
        with self._lock:
            if self._watcher is None:
                self._watcher = ViewWatcher(self, self.refresh_interval)
                self._watcher.start()

    def _args(
        self,
        name: str,
        config: CircuitBreakerConfig,
        token: str | None,
        hold_open: float | None,
        reason: str,
        *,
        slow: bool = False,
        batched: int = 0,
        mode: str = "",
    ) -> list[str | int | float]:
        return [
            repr(self._clock()) if self._clock else "",
            self.channel,
            name,
            token or "",
            config.failure_threshold,
            config.success_threshold,
            repr(config.timeout),
            repr(config.reset_timeout),
            config.half_open_max_calls,
            repr(config.trial_lease),
            repr(config.half_open_retry_after),
            repr(config.timeout_multiplier),
            "" if config.max_timeout is None else repr(config.max_timeout),
            "" if hold_open is None else repr(hold_open),
            reason,
            config.sliding_window_type,
            config.sliding_window_size,
            config.minimum_calls,
            repr(config.failure_rate_threshold),
            "" if config.slow_call_duration is None else repr(config.slow_call_duration),
            repr(config.slow_call_rate_threshold),
            "1" if slow else "",
            batched or "",
            mode,
        ]

    def _call(
        self,
        operation: str,
        name: str,
        config: CircuitBreakerConfig,
        token: str | None,
        hold_open: float | None,
        reason: str = "",
        **extra: Any,
    ) -> list[Any]:
        """Run one script; Redis errors become :class:`BackendUnavailableError` here, only here."""
        try:
            return self._scripts[operation](
                keys=[self.key(name)],
                args=self._args(name, config, token, hold_open, reason, **extra),
            )
        except redis.RedisError as exc:
            raise BackendUnavailableError(f"Redis failed during {operation}: {exc}") from exc

    def _run(
        self,
        operation: str,
        name: str,
        config: CircuitBreakerConfig,
        token: str | None,
        hold_open: float | None = None,
        reason: str = "",
        **extra: Any,
    ) -> list[Any]:
        """Run a decision script and take the view it returns into the local view."""
        reply = self._call(operation, name, config, token, hold_open, reason, **extra)
        self._offset = float(reply[5]) - time.monotonic()
        parts = _view_parts(reply)
        view = self._views.get(name)
        if view is None:
            with self._lock:
                view = self._views.setdefault(name, LocalView(*parts[:5], mode=parts[5]))
        view.update(*parts)
        self._ensure_watcher()
        return reply

    def _report(
        self,
        operation: str,
        name: str,
        config: CircuitBreakerConfig,
        token: str | None,
        hold_open: float | None = None,
        reason: str = "",
        *,
        slow: bool,
    ) -> list[Any]:
        """Run an outcome script; with a sliding window, the successes counted locally go first
        (given back if Redis fails)."""
        view = self._views.get(name)
        batched = 0
        if config.windowed and view is not None:
            with self._lock:
                batched = view.window_successes.take()
        try:
            return self._run(
                operation, name, config, token, hold_open, reason, slow=slow, batched=batched
            )
        except BackendUnavailableError:
            if batched and view is not None:
                with self._lock:
                    view.window_successes.give_back(batched)
            raise

    def _queue_counts(self, pipe: redis.client.Pipeline) -> dict[str, tuple[int, int, int]]:
        flushed = {}
        with self._lock:
            for name, view in self._views.items():
                counts = view.take_counts()
                if any(counts):
                    flushed[name] = counts
        for name, (requests, successes, rejections) in flushed.items():
            key = self.key(name)
            for field, amount in (
                ("total_requests", requests),
                ("total_successes", successes),
                ("total_rejections", rejections),
            ):
                if amount:
                    pipe.hincrby(key, field, amount)
        return flushed

    def _restore_counts(self, flushed: dict[str, tuple[int, int, int]]) -> None:
        with self._lock:
            for name, counts in flushed.items():
                self._views[name].give_back(counts)

    def _flush_counts(self) -> None:
        pipe = self.client.pipeline(transaction=False)
        with self._flush_lock:
            flushed = self._queue_counts(pipe)
            if flushed:
                try:
                    pipe.execute()
                except redis.RedisError:
                    self._restore_counts(flushed)
                    raise

    def _after_fork(self) -> None:
        """In a forked child: no watcher thread exists, and the parent's counts are not ours."""
        self._watcher = None
        self._views = {}
        self._refreshed_at = float("-inf")
        self._trusted_until = float("-inf")
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()


def _forget_after_fork(backend: RedisBackend) -> None:
    ref = weakref.ref(backend)

    def after_fork_in_child() -> None:
        alive = ref()
        if alive is not None:
            alive._after_fork()

    os.register_at_fork(after_in_child=after_fork_in_child)


def _view_parts(reply: list[Any]) -> tuple[CircuitState, int, float, float, int, str]:
    return (
        _state(_text(reply[6])),
        _whole(_text(reply[7])),
        _number(_text(reply[8])),
        _number(_text(reply[9])),
        int(reply[10]),
        _text(reply[11]),
    )


def _transition(reply: list[Any]) -> Transition | None:
    from_state = _text(reply[2])
    if not from_state:
        return None
    would = _text(reply[12]) == "1"
    return Transition(
        _state(from_state), _state(_text(reply[3])), _number(_text(reply[4])), would=would
    )


def _decision_parts(
    reply: list[Any],
) -> tuple[Verdict, float, Transition | None, CircuitState]:
    state = _state(_text(reply[6]))
    verdict = _VERDICTS[_text(reply[0])]
    retry_after = _number(_text(reply[1]))
    if verdict is Verdict.REJECTED:  # bounded, whatever open_until the hash held
        retry_after = policy.positive(retry_after)
    return verdict, retry_after, _transition(reply), state


def record_from_hash(flat: list[Any] | dict[Any, Any]) -> BreakerRecord:
    """Build a :class:`BreakerRecord` from a breaker hash as HGETALL returns it (a flat list of
    fields and values from a script, a dict from redis-py).

    Whatever the hash holds (an older version's fields, a hand edit), it is read as the Lua
    scripts read it (``load_record`` in ``lua/_lib.lua``): a number that does not parse, or is
    NaN, counts as 0, and a state the scripts do not know as CLOSED (they admit calls in it).
    An infinite ``open_until`` stays infinite: an OPEN period without end, until a reset.
    """
    record = BreakerRecord()
    pairs = flat.items() if isinstance(flat, dict) else zip(flat[::2], flat[1::2], strict=True)
    for field, value in pairs:
        field, value = _text(field), _text(value)
        if field.startswith("trial:"):
            record.trials[field[6:]] = _number(value)
        elif field.startswith("transitions:"):
            record.transitions[field[12:]] = _whole(value)
        elif field == "state":
            record.state = _state(value)
        elif field in ("reason", "mode", "window"):
            setattr(record, field, value)
        elif field in _FLOAT_FIELDS:
            setattr(record, field, _number(value))
        elif field in _INT_FIELDS:
            setattr(record, field, _whole(value))
    return record


def _state(text: str) -> CircuitState:
    """The state named ``text``; CLOSED for a name no script writes (see ``record_from_hash``)."""
    return _STATES.get(text, _CLOSED)


def _number(text: str) -> float:
    """``text`` as a float; 0.0 when it is not a number or is NaN (see ``record_from_hash``)."""
    try:
        value = float(text)
    except ValueError:
        return 0.0
    return 0.0 if math.isnan(value) else value


def _whole(text: str) -> int:
    """``text`` as an int (a count); 0 when it is not a finite number."""
    value = _number(text)
    return int(value) if math.isfinite(value) else 0


_FLOAT_FIELDS = frozenset({"last_failure_at", "open_until", "last_state_change", "forced_until"})
_INT_FIELDS = frozenset(
    {
        "failure_count",
        "reopens",
        "trial_successes",
        "version",
        "total_requests",
        "total_successes",
        "total_failures",
        "total_rejections",
        "would_opens",
    }
)
