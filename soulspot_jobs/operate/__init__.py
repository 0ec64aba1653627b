"""What operators use: the ``soulspot-jobs`` command line and the HTTP endpoints.

* :mod:`.cli`: the command line (Typer); each command lives in :mod:`.commands`.
* :mod:`.web`: ``GET /health`` and ``GET /metrics``; :mod:`.health` builds the health document,
  :mod:`.metrics` the Prometheus metrics, both read from Redis.
* :mod:`.dramatiq_runner`, :mod:`.dramatiq_child`, :mod:`.source_watch`: how ``soulspot-jobs
  worker`` runs Dramatiq's worker processes, stops them cleanly and reloads them.
* :mod:`.settings_report`: what ``soulspot-jobs settings`` prints.
"""
