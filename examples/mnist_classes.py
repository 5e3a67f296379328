"""MNIST with its first four classes as groups, trained with an MLP and a 2D CNN (the
paper's numerical example): how differently does each layer learn from each digit?

Uses MNIST through TensorFlow Datasets when a prepared copy is found (``--data-dir``) or
can be downloaded; otherwise, offline, scikit-learn's 8×8 handwritten digits, saying so.

Run:
    python examples/mnist_classes.py                    # small: 3 seeds × 5 epochs, 3000 samples
    python examples/mnist_classes.py --n 60000 --epochs 20 --seeds 10 --data-dir ~/tensorflow_datasets
"""

import os

from common import analyse, arguments

from tf_autospec import data
from tf_autospec.experiment import Experiment, run_experiment


def main():
    parser = arguments(__doc__.splitlines()[0], n=3000, output="examples_output/mnist_classes")
    parser.add_argument("--data-dir", help="TensorFlow Datasets folder with a prepared MNIST")
    args = parser.parse_args()
    try:
        data.mnist(data_dir=args.data_dir, n_samples=10)
        dataset, options = "mnist", dict(data_dir=args.data_dir, n_samples=args.n)
    except data.DatasetUnavailableError as error:
        print(f"{error}\n-> Using scikit-learn's digits instead (8×8 images, 1,797 samples).")
        dataset, options = "digits", dict(n_samples=min(args.n, 1797))
    for model in ("mlp", "cnn2d"):
        experiment = Experiment(dataset=dataset, model=model, folds=1, seeds=args.seeds, epochs=args.epochs,
                                batch_size=128, dataset_options=dict(options, groups=4))
        paths = run_experiment(experiment, os.path.join(args.output, model), overwrite=args.overwrite, verbose=2)
        analyse(paths, args.output, "digit 0", "digit 1", f"{dataset}_{model}")


if __name__ == "__main__":
    main()
