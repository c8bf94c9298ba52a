"""The ``textgen`` command: run the platform (whole or in parts) and talk to it."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from textgen_cli import batch as batch_cli
from textgen_cli import chat as chat_cli
from textgen_cli import client_commands
from textgen_cli.client import (
    DEFAULT_URL,
    ApiKey,
    ApiUrl,
    api_client,
    fail,
    get_json,
    json_body,
    key_or_default,
    stream_job,
)
from textgen_cli.processes import (
    VllmEnvironmentMissing,
    api_command,
    child_env,
    flower_command,
    gpu_environment,
    gpu_group_environment,
    tensor_parallel_groups,
    webhook_worker_command,
    worker_command,
    worker_metrics_env,
    worker_name,
)
from textgen_cli.supervisor import Supervisor
from textgen_core.settings import FLOWER_DEV_AUTH, Settings, get_settings

app = typer.Typer(help="textgen: asynchronous text generation on Redis, Celery and transformers.",
                  no_args_is_help=True, add_completion=False)
err = Console(stderr=True)

DATA_DIR = Path(".textgen")


def _stop_on_signals() -> None:
    def raise_interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, raise_interrupt)


def _port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise typer.BadParameter(f"{value} is not a port: pick one from 1 to 65535, e.g. --port 8010")
    return value


@app.command()
def up(
    port: Annotated[int, typer.Option(callback=_port, help="API port.")] = 8000,
    host: Annotated[str, typer.Option(help="API bind address.")] = "127.0.0.1",
    data_dir: Annotated[Path, typer.Option(help="Where the bundled Redis keeps its data and children their logs.")]
    = DATA_DIR,
    log_files: Annotated[bool | None, typer.Option(
        "--log-files/--no-log-files", help="Children log to files under the data dir (default: on a terminal).")]
    = None,
    max_restarts: Annotated[int, typer.Option(help="Give up when one process died this often in the window.")] = 5,
    restart_window: Annotated[float, typer.Option(help="The crash-loop window, seconds.")] = 120.0,
) -> None:
    """Run the whole platform locally: Redis (found or bundled), one worker, the webhook worker and the API,
    restarting any process that dies until Ctrl-C."""
    from textgen_cli.up import UpOptions, run_up

    raise typer.Exit(run_up(UpOptions(host=host, port=port, data_root=data_dir, log_files=log_files,
                                      max_restarts=max_restarts, restart_window=restart_window)))


@app.command()
def api(
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
) -> None:
    """Run the API only (uvicorn)."""
    cmd = api_command(host, port, get_settings().log_level)
    os.execvpe(cmd[0], cmd, child_env())


def parse_gpus(gpu: int | None, gpus: str | None) -> list[int | None]:
    """``--gpu 1`` -> [1]; ``--gpus 0,1`` -> [0, 1]; neither -> [None] (CPU or default device)."""
    if gpu is not None and gpus:
        raise typer.BadParameter("give --gpu or --gpus, not both")
    if gpus:
        try:
            return [int(x) for x in gpus.split(",") if x.strip()]
        except ValueError as exc:
            raise typer.BadParameter("--gpus takes comma-separated GPU indexes, e.g. 0,1") from exc
    return [gpu]


@app.command()
def worker(
    gpu: Annotated[int | None, typer.Option(help="Pin this worker to one GPU index.")] = None,
    gpus: Annotated[str | None, typer.Option(help="One worker process per GPU, e.g. 0,1.")] = None,
    concurrency: Annotated[int | None, typer.Option(help="Jobs taken at once (default: max batch).")] = None,
    dtype: Annotated[str | None, typer.Option(
        help="float16 | bfloat16 | float32 (default: float16 on CUDA, float32 on CPU).")] = None,
    tensor_parallel: Annotated[int | None, typer.Option(
        min=1, help="vLLM models: GPUs per worker process, e.g. --gpus 0,1 --tensor-parallel 2.")] = None,
) -> None:
    """Run a Celery worker (one process per GPU) that loads its models once and batches jobs.

    With --tensor-parallel N, each process owns N of the --gpus and vLLM shards a model across them.
    Each process serves Prometheus metrics: with --gpus 0,1 the first on TEXTGEN_WORKER_METRICS_PORT,
    the next on that port + 1, and so on."""
    settings = get_settings()
    devices = parse_gpus(gpu, gpus)
    extra = {"TEXTGEN_WORKER_DTYPE": dtype} if dtype else {}
    if tensor_parallel and tensor_parallel > 1:
        try:
            groups = tensor_parallel_groups(devices, tensor_parallel)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
        _run_workers(settings, [(f"gpu{'-'.join(map(str, g))}", gpu_group_environment(g)) for g in groups],
                     concurrency, {**extra, "TEXTGEN_WORKER_TENSOR_PARALLEL": str(tensor_parallel)})
        return
    if len(devices) == 1:
        env = child_env(**gpu_environment(devices[0]), **worker_metrics_env(settings, 0), **extra)
        cmd = _worker_command(settings, worker_name(devices[0]), concurrency,
                              device="cpu" if devices[0] is None else "cuda")
        os.execvpe(cmd[0], cmd, env)
    _run_workers(settings, [(f"gpu{device}", gpu_environment(device)) for device in devices], concurrency, extra)


def _run_workers(settings: Settings, groups: list[tuple[str, dict[str, str]]], concurrency: int | None,
                 extra: dict[str, str]) -> None:
    """One worker process per (device label, environment), supervised; all stop when one exits."""
    _stop_on_signals()
    sup = Supervisor()
    host = socket.gethostname()
    try:
        for index, (label, device_env) in enumerate(groups):
            sup.start(label, _worker_command(settings, f"textgen-{label}@{host}", concurrency, device="cuda"),
                      child_env(**device_env, **worker_metrics_env(settings, index), **extra))
        while (name := sup.dead()) is None:
            time.sleep(0.5)
        err.print(f"[red]worker {name} exited; stopping the others[/]")
        raise typer.Exit(1)
    except KeyboardInterrupt:
        pass
    finally:
        sup.stop()


def _worker_command(settings: Settings, name: str, concurrency: int | None = None,
                    device: str = "cpu") -> list[str]:
    """``worker_command``, or a clear exit where a vLLM model's environment is missing."""
    try:
        return worker_command(settings, name, concurrency, device=device)
    except VllmEnvironmentMissing as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc


