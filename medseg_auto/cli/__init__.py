"""Command-line interface: ``main.py`` dispatches; each command is one small module."""
