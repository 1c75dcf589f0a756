"""The peers' pattern on a bucket, as a contender: a per-sample ``torch.utils.data.Dataset``
whose ``__getitem__`` opens the sample's video through a plain fsspec file object
(``fsspec.open(url, **storage_options)``, fsspec's and the file system's default block size
and caching), hands it to PyAV (``av.open(fileobj)``), seeks back to the keyframe at or
before the frame and decodes forward to it: what torchcodec's file-like mode and LeRobot's
video datasets do per sample. Local paths go through ``fsspec.open`` too (its local file
object), as the same pattern on local files.

Every frame of every video is one item (the frame's pts comes from ringload's index, built
before the run, so the Dataset is not charged for probing); ``DataLoader(shuffle=True)``
batches them, like the starter. Each item is resized to ``size`` x ``size`` RGB (PyAV's
``to_ndarray``, one swscale pass, no crop) and returned as a uint8 (3, H, W) tensor, so the
cost per item is the I/O and the decode, as for ringload's uint8 output.
"""

from __future__ import annotations

import fsspec
import torch


class FsspecFrameDataset(torch.utils.data.Dataset):
    """Item ``i``: one frame, opened per item through ``fsspec.open`` (see the module)."""

    def __init__(self, urls, frame_pts, *, storage_options=None, size: int = 224):
        if len(urls) != len(frame_pts):
            raise ValueError(f"{len(urls)} URLs but {len(frame_pts)} pts lists")
        self.urls = [str(u) for u in urls]
        self.pts = [[int(t) for t in pts] for pts in frame_pts]
        self.items = [(v, i) for v, pts in enumerate(self.pts) for i in range(len(pts))]
        self.storage_options = dict(storage_options or {})
        self.size = int(size)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx):
        import av

        v, i = self.items[idx]
        target = self.pts[v][i]
        url = self.urls[v]
        with fsspec.open(url, "rb", **self.storage_options) as fileobj, av.open(fileobj) as container:
            stream = container.streams.video[0]
            container.seek(target, stream=stream, backward=True, any_frame=False)
            found = None
            for frame in container.decode(stream):
                if frame.pts is not None and frame.pts >= target:
                    found = frame
                    break
            if found is None:
                raise RuntimeError(f"{url}: no frame decoded at or after pts {target}")
            rgb = found.to_ndarray(width=self.size, height=self.size, format="rgb24")
        return torch.from_numpy(rgb).permute(2, 0, 1)


def make_loader(urls, frame_pts, *, storage_options=None, size=224, batch_size=32, num_workers=2, seed=0,
                timeout_s=300.0):
    """A shuffled ``DataLoader`` over :class:`FsspecFrameDataset`; a batch that takes longer
    than ``timeout_s`` to come from its workers is an error (with ``num_workers`` > 0)."""
    torch.manual_seed(seed)
    dataset = FsspecFrameDataset(urls, frame_pts, storage_options=storage_options, size=size)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                                       timeout=timeout_s if num_workers > 0 else 0)  # fmt: skip
