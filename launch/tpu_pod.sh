#!/usr/bin/env bash
# Run one t5scale command on every host of a Cloud TPU VM slice; re-create the slice and rerun after a
# preemption (the run resumes from its gs:// MODEL_DIR). Run it from a laptop, a login node or a small VM.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_pod.sh --name NAME --zone ZONE --accelerator TYPE [options] -- COMMAND...

Creates the TPU VM slice NAME (or a queued resource for it), installs t5scale on every
worker, runs COMMAND on all of them at once (gcloud ... ssh --worker=all), and deletes
the slice when COMMAND succeeds. If the slice is preempted (state PREEMPTED/TERMINATED,
or the queued resource SUSPENDED/FAILED) it is deleted, created again and COMMAND rerun:
MODEL_DIR must be on gs:// so the rerun resumes from the last checkpoint.
Logs: LOG_DIR/worker_<i>.log per worker (and all.log, everything in order).

Required:
  --name NAME            slice (node) name; with --runs, the prefix of each run's slice
  --zone ZONE            e.g. us-central2-b
  --accelerator TYPE     e.g. v4-32, v5litepod-16, v5p-64, v6e-16
Options:
  --version VERSION      TPU software (runtime) version; default from TYPE: v6e -> v2-alpha-tpuv6e,
                         v5p -> v2-alpha-tpuv5, v5litepod/v5e -> v2-alpha-tpuv5-lite, v2-v4 -> tpu-ubuntu2204-base
  --project PROJECT      GCP project (default: gcloud's configured one)
  --queued               create through a queued resource (waits in the queue for capacity)
  --spot                 spot capacity (preemptible; cheaper)
  --install SPEC         what each worker installs: a pip requirement (default 't5scale[tpu]'), a local
                         wheel (copied to every worker) or a gs:// wheel; wheels get the [tpu] extra
  --max-restarts N       re-create and rerun at most N times after preemptions (default 20)
  --runs N               a sweep: run i of 0..N-1 gets its own slice NAME-i and COMMAND --run_index=i,
                         all at once; logs in LOG_DIR/NAME-i/
  --log-dir DIR          default logs/tpu_pod/NAME
  --keep                 keep the slice when COMMAND has finished
  --dry-run              print every command (gcloud included) instead of running it; a dry run
                         assumes the slice does not exist yet and every command succeeds
  -h, --help             this help

Example:
  launch/tpu_pod.sh --name t5-small --zone us-central2-b --accelerator v4-32 --queued --spot -- \
    t5scale train --gin_file=models/small.gin --gin_file=runs/pretrain.gin \
      --gin.MODEL_DIR="'gs://my-bucket/t5-small'"
EOF
}

die() { echo "tpu_pod.sh: $*" >&2; echo "Try 'launch/tpu_pod.sh --help'." >&2; exit 2; }

quote() {  # the arguments as one line a shell reads back into the same words
  local a out=()
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then out+=("$a")
    elif [[ $a != *[\"\$\`\\!]* ]]; then out+=("\"$a\"")
    else out+=("'${a//\'/\'\\\'\'}'"); fi
  done
  echo "${out[*]}"
}

name="" zone="" accelerator="" version="" project="" queued=0 spot=0 install="t5scale[tpu]"
max_restarts=20 runs=0 log_dir="" keep=0 dry_run=0
while (($#)); do
  case "$1" in
    --name | --zone | --accelerator | --version | --project | --install | --max-restarts | --runs | --log-dir)
      if (($# < 2)) || [[ $2 == --* ]]; then die "$1 needs a value"; fi
      case "$1" in
        --name) name=$2 ;; --zone) zone=$2 ;; --accelerator) accelerator=$2 ;; --version) version=$2 ;;
        --project) project=$2 ;; --install) install=$2 ;; --max-restarts) max_restarts=$2 ;;
        --runs) runs=$2 ;; --log-dir) log_dir=$2 ;;
      esac
      shift 2 ;;
    --queued) queued=1; shift ;;
    --spot) spot=1; shift ;;
    --keep) keep=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown argument '$1' (the command goes after --)" ;;
  esac
