"""The FastAPI app: settings, Redis, routers, error handlers. Run with ``textgen api``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from anyio import to_thread
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from api.app import errors, metrics
from api.app.events import EventHub
from api.app.fleet import Fleet
from api.app.prompt_budget import PromptBudget
from api.app.queueing import CelerySender, JobQueue, celery_app
from api.app.ratelimit import RateLimits
from api.app.request_guard import BodyRule, RequestGuard
from api.app.state import AppState
from api.batches import files_router as files
from api.batches import router as batches
from api.cache import router as cache
from api.cache.answer import CacheAnswers
from api.conversations import router as conversations
from api.jobs import retry as job_retry
from api.jobs import router as jobs
from api.openai import completions as openai_completions
from api.openai import models as openai_models
from api.ops import health
from api.ops import metrics as metrics_route
from api.pages import docs, playground
from api.responses import router as responses
from api.webhooks import router as webhooks
from api.webhooks.service import install_webhooks
from textgen_core.cache import AsyncResultCache
from textgen_core.keys import Keys
from textgen_core.logs import configure_logging
from textgen_core.settings import Settings, get_settings
from textgen_core.store import AsyncJobStore

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings, "api")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # A burst of requests waits briefly for a free connection instead of failing at once. A Redis
        # that is down or hung costs a request at most the socket timeout, then a 503 (api.app.errors).
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.redis_url, decode_responses=True, socket_connect_timeout=settings.api_redis_socket_timeout_seconds,
            socket_timeout=settings.api_redis_socket_timeout_seconds,
            health_check_interval=15, retry_on_timeout=False, max_connections=settings.api_redis_max_connections,
            timeout=settings.api_redis_pool_timeout_seconds,
        )
        client = aioredis.Redis(connection_pool=pool)
        cache_client = client
        if settings.cache_redis_url:  # the cache on a Redis of its own (one that may evict)
            cache_client = aioredis.Redis.from_url(settings.cache_redis_url, decode_responses=True,
                                                   socket_connect_timeout=1.0, health_check_interval=15)
        keys = Keys(settings.key_prefix)
        hub = EventHub(client, keys.events_channel)
        fleet = Fleet(client, keys)
        store = AsyncJobStore(client, keys, job_ttl=settings.job_ttl_seconds, stream_ttl=settings.stream_ttl_seconds,
                              stream_maxlen=settings.stream_maxlen)
        app.state.textgen = AppState(
            settings=settings,
            redis=client,
            keys=keys,
            store=store,
            hub=hub,
            queue=JobQueue(keys, CelerySender(celery_app())),
            limits=RateLimits(settings, keys.rate_limit_prefix),
            prompts=PromptBudget(settings),
            fleet=fleet,
            cache=CacheAnswers(AsyncResultCache(cache_client, keys), fleet, settings, store, keys),
        )
        install_webhooks(app.state.textgen)
        await to_thread.run_sync(app.state.textgen.prompts.warm)
        hub.start()
        try:
            yield
        finally:
            await hub.stop()
            if cache_client is not client:
                await cache_client.aclose()
            await client.aclose()
            await pool.disconnect()

    app = FastAPI(
        title="textgen",
        version="0.1.0",
        summary="Asynchronous text generation: submit jobs, poll or stream results.",
        lifespan=lifespan,
        docs_url=None,  # api.pages.docs serves Swagger UI from the package, not a CDN
        redoc_url=None,  # ReDoc's page loads its logo from a CDN
    )
    uploads = BodyRule(json_bytes=settings.batch_json_max_bytes, upload_bytes=settings.batch_file_max_bytes)
    app.add_middleware(RequestGuard, settings=settings, rules={"/v1/batches": uploads, "/v1/files": uploads})
    if settings.cors_origins:  # added last, so outermost: refusals carry CORS headers too
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"])
    errors.install(app)
    metrics.instrument(app)
    for module in (health, jobs, job_retry, cache, conversations, batches, files, webhooks, metrics_route,
                   openai_models, openai_completions, playground, docs):
        app.include_router(module.router)
    app.include_router(responses.router)
    return app


app = create_app()
