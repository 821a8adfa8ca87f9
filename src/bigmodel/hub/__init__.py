"""Checkpoint I/O: safetensors, published layouts (Hugging Face, torchvision), key-map conversion.

The only package that imports ``transformers`` or ``torchvision`` (and only inside functions).
"""
