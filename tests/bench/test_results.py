"""bench/results.py: a benchmark's result file is never one another run wrote."""
import concurrent.futures

from bench import results


def test_the_first_run_gets_the_plain_name_and_later_ones_a_number(tmp_path):
    first = results.reserve(tmp_path / "out", "serving-memory-20261205T034242Z")
    first.write_text("first run")
    second = results.reserve(tmp_path / "out", "serving-memory-20261205T034242Z")
    third = results.reserve(tmp_path / "out", "serving-memory-20261205T034242Z", ".log")
    assert first.name == "serving-memory-20261205T034242Z.json"
    assert second.name == "serving-memory-20261205T034242Z-2.json"
    assert third.name == "serving-memory-20261205T034242Z.log"
    assert first.read_text() == "first run"
    assert second.exists() and second.read_text() == ""


def test_runs_finishing_together_each_get_their_own_file(tmp_path):
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda _: results.reserve(tmp_path, "ingest-20261205-034242"), range(16)))
    assert len(set(paths)) == 16
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(path.name for path in paths)
