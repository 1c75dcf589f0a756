"""What the first-batch split costs over a whole bounded pass: frames decoded per pass and
the time to the first batch, with the split (the loader's default) and with whole GOPs
(``split_head=False``, forced here), in interleaved rounds, each in a fresh loader.

    PYTHONPATH=. python bench/first_batch_split.py DIR_OR_GLOB [--names 40] [--rounds 3]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import time


def one_pass(paths, split: bool, seed: int) -> dict:
    import ringload
    from ringload import _work

    init = _work.Window.__init__

    def patched(self, *a, **kw):
        init(self, *a, **kw)
        self.split_head = self.split_head and split

    _work.Window.__init__ = patched
    try:
        t0 = time.perf_counter()
        with ringload.VideoLoader(paths, batch_size=128, size=(224, 224), sampling="bounded", seed=seed,
                                  num_workers=2) as loader:
            it = iter(loader)
            next(it)
            first = time.perf_counter() - t0
            n = 1 + sum(1 for _ in it)
            st = loader.stats()
        return {"first_batch_s": first, "batches": n, "decoded_frames": st["decoded_frames"],
                "delivered_frames": st["frames"], "pass_s": time.perf_counter() - t0}
    finally:
        _work.Window.__init__ = init


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("source")
    ap.add_argument("--names", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    paths = sorted(glob.glob(os.path.join(a.source, "*")) if os.path.isdir(a.source) else glob.glob(a.source))[: a.names]
    rows = {"split": [], "whole GOPs": []}
    for r in range(a.rounds):
        for name, split in (("split", True), ("whole GOPs", False)):
            rows[name].append(one_pass(paths, split, seed=r))
    out = {"videos": len(paths), "rounds": rows}
    for name, rs in rows.items():
        extra = [x["decoded_frames"] / x["delivered_frames"] for x in rs]
        print(f"{name:10s} first batch s {[round(x['first_batch_s'], 2) for x in rs]} "
              f"decoded per delivered over the pass {[round(e, 3) for e in extra]} "
              f"pass s {statistics.median(x['pass_s'] for x in rs):.1f}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
