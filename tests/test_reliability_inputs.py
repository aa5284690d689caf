"""Issue 18's input findings: values that were coerced, sizes that were unbounded, options that
crashed in torch, and messages that said the wrong thing. Each is one `error:` line, exit 1,
and nothing written."""
import json

import pytest
import torch

from converters.convert import ConvertConfig, convert
from fixtures import cli, one_error_line, one_run_grid
from normfast.errors import NormfastError


def train_args(data, runs, *extra):
    """A quick CPU training run's arguments: where a check is missing, it trains (seconds)."""
    return ["train", "--data", data, "--runs", runs, "--device", "cpu", "--pretrained", "none", "-q",
            "--epochs", "1", "--batch-size", "16", "--num-workers", "0", *extra]


# ---------------------------------------------------------------- epoch numbering

def test_train_prints_the_epoch_counted_from_one_and_stores_it_from_zero(tiny, tmp_path):
    code, out = cli("train", "--data", tiny, "--runs", tmp_path, "--device", "cpu", "--pretrained", "none",
                    "--epochs", "2", "--batch-size", "16", "--num-workers", "1")
    assert code == 0, out
    run = tmp_path / "synthetic" / "resnet18-finetune-resident"
    best = json.loads((run / "best_results.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # stored as the seed stores it: best_epoch is the 0-based index of its metrics row
    assert [r["epoch"] for r in rows] == [0, 1] and best["best_epoch"] in (0, 1)
    assert rows[best["best_epoch"]]["test_acc"] == pytest.approx(best["best_acc"])
    # printed as people count: the epoch lines and the summary agree
    assert "epoch 1/2 " in out and "epoch 2/2 " in out
    assert f"at epoch {best['best_epoch'] + 1} of 2;" in out, out


def test_sweep_summary_counts_epochs_from_one():
    from normfast.sweep import format_summary
    row = {"dataset": "d", "model": "m", "norm": "n", "backend": "b", "seed": 223, "status": "ran",
           "best_acc": 0.5, "best_epoch": 1}
    assert "| ran | 0.5000 | 2 |" in format_summary([row])
    assert "| ran | — | — |" in format_summary([{k: v for k, v in row.items() if not k.startswith("best")}])


# ---------------------------------------------------------------- config values are not coerced

@pytest.mark.parametrize("text, message", [
    ("epochs: 1.9", "epochs=1.9: expected an integer"),
    ("batch_size: 64.7", "batch_size=64.7: expected an integer"),
    ("epochs: true", "epochs=True: expected an integer, not a boolean"),
    ("seed: '12abc'", "seed='12abc': expected an integer"),
    ("resume: maybe", "resume='maybe': expected true or false"),
    ("quiet: 2", "quiet=2: expected true or false"),
    ("lr: yes", "lr=True: expected a number, not a boolean"),
    ("run_name: [a, b]", "run_name: expected a single value, got a list"),
    ("model: {a: 1}", "model: expected a single value, got a dict"),
    ("run_name:", "run_name: no value given"),
])
def test_config_file_values_of_the_wrong_type(tiny, tmp_path, text, message):
    config = tmp_path / "c.yaml"
    config.write_text(text + "\n")
    one_error_line(*cli(*train_args(tiny, tmp_path / "runs", "--config", config)), f"{config}: {message}")
    assert not (tmp_path / "runs").exists()


def test_config_values_that_say_what_they_mean_are_taken():
    from normfast.config import merge
    got = merge({}, {"epochs": 2.0, "batch_size": "64", "resume": "yes", "quiet": 0, "lr": "1e-3",
                     "run_name": 2024}, "c.yaml")
    assert got == {"epochs": 2, "batch_size": 64, "resume": True, "quiet": False, "lr": 0.001, "run_name": "2024"}
    assert type(got["epochs"]) is int


@pytest.mark.parametrize("seeds", [[1.7, 1.2], [True], ["x"]])
def test_grid_seeds_must_be_integers(seeds):
    from normfast.sweep import plan
    grid = {"datasets": ["cifar10"], "models": ["resnet18"], "norms": ["finetune"], "backends": ["dali"],
            "seeds": seeds}
    with pytest.raises(NormfastError, match=r"grid: seeds=.*: expected an integer"):
        plan(grid, {}, None, None)


def test_grid_train_section_is_as_strict(tiny, tmp_path):
    grid = one_run_grid(tmp_path / "grid.yaml", tiny, tmp_path / "runs", {"epochs": 1.5})
    code, out = cli("sweep", grid, "--dry-run")
    assert code == 1 and f"failed: {grid}: train: epochs=1.5: expected an integer" in out, out


# ---------------------------------------------------------------- sizes and names

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [*{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}]\n"
    for a, b in zip("abcdefgh", "bcdefghi")) + "run_name: *i\n"     # 9**9 = 387 million strings


@pytest.mark.parametrize("text, message", [
    (BOMB, "expands to more than 100,000 values"),
    ("run_name: &r [*r]\n", "expands to more than 100,000 values"),           # an alias cycle
    ("x: [" * 20000 + "]" * 20000 + "\n", "not valid YAML"),                 # nested past the recursion limit
    ("# padding\n" * 110_000, "larger than 1 MiB"),
])
def test_yaml_that_would_exhaust_memory_is_refused(tiny, tmp_path, text, message):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    one_error_line(*cli(*train_args(tiny, tmp_path / "runs", "--config", config)), f"{config}: {message}")


def test_every_yaml_reader_is_bounded(tmp_path):
    from normfast.configfiles import load_yaml
    from normfast.sweep import sweep
    path = tmp_path / "grid.yaml"
    path.write_text(BOMB.replace("run_name", "models"))
    with pytest.raises(NormfastError, match="expands to more than"):
        sweep(path, {})
    path.write_text("runs: x\nseeds: [1, 2]\n")
    assert load_yaml(path) == {"runs": "x", "seeds": [1, 2]}


@pytest.mark.parametrize("name, message", [
    ("a" * 5000, "5000 characters, at most 100"),
    ("a" * 101, "101 characters, at most 100"),
    ("../escape", "must be one folder name"),
    ("a/b", "must be one folder name"),
    ("..", "must be one folder name"),
    (".hidden", "must be one folder name"),
    ("my run", "must be one folder name"),
    ("nul\x00byte", "must be one folder name"),
])
def test_run_name_is_one_short_safe_path_component(tiny, tmp_path, name, message):
    one_error_line(*cli(*train_args(tiny, tmp_path / "runs", "--run-name", name)), "--run-name ", message)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "escape").exists()


