"""Training of the FusionNet outline segmenters (``deepmorph train``), resumable and deterministic.

Recipe (paper, section 4, plus what helps on thin outlines): BCE-with-logits loss with a positive-class
weight + a soft-Dice term; Adam; learning rate x0.1 from 75 % of the epochs on; augmentation of
``augment.py`` on random crops of ``crop`` px taken at the inference scale (images resized so their longer
side is ``size`` px, exactly like ``inference.prepare_input``), then the same percentile normalisation.

Determinism and resuming: the model is initialised from ``seed``; the sample order of epoch e and the
augmentation of step s are drawn from generators seeded by (seed, e) and (seed, e, s), so no RNG state has to
be carried: a checkpoint (model + Adam state + progress, one safetensors file written atomically) taken
after any step resumes to bit-identical final weights on the same device and thread count. Checkpoints are
written every ``checkpoint_minutes`` and at the end of each epoch, so a ``kill -9`` loses at most that much
work; Ctrl-C (and SIGTERM under ``deepmorph``) finishes the step and writes one. A checkpoint of other settings is
refused before its tensors are loaded, except a changed ``epochs`` while the epochs already trained keep their
learning rate (``resumable_state``). A NaN/inf loss or weights stop the run without saving a model. Validation (no augmentation, full images) runs at each epoch end; its loss and Dice of the map
thresholded at 0.5 go to ``metrics.jsonl`` and to the final model's sidecar.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from DeepMorphLib.augment import AugmentConfig, augment_batch
from DeepMorphLib.fusionnet import FusionNet, count_parameters
from DeepMorphLib.region import check_target, disk_mask, polygon_mask
from DeepMorphLib.roi import crop_rois
from DeepMorphLib.inference import (DEFAULT_NORMALIZATION, letterbox_shape, normalize_images, resize_image,
                                    resolve_device, torch_threads)

TASKS = ("head", "femur", "polarity")  # polarity: the image classifier of polarity_net.py
ROIS = ("", "head")
CHECKPOINT_NAME = "checkpoint.safetensors"
METRICS_NAME = "metrics.jsonl"
CHECKPOINT_FORMAT = "deepmorph-train-checkpoint"


@dataclass
class TrainConfig:
    """Everything that defines a training run. Fields marked (run) do not change the result."""

    task: str
    data: list                      # dataset directories (``deepmorph dataset`` format)
    out: str                        # model path without extension -> out.safetensors + out.json (run)
    work_dir: str = ""              # checkpoint + metrics.jsonl; default runs/train-<out name> (run)
    epochs: int = 20
    batch: int = 8
    size: int = 256                 # network input side (px): longer image side at inference
    crop: int = 192                 # training crop side (px) at that scale (<= size)
    base_channels: int = 8
    depth: int = 4
    lr: float = 1e-3
    lr_decay_at: float = 0.75       # fraction of the epochs after which the LR is multiplied by 0.1
    pos_weight: float = 3.0         # BCE weight of target (outline or region) pixels
    target: str = "outline"         # "outline" (thin band on the edge, the paper's) or "region" (filled object)
    dice_weight: float = 1.0        # weight of the soft-Dice term
    roi: str = ""                   # "" = whole images; "head" = patches around the true head, jittered (refiner)
    roi_scale: float = 4.0          # ROI side / head radius
    roi_jitter: float = 0.5         # largest ROI centre offset from the true head centre / head radius
    roi_size_jitter: float = 1.25   # ROI side times a log-uniform factor in [1/x, x]
    roi_source: int = 256           # longer side (px) of the cached images the ROIs are cut from
    seed: int = 0
    init_from: str = ""             # start from this model's weights (fine-tuning); "" = random init
    val_fraction: float = 0.1
    max_samples: int = 0            # 0 = all samples of all directories
    augment: dict = field(default_factory=lambda: AugmentConfig(invert_prob=0.25).to_dict())
    max_minutes: float = 0.0        # stop (resumable) after this wall time; 0 = no limit (run)
    checkpoint_minutes: float = 5.0  # (run)
    threads: int = 0                # torch CPU threads; 0 = torch's default (run)
    device: str = "auto"            # (run)
    command: str = ""               # the command line, recorded in the sidecar (run)

    RUN_ONLY = ("out", "work_dir", "max_minutes", "checkpoint_minutes", "threads", "device", "command")

    def validate(self) -> "TrainConfig":
        if self.task not in TASKS:
            raise ValueError(f"--task must be one of {TASKS}, got {self.task!r}.")
        if not self.data:
            raise ValueError("Give at least one dataset directory with --data DIR (made by 'deepmorph dataset').")
        finite = all(math.isfinite(v) for v in (self.lr, self.pos_weight, self.dice_weight, self.val_fraction,
                                                 self.lr_decay_at, self.max_minutes, self.checkpoint_minutes))
        if not finite:  # an inf learning rate or loss weight trains NaN weights without a word
            raise ValueError("Invalid training settings: --lr, --pos-weight, --dice-weight, --val-fraction, "
                             "--max-minutes and --checkpoint-minutes must be finite numbers.")
        checks = [("epochs", self.epochs >= 1, ">= 1"), ("batch", self.batch >= 1, ">= 1"),
                  ("size", self.size >= 16, ">= 16"), ("crop", 16 <= self.crop <= self.size, "in [16, --size]"),
                  ("base-channels", self.base_channels >= 1, ">= 1"), ("depth", 1 <= self.depth <= 6, "in [1, 6]"),
                  ("lr", self.lr > 0, "> 0"), ("pos-weight", self.pos_weight > 0, "> 0"),
                  ("dice-weight", self.dice_weight >= 0, ">= 0"),
                  ("val-fraction", 0 <= self.val_fraction < 1, "in [0, 1)"),
                  ("lr-decay-at", 0 < self.lr_decay_at <= 1, "in (0, 1]"),
                  ("max-samples", self.max_samples >= 0, ">= 0 (0 = all)"), ("threads", self.threads >= 0, ">= 0"),
                  ("max-minutes", self.max_minutes >= 0, ">= 0"),
                  ("checkpoint-minutes", self.checkpoint_minutes >= 0, ">= 0")]
        bad = [f"--{name} must be {rule}, got {getattr(self, name.replace('-', '_'))}"
               for name, ok, rule in checks if not ok]
        if bad:
            raise ValueError(f"Invalid training settings: {'; '.join(bad)}.")
        m = 2 ** self.depth
        if self.size % m or self.crop % m:
            raise ValueError(f"--size and --crop must be multiples of 2^depth = {m} (got {self.size}, {self.crop}).")
        AugmentConfig.from_dict(self.augment)
        check_target(self.target)
        if self.roi not in ROIS:
            raise ValueError(f"--roi must be one of {ROIS} ('' = whole images), got {self.roi!r}.")
        if self.task == "polarity" and (self.crop != self.size or self.roi):
            raise ValueError("--task polarity classifies whole images: use --crop equal to --size and no --roi.")
        if self.roi and self.task != "head":
            raise ValueError("--roi head trains a head refinement network: use it with --task head.")
        if self.roi and not (self.roi_scale > 0 and self.roi_jitter >= 0 and self.roi_size_jitter >= 1
                             and self.roi_source >= 16):
            raise ValueError("Invalid ROI settings: --roi-scale > 0, --roi-jitter >= 0, --roi-size-jitter >= 1, "
                             "--roi-source >= 16.")
        return self

    def fingerprint(self) -> dict:
        """The fields that determine the trained weights (compared when resuming)."""
        d = {k: v for k, v in asdict(self).items() if k not in self.RUN_ONLY}
        d["data"] = [str(Path(p).resolve()) for p in self.data]
        if not d["init_from"]:
            del d["init_from"]  # random init: same fingerprint as before the option existed
        else:
            d["init_from"] = str(Path(d["init_from"]).resolve())
        if d["target"] == "outline":
            del d["target"]  # likewise for the paper's outline target
        if not d["roi"]:  # whole-image networks: same fingerprint as before ROIs existed
            for k in [k for k in d if k.startswith("roi")]:
                del d[k]
        return d

    def resolved_work_dir(self) -> Path:
        return Path(self.work_dir) if self.work_dir else Path("runs") / f"train-{Path(self.out).name}"


# ----------------------------------------------------------------------------------------------- data
def list_samples(data_dir: str | Path, task: str, target: str = "outline") -> list[tuple[Path, Path]]:
    """(image, target) paths of a dataset directory: ``samples/NNNNNN.png`` + the outline mask
    ``NNNNNN_<task>.png`` (target "outline") or the sample's ``NNNNNN.json`` (target "region": drawn from its
    ground truth)."""
    root = Path(data_dir)
    samples = root / "samples"
    if not samples.is_dir():
        if root.name == "samples" and (root.parent / "manifest.json").is_file():
            raise FileNotFoundError(f"{root} is the samples/ folder of a dataset: give the dataset folder "
                                    f"--data {root.parent}.")
        if not root.is_dir():
            raise FileNotFoundError(f"{root} is not a folder; --data takes dataset folders made by 'deepmorph "
                                    f"dataset' (e.g. 'deepmorph dataset --phantom --out {root} --n 2000 --size 256').")
        raise FileNotFoundError(f"{root} is not a DeepMorph dataset (no samples/ folder); make one with "
                                f"'deepmorph dataset --phantom --out {root} --n 2000 --size 256'.")
    images = sorted(p for p in samples.glob("*.png") if p.stem.isdigit())
    if not images:
        raise ValueError(f"{samples} holds no sample images (NNNNNN.png).")
    pairs, missing = [], []
    for img in images:
        mask = img.with_name(f"{img.stem}_{task}.png" if target == "outline" else f"{img.stem}.json")
        (pairs if mask.is_file() else missing).append((img, mask))
    if missing:
        raise ValueError(f"{len(missing)} of {len(images)} samples in {samples} lack their '{task}' target, e.g. "
                         f"{missing[0][1].name}; regenerate the dataset or choose the other --task.")
    return pairs


def dataset_info(data_dir: str | Path) -> dict:
    """What the sidecar records about a dataset directory (manifest essentials)."""
    root = Path(data_dir)
    info = {"dir": str(root)}
    manifest = root / "manifest.json"
    if manifest.is_file():
        try:
            m = json.loads(manifest.read_text(encoding="utf-8"))
            info.update({k: m[k] for k in ("generator_version", "n", "seed", "command") if k in m})
            info["manifest_sha256"] = hashlib.sha256(manifest.read_bytes()).hexdigest()
        except (json.JSONDecodeError, UnicodeDecodeError):
            info["manifest"] = "unreadable"
    return info


def _read_gray(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L") if im.mode not in ("L", "I;16", "I") else im, dtype=np.float32)
    except OSError as exc:
        raise ValueError(f"Cannot read {path} ({exc}); the dataset is damaged, regenerate that sample.") from None
    return arr


def _region_target(json_path: Path, shape: tuple, task: str = "head") -> np.ndarray:
    """Filled target (0-255) drawn from a sample's ground truth: the head disk from ``head_circle`` [cx, cy, r] px
    (task "head") or the proximal femur from its outline ``contour`` [[x, y], ...] px closed across the shaft
    (task "femur"); empty when the object is not in the sample."""
    try:
        truth = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"Cannot read {json_path} ({exc}); the dataset is damaged, regenerate that sample.") from None
    if task == "femur":
        contour = truth.get("contour")
        return 255.0 * polygon_mask(shape, contour) if contour and len(contour) >= 3 else np.zeros(shape, np.float32)
    circle = truth.get("head_circle")
    if not circle:
        return np.zeros(shape, np.float32)
    return 255.0 * disk_mask(shape, *circle)


def _load_pair(pair: tuple[Path, Path], size: int, task: str = "head") -> tuple[np.ndarray, np.ndarray]:
    img = _read_gray(pair[0])
    if pair[1].suffix == ".json":
        mask = _region_target(pair[1], img.shape, task)
    else:
        mask = (_read_gray(pair[1]) > 127) * 255.0
    if img.shape != mask.shape:
        raise ValueError(f"{pair[1].name} has shape {mask.shape}, its image {img.shape}; they must match.")
    scale = 255.0 / max(float(img.max()), 1.0) if img.max() > 255 else 1.0
    x = torch.from_numpy(np.stack([img * scale, mask]).astype(np.float32))[:, None]
    nh, nw, top, left = letterbox_shape(img.shape[0], img.shape[1], size)
    x = resize_image(x, (nh, nw))
    out = torch.zeros(2, 1, size, size)
    out[0] = float(torch.quantile(x[0].flatten(), 0.01)) if (nh, nw) != (size, size) else 0.0
    out[:, :, top:top + nh, left:left + nw] = x
    out = out[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()
    return out[0], out[1]


def load_dataset(dirs: list, task: str, size: int, max_samples: int = 0, progress: bool = True,
                 target: str = "outline"):
    """Decode and resize every sample once: (images uint8 (N, S, S), masks uint8 (N, S, S), per-dir info)."""
    from tqdm import tqdm

    pairs, infos = [], []
    for d in dirs:
        p = list_samples(d, task, target)
        info = dataset_info(d)
        info["n_used"] = len(p)
        pairs += p
        infos.append(info)
    if max_samples and max_samples < len(pairs):
        pairs = pairs[:max_samples]
        # record what is really used, so a set still growing on disk does not break a resume
        remaining = max_samples
        for info in infos:
            info["n_used"] = min(info["n_used"], remaining)
            remaining -= info["n_used"]
    images = np.empty((len(pairs), size, size), np.uint8)
    masks = np.empty_like(images)
    with ThreadPoolExecutor(max_workers=2) as pool:
        it = pool.map(lambda pr: _load_pair(pr, size, task), pairs)
        for i, (im, mk) in enumerate(tqdm(it, total=len(pairs), desc="loading", unit="img", disable=not progress,
                                          leave=False)):
            images[i], masks[i] = im, mk
    return torch.from_numpy(images), torch.from_numpy(masks), infos


def load_polarity_dataset(dirs: list, size: int, max_samples: int = 0, progress: bool = True):
    """Images and polarity labels for the polarity classifier: (images uint8 (N, S, S) letterboxed as in
    ``load_dataset``, labels float32 (N,) 1 = bone-bright / 0 = bone-dark from each sample's ``polarity``, infos)."""
    from DeepMorphLib.polarity_net import POLARITY_LABELS

    labels = []
    for d in dirs:
        for _, json_path in list_samples(d, "head", "region"):
            try:
                polarity = json.loads(json_path.read_text(encoding="utf-8")).get("polarity")
            except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ValueError(f"Cannot read {json_path} ({exc}); the dataset is damaged, regenerate that sample.") from None
            if polarity not in POLARITY_LABELS:
                raise ValueError(f"{json_path} has no 'polarity' (bone-dark | bone-bright), got {polarity!r}; "
                                 "regenerate the dataset with this version of 'deepmorph dataset'.")
            labels.append(POLARITY_LABELS[polarity])
    images, _, infos = load_dataset(dirs, "head", size, max_samples, progress, "region")
    return images, torch.tensor(labels[:len(images)], dtype=torch.float32), infos


def load_head_circles(dirs: list, size: int, max_samples: int = 0) -> torch.Tensor:
    """(N, 3) float32 ground-truth head circles (cx, cy, r) px in the cached images of ``load_dataset(dirs,
    "head", size, max_samples)`` (same order; letterboxed to ``size``), NaN where the head is not in view."""
    from PIL import Image

    pairs = [pr for d in dirs for pr in list_samples(d, "head", "region")]
    if max_samples:
        pairs = pairs[:max_samples]
    out = np.full((len(pairs), 3), np.nan, np.float32)
    for i, (img_path, json_path) in enumerate(pairs):
        circle = json.loads(json_path.read_text(encoding="utf-8")).get("head_circle")
        if not circle:
            continue
        with Image.open(img_path) as im:
            w, h = im.size
        nh, nw, top, left = letterbox_shape(h, w, size)
        sx, sy = nw / w, nh / h
        out[i] = [(circle[0] + 0.5) * sx - 0.5 + left, (circle[1] + 0.5) * sy - 0.5 + top, circle[2] * sx]
    return torch.from_numpy(out)


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train, val) index split."""
    perm = np.random.default_rng(np.random.SeedSequence([seed, 7])).permutation(n)
    n_val = int(round(n * val_fraction)) if n > 1 else 0
    n_val = min(n_val, n - 1)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


# ----------------------------------------------------------------------------------------------- loss
def outline_loss(logits: torch.Tensor, target: torch.Tensor, pos_weight: float = 3.0,
                 dice_weight: float = 1.0) -> torch.Tensor:
    """BCE-with-logits (outline pixels weighted by ``pos_weight``) + ``dice_weight`` * (1 - soft Dice)."""
    pw = torch.tensor(pos_weight, device=logits.device)
    bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pw)
    if dice_weight <= 0:
        return bce
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    dice = (2 * (p * t).sum(1) + 1.0) / (p.sum(1) + t.sum(1) + 1.0)
    return bce + dice_weight * (1.0 - dice.mean())


def _generator(*key: int) -> torch.Generator:
    seed = int(np.random.SeedSequence(list(key)).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(seed)


def make_batch(images, masks, idx, cfg: TrainConfig, aug: AugmentConfig, g: torch.Generator, device):
    """uint8 cache rows -> augmented, normalised (B, 1, crop, crop) inputs and soft targets on ``device``."""
    idx_t = torch.as_tensor(idx, dtype=torch.long, device=images.device)
    x = images[idx_t].to(device, torch.float32)[:, None] / 255.0
    y = masks[idx_t].to(device, torch.float32)[:, None] / 255.0
    x, y = augment_batch(x, y, g, aug, out_size=cfg.crop)
    return normalize_images(x, DEFAULT_NORMALIZATION), y


def make_polarity_batch(images, labels, idx, cfg: TrainConfig, aug: AugmentConfig, g: torch.Generator, device):
    """uint8 cache rows -> augmented, normalised (B, 1, S, S) inputs and their labels (B,), half of them inverted
    with the label flipped (``polarity_net.invert_with_labels``)."""
    from DeepMorphLib.polarity_net import invert_with_labels

    idx_t = torch.as_tensor(idx, dtype=torch.long, device=images.device)
    x = images[idx_t].to(device, torch.float32)[:, None] / 255.0
    x, _ = augment_batch(x, torch.zeros_like(x), g, aug, out_size=cfg.crop)
    x, y = invert_with_labels(x, labels[idx_t.cpu()].to(device), g)
    return normalize_images(x, DEFAULT_NORMALIZATION), y


def head_rois(heads: torch.Tensor, cfg: TrainConfig, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ROIs around true head circles (B, 3): centres offset uniformly within ``roi_jitter`` radii,
    sides ``roi_scale`` radii times a log-uniform factor in [1/roi_size_jitter, roi_size_jitter]."""
    b = heads.shape[0]
    angle = 2 * math.pi * torch.rand(b, generator=g)
    offset = cfg.roi_jitter * torch.sqrt(torch.rand(b, generator=g)) * heads[:, 2]
    centers = heads[:, :2] + offset[:, None] * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    log_j = math.log(cfg.roi_size_jitter)
    sides = cfg.roi_scale * heads[:, 2] * torch.exp((2 * torch.rand(b, generator=g) - 1) * log_j)
    return centers, sides


