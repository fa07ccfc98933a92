"""Pretraining step benchmark: how fast is a co-distillation step, against MONAI's own networks?

``python -m dagman_components.benchmark`` times, in one process and interleaved round by round so
machine drift cancels out of the ratios:

1. ``monai_lower_bound``: the student and teacher networks alone, run by MONAI's own forward
   (``swin_forward="monai"``: MONAI's ``BasicLayer``/``WindowAttention``, as every peer built on MONAI's
   Swin runs them): the student's forward and backward on the two stacked views with a fixed mask,
   and the teacher's no-grad forward on the two views with its heads; no masking, loss, optimiser or EMA;
2. ``lower_bound``: the same networks and work with this package's forward (``--swin_forward``, default
   ``fast``: :mod:`dagman_components.networks.fast_swin`);
3. ``dagman``: one full ``CoDistillationTrainer`` iteration (patch dropout, SATT, guided masks, the
   four losses, backward, clipping, AdamW step, EMA, centers, learning-rate schedule and logging
   handlers), stepped through Ignite's iteration events;
4. ``dagman_noisy_satt``: the same iteration with the student's SATT taken from the patch-dropped
   teacher pass (no clean teacher pass): ``ratio_clean_to_noisy_satt`` is what the clean pass costs;
5. ``smit``: the same trainer with random masking, no SA module, clean teacher;
6. ``data``: volumes/s that the pretrain bundle's data pipeline (``--cache memory|disk|none`` of the
   deterministic transforms, then two random crops, DataLoader with ``--num_workers``) delivers on the
   phantom set, against the volumes/s the DAGMaN step consumes and against an assumed step time
   (``--assumed_step_s``, e.g. a GPU's).

Every variant runs at the run's precision (``--amp``), so the MONAI ratio measures the networks' forward,
not the precision. ``flops_per_step`` is counted once per variant by ``torch.utils.flop_counter``
(matrix products and convolutions, forward and backward; PyTorch's fused CPU attention kernel is counted
with the flop counter's own SDPA formula, and oneDNN's fused linear as the product it computes, so both
forwards count the same arithmetic);
``achieved_flops_per_s`` divides it by the median step time. Each round also records the process's CPU
time in user and in kernel mode and its minor page faults (``getrusage``): on CPU a step that allocates
large fresh tensors spends kernel time zeroing the pages it touches, which varies between hosts, while the
user time is the arithmetic; ``ratio_dagman_to_monai_lower_bound_user`` is the ratio of the median user times.
``allocator`` records the malloc the process runs on (:py:func:`memory_allocator`, from ``LD_PRELOAD``): with
glibc's, every large tensor is a fresh mapping the kernel faults in again each step, and MONAI's networks (which
keep every attention matrix for the backward) pay more of that than ours; a caching malloc removes it for both.

Peak memory is per variant: on CUDA ``torch.cuda.max_memory_allocated`` above what was allocated before
the first step; on CPU the peak resident set size (``VmHWM``, Linux) of a fresh child process running two
steps of the variant, above its RSS just before the first step (so the Python/torch baseline does not dilute the
gradient-checkpointing ratio). ``--data_memory_volumes "[20,200]"`` also measures the data pipeline's peak RSS
over one pass of phantom sets of those sizes (fresh child process per size): flat with ``--cache disk``.

Defaults are the pretrain bundle's ``configs/train.yaml`` (64^3, batch 2, feature size 12, heads
1024/256/64); the issue's second configuration is ``--roi_size 96 --feature_size 48``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import multiprocessing
import os
import queue as queue_module
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Events

__all__ = ["BenchmarkConfig", "run_benchmark", "format_table", "memory_allocator", "main"]

logger = logging.getLogger(__name__)

VARIANTS = ("monai_lower_bound", "lower_bound", "dagman", "dagman_noisy_satt", "smit")


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
    swin_forward: str = "fast"
    compile_swin: bool = False
    channels_last: bool = False
    skip_mask_windows: bool = True
    fused_optimizer: bool = True
    iterations: int = 10
    warmup: int = 2
    data_batches: int = 20
    phantom_volumes: int = 8
    phantom_shape: Sequence[int] = (112, 112, 96)
    num_workers: int = 0
    cache: str = "memory"
    assumed_step_s: float = 0.25
    data_memory_volumes: Sequence[int] = ()
    memory: bool = True
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


# ---- the three steps -----------------------------------------------------------------------------


def _build_student(cfg: BenchmarkConfig, semantic_attention: bool) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The student and its loss; the loss's weights pick the heads (no AITD without SA)."""
    from dagman_components.losses import DAGMaNLoss
    from dagman_components.networks import DAGMaNPretrainModel, SASwinEncoder

    loss = DAGMaNLoss(out_dim=cfg.head_out_dim, aitd_weight=0.1 if semantic_attention else 0.0, warmup_teacher_temp_epochs=4)

    encoder = SASwinEncoder(
        feature_size=cfg.feature_size,
        depths=tuple(cfg.depths),
        num_heads=tuple(cfg.num_heads),
        drop_path_rate=0.1,
        use_semantic_attention=semantic_attention,
        use_checkpoint=cfg.use_checkpoint,
        swin_forward=cfg.swin_forward,
        compile_stages=cfg.compile_swin,
        channels_last=cfg.channels_last,
        skip_mask_windows=cfg.skip_mask_windows,
    )
    student = DAGMaNPretrainModel(
        encoder,
        loss,
        cfg.head_hidden_dim,
        cfg.head_bottleneck_dim,
        head_input_norm="batch",  # the pretrain bundle's default
    )
    return student, loss


