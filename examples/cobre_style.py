"""Simulated COBRE-style patients vs controls: SimTB-style ICA time courses (53
components) of healthy controls (HC) and patients (SZ) whose functional network
connectivity differs, classified by an MLP on FNC features, a 1D CNN and an LSTM on the
time courses, with 5-fold cross-validation.

Run:
    python examples/cobre_style.py                      # 200 subjects, 5 folds × 1 seed, 10 epochs
    python examples/cobre_style.py --effect-size 0      # a null dataset: no difference to find
"""

import os

from common import analyse, arguments

from tf_autospec.experiment import Experiment, run_experiment

MODELS = {"mlp": dict(hidden=(256, 64)), "cnn1d": {}, "lstm": dict(units=32)}


def main():
    parser = arguments(__doc__.splitlines()[0], n=200, epochs=10, seeds=1, output="examples_output/cobre_style")
    parser.add_argument("--effect-size", type=float, default=0.3)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    for model in args.models:
        experiment = Experiment(dataset="simulated_fmri", model=model, folds=5, seeds=args.seeds, epochs=args.epochs,
                                batch_size=32, model_options=MODELS[model],
                                dataset_options=dict(n_subjects=args.n, effect_size=args.effect_size))
        paths = run_experiment(experiment, os.path.join(args.output, model), overwrite=args.overwrite, verbose=2)
        analyse(paths, args.output, "HC", "SZ", f"cobre_{model}")


if __name__ == "__main__":
    main()
