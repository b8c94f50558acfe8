"""Run a study: every arm x pretraining seed, pretrained then fine-tuned, resumably; then the table.

  python experiments/run.py bigs_vs_bert [--quick] [--out DIR] [--only ARM] [--dry_run]

A study is ``experiments/<study>/study.gin`` (see experiments/README.md).
Finished jobs (their ``result.json``) are skipped, so rerunning the same
command after an interruption continues where it stopped. Results:
``<out>/results/results.md``, ``results.json`` and PNG plots.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Optional, Sequence

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # studylib
sys.path.insert(1, str(pathlib.Path(__file__).resolve().parent.parent))  # lmlab

from studylib import config as study_config  # pylint: disable=wrong-import-position
from studylib import runner  # pylint: disable=wrong-import-position


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python experiments/run.py", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("study", help="A study name (experiments/<study>/study.gin), folder or .gin file.")
  parser.add_argument("--quick", action="store_true",
                      help="Apply the study's quick override (tiny steps, fewer seeds); runs go "
                           "to experiments/<study>/quick/ unless --out is given.")
  parser.add_argument("--out", type=pathlib.Path, default=None,
                      help="Output folder (runs/ and results/); default experiments/<study>/.")
  parser.add_argument("--only", action="append", default=[],
                      help="Run only this arm (repeatable or comma-separated); the table still "
                           "covers every finished arm.")
  parser.add_argument("--dry_run", action="store_true", help="Print the commands; run nothing.")
  parser.add_argument("--binding", action="append", default=[],
                      help="Extra gin binding of the study, e.g. \"Study.finetune_seeds = [0]\" "
                           "(repeatable).")
  parser.add_argument("--parallel", type=int, default=1,
                      help="Jobs (arm x pretraining seed) run at once (default 1).")
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = build_parser().parse_args(argv)
  only = [name for group in args.only for name in group.split(",") if name]
  try:
    report = runner.run_study(args.study, quick=args.quick, out_dir=args.out, only=only,
                              dry_run=args.dry_run, bindings=args.binding,
                              parallel=args.parallel)
  except study_config.StudyError as e:
    print(f"run.py: error: {e}", file=sys.stderr)
    return 2
  if report.failed:
    for outcome in report.failed:
      print(f"FAILED {outcome.key}: {outcome.error}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
