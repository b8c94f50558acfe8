"""The study runner (experiments/run.py, experiments/studylib): config, resume, statistics, outputs.

The default tests never start lmlab: a fake executor writes the files lmlab
would, so resume logic, collection, the bootstrap table and the plots are
checked in a few seconds. The slow test runs the example study's --quick
mode end to end through the real CLI.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
EXPERIMENTS = REPO_ROOT / "experiments"
if str(EXPERIMENTS) not in sys.path:
  sys.path.insert(0, str(EXPERIMENTS))

from studylib import collect, config, execute, plan, plots, runner, stats, table  # noqa: E402  pylint: disable=wrong-import-position

EXAMPLE = EXPERIMENTS / "bigs_vs_bert" / "study.gin"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _quiet(_: str) -> None:
  pass


# ---------------------------------------------------------------------------
# Study config
# ---------------------------------------------------------------------------


def test_example_study_parses_and_quick_override_applies():
  study = config.load_study(EXAMPLE)
  assert study.name == "bigs_vs_bert"
  assert "BiGS" in study.claim
  assert [a.name for a in study.arms] == ["bert", "bigs"]
  assert study.arm("bigs").gin_files == ["models/bigs_tiny.gin", "runs/bigs_quickstart.gin"]
  assert study.arm("bigs").model_gin_files() == ["models/bigs_tiny.gin"]
  assert list(study.finetune_tasks) == ["offline"]
  assert study.pretrain_bindings["TRAIN_STEPS"] == 500
  assert len(study.pretrain_seeds) == 3

  quick = study.quick_version()
  assert list(quick.pretrain_seeds) == [0, 1] and list(quick.finetune_seeds) == [0]
  assert quick.pretrain_bindings["TRAIN_STEPS"] == 12
  # Bindings the override does not touch are kept.
  assert quick.pretrain_bindings["MIXTURE_OR_TASK_NAME"] == "lmlab.embedded_mlm"
  assert quick.finetune_bindings["FinetuneConfig.write_test_predictions"] is False
  assert quick.finetune_bindings["FinetuneConfig.epochs"] == 1.0
  assert list(quick.finetune_tasks) == ["offline"]
  assert quick.quick is None


def test_extra_bindings_and_clear_errors(tmp_path):
  study = config.load_study(EXAMPLE, ["Study.finetune_tasks = ['toy']", "Study.pretrain_seeds = [7]"])
  assert list(study.finetune_tasks) == ["toy"] and list(study.pretrain_seeds) == [7]
  with pytest.raises(config.StudyError, match="no arm 'gpt'"):
    study.arm("gpt")
  bad = tmp_path / "study.gin"
  bad.write_text("Study.name = 'x'\nStudy.arms = [@a/Arm(), @b/Arm()]\n"
                 "a/Arm.name = 'same'\na/Arm.gin_files = []\n"
                 "b/Arm.name = 'same'\nb/Arm.gin_files = []\n")
  with pytest.raises(config.StudyError, match="same name"):
    config.load_study(bad)
  with pytest.raises(config.StudyError, match="No study file"):
    config.find_study_file("no_such_study", EXPERIMENTS)
  with pytest.raises(config.StudyError, match="no quick override"):
    config.load_study(EXAMPLE, ["Study.quick = None"]).quick_version()


def test_plan_commands(tmp_path):
  study = config.load_study(EXAMPLE, [
      "Study.pretrain_bindings = {'TRAIN_STEPS': 3, 'EncoderConfig.d_model': 32}",
      "Study.finetune_bindings = {'FinetuneConfig.file_tasks': '[@FileTask()]', "
      "'FileTask.name': 'toy'}"])
  jobs = plan.build_plan(study, tmp_path, study_dir=EXAMPLE.parent, only=["bigs"])
  assert [j.key for j in jobs] == [f"bigs/seed_{s}" for s in study.pretrain_seeds]
  job = jobs[1]
  pre, fine = job.pretrain_command, job.finetune_command
  assert pre[1:4] == ["-m", "lmlab.main", f"--gin_search_paths={EXAMPLE.parent}"]
  assert "--run_mode=train" in pre and "--gin_file=runs/bigs_quickstart.gin" in pre
  assert "--gin.TRAIN_STEPS=3" in pre and "--gin.TrainConfig.seed=1" in pre
  assert "--gin.DataConfig.seed=1" in pre
  assert f"--gin.MODEL_DIR='{job.pretrain_dir}'" in pre
  assert "--run_mode=finetune" in fine and "--gin_file=models/bigs_tiny.gin" in fine
  assert "--gin_file=runs/bigs_quickstart.gin" not in fine
  assert "--gin.EncoderConfig.d_model=32" in fine  # the network is rebuilt as pretrained
  assert "--gin.TRAIN_STEPS=3" not in fine
  assert "--gin.FinetuneConfig.file_tasks=[@FileTask()]" in fine  # a gin reference, verbatim
  assert "--gin.FileTask.name='toy'" in fine
  assert "--gin.FinetuneConfig.tasks=['offline']" in fine
  assert fine[-1] == f"--init_checkpoint={job.pretrain_dir}"


# ---------------------------------------------------------------------------
# Resume, with a fake executor that writes what lmlab would
# ---------------------------------------------------------------------------


class FakeLmlab:
  """An executor that records commands and writes lmlab's output files (no training)."""

  def __init__(self, fail_stage: str | None = None):
    self.calls: list[tuple[str, str]] = []  # (MODEL_DIR, run mode)
    self.fail_stage = fail_stage

  def __call__(self, command, log_path, cwd):
    del cwd
    model_dir = pathlib.Path(next(a for a in command if a.startswith("--gin.MODEL_DIR="))
                             .split("=", 1)[1].strip("'"))
    mode = next(a for a in command if a.startswith("--run_mode=")).split("=")[1]
    self.calls.append((str(model_dir), mode))
    log_path.write_text("fake\n")
    if mode == self.fail_stage:
      return 143
    model_dir.mkdir(parents=True, exist_ok=True)
    seed = int(model_dir.parent.name.split("_")[1])
    if mode == "train":
      with open(model_dir / "metrics.jsonl", "w") as f:
        for step in (2, 4):
          f.write(json.dumps({"step": step, "train/loss": 9.0 - step - seed}) + "\n")
        f.write(json.dumps({"step": 4, "eval/loss": 5.5 - seed}) + "\n")
      (model_dir / "config.operative.gin").write_text(
          "BATCH_SIZE = 8\nSEQUENCE_LENGTH = 32\nDataConfig.sequence_length = %SEQUENCE_LENGTH\n"
          "TrainConfig.batch_size = %BATCH_SIZE\n")
    else:
      runs = [{"seed": 0, "validation": {"accuracy": 50.0 + seed, "main": 50.0 + seed}}]
      (model_dir / "summary.json").write_text(json.dumps({"tasks": {"toy": runs}}))
    return 0


