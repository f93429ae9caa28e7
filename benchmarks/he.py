"""CKKS (`he` mode) aggregation cost against a plain numpy sum, measured in the same run.

    .venv/bin/python benchmarks/he.py [--params 1e6] [--sites 3] [--chunk-values 262144]
        [--workers N] [--no-seeded] [--out benchmarks/results/he_1e6.json]

Simulates every site in this process, streaming as a deployment would: chunk i of every
site is encrypted (one worker: the single-core figure), added into the server's running
sum and dropped before chunk i+1, so memory stays at one model's ciphertexts. Then one
site's update is encrypted again with `encrypt_stream(workers=N)` (default: every core),
twice: the first call also starts the multiprocessing fork server, the second only a new
pool. The frames are also written to a temporary folder, and summed from there as the
orchestrator sums a round's stored chunks (`sum_stored_contributions`), in one process and
in N. Prints a table of ratios and writes them as JSON; no asserts.
Baseline: a numpy float32 running sum of the same updates (best of --repeat), as in
benchmarks/secagg.py; the float64 weighted sum is timed too and is the accuracy reference.
"Critical path" assumes the sites encrypt in parallel: the slowest site, plus the server's
add and export, plus one decryption. The cpu column is this process only (not workers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import tenseal as ts
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from privacy import he

RESULTS = Path(__file__).resolve().parent / "results"
GOAL_RATIO = 100.0  # each phase vs the numpy float32 sum
GOAL_BYTES = 32.0  # ciphertext bytes per value


class Timer:
    """Accumulates wall and CPU (process) time over `with` blocks."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    def __enter__(self) -> Timer:
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall += time.perf_counter() - self._w
        self.cpu += time.process_time() - self._c

    def __add__(self, other: Timer) -> Timer:
        return Timer.of(self.wall + other.wall, self.cpu + other.cpu)

    def __sub__(self, other: Timer) -> Timer:
        return Timer.of(self.wall - other.wall, self.cpu - other.cpu)

    def __mul__(self, factor: float) -> Timer:
        return Timer.of(self.wall * factor, self.cpu * factor)

    @staticmethod
    def of(wall: float, cpu: float) -> Timer:
        out = Timer()
        out.wall, out.cpu = wall, cpu
        return out