def _views(cfg: BenchmarkConfig, device: torch.device) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(cfg.seed)
    shape = (cfg.batch_size, 1, cfg.roi_size, cfg.roi_size, cfg.roi_size)
    return {key: torch.rand(shape, generator=generator).to(device) for key in ("view_1", "view_2")}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def lower_bound_step(cfg: BenchmarkConfig, device: torch.device) -> Callable[[], None]:
    """Student forward+backward and teacher no-grad forward on the stacked views, nothing else.

    The mask (70 % of the SA-stage tokens at random, as the real step) is drawn once, outside the timed step.
    """
    from dagman_components.engines import make_teacher

    student, _ = _build_student(cfg, semantic_attention=True)
    student = student.to(device).train()
    teacher = make_teacher(student)
    views = _views(cfg, device)
    images = torch.cat([views["view_1"], views["view_2"]])
    grid = student.encoder.grid_size(images.shape[2:])
    n_tokens = math.prod(grid)
    # random SA-stage tokens, as the real step's masks are scattered: a contiguous block would let the fast
    # forward compute nearly every window of mask tokens once (``skip_mask_windows``)
    generator = torch.Generator().manual_seed(cfg.seed)
    order = torch.rand(images.shape[0], n_tokens, generator=generator).argsort(dim=1)
    mask = (order < int(0.7 * n_tokens)).to(device)
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

    dagman = method.startswith("dagman")
    student, loss = _build_student(cfg, semantic_attention=dagman)
    student = student.to(device)
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
    if variant == "monai_lower_bound":
        return lower_bound_step(replace(cfg, swin_forward="monai", compile_swin=False, channels_last=False), device)
    return lower_bound_step(cfg, device) if variant == "lower_bound" else trainer_step(cfg, device, variant)


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    """FLOPs of PyTorch's fused CPU attention kernel: the flop counter's formula for the other SDPA kernels."""
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _linear_pointwise_flops(input_shape, weight_shape, *args, **kwargs) -> int:
    """FLOPs of oneDNN's fused linear (:mod:`~dagman_components.networks.fused_linear`): those of the same ``mm``."""
    return 2 * math.prod(input_shape[:-1]) * input_shape[-1] * weight_shape[0]


def step_flops(step: Callable[[], None]) -> int:
    """FLOPs of one call of ``step`` counted by ``torch.utils.flop_counter`` (matrix products, convolutions, SDPA)."""
    from torch.utils.flop_counter import FlopCounterMode

    custom = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}
    if hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        custom[torch.ops.mkldnn._linear_pointwise] = _linear_pointwise_flops
    with FlopCounterMode(display=False, custom_mapping=custom) as counter:
        step()
    return counter.get_total_flops()


# ---- timing and memory ---------------------------------------------------------------------------


