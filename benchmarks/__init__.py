"""The benchmarks of spider_optax; ``benchmarks/RESULTS.md`` has the figures.

Each experiment is a script, run from the repository root as
``python -m benchmarks.NAME`` (or ``python benchmarks/NAME.py``), with
``--quick`` for a smoke test, ``--no-progress``, ``--out`` (the JSON) and
``--plot-dir``; outputs go to ``benchmarks/out/`` by default:

- ``quickstart``: SPIDER with a clipped learning rate against clipped SGD on
  the digits MLP, at equal oracle budgets.
- ``overhead``: the per-step cost of the update and of a training step.
- ``complexity``: oracle calls to an eps-stationary point, against eps and n.
- ``train``: SPIDER, SARAH, SVRG, clipped SGD and Adam, tuned, on the digits
  MLP and a character LSTM.
- ``smoothness``: the (L0, L1) picture, automatic clipping and adaptive
  anchoring.

``tasks`` holds their problems (data, models, losses) and ``common`` their
shared machinery.
"""
