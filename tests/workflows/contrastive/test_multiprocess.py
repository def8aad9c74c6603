"""The pretraining pipeline as several processes: two CPU processes (gloo) started by
``pipelines/torchrun_pretrain.sh``, and the SLURM recipe's rank wiring under a stand-in ``srun``.

Two processes with half the batch each must train the model one process trains on the whole
batch: the same studies in every step, the loss of that batch gathered over both processes,
BatchNorm over the global batch (medmm.training.global_batchnorm: PyTorch's SyncBatchNorm runs
on GPUs only), and DDP's averaged gradients. So every step's loss and the trained weights of
the 2-process run equal the 1-process run's, to float32 rounding (and to Adam's amplification of
it where a gradient is nothing but rounding: see the test).
Dropout and augmentation are off in both runs: dropout masks come from each process's own
random stream, and the augmentations' pixel and ECG noise is drawn per batch (seeded by the
batch's first study), so a process's half of a batch gets other noise than the whole batch."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess

import lightning as L
import pytest
import torch
from mlflow.tracking import MlflowClient

from medmm.config.core import ConfigError, build_config
from medmm.data.datamodule import PretrainDataModule, StudyCollate
from medmm.training.epoch_seeding import epoch_seed
from medmm.training.lightning_run import join_launched_processes
from medmm.workflows.contrastive.config import PretrainConfig, preflight
from medmm.workflows.contrastive.module import ContrastivePretrainTask
from medmm.workflows.contrastive.run import run
from medmm.workflows.preflight import PAIRED_TRAINING_MINIMUM
from tests.conftest import REPO, TINY_CONFIG, tiny_overrides
from tests.live_mlflow import free_port

GLOBAL_BATCH = 16
RUN = ("trainer.max_epochs=1", "trainer.precision=32-true", "eval.memory_retrieval=false",
       "model.text.dropout=0.0", "model.text.lora_dropout=0.0", "data.augment=false")
# a stand-in for srun: records its arguments and environment, then starts SLURM_NTASKS local tasks
# with the variables SLURM gives each task, each running PROBE with the command's arguments
SRUN = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$RECORD/argv"
env > "$RECORD/env"
while [[ $1 == -* ]]; do shift; done  # srun's own options
python=$1; shift
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_NODEID=0 "$python" "$PROBE" "$@" > "$RECORD/task$i.json" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
"""
# each task: the pretrain command's config from its arguments, then the process group that its
# run would join (medmm.training.lightning_run.join_launched_processes), then every task's place
PROBE = """import importlib, json, sys
import torch.distributed as dist
from medmm.config.core import ConfigError, build_config
from medmm.training.lightning_run import join_launched_processes

assert sys.argv[1] == "-m"
command = importlib.import_module(sys.argv[2]).COMMAND
args = command.parse_args(sys.argv[3:])
cfg = build_config(command.schema_for(args.config, args.overrides), args.config, args.overrides)
processes = join_launched_processes(cfg.trainer)
places = [None] * dist.get_world_size()
dist.all_gather_object(places, [processes.global_rank, processes.local_rank, processes.node_rank])
print(json.dumps({"places": places, "world_size": processes.world_size, "backend": dist.get_backend(),
                  "environment": type(processes.strategy.cluster_environment).__name__,
                  "trainer": cfg.trainer.model_dump()}))
"""


def launch(command: list[str], env: dict, timeout: int) -> subprocess.CompletedProcess:
    """``command`` in a process group of its own, killed as a group if it outlives ``timeout``
    or leaves processes behind."""
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def first_step(cfg: PretrainConfig) -> tuple[float, set[str]]:
    """The first training step of the runs' (identical) initial model on the first global batch
    (the single-process order of epoch 0), computed here independently of the runs: its loss,
    and the parameters whose gradient is rounding noise (non-zero, and 1e-4 or less where the
    others' are 1e-2 or more): a bias just before a normalisation, which cancels it."""
    cfg = preflight(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # as the run seeds before building the model
    dm = PretrainDataModule(cfg.data, max_tokens=cfg.model.text.max_tokens, seed=cfg.seed,
                            tokenizer_path=cfg.model.text.model_path, min_studies=PAIRED_TRAINING_MINIMUM)
    dm.setup()
    task = ContrastivePretrainTask(cfg).train()
    train = dm.dataset("train")
    collate = StudyCollate(train, augment=cfg.data.augment, seed=cfg.seed)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(epoch_seed(cfg.seed, 0))).tolist()
    whole = collate([train[i] for i in order[:GLOBAL_BATCH]])
    loss = task._loss(task.model(whole, task.modalities), whole, "train")[0]
    loss.backward()
    noise = {name for name, p in task.named_parameters() if p.grad is not None and 0 < p.grad.abs().max() <= 1e-4}
    return float(loss), noise


def only_run(tracking_uri: str):
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return client, runs[0]


def first_losses(client, run) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run.info.run_id, "train/loss_step"),
                                    key=lambda m: m.step)]


