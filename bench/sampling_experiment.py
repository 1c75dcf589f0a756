"""Measure what bounded sampling costs statistically, and plot it for docs/sampling.md.

    PYTHONPATH=. python bench/sampling_experiment.py [--out docs/img] [--json results.json]

Synthetic "videos": per video a feature sequence whose neighbouring frames are correlated
(an AR(1) process per feature plus a per-video offset) and a binary label from a noisy
linear rule whose noise is also AR(1) in time, so neighbouring frames carry nearly the
same information, as in real footage. On it:

1. Gradient variance. At the logistic-regression optimum, the per-sample gradients are
   exact (closed form). For each sampling setting, the variance of the batch-mean gradient
   over many batches (8 epochs) divided by the strict one is the measured design effect.
   The prediction uses only the data and the plan's chunk counts: 1 + (E[sum c^2] / B - 1)
   * rho(C), with rho(C) the mean correlation of the gradients of two distinct frames
   drawn from one chunk of C consecutive starts (estimated from random pairs).
2. Training. SGD with a constant learning rate on the same model (torch, CPU) for two
   epochs from 5 seeds per setting; excess loss over the optimum on all frames.
3. Throughput model: decode work per delivered frame for chunk lengths and GOP lengths,
   next to the measured chunk speeds of the design brief.

Writes sampling_variance.png, sampling_loss.png and sampling_throughput.png into --out and
prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ringload import plan_epoch  # noqa: E402

SETTINGS = [
    # (label, plan kwargs)
    ("strict", dict(mode="strict")),
    ("C=1 M=1", dict(mode="bounded", chunk_len=1, max_per_chunk=1)),
    ("C=16 M=4", dict(mode="bounded", chunk_len=16, max_per_chunk=4)),
    ("C=64 M=4", dict(mode="bounded", chunk_len=64, max_per_chunk=4)),
    ("C=64 M=16 (plan_epoch default)", dict(mode="bounded", chunk_len=64, max_per_chunk=16)),
    ("C=120 M=16 (loader default before)", dict(mode="bounded", chunk_len=120, max_per_chunk=16)),
    ("C=120 M=4 (loader default, GOP 30)", dict(mode="bounded", chunk_len=120, max_per_chunk=4)),
    ("C=256 M=16", dict(mode="bounded", chunk_len=256, max_per_chunk=16)),
    ("C=128 M=32", dict(mode="bounded", chunk_len=128, max_per_chunk=32)),
    ("C=128 M=128 (random chunks)", dict(mode="bounded", chunk_len=128, max_per_chunk=128)),
]


def make_data(rng, videos, frames, dim, phi, video_share):
    """Features (N, dim) and labels (N,) with AR(1) structure along each video."""
    n = videos * frames
    innov = rng.standard_normal((videos, frames, dim + 1))
    ar = np.empty_like(innov)
    ar[:, 0] = innov[:, 0]
    scale = np.sqrt(1 - phi**2)
    for t in range(1, frames):
        ar[:, t] = phi * ar[:, t - 1] + scale * innov[:, t]
    offset = rng.standard_normal((videos, 1, dim + 1))
    z = np.sqrt(video_share) * offset + np.sqrt(1 - video_share) * ar
    x = z[..., :dim].reshape(n, dim)
    w = rng.standard_normal(dim) / np.sqrt(dim) * 2.0
    noise = z[..., dim].reshape(n)
    y = (x @ w + 1.0 * noise > 0).astype(np.float64)
    return x, y


def fit_logistic(x, y, steps=300):
    """Optimum of the mean logistic loss (Newton steps; d is small)."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    theta = np.zeros(xb.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-xb @ theta))
        g = xb.T @ (p - y) / len(y)
        h = (xb * (p * (1 - p))[:, None]).T @ xb / len(y) + 1e-6 * np.eye(len(theta))
        step = np.linalg.solve(h, g)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    return theta, xb


def logistic_loss(xb, y, theta):
    m = xb @ theta
    return float(np.mean(np.logaddexp(0, m) - y * m))


