"""Checkpoint formats: official ``.pt`` state dicts, our folders (``config.json`` + ``model.safetensors``), Hub ids.

* ``from_pretrained(x)`` takes a folder, a ``.safetensors``/``.pt`` file or a Hugging Face Hub id such as
  ``cartesia-ai/hnet_2stage_XL``. Hub ids are fetched with ``huggingface_hub`` when a network is reachable and
  read from its local cache otherwise (``HF_HUB_OFFLINE=1`` forces the cache).
* The config comes from ``config=``, else ``config.json`` next to the weights, else the released config whose name
  matches the weights file (``hnet_2stage_XL.pt`` -> the official ``hnet_2stage_XL`` config, shipped in
  ``official_configs/``).
* ``.pt`` files are unpickled with ``weights_only=True``. Official files may pickle omegaconf containers; those
  load as inert stubs (no omegaconf code runs, omegaconf need not be installed) and every non-tensor entry is dropped.
"""

from __future__ import annotations

import pickle
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from .config import OFFICIAL_CONFIGS, HNetConfig
from .errors import InvalidArgument, OutputFolderError, UserError
from .files import atomic_write
from .model import HNetForCausalLM

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


class CheckpointError(UserError, ValueError):
    """A checkpoint file that cannot be used: the message names the file and the problem."""


# ------------------------------------------------------------------------------------------------ reading files
class _PickledObjectStub:
    """Inert stand-in for an omegaconf object inside a checkpoint: it only stores its pickled state."""

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state


