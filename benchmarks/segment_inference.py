"""Sliding-window inference on CPU: time and peak memory against volume size.

Each size runs in a fresh child process (so that peak RSS is that size's own): the
segmentation model of a config (MulModSeg text-conditioned heads by default; weights
random, which does not change the cost) predicts a label map for a random volume of
``size^3`` voxels with MONAI's ``sliding_window_inference`` at the config's ROI,
overlap and window batch, then takes the argmax. Reported per size: wall time, windows,
voxels / s, peak resident memory of the process and its rise over the state before
inference (model + input loaded).

    python benchmarks/segment_inference.py --sizes 64 128 192 256
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure_one(config: str, size: int, variant: str, threads: int | None, overrides: list[str]) -> dict:
    import numpy as np
    import torch
    from monai.data.utils import dense_patch_slices

    from medmm.config.core import build_config
    from medmm.models.registry import create_model
    from medmm.workflows.segment.config import SegmentConfig
    from medmm.workflows.segment.training import predict_volume

    if threads:
        torch.set_num_threads(threads)
    cfg = build_config(SegmentConfig, config, overrides)
    classes = ["background", "liver", "kidney", "spleen", "spine"]
    torch.manual_seed(0)
    model = create_model(cfg.model.name, cfg.model, class_names=classes, conditioning=variant).eval()
    image = np.random.default_rng(0).random((1, size, size, size), dtype=np.float32)
    roi = tuple(cfg.data.roi)
    scan = tuple(max(int(r * (1 - cfg.trainer.sw_overlap)), 1) for r in roi)
    windows = len(dense_patch_slices((size,) * 3, roi, scan))
    base = rss_mb()
    start = time.perf_counter()
    pred = predict_volume(model, image, "ct", roi, cfg.trainer.sw_batch_size, cfg.trainer.sw_overlap)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    assert pred.shape == (size,) * 3
    return {"size": size, "voxels": size**3, "seconds": seconds, "windows": windows,
            "voxels_per_s": size**3 / seconds, "peak_rss_mb": peak, "rss_before_mb": base,
            "peak_rise_mb": peak - base, "roi": list(roi), "overlap": cfg.trainer.sw_overlap,
            "sw_batch_size": cfg.trainer.sw_batch_size, "threads": torch.get_num_threads(), "variant": variant}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/segment/phantoms.yaml")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 192, 256])
    parser.add_argument("--variant", default="text", choices=["text", "none"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="benchmarks/results/segment_inference.json")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # child process mode
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. trainer.sw_overlap=0")
    args = parser.parse_intermixed_args()
    if args.one is not None:
        print(json.dumps(measure_one(args.config, args.one, args.variant, args.threads, args.overrides)))
        return
    rows = []
    for size in args.sizes:
        cmd = [sys.executable, __file__, "--config", args.config, "--variant", args.variant, "--one", str(size),
               *args.overrides]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        row = json.loads(out)
        rows.append(row)
        print(f"{size:4d}^3: {row['seconds']:7.1f} s, {row['windows']:5d} windows, "
              f"{row['voxels_per_s'] / 1e6:.2f} Mvox/s, peak RSS {row['peak_rss_mb']:.0f} MB "
              f"(+{row['peak_rise_mb']:.0f} MB during inference)", flush=True)
        row["load_average_1min"] = os.getloadavg()[0]
        result = {"benchmark": "segment sliding-window inference (CPU)", "config": args.config,
                  "overrides": args.overrides, "rows": rows,
                  "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                  "note": "timings on a shared machine are inflated by contention: compare the growth, not the level"}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))  # after every size: a partial run keeps its rows
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
