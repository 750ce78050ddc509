#!/usr/bin/env bash
# Starts N copies of a program as the ranks of one data-parallel job on this machine, the way
# torchrun does, without Python:
#
#   bash tools/launch.sh -n 2 build/examples/10_data_parallel [args...]
#
# Each copy gets MASTER_ADDR (127.0.0.1 unless set), MASTER_PORT (a free port unless set), RANK,
# WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE; torchkit::gloo_group_from_environment() reads them.
# Output lines are prefixed with the rank ("[1] ...") unless --no-prefix is given.
#
# The launcher waits for every rank. When one exits with a failure, it stops the others (SIGTERM,
# then SIGKILL after 5 s) and exits with that rank's status; when all succeed it exits 0. With
# --timeout S it stops every rank after S seconds and exits 124. Ctrl-C / SIGTERM stop them all.
# Nothing is left running in any case.
#
# Several machines: run the program on each with the variables set by hand (or by your
# scheduler), e.g. on 2 machines of 4 processes each, rank r of node k (k = 0, 1; r = 0..3):
#   MASTER_ADDR=<node 0's address> MASTER_PORT=29500 WORLD_SIZE=8 RANK=$((4*k + r)) \
#   LOCAL_RANK=$r LOCAL_WORLD_SIZE=4 ./program
set -uo pipefail

usage() {
  echo "usage: $0 -n N [--timeout SECONDS] [--no-prefix] [--] program [args...]" >&2
  exit 2
}

nproc_per_job=""
timeout_s=""
prefix=1
while (($# > 0)); do
  case "$1" in
    -n | --nproc) [[ $# -ge 2 ]] || usage; nproc_per_job="$2"; shift 2 ;;
    --timeout) [[ $# -ge 2 ]] || usage; timeout_s="$2"; shift 2 ;;
    --no-prefix) prefix=0; shift ;;
    -h | --help) usage ;;
    --) shift; break ;;
    -*) echo "$0: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
(($# > 0)) || usage
if ! [[ "$nproc_per_job" =~ ^[1-9][0-9]*$ ]]; then
  echo "$0: -n needs a process count >= 1, got '${nproc_per_job}'" >&2
  exit 2
fi
if [[ -n "$timeout_s" ]] && ! [[ "$timeout_s" =~ ^[1-9][0-9]*$ ]]; then
  echo "$0: --timeout needs a whole number of seconds >= 1, got '${timeout_s}'" >&2
  exit 2
fi

# A port nothing listens on: random in [20000, 60000), checked against the listening TCP
# sockets in /proc/net/tcp{,6} (state 0A). Rank 0's store binds it a moment later.
listening_ports() {
  local file hex
  for file in /proc/net/tcp /proc/net/tcp6; do
    [[ -r "$file" ]] || continue
    while read -r hex; do
      echo $((16#$hex))
    done < <(awk 'NR > 1 && $4 == "0A" { n = split($2, a, ":"); print a[n] }' "$file")
  done
}
free_port() {
  local used port tries
  used=" $(listening_ports | tr '\n' ' ') "
  for tries in $(seq 1 100); do
    port=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
    if [[ "$used" != *" $port "* ]]; then
      echo "$port"
      return 0
    fi
  done
  echo "$0: found no free port" >&2
  return 1
}

export MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
if [[ -z "${MASTER_PORT:-}" ]]; then
  MASTER_PORT=$(free_port) || exit 1
fi
export MASTER_PORT
export WORLD_SIZE="$nproc_per_job"
export LOCAL_WORLD_SIZE="$nproc_per_job"

# Each rank runs in a session (and process group) of its own (setsid), so that stopping a rank
# stops whatever it started too.
pids=()
stop_all() {
  local pid killer
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null; done
  # SIGKILL for whatever is still there after 5 s; the wait reaps the ranks.
  (
    trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
    sleep 5 &
    sleeper=$!
    wait "$sleeper" && for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null; done
  ) &
  killer=$!
  wait "${pids[@]}" 2>/dev/null
  kill "$killer" 2>/dev/null
  wait "$killer" 2>/dev/null
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null; done  # anything that ignored SIGTERM
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM

for ((rank = 0; rank < nproc_per_job; ++rank)); do
  if ((prefix)); then
    # The program's pid is the one waited for; its output goes through sed for the prefix
    # (process substitution: sed is not in the list of ranks and ends with the rank's output).
    RANK=$rank LOCAL_RANK=$rank setsid "$@" > >(sed -u "s/^/[$rank] /") 2> >(sed -u "s/^/[$rank] /" >&2) &
  else
    RANK=$rank LOCAL_RANK=$rank setsid "$@" &
  fi
  pids+=($!)
done

watchdog=""
if [[ -n "$timeout_s" ]]; then
  launcher=$$
  (
    trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
    sleep "$timeout_s" &
    sleeper=$!
    wait "$sleeper" && kill -USR1 "$launcher" 2>/dev/null
  ) &
  watchdog=$!
  trap 'echo "$0: --timeout ${timeout_s} s passed; stopping every rank" >&2; stop_all; exit 124' USR1
fi

status=0
declare -A running  # pid -> rank
for i in "${!pids[@]}"; do running[${pids[$i]}]=$i; done
while ((${#running[@]} > 0)); do
  finished=""
  wait -n -p finished "${!running[@]}"
  code=$?
  if [[ -z "$finished" ]]; then
    continue  # a trap interrupted the wait
  fi
  rank_of_pid=${running[$finished]}
  unset "running[$finished]"
  if ((code != 0)); then
    echo "$0: rank ${rank_of_pid} exited with status ${code}; stopping the other ranks" >&2
    status=$code
    stop_all
    break
  fi
done
[[ -n "$watchdog" ]] && kill "$watchdog" 2>/dev/null
wait 2>/dev/null
exit "$status"
