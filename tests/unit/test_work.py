"""The work window and the pick policy, without processes: a fake sampler, fake indexes and
decoders that are just (last, open videos) pairs. Each test runs in milliseconds."""

from __future__ import annotations

import collections
import types

import numpy as np
import pytest

from ringload import _work
from ringload._work import Window
from ringload.errors import DecodeError, VideoOpenError, WorkerError

GOP = 10


def _infos(n_videos=4, frames=100):
    kf = np.arange(0, frames, GOP)
    return [types.SimpleNamespace(keyframes=kf, width=64, height=48, num_frames=frames) for _ in range(n_videos)]


class FakeSampler:
    """Batch k is the samples listed in ``batches[k]``: (video, frame) pairs, one frame each;
    ``chunks[k]``, when given, their chunk ids."""

    def __init__(self, batches, chunk_window=1, chunks=None):
        self.batches = batches
        self.chunk_window = chunk_window
        self.chunks = chunks
        self.redraws = []

    def batch(self, k):
        vs = np.array(self.batches[k], dtype=np.int64).reshape(-1, 2)
        n = len(vs)
        content = types.SimpleNamespace(
            video=vs[:, 0], start=vs[:, 1], frames=vs[:, 1:2].copy(), crop=np.zeros((n, 4), np.int32), flip=np.zeros(n, bool),
            entry=vs[:, 0],
        )
        if self.chunks is not None:
            content.chunk = np.array(self.chunks[k], dtype=np.int64)
        return content

    def replacement(self, video, start, attempt):
        self.redraws.append((video, start, attempt))
        v = (video + attempt) % 4
        return v, start, np.array([start], np.int64), np.zeros(4, np.int32), False, v


def _window(batches, *, slots=4, on_error="raise", chunk_window=1, n_videos=4, started=False, split_head=True,
            chunks=None):
    """A window over ``batches`` (with chunk ids ``chunks``); ``started``: after a first batch
    (the last video's last frame, done at once), so the steady-state rules apply to ``batches``."""
    events = collections.defaultdict(list)
    if started:
        batches = [[(n_videos - 1, 99)]] + list(batches)
        chunks = None if chunks is None else [[999]] + list(chunks)
        slots += 1
    w = Window(
        num_slots=slots, paths=[f"/v{i}.mp4" for i in range(n_videos)], infos=_infos(n_videos), on_error=on_error,
        task_timeout_s=1.0, counters=collections.Counter(),
        on_complete=lambda b, done: events["done"].append((b.k, done)),
        on_fail=lambda b, exc: events["failed"].append((b.k, exc)), split_head=split_head,
    )
    sampler = FakeSampler(batches, chunk_window, chunks)
    w.begin(sampler, 0, len(batches))
    if started:
        work, _ = _take(w)
        w.finish(work, None, None)
        events.clear()
    return w, events, sampler


def _take(w, *, last=None, open_videos=(), eager=True):
    picked = w.pick(eager=eager, last=last, open_videos=open_videos)
    if picked is None:
        return None
    video, reqs, last = picked
    return w.make_work(video, reqs), last


def _run_all(w, decoders=2):
    """Fake decoders: each takes work in turn and completes it at once."""
    lasts = [None] * decoders
    opened = [collections.OrderedDict() for _ in range(decoders)]
    tasks = []
    while True:
        progress = False
        for d in range(decoders):
            got = _take(w, last=lasts[d], open_videos=opened[d])
            if got is None:
                continue
            work, lasts[d] = got
            opened[d][work.video] = None
            tasks.append((d, work.video, work.frames.tolist()))
            w.finish(work, None, None)
            progress = True
        if not progress:
            return tasks


def test_a_gop_shared_by_batches_in_the_window_is_one_task():
    # Frames 3 and 7 of video 0 (one GOP) in batches 0 and 1: one task decodes both.
    w, events, _ = _window([[(0, 3), (1, 50)], [(0, 7), (2, 20)]])
    work, last = _take(w)
    assert (work.video, work.frames.tolist(), last) == (0, [3, 7], (0, 0))
    assert len(work.reqs) == 2 and sorted(r.sample.batch.k for r in work.reqs) == [0, 1]


def test_a_decoder_continues_where_its_last_task_ended():
    w, _, _ = _window([[(0, 15), (1, 5)], [(1, 25), (2, 5)]], started=True)
    # A decoder whose last task ended in GOP 1 of video 1 takes GOP 2 of video 1 next,
    # although GOP 1 of video 0 feeds an earlier batch.
    work, last = _take(w, last=(1, 1))
    assert (work.video, work.frames.tolist(), last) == (1, [25], (1, 2))
    # One that holds video 2 open takes its work before the earliest group.
    work, _ = _take(w, open_videos=[2])
    assert work.video == 2


