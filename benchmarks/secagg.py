"""Secure aggregation cost against plain float aggregation, measured in the same run.

    .venv/bin/python benchmarks/secagg.py [--params 1e7] [--sites 10] [--drops 0] [--repeat 3]

Simulates every site in this process (serially) and prints a table of ratios; no asserts.
Baselines: a numpy float32 running sum of the same updates, and a plain round (each site
serialises its float32 update to raw bytes, the server deserialises and sums).
"Critical path" assumes the sites run in parallel: per phase the median site, plus the server.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import tracemalloc
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from privacy.secagg import (
    MaskedInput,
    SecAggClient,
    SecAggParams,
    SecAggServer,
    quantization_step,
)

CLIP = 0.05
HIDDEN = ("advertise", "share keys", "precompute")  # can run while the sites train
PHASES = ("advertise", "share keys", "quantize", "mask", "ring sum", "unmask", "dequantize")


class Clock:
    """Accumulates wall time per (party, phase)."""

    def __init__(self) -> None:
        self.t: dict[tuple[str, str], float] = defaultdict(float)

    def __call__(self, party: str, phase: str, fn: Callable[..., Any], *args: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*args)
        self.t[party, phase] += time.perf_counter() - t0
        return out

    def total(self, phase: str | None = None, party: str | None = None) -> float:
        return sum(
            v
            for (p, ph), v in self.t.items()
            if (phase is None or ph == phase) and (party is None or p == party)
        )

    def critical_path(self, hidden: tuple[str, ...] = ()) -> float:
        """Sites in parallel: per phase the median site (they do equal work; the median is
        robust to noise on a shared machine), plus the server; `hidden` phases overlap training.
        """
        phases = {ph for _, ph in self.t} - set(hidden)
        sites_time = sum(
            statistics.median([v for (p, ph), v in self.t.items() if ph == phase and p != "server"] or [0])
            for phase in phases
        )
        return sites_time + self.total(party="server")


def secagg_round(
    params: SecAggParams,
    updates: dict[str, np.ndarray],
    drops: list[str],
    clock: Clock,
    precompute: bool = False,
) -> np.ndarray:
    sites = params.sites
    sks = {s: Ed25519PrivateKey.generate() for s in sites}
    pks = {s: k.public_key() for s, k in sks.items()}
    rid = "bench-round"
    clients = {s: SecAggClient(s, rid, sks[s], pks, params) for s in sites}
    server = SecAggServer(rid, params, pks)

    def receive(head: str, body: memoryview) -> None:
        server.add_masked_input(MaskedInput.from_wire(json.loads(head), body))

    adverts = [clock(s, "advertise", clients[s].advertise_keys) for s in sites]
    broadcast = clock("server", "advertise", server.collect_adverts, adverts)
    lists = [clock(s, "share keys", clients[s].share_keys, broadcast) for s in sites]
    routes = clock("server", "share keys", server.route_shares, lists)
    for s in sites:
        if s in drops:
            continue
        q = clock(s, "quantize", params.quantize, updates[s])
        if precompute:  # in a deployment this runs while the site trains
            clock(s, "precompute", clients[s].precompute_mask, routes[s])
            msg = clock(s, "mask", clients[s].masked_input, q)
        else:
            msg = clock(s, "mask", clients[s].masked_input, q, routes[s])
        head, body = clock(s, "mask", lambda m: (json.dumps(m.header()), m.body()), msg)
        clock("server", "ring sum", receive, head, body)
        del q, msg, body
    req = clock("server", "unmask", server.unmask_request)
    answers = [clock(s, "unmask", clients[s].unmask, req.survivors, req.dropped) for s in req.survivors]
    q_sum = clock("server", "unmask", server.finish, answers)
    return clock("server", "dequantize", params.dequantize_sum, q_sum, len(req.survivors))


def server_peak_memory(params: SecAggParams, updates: dict[str, np.ndarray], drops: list[str]) -> int:
    """tracemalloc peak of a server running the whole round on pre-computed client messages."""
    sites = params.sites
    sks = {s: Ed25519PrivateKey.generate() for s in sites}
    pks = {s: k.public_key() for s, k in sks.items()}
    clients = {s: SecAggClient(s, "mem", sks[s], pks, params) for s in sites}
    shadow = SecAggServer("mem", params, pks)  # relays for the clients, not measured
    adverts = [clients[s].advertise_keys() for s in sites]
    broadcast = shadow.collect_adverts(adverts)
    lists = [clients[s].share_keys(broadcast) for s in sites]
    routes = shadow.route_shares(lists)
    survivors = [s for s in sites if s not in drops]
    blobs = [clients[s].masked_input(params.quantize(updates[s]), routes[s]).to_bytes() for s in survivors]
    answers = [clients[s].unmask(survivors, drops) for s in survivors]
    tracemalloc.start()
    server = SecAggServer("mem", params, pks)
    server.collect_adverts(adverts)
    server.route_shares(lists)
    for blob in blobs:  # the received bodies are the web layer's buffers, not server state
        server.add_masked_input(MaskedInput.from_bytes(blob))
    server.unmask_request()
    server.finish(answers)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def float_sum(updates: dict[str, np.ndarray]) -> np.ndarray:
    it = iter(updates.values())
    acc = next(it).copy()
    for u in it:
        acc += u
    return acc


def plain_round(updates: dict[str, np.ndarray], clock: Clock) -> np.ndarray:
    acc: np.ndarray | None = None

    def send(x: np.ndarray) -> tuple[str, memoryview]:
        return json.dumps({"length": x.shape[0]}), memoryview(x.astype("<f4", copy=False))

    def add(head: str, body: memoryview) -> None:
        nonlocal acc
        v = np.frombuffer(body, dtype="<f4", count=json.loads(head)["length"])
        if acc is None:
            acc = v.copy()
        else:
            acc += v

    for s, u in updates.items():
        head, body = clock(s, "send", send, u)
        clock("server", "sum", add, head, body)
    assert acc is not None
    return acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=float, default=1e6, help="update size (floats)")
    ap.add_argument("--sites", type=int, default=10)
    ap.add_argument("--drops", type=int, default=0, help="sites dropping before masked input")
    ap.add_argument("--threshold", type=int, default=None)
    ap.add_argument("--neighbours", type=int, default=None, help="SecAgg+ graph degree")
    ap.add_argument("--repeat", type=int, default=3, help="best of N, per quantity")
    args = ap.parse_args()

    n_params, n = int(args.params), args.sites
    sites = tuple(f"site-{i:02d}" for i in range(n))
    params = SecAggParams(sites, n_params, CLIP, threshold=args.threshold, neighbours=args.neighbours)
    drops = list(sites[n - args.drops :]) if args.drops else []
    rng = np.random.default_rng(0)
    updates = {s: (rng.standard_normal(n_params, dtype=np.float32) * 0.01) for s in sites}
    survivors = {s: u for s, u in updates.items() if s not in drops}
    clients = list(survivors)

    def server(c: Clock, phase: str) -> float:
        return c.total(phase, "server")

    def per_site(c: Clock, phase: str) -> float:
        return statistics.median(c.t[s, phase] for s in clients)

    # name -> (secagg time from a plain run / a precomputed-mask run, baseline key, goal)
    rows: list[tuple[str, Callable[[Clock, Clock], float], str, str]] = [
        (
            "server aggregation: ring sum + unmask",
            lambda c, p: server(c, "ring sum") + server(c, "unmask"),
            "sum",
            "<= 3x",
        ),
        ("  ring sum only (add_masked_input x n)", lambda c, p: server(c, "ring sum"), "sum", ""),
        ("  unmask (finish: reconstruct, remove masks)", lambda c, p: server(c, "unmask"), "sum", ""),
        ("client masking, median site (masked_input)", lambda c, p: per_site(c, "mask"), "sum", ""),
        ("  same, mask precomputed (the add only)", lambda c, p: per_site(p, "mask"), "sum", ""),
        ("client quantize, median site", lambda c, p: per_site(c, "quantize"), "sum", ""),
        ("whole round, all phases, sites serial", lambda c, p: c.total(), "plain", "<= 1.5x"),
        (
            "whole round, critical path (sites in parallel)",
            lambda c, p: c.critical_path(),
            "plain cp",
            "<= 1.5x",
        ),
        (
            "  after training only (keys+masks overlap it)",
            lambda c, p: p.critical_path(HIDDEN),
            "plain cp",
            "<= 1.5x",
        ),
    ]
    best: dict[str, float] = defaultdict(lambda: float("inf"))
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        float_sum(survivors)
        best["sum"] = min(best["sum"], time.perf_counter() - t0)
        plain = Clock()
        plain_round(survivors, plain)
        best["plain"] = min(best["plain"], plain.total())
        best["plain cp"] = min(best["plain cp"], plain.critical_path())
        run, pre = Clock(), Clock()
        result = secagg_round(params, updates, drops, run)
        secagg_round(params, updates, drops, pre, precompute=True)
        for name, fn, _, _ in rows:
            best[name] = min(best[name], fn(run, pre))
        for ph in PHASES:
            sites_total = sum(v for (q, x), v in run.t.items() if x == ph and q != "server")
            best[f"phase {ph} sites"] = min(best[f"phase {ph} sites"], sites_total)
            best[f"phase {ph} server"] = min(best[f"phase {ph} server"], server(run, ph))
    clipped = sum(np.clip(u.astype(np.float64), -CLIP, CLIP) for u in survivors.values())
    err = np.abs(result - clipped).max()
    peak = server_peak_memory(params, updates, drops)

    print(
        f"secagg benchmark: {n_params:,} params, {n} sites ({len(drops)} dropped after "
        f"sharing keys), t={params.threshold}, neighbours={args.neighbours}, best of "
        f"{args.repeat} per quantity, numpy {np.__version__}"
    )
    print(
        f"baseline: float32 sum of {len(clients)} updates = {best['sum'] * 1e3:.1f} ms; plain "
        f"round serial {best['plain'] * 1e3:.1f} ms, critical path {best['plain cp'] * 1e3:.1f} ms"
    )
    print(f"{'quantity':46} {'secagg ms':>10} {'baseline ms':>12} {'ratio':>7}  goal")
    for name, _, base, goal in rows:
        a, b = best[name], best[base]
        print(f"{name:46} {a * 1e3:10.1f} {b * 1e3:12.1f} {a / b:6.2f}x  {goal}")
    update = 4 * n_params
    print(
        f"{'server peak memory (tracemalloc) / one update':46} {peak / 2**20:9.1f}M "
        f"{update / 2**20:11.1f}M {peak / update:6.2f}x"
    )
    print(
        "phase breakdown, ms (all sites summed | server): "
        + ", ".join(
            f"{ph} {best.get(f'phase {ph} sites', 0) * 1e3:.0f}|{best.get(f'phase {ph} server', 0) * 1e3:.0f}"
            for ph in PHASES
        )
    )
    print(
        f"max |dequantized secagg sum - float64 sum of clipped updates| = {err:.2e} "
        f"(bound n*step = {len(clients) * quantization_step(CLIP, n):.2e})"
    )


if __name__ == "__main__":
    main()