#: what :func:`time_steps` records per timed call: wall seconds, CPU seconds in user and in kernel mode, minor page faults
ROUND_MEASURES: tuple[str, ...] = ("times_s", "user_s", "system_s", "minor_faults")


def _usage() -> tuple[float, float, float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), usage.ru_utime, usage.ru_stime, float(usage.ru_minflt)


def time_steps(
    steps: dict[str, Callable[[], None]], iterations: int, warmup: int, device: torch.device
) -> dict[str, dict[str, list[float]]]:
    """Per step, the :data:`ROUND_MEASURES` of each timed call; interleaved: round k runs every step once, in a
    rotating order. CPU times and faults are the whole process's (all threads) during the call."""
    names = list(steps)
    rounds: dict[str, dict[str, list[float]]] = {name: {measure: [] for measure in ROUND_MEASURES} for name in names}
    for round_index in range(warmup + iterations):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            _synchronize(device)
            start = _usage()
            steps[name]()
            _synchronize(device)
            end = _usage()
            if round_index >= warmup:
                for measure, first, last in zip(ROUND_MEASURES, start, end):
                    rounds[name][measure].append(last - first)
        logger.info(f"round {round_index + 1}/{warmup + iterations}" + (" (warm-up)" if round_index < warmup else ""))
    return rounds


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


def _memory_child(cfg_dict: dict, variant: str, threads: int, queue: multiprocessing.Queue) -> None:
    try:
        torch.set_num_threads(threads)
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
    return _in_fresh_process(_memory_child, f"memory probe of {variant!r}", asdict(cfg), variant, torch.get_num_threads())


def _in_fresh_process(target: Callable[..., None], what: str, *args: Any) -> int:
    """Run ``target(*args, queue)`` in a spawned process and return the number it puts; its error, or its death, raises."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=target, args=(*args, queue))
    child.start()
    while True:
        try:
            value, error = queue.get(timeout=5)
            break
        except queue_module.Empty:
            if not child.is_alive():  # died before reporting (killed, or could not even start)
                raise RuntimeError(f"{what} failed: the child process exited with code {child.exitcode}") from None
    child.join()
    if error is not None:
        raise RuntimeError(f"{what} failed: {error}")
    return value


def _data_loader(cfg: BenchmarkConfig, workdir: Path):
    """The pretrain bundle's dataset (``cfg.cache``) and DataLoader over ``cfg.phantom_volumes`` phantoms in ``workdir``."""
    from monai.data import DataLoader

    from dagman_components.data import generate_phantom_dataset, load_datalist, pretrain_dataset, pretrain_transforms

    datalist = generate_phantom_dataset(
        workdir / "phantom", num_volumes=cfg.phantom_volumes, shape=tuple(cfg.phantom_shape), seed=cfg.seed
    )
    items = load_datalist(dataset_dir=str(workdir / "phantom"), datalist=str(datalist))
    dataset = pretrain_dataset(
        items, pretrain_transforms(roi_size=[cfg.roi_size] * 3), cache=cfg.cache, cache_dir=workdir / "cache", progress=False
    )
    return DataLoader(
        dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=cfg.num_workers,
        persistent_workers=cfg.num_workers > 0,
    )


def data_throughput(cfg: BenchmarkConfig, workdir: Path) -> float:
    """Volumes/s delivered by the pretrain bundle's pipeline on the phantom set (memory cache filled, disk cache written beforehand)."""
    loader = _data_loader(cfg, workdir)
    if cfg.cache == "disk":
        for _ in loader:  # the first pass writes the disk cache, as the first epoch of a run does
            pass
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


def _data_memory_child(cfg_dict: dict, workdir: str, queue: multiprocessing.Queue) -> None:
    try:
        cfg = BenchmarkConfig(**cfg_dict)
        loader = _data_loader(cfg, Path(workdir))
        for _ in range(2):  # the first epoch writes the disk cache, the second reads it
            for _ in loader:
                pass
        queue.put((_peak_rss_bytes(), None))
    except BaseException as err:  # report, never hang the parent
        queue.put((None, f"{type(err).__name__}: {err}"))


