import json
import multiprocessing



def _rank_main(rank, world, init_file, paths, out):
    import torch.distributed as dist

    import ringload

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        with ringload.VideoLoader(
            paths, batch_size=8, size=(16, 16), crop="center", sampling="strict", drop_last=False, num_workers=1, seed=4
        ) as loader:
            samples = [[int(v), int(f)] for b in loader for v, f in zip(b.video_index.tolist(), b.frame_index.tolist())]
            result = {"rank": loader._rank, "world": loader._world, "len": len(loader), "samples": samples}
        with open(out, "w") as f:
            json.dump(result, f)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_ranks_get_disjoint_complete_shards(engine_videos, tmp_path):
    from ringload.probe import probe

    ctx = multiprocessing.get_context("spawn")
    outs = [tmp_path / f"rank{r}.json" for r in range(2)]
    procs = [
        ctx.Process(target=_rank_main, args=(r, 2, str(tmp_path / "init"), engine_videos, str(outs[r]))) for r in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    for p in procs:
        if p.exitcode is None:
            p.kill()
            p.join(10)
    assert [p.exitcode for p in procs] == [0, 0]
    res = [json.loads(o.read_text()) for o in outs]
    assert [(r["rank"], r["world"]) for r in res] == [(0, 2), (1, 2)]  # taken from torch.distributed
    assert res[0]["len"] == res[1]["len"]
    a = {tuple(s) for s in res[0]["samples"]}
    b = {tuple(s) for s in res[1]["samples"]}
    assert len(a) == len(res[0]["samples"]) and len(b) == len(res[1]["samples"])
    assert not a & b
    everything = {(v, f) for v, p in enumerate(engine_videos) for f in range(probe(p).num_frames)}
    assert a | b == everything
