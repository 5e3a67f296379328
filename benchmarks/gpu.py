"""The overhead suite on a CUDA GPU, with and without XLA, and a brute-force check.

For every architecture of `overhead.ARCHITECTURES` and ``jit_compile`` False and True:

1. **check**: one recorded step of `AutoSpecModel` (batch 64, 2 groups). Every tracked
   kernel's ``grad`` spectrum of every group is compared with the float64 NumPy SVD of
   that group's gradient from its own tape pass on the group-masked loss, taken before
   the step (`tests/reference.py`). TensorFloat-32 is off for the check, so that both
   sides are float32 products; the largest error over σ_max must stay within 1e-4.
2. **timing**: plain `keras.Model.fit`, AutoSpec every step, every 10 steps and the
   paper's route, side by side in this process (`overhead.median_ms_per_step`: runs
   alternate, tracing excluded, medians), batch 128, 2 groups, TensorFlow's default
   TensorFloat-32 setting.

Absolute ms per step and ratios are printed as a Markdown table, naming the GPU, and
written with ``--json``. Exits with status 1 if a check fails.

Usage (one GPU, TensorFlow with CUDA: ``pip install "tensorflow[and-cuda]"``):
    python benchmarks/gpu.py [--models mlp cnn lstm transformer cnn1d] [--json out.json]

``--allow-cpu`` runs it without a GPU (XLA off: AutoSpecModel turns it off on CPUs),
to try the script itself.
"""

import argparse
import json
import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

import overhead  # noqa: E402
import reference  # noqa: E402
import tf_autospec as ts  # noqa: E402

CHECK_BATCH = 64
VARIANTS = {
    "plain": ("plain", 1),
    "autospec": ("autospec", 1),
    "autospec_every10": ("autospec", 10),
    "paper_svd": ("paper", 1),
}


def as_matrix(gradient, fan_in):
    """A kernel gradient read as ``fan_in × fan_out``: its leading axes are the rows."""
    shape = gradient.shape
    for split in range(1, len(shape)):
        if int(np.prod(shape[:split])) == fan_in:
            return gradient.reshape(fan_in, -1)
    raise ValueError(f"no leading axes of {shape} make {fan_in} rows")


def check(architecture, jit_compile):
    """Largest ``|recorded − reference| / σ_max`` over kernels and groups of one step."""
    _, shape = overhead.ARCHITECTURES[architecture]
    x, y, labels = overhead.synthetic_data(shape, CHECK_BATCH, 1, 2)
    model = overhead.build("autospec", architecture, 2, 1, jit_compile=jit_compile)
    model._build_from_sample(x)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    kernels = [v for v in model.trainable_variables if len(v.shape) >= 2]
    gradients = {v.path: [] for v in kernels}
    for g in range(2):  # each group's gradient from its own tape pass, before the step
        mask = tf.constant((labels == g).astype("float32"))
        with tf.GradientTape() as tape:
            ell = reference.per_sample_loss(loss, y, model(x, training=True))
            masked = tf.reduce_sum(ell * mask) / CHECK_BATCH
        for v, gradient in zip(kernels, tape.gradient(masked, kernels)):
            gradients[v.path].append(np.asarray(tf.convert_to_tensor(gradient), np.float64))
    model.fit(x, y, groups=labels, batch_size=CHECK_BATCH, epochs=1, shuffle=False, verbose=0)
    recorded = model.last_spectra
    worst = 0.0
    for kernel in model.tracked_kernels:
        for g, gradient in enumerate(gradients[kernel.path]):
            expected = reference.singular_values(as_matrix(gradient, kernel.fan_in))
            values = recorded.spectrum(kernel.path, "grad", f"g{g}").astype(np.float64)
            known = ~np.isnan(values)
            scale = max(expected[0], np.finfo(np.float32).tiny)
            worst = max(worst, float(np.max(np.abs(values[known] - expected[: known.sum()])) / scale))
    return worst


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(overhead.ARCHITECTURES), choices=list(overhead.ARCHITECTURES))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=21,
                        help="steps per timed epoch (timed: all but the first; see overhead.StepClock)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--allow-cpu", action="store_true", help="run without a GPU (XLA off)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus and not args.allow_cpu:
        sys.exit("No GPU visible to TensorFlow. Install TensorFlow with CUDA "
                 "(pip install 'tensorflow[and-cuda]') on a CUDA machine, or pass --allow-cpu.")
    device = (tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU") if gpus
              else "CPU (no GPU)")
    machine = f"{device}, TF {tf.__version__}, Keras {keras.__version__}"
    print(f"# {machine}; batch {args.batch}, 2 groups, {args.steps} steps/epoch, median of {args.repeats}")
    warnings.simplefilter("ignore", ts.AutoSpecWarning)
    results, failed = {}, False
    for jit_compile in (False, True) if gpus else (False,):
        for architecture in args.models:
            tf.config.experimental.enable_tensor_float_32_execution(False)
            error = check(architecture, jit_compile)
            tf.config.experimental.enable_tensor_float_32_execution(True)
            failed |= not error <= reference.GROUP_TOL
            data = overhead.synthetic_data(overhead.ARCHITECTURES[architecture][1], args.batch, args.steps, 2)
            trained = {name: overhead.build(kind, architecture, 2, every, jit_compile=jit_compile)
                       for name, (kind, every) in VARIANTS.items()}
            ms = overhead.median_ms_per_step(trained, data, args.batch, args.repeats)
            results[f"{architecture} xla={jit_compile}"] = {
                "check_max_error_over_sigma_max": error,
                **{name: {"ms_per_step": ms[name], "ratio": ms[name] / ms["plain"]} for name in trained},
            }
            row = " | ".join(f"{ms[n]:.2f} ({ms[n] / ms['plain']:.2f}×)" for n in VARIANTS)
            print(f"| {architecture} | {jit_compile} | {error:.1e} | {row} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "args": vars(args), "results": results}, f, indent=2)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