def data_peak_rss(cfg: BenchmarkConfig) -> int:
    """Peak RSS (bytes) of a fresh process that builds the pipeline on ``cfg.phantom_volumes`` phantoms and reads two epochs.

    The phantoms are generated in the parent beforehand, so the child holds only the pipeline;
    with ``cache="disk"`` the figure does not grow with the number of volumes, with ``"memory"`` it does.
    DataLoader workers (``num_workers > 0``) are separate processes and not counted: measure with 0.
    """
    from dagman_components.data import generate_phantom_dataset

    with tempfile.TemporaryDirectory() as workdir:
        generate_phantom_dataset(
            Path(workdir) / "phantom", num_volumes=cfg.phantom_volumes, shape=tuple(cfg.phantom_shape), seed=cfg.seed
        )
        return _in_fresh_process(
            _data_memory_child, f"data memory probe with {cfg.phantom_volumes} volumes", asdict(cfg), workdir
        )


# ---- the whole benchmark -------------------------------------------------------------------------


def run_benchmark(cfg: BenchmarkConfig) -> dict[str, Any]:
    """Measure everything; returns the JSON-ready result (see the module docstring)."""
    device = cfg.torch_device()
    torch.manual_seed(cfg.seed)
    logger.info(f"benchmark on {device}: {asdict(cfg)}")
    steps = {variant: _make_step(cfg, variant, device) for variant in VARIANTS}
    rounds = time_steps(steps, cfg.iterations, cfg.warmup, device)
    times = {name: measures["times_s"] for name, measures in rounds.items()}
    medians = {name: {m: statistics.median(v) for m, v in measures.items()} for name, measures in rounds.items()}
    median = {name: m["times_s"] for name, m in medians.items()}
    user = {name: m["user_s"] for name, m in medians.items()}
    flops = {variant: step_flops(step) for variant, step in steps.items()}
    del steps
    volumes_per_step = cfg.batch_size  # one volume gives the two views of a sample
    result: dict[str, Any] = {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "allocator": memory_allocator(),
        "variants": {
            name: {
                "median_s_per_iteration": median[name],
                "min_s_per_iteration": min(times[name]),
                "volumes_per_s": volumes_per_step / median[name],
                "flops_per_step": flops[name],
                "achieved_flops_per_s": flops[name] / median[name],
                "user_s_per_iteration": user[name],
                "system_s_per_iteration": medians[name]["system_s"],
                "minor_faults_per_iteration": medians[name]["minor_faults"],
                **rounds[name],
            }
            for name in VARIANTS
        },
        "ratio_dagman_to_monai_lower_bound": median["dagman"] / median["monai_lower_bound"],
        "ratio_lower_bound_to_monai_lower_bound": median["lower_bound"] / median["monai_lower_bound"],
        "ratio_dagman_to_lower_bound": median["dagman"] / median["lower_bound"],
        "ratio_dagman_to_smit": median["dagman"] / median["smit"],
        # the cost of the clean teacher pass that gives the student's mask its SATT
        "ratio_clean_to_noisy_satt": median["dagman"] / median["dagman_noisy_satt"],
        # the fastest round of each: robust to other processes stealing the cores in some rounds
        "ratio_dagman_to_monai_lower_bound_min": min(times["dagman"]) / min(times["monai_lower_bound"]),
        "ratio_dagman_to_lower_bound_min": min(times["dagman"]) / min(times["lower_bound"]),
        "ratio_dagman_to_smit_min": min(times["dagman"]) / min(times["smit"]),
        # CPU time in user mode: the arithmetic, without the kernel's page-zeroing that varies between hosts
        "ratio_dagman_to_monai_lower_bound_user": user["dagman"] / user["monai_lower_bound"],
    }
    with tempfile.TemporaryDirectory() as workdir:
        data_vps = data_throughput(cfg, Path(workdir))
    result["data_volumes_per_s"] = data_vps
    result["data_to_step_throughput"] = data_vps / result["variants"]["dagman"]["volumes_per_s"]
    # against a step of assumed_step_s (a GPU's): does the loader keep up with a faster step than this machine's?
    result["data_to_assumed_step_throughput"] = data_vps * cfg.assumed_step_s / volumes_per_step
    if cfg.memory:
        for name in VARIANTS:
            result["variants"][name]["peak_memory_bytes"] = peak_step_memory(cfg, name)
        peaks = {name: result["variants"][name]["peak_memory_bytes"] for name in VARIANTS}
        result["ratio_peak_memory_lower_bound_to_monai_lower_bound"] = peaks["lower_bound"] / peaks["monai_lower_bound"]
        result["ratio_peak_memory_dagman_to_monai_lower_bound"] = peaks["dagman"] / peaks["monai_lower_bound"]
        other = replace(cfg, use_checkpoint=not cfg.use_checkpoint)
        with_ckpt, without = (
            (result["variants"]["dagman"]["peak_memory_bytes"], peak_step_memory(other, "dagman"))
            if cfg.use_checkpoint
            else (peak_step_memory(other, "dagman"), result["variants"]["dagman"]["peak_memory_bytes"])
        )
        result["dagman_peak_memory_bytes_checkpointing"] = with_ckpt
        result["dagman_peak_memory_bytes_no_checkpointing"] = without
        result["checkpointing_memory_ratio"] = with_ckpt / without
    if cfg.data_memory_volumes:
        result["data_peak_rss_bytes"] = {
            str(n): data_peak_rss(replace(cfg, phantom_volumes=int(n))) for n in cfg.data_memory_volumes
        }
    return result