def rho_within_chunk(grads, plan, cum, rng, pairs=400_000):
    """Mean gradient correlation of two distinct starts of one chunk of ``plan``.

    Chunks are drawn with weight (size - 1), as same-chunk pairs are; sizes and cut
    points are the plan's own (random offsets, short chunks at video ends).
    """
    if plan.chunk_len < 2:
        return 0.0
    c = plan.chunk_len
    ids = rng.integers(0, plan.num_chunks, 4 * pairs)
    ext = plan.chunk_extent(ids)
    size = ext[:, 2] - ext[:, 1] + 1
    keep = rng.random(len(ids)) < (size - 1) / max(c - 1, 1)
    ext, size = ext[keep][:pairs], size[keep][:pairs]
    a = rng.integers(0, size)
    b = (a + rng.integers(1, np.maximum(size, 2))) % size  # a distinct offset, uniform
    g = grads - grads.mean(0)
    base = cum[ext[:, 0]] + ext[:, 1]
    ga, gb = g[base + a], g[base + b]
    return float(np.mean(np.sum(ga * gb, axis=1)) / np.mean(np.sum(g * g, axis=1)))


def batch_variance(grads, lengths, batch_size, kwargs, epochs, seed, horizon):
    """Per-epoch variance of the batch-mean gradient and of the mean over ``horizon``
    consecutive batches, with E[sum_chunks c^2] / n for both (c: samples per chunk)."""
    cum = np.concatenate([[0], np.cumsum(lengths)])
    gbar = grads.mean(0)
    one, many, c2_one, c2_many = [], [], [], []
    for epoch in range(epochs):
        plan = plan_epoch(lengths, batch_size=batch_size, seed=seed, epoch=epoch, **kwargs)
        means, chunks = [], []
        for k in range(len(plan)):
            b = plan[k]
            means.append(grads[cum[b[:, 0]] + b[:, 1]].mean(0) - gbar)
            chunks.append(plan.chunks(k))
            _, counts = np.unique(chunks[-1], return_counts=True)
            c2_one.append(float((counts**2).sum()) / batch_size)
        means = np.array(means)
        one.append(float(np.mean(np.sum(means**2, axis=1))))
        h = len(means) // horizon
        block = means[: h * horizon].reshape(h, horizon, -1).mean(1)
        many.append(float(np.mean(np.sum(block**2, axis=1))))
        for j in range(h):
            _, counts = np.unique(np.concatenate(chunks[j * horizon:(j + 1) * horizon]), return_counts=True)
            c2_many.append(float((counts**2).sum()) / (batch_size * horizon))
    return np.array(one), np.array(many), float(np.mean(c2_one)), float(np.mean(c2_many)), plan, cum


def train(x, y, lengths, batch_size, kwargs, seed, epochs, lr):
    torch.manual_seed(seed)
    xt = torch.from_numpy(x).float()
    yt = torch.from_numpy(y).float()
    cum = np.concatenate([[0], np.cumsum(lengths)])
    model = torch.nn.Linear(x.shape[1], 1)
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    lossf = torch.nn.BCEWithLogitsLoss()
    for epoch in range(epochs):
        plan = plan_epoch(lengths, batch_size=batch_size, seed=1000 + seed, epoch=epoch, **kwargs)
        for b in plan:
            idx = torch.from_numpy(cum[b[:, 0]] + b[:, 1])
            opt.zero_grad(set_to_none=True)
            loss = lossf(model(xt[idx]).squeeze(1), yt[idx])
            loss.backward()
            opt.step()
    with torch.no_grad():
        return float(lossf(model(xt).squeeze(1), yt))


