"""Soft labels (the teacher's per-token distributions): how they are stored on disk and read back.

`codec` holds the compact top-k encoding generate and score write (`packed-v1`) and its vectorised decoder; records
written before it carry int32 ids and fp16 logprobs (`fp16`), which every reader still accepts. `sampled` holds the
other kind, N draws from the teacher's full distribution per position (`sampled-v1`), and the exact sampler.
"""

from distillkit.softlabels.codec import (
    FORMATS,
    FP16,
    PACKED,
    SOFT_LABELS,
    decode_column,
    decode_record,
    decode_struct_array,
    encode_record,
    encode_records,
    kl_topk,
    soft_labels_feature,
    soft_labels_type,
)
from distillkit.softlabels.sampled import (
    SAMPLED,
    SAMPLED_LABELS,
    decode_sampled_column,
    decode_sampled_record,
    draw_sampled_labels,
    encode_sampled_record,
    encode_sampled_records,
)

__all__ = ["FORMATS", "FP16", "PACKED", "SAMPLED", "SAMPLED_LABELS", "SOFT_LABELS", "decode_column", "decode_record",
           "decode_sampled_column", "decode_sampled_record", "decode_struct_array", "draw_sampled_labels",
           "encode_record", "encode_records", "encode_sampled_record", "encode_sampled_records", "kl_topk",
           "soft_labels_feature", "soft_labels_type"]
