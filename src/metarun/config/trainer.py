"""Schema of ``conf/trainer/default.yaml``: the train loop (``metarun.train``), its devices,
processes and checkpoints."""

from __future__ import annotations

from dataclasses import dataclass

from metarun.config.errors import _check, _check_choice


@dataclass
class TrainerConfig:
    steps: int = 70000  # meta-training steps (outer updates); MAML §5.1 trains 70k
    meta_batch: int = 25  # tasks per outer update
    log_every: int = 500  # fetch metrics from the device every N steps
    val_every: int = 5000  # meta-validate every N steps (a multiple of log_every; 0 = never)
    progress: bool = True  # show a progress bar
    devices: str = "all"  # split each meta-batch over this many devices ("all" or N)
    precision: str = "fp32"  # bf16: forward passes in bfloat16, float32 master weights
    # Tasks each device adapts at once (0 = its whole share of the meta-batch): the meta-batch
    # then runs as a loop of chunks, each chunk's gradient computed and added before the next
    # (algos/base.py outer_grad). Less memory, and faster where the activations then stay in
    # cache (CPU).
    task_chunk: int = 0
    # Join other processes: auto (when SLURM starts several tasks), on, off.
    distributed: str = "auto"
    coordinator: str = ""  # host:port of process 0, for distributed=on outside SLURM
    num_processes: int = 1  # with coordinator
    process_id: int = 0  # with coordinator: this process, 0 .. num_processes - 1
    # Checkpoints of the whole training state (parameters, optimizer, validation tracker, logged
    # metrics) in <run dir>/checkpoints/state/<step>, written atomically by orbax (rundir.py).
    checkpoint_every: int = 5000  # steps, a multiple of log_every; 0 = at the end and on signals
    keep_checkpoints: int = 2  # the newest k
    # auto: continue from the run dir's newest checkpoint, if its config computes the same (else
    # an error names the keys); never: delete the run dir's checkpoints and start over; force:
    # continue even from a checkpoint made with another config.
    resume: str = "auto"
    # A non-finite loss or gradient: stop (raise, naming the steps), or skip the update.
    nan_policy: str = "stop"
    # A finished run dir whose trained encoder (every layer of the model but its head) this
    # run starts from, e.g. pre-train with algo=baseline, then meta-train (metarun/warmstart.py).
    init_from: str = ""

    def __post_init__(self) -> None:
        _check(self.steps >= 0, "trainer.steps", self.steps, "must be >= 0")
        _check(
            self.meta_batch >= 1,
            "trainer.meta_batch",
            self.meta_batch,
            "must be >= 1 task per outer update",
        )
        _check(self.log_every >= 1, "trainer.log_every", self.log_every, "must be >= 1")
        _check(
            self.devices == "all" or (self.devices.isdigit() and int(self.devices) >= 1),
            "trainer.devices",
            self.devices,
            "must be all or a device count >= 1",
        )
        _check(
            self.task_chunk >= 0,
            "trainer.task_chunk",
            self.task_chunk,
            "must be >= 0 tasks (0 = the whole meta-batch at once)",
        )
        _check_choice("trainer.distributed", self.distributed, ("auto", "on", "off"))
        _check_choice("trainer.precision", self.precision, ("fp32", "bf16"))
        if self.coordinator:
            _check(
                self.num_processes >= 2,
                "trainer.num_processes",
                self.num_processes,
                "must be >= 2 with trainer.coordinator",
            )
            _check(
                0 <= self.process_id < self.num_processes,
                "trainer.process_id",
                self.process_id,
                f"must be in 0 .. trainer.num_processes - 1 = {self.num_processes - 1}",
            )
        _check(
            self.val_every >= 0 and self.val_every % self.log_every == 0,
            "trainer.val_every",
            self.val_every,
            f"must be 0 or a multiple of trainer.log_every={self.log_every}",
        )
        # Checkpoints follow logging steps: no per-step metrics are then waiting to be logged.
        _check(
            self.checkpoint_every >= 0 and self.checkpoint_every % self.log_every == 0,
            "trainer.checkpoint_every",
            self.checkpoint_every,
            f"must be 0 or a multiple of trainer.log_every={self.log_every}",
        )
        _check(
            self.keep_checkpoints >= 1,
            "trainer.keep_checkpoints",
            self.keep_checkpoints,
            "must be >= 1",
        )
        _check_choice("trainer.resume", self.resume, ("auto", "never", "force"))
        _check_choice("trainer.nan_policy", self.nan_policy, ("stop", "skip"))
