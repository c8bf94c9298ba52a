"""Webhook events: turning what happened to a job or batch into queued deliveries.

This package orchestrates (it reads the stores); ``textgen_core/webhooks/`` stays a leaf (event
models, signing, URL guard, delivery records, one delivery attempt) that the stores and records
import. ``outbox`` holds the one place a terminal transition becomes its events
(``OutboxCore.ended_events``: the job's, then its batch's); ``emitter`` queues one event;
``job_events`` adds the worker's running-job events (started, output, batch progress).
"""
