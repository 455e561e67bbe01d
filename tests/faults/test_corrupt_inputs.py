"""Damaged inputs (a truncated, empty, garbage or foreign shard; a damaged manifest.json or state.json) reach the
user as one DistillkitError naming the file and the fix, never as a pyarrow or json traceback."""

import random
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distillkit.errors import DistillkitError
from distillkit.records import (
    StageOutput,
    StageRecords,
    count_records,
    iter_records,
    make_record,
    read_manifest,
    read_records,
    record_features,
    unreadable,
    write_shard,
)


def _rows(n, start=0):
    return [make_record(prompt_id=f"p{i}", problem=f"q{i}", completion="x" * 200, completion_ids=list(range(40)),
                        completion_tokens=40) for i in range(start, start + n)]


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]  # a copy that stopped half-way


def _zero(data: bytes) -> bytes:
    return b""


def _garbage(data: bytes) -> bytes:
    return random.Random(0).randbytes(len(data))




DAMAGE = {"truncated": _truncated, "zero_bytes": _zero, "garbage": _garbage}
READERS = {
    "read_records": lambda folder: read_records(folder),
    "iter_records": lambda folder: list(iter_records(folder)),
    "iter_records_columns": lambda folder: list(iter_records(folder, columns=["id", "completion_tokens"])),
    "count_records": lambda folder: count_records(folder),
    "StageRecords": lambda folder: list(StageRecords(folder)),
    "StageRecords_len": lambda folder: len(StageRecords(folder)),
}


@pytest.fixture
def generate_folder(tmp_path):
    """A finished generate output of three shards (state.json, manifest.json), as the stage leaves it."""
    folder = tmp_path / "run" / "generate"
    out = StageOutput(folder, "generate", "h1")
    out.begin()
    for k in range(3):
        out.write_shard(k, _rows(40, start=40 * k), record_features())
    out.finish(counts={"records": 120})
    return folder


def _damage(folder, how, index=1):
    path = folder / f"shard-{index:05d}.parquet"
    path.write_bytes(how(path.read_bytes()))
    return path


def _damage_pages(folder, index=1):
    """The data pages overwritten, the footer intact: the file opens, reading its rows fails."""
    path = folder / f"shard-{index:05d}.parquet"
    meta = pq.ParquetFile(path).metadata
    end = meta.row_group(0).column(meta.num_columns - 1).data_page_offset  # the last column's pages stay
    data = bytearray(path.read_bytes())
    data[4:end] = b"\xab" * (end - 4)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("reader", READERS)
def test_a_damaged_shard_is_named_with_the_fix(generate_folder, damage, reader):
    path = _damage(generate_folder, DAMAGE[damage])
    with pytest.raises(DistillkitError) as e:
        READERS[reader](generate_folder)
    msg = str(e.value)
    assert msg.startswith(f"{path} is not a readable Parquet file (")
    # the stage counts as finished while its manifest is there: the fix names both files
    assert f"delete it and {generate_folder / 'manifest.json'} (while it is there the stage counts as finished)" in msg
    assert "then rerun `distillkit generate` with the same recipe, which makes that shard again" in msg
    assert "\n" not in msg  # one line: pyarrow's schema dumps are cut


@pytest.mark.parametrize("reader", ["iter_records", "StageRecords", "read_records"])
def test_damage_past_the_footer_is_named_too(generate_folder, reader):
    path = _damage_pages(generate_folder)
    assert count_records(generate_folder) == 120  # the footer still reads
    with pytest.raises(DistillkitError, match="is not a readable Parquet file") as e:
        READERS[reader](generate_folder)
    assert str(path) in str(e.value)


def test_the_fix_follows_the_stage_that_wrote_the_folder(tmp_path):
    # a generate folder that never finished: no manifest to delete
    gen = tmp_path / "run" / "generate"
    StageOutput(gen, "generate", "h1").begin()
    write_shard(gen, 0, _rows(4), record_features())
    _damage(gen, _zero, 0)
    with pytest.raises(DistillkitError, match=r"\(ArrowInvalid: Parquet file size is 0 bytes\): delete it, then "
                                              r"rerun `distillkit generate`"):
        count_records(gen)
    # the filter's output (and its rejected/): the filter rewrites it whole
    filt = tmp_path / "run" / "filter"
    StageOutput(filt, "filter", "h2").begin()
    write_shard(filt / "rejected", 0, _rows(4), record_features())
    path = _damage(filt / "rejected", _truncated, 0)
    with pytest.raises(DistillkitError) as e:
        list(iter_records(filt / "rejected"))
    assert str(e.value).startswith(str(path)) and "rerun `distillkit filter --overwrite`" in str(e.value)
    # a folder of unknown origin
    other = tmp_path / "copied"
    write_shard(other, 0, _rows(4), record_features())
    _damage(other, _garbage, 0)
    fix = f"put back a good copy of the file, or rerun whatever wrote {other}"
    with pytest.raises(DistillkitError, match=re.escape(fix)):
        read_records(other)


def test_a_shard_without_the_needed_columns_is_named(generate_folder):
    foreign = [{"question": "q", "answer": "a"}] * 3  # a foreign dataset's shard copied in
    path = write_shard(generate_folder, 3, foreign)
    with pytest.raises(DistillkitError) as e:
        list(iter_records(generate_folder, columns=["id", "prompt_id"]))
    msg = str(e.value)
    assert msg.startswith(f"{path} has no column 'id', 'prompt_id' (it has ['question', 'answer'])")
    assert "rerun `distillkit generate`" in msg
    with pytest.raises(DistillkitError, match="shard-00003.parquet has no column 'id'"):
        read_records(generate_folder, columns=["id"])
    path.unlink()
    write_shard(generate_folder, 3, [{"id": 7, "prompt_id": 7}])  # the same names, other types
    with pytest.raises(DistillkitError, match=f"the shards of {re.escape(str(generate_folder))} do not fit together"):
        read_records(generate_folder, columns=["id", "prompt_id"])


