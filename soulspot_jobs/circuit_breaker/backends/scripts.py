"""The Lua scripts of the Redis backend, loaded once from ``lua/`` and run with EVALSHA."""

from __future__ import annotations

from importlib import resources

import redis

#: One script per atomic operation; each is prefixed with the shared ``_lib.lua``.
OPERATIONS = (
    "admit",
    "record_success",
    "record_failure",
    "record_outcomes",
    "set_mode",
    "release",
    "reset",
    "force_open",
    "snapshot",
)


def _source(name: str) -> str:
    package = resources.files("soulspot_jobs.circuit_breaker")
    return package.joinpath("lua", f"{name}.lua").read_text()


def register_scripts(client: redis.Redis) -> dict[str, redis.commands.core.Script]:
    """Register every operation's script on ``client``; redis-py loads them on first NOSCRIPT."""
    prelude = _source("_lib")
    return {op: client.register_script(prelude + "\n" + _source(op)) for op in OPERATIONS}
