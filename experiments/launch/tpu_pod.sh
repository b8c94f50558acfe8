#!/usr/bin/env bash
# Pretrain with lmlab on a Cloud TPU VM slice (single host or pod) from your
# workstation, using only `gcloud` and `git`.
#
# How JAX runs on a TPU pod: every worker VM of the slice runs the very same
# command at the same time. Each process finds the others on its own (lmlab
# calls jax.distributed.initialize() with no arguments on TPU VMs), so no
# coordinator address, process count or process id is passed here.
#
# Subcommands
#   tpu_pod.sh setup                     copy (or clone) this repo onto every worker
#                                        and `pip install -e ".[tpu]"` it in a venv
#   tpu_pod.sh train [lmlab flags...]    start the same training command on every worker
#   tpu_pod.sh stop                      stop a training process started by `train`
#
# Environment
#   TPU_NAME       (required) the TPU VM name. Several names separated by spaces
#                  address the slices of one multi-slice job (see below).
#   ZONE           (required) its zone, e.g. us-central2-b.
#   PROJECT        (optional) the Google Cloud project; default: gcloud's.
#   MODEL_DIR      (required for train) run directory, shared by all workers:
#                  use a bucket, gs://BUCKET/runs/NAME. Re-running `train` with
#                  the same MODEL_DIR resumes from its newest checkpoint.
#   TFDS_DATA_DIR  (train; needed by tasks read from TFDS such as lmlab.c4_mlm,
#                  the default of runs/pretrain.gin) prepared TFDS datasets,
#                  e.g. gs://BUCKET/tensorflow_datasets.
#   GIN_FILES      (optional) gin files, space-separated, in order; default
#                  "models/bert_base.gin runs/pretrain.gin partitioning/data_parallel.gin".
#   EXTRA_ARGS     (optional) more lmlab flags, space-separated (no spaces inside
#                  one flag; pass those after `train` instead).
#   REPO_URL       (optional) git URL that workers clone; default: copy the files of
#                  this checkout (tracked and untracked, minus .gitignore'd ones).
#   REPO_REF       (optional, with REPO_URL) branch, tag or commit; default: main.
#   REMOTE_DIR     (optional) checkout folder on the workers, relative to the home
#                  directory; default: lmlab.
#   VENV_DIR       (optional) virtualenv on the workers, relative to home; default: lmlab-venv.
#   PIP_EXTRA_ARGS (optional) extra `pip install` arguments used by setup.
#   DETACH         (optional) 1: start training in the background on each worker
#                  (log in ~/lmlab-train.log there) and return at once; default 0:
#                  stream all workers' output here until training ends.
#   SSH_FLAGS      (optional) extra flags for `gcloud compute tpus tpu-vm ssh/scp`,
#                  e.g. "--internal-ip" or "--tunnel-through-iap".
#
# Example: BERT-base on C4 with FSDP on a v4-32 slice (4 workers)
#   export TPU_NAME=my-v4-32 ZONE=us-central2-b
#   export MODEL_DIR=gs://my-bucket/runs/bert_base_fsdp TFDS_DATA_DIR=gs://my-bucket/tensorflow_datasets
#   export GIN_FILES="models/bert_base.gin runs/pretrain.gin partitioning/fsdp.gin"
#   experiments/launch/tpu_pod.sh setup
#   experiments/launch/tpu_pod.sh train --gin.TRAIN_STEPS=100000 --gin.BATCH_SIZE=1024
#
# Multi-slice (several slices joined over the data-centre network, DCN)
#   The slices must be created together as one multi-slice queued resource
#   (`gcloud compute tpus queued-resources create ... --node-count=N
#   --node-prefix=PREFIX`, which names them PREFIX-0 ... PREFIX-(N-1)); the TPU
#   runtime then tells JAX how they connect. Slices created one by one cannot
#   form one job. List all slice names in TPU_NAME and tell lmlab how the mesh
#   spans the slices, e.g. data parallel across 2 slices with FSDP inside each:
#     export TPU_NAME="PREFIX-0 PREFIX-1"
#     experiments/launch/tpu_pod.sh setup
#     experiments/launch/tpu_pod.sh train --gin.MeshConfig.dcn_shape="(2, 1, 1)"
#   dcn_shape gives the (data, fsdp, tensor) factors across slices; keep the
#   slow DCN on the data axis (only gradients cross it, once per step).

set -euo pipefail

if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4))); then
  echo "tpu_pod.sh: needs bash 4.4 or newer (this is $BASH_VERSION; on macOS: brew install bash)." >&2
  exit 2
fi

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"

REMOTE_DIR="${REMOTE_DIR:-lmlab}"
VENV_DIR="${VENV_DIR:-lmlab-venv}"
LOG_FILE="lmlab-train.log"   # in the worker's home directory
PID_FILE="lmlab-train.pid"   # in the worker's home directory
DEFAULT_GIN_FILES="models/bert_base.gin runs/pretrain.gin partitioning/data_parallel.gin"

