"""Registry of layer families whose kernel products are captured, keyed by layer class.

A new layer family is one module: subclass `LayerCapture`, decorate it with
``@register(MyLayer)``, and import the module here.

Example:

```python
from tf_autospec.capture import LayerCapture, register
from tf_autospec.capture.base import as_rows

@register(MyDense)
class MyDenseCapture(LayerCapture):
    def matrix_shape(self, layer):
        return layer.kernel.shape
    def input_rows(self, layer, inputs):
        return as_rows(inputs, layer.kernel.shape[0])
    def output_rows(self, layer, product):
        return as_rows(product, layer.kernel.shape[1])
```
"""

from tf_autospec.capture.base import LayerCapture, Recording

_REGISTRY = {}


def register(*layer_classes):
    """Class decorator: registers a `LayerCapture` for exactly these layer classes.

    Lookup is by exact class, so a subclass that changes ``call`` is never tracked
    by a capture written for its parent; register it explicitly when it is safe.
    """

    def decorate(capture_class):
        for layer_class in layer_classes:
            _REGISTRY[layer_class] = capture_class()
        return capture_class

    return decorate


def capture_for(layer):
    """The registered `LayerCapture` for this layer's class, or ``None``."""
    return _REGISTRY.get(type(layer))


def registered_classes():
    """The layer classes that have a registered capture."""
    return list(_REGISTRY)


from tf_autospec.capture import conv, dense, einsum_dense, embedding, recurrent  # noqa: E402,F401

__all__ = ["LayerCapture", "Recording", "register", "capture_for", "registered_classes"]
