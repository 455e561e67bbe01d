"""Trace records: the schema every stage reads and writes, sharded Parquet I/O, manifests, atomic writes.

A stage output is a folder:

    shard-00000.parquet, shard-00001.parquet, ...   records (Parquet, with `datasets` features in the metadata)
    state.json                                      written when the stage starts (config hash)
    manifest.json                                   written last: its presence means "complete"

Every file is written to a hidden temporary name in the same folder and then renamed, so a killed
process leaves either the old file, the new file, or a `.tmp-*` leftover that no reader looks at.

Record fields (one row per teacher sample):

    id                 str    unique sample id, "<prompt_id>#<sample_index>"
    prompt_id          str    stable id of the prompt (from the data, or a hash of the problem)
    sample_index       int    0..n-1 among the n samples of one prompt
    source             str    where the prompt came from (dataset name, "arith", ...)
    problem            str    the problem statement
    gold_answer        str?   reference answer (math), or null
    tests              str?   JSON list of tests for code problems, or null:
                              [{"type": "assert", "code": "..."}, {"type": "stdio", "input": "...", "output": "..."}]
    messages           list   the chat sent to the teacher: [{"role": ..., "content": ...}]
    teacher            str    teacher model id
    sampling           str    JSON of the sampling parameters used
    prefill            str    text the assistant turn was pre-filled with (R1: "<think>\\n"), or ""
    completion         str    generated text (without the prefill)
    completion_ids     list   generated token ids (int32), needed to align soft labels for KD
    reasoning          str?   the text inside the reasoning block, or null if none was found
    response           str?   the text after the reasoning block (the final answer section)
    reasoning_closed   bool   whether `</think>` appeared
    prompt_tokens      int    prompt length in teacher tokens
    completion_tokens  int    completion length in teacher tokens
    finish_reason      str    "stop" or "length" (truncated), as the backend reported
    topk_ids           list?  soft labels: (completion_tokens, k) int32 token ids, fixed width k
    topk_logprobs      list?  soft labels: (completion_tokens, k) float16 logprobs, same shape
    soft_labels        struct? the same soft labels in the compact `packed-v1` encoding (generate and score write
                              it by default; distillkit/softlabels/codec.py), in place of the two columns above.
                              Every reader here decodes it back into `topk_ids` / `topk_logprobs`, so a stage
                              sees one record shape whichever format a shard holds
    sampled_labels     struct? sampled soft labels (`sampled-v1`, distillkit/softlabels/sampled.py): N draws from
                              the teacher's distribution per token, in place of top-k. Readers decode them into
                              `topk_ids` (the distinct ids drawn, (T, N)), `topk_logprobs` (log(count / N), float32)
                              and `token_logprobs` ((T,) the teacher's logprob of each completion token); a record
                              carrying `token_logprobs` holds sampled labels, never top-k
    verdicts           list   filter verdicts [{"verifier", "passed" (bool or null), "reason"}]
    meta               str    JSON of anything else (backend details, timings)

The contract is documented here, once; its parts are modules: `files` (the folder's file names, atomic writes,
locks), `schema` (the fields above, `make_record`, `split_reasoning`), `shards` (writing), `reading`, `manifest`
(`StageOutput`, manifest.json), `damaged` (what an unreadable file reads as), `hashing`. Every name is importable
from `distillkit.records`.
"""

from distillkit.records.damaged import reading_shard, unreadable
from distillkit.records.files import (
    MANIFEST,
    SHARD_GLOB,
    STATE,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    file_lock,
)
from distillkit.records.hashing import content_digest, seeded_rank, stable_hash
from distillkit.records.manifest import SCHEMA_VERSION, Manifest, StageOutput, library_versions, read_manifest
from distillkit.records.reading import (
    StageRecords,
    count_records,
    iter_records,
    read_records,
    soft_label_bytes,
    soft_label_format,
    unpack_soft_labels,
)
from distillkit.records.schema import (
    RECORD_DEFAULTS,
    SOFT_LABEL_COLUMNS,
    SOFT_LABEL_FORMATS,
    make_record,
    record_features,
    split_reasoning,
    teacher_name,
)
from distillkit.records.shards import (
    ROW_GROUP_BYTES,
    list_shards,
    parquet_options,
    row_group_rows,
    rows_per_batch,
    shard_path,
    write_shard,
)

__all__ = [
    "MANIFEST", "RECORD_DEFAULTS", "ROW_GROUP_BYTES", "SCHEMA_VERSION", "SHARD_GLOB", "SOFT_LABEL_COLUMNS",
    "SOFT_LABEL_FORMATS", "STATE", "Manifest", "StageOutput", "StageRecords", "atomic_path", "atomic_write_bytes",
    "atomic_write_json", "atomic_write_text", "content_digest", "count_records", "file_lock", "iter_records",
    "library_versions", "list_shards", "make_record", "parquet_options", "read_manifest", "read_records",
    "reading_shard", "record_features", "row_group_rows", "rows_per_batch", "seeded_rank", "shard_path",
    "soft_label_bytes", "soft_label_format", "split_reasoning", "stable_hash", "teacher_name", "unpack_soft_labels", "unreadable",
    "write_shard",
]