def test_resume_skips_finished_and_reruns_interrupted(tmp_path):
  study = config.load_study(EXAMPLE).quick_version()
  jobs = {j.key: j for j in plan.build_plan(study, tmp_path, study_dir=EXAMPLE.parent)}
  # bert/seed_0 finished earlier: a result exists.
  first = FakeLmlab()
  execute.run_job(jobs["bert/seed_0"], first, REPO_ROOT, _quiet)
  assert jobs["bert/seed_0"].result_path.exists() and len(first.calls) == 2
  # bigs/seed_0 was interrupted during fine-tuning; bert/seed_1 during pretraining.
  interrupted = FakeLmlab(fail_stage="finetune")
  assert execute.run_job(jobs["bigs/seed_0"], interrupted, REPO_ROOT, _quiet).status == "failed"
  assert execute.run_job(jobs["bert/seed_1"], FakeLmlab(fail_stage="train"), REPO_ROOT,
                         _quiet).status == "failed"

  fake = FakeLmlab()
  report = runner.run_study(str(EXAMPLE), quick=True, out_dir=tmp_path, executor=fake, log=_quiet)
  ran = {(pathlib.Path(d).parent.parent.name + "/" + pathlib.Path(d).parent.name, mode)
         for d, mode in fake.calls}
  assert ran == {("bert/seed_1", "train"), ("bert/seed_1", "finetune"),
                 ("bigs/seed_0", "finetune"),  # its pretraining had finished
                 ("bigs/seed_1", "train"), ("bigs/seed_1", "finetune")}
  assert report.skipped == ["bert/seed_0"] and not report.failed
  assert all(job.result_path.exists() for job in jobs.values())
  written = json.loads(report.files["json"].read_text())
  assert len(written["runs"]) == 4
  # Interrupted attempts count towards wall time: bigs/seed_0 has two fine-tuning attempts.
  attempts = collect.read_jsonl(jobs["bigs/seed_0"].directory / "attempts.jsonl")
  assert [a["stage"] for a in attempts] == ["pretrain", "finetune", "finetune"]

  again = FakeLmlab()
  report = runner.run_study(str(EXAMPLE), quick=True, out_dir=tmp_path, executor=again, log=_quiet)
  assert again.calls == [] and sorted(report.skipped) == sorted(jobs)


