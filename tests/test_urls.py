"""URL settings: the real URL to clients, the password hidden wherever one is shown."""

from __future__ import annotations

import pickle

import httpx
import pytest

from soulspot_jobs.urls import (
    RedactedUrl,
    check_http_url,
    check_redis_url,
    redact_invalid_url,
    url_passwords,
)


def test_a_redacted_url_is_the_real_url_except_in_its_repr() -> None:
    # Given a URL with a password
    url = RedactedUrl("http://admin:hunter22@slskd.lan:5030/")

    # Then clients, str() and f-strings get the real URL, repr and .redacted hide the password
    assert url == "http://admin:hunter22@slskd.lan:5030/"
    assert str(url) == f"{url}" == "http://admin:hunter22@slskd.lan:5030/"
    assert repr(url) == "'http://admin:***@slskd.lan:5030/'"
    assert repr([url]) == "['http://admin:***@slskd.lan:5030/']"
    assert url.redacted == "http://admin:***@slskd.lan:5030/"
    assert httpx.URL(url).password == "hunter22"
    # And it survives pickling (settings travel to spawned worker processes) as itself
    copy = pickle.loads(pickle.dumps(url))
    assert copy == url and repr(copy) == repr(url)


def test_the_checks_return_redacted_urls() -> None:
    assert isinstance(check_http_url("https://u:p@h"), RedactedUrl)
    assert isinstance(check_redis_url("redis://:p@h:6379/0"), RedactedUrl)


@pytest.mark.parametrize(
    ("url", "passwords"),
    [
        ("http://u:plain@h", ("plain",)),
        ("http://u:p%40ss@h", ("p%40ss", "p@ss")),
        ("redis://:only-pw@h:6379", ("only-pw",)),
        ("http://user@h", ()),
        ("http://h", ()),
        ("http://h:notaport", ()),
    ],
)
def test_url_passwords_gives_the_password_as_written_and_decoded(
    url: str, passwords: tuple[str, ...]
) -> None:
    assert url_passwords(url) == passwords


def test_an_invalid_url_is_shown_with_everything_up_to_its_last_at_hidden() -> None:
    # A password with an unescaped slash breaks the URL; it must not show in the error either
    assert redact_invalid_url("redis://:pa/ss@host/0") == "redis://:***@host/0"
    assert redact_invalid_url("notaurl") == "notaurl"
