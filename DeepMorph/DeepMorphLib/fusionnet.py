"""FusionNet (Quan, Hildebrand & Jain 2016): a U-Net-like encoder-decoder with residual blocks and
summation skip connections, used as the first stage of deep morphing.

Layout for ``depth`` = D and ``base_channels`` = C (channels double per level, capped at ``max_channels``)::

    level 0..D-1 (encoder): FusionBlock(c_in -> C*2^i) -> skip_i, then 2x2 max-pool
    bridge:                 FusionBlock(C*2^(D-1) -> C*2^D)
    level D-1..0 (decoder): 2x2 transposed conv (+BN+ReLU) to C*2^i, **sum** with skip_i, FusionBlock
    head:                   1x1 conv -> 1 channel of logits

A FusionBlock is conv3x3-BN-ReLU, a residual block (x + 3 x conv3x3-BN-ReLU), conv3x3-BN-ReLU. The net is
fully convolutional; inputs whose side is not a multiple of 2^depth are padded (replicate) and the output
is cropped back, so the output always has the input's (H, W). ``forward`` returns logits; the sigmoid of
the logits (``predict_proba``) is the per-pixel confidence map of the paper (eq. 2 thresholds it at 0.5).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ARCHITECTURE_NAME = "FusionNet"


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 convolution (no bias, BN follows) + batch norm + ReLU; keeps (H, W)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class ResidualBlock(nn.Module):
    """x + f(x), f = three conv3x3-BN-ReLU layers with a constant channel count."""

    def __init__(self, channels: int, n_convs: int = 3):
        super().__init__()
        self.body = nn.Sequential(*[conv_bn_relu(channels, channels) for _ in range(n_convs)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class FusionBlock(nn.Module):
    """conv-BN-ReLU (c_in -> c_out), residual block, conv-BN-ReLU: FusionNet's building block."""

    def __init__(self, c_in: int, c_out: int, n_convs: int = 3):
        super().__init__()
        self.conv_in = conv_bn_relu(c_in, c_out)
        self.residual = ResidualBlock(c_out, n_convs)
        self.conv_out = conv_bn_relu(c_out, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.residual(self.conv_in(x)))


class UpSum(nn.Module):
    """2x upsampling by a 2x2 stride-2 transposed convolution (+BN+ReLU), then summation with the skip."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.up = nn.Sequential(
            nn.ConvTranspose2d(c_in, c_out, kernel_size=2, stride=2, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.up(x) + skip


class FusionNet(nn.Module):
    """FusionNet segmentation network; ``forward(x (B, in_channels, H, W)) -> logits (B, out_channels, H, W)``.

    base_channels: channels of the full-resolution level (doubling per level).
    depth: number of 2x down-samplings (the bridge works at 1 / 2^depth of the input size).
    n_convs: conv layers inside each residual block (3 in the paper).
    max_channels: optional cap of the channel count per level (None = no cap).
    """

    def __init__(self, base_channels: int = 8, depth: int = 4, in_channels: int = 1, out_channels: int = 1,
                 n_convs: int = 3, max_channels: int | None = None):
        super().__init__()
        for name, value in (("base_channels", base_channels), ("depth", depth), ("in_channels", in_channels),
                            ("out_channels", out_channels), ("n_convs", n_convs)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"FusionNet: {name} must be a positive integer, got {value!r}.")
        if max_channels is not None and (not isinstance(max_channels, int) or max_channels < base_channels):
            raise ValueError(f"FusionNet: max_channels must be None or an integer >= base_channels, got {max_channels!r}.")
        self.config = dict(base_channels=base_channels, depth=depth, in_channels=in_channels,
                           out_channels=out_channels, n_convs=n_convs, max_channels=max_channels)
        widths = [min(base_channels * 2 ** i, max_channels or 1 << 30) for i in range(depth + 1)]
        self.encoders = nn.ModuleList()
        c_prev = in_channels
        for c in widths[:-1]:
            self.encoders.append(FusionBlock(c_prev, c, n_convs))
            c_prev = c
        self.bridge = FusionBlock(c_prev, widths[-1], n_convs)
        self.ups = nn.ModuleList([UpSum(widths[i + 1], widths[i]) for i in reversed(range(depth))])
        self.decoders = nn.ModuleList([FusionBlock(widths[i], widths[i], n_convs) for i in reversed(range(depth))])
        self.head = nn.Conv2d(widths[0], out_channels, kernel_size=1)

    @property
    def multiple(self) -> int:
        """Input sides that are multiples of this need no internal padding."""
        return 2 ** self.config["depth"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.config["in_channels"]:
            raise ValueError(f"FusionNet expects (B, {self.config['in_channels']}, H, W) input, got {tuple(x.shape)}.")
        h, w = x.shape[-2:]
        m = self.multiple
        pad_h, pad_w = (-h) % m, (-w) % m
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        skips = []
        for block in self.encoders:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bridge(x)
        for up, block, skip in zip(self.ups, self.decoders, reversed(skips)):
            x = block(up(x, skip))
        return self.head(x)[..., :h, :w]

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Confidence map in [0, 1] (sigmoid of the logits), no gradient."""
        return torch.sigmoid(self.forward(x))


def fuse_for_inference(model: FusionNet) -> FusionNet:
    """An eval-mode copy with every BatchNorm folded into its convolution (same outputs up to float rounding,
    about 25 % faster on CPU). For inference only: its state dict no longer matches the saved weights."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = copy.deepcopy(model).eval()
    for module in fused.modules():
        if isinstance(module, nn.Sequential) and len(module) >= 2 \
                and isinstance(module[0], (nn.Conv2d, nn.ConvTranspose2d)) and isinstance(module[1], nn.BatchNorm2d):
            module[0] = fuse_conv_bn_eval(module[0], module[1], transpose=isinstance(module[0], nn.ConvTranspose2d))
            module[1] = nn.Identity()
    return fused


def build_model(architecture: dict) -> nn.Module:
    """Build a network from a sidecar's ``{"name": "FusionNet" | "PolarityNet", "kwargs": {...}}`` (clear error
    otherwise)."""
    from DeepMorphLib import polarity_net

    name = architecture.get("name") if isinstance(architecture, dict) else architecture
    if name not in (ARCHITECTURE_NAME, polarity_net.ARCHITECTURE_NAME):
        raise ValueError(f"Unknown network architecture {name!r}; this version builds only {ARCHITECTURE_NAME!r} "
                         f"and {polarity_net.ARCHITECTURE_NAME!r}.")
    kwargs = architecture.get("kwargs", {})
    if name == polarity_net.ARCHITECTURE_NAME:
        return polarity_net.build(kwargs)
    allowed = {"base_channels", "depth", "in_channels", "out_channels", "n_convs", "max_channels"}
    unknown = set(kwargs) - allowed
    if unknown:
        raise ValueError(f"FusionNet architecture has unknown arguments {sorted(unknown)}; allowed: {sorted(allowed)}.")
    return FusionNet(**kwargs)


def architecture_of(model: nn.Module) -> dict:
    """The sidecar entry that rebuilds ``model`` (a FusionNet or PolarityNet) with :func:`build_model`."""
    from DeepMorphLib import polarity_net

    name = polarity_net.ARCHITECTURE_NAME if isinstance(model, polarity_net.PolarityNet) else ARCHITECTURE_NAME
    return {"name": name, "kwargs": dict(model.config)}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
