"""The tunable numbers of one circuit breaker, validated once when they are built."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from soulspot_jobs.errors import ConfigurationError

#: What a breaker does when its shared store cannot be reached: admit calls ("allow", fail open)
#: or refuse them with a short ``retry_after`` ("reject", fail closed).
BackendErrorPolicy = Literal["allow", "reject"]
#: How failures are judged in CLOSED: ``consecutive`` (the design's ``failure_threshold``), or a
#: failure rate over the last ``sliding_window_size`` calls (``count``) or seconds (``time``).
SlidingWindowType = Literal["consecutive", "count", "time"]
#: Largest window: calls of a count window, seconds of a time window (an hour).
MAX_WINDOW_SIZE = 10_000
#: A time window is kept as at most this many buckets (one a second up to a minute, wider after).
TIME_WINDOW_BUCKETS = 60


class CircuitBreakerFields(BaseModel):
    """The fields, defaults and bounds of a breaker's config, shared by
    :class:`CircuitBreakerConfig` and the settings that read them from the environment.

    The first four fields and their defaults are the SoulSpot design's. The others refine it and
    default to the design's behaviour: one trial at a time, a constant ``timeout``.
    """

    #: Consecutive failures (each within ``reset_timeout`` of the previous) that open the circuit.
    failure_threshold: int = Field(5, gt=0)
    #: Successful trials in HALF_OPEN that close the circuit again.
    success_threshold: int = Field(2, gt=0)
    #: Seconds the circuit stays OPEN before it admits trial calls (HALF_OPEN).
    timeout: float = Field(60.0, gt=0)
    #: Seconds after which a failure no longer counts towards ``failure_threshold`` in CLOSED.
    reset_timeout: float = Field(300.0, gt=0)
    #: Trial calls in flight at once in HALF_OPEN, across every process sharing the backend.
    half_open_max_calls: int = Field(1, gt=0)
    #: Seconds a trial slot stays taken when its caller never reports (a killed worker).
    trial_lease: float = Field(60.0, gt=0)
    #: Longest ``retry_after`` given to a call refused in HALF_OPEN because every slot is taken.
    half_open_retry_after: float = Field(1.0, gt=0)
    #: Factor applied to ``timeout`` after each failed trial in a row (1.0 keeps it constant).
    timeout_multiplier: float = Field(1.0, ge=1.0)
    #: Upper bound of the grown timeout; ``None`` means no bound.
    max_timeout: float | None = Field(None, gt=0)
    #: Fail open ("allow") or closed ("reject") while the shared store is unreachable.
    on_backend_error: BackendErrorPolicy = "allow"
    #: ``consecutive`` (``failure_threshold`` failures in a row open the circuit), ``count`` (a
    #: failure rate over the last ``sliding_window_size`` calls) or ``time`` (over the last
    #: ``sliding_window_size`` seconds). The window is shared by every process.
    sliding_window_type: SlidingWindowType = "consecutive"
    #: Calls (``count``) or seconds (``time``) the window covers.
    sliding_window_size: int = Field(100, gt=0, le=MAX_WINDOW_SIZE)
    #: Calls the window must hold before its rates are judged: fewer never open the circuit.
    minimum_calls: int = Field(10, gt=0, le=MAX_WINDOW_SIZE)
    #: Percent of the window's calls that failed at or above which the circuit opens.
    failure_rate_threshold: float = Field(50.0, gt=0, le=100)
    #: Seconds at or above which a call counts as slow (``None``: calls are never slow). Needs a
    #: ``count`` or ``time`` window.
    slow_call_duration: float | None = Field(None, gt=0)
    #: Percent of the window's calls that were slow at or above which the circuit opens.
    slow_call_rate_threshold: float = Field(100.0, gt=0, le=100)


class CircuitBreakerConfig(CircuitBreakerFields):
    """Thresholds and timings of a circuit breaker; all durations are seconds as floats.

    Strict (``"5"`` is not an int here) and frozen; invalid values raise
    :class:`ConfigurationError` naming the field.
    """

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    @model_validator(mode="after")
    def _max_timeout_not_below_timeout(self) -> CircuitBreakerConfig:
        if self.max_timeout is not None and self.max_timeout < self.timeout:
            raise ValueError(
                f"max_timeout ({self.max_timeout}) must not be below timeout ({self.timeout})"
            )
        if self.sliding_window_type == "consecutive" and self.slow_call_duration is not None:
            raise ValueError(
                f"slow_call_duration ({self.slow_call_duration}) needs a sliding window: set "
                "sliding_window_type to 'count' or 'time'"
            )
        if self.sliding_window_type == "count" and self.minimum_calls > self.sliding_window_size:
            raise ValueError(
                f"minimum_calls ({self.minimum_calls}) must not be above sliding_window_size "
                f"({self.sliding_window_size}) in a count window: the rate would never be judged"
            )
        return self

    @property
    def windowed(self) -> bool:
        """True when failures are judged by rate over a sliding window, not by a count."""
        return self.sliding_window_type != "consecutive"

    @property
    def bucket_width(self) -> float:
        """Seconds of one bucket of a time window (at most :data:`TIME_WINDOW_BUCKETS` buckets)."""
        return max(1.0, self.sliding_window_size / TIME_WINDOW_BUCKETS)

    def __init__(self, **values: object) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigurationError(describe_validation_error(exc)) from None

    def open_duration(self, reopens: int) -> float:
        """Seconds to stay OPEN after ``reopens`` failed trials (0 at the first opening)."""
        duration = self.timeout * self.timeout_multiplier**reopens
        if self.max_timeout is not None:
            duration = min(duration, self.max_timeout)
        return duration


def describe_validation_error(exc: ValidationError) -> str:
    """One line per invalid field: ``CircuitBreakerConfig.timeout=-1: Input should be ...``."""
    lines = []
    for error in exc.errors():
        if error["loc"]:
            field = ".".join(str(part) for part in error["loc"])
            lines.append(f"{exc.title}.{field}={error.get('input')!r}: {error['msg']}")
        else:
            lines.append(f"{exc.title}: {error['msg']}")
    return "; ".join(lines)