def webhook_worker_name() -> str:
    return f"textgen-webhooks@{socket.gethostname()}"


@app.command("webhook-worker")
def webhook_worker() -> None:
    """Run the webhook worker: signs, delivers and retries webhooks from the webhooks queue (no model)."""
    cmd = webhook_worker_command(get_settings(), webhook_worker_name())
    os.execvpe(cmd[0], cmd, child_env())


@app.command()
def flower(
    port: Annotated[int | None, typer.Option(help="Port (default: TEXTGEN_FLOWER_PORT).")] = None,
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
) -> None:
    """Run Flower, Celery's monitor, with basic auth from TEXTGEN_FLOWER_BASIC_AUTH (user:password)."""
    settings = get_settings()
    if settings.env == "production" and settings.flower_basic_auth == FLOWER_DEV_AUTH:
        err.print("[red]set TEXTGEN_FLOWER_BASIC_AUTH: the development password is refused in production[/]")
        raise typer.Exit(2)
    cmd = flower_command(settings, host, port)
    os.execvpe(cmd[0], cmd, child_env())


@app.command("prepare-model")
def prepare_model(model: Annotated[str | None, typer.Option(help="Model id (default: all).")] = None) -> None:
    """Convert packaged GGUF weights into the cache once, so workers start in seconds."""
    from textgen_core.engine.loader import prepare

    settings = get_settings()
    for spec in settings.models:
        if model in (None, spec.id):
            err.print(f"{spec.id}: {prepare(spec, settings.cache_dir)}")


@app.command()
def submit(
    prompt: Annotated[str, typer.Argument(help="The prompt.")],
    url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = None,
    mode: Annotated[str, typer.Option(help="general | recommendation | support | ecommerce")] = "general",
    max_tokens: Annotated[int, typer.Option(help="Tokens to generate at most.")] = 128,
    temperature: Annotated[float, typer.Option(help="0 for greedy.")] = 0.7,
    seed: Annotated[int | None, typer.Option(help="Seed for reproducible sampling.")] = None,
    conversation: Annotated[str | None, typer.Option(help="conversation_id to continue.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole job record.")] = False,
    stream: Annotated[bool, typer.Option("--stream", help="Print the text as it is generated.")] = False,
) -> None:
    """Submit a job, wait for it, and print the generated text."""
    body: dict[str, object] = {"prompt": prompt, "mode": mode, "max_tokens": max_tokens, "temperature": temperature}
    if seed is not None:
        body["seed"] = seed
    if conversation:
        body["conversation_id"] = conversation
    with api_client(url, api_key) as client:
        resp = client.post("/v1/jobs", json=body)
        if resp.status_code != 202:
            fail(client, resp)
        job = json_body(client, resp)
        if stream:
            job = stream_job(client, job["id"], lambda text: print(text, end="", flush=True)) or job
            print(flush=True)
        while job["status"] in ("queued", "running"):
            job = get_json(client, f"/v1/jobs/{job['id']}", wait=60)
    if as_json:
        print(json.dumps(job, indent=2))
    elif job["status"] == "succeeded":
        if not stream:
            print(job["output"])
    else:
        err.print(f"[red]job {job['status']}[/]: {(job.get('error') or {}).get('message', '')}", highlight=False)
        raise typer.Exit(1)


@app.command()
def batch(
    input_file: Annotated[Path | None, typer.Argument(help="CSV (products or prompts) or JSONL file.")] = None,
    output: batch_cli.Output = Path("results.jsonl"),
    batch_id: batch_cli.BatchId = None,
    mode: batch_cli.Mode = None,
    model: Annotated[str | None, typer.Option(help="Model id (default: the server's default).")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Tokens to generate at most per item.")] = None,
    temperature: Annotated[float | None, typer.Option(help="0 for greedy.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for reproducible sampling.")] = None,
    poll: Annotated[float, typer.Option(help="Seconds between progress updates.")] = 1.0,
    url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Run a batch: submit a file, show progress with rate and ETA, write the results."""
    fields = {name: str(value) for name, value in (("mode", mode), ("model", model), ("max_tokens", max_tokens),
                                                   ("temperature", temperature), ("seed", seed))
              if value is not None}
    batch_cli.run_batch(url, key_or_default(api_key), input_file, output, batch_id, fields, poll)


client_commands.register(app)
chat_cli.register(app)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
