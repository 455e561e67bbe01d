"""Bytes on disk per record and per completion token of a stage output, per column, as distillkit writes shards.

Run:  .venv/bin/python bench/bench_shard_bytes.py runs/quickstart/filter

Rewrites the folder's records with `distillkit.records.write_shard`'s settings (zstd, no dictionary on
token-id and soft-label columns, ~16 MB row groups) into a temporary file, and compares with the files as
they are (the baseline: whatever wrote them, e.g. an older distillkit through `datasets`' defaults).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    args = ap.parse_args()
    import pyarrow as pa
    import pyarrow.parquet as pq

    from distillkit.records import list_shards, parquet_options, row_group_rows

    files = list_shards(args.folder)
    if not files:
        sys.exit(f"{args.folder}: no shard-*.parquet")
    table = pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
    tokens = sum(table.column("completion_tokens").to_pylist())
    before = sum(os.path.getsize(f) for f in files)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "all.parquet")
        pq.write_table(table, path, row_group_size=row_group_rows(table), **parquet_options(table.schema))
        after = os.path.getsize(path)
        per_column = {}
        for name in table.column_names:
            one = table.select([name])
            pq.write_table(one, path, **parquet_options(one.schema))
            per_column[name] = os.path.getsize(path)
    n = table.num_rows
    print(f"{n} records, {tokens} completion tokens ({tokens / n:.0f} per record)")
    print(f"as written: {before / n / 1024:.1f} KB per record, {before / tokens:.1f} B per token")
    print(f"distillkit's writer: {after / n / 1024:.1f} KB per record, {after / tokens:.1f} B per token "
          f"({after / before:.2f}x)")
    for name, size in sorted(per_column.items(), key=lambda kv: -kv[1])[:6]:
        print(f"  {name:16s} {size / tokens:6.2f} B per token")


if __name__ == "__main__":
    main()
