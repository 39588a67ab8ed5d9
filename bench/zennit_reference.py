"""Float64 reference maps from Zennit for a small CNN, for the test suite.

Builds a small CNN in PyTorch, float64, with every parameter random (conv and
linear weights and biases, BatchNorm scale, shift and running statistics), runs
each of Zennit 0.5.1's composites on a random batch with a one-hot seed, and
writes the parameters, the input, the seed and the maps to
``tests/data/zennit_small_cnn.npz``. ``tests/test_zennit_reference.py`` rebuilds the
same network in plain JAX and checks jaxlrp's maps against these, without torch.

The network (NCHW)::

    conv 3->4 (3x3, pad 1) -> BatchNorm -> ReLU -> max pool 2
    -> conv 4->4 (3x3, pad 1) -> ReLU -> residual add (zennit.layer.Sum)
    -> avg pool 2 -> flatten -> linear 64->10 -> ReLU -> linear 10->3

Zennit gets an exact BatchNorm merge (``running_var = 1 - eps`` after its merge,
see ``bench/compare_zennit.py``) and, on the 2x2 average pooling, ``Norm`` with its
stabiliser divided by 4 (jaxlrp stabilises the window's sum, Zennit its mean);
neither is a rule difference. Run with the PyTorch environment::

    /work/tvenv/bin/python bench/zennit_reference.py
"""

from __future__ import annotations

import pathlib

import numpy as np

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data" / "zennit_small_cnn.npz"
COMPOSITES = ("epsilon", "epsilon_plus", "epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1",
              "epsilon_alpha2_beta1_flat", "excitation_backprop", "guided_backprop", "deconvnet", "beta_smooth")
LOW, HIGH = -3.0, 3.0  # the box of epsilon_gamma_box


def build(seed: int = 0):
    import torch
    from zennit.layer import Sum

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.bn1 = torch.nn.BatchNorm2d(4)
            self.relu1 = torch.nn.ReLU()
            self.pool1 = torch.nn.MaxPool2d(2)
            self.conv2 = torch.nn.Conv2d(4, 4, 3, padding=1)
            self.relu2 = torch.nn.ReLU()
            self.sum = Sum()
            self.pool2 = torch.nn.AvgPool2d(2)
            self.fc1 = torch.nn.Linear(64, 10)
            self.relu3 = torch.nn.ReLU()
            self.fc2 = torch.nn.Linear(10, 3)

        def forward(self, x):
            h = self.pool1(self.relu1(self.bn1(self.conv1(x))))
            h = self.sum(torch.stack([h, self.relu2(self.conv2(h))], dim=-1))
            h = self.pool2(h).flatten(1)
            return self.fc2(self.relu3(self.fc1(h)))

    torch.manual_seed(seed)
    net = Net().double()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.weight.normal_(0.0, 0.5, generator=g)
                m.bias.normal_(0.0, 0.2, generator=g)
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.2, generator=g)
                m.running_mean.normal_(0.0, 0.2, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
    return net.eval()


def composite(name: str):
    import torch
    from zennit import composites as zc
    from zennit import rules as zr
    from zennit import types as zt
    from zennit.canonizers import SequentialMergeBatchNorm

    class ExactMergeBatchNorm(SequentialMergeBatchNorm):
        @staticmethod
        def merge_batch_norm(modules, batch_norm):
            SequentialMergeBatchNorm.merge_batch_norm(modules, batch_norm)
            batch_norm.running_var.data.fill_(1.0 - batch_norm.eps)

    canonizers = [ExactMergeBatchNorm()]
    pool = [(zt.AvgPool, zr.Norm(stabilizer=1e-6 / 4))]
    if name == "epsilon":
        layer_map = pool + zc.layer_map_base() + [(zt.Convolution, zr.Epsilon(epsilon=1e-6)),
                                                  (torch.nn.Linear, zr.Epsilon(epsilon=1e-6))]
        return zc.LayerMapComposite(layer_map=layer_map, canonizers=canonizers)
    if name == "epsilon_gamma_box":
        return zc.EpsilonGammaBox(low=LOW, high=HIGH, layer_map=pool, canonizers=canonizers)
    if name in ("guided_backprop", "deconvnet", "beta_smooth"):  # no Norm anywhere: no pooling entry
        return zc.COMPOSITES[name](canonizers=canonizers)
    return zc.COMPOSITES[name](layer_map=pool, canonizers=canonizers)


def main() -> None:
    import torch

    net = build()
    rng = np.random.default_rng(2)
    x = rng.normal(0.0, 1.0, (2, 3, 16, 16))
    with torch.no_grad():
        logits = net(torch.from_numpy(x)).numpy()
    seed = np.eye(3)[logits.argmax(-1)]
    out = {"x": x, "seed": seed, "logits": logits}
    out.update({f"param/{k}": v.detach().numpy() for k, v in net.state_dict().items() if v.dtype == torch.float64})
    for name in COMPOSITES:
        net_c = build()  # the canonizers change the model: a fresh copy for each composite
        with composite(name).context(net_c) as modified:
            xt = torch.from_numpy(x).requires_grad_(True)
            (r,) = torch.autograd.grad(modified(xt), xt, grad_outputs=torch.from_numpy(seed))
        out[f"map/{name}"] = r.numpy()
        print(f"{name:<28} sum {r.sum().item(): .6f}  max |R| {r.abs().max().item():.4g}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