def test_the_gate_keeps_decoders_on_the_earliest_batches():
    batches = [[(k % 4, 10 * k)] for k in range(4)]
    w, _, _ = _window(batches, started=True)
    first, _ = _take(w, eager=False)
    second, _ = _take(w, eager=False)
    # Batches 0 and 1 (head + GATE) are eligible; batch 2 waits while they are undone...
    assert [first.video, second.video] == [0, 1]
    assert _take(w, eager=False) is None
    # ...unless a decoder would idle.
    third, _ = _take(w, eager=True)
    assert third.video == 2


def test_bounded_chunks_wait_until_every_batch_they_reach_is_in_the_window():
    # chunk_window 3: a group of batch 0 is ready only when batches up to 3 were admitted.
    batches = [[(0, 1 + k)] for k in range(6)]
    w, _, _ = _window(batches, slots=2, chunk_window=3)
    assert w.next_k == 2
    assert _take(w, eager=False) is not None  # the head batch goes anyway
    w2, _, _ = _window(batches, slots=7, chunk_window=3, started=True)
    work, _ = _take(w2, eager=False)
    assert work.frames.tolist() == [1, 2, 3, 4, 5, 6]  # one run: the whole chunk at once


@pytest.mark.parametrize("chunk_window, frames", [(3, [1, 11, 21]), (1, [1, 11])])
def test_a_bounded_task_reads_on_through_its_chunks_next_gops_whatever_batch_they_feed(chunk_window, frames):
    # GOPs 0, 1, 2 of video 0 (one chunk) feed batches 1, 2, 3; the gate admits groups of
    # batches <= 2. Bounded: the task goes on through GOP 2 (its chunk is whole in the
    # window: no seek, no second walk); strict stops at the gate.
    batches = [[(0, 1)], [(0, 11)], [(0, 21)], [(1, 5)], [(2, 5)], [(3, 5)]]
    chunks = [[0], [0], [0], [1], [2], [3]]
    w, _, _ = _window(batches, slots=4, chunk_window=chunk_window, started=True, chunks=chunks)
    assert (w.next_k, w.end_k, w.pick_limit(eager=False)) == (5, 7, 2)
    work, last = _take(w, eager=False)
    assert work.frames.tolist() == frames
    assert last == (0, len(frames) - 1)


def test_until_a_bounded_first_batch_is_out_a_task_takes_only_its_frames():
    # One GOP of video 0 feeds batches 0 to 2. Bounded (chunks reach 3 batches): the first
    # task converts only batch 0's frame; the others stay filed and go once batch 0 is out.
    batches = [[(0, 3), (1, 50)], [(0, 7), (2, 20)], [(0, 5)]]
    w, events, _ = _window(batches, slots=3, chunk_window=3)
    work, last = _take(w)
    assert (work.video, work.frames.tolist(), last) == (0, [3], (0, 0))
    assert [r.sample.batch.k for r in work.reqs] == [0]
    w.finish(work, None, None)
    other, _ = _take(w)
    assert other.frames.tolist() == [50]
    w.finish(other, None, None)
    assert [k for k, _ in events["done"]] == [0]
    rest, _ = _take(w, last=last)
    assert (rest.video, rest.frames.tolist()) == (0, [5, 7])  # the rest of the GOP, one walk
    assert sorted(r.sample.batch.k for r in rest.reqs) == [1, 2]


@pytest.mark.parametrize("chunk_window, split_head", [(1, True), (3, False)])
def test_the_first_batch_takes_whole_gops_outside_bounded_or_when_told(chunk_window, split_head):
    # Strict and sequential passes (chunk_window 1) share GOPs across the window for speed,
    # and split_head=False (a remote source with no block cache) keeps them whole too.
    batches = [[(0, 3), (1, 50)], [(0, 7), (2, 20)], [(0, 5)]]
    w, _, _ = _window(batches, slots=3, chunk_window=chunk_window, split_head=split_head)
    work, _ = _take(w)
    assert work.frames.tolist() == [3, 5, 7]
    assert sorted(r.sample.batch.k for r in work.reqs) == [0, 1, 2]