usage() {
  cat >&2 <<'EOF'
Usage:
  TPU_NAME=NAME ZONE=ZONE [PROJECT=ID] tpu_pod.sh setup
  TPU_NAME=NAME ZONE=ZONE [PROJECT=ID] MODEL_DIR=gs://BUCKET/run [TFDS_DATA_DIR=gs://BUCKET/tfds] \
      [GIN_FILES="models/bert_base.gin runs/pretrain.gin partitioning/fsdp.gin"] \
      tpu_pod.sh train [--gin.NAME=VALUE ...]
  TPU_NAME=NAME ZONE=ZONE [PROJECT=ID] tpu_pod.sh stop

setup  copies (or, with REPO_URL, clones) lmlab onto every worker and installs it.
train  runs the same `python -m lmlab.main ...` on every worker at once.
stop   stops a training process started by `train` on every worker.
See the comments at the top of this script and experiments/launch/README.md.
EOF
}

die_usage() {
  echo "tpu_pod.sh: $*" >&2
  echo >&2
  usage
  exit 2
}

# Quotes one word for a POSIX shell on the far side of ssh.
shquote() {
  local s=${1//\'/\'\\\'\'}
  printf "'%s'" "$s"
}

# Quotes every argument and joins them with spaces.
shquote_all() {
  local out="" arg
  for arg in "$@"; do
    out+="$(shquote "$arg") "
  done
  printf '%s' "${out% }"
}

gcloud_common_args() {
  local -a args=(--zone="$ZONE")
  if [[ -n "${PROJECT:-}" ]]; then
    args+=(--project="$PROJECT")
  fi
  if [[ -n "${SSH_FLAGS:-}" ]]; then
    local -a extra
    read -r -a extra <<<"$SSH_FLAGS"
    args+=("${extra[@]}")
  fi
  printf '%s\0' "${args[@]}"
}

# Runs "$@ SLICE_NAME" for every slice named in TPU_NAME, all at once; fails if any failed.
for_each_slice() {
  local name pid status=0
  local -a pids=()
  for name in "${TPU_NAMES[@]}"; do
    "$@" "$name" &
    pids+=("$!")
  done
  for pid in "${pids[@]}"; do
    wait "$pid" || status=$?
  done
  return "$status"
}

ssh_slice() {  # SCRIPT SLICE_NAME: run SCRIPT on every worker of the slice
  local -a common
  mapfile -d '' -t common < <(gcloud_common_args)
  gcloud compute tpus tpu-vm ssh "$2" "${common[@]}" --worker=all --command="bash -c $(shquote "$1")"
}

scp_slice() {  # LOCAL_PATH REMOTE_PATH SLICE_NAME: copy a file to every worker of the slice
  local -a common
  mapfile -d '' -t common < <(gcloud_common_args)
  gcloud compute tpus tpu-vm scp "$1" "$3:$2" "${common[@]}" --worker=all
}

# Runs a shell script on all workers of all slices named in TPU_NAME, at once.
run_on_all_workers() { for_each_slice ssh_slice "$1"; }

copy_to_all_workers() { for_each_slice scp_slice "$1" "$2"; }

cmd_setup() {
  local get_code
  if [[ -n "${REPO_URL:-}" ]]; then
    local ref="${REPO_REF:-main}"
    echo "tpu_pod.sh: cloning $REPO_URL ($ref) on every worker" >&2
    get_code="
      if [ ! -d $(shquote "$REMOTE_DIR")/.git ]; then
        git clone --quiet $(shquote "$REPO_URL") $(shquote "$REMOTE_DIR")
      fi
      git -C $(shquote "$REMOTE_DIR") fetch --quiet origin $(shquote "$ref")
      git -C $(shquote "$REMOTE_DIR") checkout --quiet --force FETCH_HEAD
      echo \"\$(hostname): lmlab at \$(git -C $(shquote "$REMOTE_DIR") rev-parse --short HEAD)\""
  else
    echo "tpu_pod.sh: copying $REPO_ROOT to every worker" >&2
    TARBALL="$(mktemp "${TMPDIR:-/tmp}/lmlab-src.XXXXXX")"
    trap 'rm -f "$TARBALL"' EXIT
    # Tracked and untracked files, without what .gitignore excludes (venvs,
    # build outputs) and without tracked files deleted in the work tree.
    git -C "$REPO_ROOT" ls-files -z --cached --others --exclude-standard |
      while IFS= read -r -d '' f; do
        if [[ -e "$REPO_ROOT/$f" ]]; then printf '%s\0' "$f"; fi
      done |
      tar -C "$REPO_ROOT" --null -T - -czf "$TARBALL"
    copy_to_all_workers "$TARBALL" "lmlab-src.tar.gz"
    get_code="
      mkdir -p $(shquote "$REMOTE_DIR")
      tar -xzf lmlab-src.tar.gz -C $(shquote "$REMOTE_DIR")
      rm -f lmlab-src.tar.gz"
  fi

  local script
  script="set -euo pipefail
    cd \"\$HOME\"
    $get_code
    if [ ! -x $(shquote "$VENV_DIR")/bin/python ]; then
      if ! python3 -m venv $(shquote "$VENV_DIR"); then
        # Some TPU VM images ship python3 without the venv module.
        sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv
        rm -rf $(shquote "$VENV_DIR")
        python3 -m venv $(shquote "$VENV_DIR")
      fi
    fi
    $(shquote "$VENV_DIR")/bin/python -m pip install --quiet --upgrade pip
    cd $(shquote "$REMOTE_DIR")
    \"\$HOME\"/$(shquote "$VENV_DIR")/bin/python -m pip install --quiet -e '.[tpu]' ${PIP_EXTRA_ARGS:-}
    echo \"\$(hostname): installed lmlab with jax \$(\"\$HOME\"/$(shquote "$VENV_DIR")/bin/python -c 'import jax; print(jax.__version__)')\""
  run_on_all_workers "$script"
}

cmd_train() {
  [[ -n "${MODEL_DIR:-}" ]] || die_usage "MODEL_DIR is not set (use a bucket shared by all workers, gs://...)."
  if [[ "$MODEL_DIR" != gs://* ]]; then
    echo "tpu_pod.sh: warning: MODEL_DIR=$MODEL_DIR is not a gs:// bucket; on a pod every" \
      "worker must see the same directory (checkpoints are written by all of them)." >&2
  fi
  if [[ -z "${TFDS_DATA_DIR:-}" ]]; then
    echo "tpu_pod.sh: warning: TFDS_DATA_DIR is not set; tasks read from TFDS" \
      "(lmlab.c4_mlm, the default) will not find their data." >&2
  fi

  local -a gin_files extra args=()
  read -r -a gin_files <<<"${GIN_FILES:-$DEFAULT_GIN_FILES}"
  for f in "${gin_files[@]}"; do
    args+=("--gin_file=$f")
  done
  # Gin strings need inner quotes: --gin.MODEL_DIR="gs://...".
  args+=("--gin.MODEL_DIR=\"$MODEL_DIR\"")
  if [[ -n "${TFDS_DATA_DIR:-}" ]]; then
    args+=("--tfds_data_dir=$TFDS_DATA_DIR")
  fi
  read -r -a extra <<<"${EXTRA_ARGS:-}"
  args+=("${extra[@]}" "$@")

  local lmlab_cmd
  lmlab_cmd="python -m lmlab.main $(shquote_all "${args[@]}")"
  echo "tpu_pod.sh: on every worker of ${TPU_NAMES[*]}:" >&2
  echo "  $lmlab_cmd" >&2

  local launch
  if [[ "${DETACH:-0}" == 1 ]]; then
    launch="nohup $lmlab_cmd >\"\$HOME\"/$LOG_FILE 2>&1 </dev/null &
      echo \$! >\"\$HOME\"/$PID_FILE
      echo \"\$(hostname): started pid \$!, log in ~/$LOG_FILE\""
  else
    # exec keeps the pid written here, so `stop` can find the process.
    launch="echo \$\$ >\"\$HOME\"/$PID_FILE
      exec $lmlab_cmd"
  fi
  local script
  script="set -euo pipefail
    source \"\$HOME\"/$(shquote "$VENV_DIR")/bin/activate
    cd \"\$HOME\"/$(shquote "$REMOTE_DIR")
    $launch"
  run_on_all_workers "$script"
}

cmd_stop() {
  local script="
    pid_file=\"\$HOME\"/$PID_FILE
    if [ -f \"\$pid_file\" ] && kill \"\$(cat \"\$pid_file\")\" 2>/dev/null; then
      echo \"\$(hostname): stopped pid \$(cat \"\$pid_file\")\"
    else
      echo \"\$(hostname): no running lmlab training process\"
    fi
    rm -f \"\$pid_file\""
  run_on_all_workers "$script"
}

main() {
  local subcommand=${1:-}
  case "$subcommand" in
    setup | train | stop) shift ;;
    -h | --help | help) usage; exit 0 ;;
    "") die_usage "missing subcommand." ;;
    *) die_usage "unknown subcommand '$subcommand'." ;;
  esac
  [[ -n "${TPU_NAME:-}" ]] || die_usage "TPU_NAME is not set."
  [[ -n "${ZONE:-}" ]] || die_usage "ZONE is not set."
  command -v gcloud >/dev/null || die_usage "gcloud is not installed (https://cloud.google.com/sdk)."
  read -r -a TPU_NAMES <<<"$TPU_NAME"

  case "$subcommand" in
    setup) cmd_setup ;;
    train) cmd_train "$@" ;;
    stop) cmd_stop ;;
  esac
}

main "$@"
