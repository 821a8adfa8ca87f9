"""Recipes: the typed schema, YAML loading and dotted overrides. Imports no torch."""

from bigmodel.recipe.load import find_recipe, load_recipe, parse_overrides, shipped_recipes, to_yaml
from bigmodel.recipe.schema import Recipe

__all__ = ["Recipe", "find_recipe", "load_recipe", "parse_overrides", "shipped_recipes", "to_yaml"]