def test_collect_reads_lmlab_files(tmp_path):
  study = config.load_study(EXAMPLE).quick_version()
  job = plan.build_plan(study, tmp_path, study_dir=EXAMPLE.parent)[3]  # bigs/seed_1
  fake = FakeLmlab()
  for command in (job.pretrain_command, job.finetune_command):
    job.directory.mkdir(parents=True, exist_ok=True)
    fake(command, job.directory / "x.log", REPO_ROOT)
  with open(job.pretrain_dir / "metrics.jsonl", "a") as f:
    f.write('{"step": 6, "train/lo')  # a torn last line is ignored
  result = collect.collect_job(job)
  assert result["pretrain"]["curves"] == {"train": [[2, 6.0], [4, 4.0]], "eval": [[4, 4.5]]}
  assert result["pretrain"]["final_loss"] == 4.5 and result["pretrain"]["final_loss_split"] == "eval"
  assert result["pretrain"]["tokens"] == 4 * 8 * 32
  assert result["finetune"]["task_main"] == {"toy": 51.0} and result["finetune"]["average"] == 51.0


# ---------------------------------------------------------------------------
# Statistics, table, plots from synthetic results
# ---------------------------------------------------------------------------


def synthetic_results() -> list[dict]:
  """Three seeds of two arms, two tasks, with distinct numbers everywhere."""
  rng = np.random.default_rng(1)
  results = []
  for arm, offset in (("bert", 0.0), ("bigs", 0.3)):
    for seed in range(3):
      curve = [[s, 9.0 - 0.5 * s + offset + 0.1 * rng.random()] for s in (10, 20, 30)]
      main = {"toy": 60 + 10 * rng.random(), "other": 70 + 10 * rng.random()}
      results.append({
          "arm": arm, "seed": seed,
          "pretrain": {"final_step": 30, "tokens": 30 * 256, "final_loss": curve[-1][1] - 0.2,
                       "final_loss_split": "eval",
                       "curves": {"train": curve, "eval": [[30, curve[-1][1] - 0.2]]},
                       "wall_seconds": 100 + 10 * rng.random()},
          "finetune": {"scores": {t: [{"seed": 0, "main": v, "metrics": {}}] for t, v in main.items()},
                       "task_main": main, "average": sum(main.values()) / 2,
                       "wall_seconds": 50.0},
          "wall_seconds": 150.0 + seed,
      })
  return results


def numpy_bootstrap(values, resamples=10000, seed=0):
  """The percentile bootstrap of the mean, computed directly."""
  values = np.asarray(values, dtype=np.float64)
  rng = np.random.default_rng(seed)
  means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
  return values.mean(), np.quantile(means, 0.025), np.quantile(means, 0.975)


def test_table_numbers_match_numpy(tmp_path):
  results = synthetic_results()
  summary = stats.summarize(results, ["bert", "bigs", "absent"])
  assert list(summary) == ["bert", "bigs"]
  study = config.load_study(EXAMPLE).to_json()
  paths = table.write_results(tmp_path, study, summary, results, quick=False, plots=["a.png"])
  md = paths["md"].read_text()
  for arm in ("bert", "bigs"):
    runs = [r for r in results if r["arm"] == arm]
    checks = [("final_loss", [r["pretrain"]["final_loss"] for r in runs], 4),
              ("average", [r["finetune"]["average"] for r in runs], 2),
              ("wall_seconds", [r["wall_seconds"] for r in runs], 1)]
    checks += [(("tasks", t), [r["finetune"]["task_main"][t] for r in runs], 2)
               for t in ("toy", "other")]
    for key, values, digits in checks:
      est = summary[arm][key[0]][key[1]] if isinstance(key, tuple) else summary[arm][key]
      mean, low, high = numpy_bootstrap(values)
      np.testing.assert_allclose([est["mean"], est["low"], est["high"]], [mean, low, high])
      assert f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]" in md
  stored = json.loads(paths["json"].read_text())
  assert stored["summary"]["bigs"]["average"]["mean"] == summary["bigs"]["average"]["mean"]
  assert "| arm | n | final eval loss | toy (main) | other (main) | task average |" in md
  assert "**Claim.**" in md and "![a.png](a.png)" in md


