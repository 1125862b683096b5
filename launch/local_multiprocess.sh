#!/usr/bin/env bash
# N processes of one command on this machine, joined through T5SCALE_COORDINATOR on 127.0.0.1: the same
# multi-controller path as a pod, for testing. Logs per process; exits non-zero if any process fails.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/local_multiprocess.sh [options] -- COMMAND...

Runs COMMAND N times on this machine, process i with
  T5SCALE_COORDINATOR=127.0.0.1:PORT T5SCALE_NUM_PROCESSES=N T5SCALE_PROCESS_ID=i
so they join one run exactly as the hosts of a pod do (t5scale/train/distributed.py).
Output goes to LOG_DIR/process_<i>.log. If one process fails the others are stopped,
and the exit status is that process's. SIGINT/SIGTERM are forwarded to every process.

Options:
  -n, --num-processes N   how many processes (default 2)
  --port PORT             coordinator port on 127.0.0.1 (default 29500)
  --log-dir DIR           where the logs go (default ./logs/local_multiprocess)
  --dry-run               print the commands instead of running them
  -h, --help              this help

Example (2 CPU processes, each with one device, training the demo):
  JAX_PLATFORMS=cpu launch/local_multiprocess.sh -n 2 -- \
    t5scale train --gin_file=runs/demo.gin --gin.MODEL_DIR="'/tmp/demo_2proc'"
EOF
}

die() { echo "local_multiprocess.sh: $*" >&2; echo "Try 'launch/local_multiprocess.sh --help'." >&2; exit 2; }

quote() {  # the arguments as one line a shell reads back into the same words
  local a out=()
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then out+=("$a")
    elif [[ $a != *[\"\$\`\\!]* ]]; then out+=("\"$a\"")
    else out+=("'${a//\'/\'\\\'\'}'"); fi
  done
  echo "${out[*]}"
}

num_processes=2 port=29500 log_dir=logs/local_multiprocess dry_run=0
while (($#)); do
  case "$1" in
    -n | --num-processes) (($# > 1)) || die "$1 needs a value"; num_processes=$2; shift 2 ;;
    --port) (($# > 1)) || die "$1 needs a value"; port=$2; shift 2 ;;
    --log-dir) (($# > 1)) || die "$1 needs a value"; log_dir=$2; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown argument '$1' (the command goes after --)" ;;
  esac
done
(($#)) || die "no COMMAND given (put it after --)"
[[ $num_processes =~ ^[1-9][0-9]*$ ]] || die "--num-processes must be a positive integer, not '$num_processes'"
if ! [[ $port =~ ^[0-9]+$ ]] || ((port < 1 || port > 65535)); then die "--port must be a port number, not '$port'"; fi

if ((dry_run)); then
  for ((i = 0; i < num_processes; i++)); do
    echo "T5SCALE_COORDINATOR=127.0.0.1:$port T5SCALE_NUM_PROCESSES=$num_processes T5SCALE_PROCESS_ID=$i" \
      "$(quote "$@") > $(quote "$log_dir/process_$i.log") 2>&1 &"
  done
  exit 0
fi

mkdir -p "$log_dir"
pids=()
trap 'kill -TERM ${pids[@]+"${pids[@]}"} 2>/dev/null || true; wait; exit 143' TERM
trap 'kill -TERM ${pids[@]+"${pids[@]}"} 2>/dev/null || true; wait; exit 130' INT
for ((i = 0; i < num_processes; i++)); do
  T5SCALE_COORDINATOR=127.0.0.1:$port T5SCALE_NUM_PROCESSES=$num_processes T5SCALE_PROCESS_ID=$i \
    "$@" >"$log_dir/process_$i.log" 2>&1 &
  pids+=($!)
  echo "process $i: pid $!, log $log_dir/process_$i.log"
done

# Poll rather than `wait -n`, which macOS's bash 3.2 lacks. A failed process stops the others: without it they
# would wait for their peer until JAX's heartbeat timeout.
remaining=$num_processes status=0
while ((remaining)); do
  for ((i = 0; i < num_processes; i++)); do
    pid=${pids[i]}
    [[ -n $pid ]] || continue  # already reaped
    kill -0 "$pid" 2>/dev/null && continue
    rc=0; wait "$pid" || rc=$?
    pids[i]='' remaining=$((remaining - 1))
    if ((rc)) && ((status == 0)); then
      status=$rc
      echo "process $i failed (exit $rc); stopping the others. Last lines of $log_dir/process_$i.log:" >&2
      tail -n 20 "$log_dir/process_$i.log" >&2
      for p in "${pids[@]}"; do [[ -z $p ]] || kill -TERM "$p" 2>/dev/null || true; done
    fi
  done
  if ((remaining)); then sleep 0.5; fi
done
if ((status == 0)); then echo "all $num_processes processes finished; logs in $log_dir"; fi
exit "$status"
