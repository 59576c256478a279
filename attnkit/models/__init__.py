"""Built-in real models (NumPy only, no torch), for examples and datasets.

Importing this package is cheap: the weights, ``tokenizers`` and
``safetensors`` are loaded by :meth:`MiniLM.load`.
"""

from .minilm import MiniLM, MiniLMGradients, MiniLMOutput, weights_dir

__all__ = ["MiniLM", "MiniLMGradients", "MiniLMOutput", "weights_dir"]
