"""Records: schema round trip, atomic shards that survive SIGKILL, manifests, folder claims."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pyarrow.parquet as pq
import pytest

from distillkit.errors import DistillkitError
from distillkit.records import (
    StageOutput,
    atomic_write_json,
    count_records,
    list_shards,
    make_record,
    read_manifest,
    read_records,
    record_features,
    split_reasoning,
    write_shard,
)


def _rows(n, k=3, start=0):
    return [make_record(prompt_id=f"p{i}", problem=f"q{i}", sample_index=0, completion="x",
                        completion_ids=[1, 2], completion_tokens=2,
                        topk_ids=[[1, 2, 3], [4, 5, 6]][:2], topk_logprobs=[[-0.1, -2.0, -3.0]] * 2)
            for i in range(start, start + n)]


def test_round_trip_with_fixed_width_soft_labels(tmp_path):
    write_shard(tmp_path, 0, _rows(5), record_features(topk=3))
    ds = read_records(tmp_path)
    assert len(ds) == 5 and ds[0]["id"] == "p0#0"
    assert ds[0]["topk_ids"] == [[1, 2, 3], [4, 5, 6]]
    assert ds[0]["topk_logprobs"][0][1] == -2.0
    # Arrow stores the inner lists as fixed-size lists (one flat buffer, no per-token offsets).
    field = pq.read_schema(list_shards(tmp_path)[0]).field("topk_ids")
    assert "fixed_size_list" in str(field.type) and "[3]" in str(field.type)


def test_split_reasoning_with_prefill():
    assert split_reasoning("step 1\n</think>\n\nThe answer is 4.", prefill="<think>\n") == \
        ("step 1", "The answer is 4.", True)
    assert split_reasoning("still thinking", prefill="<think>\n") == ("still thinking", None, False)
    assert split_reasoning("no tags at all") == (None, None, False)
    assert split_reasoning("<think>a</think>b") == ("a", "b", True)


WRITER = textwrap.dedent("""
    import sys
    from distillkit.records import make_record, record_features, write_shard, atomic_write_json
    folder = sys.argv[1]
    rows = [make_record(prompt_id=f"p{i}", problem="q" * 200, completion="y" * 2000,
                        completion_ids=list(range(300))) for i in range(400)]
    print("ready", flush=True)
    for i in range(10_000):
        write_shard(folder, i % 3, rows, record_features())
        atomic_write_json(folder + "/state.json", {"i": i, "pad": "z" * 200_000})
""")


@pytest.mark.parametrize("delay", [0.4, 0.9, 1.7])
def test_sigkill_never_leaves_a_half_file_that_reads_as_complete(tmp_path, delay):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for shard in list_shards(tmp_path):  # every file a reader would pick up is whole
        assert pq.ParquetFile(shard).metadata.num_rows == 400
    assert count_records(tmp_path) == 400 * len(list_shards(tmp_path))
    if (tmp_path / "state.json").exists():
        assert len(json.loads((tmp_path / "state.json").read_text())["pad"]) == 200_000
    # Leftovers of the killed write are hidden temp files, never listed as shards.
    assert all(p.name.startswith(".tmp-") for p in tmp_path.iterdir()
               if p.name not in {"state.json"} and not p.name.startswith("shard-"))


def test_stage_output_refuses_to_mix_configs(tmp_path):
    out = StageOutput(tmp_path / "gen", "generate", "hash-a", {"n": 1})
    out.begin()
    out.write_shard(0, _rows(2), record_features(3))
    assert not out.is_complete()
    # Same config: resume sees the committed shard.
    again = StageOutput(tmp_path / "gen", "generate", "hash-a")
    again.begin()
    assert again.committed_shard_indices() == {0}
    other = StageOutput(tmp_path / "gen", "generate", "hash-b")
    with pytest.raises(DistillkitError, match="different config .*--overwrite"):
        other.begin()
    other.begin(overwrite=True)
    assert other.committed_shard_indices() == set()


def test_manifest_written_last_with_versions_and_counts(tmp_path):
    out = StageOutput(tmp_path, "filter", "h1", {"a": 1}, inputs={"generate": "h0"})
    out.begin()
    out.write_shard(0, _rows(3), record_features(3))
    assert read_manifest(tmp_path) is None
    m = out.finish(counts={"records": 3})
    assert out.is_complete()
    again = read_manifest(tmp_path)
    assert again == m and again.counts == {"records": 3} and again.inputs == {"generate": "h0"}
    assert "datasets" in again.versions and "pyarrow" in again.versions
    assert "shard-00000.parquet" in again.files and again.timings["total_s"] >= 0


def test_corrupt_manifest_is_a_clear_error(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DistillkitError, match="not a distillkit manifest"):
        read_manifest(tmp_path)


def test_atomic_json_replaces_whole_file(tmp_path):
    path = tmp_path / "a.json"
    atomic_write_json(path, {"x": 1})
    atomic_write_json(path, {"x": 2})
    assert json.loads(path.read_text()) == {"x": 2}
    assert sorted(os.listdir(tmp_path)) == ["a.json"]
