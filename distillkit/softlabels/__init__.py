"""Soft labels (the teacher's per-token top-k distributions): how they are stored on disk and read back.

`codec` holds the compact encoding generate and score write (`packed-v1`) and its vectorised decoder; records
written before it carry int32 ids and fp16 logprobs (`fp16`), which every reader still accepts.
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

__all__ = ["FORMATS", "FP16", "PACKED", "SOFT_LABELS", "decode_column", "decode_record", "decode_struct_array",
           "encode_record", "encode_records", "kl_topk", "soft_labels_feature", "soft_labels_type"]
