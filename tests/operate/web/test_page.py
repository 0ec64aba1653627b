"""The operators' page in headless Chromium: it follows breakers, deferred jobs, dead letters and
jobs live, lets a signed-in operator act, and refuses everyone else (the jobs app with a real
Worker and the fake upstreams behind it)."""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from soulspot_jobs.circuit_breaker import CircuitState
from soulspot_jobs.circuit_breaker.breaker import FORCED_REASON
from soulspot_jobs.fakes.catalog import CATALOG
from soulspot_jobs.jobs.records import JobState
from tests.polling import wait_until

from .conftest import TOKEN, Served

#: A day and an hour in milliseconds: past the default deferral budget of a day.
OVERDUE_MS = 25 * 60 * 60 * 1000
#: Where the documentation's screenshot of the page lives.
SCREENSHOT = Path(__file__).resolve().parents[3] / "docs" / "images" / "operators-page.png"


def sign_in(page: Page, served: Served) -> None:
    page.goto(served.url)
    page.fill("#login input[name=token]", TOKEN)
    page.click("#login button")
    expect(page.locator("#flash")).to_have_text("Signed in: actions are enabled.")


def mark_the_document(page: Page) -> None:
    """Leave a mark that a reload would wipe out."""
    page.evaluate("window.notReloaded = true")


def still_the_same_document(page: Page) -> bool:
    return page.evaluate("window.notReloaded === true")


def dead_letter_an_enrichment(served: Served) -> tuple[str, str]:
    """An enrichment job whose message is deferred past its budget: dead-lettered at once.
    Returns the job id and the message id."""
    app = served.app
    track = CATALOG[0]
    job_id = app.store.create("enrichment", artist=track.artist, title=track.title).id
    message = app.actor("enrich_metadata").send_with_options(
        args=(job_id,), circuit_breaker_first_deferred_at=int(time.time() * 1000) - OVERDUE_MS
    )
    wait_until(lambda: app.job(job_id).state is JobState.FAILED, "the job to fail")
    return job_id, message.message_id


def test_the_page_shows_a_breaker_opened_elsewhere_and_its_deferred_jobs_without_a_reload(
    served: Served, page: Page
) -> None:
    # Given the page open, every breaker CLOSED
    page.goto(served.url)
    musicbrainz = page.locator("article.breaker[data-service=musicbrainz]")
    expect(musicbrainz.locator(".badge").first).to_have_text("CLOSED")
    expect(page.locator("#live")).to_have_text("live")
    mark_the_document(page)

    # When an operator elsewhere forces MusicBrainz OPEN and two enrichment jobs are enqueued
    served.app.breakers["musicbrainz-api"].force_open_sync(300)
    track = CATALOG[1]
    job_ids = [served.app.enqueue_enrichment(track.artist, track.title) for _ in range(2)]

    # Then the page shows the breaker OPEN, forced, why, and counting retry_after down
    expect(musicbrainz.locator(".badge").first).to_have_text("OPEN")
    expect(musicbrainz.locator(".badge.forced")).to_be_visible()
    expect(musicbrainz.locator(".reason")).to_have_text(FORCED_REASON)
    countdown = musicbrainz.locator("time.countdown")
    expect(countdown).to_have_text(re.compile(r"in [45] min \d\d s"))
    first = countdown.text_content()
    expect(countdown).not_to_have_text(first)  # it counts by itself
    # And both jobs under musicbrainz-api: job id, reason, deferrals and when each runs next
    for job_id in job_ids:
        table = page.locator("table.deferred[data-service=musicbrainz-api]")
        row = table.locator(f"tr:has(a[title='{job_id}'])")
        expect(row).to_be_visible()
        expect(row.locator(".reason")).to_contain_text("musicbrainz-api")
        expect(row.locator(".deferrals")).to_have_text("1")
        expect(row.locator("time.countdown")).to_have_text(re.compile(r"in \d+ (s|min)"))
    expect(musicbrainz.locator(".deferred-count")).to_have_text("2")
    # And the jobs list them as deferred
    for job_id in job_ids:
        expect(page.locator(f"#job-{job_id} .state")).to_have_text("deferred")
    # And the worker is listed alive
    expect(page.locator("table.workers tr[data-pid]")).to_have_count(1)
    assert still_the_same_document(page)


