#!/usr/bin/env bash
# The clearing solver (core, pure Rust) against OR-tools' min-cost flow on the same inputs, in
# the same run: the three MTCS synthetic networks (cleared amount checked against the published
# optimum), two dense clustered networks of the kind a regional circuit clears (gen_network
# --sardex: 100,000 and 400,000 obligations, 35 to 45 % of the debt clearable; both tools must
# agree), then a generated network of 1,000,000 tallies among 200,000 users (solve time and
# peak memory). Medians of REPS solves per tool (at most 3 for the 400,000); only the solve is
# timed.
#
#   bash scripts/bench-clearing.sh            # REPS=5
set -euo pipefail
source "$(dirname "$0")/lib.sh"
REPS=${REPS:-5}
DATA=${CHIPS_DATA:-$REPO/../shared/data}
cd "$REPO"

command -v unzip >/dev/null && [ -x /usr/bin/time ] || {
    say "installing unzip and time"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq unzip time >/dev/null
}
VENV=$REPO/target/bench-venv
if ! "$VENV/bin/python" -c "import ortools" 2>/dev/null; then
    say "installing OR-tools into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q ortools
fi
say "building the solver (release)"
cargo build -q --release -p chips-core --examples
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
unzip -q -o "$DATA/mtcs-synthetic/synthetic-networks.zip" -d "$WORK"

field() { tr ' ' '\n' | sed -n "s/^$1=//p"; }
declare -A OPTIMUM=([01]=535494678 [02]=1809489714 [03]=3863952179)
say "MTCS networks: median of $REPS solves each"
printf '%-8s %14s %6s %10s %12s %7s\n' network cleared exact ours_ms ortools_ms ratio
for k in 01 02 03; do
    csv=$WORK/synthethic_network_$k.csv
    ours=$(target/release/examples/clear "$csv" "$REPS")
    ortools=$("$VENV/bin/python" scripts/bench/ortools_clear.py "$csv" "$REPS")
    cleared=$(echo "$ours" | field cleared)
    [ "$cleared" = "$(echo "$ortools" | field cleared)" ] || { echo "OR-tools disagrees: $ortools" >&2; exit 1; }
    exact=$([ "$cleared" = "${OPTIMUM[$k]}" ] && echo yes || echo NO)
    a=$(echo "$ours" | field solve_ms); b=$(echo "$ortools" | field solve_ms)
    printf '%-8s %14s %6s %10s %12s %7.2f\n' "$k" "$cleared" "$exact" "$a" "$b" "$(echo "$a / $b" | bc -l)"
    [ "$exact" = yes ]
done

say "dense clustered networks (gen_network --sardex, seed 42)"
printf '%-8s %14s %8s %10s %12s %7s\n' network cleared share ours_ms ortools_ms ratio
for spec in "20000 100000 $REPS" "80000 400000 $(( REPS < 3 ? REPS : 3 ))"; do
    read -r users obligations reps <<<"$spec"
    csv=$WORK/dense-$obligations.csv
    target/release/examples/gen_network --sardex "$users" "$obligations" 42 > "$csv"
    ours=$(target/release/examples/clear "$csv" "$reps")
    ortools=$("$VENV/bin/python" scripts/bench/ortools_clear.py "$csv" "$reps")
    cleared=$(echo "$ours" | field cleared)
    [ "$cleared" = "$(echo "$ortools" | field cleared)" ] || { echo "OR-tools disagrees: $ortools" >&2; exit 1; }
    a=$(echo "$ours" | field solve_ms); b=$(echo "$ortools" | field solve_ms)
    printf '%-8s %14s %7.1f%% %10s %12s %7.2f\n' "$obligations" "$cleared" \
        "$(echo "100 * $cleared / $(echo "$ours" | field total_debt)" | bc -l)" "$a" "$b" "$(echo "$a / $b" | bc -l)"
done

say "scale: 1,000,000 tallies among 200,000 users (heavy-tailed degrees, seed 42)"
target/release/examples/gen_network 200000 1000000 42 > "$WORK/big.csv"
/usr/bin/time -v target/release/examples/clear "$WORK/big.csv" 1 > "$WORK/big.out" 2> "$WORK/big.time"
ortools=$("$VENV/bin/python" scripts/bench/ortools_clear.py "$WORK/big.csv" 1)
cat "$WORK/big.out"
rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$WORK/big.time")
echo "peak memory of the whole run (parse, solve, decompose): $((rss / 1024)) MiB"
echo "OR-tools on the same input: $ortools"
[ "$(field cleared < "$WORK/big.out")" = "$(echo "$ortools" | field cleared)" ] && echo "same cleared amount: yes"