done
[[ -n $name ]] || die "--name is required"
[[ -n $zone ]] || die "--zone is required"
[[ -n $accelerator ]] || die "--accelerator is required (e.g. v4-32)"
(($#)) || die "no COMMAND given (put it after --, e.g. -- t5scale train --gin_file=...)"
[[ $name =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || die "--name '$name': lowercase letters, digits and '-' only"
[[ $accelerator =~ ^[a-z0-9]+-[0-9]+$ ]] || die "--accelerator '$accelerator' is not a TPU type like v4-32"
[[ $max_restarts =~ ^[0-9]+$ ]] || die "--max-restarts must be a number, not '$max_restarts'"
[[ $runs =~ ^[0-9]+$ ]] || die "--runs must be a number, not '$runs'"
if [[ -z $version ]]; then
  case "$accelerator" in
    v6e-*) version=v2-alpha-tpuv6e ;;
    v5p-*) version=v2-alpha-tpuv5 ;;
    v5litepod-* | v5e-*) version=v2-alpha-tpuv5-lite ;;
    v2-* | v3-* | v4-*) version=tpu-ubuntu2204-base ;;
    *) die "no default --version for '$accelerator'; pass --version (see Cloud TPU's 'TPU software versions')" ;;
  esac
fi
case "$install" in
  gs://* | *.whl) [[ $install == *.whl ]] || die "--install '$install': a gs:// path must be a .whl" ;;
esac
if [[ $install == *.whl && $install != gs://* && ! -f $install ]] && ((!dry_run)); then
  die "--install: no wheel at '$install'"
fi
poll_s=${T5SCALE_TPU_POLL_S:-30}  # seconds between state checks (tests set 0)
gflags=(--zone="$zone")
[[ -z $project ]] || gflags+=(--project="$project")

exec 3>&1  # a dry run prints to the real stdout, even from inside $(...)
run() {  # print a command; run it unless --dry-run
  if ((dry_run)); then quote "$@" >&3; else echo "+ $(quote "$@")" >&2; "$@"; fi
}
probe() {  # a read-only query whose output decides what happens next; a dry run prints it and answers $1
  local answer=$1; shift
  if ((dry_run)); then quote "$@" >&3; echo "$answer"; else "$@" 2>/dev/null || true; fi
}
pause() { ((dry_run)) || sleep "$poll_s"; }

# The state of slice $1: READY (a TPU VM) or ACTIVE (a queued resource) when usable, "" when it does not exist.
# A dry run answers $2 (default "").
state() {
  if ((queued)); then
    probe "${2:-}" gcloud compute tpus queued-resources describe "$1" "${gflags[@]}" --format='value(state.state)'
  else
    probe "${2:-}" gcloud compute tpus tpu-vm describe "$1" "${gflags[@]}" --format='value(state)'
  fi
}

delete() {
  if ((queued)); then
    run gcloud compute tpus queued-resources delete "$1" "${gflags[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$1" "${gflags[@]}" --quiet
  fi
}

create() {  # create slice $1 and wait until it is usable
  local spot_flag=() s
  ((!spot)) || spot_flag=(--spot)
  if ((queued)); then
    run gcloud compute tpus queued-resources create "$1" --node-id="$1" "${gflags[@]}" \
      --accelerator-type="$accelerator" --runtime-version="$version" ${spot_flag[@]+"${spot_flag[@]}"}
    local missing=0
    while s=$(state "$1" ACTIVE); [[ $s != ACTIVE ]]; do
      case "$s" in
        FAILED | SUSPENDED) echo "tpu_pod.sh: queued resource $1 is $s" >&2; return 1 ;;
        "") missing=$((missing + 1))
          if ((missing > 10)); then echo "tpu_pod.sh: queued resource $1 not found" >&2; return 1; fi ;;
      esac
      echo "queued resource $1: ${s:-not found yet}; waiting" >&2
      pause
    done
  else
    run gcloud compute tpus tpu-vm create "$1" "${gflags[@]}" --accelerator-type="$accelerator" \
      --version="$version" ${spot_flag[@]+"${spot_flag[@]}"}
  fi
}

on_all_workers() {  # slice $1, shell command $2: on every worker at once. Without --worker=all only worker 0
  run gcloud compute tpus tpu-vm ssh "$1" "${gflags[@]}" --worker=all --command="$2"  # runs: the classic hang
}

