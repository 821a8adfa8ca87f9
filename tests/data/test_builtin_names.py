"""The recipe layer's list of built-in data set names (it imports no data code) is the registry's."""

from bigmodel.data.builtin import BUILTINS
from bigmodel.recipe.schema import BUILTIN_DATASETS


def test_every_registered_builtin_is_a_recipe_name_and_no_other():
    assert sorted(BUILTINS) == sorted(BUILTIN_DATASETS)