def cut_rois(images, masks, heads, idx, cfg: TrainConfig, g: torch.Generator, device):
    """uint8 cache rows -> ROI patches (B, 1, size, size) of image (outside: its 1st percentile) and target."""
    idx_t = torch.as_tensor(idx, dtype=torch.long, device=images.device)
    x = images[idx_t].to(device, torch.float32)[:, None] / 255.0
    y = masks[idx_t].to(device, torch.float32)[:, None] / 255.0
    centers, sides = head_rois(heads[torch.as_tensor(idx, dtype=torch.long)], cfg, g)
    fill = torch.quantile(x.flatten(1), 0.01, dim=1).cpu()
    return crop_rois(x, centers, sides, cfg.size, fill), crop_rois(y, centers, sides, cfg.size)


def make_roi_batch(images, masks, heads, idx, cfg: TrainConfig, aug: AugmentConfig, g: torch.Generator, device):
    """Like ``make_batch`` for a refinement network: jittered head ROIs, then the usual augmentation."""
    x, y = cut_rois(images, masks, heads, idx, cfg, g, device)
    x, y = augment_batch(x, y, g, aug, out_size=cfg.crop)
    return normalize_images(x, DEFAULT_NORMALIZATION), y


def roi_validation_set(images, masks, heads, idx, cfg: TrainConfig, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed (seeded, un-augmented) validation ROIs as uint8 (N, size, size) images and targets."""
    xs, ys = [], []
    g = _generator(cfg.seed, 3)
    for i in range(0, len(idx), 16):
        x, y = cut_rois(images, masks, heads, idx[i:i + 16], cfg, g, device)
        xs.append((x[:, 0] * 255).round().clamp(0, 255).to(torch.uint8))
        ys.append((y[:, 0] * 255).round().clamp(0, 255).to(torch.uint8))
    if not xs:
        return torch.zeros(0, cfg.size, cfg.size, dtype=torch.uint8), torch.zeros(0, cfg.size, cfg.size, dtype=torch.uint8)
    return torch.cat(xs), torch.cat(ys)


@torch.no_grad()
def evaluate(model, images, masks, idx, cfg: TrainConfig, device, batch: int = 16) -> dict:
    """Validation on full (un-augmented) images: mean loss and Dice of the map thresholded at 0.5."""
    if len(idx) == 0:
        return {}
    model.eval()
    loss_sum, inter, total = 0.0, 0.0, 0.0
    for i in range(0, len(idx), batch):
        j = torch.as_tensor(idx[i:i + batch], dtype=torch.long, device=images.device)
        x = normalize_images(images[j].to(device, torch.float32)[:, None] / 255.0, DEFAULT_NORMALIZATION)
        y = masks[j].to(device, torch.float32)[:, None] / 255.0
        logits = model(x)
        loss_sum += float(outline_loss(logits, y, cfg.pos_weight, cfg.dice_weight)) * len(j)
        pred, tgt = logits > 0, y > 0.5
        inter += float((pred & tgt).sum())
        total += float(pred.sum() + tgt.sum())
    model.train()
    return {"val_loss": loss_sum / len(idx), "val_dice": 2 * inter / total if total else 1.0}


@torch.no_grad()
def evaluate_polarity(model, images, labels, idx, device, batch: int = 32) -> dict:
    """Validation of the polarity classifier on the images as rendered and inverted (labels flipped): mean BCE
    and accuracy over both."""
    if len(idx) == 0:
        return {}
    model.eval()
    loss_sum, right, n = 0.0, 0, 0
    for i in range(0, len(idx), batch):
        j = torch.as_tensor(idx[i:i + batch], dtype=torch.long)
        x = images[j.to(images.device)].to(device, torch.float32)[:, None] / 255.0
        y = labels[j].to(device)
        lo, hi = x.amin(dim=(1, 2, 3), keepdim=True), x.amax(dim=(1, 2, 3), keepdim=True)
        for xx, yy in ((x, y), (lo + hi - x, 1.0 - y)):
            logits = model(normalize_images(xx, DEFAULT_NORMALIZATION))
            loss_sum += float(F.binary_cross_entropy_with_logits(logits, yy, reduction="sum"))
            right += int(((logits > 0).float() == yy).sum())
            n += len(j)
    model.train()
    return {"val_loss": loss_sum / n, "val_accuracy": right / n}


# ----------------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: Path, model, optimizer, state: dict) -> None:
    """Model + Adam state + progress in one safetensors file (atomic: a kill leaves the old or the new)."""
    from safetensors.torch import save

    from DeepMorphSimulatorLib.files import atomic_write_bytes

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for pid, st in opt["state"].items():
        for k, v in st.items():
            tensors[f"optim.{pid}.{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().cpu().contiguous()
    groups = [{k: v for k, v in g.items()} for g in opt["param_groups"]]
    meta = {"format": CHECKPOINT_FORMAT, "state": json.dumps(state), "param_groups": json.dumps(groups)}
    atomic_write_bytes(path, save(tensors, metadata=meta))


def _read_checkpoint(path: Path, tensors: bool = True) -> tuple[dict, dict]:
    """(safetensors metadata, tensors on the CPU; {} unless ``tensors``) of a ``save_checkpoint`` file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            loaded = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"Training checkpoint {path} is unreadable ({exc}); delete it or pass --restart.") from None
    if meta.get("format") != CHECKPOINT_FORMAT or "state" not in meta:
        raise ValueError(f"{path} is not a DeepMorph training checkpoint; delete it or pass --restart.")
    return meta, loaded