def throughput_plot(path):
    """Decode work model: delivered / decoded frames = C / (C + (G - 1) / 2)."""
    c = np.arange(1, 513)
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for gop in (12, 30, 60, 250):
        ax.plot(c, c / (c + (gop - 1) / 2), label=f"model, GOP {gop}")
    measured_c = np.array([32, 64, 128])
    measured = np.array([164, 197, 215]) / 240.0  # design brief: 2 processes, sequential 228-252
    ax.errorbar(measured_c, measured, yerr=[measured - np.array([164, 197, 215]) / 252.0,
                np.array([164, 197, 215]) / 228.0 - measured], fmt="ko", label="measured, GOP 30")
    ax.axvline(64, color="grey", ls=":", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("chunk_len (consecutive frames decoded per seek)")
    ax.set_ylabel("fraction of sequential decode speed")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    ax.set_title("Throughput model: one seek per chunk")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def variance_rows(grads, lengths, args):
    rows = []
    ref = None
    for label, kw in SETTINGS:
        one, many, c2, c2h, plan, cum = batch_variance(
            grads, lengths, args.batch_size, kw, args.var_epochs, seed=7, horizon=args.horizon)
        if ref is None:
            ref = (one, many)
        ratio, ratio_h = one.mean() / ref[0].mean(), many.mean() / ref[1].mean()

        def se(x, r, base):
            # Standard error from the spread over epochs of numerator and denominator.
            rel = np.sqrt(x.var(ddof=1) / x.mean() ** 2 + base.var(ddof=1) / base.mean() ** 2)
            return float(r * rel / np.sqrt(len(x)))

        m = plan.max_per_chunk if kw["mode"] == "bounded" else 1
        rho = rho_within_chunk(grads, plan, cum, np.random.default_rng(1)) if kw["mode"] == "bounded" else 0.0
        rows.append(dict(
            setting=label, chunk_len=plan.chunk_len, max_per_chunk=m, chunk_window=plan.chunk_window, rho=rho,
            mean_c2_over_b=c2, measured_ratio=float(ratio), ratio_se=se(one, ratio, ref[0]),
            predicted_ratio=1 + (c2 - 1) * rho, bound=1 + (m - 1) * rho,
            mean_c2_horizon=c2h, measured_ratio_horizon=float(ratio_h), ratio_horizon_se=se(many, ratio_h, ref[1]),
            predicted_ratio_horizon=1 + (c2h - 1) * rho,
        ))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/img")
    ap.add_argument("--json")
    ap.add_argument("--videos", type=int, default=120)
    ap.add_argument("--frames", type=int, default=500)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--phi", type=float, default=0.97, help="AR(1) coefficient between neighbouring frames")
    ap.add_argument("--video-share", type=float, default=0.2, help="variance share of the per-video offset")
    ap.add_argument("--mild-phi", type=float, default=0.8)
    ap.add_argument("--mild-video-share", type=float, default=0.0)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--var-epochs", type=int, default=8)
    ap.add_argument("--train-seeds", type=int, default=5)
    ap.add_argument("--train-epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, nargs="+", default=[1.0, 0.2])
    ap.add_argument("--horizon", type=int, default=16, help="consecutive batches averaged in the second variance")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    x, y = make_data(rng, args.videos, args.frames, args.dim, args.phi, args.video_share)
    lengths = np.full(args.videos, args.frames)
    theta, xb = fit_logistic(x, y)
    best = logistic_loss(xb, y, theta)
    p = 1 / (1 + np.exp(-xb @ theta))
    grads = (p - y)[:, None] * xb

    rows = variance_rows(grads, lengths, args)
    for row, (label, kw) in zip(rows, SETTINGS):
        excess = {
            lr: [train(x, y, lengths, args.batch_size, kw, s, args.train_epochs, lr) - best for s in range(args.train_seeds)]
            for lr in args.lr
        }
        row["excess_loss"] = {str(lr): [float(np.mean(v)), float(np.std(v, ddof=1))] for lr, v in excess.items()}
    # A milder dataset (shorter correlation, no per-video offset): variance only.
    mx, my = make_data(np.random.default_rng(2), args.videos, args.frames, args.dim, args.mild_phi, args.mild_video_share)
    mtheta, mxb = fit_logistic(mx, my)
    mp = 1 / (1 + np.exp(-mxb @ mtheta))
    mild = variance_rows((mp - my)[:, None] * mxb, lengths, args)
    elapsed = time.perf_counter() - t0

    print(f"{args.videos} videos x {args.frames} frames, phi={args.phi}, video share {args.video_share}, "
          f"batch {args.batch_size}, optimum loss {best:.4f}, {elapsed:.0f} s")
    print(f"| setting | window | rho | E[sum c^2]/B | variance ratio, 1 batch: measured | predicted | bound 1+(M-1)rho "
          f"| {args.horizon} batches: measured | predicted | " + " | ".join(f"excess loss lr={lr} (1e-3)" for lr in args.lr) + " |")
    print("|---" * (9 + len(args.lr)) + "|")
    for r in rows:
        losses = " | ".join(f"{1e3 * m:.1f} +- {1e3 * s:.1f}" for m, s in r["excess_loss"].values())
        print(f"| {r['setting']} | {r['chunk_window']} | {r['rho']:.3f} | {r['mean_c2_over_b']:.2f} | "
              f"{r['measured_ratio']:.2f} +- {r['ratio_se']:.2f} | {r['predicted_ratio']:.2f} | {r['bound']:.2f} | "
              f"{r['measured_ratio_horizon']:.2f} +- {r['ratio_horizon_se']:.2f} | {r['predicted_ratio_horizon']:.2f} | {losses} |")

    print(f"\nmilder data: phi={args.mild_phi}, video share {args.mild_video_share}")
    print(f"| setting | rho | variance ratio, 1 batch: measured | predicted | bound | {args.horizon} batches: measured | predicted |")
    print("|---" * 7 + "|")
    for r in mild:
        print(f"| {r['setting']} | {r['rho']:.3f} | {r['measured_ratio']:.2f} +- {r['ratio_se']:.2f} | {r['predicted_ratio']:.2f} | "
              f"{r['bound']:.2f} | {r['measured_ratio_horizon']:.2f} +- {r['ratio_horizon_se']:.2f} | {r['predicted_ratio_horizon']:.2f} |")

    os.makedirs(args.out, exist_ok=True)
    labels = [r["setting"] for r in rows]
    pos = np.arange(len(rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    for ax, key, title in [(axes[0], "", "one batch"), (axes[1], "_horizon", f"mean of {args.horizon} consecutive batches")]:
        ax.bar(pos - 0.2, [r["measured_ratio" + key] for r in rows], 0.4,
               yerr=[2 * r[("ratio" + key + "_se") if key else "ratio_se"] for r in rows], label="measured (+-2 se)", color="C0")
        ax.bar(pos + 0.2, [r["predicted_ratio" + key] for r in rows], 0.4, label="predicted 1 + (E[sum c^2]/n - 1) rho", color="C1")
        ax.scatter(pos, [r["measured_ratio" + key] for r in mild], marker="x", color="C3", zorder=3,
                   label=f"measured, milder data (phi {args.mild_phi})")
        if not key:
            ax.scatter(pos, [r["bound"] for r in rows], marker="_", s=300, color="k", label="bound 1 + (M - 1) rho", zorder=3)
        ax.set_xticks(pos, labels, rotation=30, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_title(f"gradient variance / strict: {title}", fontsize=10)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("design effect")
    fig.suptitle(f"AR(1) phi={args.phi} features and label noise, batch {args.batch_size}", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "sampling_variance.png"), dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    width = 0.8 / len(args.lr)
    for i, lr in enumerate(args.lr):
        vals = [r["excess_loss"][str(lr)] for r in rows]
        ax.bar(pos + (i - (len(args.lr) - 1) / 2) * width, [1e3 * v[0] for v in vals], width,
               yerr=[1e3 * v[1] for v in vals], label=f"lr {lr}", color=f"C{i + 2}")
    ax.set_xticks(pos, labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("excess loss after training (x 1e-3)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title(f"Constant-lr SGD, {args.train_epochs} epochs, mean +- sd of {args.train_seeds} seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "sampling_loss.png"), dpi=110)
    plt.close(fig)

    throughput_plot(os.path.join(args.out, "sampling_throughput.png"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(args=vars(args), optimum_loss=best, elapsed_s=elapsed, rows=rows, mild_rows=mild), f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
