"""The one answer to a request for a model the API does not serve: a 404 that lists the ones it does,
so a caller who guessed a name (``llama3``) learns the right one from the error itself."""

from __future__ import annotations

from api.app.errors import APIError
from textgen_core.settings import Settings


def model_not_found(settings: Settings, model: str) -> APIError:
    served = ", ".join(spec.id for spec in settings.models)
    return APIError(404, f"model '{model}' not found; models served: {served}", code="model_not_found",
                    param="model")
