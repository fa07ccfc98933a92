"""Pretraining step benchmark: how close is a co-distillation step to the networks it runs?

``python -m dagman_components.benchmark`` times, in one process and interleaved round by round so
machine drift cancels out of the ratios:

1. ``lower_bound``: the student and teacher networks alone (encoder + SA + heads): the student's
   forward and backward on the two stacked views with a fixed mask, and the teacher's no-grad
   forward on the two views with its heads; no masking, loss, optimiser or EMA;
2. ``dagman``: one full ``CoDistillationTrainer`` iteration (patch dropout, SATT, guided masks, the
   four losses, backward, clipping, AdamW step, EMA, centers, learning-rate schedule and logging
   handlers), stepped through Ignite's iteration events;
3. ``dagman_noisy_satt``: the same iteration with the student's SATT taken from the patch-dropped
   teacher pass (no clean teacher pass): ``ratio_clean_to_noisy_satt`` is what the clean pass costs;
4. ``smit``: the same trainer with random masking, no SA module, clean teacher;
4. ``data``: volumes/s that the pretrain bundle's data pipeline (CacheDataset of the deterministic
   transforms, then two random crops, DataLoader) delivers on the phantom set, against the volumes/s
   the DAGMaN step consumes.

Peak memory is per variant: on CUDA ``torch.cuda.max_memory_allocated`` above what was allocated before
the first step; on CPU the peak resident set size (``VmHWM``, Linux) of a fresh child process running two
steps of the variant, above its RSS just before the first step (so the Python/torch baseline does not dilute the
gradient-checkpointing ratio).

Defaults are the pretrain bundle's ``configs/train.yaml`` (64^3, batch 2, feature size 12, heads
1024/256/64); the issue's second configuration is ``--roi_size 96 --feature_size 48``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Events

__all__ = ["BenchmarkConfig", "run_benchmark", "format_table", "main"]

logger = logging.getLogger(__name__)

VARIANTS = ("lower_bound", "dagman", "dagman_noisy_satt", "smit")


@dataclass
class BenchmarkConfig:
    """What to measure. Defaults: ``bundles/pretrain/configs/train.yaml``."""

    roi_size: int = 64
    batch_size: int = 2
    feature_size: int = 12
    depths: Sequence[int] = (2, 2, 8, 2)
    num_heads: Sequence[int] = (4, 4, 8, 16)
    head_out_dim: int = 1024
    head_hidden_dim: int = 256
    head_bottleneck_dim: int = 64
    device: str = "auto"
    amp: bool = False
    amp_dtype: str = "bfloat16"
    use_checkpoint: bool = False
    fused_optimizer: bool = True
    iterations: int = 10
    warmup: int = 2
    data_batches: int = 20
    phantom_volumes: int = 8
    phantom_shape: Sequence[int] = (112, 112, 96)
    num_workers: int = 0
    memory: bool = True
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


# ---- the three steps -----------------------------------------------------------------------------


def _build_student(cfg: BenchmarkConfig, semantic_attention: bool) -> torch.nn.Module:
    from dagman_components.networks import DAGMaNPretrainModel, SASwinEncoder

    encoder = SASwinEncoder(
        feature_size=cfg.feature_size,
        depths=tuple(cfg.depths),
        num_heads=tuple(cfg.num_heads),
        drop_path_rate=0.1,
        use_semantic_attention=semantic_attention,
        use_checkpoint=cfg.use_checkpoint,
    )
    return DAGMaNPretrainModel(
        encoder,
        cfg.head_out_dim,
        cfg.head_hidden_dim,
        cfg.head_bottleneck_dim,
        aitd_head=semantic_attention,
        head_input_norm="batch",  # the pretrain bundle's default
    )


def _views(cfg: BenchmarkConfig, device: torch.device) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(cfg.seed)
    shape = (cfg.batch_size, 1, cfg.roi_size, cfg.roi_size, cfg.roi_size)
    return {key: torch.rand(shape, generator=generator).to(device) for key in ("view_1", "view_2")}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def lower_bound_step(cfg: BenchmarkConfig, device: torch.device) -> Callable[[], None]:
    """Student forward+backward and teacher no-grad forward on the stacked views, nothing else.

    The mask (70 % of the SA-stage tokens, as the real step) is drawn once, outside the timed step.
    """
    from dagman_components.engines import make_teacher

    student = _build_student(cfg, semantic_attention=True).to(device).train()
    teacher = make_teacher(student)
    views = _views(cfg, device)
    images = torch.cat([views["view_1"], views["view_2"]])
    grid = student.encoder.grid_size(images.shape[2:])
    n_tokens = math.prod(grid)
    mask = torch.zeros(images.shape[0], n_tokens, dtype=torch.bool, device=device)
    mask[:, : int(0.7 * n_tokens)] = True
    autocast = torch.autocast(device.type, dtype=getattr(torch, cfg.amp_dtype), enabled=cfg.amp)

    def step() -> None:
        with torch.no_grad(), autocast:
            teacher.project(teacher.encode(images, mask), mask, reconstruct=False)
        with autocast:
            _, heads = student(images, mask)
        outputs = [heads.patch_logits, heads.cls_logits, heads.global_logits, heads.reconstruction]
        # the cheapest scalar that reaches every output, so backward runs through every network
        sum(t.float().mean() for t in outputs if t is not None).backward()
        student.zero_grad(set_to_none=True)

    return step


def trainer_step(cfg: BenchmarkConfig, device: torch.device, method: str) -> Callable[[], None]:
    """One ``CoDistillationTrainer`` iteration of ``method`` with the bundle's handlers.

    ``method``: "dagman" (SATT of the student's mask from a clean teacher pass, the default),
    "dagman_noisy_satt" (SATT from the patch-dropped pass: no extra teacher forward) or "smit".

    The engine is stepped by hand through Ignite's iteration events (the handlers fire as in
    ``trainer.run()``), at epoch 2 so the first-epoch last-layer freeze does not skip work.
    """
    from monai.handlers import LrScheduleHandler, StatsHandler
    from monai.optimizers import WarmupCosineSchedule

    from dagman_components.engines import CoDistillationTrainer, parameter_groups
    from dagman_components.losses import DAGMaNLoss

    dagman = method.startswith("dagman")
    student = _build_student(cfg, semantic_attention=dagman).to(device)
    loss = DAGMaNLoss(out_dim=cfg.head_out_dim, aitd_weight=0.1 if dagman else 0.0, warmup_teacher_temp_epochs=4)
    optimizer = torch.optim.AdamW(parameter_groups(student, 0.05), lr=8e-4, fused=cfg.fused_optimizer)
    total = 1000
    scheduler = WarmupCosineSchedule(optimizer, warmup_steps=10, t_total=total)
    stats_logger = f"{__name__}.stats.{method}"
    quiet = logging.getLogger(stats_logger)
    quiet.handlers[:] = [logging.NullHandler()]
    quiet.setLevel(logging.INFO)  # records are formatted as in a real run, then dropped
    quiet.propagate = False
    batch = _views(cfg, device)
    trainer = CoDistillationTrainer(
        device=device,
        max_epochs=total,
        train_data_loader=[batch],
        network=student,
        optimizer=optimizer,
        loss_function=loss,
        masking="attention_high" if dagman else "random",
        teacher_drop_ratio=0.7 if dagman else 0.0,
        satt_source="noisy" if method == "dagman_noisy_satt" else "clean",
        amp=cfg.amp,
        amp_dtype=cfg.amp_dtype,
        handlers=[
            LrScheduleHandler(scheduler, epoch_level=False, print_lr=False),
            StatsHandler(name=stats_logger, tag_name="train", output_transform=lambda x: x),
        ],
    )
    trainer.scaler = trainer.make_grad_scaler()
    trainer.state.max_epochs, trainer.state.epoch_length, trainer.state.epoch = total, 1, 1
    trainer.fire_event(Events.EPOCH_STARTED)
    trainer.state.epoch = 2

    def step() -> None:
        trainer.state.iteration += 1
        trainer.state.batch = batch
        trainer.fire_event(Events.ITERATION_STARTED)
        trainer.state.output = trainer._process_function(trainer, batch)
        trainer.fire_event(Events.ITERATION_COMPLETED)

    return step


def _make_step(cfg: BenchmarkConfig, variant: str, device: torch.device) -> Callable[[], None]:
    return lower_bound_step(cfg, device) if variant == "lower_bound" else trainer_step(cfg, device, variant)


# ---- timing and memory ---------------------------------------------------------------------------


def time_steps(steps: dict[str, Callable[[], None]], iterations: int, warmup: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds per call of each step, interleaved: round k runs every step once, in a rotating order."""
    names = list(steps)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(warmup + iterations):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            _synchronize(device)
            start = time.perf_counter()
            steps[name]()
            _synchronize(device)
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
        logger.info(f"round {round_index + 1}/{warmup + iterations}" + (" (warm-up)" if round_index < warmup else ""))
    return times


