"""Subcommands of `cnmt`, one module each; see :mod:`cnmt.cli`."""
