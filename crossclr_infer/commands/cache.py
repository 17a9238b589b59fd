"""Click commands (registered by cli.py)."""

COMMANDS: list = []
PREPARE_COMMANDS: list = []
