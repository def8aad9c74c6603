"""BatchNorm over the global batch of a multi-process run, on any device.

A run of several processes, each with its share of every global batch, must train the model
a single process trains on the whole batch. BatchNorm is where they part: each process
normalises by the statistics of its own share. PyTorch's ``SyncBatchNorm`` shares them, but
its kernels exist for GPUs only; :class:`GlobalBatchNorm` computes them with ordinary tensor
operations and two differentiable all-reduces (PyTorch's functional collectives: the sums,
then the squared deviations from the global mean), so it runs on CPU (gloo) as on GPU, and its
gradient is the single-process one. :class:`GlobalBatchNormSync` is the Lightning plugin that
swaps it in for the run and back before the weights are saved.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from lightning.pytorch.plugins.layer_sync import LayerSync
from torch import nn
from torch.distributed._functional_collectives import all_reduce
from torch.nn.modules.batchnorm import _BatchNorm

from medmm.losses.distributed import world


def several_processes() -> bool:
    """This process is one of a joined group of more than one."""
    return world()[1] > 1


class GlobalBatchNorm(_BatchNorm):
    """``nn.BatchNorm{1,2,3}d`` whose training-mode statistics are those of the batch of
    every process together (the same parameters, buffers and update of the running
    statistics); in evaluation, or in a single process, ``nn.BatchNorm``'s own forward."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (batch, channels, ...), got {input.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and several_processes()):
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # half-precision statistics in float32
        local = torch.cat([xf.sum(dims), xf.new_tensor([x.numel() // x.shape[1]])])
        total = all_reduce(local, "sum", dist.group.WORLD)
        count = total[-1]
        mean = total[:-1] / count
        centred = xf - mean.view(shape)
        var = all_reduce((centred * centred).sum(dims), "sum", dist.group.WORLD) / count  # biased, as BatchNorm normalises
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum)
                unbiased = var * count / (count - 1).clamp(min=1)
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.to(self.running_mean.dtype))
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased.to(self.running_var.dtype))
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def _swap(module: nn.Module, make) -> nn.Module:
    """``module`` with each BatchNorm layer replaced by ``make(layer)`` (which keeps the
    layer's parameter and buffer objects)."""
    swapped = make(module)
    for name, child in module.named_children():
        swapped.add_module(name, _swap(child, make))
    return swapped


def _rebuilt(layer: _BatchNorm, cls: type[_BatchNorm]) -> _BatchNorm:
    new = cls(layer.num_features, layer.eps, layer.momentum, layer.affine, layer.track_running_stats)
    if layer.affine:
        new.weight, new.bias = layer.weight, layer.bias
    new.running_mean, new.running_var = layer.running_mean, layer.running_var
    new.num_batches_tracked = layer.num_batches_tracked
    new.training = layer.training
    return new


class GlobalBatchNormSync(LayerSync):
    """Lightning plugin: every plain BatchNorm layer of the model becomes a
    :class:`GlobalBatchNorm` for training, and its own class again afterwards."""

    def apply(self, model: nn.Module) -> nn.Module:
        def make(m: nn.Module) -> nn.Module:
            if isinstance(m, _BatchNorm) and not isinstance(m, (GlobalBatchNorm, nn.SyncBatchNorm)):
                new = _rebuilt(m, GlobalBatchNorm)
                new._original_class = type(m)
                return new
            return m

        return _swap(model, make)

    def revert(self, model: nn.Module) -> nn.Module:
        def make(m: nn.Module) -> nn.Module:
            if isinstance(m, GlobalBatchNorm):
                return _rebuilt(m, m._original_class)
            return m

        return _swap(model, make)
