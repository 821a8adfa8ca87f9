"""MarkedRecords adds a per-row field that survives views; evenly_spaced picks a fixed spread-out subset."""

import numpy as np
import pytest

from bigmodel.data.records import MarkedRecords, evenly_spaced, records_from_rows


def test_marks_follow_rows_through_views_and_messages_keep_row_numbers():
    base = records_from_rows([{"x": i} for i in range(6)], "rows.jsonl").select([1, 2, 3, 4, 5])
    marked = MarkedRecords(base, "_judged", [i in {0, 3} for i in range(5)])
    assert [r["_judged"] for r in marked] == [True, False, False, True, False]
    assert marked.columns == ["x"] and marked.column("x") == [1, 2, 3, 4, 5]
    view = marked.select([3, 4])
    assert [(r["x"], r["_judged"]) for r in view] == [(4, True), (5, False)]
    assert view.row_number(0) == 5  # row 5 of rows.jsonl
    with pytest.raises(ValueError, match="3 marks for 5 records"):
        MarkedRecords(base, "_judged", [True] * 3)


def test_evenly_spaced_includes_both_ends_and_never_repeats():
    assert evenly_spaced(10, 4).tolist() == [0, 3, 6, 9]
    assert evenly_spaced(3, 10).tolist() == [0, 1, 2]
    assert evenly_spaced(0, 5).size == 0 and evenly_spaced(5, 0).size == 0
    picks = evenly_spaced(1000, 37)
    assert len(picks) == 37 and np.all(np.diff(picks) > 0)
