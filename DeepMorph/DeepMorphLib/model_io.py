"""Model files: weights as safetensors (``X.safetensors``) + a JSON sidecar (``X.json``); never pickle.

The sidecar records what is needed to use the weights (task, architecture, input size, normalisation,
polarity) and how they were made (training data, command, metrics, torch version). Both files are written
atomically; loading checks that the weights file really is safetensors (a ``torch.save`` pickle is refused
before anything is unpickled), that it matches the sidecar's sha256, and loads the tensors strictly.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import struct
from pathlib import Path

import torch

from DeepMorphLib.fusionnet import architecture_of, build_model
from DeepMorphLib.inference import DEFAULT_NORMALIZATION, check_normalization, check_tta

FORMAT = "deepmorph-model"
FORMAT_VERSION = 1
TASKS = ("head", "femur", "polarity")  # polarity: the image classifier of polarity_net.py
PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".tar", ".zip"}


def model_paths(path: str | Path) -> tuple[Path, Path]:
    """(weights, sidecar) for ``X``, ``X.safetensors`` or ``X.json``."""
    s = str(path)
    for ext in (".safetensors", ".json"):
        if s.endswith(ext):
            s = s[: -len(ext)]
            break
    return Path(s + ".safetensors"), Path(s + ".json")


def save_model(model: torch.nn.Module, path_without_ext: str | Path, metadata: dict) -> tuple[Path, Path]:
    """Write ``X.safetensors`` (the state dict) and ``X.json`` (``metadata`` completed with format, architecture,
    weights sha256, torch version, creation time). ``metadata`` needs ``task`` and ``input_size``."""
    from safetensors.torch import save

    from DeepMorphSimulatorLib.files import atomic_write_bytes, atomic_write_json

    weights_path, sidecar_path = model_paths(path_without_ext)
    meta = dict(metadata)
    meta.setdefault("normalization", dict(DEFAULT_NORMALIZATION))
    meta.update(format=FORMAT, format_version=FORMAT_VERSION, architecture=architecture_of(model),
                torch_version=torch.__version__, weights_file=weights_path.name)
    meta.setdefault("created_utc", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    validate_metadata(meta, str(sidecar_path))
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    data = save(tensors, metadata={"format": FORMAT, "task": meta["task"]})
    meta["weights_sha256"] = hashlib.sha256(data).hexdigest()
    atomic_write_bytes(weights_path, data)
    atomic_write_json(sidecar_path, meta)
    return weights_path, sidecar_path


def validate_metadata(meta: dict, where: str = "sidecar") -> dict:
    """Check a sidecar's essentials; ValueError naming the field otherwise."""
    if not isinstance(meta, dict):
        raise ValueError(f"{where}: a model sidecar must be a JSON object.")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{where}: not a DeepMorph model sidecar (format {meta.get('format')!r}, expected {FORMAT!r}).")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{where}: model format version {meta.get('format_version')} is newer than this program "
                         f"supports ({FORMAT_VERSION}); update DeepMorph.")
    if meta.get("task") not in TASKS:
        raise ValueError(f"{where}: task must be one of {TASKS}, got {meta.get('task')!r}.")
    size = meta.get("input_size")
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"{where}: input_size must be an integer >= 8 (px), got {size!r}.")
    check_normalization(meta.get("normalization"))
    if "tta_views" in meta:
        check_tta(meta["tta_views"], f"{where}: tta_views")
    build_model(meta.get("architecture"))  # raises on unknown/invalid architecture
    return meta


def read_sidecar(path: str | Path) -> dict:
    """Parse and validate the JSON sidecar of model ``path`` (X, X.safetensors or X.json)."""
    _, sidecar = model_paths(path)
    if not sidecar.is_file():
        raise FileNotFoundError(f"Model sidecar not found: {sidecar} (each model is X.safetensors + X.json): put the "
                                f".json written with the weights next to them under that name.")
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"Model sidecar {sidecar} is not valid JSON ({exc}); re-export the model.") from None
    return validate_metadata(meta, str(sidecar))


def check_safetensors_file(path: Path) -> bytes:
    """Return the file's bytes if it looks like safetensors; a clear ValueError for pickles / corrupt files."""
    data = path.read_bytes()
    if len(data) >= 10:
        (n,) = struct.unpack("<Q", data[:8])
        if n <= len(data) - 8 and data[8:9] == b"{":
            return data
    if data[:2] == b"PK" or data[:1] == b"\x80":
        raise ValueError(f"{path} is a pickle / torch.save file; DeepMorph never unpickles model files (they can run "
                         f"code). Export the weights as safetensors with a JSON sidecar (model_io.save_model).")
    raise ValueError(f"{path} is not a valid safetensors file ({len(data)} bytes, bad header; truncated or "
                     f"corrupt). Re-export it.")


def load_model(path: str | Path, task: str | None = None, device: str | torch.device = "cpu"):
    """Load ``(model, metadata)`` from X / X.safetensors / X.json; the model is in eval mode on ``device``.

    Refuses pickle files (.pt/.pth/... or pickle content), corrupt or mismatched weights and sidecars whose
    task (if ``task`` is given) or architecture do not match.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    p = Path(path)
    if p.suffix.lower() in PICKLE_SUFFIXES:
        raise ValueError(f"{p}: '{p.suffix}' model files are pickles and are refused; DeepMorph loads only "
                         f"safetensors weights with a JSON sidecar (X.safetensors + X.json).")
    weights_path, sidecar_path = model_paths(p)
    if not weights_path.is_file():
        raise FileNotFoundError(f"Model weights not found: {weights_path}")
    data = check_safetensors_file(weights_path)
    meta = read_sidecar(p)
    if task is not None and meta["task"] != task:
        raise ValueError(f"Model {weights_path} is a '{meta['task']}' model, but a '{task}' model is needed.")
    sha = meta.get("weights_sha256")
    if sha and hashlib.sha256(data).hexdigest() != sha:
        raise ValueError(f"{weights_path} does not match the sha256 in its sidecar (corrupt or replaced); "
                         f"re-export the model.")
    try:
        state = load(data)
        header_task = safe_metadata(data).get("task")
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{weights_path} is a corrupt safetensors file ({exc}).") from None
    if header_task not in (None, meta["task"]):
        raise ValueError(f"{weights_path} holds a '{header_task}' network but its sidecar {sidecar_path} says "
                         f"'{meta['task']}': the sidecar belongs to another model; put the right .json next to it.")
    model = build_model(meta["architecture"])
    mismatch = state_mismatch(model, state)
    if mismatch:
        raise ValueError(f"Weights in {weights_path} do not fit the architecture in {sidecar_path} "
                         f"({meta['architecture']}): {mismatch}; the sidecar belongs to another model, put the right "
                         f".json next to the weights.")
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), meta


def safe_metadata(data: bytes) -> dict:
    """The ``__metadata__`` of a safetensors file's bytes (checked by ``check_safetensors_file``)."""
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]).get("__metadata__") or {}


def state_mismatch(model: torch.nn.Module, state: dict) -> str:
    """'' when ``state`` has exactly ``model``'s tensor names and shapes, else a one-line summary of the first
    differences."""
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} vs {own[k]}" for k in own if k in state and tuple(state[k].shape) != own[k]]
    parts = [f"{len(missing)} tensor(s) missing, e.g. {missing[0]}" if missing else "",
             f"{len(extra)} unexpected, e.g. {extra[0]}" if extra else "",
             f"{len(shapes)} of other shape, e.g. {shapes[0]}" if shapes else ""]
    return "; ".join(p for p in parts if p)
