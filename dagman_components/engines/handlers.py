"""Ignite handlers of the co-distillation schedule: EMA teacher, teacher temperature, last-layer freeze, checkpoints."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.data.utils import set_rnd
from monai.engines.utils import IterationEvents
from monai.handlers import CheckpointLoader, ValidationHandler
from monai.utils import set_determinism

from dagman_components.networks.sa_swin import save_encoder, state_dict_differences
from dagman_components.options import as_bool

__all__ = [
    "CollapseMonitor",
    "EMATeacherUpdate",
    "EpochSeed",
    "FreezeLastLayer",
    "ModelCheckpointLoader",
    "PretrainCheckpoint",
    "TeacherTemperatureSchedule",
    "checkpoints_newest_first",
    "ema_momentum",
    "epoch_seed",
    "latest_checkpoint",
    "unwrap",
]

logger = logging.getLogger(__name__)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel/DataParallel, else ``model``."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def select_encoder(student: nn.Module, teacher: nn.Module, which: str) -> nn.Module:
    """The ``.encoder`` of the student or of the EMA teacher (``which``: "student" | "teacher"), for ``model.pt``.

    DINO and iBOT evaluate the teacher: an average of the student's recent weights, which in a short run also
    stays closer to the init's features (docs/results/study.md).
    """
    choice = str(which).strip().lower()
    if choice not in ("student", "teacher"):
        raise ValueError(f"model_encoder must be 'student' or 'teacher', got {which!r}")
    return unwrap(student if choice == "student" else teacher).encoder


def other_encoder(student: nn.Module, teacher: nn.Module, which: str) -> dict[str, nn.Module]:
    """``{name: encoder}`` of the side ``select_encoder(student, teacher, which)`` does not pick."""
    select_encoder(student, teacher, which)  # validates ``which``
    other = "teacher" if str(which).strip().lower() == "student" else "student"
    return {other: select_encoder(student, teacher, other)}


def ema_momentum(iteration: int, total_iterations: int, base: float = 0.996, final: float = 1.0) -> float:
    """Cosine EMA momentum ``final - (final - base) (cos(pi it / T) + 1) / 2`` at 0-based GLOBAL ``iteration`` (DINO).

    SMIT indexed this by the iteration within the epoch, which pins it near ``base``; the global
    index is what DINO/iBOT and the papers' schedule intend.
    """
    progress = min(max(iteration, 0), total_iterations) / max(total_iterations, 1)
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


class EMATeacherUpdate:
    """After every iteration: ``teacher <- m teacher + (1 - m) student`` as one fused ``torch._foreach_lerp_``.

    Parameters are paired by name, so the teacher may lack student-only heads (AMIP).

    Args:
        student: the student (DDP-wrapped or not).
        teacher: the EMA teacher.
        base_momentum: m at iteration 0 (0.996, papers via DINO/SMIT).
        final_momentum: m at the last iteration (1.0).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, base_momentum: float = 0.996, final_momentum: float = 1.0) -> None:
        student_params = dict(unwrap(student).named_parameters())
        teacher_named = list(teacher.named_parameters())
        missing = [name for name, _ in teacher_named if name not in student_params]
        if missing:
            raise ValueError(f"teacher parameters without a student counterpart: {missing[:5]}")
        self.teacher_params = [p for _, p in teacher_named]
        # detached views share storage with the parameters, so the optimiser's in-place updates show through
        self.student_params = [student_params[name].detach() for name, _ in teacher_named]
        self.base_momentum = base_momentum
        self.final_momentum = final_momentum

    def momentum_at(self, engine: Engine) -> float:
        """Momentum of the update that ends the engine's current iteration."""
        total = engine.state.max_epochs * engine.state.epoch_length
        return ema_momentum(engine.state.iteration - 1, total, self.base_momentum, self.final_momentum)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    @torch.no_grad()
    def __call__(self, engine: Engine) -> None:
        # teacher + (1 - m)(student - teacher) = m teacher + (1 - m) student, one fused pass over all tensors
        torch._foreach_lerp_(self.teacher_params, self.student_params, 1.0 - self.momentum_at(engine))


