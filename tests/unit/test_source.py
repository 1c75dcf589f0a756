import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ringload._source import Source, resolve_source
from ringload.errors import ConfigError

from helpers import REPO


def _touch(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(b"x")
    return str(path)


def test_directory_is_recursive_sorted_and_filtered(tmp_path):
    _touch(tmp_path / "b" / "z.mp4")
    _touch(tmp_path / "a" / "y.MKV")
    _touch(tmp_path / "a" / "notes.txt")
    _touch(tmp_path / "a" / ".hidden.mp4")
    _touch(tmp_path / "c.webm")
    src = resolve_source(tmp_path)
    rel = [os.path.relpath(p, tmp_path) for p in src.paths]
    assert rel == [os.path.join("a", "y.MKV"), os.path.join("b", "z.mp4"), "c.webm"]
    assert src.labels is None and src.class_names is None
    assert resolve_source(str(tmp_path)).paths == src.paths  # stable


def test_empty_directory_is_a_config_error(tmp_path):
    _touch(tmp_path / "readme.txt")
    with pytest.raises(ConfigError, match="no video files"):
        resolve_source(tmp_path)


def test_glob_and_list(tmp_path):
    a = _touch(tmp_path / "x" / "1.mp4")
    b = _touch(tmp_path / "x" / "2.mp4")
    _touch(tmp_path / "x" / "3.avi")
    assert resolve_source(str(tmp_path / "x" / "*.mp4")).paths == [a, b]
    assert resolve_source(str(tmp_path / "**" / "*.avi")).paths == [str(tmp_path / "x" / "3.avi")]
    assert resolve_source([b, a]).paths == [b, a]  # a list keeps the user's order
    with pytest.raises(ConfigError, match="matches no files"):
        resolve_source(str(tmp_path / "*.mov"))
    with pytest.raises(ConfigError, match="no such file"):
        resolve_source(str(tmp_path / "missing.mp4"))
    with pytest.raises(ConfigError, match="empty"):
        resolve_source([])
    with pytest.raises(ConfigError, match=r"source\[1\]"):
        resolve_source([a, 3])


def test_csv_manifest_with_class_names(tmp_path):
    (tmp_path / "m").mkdir()
    man = tmp_path / "m" / "train.csv"
    man.write_text("path,label\nv/a.mp4,dog\nv/b.mp4,cat\n/abs/c.mp4,dog\n")
    src = resolve_source(man)
    assert src.paths == [str(tmp_path / "m" / "v" / "a.mp4"), str(tmp_path / "m" / "v" / "b.mp4"), "/abs/c.mp4"]
    assert src.class_names == ["cat", "dog"]
    assert src.labels.dtype == np.int64 and src.labels.tolist() == [1, 0, 1]


def test_jsonl_manifest_int_labels_and_multilabel(tmp_path):
    man = tmp_path / "a.jsonl"
    man.write_text("\n".join(json.dumps(r) for r in [{"path": "a.mp4", "label": 3}, {"path": "b.mp4", "label": 0}]) + "\n")
    src = resolve_source(man)
    assert src.labels.tolist() == [3, 0] and src.class_names is None

    man2 = tmp_path / "b.jsonl"
    rows = [{"path": "a.mp4", "labels": ["run", "jump"]}, {"path": "b.mp4", "labels": ["sit"]}, {"path": "c.mp4", "labels": []}]
    man2.write_text("\n".join(json.dumps(r) for r in rows))
    src = resolve_source(man2)
    assert src.class_names == ["jump", "run", "sit"]
    assert src.labels.dtype == np.float32
    np.testing.assert_array_equal(src.labels, [[1, 1, 0], [0, 0, 1], [0, 0, 0]])

    man3 = tmp_path / "c.csv"
    man3.write_text('path,labels\na.mp4,"2;0"\nb.mp4,1\n')
    src = resolve_source(man3)
    np.testing.assert_array_equal(src.labels, [[1, 0, 1], [0, 1, 0]])
    assert src.class_names is None


def test_manifest_weight_column(tmp_path):
    man = tmp_path / "w.csv"
    man.write_text("path,label,weight\na.mp4,cat,2.5\nb.mp4,dog,0\n")
    src = resolve_source(man)
    np.testing.assert_array_equal(src.weights, [2.5, 0.0])
    assert src.weights.dtype == np.float64 and src.class_names == ["cat", "dog"]
    man2 = tmp_path / "w.jsonl"
    man2.write_text('{"path": "a.mp4", "weight": 1, "labels": [1]}\n{"path": "b.mp4", "weight": 0.5, "labels": [0, 2]}\n'
                    '{"path": "c.mp4", "weight": 3, "labels": []}\n')
    src2 = resolve_source(man2)
    np.testing.assert_array_equal(src2.weights, [1.0, 0.5, 3.0])
    assert resolve_source(tmp_path / "w.csv").weights is not None
    (tmp_path / "none.csv").write_text("path\na.mp4\n")
    assert resolve_source(tmp_path / "none.csv").weights is None


@pytest.mark.parametrize(
    "name,text,match",
    [
        ("a.csv", "file,label\nx.mp4,1\n", "line 1: .*'path' column"),
        ("b.jsonl", '{"path": "a.mp4"}\n{"path": \n', "line 2: not valid JSON"),
        ("c.jsonl", '{"path": "a.mp4", "label": 1}\n{"path": "b.mp4"}\n', "line 2: no 'label'"),
        ("d.jsonl", '{"path": ""}\n', "line 1: missing or empty 'path'"),
        ("e.jsonl", '{"path": "a.mp4", "label": -1}\n', "line 1: .*negative"),
        ("f.jsonl", '[1, 2]\n', "line 1: expected a JSON object"),
        ("g.csv", "path,label\n", "lists no videos"),
        ("h.jsonl", '{"path": "a.mp4", "label": 1}\n{"path": "b.mp4", "labels": [1]}\n', "mixes"),
        ("i.csv", "path,weight\na.mp4,1\nb.mp4,\n", "line 3: no 'weight'"),
        ("j.csv", "path,weight\na.mp4,-2\n", "line 2: weight '-2' must be a finite number >= 0"),
        ("k.jsonl", '{"path": "a.mp4", "weight": "lots"}\n', "line 1: weight 'lots'"),
        ("l.jsonl", '{"path": "a.mp4", "weight": true}\n', "line 1: weight True"),
    ],
)
def test_bad_manifests_name_file_and_line(tmp_path, name, text, match):
    man = tmp_path / name
    man.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        resolve_source(man)
    assert str(man) in str(info.value)


def test_source_passthrough_and_single_file(tmp_path):
    s = Source(paths=["a.mp4"])
    assert resolve_source(s) is s
    v = _touch(tmp_path / "one.mov")
    assert resolve_source(v).paths == [v]


def test_symlink_loop_gives_each_file_once(tmp_path):
    _touch(tmp_path / "a" / "x.mp4")
    _touch(tmp_path / "b" / "y.mp4")
    os.symlink(tmp_path, tmp_path / "a" / "loop")  # a/loop/a/loop/... back to the top
    os.symlink(tmp_path / "b", tmp_path / "c")  # a second name for b
    os.symlink(tmp_path / "a" / "x.mp4", tmp_path / "b" / "x-again.mp4")  # a second name for x
    rel = [os.path.relpath(p, tmp_path) for p in resolve_source(tmp_path).paths]
    # The first of each file's names in the sorted order.
    assert rel == [os.path.join("a", "x.mp4"), os.path.join("b", "y.mp4")]


def test_on_error_is_checked(tmp_path):
    _touch(tmp_path / "a.mp4")
    with pytest.raises(ConfigError, match="on_error"):
        resolve_source(tmp_path, on_error="ignore")


# Run where permission bits apply: as root that needs a process without the DAC capabilities.
_SCAN = """
import json, logging, sys
from ringload._source import resolve_source
from ringload.errors import ConfigError

records = []
handler = logging.Handler()
handler.emit = records.append
logging.getLogger("ringload").addHandler(handler)
out = {}
try:
    resolve_source(sys.argv[1])
    out["raise"] = None
except ConfigError as exc:
    out["raise"] = str(exc)
out["skip"] = resolve_source(sys.argv[1], on_error="skip").paths
out["warnings"] = [r.getMessage() for r in records if r.levelno == logging.WARNING]
print(json.dumps(out))
"""


def _unprivileged_python() -> list[str]:
    """A command running this Python where permission bits apply (as root: without the DAC capabilities)."""
    if os.geteuid() != 0:
        return [sys.executable]
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot drop CAP_DAC_OVERRIDE to test permission bits")
    caps = "-dac_override,-dac_read_search"
    return [setpriv, f"--bounding-set={caps}", f"--inh-caps={caps}", "--", sys.executable]


def test_unreadable_subdirectory_is_reported(tmp_path):
    _touch(tmp_path / "ok" / "a.mp4")
    _touch(tmp_path / "locked" / "inner" / "b.mp4")
    locked = tmp_path / "locked"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    python = _unprivileged_python()
    os.chmod(locked, 0)
    try:
        control = subprocess.run(
            [*python, "-c", "import os, sys; os.listdir(sys.argv[1])", str(locked)],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
        if control.returncode == 0:
            pytest.skip("permission bits are not enforced here: the folder stays readable")
        if "PermissionError" not in control.stderr:
            pytest.skip(f"cannot start an unprivileged process here: {control.stderr.strip()[-300:]}")
        out = subprocess.run([*python, "-c", _SCAN, str(tmp_path)], capture_output=True, text=True, timeout=120, env=env)
    finally:
        os.chmod(locked, 0o755)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["raise"] is not None, "on_error='raise' skipped the unreadable folder silently"
    assert str(locked) in res["raise"] and 'on_error="skip"' in res["raise"] and "permission" in res["raise"].lower()
    assert res["skip"] == [str(tmp_path / "ok" / "a.mp4")]
    assert len(res["warnings"]) == 1 and str(locked) in res["warnings"][0]


def test_an_empty_labels_cell_is_an_all_zero_target(tmp_path):
    from ringload._source import resolve_source

    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "b.mp4").write_bytes(b"x")
    csv_m = tmp_path / "m.csv"
    csv_m.write_text("path,labels\na.mp4,cat;dog\nb.mp4,\n")
    src = resolve_source(str(csv_m))
    assert src.class_names == ["cat", "dog"]
    assert src.labels.tolist() == [[1.0, 1.0], [0.0, 0.0]]
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text('{"path": "a.mp4", "labels": ["dog"]}\n{"path": "b.mp4", "labels": []}\n')
    assert resolve_source(str(jsonl)).labels.tolist() == [[1.0], [0.0]]


@pytest.mark.parametrize("rows", [["3", "cat"], ["cat", "0"]])
def test_a_manifest_mixing_class_ids_and_names_is_refused(tmp_path, rows):
    from ringload._source import resolve_source

    lines = ["path,label"]
    for i, label in enumerate(rows):
        (tmp_path / f"{i}.mp4").write_bytes(b"x")
        lines.append(f"{i}.mp4,{label}")
    m = tmp_path / "m.csv"
    m.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="class ids.*class names|class names.*class ids"):
        resolve_source(str(m))


