"""Helpers shared by the benchmarks: what was measured (commit, machine) and where its time went.

- :func:`git_commit` and :func:`uncommitted_files`: the code a figure belongs to. A figure taken
  with uncommitted changes says so.
- :func:`machine_facts`: CPU model, cores, threads, native bf16 and the load, for every result.
- :func:`record_conv_calls`: every 2-D convolution a call runs, with its weights and the input
  it received (after any explicit padding), as :class:`benchmarks.bench_model.ConvLayerCall`
  entries that :func:`benchmarks.bench_model.conv_ceiling_gflops` times one by one. It sees the
  convolutions themselves (``torch.conv2d``), whatever module wraps them.
- :class:`StageClock`: wall time spent inside chosen functions or methods during a run, to split
  a library call into its stages without changing the library.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

ROOT = Path(__file__).resolve().parent.parent


def git_commit() -> str:
    """Short hash of the checked-out commit, or 'unknown' outside a git checkout."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True, cwd=ROOT
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def uncommitted_files(*folders: str) -> list[str]:
    """Files under ``folders`` (default: src and benchmarks) that differ from the commit or are untracked."""
    try:
        lines = subprocess.run(
            ["git", "status", "--porcelain", "--", *(folders or ("src", "benchmarks"))],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return []
    return [line[3:] for line in lines if line.strip()]


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def machine_facts() -> dict[str, Any]:
    """CPU model, cores, torch threads, bf16 support and the current load, as plain values."""
    from benchmarks.bench_model import cpu_model_name
    from cxr_anomaly.inference import native_bf16

    flags = cpu_flags()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    return {
        "cpu_model": cpu_model_name(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "native_bf16": native_bf16("cpu"),
        "bf16_flags": sorted(flag for flag in flags if "bf16" in flag or flag.startswith("amx")),
        "avx2": "avx2" in flags,
        "avx512f": "avx512f" in flags,
        "load_average": list(os.getloadavg()),
        "torch": torch.__version__,
    }


class _ConvRecorder(TorchFunctionMode):
    """Records the arguments of every ``torch.conv2d`` call made while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[tuple[int, ...], torch.Tensor, torch.Tensor | None, Any, Any, Any, int]] = []

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is torch.conv2d:
            names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
            values = dict(zip(names, args)) | kwargs
            self.calls.append(
                (
                    tuple(values["input"].shape),
                    values["weight"].detach(),
                    values.get("bias"),
                    values.get("stride", 1),
                    values.get("padding", 0),
                    values.get("dilation", 1),
                    int(values.get("groups", 1)),
                )
            )
        return func(*args, **kwargs)


def conv_flops(input_shape: tuple[int, ...], layer: nn.Conv2d) -> float:
    """FLOPs (2 x multiply-adds, as torch's FlopCounterMode counts them) of ``layer`` on ``input_shape``."""
    batch, _, height, width = input_shape
    out_h = (height + 2 * layer.padding[0] - layer.dilation[0] * (layer.kernel_size[0] - 1) - 1) // layer.stride[0] + 1
    out_w = (width + 2 * layer.padding[1] - layer.dilation[1] * (layer.kernel_size[1] - 1) - 1) // layer.stride[1] + 1
    per_output = layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
    return 2.0 * batch * layer.out_channels * out_h * out_w * per_output


def record_conv_calls(run: Callable[[], object]) -> list[Any]:
    """Every convolution ``run()`` makes, as ConvLayerCall entries (a plain Conv2d, its input shape, FLOPs).

    The layers are copies with the same weights, stride, padding, dilation and groups; the
    recorded shape is the input the convolution itself received (padding done by a wrapping
    module is already in it), so timing a layer alone times that convolution alone.
    """
    from benchmarks.bench_model import ConvLayerCall

    recorder = _ConvRecorder()
    with recorder, torch.inference_mode():
        run()
    calls = []
    for shape, weight, bias, stride, padding, dilation, groups in recorder.calls:
        if isinstance(padding, str):  # 'same' / 'valid' spelt out by the module
            padding = 0 if padding == "valid" else tuple(k // 2 for k in weight.shape[2:])
        layer = nn.Conv2d(
            weight.shape[1] * groups,
            weight.shape[0],
            tuple(weight.shape[2:]),
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias is not None,
        )
        with torch.no_grad():
            layer.weight.copy_(weight.float())
            if bias is not None:
                layer.bias.copy_(bias.detach().float())
        layer.requires_grad_(False)
        calls.append(ConvLayerCall(layer, shape, conv_flops(shape, layer)))
    return calls


class StageClock:
    """Wall seconds spent inside chosen callables while :meth:`watch` is active.

    ``watch({"backbone": (module, "forward")})`` replaces each attribute by a timed wrapper and
    restores it afterwards; an owner may be a class (every instance is timed, also those created
    inside the call) or an instance. Owners that lack the attribute are left out and listed in
    :attr:`missing`, so a renamed library function gives a missing stage, not a crash.

    Stages are timed exclusively: the time of a watched call made inside another watched call
    is charged to the inner stage only (preprocessing inside fine-tuning counts as preprocessing),
    so the stages never add up to more than the wall time.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.missing: list[str] = []
        self._nested_seconds: list[float] = []  # per active watched call: time spent in watched calls inside it

    @contextlib.contextmanager
    def watch(self, targets: dict[str, tuple[object, str]]) -> Iterator[StageClock]:
        """Time every call of the given (owner, attribute) pairs until the block ends."""
        restore: list[tuple[object, str, bool, object]] = []
        try:
            for stage, (owner, attribute) in targets.items():
                if not hasattr(owner, attribute):
                    self.missing.append(stage)
                    continue
                own = attribute in vars(owner)
                saved = vars(owner)[attribute] if own else None
                setattr(owner, attribute, self._timed(stage, getattr(owner, attribute)))
                restore.append((owner, attribute, own, saved))
            yield self
        finally:
            for owner, attribute, own, saved in reversed(restore):
                if own:
                    setattr(owner, attribute, saved)
                else:
                    delattr(owner, attribute)

    def _timed(self, stage: str, function: Callable[..., Any]) -> Callable[..., Any]:
        self.seconds.setdefault(stage, 0.0)
        self.calls.setdefault(stage, 0)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            self._nested_seconds.append(0.0)
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                self.seconds[stage] += elapsed - self._nested_seconds.pop()
                if self._nested_seconds:
                    self._nested_seconds[-1] += elapsed
                self.calls[stage] += 1

        return timed
