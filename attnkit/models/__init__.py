"""Built-in real models (NumPy only, no torch), for examples and datasets.

Importing this package is cheap: the weights, ``tokenizers``, ``safetensors``
and ``onnx`` are loaded by :meth:`MiniLM.load` and :meth:`SaliencyViT.load`.
"""

from .minilm import MiniLM, MiniLMGradients, MiniLMOutput, weights_dir
from .saliency_vit import SaliencyViT, SaliencyViTGradients, SaliencyViTOutput

__all__ = ["MiniLM", "MiniLMGradients", "MiniLMOutput", "weights_dir", "SaliencyViT",
           "SaliencyViTGradients", "SaliencyViTOutput"]