def test_an_all_empty_labels_column_means_no_labels(tmp_path):
    from ringload._source import resolve_source

    (tmp_path / "a.mp4").write_bytes(b"x")
    m = tmp_path / "m.csv"
    m.write_text("path,labels\na.mp4,\n")
    assert resolve_source(str(m)).labels is None


def test_manifest_rows_carry_their_range_and_other_columns(tmp_path):
    csv_man = tmp_path / "k.csv"
    csv_man.write_text("path,start,end,label,caption,clip_id\nx.mp4,1.5,4,run,a man runs,7\nx.mp4,,2.25,jump,,8\n"
                       "y.mp4,3,,run,a dog,9\n")
    src = resolve_source(csv_man)
    assert src.paths == [str(tmp_path / "x.mp4")] * 2 + [str(tmp_path / "y.mp4")]
    # Empty cells: from the first frame, to the last one.
    np.testing.assert_array_equal(src.segments, [[1.5, 4.0], [0.0, 2.25], [3.0, np.inf]])
    # CSV cells arrive as the strings read; the label columns are labels, not meta.
    assert src.meta == {"caption": ["a man runs", "", "a dog"], "clip_id": ["7", "8", "9"]}
    assert src.class_names == ["jump", "run"] and src.labels.tolist() == [1, 0, 1]
    assert src.where(2) == f"{csv_man}: line 4"

    jl = tmp_path / "t.jsonl"
    jl.write_text('{"path": "x.mp4", "start": 0, "end": 1.5, "text": "hi", "n": 3}\n{"path": "y.mp4", "tags": ["a"]}\n')
    src = resolve_source(jl)
    np.testing.assert_array_equal(src.segments, [[0.0, 1.5], [0.0, np.inf]])
    assert src.meta == {"text": ["hi", None], "n": [3, None], "tags": [None, ["a"]]}
    # Without start/end or other columns nothing is added.
    plain = tmp_path / "p.csv"
    plain.write_text("path,label\nx.mp4,1\n")
    src = resolve_source(plain)
    assert src.segments is None and src.meta is None