def _status_bytes(field_name: str) -> int:
    """A memory field of /proc/self/status (Linux), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field_name} in /proc/self/status (peak memory on CPU needs Linux)")


def _rss_bytes() -> int:
    return _status_bytes("VmRSS")


def _peak_rss_bytes() -> int:
    # VmHWM belongs to the address space and starts afresh at exec; ru_maxrss would carry over the
    # parent's peak into a spawned child (Linux keeps it across execve)
    return _status_bytes("VmHWM")


def _memory_child(cfg_dict: dict, variant: str, queue: multiprocessing.Queue) -> None:
    try:
        cfg = BenchmarkConfig(**cfg_dict)
        device = cfg.torch_device()
        step = _make_step(cfg, variant, device)
        before = _rss_bytes()
        for _ in range(2):  # the second step holds optimiser state and the EMA as in steady state
            step()
        queue.put((_peak_rss_bytes() - before, None))
    except BaseException as err:  # report, never hang the parent
        queue.put((None, f"{type(err).__name__}: {err}"))


def peak_step_memory(cfg: BenchmarkConfig, variant: str) -> int:
    """Peak memory (bytes) a variant's steps add on top of what its networks and inputs hold."""
    device = cfg.torch_device()
    if device.type == "cuda":
        step = _make_step(cfg, variant, device)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        for _ in range(2):
            step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        del step
        torch.cuda.empty_cache()
        return peak
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_memory_child, args=(asdict(cfg), variant, queue))
    child.start()
    peak, error = queue.get()
    child.join()
    if error is not None:
        raise RuntimeError(f"memory probe of {variant!r} failed: {error}")
    return peak