def test_a_signed_in_operator_requeues_a_dead_letter_and_sees_its_job_run(
    served: Served, page: Page
) -> None:
    # Given MusicBrainz forced OPEN and an enrichment job dead-lettered past its budget
    served.app.breakers["musicbrainz-api"].force_open_sync(300)
    job_id, message_id = dead_letter_an_enrichment(served)
    # And the operator signed in on the page
    sign_in(page, served)
    letter = page.locator(f"table.dead-letters tr[data-message-id='{message_id}']")
    expect(letter.locator(".reason")).to_contain_text("past the budget")
    expect(page.locator(f"#job-{job_id} .state")).to_have_text("failed")

    # When the operator resets MusicBrainz's breaker from the page
    page.click("article.breaker[data-service=musicbrainz] button[name=reset]")
    expect(page.locator("#flash")).to_have_text("Circuit breaker musicbrainz-api is CLOSED.")
    view = served.app.breakers.backend._views["musicbrainz-api"]
    wait_until(lambda: view.state is CircuitState.CLOSED, "the worker to see it CLOSED")
    # And requeues the dead letter
    mark_the_document(page)
    letter.locator("button[name=requeue]").click()

    # Then the page says so, the dead letter is gone, and the job runs to done before their eyes
    expect(page.locator("#flash")).to_contain_text(f"Requeued {message_id}")
    mark_the_document(page)
    expect(page.locator("table.dead-letters")).to_have_count(0)
    expect(page.locator(f"#job-{job_id} .state")).to_have_text("done")
    assert still_the_same_document(page)
    # And its history tells the whole story
    page.locator(f"#history-{job_id} summary").click()
    history = page.locator(f"#history-{job_id} .history")
    expect(history).to_contain_text("dead-lettered")
    expect(history).to_contain_text("requeued from the dead-letter queue")
    expect(history.locator("li").last).to_contain_text("done")


def test_a_signed_in_operator_forces_a_breaker_open_and_cancels_a_deferred_job(
    served: Served, page: Page
) -> None:
    # Given the operator signed in
    sign_in(page, served)

    # When they force slskd OPEN for ten minutes from the page
    card = page.locator("article.breaker[data-service=slskd]")
    card.locator("input[name=seconds]").fill("600")
    card.locator("button[name=open]").click()

    # Then it is OPEN for the cluster, forced, for those ten minutes
    expect(page.locator("#flash")).to_have_text("Circuit breaker slskd-api is OPEN for 600 s.")
    stats = served.app.breakers["slskd-api"].stats
    assert stats.state is CircuitState.OPEN and 590 < stats.retry_after <= 600
    expect(card.locator(".badge.forced")).to_be_visible()

    # When a download is enqueued, is deferred, and the operator cancels it from the page
    job_id = served.app.enqueue_download("Daft Punk - Around the World")
    row = page.locator(f"table.deferred tr:has(a[title='{job_id}'])")
    row.locator("button").click()

    # Then the job is cancelled and leaves the deferred list
    expect(page.locator("#flash")).to_have_text(f"Job {job_id} is cancelled.")
    expect(page.locator(f"#job-{job_id} .state")).to_have_text("cancelled")
    assert served.app.job(job_id).state is JobState.CANCELLED


