"""Click commands for pretraining (registered by cli.py). Torch is imported inside the commands."""

COMMANDS: list = []
