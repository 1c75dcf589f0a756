"""`make demo`'s comparison: ratios taken within a round, their spread, and wording that
stays true when outside load makes a mode read faster than sequential."""

from ringload import demo


def _rows(bounded, strict, sequential):
    return {m: [{"images_per_s": v} for v in vals] for m, vals in
            (("bounded", bounded), ("strict", strict), ("sequential", sequential))}  # fmt: skip


def test_steady_rounds_give_one_line_and_no_warning():
    # The load halves every mode in round 2: the ratios within each round do not move.
    lines = demo.compare(_rows([400, 200, 400], [100, 50, 100], [500, 250, 500]))
    assert lines[0] == ("bounded / sequential = 0.80 (0.80 to 0.80 over 3 rounds); "
                        "strict / sequential = 0.20 (0.20 to 0.20 over 3 rounds)")  # fmt: skip
    assert len(lines) == 2 and "measured reference rather than a bound" in lines[1]
    assert not any("ceiling" in line for line in lines)


def test_a_round_where_bounded_beats_sequential_is_called_noise():
    lines = demo.compare(_rows([560, 400, 420], [100, 100, 100], [500, 500, 500]))
    assert lines[0].startswith("bounded / sequential = 0.84 (0.80 to 1.12 over 3 rounds)")
    (noise,) = [line for line in lines if "faster than sequential" in line]
    assert "in 1 of 3 rounds" in noise and "cannot tell them apart" in noise
    assert not any("ceiling" in line for line in lines)


def test_a_wide_spread_is_reported():
    lines = demo.compare(_rows([300, 450, 400], [100, 100, 100], [500, 500, 500]))
    assert any(line.startswith("bounded / sequential spread over 38% of its median") for line in lines)
    assert not any(line.startswith("strict / sequential spread") for line in lines)


def test_one_round_prints_plain_ratios():
    lines = demo.compare(_rows([400], [100], [500]))
    assert lines[0] == "bounded / sequential = 0.80; strict / sequential = 0.20"
