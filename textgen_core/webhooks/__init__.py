"""Signed webhooks (Standard Webhooks): event payloads, secrets, the SSRF guard and delivery.

Generation never delivers anything itself: it only queues a delivery message on the webhooks
queue; a webhook worker signs, sends, retries and records each attempt.
"""
