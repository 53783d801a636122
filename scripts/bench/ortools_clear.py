"""OR-tools' min-cost flow on the same clearing problem, for scripts/bench-clearing.sh.

MTCS formulation (clearing.md): every obligation debtor -> creditor is an arc of capacity
`amount` and unit cost; each node supplies (debit - credit); the min-cost flow is the debt that
must remain, so cleared = total - min cost. Only the solve is timed. Prints one line:
file=... total_debt=... cleared=... solve_ms=... (median of `repeats`).
"""
import csv
import statistics
import sys
import time

from ortools.graph.python import min_cost_flow


def main(path, repeats):
    ids, tails, heads, caps = {}, [], [], []
    with open(path, newline="") as f:
        rows = csv.reader(f)
        next(rows)
        for debtor, creditor, amount in rows:
            a, b, c = ids.setdefault(debtor, len(ids)), ids.setdefault(creditor, len(ids)), int(amount)
            if a == b or c <= 0:
                continue
            tails.append(a)
            heads.append(b)
            caps.append(c)
    supply = [0] * len(ids)
    for a, b, c in zip(tails, heads, caps):
        supply[a] += c
        supply[b] -= c
    total = sum(caps)
    times, cleared = [], None
    for _ in range(repeats):
        smcf = min_cost_flow.SimpleMinCostFlow()
        smcf.add_arcs_with_capacity_and_unit_cost(tails, heads, caps, [1] * len(caps))
        smcf.set_nodes_supplies(list(range(len(ids))), supply)
        t = time.perf_counter()
        status = smcf.solve()
        times.append((time.perf_counter() - t) * 1e3)
        if status != smcf.OPTIMAL:
            raise SystemExit(f"OR-tools: status {status}")
        cleared = total - smcf.optimal_cost()
    print(f"file={path} total_debt={total} cleared={cleared} solve_ms={statistics.median(times):.1f}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1)
