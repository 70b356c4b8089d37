"""Built-in YAML configs and measured device profiles, shipped as package data."""