def data_throughput(cfg: BenchmarkConfig, workdir: Path) -> float:
    """Volumes/s delivered by the pretrain bundle's pipeline on the phantom set (cache filled beforehand)."""
    from monai.data import CacheDataset, DataLoader

    from dagman_components.data import generate_phantom_dataset, load_datalist, pretrain_transforms

    datalist = generate_phantom_dataset(
        workdir / "phantom", num_volumes=cfg.phantom_volumes, shape=tuple(cfg.phantom_shape), seed=cfg.seed
    )
    items = load_datalist(dataset_dir=str(workdir / "phantom"), datalist=str(datalist))
    roi = [cfg.roi_size] * 3
    dataset = CacheDataset(items, pretrain_transforms(roi_size=roi), cache_rate=1.0, num_workers=2, progress=False)
    loader = DataLoader(
        dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=cfg.num_workers,
        persistent_workers=cfg.num_workers > 0,
    )
    delivered, batches = 0, iter(loader)
    next(batches)  # workers start
    start = time.perf_counter()
    while delivered < cfg.data_batches * cfg.batch_size:
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            continue
        delivered += batch["view_1"].shape[0]
    return delivered / (time.perf_counter() - start)


# ---- the whole benchmark -------------------------------------------------------------------------


def run_benchmark(cfg: BenchmarkConfig) -> dict[str, Any]:
    """Measure everything; returns the JSON-ready result (see the module docstring)."""
    device = cfg.torch_device()
    torch.manual_seed(cfg.seed)
    logger.info(f"benchmark on {device}: {asdict(cfg)}")
    steps = {variant: _make_step(cfg, variant, device) for variant in VARIANTS}
    times = time_steps(steps, cfg.iterations, cfg.warmup, device)
    del steps
    median = {name: statistics.median(values) for name, values in times.items()}
    volumes_per_step = cfg.batch_size  # one volume gives the two views of a sample
    result: dict[str, Any] = {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "variants": {
            name: {
                "median_s_per_iteration": median[name],
                "min_s_per_iteration": min(times[name]),
                "volumes_per_s": volumes_per_step / median[name],
                "times_s": times[name],
            }
            for name in VARIANTS
        },
        "ratio_dagman_to_lower_bound": median["dagman"] / median["lower_bound"],
        "ratio_dagman_to_smit": median["dagman"] / median["smit"],
        # the cost of the clean teacher pass that gives the student's mask its SATT
        "ratio_clean_to_noisy_satt": median["dagman"] / median["dagman_noisy_satt"],
        # the fastest round of each: robust to other processes stealing the cores in some rounds
        "ratio_dagman_to_lower_bound_min": min(times["dagman"]) / min(times["lower_bound"]),
        "ratio_dagman_to_smit_min": min(times["dagman"]) / min(times["smit"]),
    }
    with tempfile.TemporaryDirectory() as workdir:
        data_vps = data_throughput(cfg, Path(workdir))
    result["data_volumes_per_s"] = data_vps
    result["data_to_step_throughput"] = data_vps / result["variants"]["dagman"]["volumes_per_s"]
    if cfg.memory:
        for name in VARIANTS:
            result["variants"][name]["peak_memory_bytes"] = peak_step_memory(cfg, name)
        other = replace(cfg, use_checkpoint=not cfg.use_checkpoint)
        with_ckpt, without = (
            (result["variants"]["dagman"]["peak_memory_bytes"], peak_step_memory(other, "dagman"))
            if cfg.use_checkpoint
            else (peak_step_memory(other, "dagman"), result["variants"]["dagman"]["peak_memory_bytes"])
        )
        result["dagman_peak_memory_bytes_checkpointing"] = with_ckpt
        result["dagman_peak_memory_bytes_no_checkpointing"] = without
        result["checkpointing_memory_ratio"] = with_ckpt / without
    return result


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "cpu"