def checkpoint_state(path: Path) -> dict:
    """The progress state of a checkpoint (fingerprint, epoch, step, history) without loading its tensors, so that
    a checkpoint of another run is refused before its weights meet this run's network."""
    return json.loads(_read_checkpoint(path, tensors=False)[0]["state"])


def load_checkpoint(path: Path, model, optimizer) -> dict:
    """Restore model and optimizer from ``save_checkpoint``'s file; returns the progress state."""
    meta, tensors = _read_checkpoint(path)
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    except RuntimeError:
        raise ValueError(f"{path} holds another network than --base-channels/--depth/--task build; pass --restart "
                         "to discard it or use another --work-dir.") from None
    opt_state: dict = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, name = k.split(".", 2)
            opt_state.setdefault(int(pid), {})[name] = v
    groups = json.loads(meta["param_groups"])
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
    return json.loads(meta["state"])


def write_metrics(work_dir: Path, history: list) -> None:
    from DeepMorphSimulatorLib.files import atomic_write_text

    atomic_write_text(work_dir / METRICS_NAME, "".join(json.dumps(h, sort_keys=True) + "\n" for h in history))


# ----------------------------------------------------------------------------------------------- training
def learning_rate(cfg: TrainConfig, epoch: int) -> float:
    """Step decay: ``lr`` until epoch floor(lr_decay_at * epochs), then ``lr * 0.1``."""
    milestone = int(math.floor(cfg.lr_decay_at * cfg.epochs))
    return cfg.lr * (0.1 if epoch >= milestone and cfg.lr_decay_at < 1 else 1.0)