@pytest.mark.slow
def test_two_torchrun_processes_make_one_run_of_the_global_batch(tiny_cohort, tmp_path):
    two = tiny_overrides(tiny_cohort, tmp_path / "two", *RUN, f"data.batch_size={GLOBAL_BATCH // 2}")
    # the single process reads the decoded cohort that the first of the two wrote
    one = tiny_overrides(tiny_cohort, tmp_path / "one", *RUN, f"data.batch_size={GLOBAL_BATCH}",
                         f"data.cache_dir={tmp_path / 'two' / 'cache'}")
    env = {**os.environ, "ACCELERATOR": "cpu", "NPROC": "2", "MASTER_PORT": str(free_port()),
           "PYTHONPATH": str(REPO)}
    out = launch(["pipelines/torchrun_pretrain.sh", str(TINY_CONFIG), *two], env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]

    # one MLflow run, finished, reported once
    client, two_run = only_run(f"sqlite:///{tmp_path / 'two' / 'mlflow.db'}")
    assert two_run.info.status == "FINISHED"
    assert out.stdout.count("MLflow run id:") == 1 and two_run.info.run_id in out.stdout
    # no line twice (torchrun's own banner, once per launch, aside)
    lines = [line for line in out.stderr.splitlines() if line.strip() and "torch/distributed/run.py" not in line]
    assert len(lines) == len(set(lines)), out.stderr
    # checkpoints of process 0 only: one run folder, its two checkpoints, no partial write
    runs_dir = tmp_path / "two" / "runs"
    assert sorted(p.name for p in runs_dir.iterdir()) == sorted([two_run.info.run_id, "run_state.json"])
    assert json.loads((runs_dir / "run_state.json").read_text())["run_id"] == two_run.info.run_id
    ckpts = runs_dir / two_run.info.run_id / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch000.ckpt", "last.ckpt"]
    # the decoded cohort cached once, without a partial write
    assert [p.suffixes for p in (tmp_path / "two" / "cache").iterdir()] == [[".npz"]]

    one_cfg = build_config(PretrainConfig, TINY_CONFIG, one)
    one_outcome = run(one_cfg)
    client_one, one_run = only_run(one_outcome.tracking_uri)
    whole, noise = first_step(one_cfg)

    # the same studies and steps: the split sizes, 43 training studies in 2 steps of 16
    metrics_two, metrics_one = two_run.data.metrics, one_run.data.metrics
    for split in ("train", "val", "test"):
        assert metrics_two[f"data.n_{split}_studies"] == metrics_one[f"data.n_{split}_studies"]
    assert metrics_two["data.train_batch_size"] * 2 == metrics_one["data.train_batch_size"] == GLOBAL_BATCH
    losses_two, losses_one = first_losses(client, two_run), first_losses(client_one, one_run)
    steps = len(losses_one)
    assert len(losses_two) == steps == metrics_one["data.n_train_studies"] // GLOBAL_BATCH
    # the first step's loss, before any update, is the global batch's to float32 rounding
    assert losses_one[0] == pytest.approx(whole, abs=1e-5)
    assert losses_two[0] == pytest.approx(losses_one[0], abs=1e-5)
    # later steps follow weights that Adam moved by up to the learning rate where the gradient is
    # rounding noise (below): they agree as closely as the validation losses do (a run measured
    # 1.4e-4 apart at the second step)
    assert losses_two[1:] == pytest.approx(losses_one[1:], abs=5e-3)

    # the trained weights agree too. Where the gradient is rounding noise (the ECG tokenizer's
    # convolution biases before BatchNorm, the ECG encoder's last LayerNorm bias before a
    # BatchNorm-ed projection), Adam divides the noise by its own size and moves the weight by
    # up to about the learning rate either way, in any two runs that round differently; the
    # BatchNorm running means those biases shift, and the validation losses computed with them,
    # differ by as much
    two_weights = torch.load(ckpts / "last.ckpt", weights_only=True)["state_dict"]
    one_ckpts = next((tmp_path / "one" / "runs").glob("*/checkpoints"))
    one_weights = torch.load(one_ckpts / "last.ckpt", weights_only=True)["state_dict"]
    assert two_weights.keys() == one_weights.keys()
    assert noise == {"model.encoders.ecg.tokenizer.0.bias", "model.encoders.ecg.tokenizer.3.bias",
                     "model.encoders.ecg.norm.bias"}
    # Elsewhere Adam's division amplifies rounding where a single gradient element is close to
    # zero: such an element can land up to about the learning rate apart (one of 22.8 million
    # measured 1.7e-3 = 0.86 lr apart), no further than Adam can move it in `steps` steps; the bulk
    # agrees to float32 rounding (99.9 % of the elements within 7.2e-7), where a process that
    # missed the gradient all-reduce would step most elements by its own half-batch gradient
    lr = one_cfg.optim.lr
    noisy = {n.removeprefix("model.") for n in noise}
    ordinary = []
    for key, value in one_weights.items():
        gaps = (two_weights[key].double() - value.double()).abs()
        bound = 1e-3 if "running_" in key else 4 * lr * steps
        assert float(gaps.max()) <= bound, (key, float(gaps.max()), bound)
        if key.removeprefix("model.") not in noisy and "running_" not in key and value.is_floating_point():
            ordinary.append(gaps.flatten())
    ordinary = torch.cat(ordinary)
    bulk = float(torch.kthvalue(ordinary, math.ceil(0.999 * len(ordinary))).values)
    assert bulk <= 1e-5, bulk
    for key in ("val/loss", "val/loss_xray-report", "val/loss_xray-ecg", "val/loss_ecg-report"):
        # the ECG <-> report loss reads the ECG encoder, whose noise biases moved its BatchNorm
        # running means: measured up to 2.1e-3 apart; the weights' bulk check above is the one
        # that tells a missed all-reduce
        assert metrics_two[key] == pytest.approx(metrics_one[key], abs=5e-3), key


