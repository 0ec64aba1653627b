"""The page's actions over HTTP, as a script or a forged request would send them: who may act,
what each answers, and that a refused or failed action changes nothing."""

from __future__ import annotations

import re

import httpx
import pytest

from soulspot_jobs.circuit_breaker import CircuitState
from soulspot_jobs.jobs.records import JobState

from .conftest import TOKEN, Served

BEARER = {"Authorization": f"Bearer {TOKEN}"}


def signed_in_client(served: Served) -> tuple[httpx.Client, str]:
    """A client that signed in as a browser does, and the CSRF token its page carries."""
    client = httpx.Client(base_url=served.url, timeout=10)
    answer = client.post("/login", data={"token": TOKEN})
    assert answer.status_code == 303 and "soulspot_admin" in client.cookies
    page = client.get("/")
    csrf = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text)
    assert csrf, "the signed-in page carries a CSRF token"
    return client, csrf.group(1)


def test_a_script_with_the_admin_token_acts_and_gets_json(served: Served) -> None:
    # When a script forces slskd OPEN with the bearer token
    answer = served.post("/actions/breakers/slskd/open", data={"seconds": "120"}, headers=BEARER)

    # Then it is done and said in JSON
    assert answer.status_code == 200
    assert answer.json() == {"ok": True, "message": "Circuit breaker slskd-api is OPEN for 120 s."}
    assert served.app.breakers["slskd-api"].stats.state is CircuitState.OPEN


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong-token-wrong-token"}, 401),
        ({"Authorization": f"Basic {TOKEN}"}, 401),
    ],
    ids=["no token", "wrong token", "not a bearer"],
)
def test_an_action_without_the_right_token_is_refused_and_changes_nothing(
    served: Served, headers: dict[str, str], status: int
) -> None:
    # Given slskd forced OPEN
    served.app.breakers["slskd-api"].force_open_sync(300)

    # When a reset is posted without the right token
    answer = served.post(
        "/actions/breakers/slskd/reset", headers={"Accept": "application/json", **headers}
    )

    # Then it is refused and slskd stays OPEN
    assert answer.status_code == status
    assert answer.json()["ok"] is False
    assert served.app.breakers["slskd-api"].stats.state is CircuitState.OPEN


@pytest.mark.parametrize(
    ("csrf", "extra_headers"),
    [
        (None, {}),
        ("0" * 64, {}),
        ("ours", {"Origin": "http://evil.example"}),
        ("ours", {"Sec-Fetch-Site": "cross-site"}),
    ],
    ids=["no csrf token", "wrong csrf token", "another origin", "cross-site fetch"],
)
def test_a_signed_in_session_is_refused_without_its_csrf_token_or_from_another_site(
    served: Served, csrf: str | None, extra_headers: dict[str, str]
) -> None:
    # Given slskd forced OPEN and a signed-in browser session
    served.app.breakers["slskd-api"].force_open_sync(300)
    client, ours = signed_in_client(served)
    form = {} if csrf is None else {"csrf_token": ours if csrf == "ours" else csrf}

    # When a reset is posted with that session's cookie but not from its own page
    try:
        answer = client.post("/actions/breakers/slskd/reset", data=form, headers=extra_headers)
    finally:
        client.close()

    # Then it is refused (403, a page saying why) and slskd stays OPEN
    assert answer.status_code == 403
    assert "refused" in answer.text
    assert served.app.breakers["slskd-api"].stats.state is CircuitState.OPEN


def test_a_signed_in_session_acts_with_its_csrf_token_and_is_sent_back_to_the_page(
    served: Served,
) -> None:
    client, csrf = signed_in_client(served)
    served.app.breakers["spotify-api"].force_open_sync(300)
    try:
        answer = client.post(
            "/actions/breakers/spotify/reset",
            data={"csrf_token": csrf},
            headers={"Origin": served.url},
        )
        assert answer.status_code == 303 and answer.headers["location"] == "/"
        page = client.get("/")
    finally:
        client.close()
    assert served.app.breakers["spotify-api"].stats.state is CircuitState.CLOSED
    assert "Circuit breaker spotify-api is CLOSED." in page.text


@pytest.mark.parametrize("seconds", ["inf", "nan", "1e12", "0", "-5", "soon"])
def test_forcing_open_for_no_sensible_duration_is_a_400_and_changes_nothing(
    served: Served, seconds: str
) -> None:
    answer = served.post("/actions/breakers/slskd/open", data={"seconds": seconds}, headers=BEARER)
    assert answer.status_code == 400
    assert seconds in answer.json()["message"]
    assert served.app.breakers["slskd-api"].stats.state is CircuitState.CLOSED


def test_actions_on_what_does_not_exist_are_404(served: Served) -> None:
    for path in (
        "/actions/breakers/napster/reset",
        "/actions/dead-letters/no-such-message/requeue",
        "/actions/dead-letters/no-such-message/delete",
        "/actions/jobs/no-such-job/cancel",
        "/actions/jobs/x/explode",
    ):
        answer = served.post(path, headers=BEARER)
        assert answer.status_code == 404, path
        assert answer.json()["ok"] is False


def test_cancelling_a_finished_job_is_a_409_that_names_its_state(served: Served) -> None:
    job = served.app.store.create("download", query="A - B")
    served.app.store.update(job.id, state=JobState.DONE)
    answer = served.post(f"/actions/jobs/{job.id}/cancel", headers=BEARER)
    assert answer.status_code == 409
    assert "done" in answer.json()["message"]
    assert served.app.job(job.id).state is JobState.DONE


def test_health_answers_head_as_it_answers_get(served: Served) -> None:
    assert httpx.head(f"{served.url}/health").status_code == 200
    served.app.breakers["slskd-api"].force_open_sync(60)
    assert httpx.head(f"{served.url}/health").status_code == 503
    assert httpx.get(f"{served.url}/health").status_code == 503


def test_the_page_is_served_with_headers_that_keep_other_sites_out(served: Served) -> None:
    answer = httpx.get(served.url)
    assert answer.status_code == 200
    assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    assert answer.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("mode", ["disabled", "metrics_only"])
def test_a_script_sets_a_breaker_mode_and_back_to_normal(served: Served, mode: str) -> None:
    answer = served.post("/actions/breakers/slskd/mode", data={"mode": mode}, headers=BEARER)
    assert answer.status_code == 200, answer.text
    assert answer.json()["message"] == f"Circuit breaker slskd-api is in mode {mode}."
    assert served.app.breakers["slskd-api"].stats.mode == mode
    served.post("/actions/breakers/slskd/mode", data={"mode": "normal"}, headers=BEARER)
    assert served.app.breakers["slskd-api"].stats.mode == "normal"


def test_a_mode_change_needs_the_token_and_a_known_mode(served: Served) -> None:
    refused = served.post(
        "/actions/breakers/slskd/mode",
        data={"mode": "disabled"},
        headers={"Accept": "application/json"},
    )
    assert refused.status_code == 401
    unknown = served.post("/actions/breakers/slskd/mode", data={"mode": "off"}, headers=BEARER)
    assert unknown.status_code == 400
    assert served.app.breakers["slskd-api"].stats.mode == "normal"
