"""Peer comparison: the same per-group gradient spectra in PyTorch with BackPACK.

BackPACK's `BatchGrad` extension returns every sample's gradient of every weight; summed
per group they give each group's gradient ``G_g``, whose singular values are computed in
float64 (`torch.linalg.svdvals`). Reported, like `overhead.py` for tf_autospec, as the
ratio to the same framework's plain training step (forward, backward, Adam), side by side
in one process, runs alternating, the first epoch excluded, median of the repeats.

This is a benchmark only: PyTorch and BackPACK are never dependencies of tf_autospec.
Install them in a separate environment:

    python -m venv peer && peer/bin/pip install torch==2.13.0 backpack-for-pytorch numpy \\
        --extra-index-url https://download.pytorch.org/whl/cpu
    peer/bin/python benchmarks/peer_backpack.py [--models mlp cnn lstm cnn1d transformer] [--batch 128] [--groups 2]
"""

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
import torch
from backpack import backpack, extend
from backpack.custom_module.reduce_tuple import ReduceTuple
from backpack.custom_module.slicing import Slicing
from backpack.extensions import BatchGrad


def mlp():
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(784, 512), torch.nn.ReLU(),
        torch.nn.Linear(512, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10),
    )


def cnn():
    """The Keras reference CNN: Conv 32 → pool → Conv 64 → pool → Dense 128 → 10."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(1600, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10),
    )


def lstm():
    """The Keras reference LSTM: LSTM(128) over 50 steps of 32 features, last state → 10."""
    return torch.nn.Sequential(
        torch.nn.LSTM(32, 128, batch_first=True), ReduceTuple(index=0),
        Slicing((slice(None), -1)), torch.nn.Linear(128, 10),
    )


class _MeanOverTime(torch.nn.Module):
    def forward(self, x):
        return x.mean(dim=-1)


def cnn1d():
    """The Keras reference 1D CNN over ICA time courses (150 × 53, channels first here):
    Conv1D 32 → pool → Conv1D 64 → mean over time → Dense 64 → 10 (kernel 5)."""
    return torch.nn.Sequential(
        torch.nn.Conv1d(53, 32, 5), torch.nn.ReLU(), torch.nn.MaxPool1d(2),
        torch.nn.Conv1d(32, 64, 5), torch.nn.ReLU(), _MeanOverTime(),
        torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10),
    )


class _Attention(torch.nn.Module):
    """Multi-head self-attention from four Linear layers (Keras's query, key, value and
    output projections), since BackPACK has no per-sample gradients for
    `torch.nn.MultiheadAttention`."""

    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value, self.projection = (torch.nn.Linear(width, width) for _ in range(4))

    def forward(self, x):
        n, t, width = x.shape

        def split(projected):
            return projected.view(n, t, self.heads, width // self.heads).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        weights = torch.softmax(q @ k.transpose(-1, -2) / (width // self.heads) ** 0.5, dim=-1)
        return self.projection((weights @ v).transpose(1, 2).reshape(n, t, width))


class _Block(torch.nn.Module):
    """Post-LN encoder block: attention, then a ReLU feed-forward layer."""

    def __init__(self, width, heads, dense):
        super().__init__()
        self.attention = _Attention(width, heads)
        self.norm1, self.norm2 = torch.nn.LayerNorm(width), torch.nn.LayerNorm(width)
        self.inner, self.outer = torch.nn.Linear(width, dense), torch.nn.Linear(dense, width)

    def forward(self, x):
        x = self.norm1(x + self.attention(x))
        return self.norm2(x + self.outer(torch.relu(self.inner(x))))


class _Transformer(torch.nn.Module):
    def __init__(self, features=32, blocks=2, heads=4, key_dim=32, dense=128, outputs=10):
        super().__init__()
        width = heads * key_dim
        self.embed = torch.nn.Linear(features, width)
        self.blocks = torch.nn.ModuleList(_Block(width, heads, dense) for _ in range(blocks))
        self.head = torch.nn.Linear(width, outputs)

    def forward(self, x):
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h.mean(dim=1))


def transformer():
    """The Keras reference Transformer encoder (`overhead.transformer_outputs`); the
    LayerNorm weights are trained but, as in tf_autospec, get no spectra."""
    return _Transformer()


ARCHITECTURES = {"mlp": mlp, "cnn": cnn, "lstm": lstm, "cnn1d": cnn1d, "transformer": transformer}
INPUT_SHAPES = {"mlp": (1, 28, 28), "cnn": (1, 28, 28), "lstm": (50, 32), "cnn1d": (53, 150), "transformer": (50, 32)}


def group_gradient_spectra(model, labels, groups):
    """σ(G_g) per kernel and group from BackPACK's per-sample gradients."""
    kernels = []
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)):
            kernels.append(module.weight)
        elif isinstance(module, torch.nn.LSTM):
            kernels += [module.weight_ih_l0, module.weight_hh_l0]
    spectra = []
    for kernel in kernels:
        per_sample = kernel.grad_batch.flatten(start_dim=2)  # [N, out, in·kh·kw]
        for g in range(groups):
            group_gradient = per_sample[labels == g].sum(dim=0).double()
            spectra.append(torch.linalg.svdvals(group_gradient))
    return spectra


def epoch_seconds(model, optimizer, loss_function, batches, groups, spectra):
    start = time.perf_counter()
    for x, y, labels in batches:
        optimizer.zero_grad()
        loss = loss_function(model(x), y)
        if spectra:
            with backpack(BatchGrad()):
                loss.backward()
            group_gradient_spectra(model, labels, groups)
        else:
            loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def run(architecture, batch, groups, steps, repeats):
    rng = np.random.default_rng(0)
    batches = [
        (torch.tensor(rng.normal(size=(batch, *INPUT_SHAPES[architecture])), dtype=torch.float32),
         torch.tensor(rng.integers(0, 10, batch)), torch.tensor(rng.integers(0, groups, batch)))
        for _ in range(steps)
    ]
    variants = {}
    for name in ("plain", "backpack_grad_spectra"):
        torch.manual_seed(0)
        model = ARCHITECTURES[architecture]()
        loss_function = torch.nn.CrossEntropyLoss()
        if name != "plain":
            model, loss_function = extend(model, use_converter=architecture == "lstm"), extend(loss_function)
        variants[name] = (model, torch.optim.Adam(model.parameters()), loss_function, name != "plain")
    for model, optimizer, loss_function, spectra in variants.values():  # warm-up epoch, excluded
        epoch_seconds(model, optimizer, loss_function, batches, groups, spectra)
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, (model, optimizer, loss_function, spectra) in variants.items():
            times[name].append(epoch_seconds(model, optimizer, loss_function, batches, groups, spectra))
    ms = {name: 1e3 * statistics.median(t) / steps for name, t in times.items()}
    return {"ms_per_step": ms, "ratio": ms["backpack_grad_spectra"] / ms["plain"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(ARCHITECTURES), choices=list(ARCHITECTURES))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--groups", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import backpack as backpack_package

    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, PyTorch {torch.__version__}, "
               f"BackPACK {getattr(backpack_package, '__version__', '?')}")
    print(f"# {machine}; batch {args.batch}, {args.groups} groups, {args.steps} steps/epoch, median of {args.repeats}")
    results = {}
    for architecture in args.models:
        r = results[architecture] = run(architecture, args.batch, args.groups, args.steps, args.repeats)
        for name, value in r["ms_per_step"].items():
            print(f"{architecture:5s} {name:24s} {value:8.2f} ms/step")
        print(f"{architecture:5s} BackPACK grad spectra / plain: {r['ratio']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
