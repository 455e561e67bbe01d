"""Cards render and validate; a dry run writes exactly the upload folders; the token never leaks."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from distillkit.errors import DistillkitError
from distillkit.publish import cards
from distillkit.publish.stage import run_publish

ROOT = Path(__file__).resolve().parents[2]
FAKE_TOKEN = "hf_FAKEtokenDISTILLKITtest0123456789abcdef"


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_package_templates_equal_data_cards():
    for name in ("model_card.md", "dataset_card.md"):
        assert (cards.TEMPLATES_DIR / name).read_text() == (ROOT / "data_cards" / name).read_text(), name


def test_model_card_metadata_round_trips(run_cfg):
    from huggingface_hub import ModelCard

    card = cards.render_model_card(run_cfg, results=cards.load_eval_results(run_cfg))
    parsed = cards.validate_model_card(str(card), expected_eval=1)
    d = ModelCard(str(card)).data
    assert d.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"  # builtin mapped to its Hub id
    assert d.datasets == ["someone/pubtest-traces"] and d.license == "apache-2.0"
    assert {"distillkit", "distillation", "reasoning"} <= set(d.tags)
    (result,) = parsed.data.eval_results
    assert (result.dataset_name, result.metric_type, result.metric_value) == ("distillkit_arith", "pass@1", 14.25)
    assert "| distillkit_arith (100 questions) | 15.0 ± 3.0 | 5.0 ± 2.0 | 14.2 ± 3.1 |" in card.text
    assert "4 samples per question at\ntemperature 0.6 and top-p 0.95" in card.text
    results = cards.load_eval_results(run_cfg)
    results.protocol.gen_prefix = "<think>\n"
    assert "chat template applied, answers forced to start with `<think>`, 4 samples" in \
        str(cards.render_model_card(run_cfg, results=results).text).replace("\n", " ")


def test_model_card_training_table_names_the_objective_and_the_run(run_cfg):
    from distillkit.records import read_manifest

    cfg = run_cfg.model_copy(deep=True)
    cfg.train.kd.enabled, cfg.generate.sampling.topk_logprobs = True, 20
    card = cards.render_model_card(cfg, train_manifest=read_manifest(cfg.stage_dir("train")))
    assert ("| objective | soft-label KD (forward_kl, stored top-20 + tail bucket, alpha=0.5, T=1.0) + cross-entropy |"
            in card.text)
    for row in ("| tokens seen | 12345 |", "| tokens per s | 390.0 |", "| train seconds | 31.7 |",
                "| final train loss | 0.52 |"):
        assert row in card.text
    assert "| ran as | one process" in card.text  # what ran, from the manifest
    manifest = read_manifest(cfg.stage_dir("train"))
    manifest.stats.update(num_processes=2, bf16=False, distributed={"type": "FSDP", "fsdp_version": 2,
                                                                      "num_processes": 2, "mixed_precision": "no"})
    text = cards.render_model_card(cfg, train_manifest=manifest).text
    batch = cfg.train.per_device_train_batch_size * cfg.train.gradient_accumulation_steps * 2
    assert "| ran as | FSDP2 over 2 processes, fp32 |" in text and f"| effective batch | {batch} |" in text
    cfg.train.kd.teacher_probs = "live"
    assert "live teacher, full vocabulary" in cards.render_model_card(cfg).text
    cfg.train.kd.teacher_probs, cfg.train.on_policy.enabled = "served", True
    cfg.train.kd.teacher_server.topk = 8
    assert "served teacher's top-8 + tail bucket" in cards.render_model_card(cfg).text
    cfg.train.kd.teacher_probs, cfg.stages = "topk_tail", [*cfg.stages, "score"]
    cfg.score.topk, cfg.score.teacher.model = 32, "org/big-teacher"
    assert "stored top-32 + tail bucket, scored by org/big-teacher" in cards.render_model_card(cfg).text


def test_model_card_validation_reports_problems(run_cfg):
    text = str(cards.render_model_card(run_cfg, results=cards.load_eval_results(run_cfg)))
    with pytest.raises(DistillkitError, match="license is missing"):
        cards.validate_model_card(text.replace("license: apache-2.0\n", ""))
    with pytest.raises(DistillkitError, match="model-index holds 1 results, expected 2"):
        cards.validate_model_card(text, expected_eval=2)
    with pytest.raises(DistillkitError, match="does not parse"):
        cards.validate_model_card(text.replace("model-index:", "model-index: [", 1))


def test_model_card_of_a_local_student_has_no_base_model(run_cfg, tiny_qwen2):
    run_cfg.train.student.model = str(tiny_qwen2)
    card = cards.render_model_card(run_cfg)
    assert cards.validate_model_card(str(card), expected_eval=0).data.base_model is None
    assert "started from a local model" in card.text and "Not evaluated." in card.text


def test_dataset_card(run_cfg):
    card = cards.render_dataset_card(run_cfg, None, __import__("distillkit.records", fromlist=["x"])
                                     .read_manifest(run_cfg.stage_dir("filter")))
    d = cards.validate_dataset_card(str(card)).data.to_dict()
    assert d["size_categories"] == ["n<1K"] and d["license"] == "apache-2.0"
    assert [c["config_name"] for c in d["configs"]] == ["default"]
    text = card.text
    assert "| kept (`train` split) | 3 | 2 |" in text and "| rejected | 5 | |" in text
    assert "| math | 6 | 3 | 3 | wrong_answer 2, no_boxed_answer 1 |" in text
    assert "| teacher | `HuggingFaceTB/SmolLM2-135M-Instruct` |" in text and "| temperature | 0.6 |" in text
    assert "Not applied" in text  # decontamination off in this recipe


def test_dataset_card_with_decontamination(run_cfg):
    from distillkit.records import read_manifest

    run_cfg.filter.decontaminate.enabled = True
    run_cfg.filter.decontaminate.benchmarks = [{"path": "aime24.jsonl"}]
    stats = read_manifest(run_cfg.stage_dir("filter"))
    stats.stats["funnel"].append({"step": "decontaminate", "in": 3, "rejected": 1, "out": 2})
    text = cards.render_dataset_card(run_cfg, None, stats).text
    assert "any 8-word n-gram with a problem of aime24.jsonl were removed (1 records)" in text


def test_dry_run_writes_exactly_the_upload_folders(run_cfg):
    manifest = run_publish(run_cfg, dry_run=True)
    out = run_cfg.stage_dir("publish")
    model_files = {p.name for p in (run_cfg.stage_dir("train") / "model").iterdir()}
    assert _files(out / "model") == model_files | {"README.md", "eval/results.json", "eval/comparison.md"}
    assert _files(out / "dataset") == {"README.md", "data/train-00000.parquet"}
    assert manifest.stats["files"] == {"model": sorted(_files(out / "model")), "dataset": sorted(_files(out / "dataset"))}
    assert manifest.stats["dry_run"] is True and manifest.stats["uploaded"] == {}
    # the parquet data is what `datasets` loads from the card's `configs`
    import datasets

    ds = datasets.load_dataset("parquet", data_files=str(out / "dataset" / "data" / "*.parquet"), split="train")
    assert ds.num_rows == 3 and ds[0]["gold_answer"] == "1"
    cards.validate_dataset_card((out / "dataset" / "README.md").read_text(), folder=out / "dataset")


def test_dry_run_with_adapter_and_rejected(make_run_cfg):
    cfg = make_run_cfg(upload="both", include_rejected=True)
    run_publish(cfg, dry_run=True)
    out = cfg.stage_dir("publish")
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= _files(out / "model")
    adapter_cfg = json.loads((out / "model" / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    # the train output itself still names its local base (the publish copy was rewritten, not the original)
    original = json.loads((cfg.stage_dir("train") / "adapter" / "adapter_config.json").read_text())
    assert original["base_model_name_or_path"].endswith("student_init")
    assert _files(out / "dataset") == {"README.md", "data/train-00000.parquet", "rejected/train-00000.parquet"}
    assert "config_name: rejected" in (out / "dataset" / "README.md").read_text()


def test_adapter_upload_without_adapter_says_what_to_set(run_cfg):
    import shutil

    shutil.rmtree(run_cfg.stage_dir("train") / "adapter")
    run_cfg.publish.upload = "adapter"
    with pytest.raises(DistillkitError, match="set publish.upload=merged"):
        run_publish(run_cfg)


class FakeHfApi:
    calls: list = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, repo_type=None, private=None, exist_ok=False):
        FakeHfApi.calls.append(("create_repo", self.token, repo_id, repo_type, private))

    def upload_folder(self, repo_id, folder_path, repo_type=None, commit_message=None):
        FakeHfApi.calls.append(("upload_folder", self.token, repo_id, repo_type, sorted(_files(Path(folder_path)))))
        if repo_type == "dataset" and getattr(FakeHfApi, "fail", False):
            raise RuntimeError(f"401 Unauthorized for token {self.token}")
        return type("CommitInfo", (), {"commit_url": f"https://hub.example/{repo_id}/commit/1"})()


def _scan_for_token(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and FAKE_TOKEN.encode() in p.read_bytes()]


def test_push_uploads_the_dry_run_folders_and_never_writes_the_token(run_cfg, monkeypatch, capsys, caplog):
    import huggingface_hub

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    FakeHfApi.calls = []
    caplog.set_level(logging.DEBUG)
    dry = run_publish(run_cfg, dry_run=True)
    pushed = run_publish(run_cfg, dry_run=False)

    creates = [c for c in FakeHfApi.calls if c[0] == "create_repo"]
    uploads = {c[2]: c[4] for c in FakeHfApi.calls if c[0] == "upload_folder"}
    assert creates == [("create_repo", FAKE_TOKEN, "someone/pubtest-student", "model", True),
                       ("create_repo", FAKE_TOKEN, "someone/pubtest-traces", "dataset", True)]
    assert uploads == {"someone/pubtest-student": dry.stats["files"]["model"],
                       "someone/pubtest-traces": dry.stats["files"]["dataset"]}
    assert pushed.stats["uploaded"]["model"].endswith("/commit/1")

    # An upload error that echoes the token is re-raised with the token masked.
    FakeHfApi.fail = True
    try:
        with pytest.raises(DistillkitError) as err:
            run_publish(run_cfg, dry_run=False)
    finally:
        FakeHfApi.fail = False
    assert FAKE_TOKEN not in str(err.value) and "***" in str(err.value)

    captured = capsys.readouterr()
    assert FAKE_TOKEN not in captured.out + captured.err
    assert FAKE_TOKEN not in caplog.text
    assert _scan_for_token(run_cfg.run_dir) == []


def test_cli_publish_dry_run_never_prints_the_token(run_cfg, monkeypatch, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from distillkit.cli import app

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(run_cfg.model_dump(mode="json")))
    result = CliRunner().invoke(app, ["publish", str(recipe), "--dry-run", "--verbose"])
    assert result.exit_code == 0, result.output
    assert FAKE_TOKEN not in result.output
    assert _scan_for_token(run_cfg.run_dir) == []
    assert (run_cfg.stage_dir("publish") / "model" / "README.md").exists()


def test_push_needs_repo_ids_and_a_token(run_cfg, monkeypatch, tmp_path):
    run_cfg.publish.model_repo = None
    run_cfg.publish.dataset_repo = None
    with pytest.raises(DistillkitError, match="set publish.model_repo"):
        run_publish(run_cfg, dry_run=False)
    run_cfg.publish.dataset_repo = "someone/traces"
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no stored login either
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_TOKEN_PATH", str(tmp_path / "hf_home" / "token"))
    monkeypatch.setattr(c, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf_home" / "stored_tokens"), raising=False)
    with pytest.raises(DistillkitError, match="no Hugging Face token"):
        run_publish(run_cfg, dry_run=False)


def test_model_card_records_adopted_tokens_and_context_override(run_cfg):
    """What student_init changed in the student (its special tokens, its context) is on the card."""
    from distillkit.records import Manifest
    from distillkit.schemas.train import TrainStats

    cfg = run_cfg.model_copy(deep=True)
    cfg.train.student.max_position_embeddings, cfg.train.student.rope_theta = 32768, 300000.0
    rows = [{"id": 151649, "was": "<|box_end|>", "now": "</think>", "init": "mean of 3 student token embeddings"}]
    stats = TrainStats(tokens_seen=10, tokens_per_s=1.0, train_seconds=10.0, global_steps=1, final_train_loss=1.0,
                       method="lora", bf16=False, trainable_params=1, student_init={"adopted_rows": rows})
    manifest = Manifest(stage="train", config_hash="x", counts={}, stats=stats.dump())
    text = cards.render_model_card(cfg, train_manifest=manifest).text
    assert "| context override | rope_theta=300000.0, max_position_embeddings=32768 |" in text
    assert "151649 `<|box_end|>` -> `</think>` (mean of 3 student token embeddings)" in text
    assert "context was extended before training" in text


def test_model_card_records_special_tokens_mapped_by_role(run_cfg):
    """A student that kept its own special tokens (train.student.tokenizer: map): the card says which of the
    teacher's ids were moved onto which of the student's, and nothing about adopted rows."""
    from distillkit.records import Manifest
    from distillkit.schemas.train import TrainStats

    pairs = [{"teacher_id": 151649, "teacher": "</think>", "student_id": 151668, "student": "</think>",
              "how": "think_close"},
             {"teacher_id": 151650, "teacher": "<|quad_start|>", "student_id": 151650, "student": "<|quad_start|>",
              "how": "same text"}]
    stats = TrainStats(tokens_seen=10, tokens_per_s=1.0, train_seconds=10.0, global_steps=1, final_train_loss=1.0,
                       method="lora", bf16=False, trainable_params=1,
                       student_init={"adopted_rows": [], "special_map": {"pairs": pairs}})
    text = cards.render_model_card(run_cfg, train_manifest=Manifest(stage="train", config_hash="x", counts={},
                                                                    stats=stats.dump())).text
    assert "the student's own; the teacher's mapped onto them by role: `</think>` 151649 -> `</think>` 151668 " \
           "(think_close)" in text
    assert "quad_start" not in text and "adopted as DeepSeek" not in text


def test_model_card_names_each_tasks_version_prompt_and_extraction(run_cfg):
    """The card carries what the evaluate stage records per task (harness.describe_task on the real task)."""
    from distillkit.evaluate.harness import describe_task, make_task_manager

    task = make_task_manager(["distillkit_arith"]).load(["distillkit_arith"])["tasks"]["distillkit_arith"]
    results = cards.load_eval_results(run_cfg)
    results.protocol.task_info = {"distillkit_arith": describe_task(task, "</think>")}
    card = cards.render_model_card(run_cfg, results=results)
    [line] = [x for x in card.text.splitlines() if x.startswith("- `distillkit_arith` v1.0 (distillkit)")]
    assert "custom, split test; 0-shot; prompt: one worked example" in line
    assert "scored on the text after </think>" in line and "answer: text after </think> when closed" in line
    cards.validate_model_card(str(card), expected_eval=1)


def test_dataset_card_names_the_difficulty_selection(run_cfg):
    from distillkit.config import SelectionConfig
    from distillkit.records import read_manifest

    run_cfg.filter.selection = SelectionConfig(max_pass_rate=0.99, bins=[0, 0.5, 1], bin_shares=[1, 0.25])
    text = cards.render_dataset_card(run_cfg, None, read_manifest(run_cfg.stage_dir("filter"))).text
    assert "pass rate is in [0.0, 0.99]" in text
    assert "of the prompts in each pass-rate bin [0, 0.5): 100%, [0.5, 1]: 25%" in text


def test_dataset_card_records_the_prescreen_and_resampling(run_cfg):
    from distillkit.config import PrescreenConfig, ResampleConfig
    from distillkit.records import Manifest, read_manifest

    run_cfg.generate.prescreen = PrescreenConfig(enabled=True, samples=4, solved_at=0.75)
    run_cfg.generate.resample = ResampleConfig(rounds=2)
    stats = {"prescreen": {"model": "Qwen/Qwen2.5-1.5B", "solved": 30, "prompts": 100, "dropped": 30},
             "resample": {"per_round": [{"round": 0, "prompts": 70, "verified": 50},
                                        {"round": 1, "prompts": 20, "verified": 8}], "never_verified": 12}}
    gen = Manifest(stage="generate", config_hash="h", counts={"records": 10}, stats=stats)
    text = cards.render_dataset_card(run_cfg, gen, read_manifest(run_cfg.stage_dir("filter"))).text
    assert ("| student pre-screen | Qwen/Qwen2.5-1.5B: 4 student samples per prompt; solved at >= 75% correct; 0% of "
            "solved kept; solved 30 of 100 prompts, 30 dropped before the teacher sampled |") in text
    assert ("| resampling until verified | up to 2 more rounds of n samples for prompts with no verified sample; "
            "round 0: 70 prompts, 50 verified, round 1: 20 prompts, 8 verified; never verified 12 |") in text
