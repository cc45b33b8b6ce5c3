"""Inference copies of a model with each batch norm folded into the convolution before it: in eval mode a batch norm
is a fixed per-channel affine map, so the convolution can apply it (Ioffe & Szegedy 2015, section 3.2), and the
forward pass skips one read and write of every such feature map. For copies whose layer outputs nobody reads, each
ReLU before a max pooling can also move after it: max and ReLU commute, and the ReLU then reads a map 4x smaller."""

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def foldable(conv: nn.Module, norm: nn.Module) -> bool:
    """A plain Conv2d followed by a BatchNorm2d with running statistics: the pair torch's fuse_conv_bn_eval folds."""
    plain_conv = type(conv) is nn.Conv2d  # subclasses (FastNet's PatchWhitening) may compute something else
    return plain_conv and isinstance(norm, nn.BatchNorm2d) and norm.track_running_stats and norm.affine


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` where each BatchNorm2d that directly follows a plain Conv2d in an nn.Sequential
    is folded into it (torch.nn.utils.fusion.fuse_conv_bn_eval) and replaced by nn.Identity under its own name, so
    hooks on it still see its output. The same outputs up to float rounding; `model` is left as it is. For inference
    only: the copy's convolutions are the pair's product and its batch norms are gone."""
    folded = copy.deepcopy(model).eval()
    for module in list(folded.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:]):
            conv, norm = module._modules[first], module._modules[second]
            if not foldable(conv, norm):
                continue
            fused = fuse_conv_bn_eval(conv, norm)
            if conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous():
                fused = fused.to(memory_format=torch.channels_last)
            module._modules[first], module._modules[second] = fused, nn.Identity()
    return folded


def pool_before_relu(model: nn.Module) -> nn.Module:
    """`model` (changed in place) with each ReLU that directly precedes a MaxPool2d in an nn.Sequential moved after
    it: max(relu(x)) == relu(max(x)) exactly, so the logits are bit-identical and the ReLU runs on the pooled map (the
    report CNN's validation: 13% less time on 2 CPU cores). Hooks on either layer would see other tensors than in
    the model: only for copies nobody hooks (the LightningModule's validation and test copy)."""
    for module in list(model.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for i in range(len(names) - 1):
            first, second = module._modules[names[i]], module._modules[names[i + 1]]
            if type(first) is nn.ReLU and isinstance(second, nn.MaxPool2d):
                names[i], names[i + 1] = names[i + 1], names[i]
        module._modules = type(module._modules)((name, module._modules[name]) for name in names)
    return model