def format_table(result: dict[str, Any]) -> str:
    """The printed summary: one row per variant, then the ratios."""
    memory = "peak CUDA memory (MiB)" if result["device"].startswith("cuda") else "peak RSS (MiB)"
    lines = [
        f"device: {result['device']} ({result['device_name']}), torch {result['torch_version']}, "
        f"{result['torch_threads']} threads",
        f"{'variant':<18} {'median s/it':>12} {'volumes/s':>10} {memory:>24}",
    ]
    for name, row in result["variants"].items():
        peak = row.get("peak_memory_bytes")
        peak_text = f"{peak / 2**20:.0f}" if peak is not None else "-"
        lines.append(f"{name:<18} {row['median_s_per_iteration']:>12.4f} {row['volumes_per_s']:>10.3f} {peak_text:>24}")
    lines.append(f"{'data':<18} {'':>12} {result['data_volumes_per_s']:>10.3f}")
    lines.append(f"{'':<18} {'min s/it':>12}")
    for name, row in result["variants"].items():
        lines.append(f"{name:<18} {row['min_s_per_iteration']:>12.4f}")
    lines.append(
        f"ratio DAGMaN / lower bound: {result['ratio_dagman_to_lower_bound']:.3f} "
        f"(fastest rounds: {result['ratio_dagman_to_lower_bound_min']:.3f})"
    )
    lines.append(
        f"ratio DAGMaN / SMIT:        {result['ratio_dagman_to_smit']:.3f} "
        f"(fastest rounds: {result['ratio_dagman_to_smit_min']:.3f})"
    )
    lines.append(f"clean / noisy SATT:         {result['ratio_clean_to_noisy_satt']:.3f} (cost of the clean teacher pass)")
    lines.append(f"data / step throughput:     {result['data_to_step_throughput']:.2f}")
    if "checkpointing_memory_ratio" in result:
        lines.append(f"checkpointing memory ratio: {result['checkpointing_memory_ratio']:.3f} (with / without)")
    return "\n".join(lines)


def main(
    roi_size: int = 64,
    batch_size: int = 2,
    feature_size: int = 12,
    depths: Sequence[int] = (2, 2, 8, 2),
    num_heads: Sequence[int] = (4, 4, 8, 16),
    head_out_dim: int = 1024,
    head_hidden_dim: int = 256,
    head_bottleneck_dim: int = 64,
    device: str = "auto",
    amp: bool = False,
    amp_dtype: str = "bfloat16",
    use_checkpoint: bool = False,
    fused_optimizer: bool = True,
    iterations: int = 10,
    warmup: int = 2,
    data_batches: int = 20,
    phantom_volumes: int = 8,
    num_workers: int = 0,
    memory: bool = True,
    seed: int = 0,
    output: str | None = None,
) -> dict[str, Any]:
    """Benchmark the pretraining step; prints a table, and with ``--output FILE`` writes the same as JSON.

    Every option mirrors a key of ``bundles/pretrain/configs/train.yaml`` (defaults equal), plus
    ``iterations``/``warmup`` (timed rounds / untimed rounds), ``data_batches`` (batches timed for
    the data pipeline), ``phantom_volumes`` (phantoms it reads), ``memory`` (False skips the per-variant memory probes).
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    cfg = BenchmarkConfig(
        roi_size=roi_size, batch_size=batch_size, feature_size=feature_size, depths=tuple(depths),
        num_heads=tuple(num_heads), head_out_dim=head_out_dim, head_hidden_dim=head_hidden_dim,
        head_bottleneck_dim=head_bottleneck_dim, device=device, amp=amp, amp_dtype=amp_dtype,
        use_checkpoint=use_checkpoint, fused_optimizer=fused_optimizer, iterations=iterations, warmup=warmup, data_batches=data_batches,
        phantom_volumes=phantom_volumes,
        num_workers=num_workers, memory=memory, seed=seed,
    )
    if cfg.roi_size % 32:
        raise ValueError(f"roi_size must be a multiple of 32 (the encoder's input multiple), got {cfg.roi_size}")
    result = run_benchmark(cfg)
    print(format_table(result))
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(result, indent=2) + "\n")
        print(f"written {output}")
    return result


if __name__ == "__main__":
    import fire

    fire.Fire(main, serialize=lambda _: None)
