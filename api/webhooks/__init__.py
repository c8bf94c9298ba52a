"""Webhooks: the secret routes, URL fields of requests, and installing the emitter."""
