"""Click commands for export (registered by cli.py). Torch is imported inside the commands."""

COMMANDS: list = []
