"""Secure aggregation cost against plain float aggregation, measured in the same run.

    .venv/bin/python benchmarks/secagg.py [--params 1e7] [--sites 10] [--drops 0] [--repeat 3]

Simulates every site in this process (serially), prints a table of ratios (no asserts) and
writes them to ``benchmarks/results/secagg_<params>.json`` (``--out``; ``--out -`` skips it).
Every figure is the best of ``--repeat`` runs, and ratios compare figures from the same
process, so load from other processes on the machine mostly cancels out.

Baselines: a numpy float32 running sum of the same updates, and a plain round (each site
serialises its float32 update to raw bytes, the server deserialises and sums).

What is compared with what (like with like):
- Both rounds are transfer-free: a site's message is a header (JSON) plus a zero-copy
  memoryview of its vector, the server parses the header and reads the vector with
  ``np.frombuffer`` in both, so neither pays for copies the other does not make.
- The secagg round adds exactly what secure aggregation costs on top: key agreement and
  sharing, quantization, mask expansion at the sites; mask removal (re-expanding every
  survivor's self mask) and dequantization at the server. Dequantization to float64 counts
  against secagg although the plain baseline stays a float32 sum; the orchestrator's real
  plain path (``privacy.strategies.sum_arrays``) accumulates in float64, so the plain baseline
  is the leaner of the two and the ratios are conservative.
- "Critical path" assumes the sites run in parallel: the median over sites of each site's
  total (its phases added up; the sites do identical work, so the median is the typical
  site without the noise of a shared machine, and phases are not mixed between sites) plus
  everything the server does, in both rounds. A plain site only serialises (a view), so the
  plain critical path is essentially the server's sum.
- "after training only": a site may expand its mask while it trains (``precompute_mask``);
  key advertising and sharing (sites and server) and that expansion then overlap training
  and are left out. The plain round has nothing to hide.
- "AES-CTR keystream of the self masks" times the cipher alone over the bytes the server
  must re-expand (n self masks x 4 bytes x params): the floor of "unmask" for this PRG,
  since ``cryptography`` keeps the GIL while it encrypts.

``--http`` adds the whole round as the platform runs it (``benchmarks/round_overhead.py
--aggregation plain secagg``): a real orchestrator (gunicorn, SQLite, the real round engine
and secure API) and the sites as HTTP clients in a child process, a plain round and a secagg
round of the same 10^k-parameter update interleaved; the ratio of their wall times, from
opening the round to the new global weights checkpointed. There the plain round pays for
what a deployment pays (HTTP, multipart, safetensors checks, database, checkpoint), and the
secagg round adds its four phases, each a message from every site and an engine step.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
import tracemalloc
from collections import defaultdict
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import cryptography
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from privacy.secagg import (
    MaskedInput,
    SecAggClient,
    SecAggParams,
    SecAggServer,
    quantization_step,
)
from privacy.secagg.prg import CHUNK_WORDS

RESULTS = Path(__file__).resolve().parent / "results"
CLIP = 0.05
HIDDEN = ("advertise", "share keys", "precompute")  # can run while the sites train
PHASES = ("advertise", "share keys", "quantize", "mask", "ring sum", "unmask", "dequantize")


class Clock:
    """Accumulates wall time per (party, phase)."""

    def __init__(self) -> None:
        self.t: dict[tuple[str, str], float] = defaultdict(float)
        self.extra: dict[str, float] = {}  # timings outside the round (reference figures)

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

    def critical_path(self, sites: Collection[str], hidden: tuple[str, ...] = ()) -> float:
        """Sites in parallel: the median over `sites` of each site's total (they do equal work;
        the median is robust to noise on a shared machine), plus the server's total; phases
        in `hidden` overlap training and are left out for every party.
        """

        def total(party: str) -> float:
            return sum(v for (p, ph), v in self.t.items() if p == party and ph not in hidden)

        return statistics.median([total(s) for s in sites] or [0.0]) + total("server")


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


def aes_keystream_time(n_masks: int, n_words: int) -> float:
    """Seconds to produce n_masks keystreams of n_words uint32 with AES-128-CTR (no adds)."""
    zeros = bytes(CHUNK_WORDS * 4)
    buf = bytearray(CHUNK_WORDS * 4 + 15)
    encs = [Cipher(algorithms.AES(os.urandom(16)), modes.CTR(bytes(16))).encryptor() for _ in range(n_masks)]
    t0 = time.perf_counter()
    for start in range(0, n_words, CHUNK_WORDS):
        data = zeros if start + CHUNK_WORDS <= n_words else zeros[: (n_words - start) * 4]
        for enc in encs:
            enc.update_into(data, buf)
    return time.perf_counter() - t0


def whole_round_http(n_params: int, n: int, rounds: int) -> dict[str, Any]:
    """A plain and a secagg round over HTTP through the real orchestrator (round_overhead.py)."""
    import round_overhead

    model = f"synthetic-1e{len(str(n_params)) - 1}"
    if round_overhead.SYNTHETIC.get(model) != n_params:
        raise SystemExit(f"--http needs --params 1e6 or 1e7, not {n_params}")
    args = round_overhead.parse_args(
        ["--sites", str(n), "--model", model, "--aggregation", "plain", "secagg", "--rounds", str(rounds)]
    )
    res = round_overhead.run(args)
    round_overhead.print_report(res)
    return {"settings": res["settings"], "rows": res["rows"], "secagg_vs_plain": res["secagg_vs_plain"][0]}


def default_out(n_params: int, n: int, drops: int, neighbours: int | None) -> Path:
    exp = len(str(n_params)) - 1
    size = f"1e{exp}" if n_params == 10**exp else str(n_params)
    name = f"secagg_{size}" + (f"_{n}sites" if n != 10 else "")
    name += (f"_{drops}drops" if drops else "") + (f"_k{neighbours}" if neighbours else "")
    return RESULTS / f"{name}.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=float, default=1e6, help="update size (floats)")
    ap.add_argument("--sites", type=int, default=10)
    ap.add_argument("--drops", type=int, default=0, help="sites dropping before masked input")
    ap.add_argument("--threshold", type=int, default=None)
    ap.add_argument("--neighbours", type=int, default=None, help="SecAgg+ graph degree")
    ap.add_argument("--repeat", type=int, default=3, help="best of N, per quantity")
    ap.add_argument("--http", action="store_true", help="also time whole rounds over HTTP (plain vs secagg)")
    ap.add_argument("--http-rounds", type=int, default=3, help="timed rounds per mode with --http")
    ap.add_argument(
        "--out", help="JSON results file (default: results/secagg_<params>[...].json; - for none)"
    )
    args = ap.parse_args()

    n_params, n = int(args.params), args.sites
    sites = tuple(f"site-{i:02d}" for i in range(n))
    params = SecAggParams(sites, n_params, CLIP, threshold=args.threshold, neighbours=args.neighbours)
    drops = list(sites[n - args.drops :]) if args.drops else []
    rng = np.random.default_rng(0)
    updates = {s: (rng.standard_normal(n_params, dtype=np.float32) * 0.01) for s in sites}
    survivors = {s: u for s, u in updates.items() if s not in drops}
    clients = list(survivors)
    load_before = os.getloadavg()

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
        ("    AES-CTR keystream of the self masks", lambda c, p: c.extra["aes"], "sum", ""),
        ("server dequantize (uint32 sum -> float64)", lambda c, p: server(c, "dequantize"), "sum", ""),
        ("client masking, median site (masked_input)", lambda c, p: per_site(c, "mask"), "sum", ""),
        ("  same, mask precomputed (the add only)", lambda c, p: per_site(p, "mask"), "sum", ""),
        ("client quantize, median site", lambda c, p: per_site(c, "quantize"), "sum", ""),
        ("whole round, all phases, sites serial", lambda c, p: c.total(), "plain", ""),
        (
            "whole round, critical path (sites in parallel)",
            lambda c, p: c.critical_path(clients),
            "plain cp",
            "<= 1.5x",
        ),
        (
            "  after training only (keys+masks overlap it)",
            lambda c, p: p.critical_path(clients, HIDDEN),
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
        best["plain cp"] = min(best["plain cp"], plain.critical_path(clients))
        run, pre = Clock(), Clock()
        result = secagg_round(params, updates, drops, run)
        run.extra["aes"] = aes_keystream_time(len(clients), n_params)
        secagg_round(params, updates, drops, pre, precompute=True)
        for name, fn, _, _ in rows:
            best[name] = min(best[name], fn(run, pre))
        for ph in PHASES:
            sites_total = sum(v for (q, x), v in run.t.items() if x == ph and q != "server")
            best[f"phase {ph} sites"] = min(best[f"phase {ph} sites"], sites_total)
            best[f"phase {ph} server"] = min(best[f"phase {ph} server"], server(run, ph))
    clipped = sum(np.clip(u.astype(np.float64), -CLIP, CLIP) for u in survivors.values())
    err = float(np.abs(result - clipped).max())
    bound = len(clients) * quantization_step(CLIP, n)
    peak = server_peak_memory(params, updates, drops)
    update = 4 * n_params

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
        f"(bound n*step = {bound:.2e})"
    )

    http = whole_round_http(n_params, n, args.http_rounds) if args.http else None
    if args.out == "-":
        return
    out = Path(args.out) if args.out else default_out(n_params, n, len(drops), args.neighbours)
    names = {"sum": "float32_sum", "plain": "plain_round_serial", "plain cp": "plain_round_cp"}
    res = {
        "benchmark": "secagg",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "settings": {
            "params": n_params,
            "sites": n,
            "dropped": len(drops),
            "threshold": params.threshold,
            "neighbours": args.neighbours,
            "repeat": args.repeat,
            "clip": CLIP,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cryptography": cryptography.__version__,
        },
        "baselines_s": {names[k]: best[k] for k in names},
        "rows": [
            {
                "quantity": name.strip(),
                "secagg_s": best[name],
                "baseline": names[base],
                "baseline_s": best[base],
                "ratio": best[name] / best[base],
                "goal": goal or None,
            }
            for name, _, base, goal in rows
        ],
        "server_peak_memory": {"bytes": peak, "one_update_bytes": update, "ratio": peak / update},
        "phases_s": {
            ph: {"sites_total": best[f"phase {ph} sites"], "server": best[f"phase {ph} server"]}
            for ph in PHASES
        },
        "max_abs_error": err,
        "error_bound": bound,
        "whole_round_http": http,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