def test_plots_written(tmp_path):
  results = synthetic_results()
  names = plots.write_plots(tmp_path, results, stats.summarize(results, ["bert", "bigs"]))
  assert names == [plots.LOSS_PLOT, plots.COMPUTE_PLOT]
  for name in names:
    data = (tmp_path / name).read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5000


# ---------------------------------------------------------------------------
# End to end: the example study's --quick mode through the real lmlab CLI
# ---------------------------------------------------------------------------


def _toy_task(directory: pathlib.Path) -> list[str]:
  """A tiny sentiment CSV task (FileTask) and the --binding flags that fine-tune on it."""
  directory.mkdir(parents=True, exist_ok=True)
  pos, neg = ["a warm funny film", "great acting", "i loved it"], ["it drags", "a dull mess", "boring"]
  for name, n in (("train.csv", 32), ("dev.csv", 16)):
    rows = [f"{(pos if i % 2 else neg)[i % 3]},{'pos' if i % 2 else 'neg'}" for i in range(n)]
    (directory / name).write_text("sentence,label\n" + "\n".join(rows) + "\n")
  bindings = {"FinetuneConfig.file_tasks": "[@FileTask()]", "FileTask.name": "toy",
              "FileTask.train": str(directory / "train.csv"),
              "FileTask.validation": str(directory / "dev.csv"),
              "FileTask.label_names": ["neg", "pos"]}
  return ["--binding", "Study.finetune_tasks = ['toy']",
          "--binding", f"Study.finetune_bindings = {bindings!r}"]


@pytest.mark.slow
def test_quick_study_end_to_end(tmp_path):
  out = tmp_path / "out"
  command = [sys.executable, str(EXPERIMENTS / "run.py"), "bigs_vs_bert", "--quick", "--out",
             str(out), "--parallel", "2", *_toy_task(tmp_path / "toy")]
  # One CPU device (not the suite's eight fake ones): a quarter less compile time per run.
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
             XLA_FLAGS="")
  first = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                         timeout=600, check=False)
  assert first.returncode == 0, first.stdout + first.stderr
  results_dir = out / "results"
  stored = json.loads((results_dir / "results.json").read_text())
  assert sorted((r["arm"], r["seed"]) for r in stored["runs"]) == [
      ("bert", 0), ("bert", 1), ("bigs", 0), ("bigs", 1)]
  md = (results_dir / "results.md").read_text()
  for arm in ("bert", "bigs"):
    s = stored["summary"][arm]
    assert s["tokens"]["mean"] == 12 * 8 * 32
    assert table.cell(s["final_loss"], 4) in md and table.cell(s["tasks"]["toy"]) in md
    assert table.cell(s["average"]) in md
  for name in (plots.LOSS_PLOT, plots.COMPUTE_PLOT):
    assert (results_dir / name).read_bytes().startswith(PNG_MAGIC)

  second = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
  assert second.returncode == 0, second.stdout + second.stderr
  assert second.stdout.count("[skip]") == 4 and "[run]" not in second.stdout


# ---------------------------------------------------------------------------
# Measures, baselines, seed variance, equal wall-clock
# ---------------------------------------------------------------------------

PAIRED_STUDY = """
Study.name = 'paired'
Study.arms = [@base/Arm(), @new/Arm()]
base/Arm.name = 'base'
base/Arm.gin_files = ['runs/quickstart.gin']
new/Arm.name = 'new'
new/Arm.gin_files = ['runs/quickstart.gin']
new/Arm.baseline = 'base'
Study.pretrain_seeds = [0, 1, 2]
Study.finetune_tasks = []
Study.measure_script = 'measure.py'
Study.report_metrics = ['measure/size', 'eval/accuracy']
"""


class FakeWithMeasures(FakeLmlab):
  """FakeLmlab plus the measure script's output (size = 100 x seed, +1000 on the 'new' arm)."""

  def __call__(self, command, log_path, cwd):
    out = next((a for a in command if a.startswith("--out=")), None)
    if out is None:
      return super().__call__(command, log_path, cwd)
    out = pathlib.Path(out.split("=", 1)[1])
    seed = int(out.parent.name.split("_")[1])
    self.calls.append((str(out), "measure"))
    out.write_text(json.dumps({"size": 100.0 * seed + (1000 if out.parent.parent.name == "new" else 0),
                               "note": "not a number"}))
    return 0