def test_the_first_batch_of_a_pass_goes_first():
    # Until the pass's first batch is out only its groups are eligible, so it waits neither
    # for the gate's next batch nor while the decoders read its chunks to their ends.
    batches = [[(0, 10 * k + 1)] for k in range(6)]  # batch k needs GOP k of video 0
    w, events, _ = _window(batches, slots=6, chunk_window=3)
    assert w.pick_limit(eager=False) == 0
    work, last = _take(w, eager=False)
    assert work.frames.tolist() == [1]  # batch 0's GOP alone, not the run to GOP 5
    assert _take(w, last=last, eager=False) is None
    w.finish(work, None, None)
    assert [k for k, _ in events["done"]] == [0]
    assert w.pick_limit(eager=False) == len(batches)  # then whole chunks in the window
    work, _ = _take(w, last=last, eager=False)
    assert work.frames.tolist() == [11, 21, 31, 41, 51]
    w.finish(work, None, None)
    # A new pass starts with its first batch again; an idle decoder still finds work.
    w.begin(FakeSampler(batches, 3), 0, len(batches))
    assert w.pick_limit(eager=False) == 0
    first, _ = _take(w, eager=False)
    assert first.frames.tolist() == [1]
    second, _ = _take(w, eager=True)
    assert second.frames.tolist() == [11]


def test_batches_complete_in_any_order_and_slots_cycle():
    batches = [[(k % 4, (7 * k) % 100), ((k + 1) % 4, (13 * k) % 100)] for k in range(10)]
    w, events, _ = _window(batches, slots=3)
    _run_all(w)
    assert sorted(k for k, _ in events["done"]) == [0, 1, 2]
    assert w.next_k == 3 and not w.free_slots
    for k, done in list(events["done"]):
        w.hold(done.slot)
        w.release(done.slot)
    _run_all(w)
    assert sorted(k for k, _ in events["done"]) == list(range(6))


def test_a_new_pass_frees_every_slot_of_the_old_one_but_not_a_held_one():
    batches = [[(0, k)] for k in range(8)]
    w, events, _ = _window(batches, slots=3)
    _run_all(w)  # the ring is full of the old pass
    held = events["done"][0][1].slot
    w.hold(held)
    w.begin(FakeSampler([[(1, k)] for k in range(8)]), 0, 8)
    # Two slots went to the new pass at once; the held one only after release.
    assert sorted(b.k for b in w.active.values()) == [0, 1]
    assert held not in {b.slot for b in w.active.values()}
    w.release(held)
    assert sorted(b.k for b in w.active.values()) == [0, 1, 2]


def test_a_frame_error_fails_the_batch_or_replaces_the_sample():
    w, events, _ = _window([[(0, 3), (1, 3)]])
    work, _ = _take(w, last=(0, 0))
    w.finish(work, DecodeError("/v0.mp4", "frame 3 is corrupt"), np.zeros(1, bool))
    assert [k for k, _ in events["failed"]] == [0]

    w, events, sampler = _window([[(0, 3), (1, 3)]], on_error="skip")
    work, _ = _take(w, last=(0, 0))
    w.finish(work, DecodeError("/v0.mp4", "frame 3 is corrupt"), np.zeros(1, bool))
    assert sampler.redraws == [(0, 3, 1)] and "/v0.mp4" in w.quarantined
    _run_all(w)
    (k, done), = events["done"]
    assert done.video.tolist() == [1, 1]  # the redraw (video 0 + attempt 1) and the untouched sample


def test_several_frames_and_a_frame_error_are_narrowed_to_single_frames():
    w, events, _ = _window([[(0, 3), (0, 5)]])
    work, _ = _take(w)
    w.finish(work, DecodeError("/v0.mp4", "bad frame"), np.array([True, False]))
    single, _ = _take(w)
    assert single.frames.tolist() == [5]  # frame 3 was delivered; frame 5 is retried alone
    assert events["failed"] == []


def test_a_whole_file_error_marks_the_file_dead_for_later_batches():
    w, events, sampler = _window([[(0, 3)], [(0, 50)], [(1, 3)]], on_error="skip")
    work, _ = _take(w)
    w.finish(work, VideoOpenError("/v0.mp4", "changed"), np.zeros(1, bool))
    assert w.dead_videos == {0: "changed"}
    assert [r[:2] for r in sampler.redraws] == [(0, 3), (0, 50)]  # both samples of video 0 redrawn


def test_decoder_deaths_condemn_a_file_only_in_a_row():
    w, events, _ = _window([[(0, 3), (0, 33), (0, 63), (0, 93)]])
    for _ in range(2):
        work, _ = _take(w)
        w.decoder_died(work, "was killed by SIGKILL")
    work, _ = _take(w)
    w.finish(work, None, None)  # a success between: the record is cleared
    for _ in range(2):
        work, _ = _take(w)
        w.decoder_died(work, "was killed by SIGKILL")
    assert events["failed"] == [] and not w.dead_videos
    work, _ = _take(w)
    w.decoder_died(work, "was killed by SIGKILL")
    (k, exc), = events["failed"]
    assert isinstance(exc, VideoOpenError) and "died 3 times in a row" in str(exc)


