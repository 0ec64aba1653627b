"""Calls per command from ``INFO commandstats``, read the same way on Redis 6, Redis 7 and Valkey.

Redis 7 and Valkey count each subcommand on its own line (``cmdstat_config|resetstat``,
``cmdstat_client|list``) where Redis 6 had one line per command (``cmdstat_config``). The
benchmarks and the tests that count commands read both forms through :func:`command_calls`,
which adds subcommands up under their command.
"""

from __future__ import annotations

from collections import Counter

import redis

#: Commands a measurement issues itself (resetting and reading the counters); left out by default.
MEASURING_COMMANDS = frozenset({"config", "info"})


def command_calls(
    client: redis.Redis, *, exclude: frozenset[str] = MEASURING_COMMANDS
) -> Counter[str]:
    """Calls per lower-case command name since the last ``CONFIG RESETSTAT``.

    Subcommands count under their command (``config|resetstat`` is ``config``); commands in
    ``exclude`` are left out.
    """
    calls: Counter[str] = Counter()
    for name, values in client.info("commandstats").items():
        command = name.removeprefix("cmdstat_").split("|", 1)[0].lower()
        if command not in exclude:
            calls[command] += int(values["calls"])
    return calls
