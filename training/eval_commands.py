"""Click commands for evaluation protocols (registered by cli.py). Torch is imported inside the commands."""

COMMANDS: list = []
