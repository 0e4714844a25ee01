"""mnist-multibackend: the 2017 Keras 2 MNIST CNN, ported to Keras 3 on TensorFlow or JAX.

Importing this package does not import Keras: the backend must be chosen first
(``runtime.start``), and only then may modules that use Keras (``model``,
``training``) be imported.
"""

__version__ = "0.1.0"
