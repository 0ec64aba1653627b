"""What a remembered Soulseek peer costs in Redis: ``MEMORY USAGE`` per peer key and the growth of
``used_memory``, for 10,000 peers each ejected with a reason.

``python -m bench.peer_memory`` starts an embedded Redis and, through
:class:`~soulspot_jobs.circuit_breaker.peers.PeerBreakers` (the code the download jobs use, with
the peers' default config), makes ``--peers`` peers fail ``failure_threshold`` transfers each,
picked first as a job does, with the longest reason a peer breaker keeps: each ends OPEN, its
reason, counts, transition counts and idle-expiry TTL in Redis. It prints the bytes per peer
and PASS or FAIL against the target: at most 1 KB a peer, by both measures.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import redis

from bench._harness import quiet_logs
from soulspot_jobs.circuit_breaker.peers import PeerBreakers
from soulspot_jobs.embedded.server import EmbeddedRedis

#: The target: bytes of Redis memory per remembered peer.
TARGET_BYTES = 1024
#: Peers measured by default.
PEERS = 10_000
#: Key prefix of the measured peers.
PREFIX = "bench:breaker:peer"
#: A peer failure as slskd words it, longer than a peer breaker keeps (it is cut to 60 bytes).
REASON = (
    "Failed to connect to user {user}: Failed to establish a direct or indirect message "
    "connection to {user} (203.0.113.7:2234)"
)
#: ``MEMORY USAGE`` reads per pipeline.
BATCH = 1000


@dataclass(frozen=True)
class PeerMemory:
    """Bytes per peer, measured two ways, for ``peers`` peers."""

    peers: int
    #: Mean and largest ``MEMORY USAGE`` of one peer's key (the hash, its name, its TTL field).
    mean_key_bytes: float
    max_key_bytes: int
    #: Growth of ``used_memory`` per peer (everything: the keyspace's tables and expiry entries).
    used_memory_bytes: float

    @property
    def passed(self) -> bool:
        return max(self.max_key_bytes, self.used_memory_bytes) <= TARGET_BYTES


def username(number: int) -> str:
    """A Soulseek user name of a usual length."""
    return f"soulseek_user_{number:06d}"


def measure(
    client: redis.Redis, peers: int = PEERS, prefix: str = PREFIX, *, built: int | None = None
) -> PeerMemory:
    """Eject ``peers`` peers through :class:`PeerBreakers` on ``client`` and measure them.

    With ``built``, only that many are ejected through the code, and the others are their exact
    copies (DUMP and RESTORE with the TTL left, under names of the same length): the same bytes
    in Redis, in a fraction of the time (the test suite measures this way).
    """
    built = peers if built is None else min(built, peers)
    breakers = PeerBreakers(client=client, prefix=prefix)
    try:
        eject(breakers, "warm_up")  # loads the scripts: their cache is not the peers' cost
        client.delete(f"{prefix}:warm_up")
        before = int(client.info("memory")["used_memory"])
        for number in range(built):
            eject(breakers, username(number))
        copy(client, prefix, built, peers)
        after = int(client.info("memory")["used_memory"])
    finally:
        breakers.close()
    sizes: list[int] = []
    for start in range(0, peers, BATCH):
        pipe = client.pipeline(transaction=False)
        for number in range(start, min(start + BATCH, peers)):
            pipe.memory_usage(f"{prefix}:{username(number)}", samples=0)
        sizes.extend(int(size) for size in pipe.execute())
    return PeerMemory(
        peers=peers,
        mean_key_bytes=sum(sizes) / len(sizes),
        max_key_bytes=max(sizes),
        used_memory_bytes=(after - before) / peers,
    )


def copy(client: redis.Redis, prefix: str, built: int, peers: int) -> None:
    """Make peers ``built`` to ``peers`` copies of the first ``built``, TTL included."""
    originals = [f"{prefix}:{username(number)}" for number in range(built)]
    pipe = client.pipeline(transaction=False)
    for key in originals:
        pipe.dump(key)
        pipe.pttl(key)
    dumped = pipe.execute()
    for start in range(built, peers, BATCH):
        pipe = client.pipeline(transaction=False)
        for number in range(start, min(start + BATCH, peers)):
            source = (number % built) * 2
            ttl = max(int(dumped[source + 1]), 0)
            pipe.restore(f"{prefix}:{username(number)}", ttl, dumped[source])
        pipe.execute()


def eject(breakers: PeerBreakers, user: str) -> None:
    """Pick ``user`` and fail it until its breaker opens, as failing download jobs do."""
    for _ in range(breakers.config.failure_threshold):
        pick = breakers.pick(user, forced=True)
        assert pick is not None
        breakers.failed(pick, REASON.format(user=user))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=PEERS)
    args = parser.parse_args()
    quiet_logs()  # an ejection logs two lines: 20,000 of them would be the output
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        try:
            result = measure(client, args.peers)
            version = client.info("server")["redis_version"]
        finally:
            client.close()
    print(f"{result.peers} peers ejected with a reason, Redis {version}")
    print("| metric | bytes per peer |")
    print("| --- | ---: |")
    print(f"| `MEMORY USAGE` of a peer key, mean | {result.mean_key_bytes:.0f} |")
    print(f"| `MEMORY USAGE` of a peer key, largest | {result.max_key_bytes} |")
    print(f"| `used_memory` growth | {result.used_memory_bytes:.0f} |")
    verdict = "PASS" if result.passed else "FAIL"
    print(f"target: at most {TARGET_BYTES} bytes a peer by both measures: {verdict}")


if __name__ == "__main__":
    main()
