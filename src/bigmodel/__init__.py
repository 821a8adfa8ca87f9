"""bigmodel."""