def _study_dir(tmp_path, text: str, measure: bool = True) -> pathlib.Path:
  folder = tmp_path / "study"
  folder.mkdir()
  (folder / "study.gin").write_text(text)
  if measure:
    (folder / "measure.py").write_text("raise SystemExit('the fake executor never runs this')\n")
  return folder


def test_pretraining_only_study_with_measures_and_paired_baseline(tmp_path):
  folder = _study_dir(tmp_path, PAIRED_STUDY)
  fake = FakeWithMeasures()
  report = runner.run_study(str(folder), out_dir=tmp_path / "out", executor=fake, log=_quiet)
  assert not report.failed
  assert sorted(mode for _, mode in fake.calls) == ["measure"] * 6 + ["train"] * 6  # no fine-tuning
  stored = json.loads(report.files["json"].read_text())
  runs = {(r["arm"], r["seed"]): r for r in stored["runs"]}
  assert runs[("new", 2)]["metrics"]["measure/size"] == 1200.0
  assert "measure/note" not in runs[("new", 2)]["metrics"]  # non-numbers are dropped
  assert runs[("new", 2)]["finetune"] is None
  summary = stored["summary"]
  assert summary["new"]["baseline"] == "base" and "vs_baseline" not in summary["base"]
  diff = summary["new"]["vs_baseline"]
  # The fake's eval loss is 5.5 - seed on both arms: the paired difference is exactly 0.
  assert diff["final_loss"]["values"] == [0.0, 0.0, 0.0]
  assert diff["measure/size"]["mean"] == 1000.0 and diff["measure/size"]["low"] == 1000.0
  mean, low, high = numpy_bootstrap([0.0, 100.0, 200.0])
  est = summary["base"]["metrics"]["measure/size"]
  np.testing.assert_allclose([est["mean"], est["low"], est["high"]], [mean, low, high])
  md = report.files["md"].read_text()
  assert "| arm | n | final eval loss | measure/size | eval/accuracy | steps |" in md
  assert "| new | base | 3 | 0.0000 [0.0000, 0.0000] | 1,000 [1,000, 1,000] |" in md
  assert "task average" not in md and plots.COMPUTE_PLOT not in report.files
  assert (report.files[plots.METRICS_PLOT]).read_bytes().startswith(PNG_MAGIC)


def test_study_definition_errors(tmp_path):
  folder = _study_dir(tmp_path, PAIRED_STUDY.replace("new/Arm.baseline = 'base'",
                                                     "new/Arm.baseline = 'gone'"))
  with pytest.raises(config.StudyError, match="baseline 'gone'"):
    config.load_study(folder / "study.gin")
  with pytest.raises(config.StudyError, match="'loss' must be 'eval/<name>'"):
    config.load_study(folder / "study.gin", ["new/Arm.baseline = None",
                                             "Study.report_metrics = ['loss']"])
  (folder / "measure.py").unlink()
  study = config.load_study(folder / "study.gin", ["new/Arm.baseline = None"])
  with pytest.raises(config.StudyError, match="measure_script 'measure.py' is not a file"):
    plan.build_plan(study, tmp_path, study_dir=folder)


def test_variance_components_match_anova_sums_of_squares():
  rng = np.random.default_rng(3)
  grid = rng.normal(size=(5, 1)) * 2.0 + rng.normal(size=(5, 3)) * 0.5 + 70.0
  p, f = grid.shape
  grand, row_means = grid.mean(), grid.mean(axis=1)
  ss_between = f * ((row_means - grand) ** 2).sum()
  ss_within = ((grid - row_means[:, None]) ** 2).sum()
  ms_between, ms_within = ss_between / (p - 1), ss_within / (p * (f - 1))
  comp = stats.variance_components(grid)
  np.testing.assert_allclose(comp["finetune_var"], ms_within)
  np.testing.assert_allclose(comp["pretrain_var"], (ms_between - ms_within) / f)
  # Only fine-tuning noise (identical checkpoints): the pretraining share is ~0;
  # only pretraining differences (identical fine-tunes): it is 1.
  noise = np.tile(np.array([[0.0, 1.0, -1.0]]), (5, 1))
  assert stats.variance_components(noise)["pretrain_fraction"] == 0.0
  shift = np.tile(np.arange(5.0)[:, None], (1, 3)) + np.array([0.0, 0.1, 0.2])
  assert stats.variance_components(shift)["pretrain_fraction"] > 0.99
  decomposed = stats.variance_decomposition(grid, num_resamples=500)
  assert decomposed["pretrain_fraction_low"] <= decomposed["pretrain_fraction"] <= \
      decomposed["pretrain_fraction_high"]


