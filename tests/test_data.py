"""Importers for every supported format, malformed input, duplicate titles and the split."""

from pathlib import Path

import pytest

from hatllm.data import DataError, leave_one_out, load_dataset

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str, encoding="utf-8") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))


def canonical(tmp_path, items="item_id,title\n1,Alpha\n2,Beta\n3,Gamma\n", inter=None):
    inter = inter or "user_id,item_id,timestamp\nu,2,20\nu,1,10\nu,3,30\nv,1,5\n"
    write(tmp_path / "items.csv", items)
    write(tmp_path / "interactions.csv", inter)
    return tmp_path


def test_canonical_sorted_chronologically(tmp_path):
    ds = load_dataset(canonical(tmp_path))
    assert ds.catalog.titles == {"1": "Alpha", "2": "Beta", "3": "Gamma"}
    assert ds.sequences == {"u": ["1", "2", "3"], "v": ["1"]}


def test_ties_keep_file_order(tmp_path):
    ds = load_dataset(canonical(tmp_path, inter="user_id,item_id,timestamp\nu,3,1\nu,1,1\nu,2,0\n"))
    assert ds.sequences["u"] == ["2", "3", "1"]


def test_canonical_subfolder_and_quoted_titles(tmp_path):
    canonical(tmp_path / "canonical", items='item_id,title\n1,"Money Pit, The (1986)"\n2,B\n3,C\n')
    ds = load_dataset(tmp_path)
    assert ds.catalog.titles["1"] == "Money Pit, The (1986)"


def test_movielens_latest_format(tmp_path):
    write(tmp_path / "movies.csv", 'movieId,title,genres\n1,Toy Story (1995),Animation\n2,"Emma (1996)",Drama\n')
    write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n7,2,4.0,200\n7,1,3.5,100\n")
    ds = load_dataset(tmp_path)
    assert ds.sequences == {"7": ["1", "2"]}
    assert ds.catalog.titles["2"] == "Emma (1996)"


def test_movielens_100k_format_latin1(tmp_path):
    write(tmp_path / "u.item", "1|Café (1995)|01-Jan-1995||http://x|0|1\n2|B (1994)|x\n", "latin-1")
    write(tmp_path / "u.data", "5\t2\t3\t881250949\n5\t1\t4\t881250948\n")
    ds = load_dataset(tmp_path)
    assert ds.catalog.titles["1"] == "Café (1995)"
    assert ds.sequences == {"5": ["1", "2"]}


def test_movielens_1m_format(tmp_path):
    write(tmp_path / "movies.dat", "1::Toy Story (1995)::Animation\n2::Jumanji (1995)::Adventure\n", "latin-1")
    write(tmp_path / "ratings.dat", "1::2::5::978300760\n1::1::3::978300000\n")
    assert load_dataset(tmp_path).sequences == {"1": ["1", "2"]}


def test_missing_column_names_file_and_line(tmp_path):
    canonical(tmp_path, items="item_id,name\n1,Alpha\n")
    with pytest.raises(DataError, match=r"items.csv:1: missing columns \['title'\]"):
        load_dataset(tmp_path)


def test_bad_encoding_names_line(tmp_path):
    canonical(tmp_path)
    (tmp_path / "items.csv").write_bytes(b"item_id,title\n1,Alpha\n2,B\xffeta\n")
    with pytest.raises(DataError, match=r"items.csv:3: bytes are not valid utf-8"):
        load_dataset(tmp_path)


def test_bad_timestamp_and_field_count(tmp_path):
    canonical(tmp_path, inter="user_id,item_id,timestamp\nu,1,10\nu,2,yesterday\n")
    with pytest.raises(DataError, match=r"interactions.csv:3: timestamp 'yesterday' is not a number"):
        load_dataset(tmp_path)
    canonical(tmp_path, inter="user_id,item_id,timestamp\nu,1\n")
    with pytest.raises(DataError, match=r"interactions.csv:2: 2 fields"):
        load_dataset(tmp_path)


def test_unknown_items_and_empty_titles_are_counted_skips(tmp_path):
    ds = load_dataset(canonical(
        tmp_path,
        items="item_id,title\n1,Alpha\n2,  \n3,Gamma\n",
        inter="user_id,item_id,timestamp\nu,1,1\nu,2,2\nu,9,3\nu,3,4\n",
    ))
    assert ds.sequences == {"u": ["1", "3"]}
    assert ds.report.skipped == {"empty title": 1, "unknown item id": 2}
    assert "interactions.csv:4" in ds.report.summary()


def test_unknown_folder(tmp_path):
    with pytest.raises(DataError, match="no known dataset format"):
        load_dataset(tmp_path)


@pytest.mark.parametrize("cli", ["hatllm.training.train", "hatllm.training.sasrec", "hatllm.training.recipe",
                                 "hatllm.training.tune_fusion", "hatllm.evaluation.evaluate", "service.loader"])
def test_a_wrong_dataset_folder_is_a_usage_error_of_every_cli(cli, tmp_path, capsys):
    """Said at once, in one line naming the argument, before a model or Redis is touched; not a traceback."""
    import importlib

    with pytest.raises(SystemExit) as exited:
        importlib.import_module(cli).main(["--data", str(tmp_path / "none")])  # refused before the other arguments
    assert exited.value.code == 2 and f"argument --data: {tmp_path / 'none'}: not a directory" in capsys.readouterr().err


def test_duplicate_titles_keep_item_ids():
    ds = load_dataset(REPO / "data" / "ml-latest-small")
    dups = ds.catalog.duplicate_titles
    assert "Emma (1996)" in dups and len(dups["Emma (1996)"]) == 2
    assert len(ds.catalog) == 9742 and len(ds.sequences) == 610 and ds.num_interactions == 100836


def test_leave_one_out_split(tmp_path):
    inter = "user_id,item_id,timestamp\n" + "".join(f"u,{i},{i}\n" for i in (1, 2, 3)) + "v,1,1\nv,2,2\n"
    items = "item_id,title\n1,A\n2,B\n3,C\n"
    split = leave_one_out(load_dataset(canonical(tmp_path, items, inter)), max_history=1)
    assert split.train == {"u": ["1"], "v": ["1", "2"]}  # v is too short to hold out anything
    (valid,), (test,) = split.valid, split.test
    assert (valid.history, valid.target) == (("1",), "2")
    assert (test.history, test.target) == (("2",), "3")  # truncated to the last max_history items
    assert split.popularity() == {"1": 2, "2": 1}
