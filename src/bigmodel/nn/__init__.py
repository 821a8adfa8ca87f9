"""Leaf building blocks with no model-family knowledge. Imports torch only."""