def test_seed_variance_section_from_a_seed_grid(tmp_path):
  rng = np.random.default_rng(0)
  results = []
  for seed in range(4):
    offset = rng.normal() * 3
    scores = {t: [{"seed": s, "main": 60 + offset + rng.normal(), "metrics": {}} for s in range(3)]
              for t in ("toy", "other")}
    task_main = {t: float(np.mean([e["main"] for e in v])) for t, v in scores.items()}
    results.append({"arm": "bert", "seed": seed,
                    "pretrain": {"final_step": 3, "tokens": 3, "final_loss": 5.0,
                                 "final_loss_split": "eval", "curves": {"train": [], "eval": []},
                                 "wall_seconds": 1.0},
                    "metrics": {},
                    "finetune": {"scores": scores, "task_main": task_main,
                                 "average": float(np.mean(list(task_main.values()))),
                                 "wall_seconds": 1.0},
                    "wall_seconds": 2.0})
  summary = stats.summarize(results, ["bert"])
  variance = summary["bert"]["seed_variance"]
  assert list(variance) == ["toy", "other", stats.AVERAGE]
  grid = np.array([[e["main"] for e in r["finetune"]["scores"]["toy"]] for r in results])
  np.testing.assert_allclose(variance["toy"]["pretrain_var"],
                             stats.variance_components(grid)["pretrain_var"])
  md = table.markdown({"name": "x", "arms": [{"name": "bert"}], "pretrain_seeds": [0, 1, 2, 3],
                       "finetune_seeds": [0, 1, 2], "finetune_tasks": ["toy", "other"]},
                      summary, results, quick=False, plots=[])
  v = variance["toy"]
  assert (f"| bert | toy | 4 x 3 | {np.sqrt(v['pretrain_var']):.2f} | "
          f"{np.sqrt(v['finetune_var']):.2f} |") in md


WALL_CLOCK_STUDY = """
Study.name = 'timed'
Study.arms = [@a/Arm(), @b/Arm()]
a/Arm.name = 'a'
a/Arm.gin_files = ['runs/quickstart.gin']
b/Arm.name = 'b'
b/Arm.gin_files = ['runs/quickstart.gin']
Study.pretrain_seeds = [0, 1]
Study.finetune_tasks = []
Study.wall_clock_seconds = 30
Study.calibration_steps = 40
"""


class FakeTimedLmlab(FakeLmlab):
  """Calibration runs log timed windows: arm 'a' runs 2 steps/s, arm 'b' 5 (after a slow first window)."""

  def __call__(self, command, log_path, cwd):
    model_dir = pathlib.Path(next(a for a in command if a.startswith("--gin.MODEL_DIR="))
                             .split("=", 1)[1].strip("'"))
    if model_dir.parent.name != "calibration":
      return super().__call__(command, log_path, cwd)
    self.calls.append((str(model_dir), "calibration"))
    assert "--gin.TRAIN_STEPS=40" in command and "--gin.TrainConfig.log_every=10" in command
    rate = 2.0 if model_dir.parent.parent.name == "a" else 5.0
    model_dir.mkdir(parents=True)
    with open(model_dir / "metrics.jsonl", "w") as f:
      for i, step in enumerate((10, 20, 30, 40)):
        f.write(json.dumps({"step": step, "time": 1000.0 + 60 * (i > 0) + (step - 10) / rate,
                            "train/loss": 5.0}) + "\n")
    return 0


