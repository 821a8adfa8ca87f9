"""Model families, one file each; see registry.py for how names map to files."""

from bigmodel.models.registry import Family, create_model, family_names, get_family

__all__ = ["Family", "create_model", "family_names", "get_family"]