def test_run_names_normfast_makes_are_accepted(tiny, tmp_path):
    from normfast.validate import check_run_name
    for name in ("resnet18-finetune-dali-s224", "a" * 100, "run_2.1+fp16@v2,x=1"):
        check_run_name(name)


@pytest.mark.parametrize("seed", [2 ** 64, 2 ** 32, -1])
def test_seed_out_of_range(tiny, tmp_path, seed):
    one_error_line(*cli(*train_args(tiny, tmp_path / "runs", "--seed", seed)), f"--seed {seed}: must be ")
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- workers, precision



@pytest.mark.parametrize("verb", ["loaders", "train"])
def test_bench_negative_workers(tiny, no_bench, verb):
    one_error_line(*cli("bench", verb, "--data", tiny, "--num-workers", "-1"),
                   "Invalid value for '--num-workers': -1 is not in the range x>=0")


def test_train_negative_workers(tiny, tmp_path):
    one_error_line(*cli(*train_args(tiny, tmp_path / "runs", "--num-workers", "-1")), "--num-workers")


def test_torch_backend_starts_at_most_one_worker_per_core(tiny, monkeypatch):
    import normfast.loaders.torch_backend as tb
    import normfast.validate
    from normfast.loaders import build_loader
    started = []
    real = tb.DataLoader

    def recording(*a, **k):
        started.append(k["num_workers"])
        return real(*a, **(k | {"num_workers": 0, "prefetch_factor": None}))
    monkeypatch.setattr(tb, "DataLoader", recording)
    monkeypatch.setattr(normfast.validate.os, "sched_getaffinity", lambda pid: {0, 1, 2})
    with build_loader(tiny, "test", "torch", 8, "finetune", augment=False, device="cpu", num_workers=1000) as loader:
        next(iter(loader))
    assert started == [3]


@pytest.mark.parametrize("verb", ["train", "loaders"])
def test_help_says_the_worker_cap(verb):
    code, out = cli(*(["train"] if verb == "train" else ["bench", verb]), "--help")
    assert code == 0 and "at most one per usable CPU core" in " ".join(out.split()), out


def test_fp16_on_the_cpu_is_refused(tiny, tmp_path):
    one_error_line(*cli(*train_args(tiny, tmp_path / "runs", "--amp", "fp16")),
                   "--amp fp16 on the CPU: slower than fp32 there")
    assert not (tmp_path / "runs").exists()
    one_error_line(*cli("bench", "train", "--data", tiny, "--device", "cpu", "--amp", "float16", "--backend",
                        "resident", "--batch-size", "16", "--steps", "1", "--warmup", "0", "--repeats", "1"),
                   "--amp fp16 on the CPU")


def test_fp16_resolves_on_cuda_and_auto_stays_fp32_on_the_cpu():
    from normfast.precision import resolve_amp
    assert resolve_amp("auto", torch.device("cpu")) == "off"
    assert resolve_amp("bf16", torch.device("cpu")) == "bf16"
    assert resolve_amp("fp16", torch.device("cuda", 0)) == "fp16"


# ---------------------------------------------------------------- one-sample batches, empty lists

def test_bench_train_batch_size_one(tiny):
    one_error_line(*cli("bench", "train", "--data", tiny, "--device", "cpu", "--backend", "resident",
                        "--batch-size", "1", "--steps", "1", "--warmup", "0", "--repeats", "1"),
                   "a training batch of 1 sample: BatchNorm cannot train on one sample of 32x32 px; "
                   "use a --batch-size of at least 2")


@pytest.fixture(scope="module")
def one_sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "synthetic"
    convert(ConvertConfig("synthetic", out, limit=1, quiet=True, formats=("dali",)))
    return out


def test_a_one_sample_split_does_not_advise_a_batch_size_it_already_has(one_sample, tmp_path):
    code, out = cli(*train_args(one_sample, tmp_path / "runs", "--batch-size", "64"))
    one_error_line(code, out, "the training split has one sample, so no --batch-size helps (it is 64)")
    assert "use a --batch-size of at least 2" not in out


@pytest.mark.parametrize("args", [
    ["loaders", "--backend", ","], ["loaders", "--backend", " , "], ["loaders", "--norm", ","],
    ["loaders", "--order", ","], ["loaders", "--chunk-batches", ","],
    ["train", "--backend", ","], ["train", "--model", ","], ["train", "--compile", ","],
    ["train", "--chunk-batches", ""],
])
def test_bench_empty_comma_lists(tiny, no_bench, args):
    option = args[1]
    one_error_line(*cli("bench", args[0], "--data", tiny, *args[1:]),
                   f"Invalid value for '{option}': names nothing")