@pytest.mark.slow
def test_two_torchrun_processes_make_one_ptunifier_run(tiny_cohort, tmp_path):
    """PTUnifier through the same launcher: one run, the first process alone evaluates, logs,
    exports and checkpoints; the decoded cohort cached once."""
    from tests.conftest import PTU_TINY

    two = tiny_overrides(tiny_cohort, tmp_path, "trainer.max_epochs=1", "trainer.precision=32-true",
                         "data.batch_size=8")
    env = {**os.environ, "ACCELERATOR": "cpu", "NPROC": "2", "MASTER_PORT": str(free_port()),
           "PYTHONPATH": str(REPO)}
    out = launch(["pipelines/torchrun_pretrain.sh", str(PTU_TINY), *two], env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    client, ptu_run = only_run(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert ptu_run.info.status == "FINISHED" and out.stdout.count("MLflow run id:") == 1
    for key in ("data.n_test_studies", "test.xray_to_report.R_at_5"):
        history = client.get_metric_history(ptu_run.info.run_id, key)
        assert len(history) == 1, (key, history)  # logged by one process, once
    runs_dir = tmp_path / "runs" / ptu_run.info.run_id
    assert sorted(p.name for p in (runs_dir / "checkpoints").iterdir()) == ["epoch000.ckpt", "last.ckpt"]
    assert [p.suffixes for p in (tmp_path / "cache").iterdir()] == [[".npz"]]


@pytest.mark.slow
def test_the_slurm_recipe_wires_ranks_and_world_size(tiny_cohort, tmp_path):
    record, bin_dir = tmp_path / "record", tmp_path / "bin"
    record.mkdir()
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(SRUN)
    (bin_dir / "srun").chmod(0o755)
    (tmp_path / "probe.py").write_text(PROBE)
    port = free_port()
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "medmm-pretrain", "SLURM_NTASKS": "2",
             "SLURM_NTASKS_PER_NODE": "2", "SLURM_JOB_NUM_NODES": "1", "SLURM_NNODES": "1",
             "SLURM_NODELIST": "localhost", "SLURM_SUBMIT_DIR": str(REPO),
             "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(slurm, ACCELERATOR="cpu", PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", RECORD=str(record),
               PROBE=str(tmp_path / "probe.py"), PYTHONPATH=str(REPO))
    overrides = tiny_overrides(tiny_cohort, tmp_path)
    out = launch(["bash", "pipelines/slurm_pretrain.sbatch", str(TINY_CONFIG), *overrides], env, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]

    argv = (record / "argv").read_text().splitlines()
    assert argv == ["--kill-on-bad-exit=1", ".venv/bin/python", "-m", "medmm.pipelines.pretrain", "--config",
                    str(TINY_CONFIG), "trainer.accelerator=cpu", "trainer.devices=2", "trainer.num_nodes=1",
                    *overrides]
    assert "HF_HUB_OFFLINE=1" in (record / "env").read_text().splitlines()
    tasks = [json.loads((record / f"task{i}.json").read_text()) for i in range(2)]
    for task in tasks:
        # ranks from SLURM_PROCID / SLURM_LOCALID / SLURM_NODEID, one gloo group over both tasks
        assert task["places"] == [[0, 0, 0], [1, 1, 0]]
        assert task["world_size"] == 2 and task["backend"] == "gloo"
        assert task["environment"] == "SLURMEnvironment"
        assert (task["trainer"]["devices"], task["trainer"]["num_nodes"]) == (2, 1)


def test_several_processes_without_a_launcher_are_refused(monkeypatch):
    """Lightning would start the other processes itself, after the first had opened its MLflow run."""
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK", "LOCAL_WORLD_SIZE", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    cfg = build_config(PretrainConfig, TINY_CONFIG, ["trainer.accelerator=cpu", "trainer.devices=2"])
    with pytest.raises(ConfigError, match="torchrun_pretrain.sh"):
        join_launched_processes(cfg.trainer)
    one = build_config(PretrainConfig, TINY_CONFIG, ["trainer.accelerator=cpu", "trainer.devices=1"])
    processes = join_launched_processes(one.trainer)
    assert (processes.global_rank, processes.world_size) == (0, 1)