class FinalValidationHandler(ValidationHandler):
    """
    MONAI's epoch-level ``ValidationHandler`` that also validates after the last epoch.

    It runs the validator every ``interval`` epochs and once more at ``max_epochs`` when that is not a
    multiple of ``interval``, so a run shorter than ``interval`` (e.g. MONAI Label's
    ``train::trainer::max_epochs`` override) still validates and saves its key-metric model.

    ``save_if_unvalidated``: a file to which the validator's network (a CPU state dict, unwrapped from
    DDP) is saved when training completes without any validation having recorded a key metric
    (``validator.state.best_metric_epoch`` still -1), so the key-metric ``CheckpointSaver`` wrote nothing
    in this run. That happens when the validation data is empty (MONAI Label's default 80/20 split of one
    or two labelled images gives no validation item): the evaluator skips its run, and without this the
    training's weights would be lost and ``models/model.pt`` left as it was. (A NaN key metric does not
    trigger it: MONAI records the first validation's key metric even when it is NaN.)
    Only rank 0 saves.
    """

    def __init__(
        self, interval: int, validator=None, exec_at_start: bool = False, save_if_unvalidated: str | None = None
    ) -> None:
        super().__init__(interval=interval, validator=validator, epoch_level=True, exec_at_start=exec_at_start)
        self.save_if_unvalidated = save_if_unvalidated

    def _due(self, engine: Engine, epoch: int) -> bool:
        return epoch % self.interval == 0 or epoch == engine.state.max_epochs

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=self._due), self)
        if self.exec_at_start:
            engine.add_event_handler(Events.STARTED, self)
        if self.save_if_unvalidated is not None:
            engine.add_event_handler(Events.COMPLETED, self._save_if_unvalidated)

    def _save_if_unvalidated(self, engine: Engine) -> None:
        state = getattr(self.validator, "state", None)
        if getattr(state, "best_metric_epoch", -1) != -1:
            return  # a key metric was recorded: the key-metric checkpoint is this run's model
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank() > 0:
            return
        network = self.validator.network
        network = network.module if hasattr(network, "module") else network  # DDP / DataParallel
        path = Path(self.save_if_unvalidated)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu() for k, v in network.state_dict().items()}, path)
        logger.warning(
            "no validation produced a key metric in this run (empty validation data?); saved the final "
            "weights (epoch %d) to %s",
            engine.state.epoch, path,
        )


def epoch_seed(seed: int, epoch: int) -> int:
    """A 32-bit seed for ``epoch`` of a run seeded with ``seed``, well mixed (``numpy.random.SeedSequence``).

    Mixed rather than ``seed + epoch``: runs with seeds 0 and 1 must not share the crops of shifted epochs.
    """
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0])


