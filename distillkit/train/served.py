"""On-policy distillation from a served teacher (`train.kd.teacher_probs: served`).

The student samples with TRL's `DistillationTrainer` (its generation, buffering and optimizer loop); a
vLLM server scores each sample with one prefill (`prompt_logprobs`, the scorer of `distillkit score`);
the loss is distillkit's chunked top-k divergence (`chunked_kd_loss`, `topk_tail`: the k returned ids
plus a tail bucket), so memory does not grow with vocabulary x sequence and the teacher is never
loaded beside the student.

Pipelining: TRL generates once per optimizer step for all `gradient_accumulation_steps` micro-batches.
As soon as they exist, every micro-batch is sent to the server (`max_concurrency` requests in flight),
and the student trains on the first while the others are scored. The time the student waits for the
teacher is logged as `teacher_wait_s`. A server that is down or slow is retried with backoff
(`teacher_server.openai.max_retries`, distillkit.http); when it keeps failing, training stops with the
server's error. A sample the server returns fewer rows for than it has tokens is an error too: never a
silent zero KL.

Several teachers (`generate.teachers`, `RecipeConfig.served_teachers`): each teacher has its server, and each
prompt carries the name of the teacher that wrote its record; a micro-batch's samples are sent to their own
teachers' servers and the rows put back in sample order (`score_routed`). Every server's top-k is on the student's
ids as with one teacher. The share of each teacher's samples is logged as `samples_<name>`.

TRL has `experimental.ServerDistillationTrainer` for the same setting; it computes the student's full
(B, T, V) log-softmax and supports top-1 only for reverse KL / JSD, so distillkit keeps TRL's loop and
brings its own loss.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from distillkit.config import RecipeConfig, TeacherConfig
from distillkit.errors import DistillkitError

log = logging.getLogger(__name__)


def teacher_requests(inputs: dict) -> tuple[list[list[int]], list[int]]:
    """A micro-batch of TRL's on-policy inputs -> (prompt + completion ids per sample, completion start)."""
    prompts, starts = [], []
    for p_ids, p_mask, c_ids, c_mask in zip(inputs["prompt_ids"], inputs["prompt_mask"], inputs["completion_ids"],
                                            inputs["completion_mask"]):
        prompt = p_ids[p_mask.bool()].tolist()
        prompts.append(prompt + c_ids[c_mask.bool()].tolist())
        starts.append(len(prompt))
    return prompts, starts


def score_routed(scorers: list, sequences: list[list[int]], starts: list[int], which: list[int], k: int) -> list:
    """Each sample scored by its teacher's scorer (`which[i]` indexes `scorers`), rows returned in sample order."""
    rows: list = [None] * len(sequences)
    for j, scorer in enumerate(scorers):
        mine = [i for i, w in enumerate(which) if w == j]
        if mine:
            for i, r in zip(mine, scorer.score([sequences[i] for i in mine], [starts[i] for i in mine], k)):
                rows[i] = r
    return rows