def build_network(cfg: TrainConfig) -> torch.nn.Module:
    """FusionNet of ``base_channels`` and ``depth``; for the polarity task a PolarityNet (``depth`` = its levels)."""
    from DeepMorphLib.polarity_net import PolarityNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        if cfg.task == "polarity":
            return PolarityNet(base_channels=cfg.base_channels, levels=cfg.depth)
        return FusionNet(base_channels=cfg.base_channels, depth=cfg.depth)


def resumable_state(saved: dict, cfg: TrainConfig, fingerprint: dict, ckpt_path: Path, log=print) -> dict:
    """The checkpoint's progress ``saved`` if this run (``cfg``, ``fingerprint``) may continue it, else ValueError.

    Only ``--epochs`` may differ, and only while every epoch trained so far had the same learning rate under both
    schedules (the step decay comes at 75 % of the epochs): then continuing gives exactly the weights of an
    uninterrupted run with the new ``--epochs``, as the sample order and augmentation depend on (seed, epoch, step).
    """
    old = saved.get("fingerprint", {})
    diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
    if diff and diff != ["epochs"]:
        raise ValueError(f"{ckpt_path} belongs to a different training run (differs in: {', '.join(diff)}); "
                         f"pass --restart to discard it or use another --work-dir.")
    if diff:
        before = TrainConfig(**{**asdict(cfg), "epochs": int(old["epochs"])})
        trained = saved["epoch"] + (1 if saved["step"] else 0)  # epochs begun so far
        changed = [e + 1 for e in range(trained) if learning_rate(before, e) != learning_rate(cfg, e)]
        if saved["epoch"] > cfg.epochs or changed:
            why = (f"{saved['epoch']} epochs are already done" if saved["epoch"] > cfg.epochs else
                   f"epoch {changed[0]} was trained at LR {learning_rate(before, changed[0] - 1):g}, the "
                   f"{cfg.epochs}-epoch schedule gives it {learning_rate(cfg, changed[0] - 1):g}")
            raise ValueError(f"{ckpt_path} is a {old['epochs']}-epoch run that cannot become a {cfg.epochs}-epoch run "
                             f"({why}): finish or export it with --epochs {old['epochs']}, then train on with "
                             f"--init-from MODEL in another --work-dir, or pass --restart to start over.")
        log(f"{ckpt_path}: --epochs {old['epochs']} -> {cfg.epochs} (the epochs trained so far keep their "
            f"learning rate)")
        saved = {**saved, "fingerprint": fingerprint}
    return saved