class EpochSeed:
    """At every epoch start, seed torch, numpy, ``random`` and the data's random transforms from (seed, epoch).

    The random draws of an epoch (shuffling, crops, masks, patch dropout, drop path) then depend on the seed
    and the epoch only, not on what ran before: a run resumed from the checkpoint of epoch e trains epoch
    e + 1 exactly as the uninterrupted run does (with ``num_workers=0``; worker processes seed themselves from
    the same global seed, but persistent workers keep their random state across epochs). Uses MONAI's
    ``set_determinism`` (which also keeps cuDNN deterministic, as the bundles' ``initialize`` already does)
    and ``set_rnd`` (what ``monai.data.DataLoader`` does once at construction). A ``generator`` given to the
    trainer for its masks is not reseeded.

    Args:
        seed: the run's seed.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        seed = epoch_seed(self.seed, engine.state.epoch)
        set_determinism(seed=seed)
        # the epoch's DataLoader iterator (and its sampler's shuffle) is created after EPOCH_STARTED
        dataset = getattr(getattr(engine, "data_loader", None), "dataset", None)
        if dataset is not None:
            set_rnd(dataset, seed)


class TeacherTemperatureSchedule:
    """At every epoch start, move the loss's teacher temperature along its warm-up (0.04 -> 0.07 over 30 epochs).

    The warm-up is at most half of the run (``engine.state.max_epochs``, which MONAI Label overrides).
    """

    def __init__(self, loss_function: nn.Module) -> None:
        self.loss_function = loss_function

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        self.loss_function.set_epoch(engine.state.epoch - 1, engine.state.max_epochs)


class FreezeLastLayer:
    """Drop the gradients of the DINO heads' prototype layers during the first ``epochs`` epochs (DINO/SMIT: 1).

    Runs on MONAI's ``IterationEvents.BACKWARD_COMPLETED``, between backward and the optimiser step.
    """

    def __init__(self, parameters: list[nn.Parameter], epochs: int = 1) -> None:
        self.parameters = list(parameters)
        self.epochs = epochs

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if engine.state.epoch <= self.epochs:
            for p in self.parameters:
                p.grad = None


class CollapseMonitor:
    """Warn when a distillation head collapses, from the teacher entropies the trainer logs.

    At every epoch end, for each term in ``out_dims`` (term -> prototypes K), from the epoch means of
    the logged monitors:

    - the mutual information between sample and prototype, I = H(mean P_t) - mean H(P_t), below
      ``min_information_nats``: every sample gets the same target distribution (at initialisation this
      is the usual state: nearly identical crops through an untrained head), whatever the entropies;
    - after ``grace_epochs`` (the teacher-temperature warm-up), a mean per-sample entropy above
      ``uniform_fraction * ln K`` (0.8): uniform collapse, or on the way to it;
    - after ``grace_epochs``, H(mean P_t) below ``min_marginal_fraction * ln K`` (0.5): the batch uses few
      prototypes (partial collapse);
    - H(mean P_t) below ``one_hot_nats``: one-hot collapse (every sample maps to one prototype).

    The two fractions are the learning issue's bounds. They were 0.98 and none before: a 900-iteration
    study run whose AITD and GITD teachers sat at 0.97 and 0.93 ln K for 100 epochs never warned
    (docs/results/study.md).

    Each kind is reported once per term, with remedies measured on this project's default run (see the
    pretrain bundle's docs/README.md, "Collapse"). The epoch means are kept in ``self.history``.
    """

    def __init__(
        self,
        out_dims: Mapping[str, int],
        uniform_fraction: float = 0.8,
        min_marginal_fraction: float = 0.5,
        one_hot_nats: float = 0.1,
        min_information_nats: float = 0.1,
        grace_epochs: int = 0,
    ) -> None:
        self.out_dims = dict(out_dims)
        self.uniform_fraction = uniform_fraction
        self.min_marginal_fraction = min_marginal_fraction
        self.one_hot_nats = one_hot_nats
        self.min_information_nats = min_information_nats
        self.grace_epochs = grace_epochs
        self.sums: dict[str, float] = {}
        self.count = 0
        self.reported: set[tuple[str, str]] = set()
        self.history: list[dict[str, float]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.check)

    def accumulate(self, engine: Engine) -> None:
        output = engine.state.output
        for term in self.out_dims:
            for kind in ("entropy_mean", "entropy_sample", "mutual_information"):
                key = f"teacher_{kind}_{term}"
                if isinstance(output, Mapping) and key in output:
                    self.sums[key] = self.sums.get(key, 0.0) + float(output[key])
        self.count += 1

    def _warn(self, term: str, kind: str, message: str) -> None:
        if (term, kind) not in self.reported:
            self.reported.add((term, kind))
            logger.warning(message)

    def check(self, engine: Engine) -> None:
        if not self.count:
            return
        means = {key: value / self.count for key, value in self.sums.items()}
        self.history.append({"epoch": float(engine.state.epoch), **means})
        self.sums, self.count = {}, 0
        epoch = engine.state.epoch
        remedies = (
            "Remedies measured on the default run: head_input_norm 'batch', centering 'sinkhorn_knopp', "
            "more samples per step (batch_size), a smaller head_out_dim. A higher ema_momentum "
            "makes a short run worse (the teacher stays at its random init)."
        )
        for term, k in self.out_dims.items():
            sample = means.get(f"teacher_entropy_sample_{term}", math.nan)
            mean = means.get(f"teacher_entropy_mean_{term}", math.nan)
            information = means.get(f"teacher_mutual_information_{term}", mean - sample)
            if epoch > self.grace_epochs and information < self.min_information_nats:
                self._warn(
                    term,
                    "information",
                    f"epoch {epoch}: {term.upper()} teacher gives every sample the same distribution (mutual "
                    f"information H(mean P_t) - mean H(P_t) = {information:.3f} nats < {self.min_information_nats}): "
                    f"the distillation target carries no per-sample information. {remedies}",
                )
            after_warmup = epoch > self.grace_epochs
            if after_warmup and mean < self.min_marginal_fraction * math.log(k):
                self._warn(
                    term,
                    "marginal",
                    f"epoch {epoch}: {term.upper()} teacher uses few prototypes (H(mean P_t) = {mean:.3f} < "
                    f"{self.min_marginal_fraction} ln K = {self.min_marginal_fraction * math.log(k):.3f}): partial "
                    f"collapse. {remedies}",
                )
            if after_warmup and sample > self.uniform_fraction * math.log(k):
                self._warn(
                    term,
                    "uniform",
                    f"epoch {epoch}: {term.upper()} teacher outputs are near uniform (mean per-sample entropy "
                    f"{sample:.3f} > {self.uniform_fraction} ln K = {self.uniform_fraction * math.log(k):.3f}): uniform "
                    "collapse, the distillation target carries little information. "
                    f"{remedies}",
                )
            if mean < self.one_hot_nats:
                self._warn(
                    term,
                    "one_hot",
                    f"epoch {epoch}: {term.upper()} teacher maps every sample to one prototype (H(mean P_t) = "
                    f"{mean:.3f}): one-hot collapse. Usual remedies: a higher teacher temperature warm-up start, "
                    "centering 'sinkhorn_knopp', a lower lr.",
                )


_CHECKPOINT_RE = re.compile(r"^checkpoint_(\d+)\.pt$")


def checkpoints_newest_first(ckpt_dir: str | Path) -> list[Path]:
    """The ``checkpoint_<epoch>.pt`` files in ``ckpt_dir``, highest epoch first."""
    found = [(int(m.group(1)), p) for p in Path(ckpt_dir).glob("checkpoint_*.pt") if (m := _CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """Newest ``checkpoint_<epoch>.pt`` in ``ckpt_dir``, or None."""
    found = checkpoints_newest_first(ckpt_dir)
    return found[0] if found else None


def _forget_missing_files(state: Mapping, save_dir: Path) -> None:
    """Drop the files that no longer exist from the checkpointer's list of saved files in ``state`` (in memory).

    Resuming from an older checkpoint (the newest was corrupt) restores a list that names a file rotated
    out since; Ignite would fail to delete it when the next checkpoint is saved.
    """
    checkpointer = state.get("checkpointer")
    for key in ("_saved", "saved"):  # Ignite 0.5 names the list "_saved", earlier versions "saved"
        if isinstance(checkpointer, dict) and isinstance(checkpointer.get(key), list):
            checkpointer[key] = [item for item in checkpointer[key] if (save_dir / item[1]).exists()]


class PretrainCheckpoint:
    """Resumable pretraining checkpoints plus the encoder weights for downstream use.

    Every ``save_interval`` epochs and at the end it writes ``checkpoint_<epoch>.pt`` (all of
    ``objects``: student, teacher, optimiser, scheduler, loss centers, trainer state) keeping the
    last ``n_saved`` (2, so an interrupted write never leaves none), and ``model.pt``: the
    student encoder's CPU state dict, loadable by ``SASwinEncoder.load_pretrained``. Writes are
    atomic (temp file + rename) and happen on rank 0 only. Nothing is written when training stops
    on an exception (e.g. a non-finite loss), so the last good files stay.

    With ``resume=True`` the newest checkpoint in ``save_dir`` that loads and matches the config is loaded
    when the run starts, and Ignite continues from its epoch/iteration. A newer one that is corrupt (e.g.
    truncated by a full disk) or does not match (another architecture) is named in a warning and skipped;
    no file is changed. No checkpoint, or none that loads, is an error naming the folder and each file's
    problem.

    Args:
        save_dir: folder of the checkpoints and ``model.pt``.
        objects: name -> object with ``state_dict``/``load_state_dict``.
        encoder: module whose state dict becomes ``model.pt``.
        save_interval: epochs between checkpoints (1).
        n_saved: checkpoints kept (2).
        resume: load the newest checkpoint at start.
        model_filename: name of the encoder file ("model.pt").
        encoder_snapshot_interval: also keep the encoder of every this many epochs as
            ``model_epoch<E>.pt`` (0 = off), for learning curves of a frozen-feature probe after the run.
        snapshot_encoders: further encoders (name -> module, e.g. ``{"teacher": ...}``) whose snapshots are
            kept next to ``model_epoch<E>.pt`` as ``<name>_epoch<E>.pt``, so both sides of the
            distillation can be probed after the run.
    """

    def __init__(
        self,
        save_dir: str | Path,
        objects: Mapping[str, object],
        encoder: nn.Module,
        save_interval: int = 1,
        n_saved: int = 2,
        resume: bool = False,
        model_filename: str = "model.pt",
        encoder_snapshot_interval: int = 0,
        snapshot_encoders: Mapping[str, nn.Module] | None = None,
    ) -> None:
        self.save_dir = Path(save_dir)
        self.objects = dict(objects)
        self.encoder = encoder
        self.save_interval = max(1, int(save_interval))
        self.resume = as_bool(resume, "resume")
        self.model_path = self.save_dir / model_filename
        self.n_saved = n_saved
        self.encoder_snapshot_interval = max(0, int(encoder_snapshot_interval))
        self.snapshot_encoders = dict(snapshot_encoders or {})
        self.checkpoint: Checkpoint | None = None

    def attach(self, engine: Engine) -> None:
        # the engine itself is saved too: its epoch/iteration is what resuming continues from
        self.objects["trainer"] = engine
        self.checkpoint = Checkpoint(
            self.objects,
            DiskSaver(str(self.save_dir), atomic=True, create_dir=True, require_empty=False),
            filename_prefix="",
            n_saved=self.n_saved,
            global_step_transform=lambda engine, _: engine.state.epoch,
            filename_pattern="checkpoint_{global_step}.{ext}",
            include_self=True,
        )
        if self.resume:
            engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self.save)
        engine.add_event_handler(Events.COMPLETED, self.save_final)
        if self.encoder_snapshot_interval:
            engine.add_event_handler(Events.STARTED, self._snapshot_initial)
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.encoder_snapshot_interval), self._snapshot)

    def _snapshot_initial(self, engine: Engine) -> None:
        if engine.state.epoch == 0:  # a fresh run: the random init is the curve's first point
            self._snapshot(engine)

    def _snapshot(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        self._save_encoder(engine, self.save_dir / f"model_epoch{epoch}.pt")
        for name, encoder in self.snapshot_encoders.items():
            self._save_encoder(engine, self.save_dir / f"{name}_epoch{epoch}.pt", encoder)

    def load(self, engine: Engine) -> None:
        candidates = checkpoints_newest_first(self.save_dir)
        if not candidates:
            raise FileNotFoundError(
                f"resume requested but no checkpoint_<epoch>.pt in {self.save_dir}; run without --resume to start fresh."
            )
        # keep the configured length, so a finished run can be extended with a larger num_epochs
        max_epochs = engine.state.max_epochs
        problems = []
        for path in candidates:
            problem = self._load_from(path)
            if problem is None:
                engine.state.max_epochs = max_epochs
                logger.info(f"resumed from {path} (epoch {engine.state.epoch}, iteration {engine.state.iteration})")
                return
            logger.warning(f"resume: skipping {path}: {problem}")
            problems.append(f"{path.name}: {problem}")
        raise ValueError(
            f"resume requested but no checkpoint in {self.save_dir} loads and matches this config ("
            + "; ".join(problems)
            + "). The files are left as they are: resume with the config they were written with, or run without "
            "--resume (and another --output_dir to keep them) to start fresh."
        )

    def _load_from(self, path: Path) -> str | None:
        """Load every object from the checkpoint at ``path``; None, or why it cannot be used.

        A failure after some objects loaded leaves them changed; the next checkpoint that loads overwrites
        them all, and if none loads the run stops.
        """
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # a truncated zip, a pickle of something else, an empty file: torch names no file
            return f"unreadable, truncated or corrupt ({_one_line(e)})"
        if not isinstance(state, Mapping):
            return f"not a checkpoint (a {type(state).__name__}, not a dict)"
        missing = sorted(set(self.objects) - set(state))
        if missing:
            return f"has no {missing} (keys: {sorted(state)}): not a checkpoint of this pretraining config"
        for name, obj in self.objects.items():
            if isinstance(obj, nn.Module) and isinstance(state[name], Mapping):
                differences = state_dict_differences(obj.state_dict(), state[name])
                if differences:
                    return f"'{name}' does not match this config's network: {differences}"
        _forget_missing_files(state, self.save_dir)
        try:
            Checkpoint.load_objects({**self.objects, "checkpointer": self.checkpoint}, state)
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            return f"does not match this config ({_one_line(e)})"
        return None

    def save(self, engine: Engine) -> None:
        self.checkpoint(engine)
        self._save_encoder(engine)

    def save_final(self, engine: Engine) -> None:
        # a resumed run that was already complete ends here too: its checkpoint exists, keep it as it is
        already_saved = (self.save_dir / f"checkpoint_{engine.state.epoch}.pt").exists()
        if engine.state.epoch % self.save_interval and not already_saved:
            self.checkpoint(engine)
        self._save_encoder(engine)

    def _save_encoder(self, engine: Engine, path: Path | None = None, encoder: nn.Module | None = None) -> None:
        if engine.state.rank != 0:
            return
        # self-describing: weights + architecture + package version (SASwinEncoder.from_pretrained reads it)
        save_encoder(unwrap(self.encoder if encoder is None else encoder), self.model_path if path is None else path)


def _one_line(e: BaseException, limit: int = 200) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:limit]}"


class ModelCheckpointLoader(CheckpointLoader):
    """``monai.handlers.CheckpointLoader`` whose failures name the file, what is wrong with it, and what to do.

    Before MONAI's loader runs: a missing file is a ``FileNotFoundError``; a truncated, corrupt or non-torch
    file, or (with ``strict``) weights that do not fit the config's network (another ``feature_size``,
    ``out_channels``, ``mode`` ...), a ``ValueError`` naming the mismatched keys. Same arguments as
    ``CheckpointLoader``.
    """

    def __call__(self, engine: Engine) -> None:
        path = Path(self.load_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"checkpoint {path} not found: run this bundle's configs/train.yaml first (it writes models/model.pt), "
                "or point --ckpt_dir at the folder that holds it."
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch's zip and unpickling errors name no file
            raise ValueError(
                f"checkpoint {path} cannot be read: truncated, corrupt or not a torch file ({_one_line(e)}). "
                "Train again to rewrite it."
            ) from e
        name = next(iter(self.load_dict))
        if len(self.load_dict) == 1 and (not isinstance(state, Mapping) or name not in state):
            state = {name: state}  # a bare state dict, as CheckpointLoader reads it
        for name, obj in self.load_dict.items():
            if self.strict and isinstance(obj, nn.Module) and isinstance(state.get(name), Mapping):
                differences = state_dict_differences(unwrap(obj).state_dict(), state[name])
                if differences:
                    raise ValueError(
                        f"checkpoint {path} does not match this config's network ('{name}': {differences}). Use the "
                        "settings it was trained with (feature_size, depths, out_channels, mode, ...) or train again."
                    )
        super().__call__(engine)
