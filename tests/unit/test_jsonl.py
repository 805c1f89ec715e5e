import json

from rstar_app.jsonl import append_row, read_rows


def test_torn_last_line_is_cut_and_appends_stay_whole(tmp_path):
    p = tmp_path / "rows.jsonl"
    with open(p, "a") as f:
        append_row(f, {"id": 1})
        append_row(f, {"id": 2})
    p.write_bytes(p.read_bytes() + b'{"id": 3, "ans')  # killed mid-write
    assert [r["id"] for r in read_rows(p)] == [1, 2]
    with open(p, "a") as f:
        append_row(f, {"id": 3})
    assert [json.loads(l)["id"] for l in p.read_text().splitlines()] == [1, 2, 3]


def test_missing_file_reads_as_empty(tmp_path):
    assert read_rows(tmp_path / "none.jsonl") == []