def test_equal_wall_clock_calibrates_each_arm_once(tmp_path):
  folder = _study_dir(tmp_path, WALL_CLOCK_STUDY, measure=False)
  fake = FakeTimedLmlab()
  report = runner.run_study(str(folder), out_dir=tmp_path / "out", executor=fake, log=_quiet,
                            parallel=2)
  assert not report.failed
  assert sorted(d for d, mode in fake.calls if mode == "calibration") == [
      str(tmp_path / "out" / "runs" / arm / "calibration" / "run") for arm in ("a", "b")]
  stored = json.loads(report.files["json"].read_text())
  for run in stored["runs"]:
    expected = {"a": 60, "b": 150}[run["arm"]]  # 30 s x the rate after the first window
    assert run["pretrain"]["calibration"]["train_steps"] == expected
    assert run["pretrain"]["calibration"]["steps_per_second"] == pytest.approx(
        {"a": 2.0, "b": 5.0}[run["arm"]])
  again = FakeTimedLmlab()
  for job in report.jobs:
    job.result_path.unlink()
    command = execute.pretrain_command(job, again, REPO_ROOT, _quiet)
    steps = {"a": 60, "b": 150}[job.arm]
    assert command[-2:] == [f"--gin.TRAIN_STEPS={steps}",
                            "--gin.TrainConfig.time_budget_seconds=30.0"]
  assert again.calls == []  # calibration.json is reused


def test_readme_section_is_replaced_and_hand_text_kept(tmp_path):
  readme = tmp_path / "README.md"
  readme.write_text("# My study\n\nDiscussion written by hand.\n")
  table.update_readme(readme, "# Study: x\n\n| a |\n\n![loss_curves.png](loss_curves.png)\n")
  first = readme.read_text()
  assert first.startswith("# My study\n\nDiscussion written by hand.\n\n" + table.README_START)
  assert "## Study: x" in first and "![loss_curves.png](results/loss_curves.png)" in first
  readme.write_text(first + "\nA note after the results.\n")
  table.update_readme(readme, "# Study: y\n")
  second = readme.read_text()
  assert "Study: x" not in second and "## Study: y" in second
  assert second.count(table.README_START) == 1 and second.endswith("A note after the results.\n")
  assert "Discussion written by hand." in second


# Each study's measure script, calibration or seed grid, through the real CLI
# (--quick, two arms or one): the reported numbers exist and make sense.
QUICK_STUDIES = {
    "mrt5_deletion": (["byt5", "mrt5_50"], ["eval/deletion_rate", "measure/hard_deletion_rate",
                                            "measure/encoder_speedup"]),
    "bitnet_vs_float": (["float_128", "bitnet_128"], ["measure/linear_served_bytes",
                                                      "measure/packed_logits_max_abs_diff"]),
    "recipes_wall_clock": (["crammed"], []),
    "multiberts_seeds": (["bert"], []),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(QUICK_STUDIES))
def test_each_study_quick(tmp_path, name):
  arms, metrics = QUICK_STUDIES[name]
  out = tmp_path / "out"
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
             XLA_FLAGS="")
  proc = subprocess.run([sys.executable, str(EXPERIMENTS / "run.py"), name, "--quick", "--out",
                         str(out), "--only", ",".join(arms)], cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  stored = json.loads((out / "results" / "results.json").read_text())
  runs = {r["arm"]: r for r in stored["runs"]}
  assert sorted(runs) == sorted(arms)
  md = (out / "results" / "results.md").read_text()
  for metric in metrics:
    assert metric in md
  if name == "mrt5_deletion":
    gated = runs["mrt5_50"]["metrics"]
    assert 0.0 < gated["measure/hard_deletion_rate"] < 1.0 and gated["measure/encoder_speedup"] > 0
    assert runs["byt5"]["metrics"]["measure/encoder_speedup"] == 1.0
    assert stored["summary"]["mrt5_50"]["baseline"] == "byt5"
  if name == "bitnet_vs_float":
    packed = runs["bitnet_128"]["metrics"]
    assert packed["measure/packed_logits_max_abs_diff"] == 0.0  # packing is exact
    assert packed["measure/linear_float_bytes"] / packed["measure/linear_served_bytes"] > 15
    assert runs["float_128"]["metrics"]["measure/linear_compression"] == 1.0
  if name == "recipes_wall_clock":
    calibration = runs["crammed"]["pretrain"]["calibration"]
    assert calibration["budget_seconds"] == 5.0 and calibration["train_steps"] >= 1
    assert runs["crammed"]["pretrain"]["final_step"] <= calibration["train_steps"]
  if name == "multiberts_seeds":
    variance = stored["summary"]["bert"]["seed_variance"]
    assert variance["offline_translation"]["pretrain_seeds"] == 2
    assert variance["offline_translation"]["finetune_seeds"] == 2
    assert "Seed variance" in md
  # --out keeps the study's README as it is.
  readme = EXPERIMENTS / name / "README.md"
  assert not readme.exists() or str(out) not in readme.read_text()