def test_too_many_redraws_into_bad_files_is_an_error():
    w, _, _ = _window([[(0, 3)]], on_error="skip", n_videos=4)
    for v in range(4):
        w.dead_videos[v] = "gone"
    work, _ = _take(w)
    with pytest.raises(WorkerError, match="replacement draws"):
        w.finish(work, VideoOpenError("/v0.mp4", "gone"), np.zeros(1, bool))


def test_task_size_is_capped():
    batches = [[(0, f) for f in range(100)] * 2]
    w, _, _ = _window(batches)
    work, _ = _take(w)
    assert len(work.reqs) <= _work.TASK_CAP + GOP * 2  # whole GOPs, stopped once past the cap


def test_a_bounded_task_stops_at_a_gop_of_a_chunk_not_yet_whole():
    # GOPs 0, 1 of video 0 are chunk 0 (first in batch 1); GOP 2 is chunk 4, first seen in
    # batch 4, whose later batches are not admitted yet: taking it now would leave the rest
    # of that GOP to be walked again.
    batches = [[(0, 1)], [(0, 11)], [(1, 5)], [(0, 21)], [(2, 5)], [(3, 5)]]
    chunks = [[0], [0], [1], [4], [2], [3]]
    w, _, _ = _window(batches, slots=5, chunk_window=3, started=True, chunks=chunks)
    assert (w.next_k, w.pick_limit(eager=False)) == (6, 3)
    work, last = _take(w, eager=False)
    assert (work.frames.tolist(), last) == ([1, 11], (0, 1))
    # Without chunk ids a sample's own batch stands for its chunk's first: no run-on either.
    w2, _, _ = _window(batches, slots=5, chunk_window=3, started=True)
    work2, _ = _take(w2, eager=False)
    assert work2.frames.tolist() == [1, 11]


@pytest.mark.parametrize("chunk_window, frames", [(3, [1, 11, 21]), (1, [11, 21])])
def test_a_bounded_task_starts_at_the_first_gop_of_its_chunk_in_the_window(chunk_window, frames):
    # GOPs 0, 1, 2 of video 0 (one chunk) feed batches 3, 2, 1: the earliest batch's GOP is
    # the chunk's last. Bounded: one task reads GOPs 0 to 2 from GOP 0; strict takes the
    # GOPs of the gate's batches (1 and 2) and leaves GOP 0 for later.
    batches = [[(0, 21)], [(0, 11)], [(0, 1)], [(1, 5)], [(2, 5)], [(3, 5)]]
    chunks = [[0], [0], [0], [1], [2], [3]]
    w, _, _ = _window(batches, slots=4, chunk_window=chunk_window, started=True, chunks=chunks)
    work, last = _take(w, eager=False)
    assert work.frames.tolist() == frames
    assert last == (0, 2)


def test_a_bounded_task_does_not_go_back_into_a_chunk_not_yet_whole_nor_after_a_continuation():
    # GOP 0 of video 0 is chunk 5, first seen in batch 3 (not whole); GOPs 1, 2 are chunk 0.
    batches = [[(0, 21)], [(0, 11)], [(0, 1)], [(1, 5)], [(2, 5)], [(3, 5)]]
    chunks = [[0], [0], [5], [1], [2], [3]]
    w, _, _ = _window(batches, slots=4, chunk_window=3, started=True, chunks=chunks)
    work, _ = _take(w, eager=False)
    assert work.frames.tolist() == [11, 21]
    # A decoder that ended at GOP 1 continues at GOP 2 (in the gate) and does not seek back
    # to GOP 1 (whole, but past the gate); a fresh pick takes both.
    batches = [[(0, 21)], [(1, 5)], [(2, 5)], [(0, 11)], [(3, 5)], [(3, 15)]]
    chunks = [[0], [1], [2], [0], [3], [3]]
    for last, frames in (((0, 1), [21]), (None, [11, 21])):
        w2, _, _ = _window(batches, slots=5, chunk_window=4, started=True, chunks=chunks)
        assert (w2.next_k, w2.end_k, w2.pick_limit(eager=False)) == (6, 7, 2)
        work2, last2 = _take(w2, eager=False, last=last)
        assert (work2.frames.tolist(), last2) == (frames, (0, 2))