@pytest.mark.parametrize(
    "text,match",
    [
        ("path,start,end\nx.mp4,2,1\n", "line 2: column 'end' = 1 is not after 'start' = 2"),
        ("path,start,end\nx.mp4,1,1\n", "line 2: column 'end' = 1 is not after"),
        ("path,start,end\nx.mp4,1,2\nx.mp4,abc,3\n", "line 3: column 'start' = 'abc' is not a number"),
        ("path,start,end\nx.mp4,-1,2\n", "line 2: column 'start' = '-1': pass a finite number"),
        ("path,start,end\nx.mp4,0,inf\n", "line 2: column 'end' = 'inf': pass a finite number"),
        ('{"path": "x.mp4", "end": true}\n', "line 1: column 'end' = True is not a number"),
    ],
)
def test_bad_ranges_name_the_manifest_line_and_column(tmp_path, text, match):
    man = tmp_path / ("m.jsonl" if text.startswith("{") else "m.csv")
    man.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        resolve_source(man)
    assert str(man) in str(info.value)


def test_an_index_file_refuses_rows_that_are_segments(tmp_path):
    from ringload._indexfile_build import build_index

    man = tmp_path / "m.csv"
    man.write_text("path,start,end\nx.mp4,0,1\n")
    with pytest.raises(ConfigError, match="m.csv: its rows have start/end"):
        build_index(resolve_source(man), str(tmp_path / "out.ringindex"))
    assert not (tmp_path / "out.ringindex").exists()