def _init_weights(model, cfg: TrainConfig) -> None:
    """Copy the weights of a saved model (same task and architecture) into ``model`` (fine-tuning start)."""
    from DeepMorphLib.model_io import load_model

    from DeepMorphLib.fusionnet import architecture_of

    source, _ = load_model(cfg.init_from, task=cfg.task)
    if architecture_of(source) != architecture_of(model):
        raise ValueError(f"--init-from {cfg.init_from} has architecture {architecture_of(source)}; this run builds "
                         f"{architecture_of(model)} (match --base-channels/--depth).")
    model.load_state_dict(source.state_dict(), strict=True)


def train(cfg: TrainConfig, restart: bool = False, progress: bool = True, stop_after_steps: int = 0,
          log=print) -> dict:
    """Run (or resume) training; returns {"status": "finished"|"stopped", "model": path|None, "history": [...]}.

    ``stop_after_steps`` > 0 stops (with a checkpoint) after that many optimisation steps of this call
    (tests use it to simulate an interruption).
    """
    cfg.validate()
    work = cfg.resolved_work_dir()
    ckpt_path = work / CHECKPOINT_NAME
    with torch_threads(cfg.threads or None), _StopRequests() as stop:
        return _train(cfg, work, ckpt_path, progress, stop_after_steps, log, stop, restart)


