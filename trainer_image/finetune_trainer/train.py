"""The training loop, one process per GPU (or CPU rank) under `accelerate launch`.

An accelerate loop rather than the Hugging Face Trainer: resuming a streamed
dataset at its exact read position, committing checkpoints to S3 in the
background and normalising the loss over uneven shards all need control of
the loop itself (docs/trainer.md says more).

Each optimizer step every rank takes its micro-batch (the spec's per-GPU batch
times the job's GPUs, shared by the processes: config.batch_sizes) x
gradientAccumulationSteps examples from its own stream; near the end of an
epoch a rank with more examples left takes over what a rank that ran dry
cannot give (data.step_allocations), in micro-batches of the usual size, so
every step but the epoch's last has the full global batch. The loss is summed
per example and scaled by world_size / (examples in the global step), so the
synchronised gradient is the mean over exactly the examples of that step; a
rank with fewer micro-batches joins the extra rounds with zero weight.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import queue
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from finetune_api.checkpoints import Committed, step_dir
from finetune_api.env import TrainerEnv

from . import packing
from .allocator import keep_freed_memory
from .batching import WINDOW, ShortStream, grouped_by, in_order, plan_steps, run_size
from .checkpoint import CheckpointStore
from .config import TrainerConfig, uses_gpu
from .data import (
    DataIndex,
    Example,
    Position,
    Source,
    count_units,
    rank_examples,
    step_allocations,
    stream,
)
from .errors import PermanentError
from .evaluation import Evaluator
from .metrics import TrainerMetrics
from .model import load
from .optimizer import build_optimizer, clipped_step, fuses_clipping
from .precision import cpu_has_amx, cpu_has_bf16, describe, mixed_precision, read_cpuinfo
from .schedule import Schedule
from .state import TrainerState, checkpoint_files, load_trainer_state, restore, rng_state
from .stopping import GracefulStop, StopRequest, register
from .storage import open_store
from .uploader import ProcessUploader
from .watchdog import Watchdog, roll_call_group

log = logging.getLogger("finetune")
_DONE = object()


def _to(value: Any, device: torch.device) -> Any:
    """A batch's tensor on `device`; anything else (a packed batch's call shapes) as it is."""
    return value.to(device) if isinstance(value, torch.Tensor) else value


def _gather(obj: Any) -> list[Any]:
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _broadcast(obj: Any) -> Any:
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _device_text(device: str, threads: int) -> str:
    """How the start line names where training runs: "cuda", or "cpu, N threads per process"."""
    if device != "cpu":
        return device
    return f"cpu, {_count(threads, 'thread', 'threads')} per process"


def parameter_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class Prefetcher:
    """Reads and tokenizes ahead in a thread; counts the time training waits."""

    def __init__(self, items: Iterator[Any], depth: int = 8) -> None:
        self.q: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.waited = 0.0
        self._done = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(items,), daemon=True)
        self._thread.start()

    def _fill(self, items: Iterator[Any]) -> None:
        try:
            for item in items:
                while not self._stop.is_set():
                    try:
                        self.q.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self.q.put(_DONE)
        except BaseException as e:
            self.q.put(e)

    def get(self) -> Any:
        """The next item; once the stream has ended, _DONE on every call."""
        if self._done:
            return _DONE
        started = time.monotonic()
        item = self.q.get()
        self.waited += time.monotonic() - started
        if isinstance(item, BaseException):
            raise item
        self._done = item is _DONE
        return item

    def close(self) -> None:
        self._stop.set()


@dataclass
class Session:
    """What a run prepared once and every step, save and stop uses."""

    model: Any
    optimizer: Any
    scheduler: Any
    index: DataIndex
    uploader: ProcessUploader
    evaluator: Evaluator
    last_save: float = field(default_factory=time.monotonic)
    clip_in_step: bool = False  # clipping folded into the optimizer step (optimizer.py)


class Run:
    def __init__(self, cfg: TrainerConfig) -> None:
        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs
        from transformers import set_seed

        self.cfg = cfg
        self.spec = cfg.spec
        t = self.spec.training
        use_cuda = uses_gpu(cfg.device)
        if cfg.device == "cuda" and not torch.cuda.is_available():
            device = TrainerEnv.variable("device")
            raise PermanentError(f"{device}=cuda but no GPU is visible to the trainer")
        if not use_cuda:
            # Each process gets its share of the pod's CPUs, not all of them.
            torch.set_num_threads(cfg.cpu_threads)
            keep_freed_memory()  # large tensors reuse their pages (allocator.py)
        elif cfg.procs_per_node != torch.cuda.device_count():
            log.warning(
                "%d training processes on %d visible GPUs: one process drives one GPU; "
                "leave spec.resources.processesPerNode unset on GPU nodes",
                cfg.procs_per_node,
                torch.cuda.device_count(),
            )
        gpu_bf16 = use_cuda and torch.cuda.is_bf16_supported()
        info = read_cpuinfo()  # read once for both probes
        self.precision = mixed_precision(
            t.precision, use_cuda, gpu_bf16, cpu_has_bf16(info), cpu_has_amx(info)
        )
        policy = self.spec.run_policy
        # Bounds every collective; the watchdog speaks first during training.
        bound = timedelta(
            seconds=policy.rendezvous_timeout_seconds + policy.progress_deadline_seconds
        )
        self.acc = Accelerator(
            cpu=not use_cuda,
            mixed_precision=self.precision,
            kwargs_handlers=[InitProcessGroupKwargs(timeout=bound)],
        )
        self.rank = self.acc.process_index
        self.world = self.acc.num_processes
        group = roll_call_group() if self.world > 1 else None
        self.watchdog = Watchdog(
            policy.progress_deadline_seconds, self.rank, cfg.procs_per_node, group
        ).start()
        self.is_main = self.acc.is_main_process
        set_seed(t.seed)
        self.metrics = TrainerMetrics(cfg.job_name, cfg.namespace)
        if self.acc.is_local_main_process and cfg.metrics_port:
            self.metrics.serve(cfg.metrics_port)
        self.metrics.world_size.set(self.world)
        self.metrics.attempt.set(cfg.attempt)
        self._last_eval_step = -1
        self._samples_window = 0
        self.packer: packing.Packer | None = None  # padding-free (packing.py), once loaded
        # SIGTERM: stop after the current step with a checkpoint (stopping.py).
        self.stop = StopRequest(cfg.grace_seconds).install()
        register(cfg.work_dir)
        self._save_seconds = 0.0
        self._checkpoint_seconds: float | None = None
        self.ckpt = CheckpointStore(
            cfg.checkpoint_uri,
            self.spec.s3,
            keep=self.spec.checkpoints.save_total_limit,
            keep_best=self.spec.checkpoints.keep_best,
            best_metric=t.metric_for_best_model,
            on_corrupt=self.spec.checkpoints.on_corrupt,
        )

    # --- set-up ------------------------------------------------------------------

    def _preflight(self) -> None:
        if self.acc.is_local_main_process:
            self.ckpt.store.check()
            if self.is_main:
                self.ckpt.claim(self.cfg.namespace, self.cfg.job_name)
            aborted = self.ckpt.abort_stale_uploads() if self.is_main else 0
            if aborted:
                log.info("aborted %d unfinished multipart uploads of an earlier attempt", aborted)

    def _restore_point(self) -> tuple[Committed, Path] | None:
        # Rank 0 picks the newest intact checkpoint; every node fetches that one.
        chosen: int | None = None
        found = None
        if self.is_main:
            found = self.ckpt.restore(self.cfg.work_dir / "restore")
            chosen = found[0].step if found else None
        chosen = _broadcast(chosen)
        if chosen is None:
            return None
        with self.acc.local_main_process_first():
            if found is None and self.acc.is_local_main_process:
                found = self.ckpt.restore(self.cfg.work_dir / "restore", step=chosen)
        if found is None:
            folder = self.cfg.work_dir / "restore" / step_dir(chosen)
            found = (Committed(chosen, folder.name, {}), folder)
        return found

    def _index(self, source: Source) -> DataIndex:
        # One process plans (a CSV plan parses the file once) and tells the others.
        plan = source.plan_units(self.world, self.cfg.shard_bytes) if self.is_main else None
        units = _broadcast(plan)
        part = count_units(source, units, list(range(self.rank, len(units), self.world)))
        counts: dict[str, int] = {}
        held: list[Example] = []
        for other in _gather((part.counts, part.eval_examples)):
            counts.update(other[0])
            held += other[1]
        return DataIndex(units, counts, held)

    def _per_rank(self) -> int:
        return self.cfg.micro_batch * self.spec.training.gradient_accumulation_steps

    def _run(self) -> int:
        t = self.spec.training
        passes = self.world * t.gradient_accumulation_steps
        return run_size(self.cfg.micro_batch, passes, t.group_by_length)

    def _steps_per_epoch(self, index: DataIndex) -> int:
        # Full global batches (step_allocations): the same for every epoch.
        examples = sum(index.counts.values())
        return -(-examples // (self._per_rank() * int(self.world)))

    def _epoch_plan(self, index: DataIndex, epoch: int) -> list[list[int]]:
        seed = self.spec.training.seed
        shares = [rank_examples(index, epoch, seed, r, self.world) for r in range(self.world)]
        return list(step_allocations(shares, self._per_rank()))

    def _total_steps(self, index: DataIndex) -> int:
        t = self.spec.training
        if sum(index.counts.values()) == 0:
            raise PermanentError("spec.dataset: the training data has no usable examples")
        if t.max_steps:
            return t.max_steps
        return math.ceil(t.num_train_epochs * self._steps_per_epoch(index))

    # --- the loop ----------------------------------------------------------------

    def _steps(
        self,
        examples: Iterator[tuple[Example, Position]],
        sizes: list[int],
        tokenizer: Any,
        start: Position,
        skip: int,
    ) -> Iterator[tuple[list[dict[str, Any]], int, Position]]:
        """Per step of the epoch from step `skip` on: this rank's micro-batches, their
        example count, and the position a checkpoint after it resumes from (see
        batching.py; the stream stands at `start`, the window's beginning)."""
        t = self.spec.training
        size = self._run()

        def lengths(items: list[Example]) -> list[int]:
            # A window can be empty for a rank that ran dry near the epoch's end.
            if not items:
                return []
            return [len(ids) for ids in self._tokenize(items, tokenizer)["input_ids"]]

        order = grouped_by(lengths, t.seed, start.epoch, self.rank, size)
        width, order = (WINDOW, order) if t.group_by_length else (1, in_order)
        try:
            for chosen, resume in plan_steps(examples, sizes, start, skip, width, order):
                micro = [
                    self._encode(chosen[i : i + size], tokenizer)
                    for i in range(0, len(chosen), size)
                ]
                yield micro, len(chosen), resume
        except ShortStream:
            raise PermanentError(
                "spec.dataset: the training data changed since the job started (fewer "
                "examples than counted); start a new job for new data"
            ) from None

    def _tokenize(self, chunk: list[Example], tokenizer: Any, **padding: Any) -> Any:
        columns = list(zip(*(e.texts for e in chunk), strict=True))
        return tokenizer(
            *columns, truncation=True, max_length=self.spec.dataset.max_seq_length, **padding
        )

    def _encode(self, chunk: list[Example], tokenizer: Any) -> dict[str, Any]:
        enc = dict(self._tokenize(chunk, tokenizer, padding=True, return_tensors="pt"))
        enc["labels"] = torch.tensor([e.label for e in chunk])
        return self.packer(enc) if self.packer else enc

    def _pack_if_supported(self, model: Any) -> None:
        if not self.spec.training.padding_free:
            return
        self.packer = packing.enable(model, self.acc.device.type)
        if not self.packer and self.is_main:
            log.info(
                "spec.training.paddingFree: %s (model_type %s) is not transformers' own "
                "BERT-family code; its batches are padded",
                type(model).__name__,
                getattr(model.config, "model_type", "unknown"),
            )

    def run(self) -> None:
        cfg, t = self.cfg, self.spec.training
        self._preflight()
        with self.acc.local_main_process_first():
            source = Source(self.spec)
            source.adopt_labels(self.spec.model)
            model, tokenizer = load(self.spec, cfg.work_dir)
        self._pack_if_supported(model)
        point = self._restore_point()
        if point is not None:
            state, index = load_trainer_state(point[1])
            log.info(
                "resuming from %s/%s at step %d", self.ckpt.uri, point[0].folder, state.global_step
            )
        else:
            index = self._index(source)
            state = TrainerState(world_size=self.world)
        state.total_steps = self._total_steps(index)
        self.schedule = Schedule(t, self.spec.checkpoints, state.total_steps)
        optimizer, scheduler = build_optimizer(model, t, state.total_steps)
        if point is not None:
            restore(point[1], model, optimizer, scheduler, self.rank)
            if state.world_size != self.world:
                log.warning(
                    "world size changed from %d to %d: the current epoch's data "
                    "restarts from its beginning",
                    state.world_size,
                    self.world,
                )
                state.positions = []
        model, optimizer = self.acc.prepare(model, optimizer)
        evaluator = Evaluator(
            self.acc, self.spec, model, tokenizer, self._eval_set(source, index), cfg.eval_batch
        )
        self.metrics.total_steps.set(state.total_steps)
        uploader = ProcessUploader(
            self.ckpt,
            on_done=self._committed,
            on_bytes=self.metrics.checkpoint_bytes.inc,
            idle=cfg.spare_cpu,
        )
        sess = Session(model, optimizer, scheduler, index, uploader, evaluator)
        sess.clip_in_step = fuses_clipping(optimizer)
        position = (
            state.positions[self.rank]
            if len(state.positions) == self.world
            else Position(epoch=int(state.epoch))
        )
        if self.is_main:
            log.info(
                "training %d steps on %s (%s, %s) in %s, %d examples per step%s",
                state.total_steps,
                _count(self.world, "process", "processes"),
                _count(cfg.num_nodes, "node", "nodes"),
                _device_text(self.acc.device.type, cfg.cpu_threads),
                describe(self.precision),
                self._per_rank() * self.world,
                ", padding-free" if self.packer else "",
            )
        started, start_step = time.monotonic(), state.global_step
        dummy = self._encode([Example(("",) * len(self.spec.dataset.text_columns), 0)], tokenizer)
        per_epoch = self._steps_per_epoch(index)
        self.stop.arm()
        while state.global_step < state.total_steps:
            plan = self._epoch_plan(index, position.epoch)
            first_step = position.epoch * per_epoch
            skip = state.global_step - first_step
            feed = Prefetcher(
                self._steps(
                    stream(source, index, position, t.seed, self.rank, self.world),
                    [p[self.rank] for p in plan],
                    tokenizer,
                    position,
                    skip,
                )
            )
            for alloc in plan[skip:]:
                if state.global_step >= state.total_steps:
                    break
                self.watchdog.phase = "waiting for its next batch (reading, tokenizing data)"
                micro, _, position = feed.get()
                self.watchdog.phase = "computing the step: forward, backward, gradient all-reduce"
                step_loss, tokens, stopping = self._train_step(sess, micro, alloc, dummy)
                state.global_step += 1
                self.watchdog.beat(state.global_step)
                state.epoch = position.epoch + (state.global_step - first_step) / len(plan)
                self._record(
                    state, step_loss, sum(alloc), tokens, scheduler, started, start_step, feed
                )
                epoch_ended = state.global_step - first_step == len(plan)
                with self.watchdog.paused():
                    self._after_step(sess, state, position, epoch_ended, stopping)
            feed.close()
            if state.global_step - first_step >= len(plan):
                position = Position(epoch=position.epoch + 1)
        self.stop.arm(False)
        self.watchdog.close()
        if self.schedule.evaluate_at_end(self._last_eval_step):
            self._evaluate(evaluator, state)
        self._checkpoint(sess, state, position)
        self._check_in_sync(model)
        uploader.wait()
        uploader.close()
        self._write_output(model, tokenizer)
        self.acc.wait_for_everyone()
        if self.is_main:
            summary = " ".join(f"{k}={v:.4f}" for k, v in sorted(state.eval_metrics.items()))
            log.info(
                "done: %d steps, %d samples this run; eval %s; model written to %s",
                state.global_step,
                self._samples_window,
                summary or "skipped",
                cfg.output_uri,
            )
        self.acc.end_training()
        self.metrics.wait_for_final_reads()

    def _train_step(
        self,
        sess: Session,
        micro: list[dict[str, Any]],
        alloc: list[int],
        dummy: dict[str, Any],
    ) -> tuple[float, int, bool]:
        """One optimizer step over this rank's micro-batches (`alloc`: every rank's
        example count); the global mean loss, the real tokens of the step, and whether
        any rank was asked to stop. A rank with fewer micro-batches joins the extra
        rounds with a zero-weight dummy."""
        t, model, optimizer = self.spec.training, sess.model, sess.optimizer
        n_global = sum(alloc)
        rounds = max(math.ceil(a / self._run()) for a in alloc)
        loss_sum = torch.zeros((), device=self.acc.device)
        tokens = torch.zeros((), device=self.acc.device)
        model.train()
        for i in range(rounds):
            real = i < len(micro)
            batch = {k: _to(v, self.acc.device) for k, v in (micro[i] if real else dummy).items()}
            sync = contextlib.nullcontext() if i == rounds - 1 else self.acc.no_sync(model)
            with sync, self.acc.autocast():
                labels = batch.pop("labels")
                logits = model(**batch).logits
                per_example = torch.nn.functional.cross_entropy(
                    logits.float(), labels, reduction="none"
                )
                weight = self.world / n_global if real else 0.0
                self.acc.backward(per_example.sum() * weight)
            if real:  # summed on the device, read once per step below
                loss_sum += per_example.detach().sum()
                tokens += packing.real_tokens(batch)
        if t.max_grad_norm > 0 and sess.clip_in_step:
            clipped_step(optimizer, list(model.parameters()), t.max_grad_norm)
        else:
            if t.max_grad_norm > 0:
                self.acc.clip_grad_norm_(model.parameters(), t.max_grad_norm)
            optimizer.step()
        sess.scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        # The reduction every step makes anyway carries the stop request too.
        stop = torch.tensor(float(self.stop.requested), device=self.acc.device)
        sums = self.acc.reduce(torch.stack([loss_sum.float(), tokens.float(), stop]), "sum")
        return float(sums[0].item()) / n_global, int(sums[1].item()), bool(sums[2].item() > 0)

    def _after_step(
        self, sess: Session, state: TrainerState, position: Position, epoch_ended: bool, stop: bool
    ) -> None:
        """What the schedule asks for after a step, then a graceful stop if requested."""
        step = state.global_step
        if self.schedule.evaluate(step, epoch_ended):
            self._evaluate(sess.evaluator, state)
        saved = self._save_due(step, sess.last_save)
        if saved:
            self._checkpoint(sess, state, position)
            sess.last_save = time.monotonic()
        if self.is_main and not sess.uploader.arena.asked:
            self._reserve(sess, state)
        if stop and step < state.total_steps:
            self._stop(sess, state, position, saved)

    def _stop(self, sess: Session, state: TrainerState, position: Position, saved: bool) -> None:
        """SIGTERM reached a rank: every rank commits this step's checkpoint when rank 0
        expects it to fit in the grace period, then all leave with the retryable code."""
        fits, took = _broadcast(
            (self.stop.checkpoint_fits(self._checkpoint_seconds), self._checkpoint_seconds or 0.0)
        )
        if fits and not saved:
            self._checkpoint(sess, state, position)
        if self.is_main:
            sess.uploader.wait()
        self.acc.wait_for_everyone()
        step = state.global_step
        if fits:
            done = f"checkpoint {step_dir(step)} committed; a new attempt resumes at step {step}"
        else:
            done = (
                f"no checkpoint (the last took {took:.0f}s, "
                f"spec.pod.terminationGracePeriodSeconds leaves too little)"
            )
        raise GracefulStop(f"Stopped: SIGTERM, after step {step}; {done}")

    # --- logging, evaluation, checkpoints -----------------------------------------

    def _record(
        self,
        state: TrainerState,
        loss: float,
        samples: int,
        tokens: int,
        scheduler: Any,
        started: float,
        start_step: int,
        feed: Prefetcher,
    ) -> None:
        m = self.metrics
        waited, feed.waited = feed.waited, 0.0
        lr = float(scheduler.get_last_lr()[0])
        elapsed = max(1e-9, time.monotonic() - started)
        done = state.global_step - start_step
        per_step = elapsed / max(1, done)
        eta = per_step * (state.total_steps - state.global_step)
        m.train_loss.set(loss)
        m.learning_rate.set(lr)
        m.global_step.set(state.global_step)
        m.epoch.set(state.epoch)
        m.samples.inc(samples)
        m.tokens.inc(tokens)
        m.data_wait.inc(waited)
        m.eta_seconds.set(eta)
        self._samples_window += samples
        m.samples_per_second.set(self._samples_window / elapsed)
        m.sample_gpus()
        if self.is_main and self.schedule.log(state.global_step):
            log.info(
                "step %d/%d | epoch %.2f | loss %.4f | lr %.3e | %.1f samples/s | ETA %s",
                state.global_step,
                state.total_steps,
                state.epoch,
                loss,
                lr,
                self._samples_window / elapsed,
                timedelta(seconds=round(eta)),
            )

    def _eval_set(self, source: Source, index: DataIndex) -> list[Example]:
        examples = source.read_eval_files() if source.eval_files else index.eval_examples
        if self.spec.training.eval_strategy != "no" and not examples:
            raise PermanentError(
                "spec.dataset: evaluation is on but there is no eval data; set evalSplit or "
                "evalFraction, or training.evalStrategy: no"
            )
        return examples[self.rank :: self.world]

    def _evaluate(self, evaluator: Evaluator, state: TrainerState) -> None:
        state.eval_metrics = evaluator.run()
        self._last_eval_step = state.global_step
        self._report_eval(state)

    def _report_eval(self, state: TrainerState) -> None:
        self.metrics.set_eval(state.eval_metrics)
        if self.is_main:
            text = " ".join(f"{k} {v:.4f}" for k, v in sorted(state.eval_metrics.items()))
            log.info("eval at step %d | %s", state.global_step, text)

    def _save_due(self, step: int, last_save: float) -> bool:
        due = self.schedule.save(step, (time.monotonic() - last_save) / 60)
        # Clocks differ between nodes: for saveMinutes rank 0 decides for everyone.
        return bool(_broadcast(due)) if self.schedule.clock_based else due

    def _checkpoint(self, sess: Session, state: TrainerState, position: Position) -> None:
        gathered = _gather((position, rng_state()))
        state.positions = [p for p, _ in gathered]
        state.world_size = self.world
        if self.is_main:
            began = time.monotonic()
            sess.uploader.wait()
            snap = checkpoint_files(
                self.acc.unwrap_model(sess.model),
                sess.optimizer.optimizer,
                sess.scheduler,
                state,
                [r for _, r in gathered],
                sess.index,
            ).snapshot(sess.uploader.arena)
            self._save_seconds = time.monotonic() - began
            self.metrics.checkpoint_save_seconds.observe(self._save_seconds)
            sess.uploader.submit(snap, state.global_step, dict(state.eval_metrics))

    def _reserve(self, sess: Session, state: TrainerState) -> None:
        """After the first step, once the optimizer has its state: prepare the memory of
        the snapshots in the background, so the first checkpoint's pause is as short as
        the later ones (handoff.py)."""
        files = checkpoint_files(
            self.acc.unwrap_model(sess.model),
            sess.optimizer.optimizer,
            sess.scheduler,
            state,
            [rng_state()] * self.world,
            sess.index,
        )
        sess.uploader.reserve(sum(files.sizes.values()))

    def _committed(self, committed: Committed, seconds: float) -> None:
        self._checkpoint_seconds = self._save_seconds + seconds  # what a stop must allow for
        self.metrics.checkpoint_upload_seconds.observe(seconds)
        self.metrics.last_checkpoint_step.set(committed.step)
        self.metrics.last_checkpoint_time.set_to_current_time()
        log.info(
            "checkpoint step %d committed to %s/%s in %.1fs (training paused %.2fs for it)",
            committed.step,
            self.ckpt.uri,
            committed.folder,
            seconds,
            self._save_seconds,
        )

    def _check_in_sync(self, model: Any) -> None:
        """Every rank must end with the same weights; anything else is a sync bug."""
        digests = _gather(parameter_digest(self.acc.unwrap_model(model)))
        if len(set(digests)) != 1:
            raise RuntimeError(f"parameters diverged across ranks: {digests}")
        if self.is_main:
            log.info(
                "parameters identical on all %d ranks (sha256 %s)", self.world, digests[0][:16]
            )

    def _write_output(self, model: Any, tokenizer: Any) -> None:
        if not self.is_main:
            return
        local = self.cfg.work_dir / "output"
        shutil.rmtree(local, ignore_errors=True)
        self.acc.unwrap_model(model).save_pretrained(local, safe_serialization=True)
        tokenizer.save_pretrained(local)
        store = open_store(self.cfg.output_uri, self.spec.s3)
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            store.upload_file(path, str(path.relative_to(local)))


def configure_logging(rank: int) -> None:
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s"
        if rank == 0
        else f"%(asctime)s %(levelname)s [rank {rank}] %(message)s",
        stream=sys.stdout,
    )
    for noisy in ("datasets", "accelerate", "botocore", "urllib3", "evaluate"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # transformers resets its logger's level on import: use its own switch. Its
    # load report (styled with terminal codes) is replaced by our own line.
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if not sys.stdout.isatty():
        os.environ.setdefault("TQDM_DISABLE", "1")
