"""The operators' web page and endpoints, served by ``soulspot-jobs serve``.

``/`` is a live page of the breakers, deferred jobs, dead letters, jobs and workers, with the
operators' actions behind ``SOULSPOT_ADMIN_TOKEN``; ``/health`` and ``/metrics`` are for
machines. See :mod:`.app` for the routes and :mod:`.admin` for who may act.
"""

from soulspot_jobs.operate.web.app import create_app
from soulspot_jobs.operate.web.server import DEFAULT_HOST, DEFAULT_PORT, OperatorServer

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "OperatorServer", "create_app"]