class _StopRequests:
    """Ctrl-C (SIGINT), and SIGTERM where a Python handler is installed (``cli``), while ``armed``: recorded in
    ``signal`` so that training finishes its step and writes a checkpoint (a KeyboardInterrupt mid-step would lose
    the work since the last checkpoint, up to ``checkpoint_minutes``). Before arming (data loading), at a second
    signal, or outside the main thread: the handlers as they were."""

    def __init__(self):
        self.armed, self.signal, self._previous = False, None, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                if callable(signal.getsignal(sig)):
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.armed and self.signal is None:
            self.signal = signal.Signals(signum).name
            return
        self._previous[signum](signum, frame)


def diverged(cfg: TrainConfig, what: str, ckpt_path: Path) -> str:
    """The message of a run whose loss or weights became NaN/inf."""
    return (f"Training diverged: {what}; no model was saved. Lower --lr (now {cfg.lr:g}) and re-run with --restart "
            f"(discards {ckpt_path}).")


def _train(cfg, work, ckpt_path, progress, stop_after_steps, log, stop, restart) -> dict:
    from tqdm import tqdm

    from DeepMorphLib.model_io import save_model
    from DeepMorphSimulatorLib.files import lock_folder

    device = resolve_device(cfg.device)
    t_start = time.monotonic()
    source_size = cfg.roi_source if cfg.roi else cfg.size
    if cfg.task == "polarity":
        images, masks, infos = load_polarity_dataset(cfg.data, cfg.size, cfg.max_samples, progress)  # masks: labels
    else:
        images, masks, infos = load_dataset(cfg.data, cfg.task, source_size, cfg.max_samples, progress, cfg.target)
    heads = None
    if cfg.roi:  # refinement network: only samples with the head in view
        heads = load_head_circles(cfg.data, source_size, cfg.max_samples)
        keep = torch.isfinite(heads).all(dim=1)
        if not bool(keep.any()):
            raise ValueError("--roi head needs samples with the femoral head in view; none of the data has one.")
        images, masks, heads = images[keep], masks[keep], heads[keep]
    if device.type == "cuda":  # keep the uint8 cache on the GPU; cuDNN autotuning (not bit-reproducible)
        images = images.to(device)
        masks = masks if cfg.task == "polarity" else masks.to(device)
        torch.backends.cudnn.benchmark = True
    train_idx, val_idx = split_indices(len(images), cfg.val_fraction, cfg.seed)
    if cfg.val_fraction > 0 and len(val_idx) == 0:
        raise ValueError(f"{len(images)} sample(s) are too few for a validation split of --val-fraction "
                         f"{cfg.val_fraction:g} (it holds out none); give more data, a larger --val-fraction, or "
                         f"--val-fraction 0 to train without validation.")
    work.mkdir(parents=True, exist_ok=True)
    lock = lock_folder(work, "deepmorph train")  # noqa: F841  (held until this run ends: one run per work dir)
    for stale in work.glob(f".{CHECKPOINT_NAME}.*.tmp"):  # a checkpoint being written when a run was killed
        stale.unlink()
    if restart and ckpt_path.exists():
        ckpt_path.unlink()
    loss_fn = (F.binary_cross_entropy_with_logits if cfg.task == "polarity" else
               partial(outline_loss, pos_weight=cfg.pos_weight, dice_weight=cfg.dice_weight))
    if cfg.task == "polarity":
        def validate(model):
            return evaluate_polarity(model, images, masks, val_idx, device)

        def batch_fn(idx, g):
            return make_polarity_batch(images, masks, idx, cfg, aug, g, device)
    elif cfg.roi:
        val_images, val_masks = roi_validation_set(images, masks, heads, val_idx, cfg, device)

        def validate(model):
            return evaluate(model, val_images, val_masks, np.arange(len(val_idx)), cfg, device)

        def batch_fn(idx, g):
            return make_roi_batch(images, masks, heads, idx, cfg, aug, g, device)
    else:
        def validate(model):
            return evaluate(model, images, masks, val_idx, cfg, device)

        def batch_fn(idx, g):
            return make_batch(images, masks, idx, cfg, aug, g, device)
    steps_per_epoch = max(1, len(train_idx) // cfg.batch)
    aug = AugmentConfig.from_dict(cfg.augment)
    model = build_network(cfg).to(device)
    if cfg.init_from:
        _init_weights(model, cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    fingerprint = {**cfg.fingerprint(), "data_content": [[i.get("n_used"), i.get("manifest_sha256")] for i in infos]}
    state = {"fingerprint": fingerprint, "epoch": 0, "step": 0, "loss_sum": 0.0, "loss_n": 0,
             "history": [], "train_seconds": 0.0}
    used = {"n_train": len(train_idx), "n_val": len(val_idx), "data": infos}  # for export_checkpoint's sidecar
    if ckpt_path.exists():
        state = resumable_state(checkpoint_state(ckpt_path), cfg, fingerprint, ckpt_path, log)
        load_checkpoint(ckpt_path, model, optimizer)
        log(f"resuming from {ckpt_path}: epoch {state['epoch'] + 1}/{cfg.epochs}, step {state['step']}/{steps_per_epoch}")
    log(f"{cfg.task}{' ROI' if cfg.roi else ''}: {len(train_idx)} training / {len(val_idx)} validation images at {cfg.size} px "
        f"(crops {cfg.crop}), {type(model).__name__} base {cfg.base_channels} depth {cfg.depth} "
        f"({count_parameters(model) / 1e6:.2f} M parameters) on {device}")
    model.train()
    last_ckpt = time.monotonic()
    steps_done = 0
    session_start = time.monotonic()
    train_seconds0 = state["train_seconds"]

    def checkpoint():
        state.update(used, train_seconds=train_seconds0 + time.monotonic() - session_start)
        save_checkpoint(ckpt_path, model, optimizer, state)

    def stopped(where: str) -> dict:
        log(f"{'stopped' if not stop.signal else 'interrupted (' + stop.signal + ')'} {where}; checkpoint {ckpt_path} "
            f"(re-run the same command to continue)")
        return {"status": "stopped", "model": None, "history": state["history"], "work_dir": str(work),
                "signal": stop.signal}

    stop.armed = True  # from here on Ctrl-C / SIGTERM finish the step and write a checkpoint
    while state["epoch"] < cfg.epochs:
        epoch = state["epoch"]
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, epoch)
        perm = train_idx[torch.randperm(len(train_idx), generator=_generator(cfg.seed, 1, epoch)).numpy()]
        t_epoch = time.monotonic()
        first_step = state["step"]
        bar = tqdm(range(first_step, steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step",
                   disable=not progress, leave=False, initial=first_step, total=steps_per_epoch)
        for step in bar:
            idx = perm[step * cfg.batch:(step + 1) * cfg.batch]
            x, y = batch_fn(idx, _generator(cfg.seed, 2, epoch, step))
            loss = loss_fn(model(x), y)
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise ValueError(diverged(cfg, f"the training loss is {loss_value} at epoch {epoch + 1}, "
                                               f"step {step + 1}", ckpt_path))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            state["loss_sum"] += loss_value * len(idx)
            state["loss_n"] += len(idx)
            state["step"] = step + 1
            steps_done += 1
            bar.set_postfix(loss=f"{state['loss_sum'] / state['loss_n']:.4f}")
            now = time.monotonic()
            out_of_time = cfg.max_minutes and now - t_start > 60 * cfg.max_minutes
            if (stop_after_steps and steps_done >= stop_after_steps) or out_of_time or stop.signal:
                checkpoint()
                bar.close()
                return stopped(f"at epoch {epoch + 1}, step {step + 1}/{steps_per_epoch}")
            if now - last_ckpt > 60 * cfg.checkpoint_minutes:
                checkpoint()
                last_ckpt = now
        bar.close()
        if not all(bool(torch.isfinite(v).all()) for v in model.state_dict().values() if v.is_floating_point()):
            raise ValueError(diverged(cfg, f"the weights are not finite after epoch {epoch + 1}", ckpt_path))
        seconds = time.monotonic() - t_epoch
        n_imgs = (steps_per_epoch - first_step) * cfg.batch
        record = {"epoch": epoch + 1, "lr": learning_rate(cfg, epoch),
                  "train_loss": state["loss_sum"] / max(state["loss_n"], 1),
                  **validate(model),
                  "epoch_seconds": round(seconds, 2), "train_img_per_s": round(n_imgs / max(seconds, 1e-9), 3)}
        state["history"].append(record)
        state.update(epoch=epoch + 1, step=0, loss_sum=0.0, loss_n=0)
        checkpoint()
        last_ckpt = time.monotonic()
        write_metrics(work, state["history"])
        log("epoch {epoch}/{n}: train_loss {train_loss:.4f}".format(n=cfg.epochs, **record)
            + "".join(f" {k} {record[k]:.4f}" for k in ("val_loss", "val_dice", "val_accuracy") if k in record)
            + f" ({seconds:.0f} s, {record['train_img_per_s']:.1f} img/s)")
        if stop.signal and state["epoch"] < cfg.epochs:
            return stopped(f"after epoch {epoch + 1}")
    metadata = model_metadata(cfg, infos, len(train_idx), len(val_idx), state, device)
    weights, sidecar = save_model(model.cpu(), cfg.out, metadata)
    log(f"saved {weights} and {sidecar}")
    return {"status": "finished", "model": str(weights), "history": state["history"], "work_dir": str(work)}


def export_checkpoint(cfg: TrainConfig, log=print) -> str:
    """Save the model of a stopped run's checkpoint (``cfg.out``) without training further.

    For a run cut short by a time budget: the sidecar's ``training.stopped_early`` says how far it got
    (completed epochs, step) so nobody mistakes it for the full schedule. Returns the weights path.
    """
    from DeepMorphLib.model_io import save_model

    cfg.validate()
    ckpt_path = cfg.resolved_work_dir() / CHECKPOINT_NAME
    if not ckpt_path.exists():
        raise FileNotFoundError(f"No checkpoint at {ckpt_path}; train first (same --work-dir).")
    model = build_network(cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    state = load_checkpoint(ckpt_path, model, optimizer)
    saved = {k: v for k, v in state.get("fingerprint", {}).items() if k != "data_content"}
    if saved != cfg.fingerprint():
        diff = sorted(k for k in set(saved) | set(cfg.fingerprint()) if saved.get(k) != cfg.fingerprint().get(k))
        raise ValueError(f"{ckpt_path} was written with other settings (differs in: {', '.join(diff)}); "
                         f"give the same options as the training run.")
    if "n_train" in state:  # what the run really used (checkpoints since n_train/n_val/data were recorded)
        infos, n_train, n_val = state["data"], state["n_train"], state["n_val"]
    else:  # older checkpoints: estimated from the manifests (their planned n, not the samples present)
        infos = [dataset_info(d) for d in cfg.data]
        n = sum(int(i.get("n") or 0) for i in infos)
        n = min(n, cfg.max_samples) if cfg.max_samples else n
        n_val = int(round(n * cfg.val_fraction))
        n_train = n - n_val
    metadata = model_metadata(cfg, infos, n_train, n_val, state, torch.device("cpu"))
    metadata["training"]["stopped_early"] = {"epochs_completed": state["epoch"], "epochs_planned": cfg.epochs,
                                             "step_in_epoch": state["step"]}
    weights, sidecar = save_model(model.cpu(), cfg.out, metadata)
    log(f"exported the checkpoint (epoch {state['epoch']}/{cfg.epochs}, step {state['step']}) to {weights}")
    return str(weights)


def model_metadata(cfg: TrainConfig, infos, n_train, n_val, state, device) -> dict:
    """The sidecar content written next to the final weights."""
    last = state["history"][-1] if state["history"] else {}
    if cfg.task == "polarity":
        role = {"description": "PolarityNet image classifier (logit > 0: bone shown bright, radiograph-like; < 0: bone "
                               "shown dark, as in fluoroscopy)",
                "output": "one logit of bone-bright", "polarity": "any"}
    else:
        role = {"description": (f"FusionNet {cfg.target} segmenter for the {cfg.task}"
                                + (f" on ROIs of {cfg.roi_scale:g} head radii around a first estimate" if cfg.roi else "")
                                + " (sigmoid of the logits = confidence"
                                + ((" of being inside the projected head disk)" if cfg.task == "head" else
                                    " of being inside the projected proximal femur)") if cfg.target == "region" else ")")),
                "target": cfg.target, "polarity": "bone-dark", "output": "logits (1 channel); confidence = sigmoid"}
    return {
        "task": cfg.task,
        **role,
        **({"roi": {"kind": cfg.roi, "scale": cfg.roi_scale}} if cfg.roi else {}),
        "input_size": cfg.size,
        "normalization": dict(DEFAULT_NORMALIZATION),
        "training": {
            "data": infos, "n_train": n_train, "n_val": n_val, "command": cfg.command,
            "config": {k: v for k, v in asdict(cfg).items() if k not in ("command", "max_minutes", "work_dir")},
            "device": str(device), "train_seconds": round(state["train_seconds"], 1),
            "python": sys.version.split()[0], "host_cpus": os.cpu_count(),
        },
        "metrics": {"final": {k: last[k] for k in ("train_loss", "val_loss", "val_dice", "val_accuracy") if k in last},
                    "history": state["history"]},
    }
