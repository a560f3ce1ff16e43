"""Agent Manager: a local control panel for command-line AI agents."""

__version__ = "0.1.0"
