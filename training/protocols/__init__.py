"""Evaluation protocols on frozen or fine-tuned encoders, all opened through one context.

- ``context.py``: ``open_protocol`` loads a checkpoint's encoders once, opens and checks the cache, resolves
  the splits (``ProtocolContext``, a context manager that closes the cache);
- ``io.py``: encoding, the ``linear.pt`` format (``save_linear`` / ``load_linear``), compatibility checks,
  JSON and tables;
- ``linear.py``, ``knn.py``, ``finetune.py``, ``tsne.py``: the protocols, each a config dataclass that checks
  its numbers and a ``run_*`` function the commands in ``training/eval_commands.py`` call.
"""
