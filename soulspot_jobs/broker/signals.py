"""``HandledSignals``: a broker that emits each signal only to the middleware that handle it.

Dramatiq's :class:`~dramatiq.Broker` calls every middleware for every signal, and a worker emits
four signals per message (before and after ``process_message``, before and after ``ack``). Most
middleware handle one or two of them; for the rest the call lands in
:class:`~dramatiq.Middleware`'s no-op. On the project's stack of a dozen middleware that is about
fifty calls per message, two thirds of them no-ops, all made by the worker's threads while they
hold the GIL: with no-op actors it is a tenth of what a message costs.

This mixin keeps, for each signal, the middleware whose class or instance overrides the signal's
hook, and calls only those: in the broker's order (reversed for ``after_*``, as Dramatiq does),
with Dramatiq's error handling (a :class:`~dramatiq.middleware.MiddlewareError` raised by a
``before_*`` hook propagates, as :class:`~dramatiq.middleware.SkipMessage` must; any other
exception is logged at CRITICAL and the next middleware runs). What runs is exactly what
Dramatiq runs, less the no-ops. The lists are rebuilt whenever the middleware list changes
length (``add_middleware`` adds to it); a hook assigned on a middleware
instance after the broker emitted that signal is not seen until then (set it before the worker
starts). A signal the base class does not know (a program's own) reaches every middleware, as in
Dramatiq.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from dramatiq.middleware import Middleware, MiddlewareError

__all__ = ["HandledSignals"]

#: (middleware, its bound hook) for one signal.
_Handlers = list[tuple[Middleware, Callable[..., Any]]]


class HandledSignals:
    """Mixed into a :class:`dramatiq.Broker` (before it in the bases): ``emit_before`` and
    ``emit_after`` skip the middleware whose hook for the signal is the base class's no-op."""

    middleware: list[Middleware]
    logger: logging.Logger
    #: The length of the middleware list the handlers were found for, and the handlers of each
    #: hook name; rebuilt when the length changes (this class-level pair is never written to).
    _signal_cache: tuple[int, dict[str, _Handlers]] = (-1, {})

    def emit_before(self, signal: str, *args: Any, **kwargs: Any) -> None:
        name = "before_" + signal
        handlers = self._handlers(name, reverse=False)
        if handlers is None:
            super().emit_before(signal, *args, **kwargs)  # type: ignore[misc]
        else:
            self._emit(handlers, name, args, kwargs, passes=MiddlewareError)

    def emit_after(self, signal: str, *args: Any, **kwargs: Any) -> None:
        name = "after_" + signal
        handlers = self._handlers(name, reverse=True)
        if handlers is None:
            super().emit_after(signal, *args, **kwargs)  # type: ignore[misc]
        else:
            self._emit(handlers, name, args, kwargs, passes=())

    def _emit(
        self,
        handlers: _Handlers,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        passes: type[BaseException] | tuple[()],
    ) -> None:
        """Call each handler; an exception of ``passes`` propagates, any other is logged."""
        for middleware, hook in handlers:
            try:
                hook(self, *args, **kwargs)
            except passes:
                raise
            except Exception:
                self.logger.critical(
                    "Unexpected failure in %s of %r.", name, middleware, exc_info=True
                )

    def _handlers(self, name: str, *, reverse: bool) -> _Handlers | None:
        """The middleware that handle the hook ``name``, in the order they are called;
        ``None`` for a hook the base class does not know (every middleware is called)."""
        size, cache = self._signal_cache
        if size != len(self.middleware):
            cache = {}
            self._signal_cache = (len(self.middleware), cache)
        handlers = cache.get(name)
        if handlers is None:
            if getattr(Middleware, name, None) is None:
                return None
            ordered = reversed(self.middleware) if reverse else iter(self.middleware)
            handlers = [(m, getattr(m, name)) for m in ordered if _handles(m, name)]
            cache[name] = handlers
        return handlers


def _handles(middleware: Middleware, name: str) -> bool:
    """Whether ``middleware``'s hook ``name`` is its own, not the base class's no-op."""
    if name in getattr(middleware, "__dict__", {}):
        return True
    return getattr(type(middleware), name, None) is not getattr(Middleware, name)
