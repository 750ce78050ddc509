#!/usr/bin/env bash
# Checks tools/launch.sh: the variables each rank gets, a failing rank's status forwarded and the
# other ranks stopped at once, --timeout, and nothing left running afterwards.
set -u
launch="$(dirname "$0")/../tools/launch.sh"
failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }

# 1. Every rank sees its own RANK and the shared variables.
out=$(bash "$launch" -n 3 --no-prefix sh -c 'echo "$RANK/$WORLD_SIZE/$LOCAL_RANK/$LOCAL_WORLD_SIZE/$MASTER_ADDR/$MASTER_PORT"' | sort)
ports=$(echo "$out" | cut -d/ -f6 | sort -u | wc -l)
ranks=$(echo "$out" | cut -d/ -f1-5 | tr '\n' ' ')
[[ "$ranks" == "0/3/0/3/127.0.0.1 1/3/1/3/127.0.0.1 2/3/2/3/127.0.0.1 " ]] || fail "variables: $out"
[[ "$ports" == 1 ]] || fail "one MASTER_PORT for all ranks: $out"

# 2. Rank 1 fails with status 3: the launcher exits 3 at once, rank 0 (sleeping) is stopped.
marker="47.$$"
start=$SECONDS
bash "$launch" -n 2 sh -c "if [ \"\$RANK\" = 1 ]; then exit 3; fi; sleep $marker" 2>/dev/null
code=$?
[[ $code == 3 ]] || fail "a failing rank's status: got $code, expected 3"
((SECONDS - start < 20)) || fail "stopping the other ranks took $((SECONDS - start)) s"

# 3. --timeout stops ranks that would run on (one ignores SIGTERM: SIGKILL after 5 s).
start=$SECONDS
bash "$launch" -n 2 --timeout 1 sh -c "trap '' TERM; sleep $marker" 2>/dev/null
code=$?
[[ $code == 124 ]] || fail "--timeout: got status $code, expected 124"
((SECONDS - start < 20)) || fail "--timeout took $((SECONDS - start)) s"

# 4. Nothing is left running: no process whose command line is "sleep <marker>" (read from /proc;
# the pattern's "[.]" keeps this check from matching its own grep).
sleep 0.5
pattern="^sleep ${marker%%.*}[.]${marker#*.}"
for cmdline in /proc/[0-9]*/cmdline; do
  if tr '\0' ' ' <"$cmdline" 2>/dev/null | grep -q "$pattern"; then
    fail "a rank was left running: process ${cmdline//[!0-9]/}"
  fi
done

# 5. Bad arguments.
bash "$launch" -n 0 true 2>/dev/null
[[ $? == 2 ]] || fail "-n 0 must be refused"
exit $((failures > 0))
