"""Batches and the Files API: routes, schemas, input parsing, submission and results (JSONL, CSV, OpenAI)."""
