"""A small CNN that tells the polarity of an X-ray (bone dark or bone bright), the second polarity cue.

``polarity.ridge_polarity_score`` reads the sign of bone's thin ridges; it is right on every real dev radiograph,
but implants and tools (strong edges with halos) leave it little to vote with: on simulated images with implants
about 1 in 30 came out wrong. Metal and air are what a network sees at once (metal is the most attenuating thing
in view, air the least), so this classifier, trained on simulated images of both polarities, carries that
evidence; ``polarity.detect_polarity`` adds its log-odds to the ridge score's.

``PolarityNet``: 5 levels of (conv 3x3 - BN - ReLU) x 2 + max-pool, then global mean and max pooling and one
linear layer -> one logit, > 0 = bone-bright. Input: the image letterboxed to ``input_size`` px (128) and
percentile-normalised as the segmentation networks' input (``inference.prepare_input``).

Training (``deepmorph train --task polarity``, ``training.py``): every image is shown as it was rendered or, with
probability 1/2, inverted within its own grey range with its label flipped, so both labels see both renderings
and only the image content can tell them apart; plus the geometric and appearance augmentation of ``augment.py``
without occlusions (a painted dark square would be a metal cue of one polarity only).
"""
from __future__ import annotations

import torch
from torch import nn

ARCHITECTURE_NAME = "PolarityNet"
POLARITY_LABELS = {"bone-dark": 0.0, "bone-bright": 1.0}


class PolarityNet(nn.Module):
    """(B, 1, S, S) normalised image -> (B,) logit of "bone-bright"; S a multiple of 2**levels."""

    def __init__(self, base_channels: int = 16, levels: int = 5, in_channels: int = 1):
        super().__init__()
        for name, value in (("base_channels", base_channels), ("levels", levels), ("in_channels", in_channels)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"PolarityNet: {name} must be a positive integer, got {value!r}.")
        self.config = dict(base_channels=base_channels, levels=levels, in_channels=in_channels)
        widths = [base_channels * 2 ** min(i, 3) for i in range(levels)]
        layers, c_prev = [], in_channels
        for c in widths:
            for c_in in (c_prev, c):
                layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            layers.append(nn.MaxPool2d(2))
            c_prev = c
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(2 * c_prev, 1)

    @property
    def multiple(self) -> int:
        return 2 ** self.config["levels"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.config["in_channels"]:
            raise ValueError(f"PolarityNet expects (B, {self.config['in_channels']}, H, W) input, got {tuple(x.shape)}.")
        if x.shape[2] % self.multiple or x.shape[3] % self.multiple:
            raise ValueError(f"PolarityNet input sides must be multiples of {self.multiple}, got {tuple(x.shape[2:])}.")
        h = self.features(x)
        return self.classifier(torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1))[:, 0]


def build(kwargs: dict) -> PolarityNet:
    allowed = {"base_channels", "levels", "in_channels"}
    unknown = set(kwargs) - allowed
    if unknown:
        raise ValueError(f"PolarityNet architecture has unknown arguments {sorted(unknown)}; allowed: {sorted(allowed)}.")
    return PolarityNet(**kwargs)


def invert_with_labels(x: torch.Tensor, labels: torch.Tensor, g: torch.Generator, p: float = 0.5):
    """Invert each image of (B, 1, H, W) within its own range (max + min - I) with probability ``p`` (drawn from
    ``g``) and flip its label (B,) in {0, 1} with it."""
    b = x.shape[0]
    flip = (torch.rand(b, generator=g) < p).to(x.device)
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    x = torch.where(flip.view(b, 1, 1, 1), lo + hi - x, x)
    return x, torch.where(flip, 1.0 - labels, labels)


class PolarityClassifier:
    """A loaded polarity model: ``logit(image)`` for one grey (H, W) image of any size and range (> 0: bone-bright)."""

    def __init__(self, model: PolarityNet, metadata: dict, device: str = "cpu", path: str | None = None):
        self.model, self.metadata, self.device, self.path = model, metadata, device, path

    @classmethod
    def load(cls, path, device: str = "cpu") -> "PolarityClassifier":
        from DeepMorphLib.model_io import load_model

        model, meta = load_model(path, task="polarity", device=device)
        return cls(model, meta, device, str(path))

    def logit(self, image) -> float:
        from DeepMorphLib.inference import prepare_input

        with torch.inference_mode():
            x, _ = prepare_input(image, self.metadata, "as-is", self.device)
            return float(self.model(x)[0])

    def describe(self) -> dict:
        return {"path": self.path, "task": "polarity", "input_size": self.metadata.get("input_size")}
