"""Reference architectures for benchmarks and examples; the library never imports this package."""

from models.reference import mlp, mlp_outputs, mnist_cnn, mnist_cnn_outputs

__all__ = ["mlp", "mlp_outputs", "mnist_cnn", "mnist_cnn_outputs"]