def label_tensors(rows, completion_mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (T_i, k) teacher rows -> (B, C, k) ids and logprobs at the completion positions."""
    B, C = completion_mask.shape
    ids = torch.zeros((B, C, k), dtype=torch.long)
    lps = torch.zeros((B, C, k), dtype=torch.float32)
    for i, (r_ids, r_lps) in enumerate(rows):
        n = int(completion_mask[i].sum())
        if len(r_ids) != n:
            raise DistillkitError(f"the teacher server returned {len(r_ids)} rows of logprobs for a sample of {n} "
                                  "completion tokens; refusing to train on misaligned labels")
        ids[i, :n] = torch.from_numpy(r_ids[:n].astype("int64"))
        lps[i, :n] = torch.from_numpy(r_lps[:n].astype("float32"))
    device = completion_mask.device
    return ids.to(device), lps.to(device)


def served_trainer_class():
    from trl import DistillationTrainer

    from distillkit.train.losses import chunked_kd_loss
    from distillkit.train.trainer import output_projection

    class ServedTeacherTrainer(DistillationTrainer):
        """TRL's on-policy loop; the teacher's top-k comes from a server, the loss from distillkit."""

        def __init__(self, *args, scorers: dict, kd, **kwargs):
            """`scorers`: teacher name -> its scorer (one teacher: {None: scorer}); a prompt row's `teacher` names
            its own."""
            super().__init__(*args, teacher_model=None, **kwargs)
            self.names, self.scorers = list(scorers), list(scorers.values())
            self.kd, self.topk = kd, kd.teacher_server.topk
            self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="teacher")
            self._pending: dict[int, Future] = {}

        def _generate_and_score_completions(self, inputs):
            output = super()._generate_and_score_completions(inputs)
            # which teacher scores each sample: TRL shuffles and splits the batch's tensors in unison with it
            which = [self.names.index(x.get("teacher")) if len(self.names) > 1 else 0 for x in inputs]
            output["teacher_index"] = torch.tensor(which, dtype=torch.long, device=output["prompt_ids"].device)
            return output

        def _submit(self, inputs: dict) -> Future:
            sequences, starts = teacher_requests(inputs)
            which = inputs["teacher_index"].tolist()
            if len(self.names) > 1:
                mode = "train" if self.model.training else "eval"
                for j, name in enumerate(self.names):
                    self._metrics[mode][f"samples_{name}"].append(which.count(j) / max(1, len(which)))
            return self._pool.submit(score_routed, self.scorers, sequences, starts, which, self.topk)

        def _prepare_inputs(self, generation_batch):
            before = self._buffered_inputs
            inputs = super()._prepare_inputs(generation_batch)
            if self.model.training and self._buffered_inputs is not before:
                # a new generation batch: score all its micro-batches now, while the student trains on the first
                self._pending = {id(b): self._submit(b) for b in self._buffered_inputs}
            return inputs

        def _compute_loss(self, unwrapped_student, inputs, num_items_in_batch):
            future = self._pending.pop(id(inputs), None) or self._submit(inputs)
            input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
            attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
            completion_mask = inputs["completion_mask"]
            loss_mask = (completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]).bool()
            hidden = self._get_last_hidden_state(unwrapped_student, input_ids, attention_mask,
                                                 inputs["completion_ids"].size(1))
            t0 = time.perf_counter()
            rows = future.result()  # a server error surfaces here, after its retries
            mode = "train" if self.model.training else "eval"
            self._metrics[mode]["teacher_wait_s"].append(time.perf_counter() - t0)
            ids, lps = label_tensors(rows, completion_mask, self.topk)
            projection = output_projection(unwrapped_student)
            _, _, kd = chunked_kd_loss(hidden, projection, topk_ids=ids, topk_logprobs=lps, kd_mask=loss_mask,
                                       alpha=0.0, temperature=self.kd.temperature, divergence=self.kd.divergence,
                                       beta=self.kd.beta, teacher_probs="topk_tail", chunk_size=self.kd.chunk_size)
            n = loss_mask.sum()
            scale = self.kd.temperature ** 2
            loss = scale * kd * n / num_items_in_batch if num_items_in_batch is not None else scale * kd
            self._metrics[mode]["kl"].append(float(kd.detach()))
            # TRL logs the mean student entropy from these; distillkit does not compute the full softmax for it
            return loss, torch.tensor(float("nan"), device=hidden.device), n.detach()

        def close_teacher(self) -> None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            close_all(self.scorers)

    return ServedTeacherTrainer


def close_all(scorers) -> None:
    """Close every scorer (each may have started a server), even when one of them fails to."""
    errors = []
    for scorer in scorers:
        try:
            scorer.close()
        except Exception as e:  # noqa: BLE001 - the others still close; the first error is raised after
            errors.append(e)
    if errors:
        raise errors[0]


def served_teacher(cfg: RecipeConfig, name: str | None = None) -> TeacherConfig:
    """The served teacher as a TeacherConfig (model for its tokenizer, the endpoint to score with): the one server,
    or routed teacher `name`'s (`RecipeConfig.served_teachers`)."""
    if name is None:
        s, engine = cfg.train.kd.teacher_server, cfg.generate.teacher
    else:
        s, engine = cfg.served_teachers()[name], cfg.generate.routed(name)
    return TeacherConfig(model=s.model or engine.model, backend="openai", openai=s.openai, vllm=engine.vllm)


def routed_prompt_rows(cfg: RecipeConfig, records) -> list[dict]:
    """The on-policy prompt rows, each with the name of the teacher whose server scores its samples: the record's
    routed teacher (`distillkit.records.teacher_name`), or for a record without a teacher (chat data) the teacher
    its source routes to. A record of a teacher not in generate.teachers is a DistillkitError naming it."""
    from distillkit.records import teacher_name
    from distillkit.train.on_policy import prompt_rows

    gen, names = cfg.generate, list(cfg.served_teachers())
    rows = prompt_rows(records)
    for row, rec in zip(rows, records):
        written_by = teacher_name(rec)
        name = gen.teacher_named(written_by) if written_by else gen.route(rec.get("source") or "")
        if name not in names:
            who = f"teacher {written_by!r}" if written_by else f"no teacher, and its source {rec.get('source')!r} no route"
            raise DistillkitError(f"train.kd.teacher_servers: record {rec.get('id')!r} has {who}; the served teachers "
                                  f"are generate.teachers ({', '.join(names)}): add its teacher there, or train these "
                                  "records with one served teacher (train.kd.teacher_server.model)")
        row["teacher"] = name
    return rows


def build_served_trainer(cfg: RecipeConfig, model, tokenizer, records, args, special_map=None):
    """On-policy training against a served teacher, or one per routed teacher (see the module docstring). With
    `special_map` (a student that keeps its own special tokens) a server reads the student's samples with the
    student's specials moved to its teacher's ids, and its top-k comes back on the student's ids
    (`distillkit.student.special_map.MappedScorer`)."""
    from datasets import Dataset
    from trl import DistillationConfig

    from distillkit.train.on_policy import on_policy_args, prompt_rows, trl_beta

    t = cfg.train
    routes = list(cfg.served_teachers()) or [None]
    # a record of no served teacher is refused before any server starts
    prompts = routed_prompt_rows(cfg, records) if routes != [None] else prompt_rows(records)
    scorers: dict = {}
    try:
        for name in routes:
            scorers[name] = open_served_scorer(cfg, name, tokenizer, special_map)
        dargs = DistillationConfig(**on_policy_args(args, len(prompts)), beta=trl_beta(t.kd), temperature=t.kd.temperature,
                                   max_completion_length=t.on_policy.max_new_tokens)
        return served_trainer_class()(model=model, args=dargs, train_dataset=Dataset.from_list(prompts),
                                      processing_class=tokenizer, scorers=scorers, kd=t.kd)
    except BaseException:
        close_all(scorers.values())
        raise


def open_served_scorer(cfg: RecipeConfig, name: str | None, tokenizer, special_map=None):
    """The started scorer of the one served teacher (`name` None) or of routed teacher `name`, reading the student's
    ids: the teacher shares the student's vocabulary (else a DistillkitError), or `special_map`'s specials are mapped."""
    from distillkit.engines.scorers import ServerScorer
    from distillkit.train.on_policy import check_shared_vocabulary

    teacher = served_teacher(cfg, name)
    key = "train.kd.teacher_server" if name is None or name not in cfg.train.kd.teacher_servers \
        else f"train.kd.teacher_servers.{name}"
    scorer = ServerScorer.from_config(teacher, cfg.train.kd.teacher_server.topk, cfg.seed, key=key)
    try:
        if special_map is None:
            check_shared_vocabulary(scorer.tokenizer, tokenizer, teacher.model, key="kd.teacher_probs=served")
            return scorer
        from distillkit.student.special_map import MappedScorer, build_special_map

        served_map = build_special_map(scorer.tokenizer, tokenizer, teacher.model, cfg.train.student.model)
        return MappedScorer(scorer, served_map, max(len(scorer.tokenizer), len(tokenizer)))
    except BaseException:
        scorer.close()
        raise
