"""Fast inference settings: precision, memory layout and host-to-device copies.

The defaults are the settings that scored fastest where they were timed (see
docs/results.md#speed-on-a-2-core-cpu).

- **Precision.** ``"auto"`` is every caller's default; ``"fp32"`` is the reference, the same
  scores on every machine; ``"bf16"`` runs the networks under bf16 autocast. ``"auto"`` picks bf16
  only where the hardware computes it natively (oneDNN's AVX512-BF16/AMX check on CPU,
  ``torch.cuda.is_bf16_supported`` on CUDA) and fp32 elsewhere, because emulated bf16
  convolutions on an AVX2 CPU run many times *slower* than fp32.
  An explicit ``"bf16"`` is honoured everywhere (it gives the same scores within bf16 rounding),
  with a warning where it is emulated.
- **Layout.** channels_last (NHWC) lets oneDNN (CPU) and cuDNN (CUDA) pick their fastest
  convolution kernels; :func:`to_channels_last` converts a module's weights in place, which keeps
  their values.
- **Copies.** :func:`to_device` pins host memory and copies without blocking when the target is
  a CUDA device, so the copy overlaps the previous batch's compute.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import get_args

import torch
from torch import nn

from .config import Precision
from .errors import ConfigError

logger = logging.getLogger(__name__)

SCORE_PRECISIONS: tuple[str, ...] = get_args(Precision)  # training and scoring take the same names


def resolve_device(name: str) -> torch.device:
    """Map ``"auto"`` to CUDA when available, else CPU; check other names.

    Raises:
        ValueError: ``name`` is not a device torch knows, or names CUDA where torch sees none.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"device={name!r} is not a device torch knows: {error}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r}, but torch sees no CUDA device here; use 'auto' or 'cpu'")
    return device


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bf16 convolutions in hardware (not by emulation)."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        # oneDNN answers True only with AVX512-BF16 or AMX; AVX2 CPUs emulate bf16 slowly.
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # a build without oneDNN
            return False
    return False


def resolve_precision(requested: str, device: torch.device | str) -> str:
    """Map a requested score precision to the one used: ``"fp32"`` or ``"bf16"``.

    ``"auto"`` becomes bf16 only where :func:`native_bf16` holds. An explicit ``"bf16"`` is
    kept (the caller asked for it) but logged as slow where it is emulated.

    Raises:
        ConfigError: ``requested`` is not one of :data:`SCORE_PRECISIONS`.
    """
    if requested not in SCORE_PRECISIONS:
        raise ConfigError(f"precision={requested!r}; expected one of {SCORE_PRECISIONS}")
    native = native_bf16(device)
    if requested == "auto":
        return "bf16" if native else "fp32"
    if requested == "bf16" and not native:
        logger.warning(
            "bf16 requested on %s, which has no native bf16 support: it is emulated "
            "and slower than fp32 there (use precision 'auto' to fall back)",
            device,
        )
    return requested


def inference_autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager[object]:
    """bf16 autocast for ``precision == "bf16"``; for fp32 on CUDA, convolutions in full fp32;
    otherwise a context that changes nothing.

    Raises:
        ValueError: ``precision`` is not a resolved precision ("bf16" or "fp32"). An unresolved
            "auto" would silently mean fp32 here; pass it through :func:`resolve_precision` first.
    """
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision={precision!r}: expected 'bf16' or 'fp32' (resolve 'auto' with resolve_precision)")
    device = torch.device(device)
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if device.type == "cuda":
        return _cudnn_without_tf32()
    return contextlib.nullcontext()


def without_autocast(device: torch.device | str) -> contextlib.AbstractContextManager[object]:
    """A context in which autocast is off on ``device``'s type, inside an autocast region too.

    For the small products that turn features into scores: in bf16 they lose the resolution that
    ranks films (a feature model's distances to its bank of normals).
    """
    return torch.autocast(device_type=torch.device(device).type, enabled=False)


@contextlib.contextmanager
def _cudnn_without_tf32() -> Iterator[None]:
    # cuDNN's default TF32 convolutions move fp32 scores off the CPU's and ONNX's, which fp32 promises
    # (see docs/results.md#speed-on-a-gpu).
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved


def to_channels_last(module: nn.Module) -> nn.Module:
    """Convert the 4-D weights of ``module`` to channels_last in place; values are unchanged."""
    return module.to(memory_format=torch.channels_last)


def to_device(batch: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Copy a host tensor to ``device``; pinned and non-blocking when the target is CUDA."""
    device = torch.device(device)
    if device.type == "cuda":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device)
