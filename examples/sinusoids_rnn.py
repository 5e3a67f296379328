"""Sinusoids with a recurrent network (the paper's RNN example): two groups of sequences
differing in frequency, next-step regression with a SimpleRNN.

Records the RNN's input kernel (A = x_t), its recurrent kernel (A = h_{t-1}) and the output
Dense layer, over every sequence × time step of each group.

Run:
    python examples/sinusoids_rnn.py [--epochs 10] [--seeds 3] [--differ phase]
"""

from common import analyse, arguments

from tf_autospec.experiment import Experiment, run_experiment


def main():
    parser = arguments(__doc__.splitlines()[0], n=512, epochs=10, output="examples_output/sinusoids_rnn")
    parser.add_argument("--differ", default="frequency", choices=["frequency", "phase", "amplitude"])
    args = parser.parse_args()
    experiment = Experiment(dataset="sinusoids", model="simple_rnn", task="regression", folds=1, seeds=args.seeds,
                            epochs=args.epochs, batch_size=64, model_options=dict(units=32),
                            dataset_options=dict(n_sequences=args.n, differ=args.differ))
    paths = run_experiment(experiment, args.output, overwrite=args.overwrite, verbose=2)
    analyse(paths, args.output, "low", "high", f"sinusoids_{args.differ}_simple_rnn")


if __name__ == "__main__":
    main()
