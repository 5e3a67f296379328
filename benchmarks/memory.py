"""Peak memory of AutoSpecModel.fit against plain keras.Model.fit.

Each model and variant trains in a fresh process (peak memory cannot be told apart inside
one). The process reads its resident memory once its data and model are built, trains one
epoch, and reports its peak resident memory (``ru_maxrss``): the total, and what training
added to the memory held before ``fit``. Variants: plain `keras.Model.fit`, `AutoSpecModel`
(all kinds, every step) and the paper's route.

Usage:
    python benchmarks/memory.py [--models mlp cnn lstm transformer cnn1d] [--batch 128] [--groups 2]
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys

VARIANTS = ("plain", "autospec", "paper")


def _resident_megabytes():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def child(architecture, variant, batch, groups, steps):
    """Trains one model in this process; prints its memory as JSON."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from overhead import ARCHITECTURES, build, epoch_seconds, synthetic_data

    data = synthetic_data(ARCHITECTURES[architecture][1], batch, steps, groups)
    model = build(variant, architecture, groups, every=1)
    before = _resident_megabytes()
    epoch_seconds(model, *data, batch)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"before_fit_mb": before, "peak_mb": peak, "training_mb": peak - before}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn", "lstm", "transformer", "cnn1d"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--groups", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.batch, args.groups, args.steps)
        return
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores; batch {args.batch}, "
          f"{args.groups} groups, one epoch of {args.steps} steps per process")
    results = {}
    for architecture in args.models:
        results[architecture] = {}
        for variant in VARIANTS:
            output = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--child", architecture, variant,
                 "--batch", str(args.batch), "--groups", str(args.groups), "--steps", str(args.steps)],
                capture_output=True, text=True, check=True,
            ).stdout
            results[architecture][variant] = json.loads(output.strip().splitlines()[-1])
        plain = results[architecture]["plain"]
        for variant, memory in results[architecture].items():
            memory["peak_ratio"] = memory["peak_mb"] / plain["peak_mb"]
            memory["training_ratio"] = memory["training_mb"] / plain["training_mb"]
            print(f"{architecture:12s} {variant:9s} peak {memory['peak_mb']:7.0f} MB ({memory['peak_ratio']:.2f}x)  "
                  f"added by training {memory['training_mb']:6.0f} MB ({memory['training_ratio']:.2f}x)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