def best_of(repeat: int, fn: Callable[[], object]) -> Timer:
    runs = []
    for _ in range(repeat):
        with Timer() as t:
            fn()
        runs.append(t)
    return min(runs, key=lambda t: t.wall)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--params", type=float, default=1e6, help="values per update (default 1e6)")
    ap.add_argument("--sites", type=int, default=3)
    ap.add_argument("--chunk-values", type=int, default=he.DEFAULT_CHUNK_VALUES)
    ap.add_argument("--repeat", type=int, default=5, help="repeats of the numpy baselines")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1,
        help="worker processes for the parallel encryption pass (default: every core)",
    )
    ap.add_argument(
        "--seeded", action=argparse.BooleanOptionalAction, default=True,
        help="SEAL seeded ciphertexts, ~16 B/value (default); --no-seeded: full size, 32 B/value",
    )
    ap.add_argument("--out", type=Path, help="JSON results (default results/he_<params>[_unseeded].json)")
    args = ap.parse_args()
    n, n_sites, cv, workers = int(args.params), args.sites, args.chunk_values, args.workers
    if workers < 1:
        ap.error("--workers must be >= 1")
    load_before = os.getloadavg()[0]
    sites = [f"site{i}" for i in range(n_sites)]

    rng = np.random.default_rng(args.seed)
    updates = [rng.normal(scale=0.01, size=n).astype(np.float32) for _ in sites]
    raw_w = rng.uniform(50, 500, size=n_sites)
    weights = raw_w / raw_w.sum()

    def numpy_sum() -> np.ndarray:
        acc = updates[0].copy()
        for u in updates[1:]:
            acc += u
        return acc

    def numpy_weighted64() -> np.ndarray:
        acc = weights[0] * updates[0].astype(np.float64)
        for w, u in zip(weights[1:], updates[1:], strict=True):
            acc += w * u.astype(np.float64)
        return acc

    t_np = best_of(args.repeat, numpy_sum)
    t_np64 = best_of(args.repeat, numpy_weighted64)
    reference = numpy_weighted64()

    # key ceremony (once per study)
    t_ceremony = Timer()
    t_ceremony.__enter__()
    signing = Ed25519PrivateKey.generate()
    agreement = {s: X25519PrivateKey.generate() for s in sites[1:]}
    ceremony, own = he.create_key_ceremony(
        "bench", sites[0], signing, {s: k.public_key() for s, k in agreement.items()}
    )
    secrets = {sites[0]: own}
    for s in sites[1:]:
        secrets[s] = he.open_secret_context(
            ceremony.envelopes[s],
            study_id="bench",
            sender=sites[0],
            recipient=s,
            recipient_private_key=agreement[s],
            sender_public_key=signing.public_key(),
        )
    t_ceremony.__exit__()

    # one streamed round
    acc = he.CiphertextAccumulator(ceremony.public_context, n, key_id=ceremony.key_id, chunk_values=cv)
    t_enc = {s: Timer() for s in sites}
    t_add, t_export, t_dec = Timer(), Timer(), Timer()
    up_bytes = dict.fromkeys(sites, 0)
    stored = Path(tempfile.mkdtemp(prefix="fedsilo-he-bench-"))
    chunk_files: list[list[Path]] = [[] for _ in range(he.n_chunks(n, cv))]
    streams: dict[str, Iterator[bytes]] = {}
    for s, u, w in zip(sites, updates, weights, strict=True):
        with t_enc[s]:
            streams[s] = he.encrypt_stream(
                secrets[s], u, weight=float(w), chunk_values=cv, seeded=args.seeded
            )
    for index in range(he.n_chunks(n, cv)):
        for s in sites:
            with t_enc[s]:
                frame = next(streams[s])
            with t_add:
                acc.add(s, index, frame)
            up_bytes[s] += len(frame)
            chunk_files[index].append(stored / f"{s}-{index:06d}.ckks")
            chunk_files[index][-1].write_bytes(frame)

    down_bytes = 0

    def timed_export() -> Iterator[bytes]:
        nonlocal down_bytes
        frames = acc.export()
        while True:
            with t_export:
                frame = next(frames, None)
            if frame is None:
                return
            down_bytes += len(frame)
            yield frame

    t_export_and_dec = Timer()
    with t_export_and_dec:
        result = he.decrypt_stream(secrets[sites[-1]], timed_export(), n)
    t_dec = t_export_and_dec - t_export
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB on Linux

    # one site again, its chunks encrypted by `workers` processes
    t_par: list[Timer] = []
    par_bytes = 0
    for _ in range(2):
        with Timer() as t:
            frames = he.encrypt_stream(
                secrets[sites[0]], updates[0], weight=float(weights[0]), chunk_values=cv,
                workers=workers, seeded=args.seeded,
            )
            par_bytes = sum(len(f) for f in frames)
        t_par.append(t)

    # the orchestrator's path: sum the stored chunks, in one process and in `workers`
    layout = {"key_id": ceremony.key_id, "total_values": n, "chunk_values": cv}
    t_stored: dict[int, Timer] = {}
    for k in dict.fromkeys((1, workers)):
        with Timer() as t:
            stored_sum = list(he.sum_stored_contributions(chunk_files, workers=k, **layout))
        t_stored[k] = t
    shutil.rmtree(stored)
    stored_result = he.decrypt_stream(secrets[sites[-1]], stored_sum, n)
    if not np.allclose(stored_result, result, atol=1e-6):
        raise SystemExit("the sum of the stored chunks differs from the accumulator's")

    err = result - reference
    enc_all = sum(t_enc.values(), Timer())
    enc_site = enc_all * (1 / n_sites)
    critical = max(t_enc.values(), key=lambda t: t.wall) + t_add + t_export + t_dec
    total = enc_all + t_add + t_export + t_dec

    load_after = os.getloadavg()[0]
    print(
        f"he benchmark: {n:,} values x {n_sites} sites, chunks of {cv:,} values, "
        f"tenseal {ts.__version__}, {os.cpu_count()} CPUs, load avg {load_before:.2f} -> {load_after:.2f}"
    )
    print(
        f"CKKS N={he.POLY_MODULUS_DEGREE}, moduli {list(he.COEFF_MOD_BIT_SIZES)}, "
        f"scale 2^40, {he.SLOTS} slots, symmetric encryption "
        f"({'seeded' if args.seeded else 'full-size'} ciphertexts), flood std {he.default_flood_std():.2e}"
    )
    rows = [
        ("numpy float32 running sum (baseline)", t_np),
        ("numpy float64 weighted sum", t_np64),
        ("key ceremony (once per study)", t_ceremony),
        ("encrypt, per site (mean)", enc_site),
        (f"encrypt, one site, {workers} workers, 1st", t_par[0]),
        (f"encrypt, one site, {workers} workers, 2nd", t_par[1]),
        ("encrypt, all sites", enc_all),
        ("server: deserialize + add, all sites", t_add),
        *((f"server: sum stored chunks, {k} process{'es' if k > 1 else ''}", t) for k, t in t_stored.items()),
        ("server: export aggregate", t_export),
        ("decrypt + flood (one site)", t_dec),
        ("critical path (sites in parallel)", critical),
        ("all parties, one after another", total),
    ]
    print(f"\n{'phase':<38}{'wall s':>9}{'cpu s':>9}{'ns/value':>10}{'x np32':>9}{'x np64':>9}")
    for name, t in rows:
        print(
            f"{name:<38}{t.wall:>9.4f}{t.cpu:>9.4f}{t.wall / n * 1e9:>10.1f}"
            f"{t.wall / t_np.wall:>9.1f}{t.wall / t_np64.wall:>9.1f}"
        )
    print("(ratios: wall time over the numpy float32 / float64 sums of the same updates)")
    upload = float(np.mean(list(up_bytes.values()))) / n
    print(f"\nupload per site     {upload:8.3f} bytes/value")
    print(f"  ({workers} workers)    {par_bytes / n:8.3f} bytes/value")
    print(f"aggregate download  {down_bytes / n:8.3f} bytes/value")
    print(f"float32 plain       {4:8.3f} bytes/value")
    print(f"peak RSS            {peak_rss:8.0f} MiB (server running sums ~{32 * n / 2**20:.0f} MiB)")
    errors = {
        "max": float(np.max(np.abs(err))),
        "rms": float(np.sqrt(np.mean(err**2))),
        "relative": float(np.linalg.norm(err) / np.linalg.norm(reference)),
    }
    print(
        f"error vs float64 weighted sum: max {errors['max']:.2e}, "
        f"rms {errors['rms']:.2e}, relative {errors['relative']:.2e}"
    )

    def ratio(t: Timer) -> float:
        return t.wall / t_np.wall

    goals = {
        "encrypt per site, 1 worker (x np32)": (ratio(enc_site), GOAL_RATIO),
        f"encrypt per site, {workers} workers, 2nd call (x np32)": (ratio(t_par[1]), GOAL_RATIO),
        "server deserialize + add, all sites (x np32)": (ratio(t_add), GOAL_RATIO),
        **{
            f"server sum of stored chunks, {k} process(es) (x np32)": (ratio(t), GOAL_RATIO)
            for k, t in t_stored.items()
        },
        "decrypt + flood (x np32)": (ratio(t_dec), GOAL_RATIO),
        "upload bytes per value": (upload, GOAL_BYTES),
        "aggregate download bytes per value": (down_bytes / n, GOAL_BYTES),
    }
    print("\ngoals")
    for name, (value, goal) in goals.items():
        print(f"  {name:<52}{value:9.2f}  <= {goal:g}  {'met' if value <= goal else 'MISSED'}")

    res = {
        "benchmark": "he",
        "settings": {
            "params": n,
            "sites": n_sites,
            "chunk_values": cv,
            "repeat": args.repeat,
            "seed": args.seed,
            "seeded": args.seeded,
            "workers": workers,
        },
        "environment": {
            "cpu_count": os.cpu_count(),
            "load_avg_before": load_before,
            "load_avg_after": load_after,
            "tenseal": ts.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
        "ckks": {
            "poly_modulus_degree": he.POLY_MODULUS_DEGREE,
            "coeff_mod_bit_sizes": list(he.COEFF_MOD_BIT_SIZES),
            "scale_bits": 40,
            "slots": he.SLOTS,
            "flood_std": he.default_flood_std(),
        },
        "unit": "wall seconds; ratios are wall time over the numpy float32 (np32) / float64 (np64) sums",
        "rows": [
            {
                "phase": name,
                "wall_s": t.wall,
                "cpu_s": t.cpu,
                "ns_per_value": t.wall / n * 1e9,
                "x_np32": t.wall / t_np.wall,
                "x_np64": t.wall / t_np64.wall,
            }
            for name, t in rows
        ],
        "bytes_per_value": {
            "upload_per_site": upload,
            "upload_per_site_workers": par_bytes / n,
            "aggregate_download": down_bytes / n,
            "float32_plain": 4.0,
        },
        "peak_rss_mib": peak_rss,
        "error_vs_float64": errors,
        "goals": {
            name: {"value": value, "goal": goal, "met": value <= goal}
            for name, (value, goal) in goals.items()
        },
    }
    out = args.out or RESULTS / f"he_{n:.0e}".replace("+0", "").replace("+", "")
    if args.out is None:
        out = out.with_name(out.name + ("" if args.seeded else "_unseeded") + ".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