def test_a_disk_fault_is_left_to_faults_explain(tmp_path):
    """Permission denied is not a damaged file: it goes on as the OSError, which `faults.explain` words."""
    from distillkit.faults import explain

    path = tmp_path / "shard-00000.parquet"
    denied = PermissionError(13, "Permission denied", str(path))
    assert unreadable(path, denied) is denied
    assert "permission denied" in str(explain(denied))
    assert isinstance(unreadable(path, OSError("Couldn't deserialize thrift")), DistillkitError)
    out_of_memory = pa.ArrowMemoryError("malloc of size 1 GiB failed")
    assert unreadable(path, out_of_memory) is out_of_memory  # not the file's fault


@pytest.mark.parametrize("content", [b'{"stage": "gener', b"", b"\xff\xfe\x00garbage", b'{"x": 1}', b"[]"])
def test_a_damaged_manifest_is_named_with_the_fix(generate_folder, content):
    path = generate_folder / "manifest.json"
    path.write_bytes(content)
    with pytest.raises(DistillkitError) as e:
        read_manifest(generate_folder)
    msg = str(e.value)
    assert msg.startswith(f"{path} is not a distillkit manifest (")
    assert msg.endswith(f"delete it and rerun `distillkit generate` with the same recipe, which writes it again; "
                        f"finished shards in {generate_folder} are kept")
    with pytest.raises(DistillkitError, match="is not a distillkit manifest"):  # the stage's own check, too
        StageOutput(generate_folder, "generate", "h1").is_complete()
    # the fix works: without it the stage resumes (same config) and writes the manifest again
    path.unlink()
    out = StageOutput(generate_folder, "generate", "h1")
    assert not out.is_complete()
    out.begin()
    assert out.committed_shard_indices() == {0, 1, 2}
    out.finish()
    assert read_manifest(generate_folder).config_hash == "h1"


@pytest.mark.parametrize("content", [b'{"config_hash": "h', b"", b"\x93\xff\x00garbage", b"[1, 2]"])
def test_a_damaged_state_file(tmp_path, content):
    folder = tmp_path / "generate"
    out = StageOutput(folder, "generate", "h1")
    out.begin()
    (folder / "state.json").write_bytes(content)
    out.begin()  # no shards yet: nothing to protect, the state is written again
    assert '"config_hash": "h1"' in (folder / "state.json").read_text()
    write_shard(folder, 0, _rows(2), record_features())
    (folder / "state.json").write_bytes(content)
    with pytest.raises(DistillkitError) as e:  # shards of an unknown config: named, not "a different config"
        StageOutput(folder, "generate", "h1").begin()
    assert str(e.value).startswith(f"{folder / 'state.json'} is damaged (")
    assert "which config wrote the shards" in str(e.value) and "--overwrite" in str(e.value)
    out.finish()  # with a manifest the config is known: the damaged state is simply written again
    (folder / "state.json").write_bytes(content)
    StageOutput(folder, "generate", "h1").begin()


def test_inspect_names_a_damaged_shard(generate_folder):
    from distillkit.inspect import summarize_output

    path = _damage(generate_folder, _truncated, 2)
    with pytest.raises(DistillkitError, match="is not a readable Parquet file") as e:
        summarize_output(generate_folder)
    assert str(path) in str(e.value)


def _cli(argv, capsys):
    from distillkit import cli

    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    captured = capsys.readouterr()
    return e.value.code, " ".join(captured.err.split()), captured.out + captured.err


def test_filter_through_the_cli_names_a_damaged_generate_shard_and_reruns_once_it_is_replaced(tmp_path, capsys):
    from distillkit.config import load_recipe
    from distillkit.testing.traces import write_synthetic_run

    args = [f"output_dir={tmp_path}/run"]
    gen = load_recipe(None, args).stage_dir("generate")
    write_synthetic_run(gen, 24, shard_size=8, samples=2, chars=300)  # a finished generate output, no model run
    shard = gen / "shard-00001.parquet"
    good = shard.read_bytes()
    shard.write_bytes(_truncated(good))

    code, err, everything = _cli(["filter", *args], capsys)
    assert code == 2, everything
    assert str(shard) in err and "corrupt or truncated" in err and "rerun `distillkit generate`" in err
    assert "Traceback" not in everything

    manifest = gen / "manifest.json"  # a damaged upstream manifest, the same way
    manifest_text = manifest.read_bytes()
    manifest.write_bytes(manifest_text[:40])
    code, err, everything = _cli(["filter", *args], capsys)
    assert code == 2 and f"{manifest} is not a distillkit manifest" in err and "Traceback" not in everything
    manifest.write_bytes(manifest_text)

    code, err, everything = _cli(["inspect", str(gen)], capsys)
    assert code == 2 and f"{shard} is not a readable Parquet file" in err and "Traceback" not in everything

    shard.write_bytes(good)  # the fix: a good copy
    code, err, everything = _cli(["filter", *args], capsys)
    assert code == 0, everything
    assert count_records(tmp_path / "run" / "filter") + count_records(tmp_path / "run" / "filter" / "rejected") == 24


def test_the_folder_copy_is_untouched_by_a_failed_read(generate_folder):
    """Reading never deletes or rewrites a damaged shard: the user decides (it may be their only copy)."""
    path = _damage(generate_folder, _truncated)
    before = path.read_bytes()
    with pytest.raises(DistillkitError):
        read_records(generate_folder)
    assert path.read_bytes() == before and sorted(p.name for p in generate_folder.iterdir()) == [
        "manifest.json", "shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet", "state.json"]
