"""Study runner pieces: a gin-configured list of arms x seeds, run and summarised.

A *study* tests one claim by pretraining every arm with several seeds,
fine-tuning each pretrained checkpoint with several seeds, and reporting the
mean and a bootstrap interval over seeds (``experiments/run.py``).

Modules, one job each:
  config   the gin-bound ``Study`` / ``Arm`` / ``Quick`` and how a study is loaded
  plan     the lmlab CLI commands and folders of every arm x pretraining seed
  execute  running a plan resumably (skip what has a result, rerun the rest)
  collect  reading what lmlab wrote (metrics.jsonl, summary.json) into a result
  stats    means and bootstrap intervals over seeds
  table    results.json and results.md
  plots    loss curves and score-vs-compute PNGs
"""