install_on() {
  local pip="python3 -m pip install --upgrade"
  case "$install" in
    gs://*) on_all_workers "$1" "gcloud storage cp $(quote "$install") /tmp/ && $pip $(quote "/tmp/${install##*/}[tpu]")" ;;
    *.whl)
      run gcloud compute tpus tpu-vm scp "$install" "$1:/tmp/" "${gflags[@]}" --worker=all
      on_all_workers "$1" "$pip $(quote "/tmp/${install##*/}[tpu]")" ;;
    *) on_all_workers "$1" "$pip $(quote "$install")" ;;
  esac
}

# Every worker runs COMMAND (args $3...) on slice $1, each line tagged with its worker number, which splits the
# interleaved output into $2/worker_<i>.log here. The worker number comes from the metadata server.
run_command() {
  local slice=$1 logs=$2; shift 2
  local remote
  # shellcheck disable=SC2016  # $HOME, $PATH, $(curl ...) and $w expand on the workers
  remote='set -o pipefail; export PATH="$HOME/.local/bin:$PATH"; '
  # shellcheck disable=SC2016
  remote+='w=$(curl -s -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number); '
  remote+="$(quote "$@") 2>&1 | sed -u \"s/^/[worker \$w] /\""
  if ((dry_run)); then on_all_workers "$slice" "$remote"; return; fi
  mkdir -p "$logs"
  on_all_workers "$slice" "$remote" 2>&1 | tee -a "$logs/all.log" | awk -v dir="$logs" '
    match($0, /^\[worker [0-9]+\] /) { f = dir "/worker_" substr($0, 9, RLENGTH - 10) ".log"
                                       print substr($0, RLENGTH + 1) >> f; fflush(f) }
    { print; fflush() }'
}

# One run on one slice: (re)create, install, run; after a preemption, again.
launch() {
  local slice=$1 logs=$2; shift 2
  local restarts=0 rc s
  while true; do
    s=$(state "$slice")
    case "$s" in
      READY | ACTIVE) echo "slice $slice is $s: reusing it" >&2 ;;
      "") create "$slice" ;;
      *) echo "slice $slice is $s: deleting it to create it again" >&2; delete "$slice"; create "$slice" ;;
    esac
    install_on "$slice"
    rc=0; run_command "$slice" "$logs" "$@" || rc=$?
    if ((rc == 0)); then
      ((keep)) || delete "$slice"
      return 0
    fi
    pause  # let a preemption show in the slice's state
    s=$(state "$slice")
    case "$s" in
      READY | ACTIVE)
        if ((rc != 255)); then echo "tpu_pod.sh: COMMAND failed (exit $rc) on $slice; kept it" >&2; return "$rc"; fi
        echo "lost the ssh connection to $slice (it is $s); rerunning" >&2 ;;
      *) echo "slice $slice is ${s:-gone} (preempted?); creating it again" >&2 ;;
    esac
    if ((restarts >= max_restarts)); then echo "tpu_pod.sh: gave up after $restarts restarts" >&2; return "$rc"; fi
    restarts=$((restarts + 1))
  done
}

[[ -n $log_dir ]] || log_dir=logs/tpu_pod/$name
kind=tpu-vm
((!queued)) || kind="queued-resources"
pids=()  # a sweep's launchers
trap 'kill ${pids[@]+"${pids[@]}"} 2>/dev/null || true; echo "tpu_pod.sh: interrupted; slices keep running (and billing)" \
  "until deleted: gcloud compute tpus $kind delete $name$( ((runs)) && echo "-<i>") $(quote "${gflags[@]}")" >&2
  exit 130' INT
if ((runs == 0)); then
  launch "$name" "$log_dir" "$@"
  exit
fi
# A sweep: run i on its own slice NAME-i, all at once (one after the other when printing a dry run).
if ((dry_run)); then
  for ((i = 0; i < runs; i++)); do launch "$name-$i" "$log_dir/$name-$i" "$@" --run_index="$i"; done
  exit 0
fi
for ((i = 0; i < runs; i++)); do
  mkdir -p "$log_dir/$name-$i"
  launch "$name-$i" "$log_dir/$name-$i" "$@" --run_index="$i" >"$log_dir/$name-$i/launcher.log" 2>&1 &
  pids+=($!)
  echo "run $i: slice $name-$i, log $log_dir/$name-$i/launcher.log"
done
failed=0
for ((i = 0; i < ${#pids[@]}; i++)); do
  wait "${pids[i]}" || { echo "tpu_pod.sh: run $i failed; see $log_dir/$name-$i/launcher.log" >&2; failed=1; }
done
exit "$failed"
