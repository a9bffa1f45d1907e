#!/usr/bin/env python
"""Benchmark drawing one full-rank ES noise vector (NoiseGenerator.flat) for a real model's parameter shapes.

torch's CPU normal sampler is serial (~5 ns a number), so one draw of a 1.5B model takes ~7 s on one thread.
esft fills tensors, and 16M-number chunks of large tensors, on several threads (FlatNoise.fill); this measures
that against one thread and against the unchunked definition (chunk=None: one stream per tensor, so the
largest tensor, usually the embedding, is drawn by one thread). The model is built on the meta device: only
its parameter shapes are used, nothing is allocated but the D-sized output.

    python scripts/bench_noise.py                       # bench_es.py gpu05b shapes (Qwen2-0.5B); 1 thread, all cores
    python scripts/bench_noise.py --model qwen2.5-1.5b  # the qwen2.5-1.5b preset's architecture (needs 6 GB)
    python scripts/bench_noise.py --json                # last line: one JSON object
    python scripts/bench_noise.py --philox [--compile]  # es.noise=philox: throughput vs torch.randn, full draw

With --philox it measures the portable generator (esft/es/philox.py) instead: ns a number for torch.randn and
for Philox (eager, and compiled with --compile) at 1 thread and --threads threads on 4M numbers, then one full
philox draw of the model's shapes. With --device cuda the same on the GPU (synchronised timings).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from bench_es import WORKLOADS  # scripts/ is on the path when a script in it runs

from esft.es import philox
from esft.es.noise import NoiseGenerator, member_seed
from esft.models.tiny import _ARCHITECTURES, EOS_ID, PAD_ID, model_config

SHAPES = {  # (shape, vocabulary) of the models: no download, shapes only
    "qwen2-0.5b": (WORKLOADS["gpu05b"].shape, WORKLOADS["gpu05b"].vocab),  # the benchmark's GPU workload
    "qwen2.5-1.5b": ({"architecture": "qwen2", "hidden_size": 1536, "intermediate_size": 8960,
                      "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
                      "max_position_embeddings": 1024}, 151936),
}


def parameter_sizes(name: str) -> list[int]:
    shape, vocab = SHAPES[name]
    with torch.device("meta"):
        model = _ARCHITECTURES[shape["architecture"]][1](model_config(shape, vocab, PAD_ID, EOS_ID))
    return [p.numel() for p in model.parameters()]


def seconds_per_draw(noise: NoiseGenerator, out: torch.Tensor, threads: int, repeats: int) -> float:
    torch.set_num_threads(threads)
    noise.flat(member_seed(0, 0, 0), out=out)  # warm-up: thread pool, page faults of `out`
    best = float("inf")
    for repeat in range(repeats):
        began = time.perf_counter()
        noise.flat(member_seed(0, 1, repeat), out=out)
        best = min(best, time.perf_counter() - began)
    return best


def _timed(call, device: torch.device, repeats: int) -> float:
    """Best wall time of `call` over `repeats` runs after one warm-up (synchronised on CUDA)."""
    call()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        began = time.perf_counter()
        call()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - began)
    return best


class _Rows(dict):
    """The measurements, each printed as it is taken (a long run cut short by a timeout keeps what it had)."""

    def __setitem__(self, label: str, value: float) -> None:
        super().__setitem__(label, value)
        print(f"  {label:44s} {value:8.3f}", flush=True)


def philox_rows(sizes: list[int], threads: int, repeats: int, compiled: bool, device: torch.device,
                full_draw: bool = True) -> dict[str, float]:
    """ns a number of torch.randn and Philox (eager / compiled), then seconds of one full philox draw."""
    numbers = 1 << 22
    out = torch.empty(numbers, device=device)
    rows: dict[str, float] = _Rows()
    kinds = [("eager", False)] + ([("compiled", True)] if compiled else [])
    for count in sorted({1, threads}):
        torch.set_num_threads(count)
        label = f"{count} thread{'s' if count > 1 else ''}" if device.type == "cpu" else device.type
        rows[f"torch.randn, {label} (ns/number)"] = _timed(
            lambda: torch.randn(numbers, out=out), device, repeats) / numbers * 1e9
        for kind, flag in kinds:
            began = time.perf_counter()
            philox.normals(1, 0, 0, out, compiled=flag)  # first call: compiles
            if flag:
                rows[f"philox compile time, {label} (s)"] = time.perf_counter() - began
            rows[f"philox {kind}, {label} (ns/number)"] = _timed(
                lambda flag=flag: philox.normals(2, 0, 0, out, compiled=flag), device, repeats) / numbers * 1e9
    if full_draw:
        noise = NoiseGenerator(sizes, mode="philox")
        flat = torch.zeros(sum(sizes), device=device)  # touched: page faults are not the generator's
        for count in sorted({1, threads}):
            torch.set_num_threads(count)
            label = f"{count} thread{'s' if count > 1 else ''}" if device.type == "cpu" else device.type
            if device.type == "cuda":
                torch.cuda.synchronize()
            began = time.perf_counter()  # one draw: tens of seconds on a CPU, the kernels are already warm
            noise.flat(member_seed(0, 1, 0), out=flat)
            if device.type == "cuda":
                torch.cuda.synchronize()
            rows[f"philox full draw, {label} (s)"] = time.perf_counter() - began
    return rows


# -- per-step time model on one GPU (an ESTIMATE until scripts/gpu_session.sh measures it) --------------------
#: assumptions, each a published or conservative figure, not a measurement on this machine
HOST_THREADS = 16  # host cores feeding one GPU (the H100 box)
PCIE_PAGEABLE_GBS = 12.0  # host->device copy from pageable memory (PCIe 4/5 x16 in practice: 10-14 GB/s)
PCIE_PINNED_GBS = 25.0  # from pinned memory
GPU_PHILOX_NS = {"compiled": 0.01, "eager": 0.15}  # ns/number on an H100: one fused kernel writing 4 B/number at
# ~3 TB/s plus ~30 integer ops/number; eager: ~250 int64 elementwise passes over n/8 counters (~500 B/number)
MODEL_NUMEL = {"0.5B": 494_032_768, "1.5B": 1_543_714_304, "7B": 7_615_616_512}
MEMBERS, DRAWS = 30, 15  # N = 30 antithetic members: 15 draws, none cached (es.cache_noise=auto: they do not fit)


def step_model(cpu_ns_per_number: float) -> dict[str, dict[str, float]]:
    """Seconds of noise work per ES step (forward passes excluded: the same for both), old vs new noise.

    old (iid, host): each member's draw is made on the host (HOST_THREADS streams in parallel, prefetched, so it
    overlaps the previous member's forwards; counted once per draw) and copied over PCIe from a pinned buffer once
    per member; the update regenerates every draw on the host and copies it over PCIe again (not overlapped).
    new (philox, device): each member's noise is drawn on the GPU in blocks, and again for the update."""
    host = cpu_ns_per_number / HOST_THREADS
    copy = 4 / PCIE_PINNED_GBS
    rows = {}
    for name, numel in MODEL_NUMEL.items():
        ns = numel * 1e-9
        old_eval = MEMBERS * copy * ns  # the draw itself hides behind the forwards (prefetch)
        old_update = DRAWS * (host + copy) * ns
        row = {"old eval noise (s)": old_eval, "old update (s)": old_update, "old total (s)": old_eval + old_update}
        for kind, gpu in GPU_PHILOX_NS.items():
            row[f"new {kind} (s)"] = (MEMBERS + DRAWS) * gpu * ns
        rows[name] = row
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="qwen2-0.5b", choices=sorted(SHAPES))
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="the multi-threaded run's threads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--philox", action="store_true", help="measure es.noise=philox instead of iid")
    parser.add_argument("--compile", action="store_true", help="with --philox: also the torch.compile kernel")
    parser.add_argument("--device", default="cpu", help="with --philox: where to draw (cpu | cuda)")
    parser.add_argument("--no-full-draw", action="store_true", help="with --philox: skip the full-model draw")
    parser.add_argument("--step-model", action="store_true",
                        help="print the per-step noise time model for one GPU (an estimate) from torch.randn here")
    args = parser.parse_args(argv)
    if args.step_model:
        torch.set_num_threads(1)
        numbers = 1 << 22
        out = torch.empty(numbers)
        measured = _timed(lambda: torch.randn(numbers, out=out), torch.device("cpu"), args.repeats) / numbers * 1e9
        print(f"ESTIMATE (no GPU measured): torch.randn on this CPU {measured:.2f} ns/number/thread, {HOST_THREADS} "
              f"host threads, PCIe {PCIE_PINNED_GBS:g} GB/s pinned, GPU philox {GPU_PHILOX_NS} ns/number; "
              f"N={MEMBERS}, {DRAWS} uncached draws")
        model = step_model(measured)
        for name, row in model.items():
            print(f"  {name:5s} " + "  ".join(f"{k} {v:7.2f}" for k, v in row.items()))
        if args.json:
            print(json.dumps({"cpu_randn_ns": measured, "estimate": model}))
        return 0
    sizes = parameter_sizes(args.model)
    if args.philox:
        rows = philox_rows(sizes, args.threads, args.repeats, args.compile, torch.device(args.device),
                           not args.no_full_draw)
        print(f"{args.model}: D = {sum(sizes):,}; best of {args.repeats}, {os.cpu_count()} cores")
        if args.json:
            print(json.dumps({"model": args.model, "numel": sum(sizes), "philox": dict(rows)}))
        return 0
    out = torch.empty(sum(sizes))
    rows = {}
    for label, chunk in (("chunked", NoiseGenerator(sizes).chunk), ("unchunked", None)):
        noise = NoiseGenerator(sizes, chunk=chunk)
        for threads in sorted({1, args.threads}):
            rows[f"{label}, {threads} thread{'s' if threads > 1 else ''}"] = seconds_per_draw(
                noise, out, threads, args.repeats)
    print(f"{args.model}: D = {sum(sizes):,} numbers in {len(sizes)} tensors (largest {max(sizes):,}); "
          f"best of {args.repeats}, {os.cpu_count()} cores")
    for label, seconds in rows.items():
        print(f"  {label:24s} {seconds:6.2f} s per draw  ({seconds / sum(sizes) * 1e9:.2f} ns a number)")
    # however many threads: a draw takes at least as long as its longest single stream
    per_number = rows["chunked, 1 thread"] / sum(sizes)
    chunk = NoiseGenerator(sizes).chunk
    floors = {"chunked": min(max(sizes), chunk) * per_number, "unchunked": max(sizes) * per_number}
    print(f"  floor with unlimited threads: chunked {floors['chunked']:.3f} s, unchunked {floors['unchunked']:.3f} s "
          "(the longest single stream)")
    if args.json:
        print(json.dumps({"model": args.model, "numel": sum(sizes), "seconds_per_draw": rows,
                          "floor_seconds": floors}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