_OMEGACONF_CLASSES = [
    "listconfig.ListConfig",
    "dictconfig.DictConfig",
    "base.ContainerMetadata",
    "base.Metadata",
    *(f"nodes.{n}Node" for n in ("Any", "String", "Integer", "Float", "Boolean", "Bytes", "Path", "Enum")),
]
# What unpickling an omegaconf container may name besides its own classes; none of these runs code of the file.
_SAFE_GLOBALS = [
    *((_PickledObjectStub, f"omegaconf.{name}") for name in _OMEGACONF_CLASSES),
    (_PickledObjectStub, "typing.Any"),
    *((t, f"builtins.{t.__name__}") for t in (list, dict, tuple, int, float, str, bool)),
    defaultdict,
]


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def _load_pt(path: Path) -> Any:
    with torch.serialization.safe_globals(_SAFE_GLOBALS):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            named = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
            what = f"it names the Python object {named.group(1)}" if named else _first_line(err)
            raise CheckpointError(
                f"{path}: refused by safe (weights-only) loading: {what}. Only tensors and omegaconf containers are "
                "accepted; the file is corrupted or holds other Python objects."
            ) from None
        except Exception as err:  # whatever a damaged zip or pickle stream makes the reader raise
            raise CheckpointError(
                f"{path}: not a readable PyTorch checkpoint ({_first_line(err)}); the file is truncated or corrupted"
            ) from None


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` or ``.pt`` checkpoint, on the CPU, as stored.

    A ``.pt`` file may hold the state dict itself or a dict with a ``model`` or ``state_dict`` entry holding it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except (SafetensorError, OSError) as err:
            raise CheckpointError(
                f"{path}: not a readable safetensors file ({err}); the file is truncated or corrupted"
            ) from None
    obj = _load_pt(path)
    if isinstance(obj, dict):
        obj = next((obj[k] for k in ("model", "state_dict") if isinstance(obj.get(k), dict)), obj)
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    if not tensors:
        raise CheckpointError(f"{path}: holds no tensors ({type(obj).__name__}); expected a model state dict")
    return tensors


# ------------------------------------------------------------------------------------------- finding the files
def _hub_snapshot(repo_id: str, cache_dir: str | Path | None) -> Path:
    try:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:
        raise FileNotFoundError(
            f"'{repo_id}' is not a local file or folder; to fetch it from the Hugging Face Hub install "
            "huggingface_hub (pip install huggingface_hub)"
        ) from None
    try:
        return Path(
            snapshot_download(repo_id, allow_patterns=[CONFIG_NAME, "*.safetensors", "*.pt"], cache_dir=cache_dir)
        )
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as err:
        cache = cache_dir or constants.HF_HUB_CACHE
        raise FileNotFoundError(
            f"cannot load '{repo_id}': it is not a local path, the Hugging Face Hub did not provide it and it is "
            f"not in the local Hub cache {cache} ({_first_line(err)}). On a machine with network access run "
            f"`hf download {repo_id}` (this fills that cache; copy the cache folder here or point HF_HUB_CACHE "
            f"at it), or download the repository's files (the .pt or model.safetensors, and config.json if it "
            "has one) into a folder and pass that folder."
        ) from None


def _weights_in(folder: Path) -> Path:
    if (folder / WEIGHTS_NAME).is_file():
        return folder / WEIGHTS_NAME
    for pattern in ("*.safetensors", "*.pt"):
        found = sorted(folder.glob(pattern))
        if len(found) == 1:
            return found[0]
        if found:
            raise CheckpointError(f"{folder}: several {pattern} files ({', '.join(f.name for f in found)}); pass one")
    raise FileNotFoundError(f"{folder}: no model weights ({WEIGHTS_NAME}, *.safetensors or *.pt)")


def _config_for(weights: Path, config: HNetConfig | str | Path | None) -> HNetConfig:
    if isinstance(config, HNetConfig):
        return config
    if config is not None:
        return HNetConfig.from_json(config)
    for candidate in (weights.parent / CONFIG_NAME, OFFICIAL_CONFIGS / f"{weights.stem}.json"):
        if candidate.is_file():
            return HNetConfig.from_json(candidate)
    raise FileNotFoundError(
        f"no config for {weights}: there is no {CONFIG_NAME} next to it and its name matches no released model "
        f"({', '.join(sorted(p.stem for p in OFFICIAL_CONFIGS.glob('*.json')))}); pass the config JSON with "
        "--config (config= in Python)"
    )


def resolve(
    name_or_path: str | Path,
    config: HNetConfig | str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[Path, HNetConfig]:
    """(weights file, config) of a folder, a weights file or a Hub id."""
    path = Path(name_or_path)
    if path.is_dir():
        weights = _weights_in(path)
    elif path.is_file():
        weights = path
    elif re.fullmatch(r"[\w.-]+/[\w.-]+", str(name_or_path)) and not path.parent.is_dir():
        weights = _weights_in(_hub_snapshot(str(name_or_path), cache_dir))
    elif path.parent.is_dir():  # e.g. runs/x with a folder runs/: a missing local path, not a Hub id
        raise FileNotFoundError(f"{name_or_path}: no such file or folder")
    else:
        raise FileNotFoundError(f"{name_or_path}: no such file or folder, and not a Hub id of the form owner/name")
    return weights, _config_for(weights, config)


# ------------------------------------------------------------------------------------------- building models
def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def parse_device(device: torch.device | str | None) -> torch.device:
    """A device this torch build can use; unknown names and missing accelerators are refused with a clear message."""
    try:
        device = torch.device(device or "cpu")
    except (RuntimeError, TypeError):
        raise InvalidArgument(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise InvalidArgument(f"device {str(device)!r} is not available: {why} (torch {torch.__version__})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InvalidArgument(f"device {str(device)!r} does not exist: {torch.cuda.device_count()} GPU(s) visible")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidArgument("device 'mps' is not available on this machine; use cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise InvalidArgument(f"device {str(device)!r} is not supported here; use cpu, cuda, cuda:N or mps")
    return device


def build_model(
    config: HNetConfig,
    state: dict[str, torch.Tensor],
    source: str | Path,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
) -> HNetForCausalLM:
    """A model with the weights ``state`` (read from ``source``, named in errors), in ``dtype`` on ``device``.

    All parameters take ``dtype`` (default float32) except ``mixer.D`` and ``residual_proj``, which stay float32
    as in the official model. The model is built on the meta device, so no time is spent on a random init.
    """
    model = HNetForCausalLM(config, device="meta", dtype=parse_dtype(dtype) or torch.float32)
    if config.tie_embeddings and "lm_head.weight" not in state and "embeddings.weight" in state:
        state = {**state, "lm_head.weight": state["embeddings.weight"]}
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            raise CheckpointError(f"{source}: tensor {name} contains NaN or infinite values; the file is corrupted")
    own = model.state_dict()
    device = parse_device(device)
    state = {k: v.to(device=device, dtype=own[k].dtype) if k in own else v for k, v in state.items()}
    try:
        model.load_state_dict(state, assign=True)
    except ValueError as err:
        raise CheckpointError(f"{source}: {err}") from None
    if config.tie_embeddings:
        model.lm_head.weight = model.embeddings.weight
    return model.eval()


def from_pretrained(
    name_or_path: str | Path,
    config: HNetConfig | str | Path | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    cache_dir: str | Path | None = None,
) -> HNetForCausalLM:
    """Load a model from a folder, a ``.safetensors``/``.pt`` file or a Hub id (see the module docstring)."""
    weights, config = resolve(name_or_path, config, cache_dir)
    return build_model(config, load_state_dict(weights), weights, dtype, device)


# ------------------------------------------------------------------------------------------------ writing
def save_pretrained(model: HNetForCausalLM, directory: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (tensors in the model's dtypes) to ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight")  # the same tensor as embeddings.weight; restored on loading
    atomic_write(directory / WEIGHTS_NAME, save(state, metadata={"format": "pt"}))
    atomic_write(directory / CONFIG_NAME, model.config.to_json())
    return directory


def convert(
    source: str | Path,
    destination: str | Path,
    config: HNetConfig | str | Path | None = None,
    dtype: torch.dtype | str | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert between formats: to a folder (config.json + model.safetensors), or to an official-style ``.pt``
    state dict plus ``config.json`` beside it when ``destination`` ends in ``.pt``. Weights keep their stored dtype
    unless ``dtype`` is given. Existing files are only replaced with ``overwrite``."""
    destination = Path(destination)
    is_pt = destination.suffix == ".pt"
    targets = [destination, destination.with_name(CONFIG_NAME)] if is_pt else [destination]
    if not is_pt and destination.exists() and not destination.is_dir():
        raise OutputFolderError(f"{destination} is a file; give a folder, or a destination ending in .pt")
    taken = [t for t in targets if t.is_file() or (t.is_dir() and any(t.iterdir()))]
    if taken and not overwrite:
        raise OutputFolderError(
            f"{taken[0]} already exists; pass --overwrite to replace it (overwrite=True), or choose another destination"
        )
    weights, config = resolve(source, config)
    state = load_state_dict(weights)
    stored = state.get("embeddings.weight")
    model = build_model(config, state, weights, dtype or (stored.dtype if stored is not None else None))
    if is_pt:
        destination.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(destination, lambda f: torch.save(model.state_dict(), f))
        atomic_write(targets[1], model.config.to_json())  # so that the .pt converts and loads back
        return destination
    return save_pretrained(model, destination)