def test_a_page_not_signed_in_shows_no_actions_and_its_posts_are_refused(
    served: Served, page: Page
) -> None:
    # Given slskd forced OPEN and the page opened by someone without the token
    served.app.breakers["slskd-api"].force_open_sync(300)
    page.goto(served.url)
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("article.breaker").first).to_be_visible()

    # Then it offers no action
    expect(page.locator("button[name=reset]")).to_have_count(0)
    expect(page.locator("button[name=requeue]")).to_have_count(0)

    # When a wrong token is presented
    page.fill("#login input[name=token]", "not-the-admin-token")
    page.click("#login button")

    # Then it is refused, and back on the page still no action is offered
    expect(page.locator("#flash")).to_have_text("refused: wrong admin token")
    page.click("text=Back to the page")
    expect(page.locator("article.breaker").first).to_be_visible()
    expect(page.locator("button[name=reset]")).to_have_count(0)
    # And a POST made without the token is refused and changes nothing
    response = page.request.post(f"{served.url}/actions/breakers/slskd/reset")
    assert response.status == 401
    assert served.app.breakers["slskd-api"].stats.state is CircuitState.OPEN


class _Attacker(BaseHTTPRequestHandler):
    """Another site: its page posts a form to the operators' page as soon as it loads."""

    target = ""

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        body = (
            f'<form id="f" method="post" action="{self.target}">'
            '<input name="csrf_token" value="guessed"></form>'
            "<script>document.getElementById('f').submit()</script>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def attacker_site() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Attacker)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def test_another_site_cannot_act_through_a_signed_in_operators_browser(
    served: Served, page: Page, attacker_site: ThreadingHTTPServer
) -> None:
    # Given slskd forced OPEN and the operator signed in on the page at 127.0.0.1
    served.app.breakers["slskd-api"].force_open_sync(300)
    sign_in(page, served)

    # When the same browser opens another site (localhost: another site to the browser) whose
    # page posts a reset of slskd's breaker to the operators' page
    _Attacker.target = f"{served.url}/actions/breakers/slskd/reset"
    port = attacker_site.server_address[1]
    with page.expect_response(_Attacker.target) as answer:
        page.goto(f"http://localhost:{port}/")

    # Then the post was refused and the breaker is still OPEN
    assert answer.value.status in (401, 403)
    expect(page.locator("#flash")).to_contain_text("refused")
    assert served.app.breakers["slskd-api"].stats.state is CircuitState.OPEN


def test_a_deployment_without_an_admin_token_serves_a_read_only_page(
    read_only: Served, page: Page
) -> None:
    # When the page of a deployment without SOULSPOT_ADMIN_TOKEN is opened
    page.goto(read_only.url)

    # Then it says it is read-only and offers no sign-in and no action
    expect(page.locator("#read-only")).to_contain_text("read-only")
    expect(page.locator("#login")).to_have_count(0)
    expect(page.locator("form[action^='/actions/']")).to_have_count(0)
    # And even a bearer of any token is refused
    response = read_only.post(
        "/actions/breakers/slskd/open", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert response.status_code == 403
    assert read_only.app.breakers["slskd-api"].stats.state is CircuitState.CLOSED


def test_a_screenshot_of_the_page_with_an_outage_in_progress(
    served: Served, page: Page, tmp_path: Path
) -> None:
    # Given some jobs done, slskd not logged in to Soulseek with jobs deferred, and a dead letter
    app = served.app
    done = [app.enqueue_enrichment(t.artist, t.title) for t in CATALOG[2:5]]
    wait_until(lambda: all(app.job(j).state is JobState.DONE for j in done), "the jobs done")
    app.breakers["musicbrainz-api"].force_open_sync(120)
    dead_letter_an_enrichment(served)
    app.breakers["slskd-api"].force_open_sync(90, reason="not logged in to Soulseek")
    for track in CATALOG[:3]:
        app.enqueue_download(f"{track.artist} - {track.title}")
    sign_in(page, served)
    expect(page.locator("table.deferred[data-service=slskd-api] tbody tr")).to_have_count(3)

    # When the page is photographed
    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot), full_page=True)

    # Then it is a real picture of it (and the docs' copy is renewed when asked to)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    if os.environ.get("SOULSPOT_UPDATE_SCREENSHOT"):
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)
