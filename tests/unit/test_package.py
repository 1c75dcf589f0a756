import pickle
import subprocess
import sys

import ringload
from ringload import errors


def test_all_is_sorted_and_importable():
    assert ringload.__all__ == sorted(ringload.__all__)
    for name in ringload.__all__:
        assert hasattr(ringload, name), name


def test_video_error_names_file_and_survives_pickle():
    err = errors.DecodeError("/data/a.mp4", "frame 12 does not decode", hint="use on_error='skip'")
    assert "/data/a.mp4" in str(err) and "frame 12" in str(err) and "on_error" in str(err)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is errors.DecodeError
    assert (back.path, back.reason, back.hint) == (err.path, err.reason, err.hint)
    assert isinstance(back, ringload.VideoError) and isinstance(back, ringload.RingloadError)


def test_cli_version():
    out = subprocess.run(
        [sys.executable, "-m", "ringload.cli", "--version"], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == f"ringload {ringload.__version__}"
