"""The values circuit breakers exchange: states, decisions, transitions, statistics.

These are plain data. The rules that produce them live in :mod:`.policy` (in memory) and in the
Lua scripts of the Redis backend.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class CircuitState(enum.StrEnum):
    """The three states of the circuit-breaker pattern."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerMode(enum.StrEnum):
    """How a breaker acts on what it counts; set by an operator for every process at once."""

    #: Count outcomes, open and refuse as configured.
    NORMAL = "normal"
    #: Admit every call and count nothing.
    DISABLED = "disabled"
    #: Count outcomes and log the openings it would make, but never refuse a call: for trying
    #: thresholds out on live traffic.
    METRICS_ONLY = "metrics_only"
    #: Refuse every call until the operator's period ends (``force_open``).
    FORCED_OPEN = "forced_open"


class Verdict(enum.StrEnum):
    """What a backend answers when asked whether a call may run."""

    #: The call may run as an ordinary call (circuit CLOSED).
    ADMITTED = "admitted"
    #: The call may run as one of the limited HALF_OPEN trial calls.
    TRIAL = "trial"
    #: The call must not run; retry after ``Decision.retry_after`` seconds.
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of state, reported once, to the caller whose action caused it."""

    from_state: CircuitState
    to_state: CircuitState
    #: Seconds the circuit stays OPEN when ``to_state`` is OPEN, else 0.
    open_for: float = 0.0
    #: True when the circuit did not move: in ``metrics_only`` mode it only would have.
    would: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    """A backend's answer to "may this call run now?"."""

    verdict: Verdict
    #: The state the call was decided in (after any lazy OPEN -> HALF_OPEN transition).
    state: CircuitState
    #: Seconds to wait before retrying; positive when the verdict is REJECTED, else 0.
    retry_after: float = 0.0
    #: The trial slot's token for TRIAL verdicts; report outcomes with it.
    token: str | None = None
    #: The transition this decision caused, if any (OPEN -> HALF_OPEN).
    transition: Transition | None = None
    #: True when answered from the process's local view, without asking the shared store.
    local: bool = False
    #: True when the breaker is disabled: the call runs and its outcome counts nowhere.
    disabled: bool = False

    @property
    def admitted(self) -> bool:
        return self.verdict is not Verdict.REJECTED


#: The answer given on the healthy path: CLOSED, no failures pending, decided without I/O.
ADMITTED_LOCALLY = Decision(Verdict.ADMITTED, CircuitState.CLOSED, local=True)
#: The answer of a disabled breaker: run, and report nothing.
ADMITTED_DISABLED = Decision(Verdict.ADMITTED, CircuitState.CLOSED, local=True, disabled=True)


@dataclass(slots=True)
class BreakerRecord:
    """The whole state of one breaker, as the in-memory backend keeps it.

    The Redis backend keeps the same fields in one hash per breaker (see ``lua/_lib.lua``).
    All times are seconds on the backend's clock.
    """

    state: CircuitState = CircuitState.CLOSED
    #: Consecutive failures counted towards ``failure_threshold``.
    failure_count: int = 0
    last_failure_at: float = 0.0
    #: When the current OPEN period ends (meaningful while ``state`` is OPEN).
    open_until: float = 0.0
    #: Failed trials in a row since the circuit last closed; grows the OPEN period.
    reopens: int = 0
    #: Successful trials in the current HALF_OPEN period.
    trial_successes: int = 0
    #: Trial token -> time its lease ends.
    trials: dict[str, float] = field(default_factory=dict)
    last_state_change: float = 0.0
    #: Incremented by every change of state, failure count or trials.
    version: int = 0
    total_requests: int = 0
    total_successes: int = 0
    total_failures: int = 0
    total_rejections: int = 0
    #: Until when an operator forced the circuit OPEN (0: not forced); cleared by any transition.
    forced_until: float = 0.0
    #: State name -> times the circuit moved into that state.
    transitions: dict[str, int] = field(default_factory=dict)
    #: Why the circuit is not CLOSED: the latest counted failure's reason, or the operator's
    #: (``""`` while CLOSED: closing clears it).
    reason: str = ""
    #: The operator's mode: ``""`` (normal), ``"disabled"`` or ``"metrics_only"``. A forced
    #: OPEN period is ``forced_until``, not a mode here.
    mode: str = ""
    #: The sliding window's outcomes (see :mod:`.window`); emptied by every transition.
    window: str = ""
    #: Openings that ``metrics_only`` mode logged instead of making.
    would_opens: int = 0


@dataclass(frozen=True, slots=True)
class BreakerStats:
    """A snapshot of one breaker for monitoring (``CircuitBreaker.stats``)."""

    name: str
    #: The effective state: OPEN turns into HALF_OPEN once its timeout has passed.
    state: CircuitState
    total_requests: int
    total_failures: int
    total_successes: int
    total_rejections: int
    #: Consecutive failures currently counted towards opening.
    failure_count: int
    #: Backend-clock time (epoch seconds) of the last state change; 0 if it never changed.
    last_state_change: float
    #: Seconds until the circuit admits trials; set only while OPEN.
    retry_after: float | None
    #: Trial calls in flight now (HALF_OPEN only).
    trials_in_flight: int
    #: Failed trials in a row (grows the OPEN period when ``timeout_multiplier`` > 1).
    reopens: int
    #: Backend-clock time until which an operator forced the circuit OPEN; set only while so.
    forced_until: float | None = None
    #: State name (``"open"``...) -> times the circuit moved into that state, since it exists.
    #: OPEN -> HALF_OPEN is counted when it is taken: lazily, at the first call after the timeout.
    transitions: dict[str, int] = field(default_factory=dict)
    #: Why the circuit is OPEN or HALF_OPEN (``"not logged in to Soulseek"``,
    #: ``"unauthorized (check SLSKD_API_KEY)"``, ``"forced open by an operator"``, a failure's
    #: own words); ``None`` while CLOSED.
    reason: str | None = None
    #: True when this is one process's own breaker, standing in while the shared store is
    #: unreachable (``on_backend_error="allow"``), not the shared state.
    local: bool = False
    #: The operator's mode (:class:`BreakerMode` value): ``normal``, ``disabled``,
    #: ``metrics_only`` or ``forced_open``.
    mode: str = BreakerMode.NORMAL.value
    #: Calls, failures and slow calls in the sliding window now (0 without a window).
    window_calls: int = 0
    window_failures: int = 0
    window_slow_calls: int = 0
    #: Openings ``metrics_only`` mode would have made, since the breaker exists.
    would_opens: int = 0
