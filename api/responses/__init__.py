"""OpenAI's Responses API (``/v1/responses``): a response is a job (``textgen_core.responses``)."""
