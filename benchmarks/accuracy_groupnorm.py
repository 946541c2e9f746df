"""Output error of torch.nn's and sharenorm's GroupNorm/InstanceNorm/LayerNorm (and
BatchNorm, which runs ATen's kernel in both) against a float64 reference on float32 inputs with a large mean relative to their std, both layouts
(the README's "Accuracy" figures). Run: python benchmarks/accuracy_groupnorm.py"""

import torch
from torch import nn

import sharenorm as sn


def reference(x: torch.Tensor, groups: int, eps: float) -> torch.Tensor:
    """(x − μ)/√(σ² + ε) per sample and group, in float64 (biased σ²)."""
    xg = x.double().reshape(x.shape[0], groups, -1)
    y = (xg - xg.mean(-1, keepdim=True)) / torch.sqrt(xg.var(-1, unbiased=False, keepdim=True) + eps)
    return y.reshape(x.shape)


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    shape = (2, 8, 32, 32)
    print(f"max |y − y_ref| on {'x'.join(map(str, shape))} float32, std 1, mean = ratio")
    print(f"{'norm':8s} {'layout':8s} {'|mean|/std':>10s} {'torch.nn':>10s} {'sharenorm':>10s}")
    for name, groups in (("group", 4), ("instance", 8), ("layer", 1)):
        for layout in ("NCHW", "NHWC"):
            for ratio in (1e2, 3e2, 1e3, 3e3, 1e4):
                x = (torch.randn(shape, generator=gen, dtype=torch.float64) + ratio).float()
                if layout == "NHWC":
                    x = x.to(memory_format=torch.channels_last)
                ref = reference(x, groups, 1e-5)
                with torch.no_grad():
                    errs = [float((m(x).double() - ref).abs().max())
                            for m in (nn.GroupNorm(groups, 8), sn.GroupNorm(groups, 8))]
                print(f"{name:8s} {layout:8s} {ratio:10.0e} {errs[0]:10.1e} {errs[1]:10.1e}")
    # BatchNorm runs ATen's own kernel, as torch.nn does: the same error, shown for reference
    for layout in ("NCHW", "NHWC"):
        for ratio in (1e2, 1e3, 1e4):
            x = (torch.randn(shape, generator=gen, dtype=torch.float64) + ratio).float()
            if layout == "NHWC":
                x = x.to(memory_format=torch.channels_last)
            ref = nn.functional.batch_norm(x.double(), None, None, training=True)
            errs = [float((m(x).double() - ref).abs().max().detach())
                    for m in (nn.BatchNorm2d(8), sn.BatchNorm2d(8))]
            print(f"{'batch':8s} {layout:8s} {ratio:10.0e} {errs[0]:10.1e} {errs[1]:10.1e}")


if __name__ == "__main__":
    main()
