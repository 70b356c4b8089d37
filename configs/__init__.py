"""Built-in YAML configs, measured device profiles, length models and tokenizers, shipped as
package data (no code)."""
