"""The jobs SoulSpot users run, and their records.

* :class:`~.app.SoulspotJobs` (``app``): the broker, the actors and the API to enqueue jobs.
* :mod:`.actors`: one module per job family, each actor tagged with its service.
* :mod:`.steps`: how each step records itself on its job; :mod:`.runtime`: what the actors
  share at run time (settings, job records, guarded clients).
* :mod:`.records`: the job records (:class:`~.records.JobStore`).
* :mod:`.queues`: the two queues (new jobs, work in progress); :mod:`.validation`: a job's
  arguments, checked before anything is enqueued.
"""
