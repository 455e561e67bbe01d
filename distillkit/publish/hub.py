"""Uploading to the Hugging Face Hub: create the repo, upload a prepared folder.

The token comes from huggingface_hub's usual places (HF_TOKEN, or `hf auth login`'s stored token)
and is handed to `HfApi` only. It is never logged, printed, or written into a card, manifest or
error message: failures are re-raised with any occurrence of it masked.
"""

from __future__ import annotations

import logging
from pathlib import Path

from distillkit.errors import DistillkitError, require

log = logging.getLogger(__name__)


def find_token() -> str | None:
    """The Hub token from HF_TOKEN or the stored login (huggingface_hub's own lookup), or None."""
    hf = require("huggingface_hub", "train", "publishing needs huggingface_hub")
    return hf.get_token()


def _masked(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def upload_folder(folder: Path, repo_id: str, repo_type: str, private: bool, token: str,
                  commit_message: str) -> str:
    """Create `repo_id` if needed and upload `folder` as one commit; returns the commit URL."""
    hf = require("huggingface_hub", "train", "publishing needs huggingface_hub")
    api = hf.HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type=repo_type,
                                 commit_message=commit_message)
    except Exception as e:  # network, auth, quota: say which repo, never echo the token
        raise DistillkitError(_masked(f"uploading {folder} to {repo_type} repo {repo_id} failed: "
                                      f"{type(e).__name__}: {e}", token)) from None
    url = getattr(info, "commit_url", None) or str(info)
    log.info("uploaded %s to %s (%s)", folder, repo_id, url)
    return url