def memory_allocator(environ: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """Which malloc the process runs on, from ``LD_PRELOAD`` (``environ``: ``os.environ``).

    On a CPU the allocator moves the step time: glibc hands every tensor above its mmap threshold (at most
    32 MiB) back to the kernel, which faults and zeroes the pages again on the next step; a caching malloc
    (jemalloc with ``dirty_decay_ms:-1``, tcmalloc) keeps them. Returns ``{"name": "jemalloc" | "tcmalloc" |
    "glibc", "ld_preload": ..., "malloc_conf": ...}`` (the last two None when unset).
    """
    environ = os.environ if environ is None else environ
    preload = environ.get("LD_PRELOAD") or None
    libraries = [Path(item).name for item in (preload or "").replace(":", " ").split()]
    name = next((lib for lib in ("jemalloc", "tcmalloc") if any(f"lib{lib}" in item for item in libraries)), "glibc")
    return {"name": name, "ld_preload": preload, "malloc_conf": environ.get("MALLOC_CONF") or None}


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "cpu"


def format_table(result: dict[str, Any]) -> str:
    """The printed summary: one row per variant, then the ratios."""
    memory = "peak CUDA MiB" if result["device"].startswith("cuda") else "peak RSS MiB"
    lines = [
        f"device: {result['device']} ({result['device_name']}), torch {result['torch_version']}, "
        f"{result['torch_threads']} threads, malloc: {result.get('allocator', {}).get('name', 'unknown')}",
        f"{'variant':<18} {'median s/it':>12} {'min s/it':>10} {'user s':>7} {'sys s':>7} {'volumes/s':>10} "
        f"{'GFLOP/step':>11} {'GFLOP/s':>8} {memory:>14}",
    ]
    for name, row in result["variants"].items():
        peak = row.get("peak_memory_bytes")
        peak_text = f"{peak / 2**20:.0f}" if peak is not None else "-"
        lines.append(
            f"{name:<18} {row['median_s_per_iteration']:>12.4f} {row['min_s_per_iteration']:>10.4f} "
            f"{row['user_s_per_iteration']:>7.2f} {row['system_s_per_iteration']:>7.2f} {row['volumes_per_s']:>10.3f} "
            f"{row['flops_per_step'] / 1e9:>11.2f} "
            f"{row['achieved_flops_per_s'] / 1e9:>8.2f} {peak_text:>14}"
        )
    lines.append(f"{'data':<18} {'':>12} {'':>10} {'':>7} {'':>7} {result['data_volumes_per_s']:>10.3f}")
    lines.append(
        f"ratio DAGMaN / MONAI lower bound: {result['ratio_dagman_to_monai_lower_bound']:.3f} "
        f"(fastest rounds: {result['ratio_dagman_to_monai_lower_bound_min']:.3f}; "
        f"user CPU time: {result['ratio_dagman_to_monai_lower_bound_user']:.3f})"
    )
    lines.append(f"lower bound / MONAI lower bound: {result['ratio_lower_bound_to_monai_lower_bound']:.3f}")
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
    lines.append(
        f"data / assumed step:        {result['data_to_assumed_step_throughput']:.2f} "
        f"(a step of {result['config']['assumed_step_s']} s)"
    )
    if "ratio_peak_memory_lower_bound_to_monai_lower_bound" in result:
        lines.append(
            f"peak memory, lower bound / MONAI lower bound: {result['ratio_peak_memory_lower_bound_to_monai_lower_bound']:.3f}; "
            f"DAGMaN / MONAI lower bound: {result['ratio_peak_memory_dagman_to_monai_lower_bound']:.3f}"
        )
    if "checkpointing_memory_ratio" in result:
        lines.append(f"checkpointing memory ratio: {result['checkpointing_memory_ratio']:.3f} (with / without)")
    for volumes, peak in result.get("data_peak_rss_bytes", {}).items():
        lines.append(f"data pipeline peak RSS, {volumes} volumes ({result['config']['cache']} cache): {peak / 2**20:.0f} MiB")
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
    amp: bool = BenchmarkConfig.amp,
    amp_dtype: str = "bfloat16",
    use_checkpoint: bool = False,
    swin_forward: str = "fast",
    compile_swin: bool = False,
    channels_last: bool = False,
    skip_mask_windows: bool = True,
    fused_optimizer: bool = True,
    iterations: int = 10,
    warmup: int = 2,
    data_batches: int = 20,
    phantom_volumes: int = 8,
    phantom_shape: Sequence[int] = (112, 112, 96),
    num_workers: int = BenchmarkConfig.num_workers,
    cache: str = "memory",
    assumed_step_s: float = 0.25,
    data_memory_volumes: Sequence[int] = (),
    memory: bool = True,
    threads: int | None = None,
    seed: int = 0,
    output: str | None = None,
) -> dict[str, Any]:
    """Benchmark the pretraining step; prints a table, and with ``--output FILE`` writes the same as JSON.

    Every option mirrors a key of ``bundles/pretrain/configs/train.yaml`` (defaults equal), plus
    ``iterations``/``warmup`` (timed rounds / untimed rounds), ``data_batches`` (batches timed for
    the data pipeline), ``phantom_volumes``/``phantom_shape`` (phantoms it reads), ``assumed_step_s``
    (a step time to test the loader against, e.g. a GPU's), ``data_memory_volumes`` (phantom-set sizes
    whose pipeline peak RSS is measured, e.g. ``"[20,200]"``), ``memory`` (False skips the per-variant memory
    probes) and ``threads`` (``torch.set_num_threads``; on a shared machine 1 thread keeps the rounds
    from waiting on each other's cores).
    """
    from dagman_components.options import as_bool

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    # the command line hands lowercase true/false over as strings
    amp, use_checkpoint, fused_optimizer, memory, compile_swin, channels_last, skip_mask_windows = (
        as_bool(v, n)
        for v, n in (
            (amp, "amp"), (use_checkpoint, "use_checkpoint"), (fused_optimizer, "fused_optimizer"), (memory, "memory"),
            (compile_swin, "compile_swin"), (channels_last, "channels_last"), (skip_mask_windows, "skip_mask_windows"),
        )
    )
    if threads:
        torch.set_num_threads(int(threads))
    cfg = BenchmarkConfig(
        roi_size=roi_size, batch_size=batch_size, feature_size=feature_size, depths=tuple(depths),
        num_heads=tuple(num_heads), head_out_dim=head_out_dim, head_hidden_dim=head_hidden_dim,
        head_bottleneck_dim=head_bottleneck_dim, device=device, amp=amp, amp_dtype=amp_dtype,
        use_checkpoint=use_checkpoint, swin_forward=swin_forward, compile_swin=compile_swin, channels_last=channels_last,
        skip_mask_windows=skip_mask_windows, fused_optimizer=fused_optimizer,
        iterations=iterations, warmup=warmup, data_batches=data_batches, phantom_volumes=phantom_volumes,
        phantom_shape=tuple(phantom_shape), num_workers=num_workers, cache=cache, assumed_step_s=assumed_step_s,
        data_memory_volumes=tuple(int(n) for n in data_memory_volumes), memory=memory, seed=seed,
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
