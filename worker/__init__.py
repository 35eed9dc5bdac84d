"""The worker: arq jobs and schedules, the outbox relay and webhook delivery.

`hub worker` runs it as a process of its own; on the embedded default `hub serve` runs
it in-process (see `worker.runtime`).
"""
