"""``/v1/models``: the configured models in OpenAI's shapes, with where each one is loaded."""

from __future__ import annotations

from fastapi import APIRouter

from api.app.deps import FleetDep, OwnerDep, SettingsDep
from api.app.errors import ERROR_RESPONSES, APIError
from api.app.fleet import Fleet, LoadedOn
from api.openai.protocol import ModelCard, ModelList
from textgen_core.settings import ModelSpec, Settings

router = APIRouter(prefix="/v1/models", tags=["openai"], responses=ERROR_RESPONSES)


def _card(spec: ModelSpec, loaded: list[LoadedOn]) -> ModelCard:
    first = loaded[0] if loaded else None
    return ModelCard(
        id=spec.id,
        created=int(min(w.started_at for w in loaded)) if loaded else 0,
        workers=[w.worker for w in loaded],
        device=first.device if first else None,
        dtype=first.dtype if first else (None if spec.dtype == "auto" else spec.dtype),
        max_batch=first.max_batch if first and first.max_batch else spec.max_batch,
        context_length=first.context_length if first else spec.context_length,
    )


async def _cards(settings: Settings, fleet: Fleet) -> list[ModelCard]:
    loaded = await fleet.loaded_models()
    return [_card(spec, loaded.get(spec.id, [])) for spec in settings.models]


@router.get("", response_model=ModelList, summary="List models (OpenAI)")
async def list_models(_: OwnerDep, settings: SettingsDep, fleet: FleetDep) -> ModelList:
    return ModelList(data=await _cards(settings, fleet))


@router.get("/{model_id}", response_model=ModelCard, summary="Retrieve a model (OpenAI)")
async def get_model(model_id: str, _: OwnerDep, settings: SettingsDep, fleet: FleetDep) -> ModelCard:
    spec = settings.model(model_id)
    if spec is None:
        raise APIError(404, f"The model '{model_id}' does not exist", type="invalid_request_error",
                       code="model_not_found", param="model")
    return _card(spec, (await fleet.loaded_models()).get(model_id, []))
