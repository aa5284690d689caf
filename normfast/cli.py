"""The `normfast` command: parses arguments and dispatches to library modules.

User mistakes raise NormfastError and end here as one line on stderr with exit status 1.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
from pathlib import Path

import click

from normfast.atomic import refuse_non_regular
from normfast.errors import NormfastError
from normfast.validate import WORKERS, WORKERS_HELP, nonempty_list as _nonempty
from normfast.options import AMP, Names, _all, train_options as _train_options
from normfast.sweep.options import sweep_options


def _terminate(signum, frame):
    raise KeyboardInterrupt


class Group(click.Group):
    """Turns NormfastError and click's own usage errors into `error: ...` and exit 1, never a
    traceback or a usage block."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as e:          # bad option value, missing option, unknown command
            where = e.ctx.command_path if e.ctx else (prog_name or "normfast")
            click.echo(f"error: {where}: {_one_line(e.format_message()).rstrip('.')} "
                       f"(see `{where} --help`)", err=True)
            sys.exit(1)
        except click.ClickException as e:
            click.echo(f"error: {_one_line(e.format_message())}", err=True)
            sys.exit(1)
        except click.exceptions.Abort:
            click.echo("interrupted", err=True)
            sys.exit(130)
        # --help and --version end in click's Exit, returned here as its exit code
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx):
        # SIGTERM (a job scheduler, `timeout`) unwinds like Ctrl-C, so temporary outputs are removed
        signal.signal(signal.SIGTERM, _terminate)
        try:
            return super().invoke(ctx)
        except NormfastError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="normfast")
def main():
    """normfast: which input normalization to use when fine-tuning an ImageNet CNN, fast.

    \b
    Typical flow:
      normfast convert cifar10 --src data/cifar-10-batches-py --out data/cifar10
      normfast stats data/cifar10
      normfast train --data data/cifar10 --model resnet18 --norm finetune
      normfast sweep configs/grid.yaml
      normfast report runs --out report
    """


def _one_line(message: str) -> str:
    return "; ".join(line.strip() for line in message.splitlines() if line.strip())


def _check_output_file(option: str, path: Path | None) -> None:
    """Fail before a long job when its output file could not be written afterwards."""
    if path is None:
        return
    path = Path(path)
    refuse_non_regular(path, f"{option} {path}")    # a directory, device or FIFO: the rename would replace it
    folder = path.parent
    if not folder.is_dir():
        raise NormfastError(f"{option} {path}: folder {folder} does not exist")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise NormfastError(f"{option} {path}: cannot write into {folder} ({e.strerror or e})") from None


def _check_output_dir(option: str, path: Path) -> None:
    for p in [path, *path.parents]:
        if p.exists():
            if not p.is_dir():
                raise NormfastError(f"{option} {path}: {p} is a file, not a directory")
            break


def _list(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


@main.command()
@click.argument("source", required=False)
@click.option("--src", type=click.Path(path_type=Path), help="Folder holding the source files.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output directory.")
@click.option("--format", "fmt", default="ffcv,dali", show_default=True, help="Formats to write: ffcv, dali or both.")
@click.option("--encoding", default="raw", show_default=True,
              help="Image storage: raw (lossless, no decode), png (lossless, DALI only; FFCV stores raw) "
              "or jpg.")
@click.option("--quality", default=90, show_default=True, help="JPEG quality with --encoding jpg.")
@click.option("--limit", type=int, help="Convert only the first N images per split (quick runs). "
              "For synthetic: N train, N/5 test.")
@click.option("--size", type=int, help="Resize: shorter side to N, then centre crop NxN (for images of mixed sizes).")
@click.option("--download", is_flag=True, help="Fetch the source into --src first "
              "(cifar10, cifar100, svhn, tiny-imagenet-200).")
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.option("--clean", is_flag=True, help="Convert nothing: restore or remove what a killed conversion "
              "to --out left.")
def convert(source, src, out, fmt, encoding, quality, limit, size, download, force, quiet, clean):
    """Convert a dataset SOURCE once into FFCV and DALI formats with a manifest.

    SOURCE is one of: cifar10, cifar100, svhn, tiny-imagenet-200, imagefolder, synthetic.
    Writes OUT/manifest.json, OUT/ffcv/{train,test}.beton and OUT/dali/*.tar with index
    files, atomically: on any error nothing is left behind.
    """
    from converters.convert import ConvertConfig, convert as run
    if clean:
        from converters.output import clean as run_clean
        click.echo(f"{out}: {run_clean(out)} leftover(s) of killed conversions handled")
        return
    if source is None:
        raise NormfastError("convert: missing SOURCE (one of cifar10, cifar100, svhn, tiny-imagenet-200, "
                            "imagefolder, synthetic)")
    m = run(ConvertConfig(source=source, src=src, out=out, formats=_list(fmt), encoding=encoding,
                          quality=quality, limit=limit, size=size, force=force, download=download,
                          quiet=quiet))
    s = m["splits"]
    click.echo(f"wrote {out}: {m['name']}, {s['train']['count']} train + {s['test']['count']} test images "
               f"{m['image_shape'][0]}x{m['image_shape'][1]}, formats {', '.join(m['formats'])}, "
               f"encoding {m['encoding']} ({m['seconds']:.1f} s)")


@main.command()
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--name", default=None, help="Compare with this dataset's published statistics (e.g. cifar10 "
              "for an ImageFolder conversion of it); default: the manifest's name or source.")
def stats(data_dir, as_json, name):
    """Print the seed's Table 1 for a converted dataset: computed vs published mean/std,
    and the train split's mean/std after each normalization setting."""
    from normfast.stats import format_stats, table1
    t = table1(data_dir, name)
    click.echo(json.dumps(t, indent=2) if as_json else format_stats(t))


@main.command()
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--samples", default=512, show_default=True, help="Samples per split read back through FFCV and DALI.")
def verify(data_dir, samples):
    """Check every file against the manifest (size, sha256, counts) and read samples back
    through FFCV and DALI."""
    from normfast.verify import verify as run
    for line in run(data_dir, samples):
        click.echo(line)
    click.echo("ok")


@main.command()
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="YAML file of train options.")
@_train_options
def train(config_file, **options):
    """Fine-tune one backbone on one converted dataset with one normalization setting, or with
    several (`--norm a,b,...` or `all`) trained together as one fused model.

    Defaults are the seed's (configs/defaults.yaml): Adam lr 0.001, cosine schedule, batch
    256, 100 epochs, seed 223. Writes RUNS/<dataset>/<model>-<norm>-<backend>/ with
    config.yaml, metrics.jsonl (one line per epoch, with images/s and data-wait), best_results.json,
    best.pt and last.pt. Under `torchrun --nproc_per_node=N -m normfast train ...` it trains with DDP.
    """
    from normfast.config import resolve_train_config
    from normfast.manifest import load_manifest
    from normfast.train import train as run
    if "," in (options.get("norm") or ""):       # several settings: one fused run
        from normfast.fused_train import train_command
        return train_command(config_file, options, click.echo)
    cfg = resolve_train_config(config_file, **options)
    best = run(cfg)
    if not cfg.quiet:
        click.echo(f"best test accuracy {best['best_acc']:.4f} at epoch {best['best_epoch'] + 1} of {cfg.epochs}; "
                   f"run directory {cfg.run_dir(load_manifest(cfg.data).name)}")


@main.command()
@click.argument("grid", type=click.Path(path_type=Path))
@sweep_options
def sweep(grid, **options):
    """Run the study's grid from GRID (e.g. configs/grid.yaml) as a work queue: skip finished
    runs, resume interrupted ones, with any number of workers here (--workers), on other machines
    sharing the runs directory, or on Slurm (--executor slurm); end with a summary table. Exits 1
    if a run failed or was left not run."""
    from normfast.sweep.options import run
    run(grid, options, echo=click.echo)


@main.group()
def bench():
    """Throughput benchmarks: loaders alone, or training against the model-bound ceiling."""


def _write_bench_json(path, records):
    from normfast.bench import machine
    from normfast.atomic import write_json
    if path:
        write_json(Path(path), {"machine": machine(), "records": records})
        click.echo(f"wrote {path}")


@bench.command("loaders")
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Converted dataset directory.")
@click.option("--backend", default=_all("normfast.loaders:backends"), show_default="all", callback=_nonempty,
              help="Comma-separated backends.")
@click.option("--norm", default=_all("normfast.normalization:settings"), show_default="all", callback=_nonempty,
              help="Comma-separated normalization settings.")
@click.option("--device", default=None, help="cpu | cuda (default: cuda when present).")
@click.option("--dtype", default="float32", show_default=True, help="float32 | float16 | bfloat16.")
@click.option("--batch-size", default=256, show_default=True)
@click.option("--epochs", default=1, show_default=True, help="Timed epochs after one warm-up epoch.")
@click.option("--max-batches", type=int,
              help="Cap batches per epoch (quick runs; an epoch broken off costs a chunked loader its chunks "
                   "in flight, so compare chunk sizes on whole epochs).")
@click.option("--num-workers", default=2, show_default=True, type=WORKERS, help=f"Per loader ({WORKERS_HELP}).")
@click.option("--order", default="shuffled", show_default=True, callback=_nonempty,
              help="shuffled (the training order), stored (no shuffle), or both: shuffled,stored.")
@click.option("--chunk-batches", "chunks", default="auto", show_default=True, callback=_nonempty,
              help="dali/ffcv: training batches prepared at once, comma-separated to compare "
                   "(auto: about 8 MB of input on CUDA, 1 on the CPU).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write the records as JSON.")
def bench_loaders_cmd(data, backend, norm, device, dtype, batch_size, epochs, max_batches, num_workers, order,
                      chunks, json_path):
    """Images/s of augmented, normalized batches on the device, per backend and setting,
    with CPU seconds per 1,000 images. Each loader is closed before the next is built."""
    from normfast.bench import bench_loaders, format_loader_table
    _check_output_file("--json", json_path)
    records = bench_loaders(data, backend, norm, device, dtype, batch_size, epochs, max_batches,
                            num_workers, order, chunks, echo=click.echo)
    click.echo(format_loader_table(records))
    _write_bench_json(json_path, records)


@bench.command("train")
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Converted dataset directory.")
@click.option("--backend", default=_all("normfast.loaders:backends"), show_default="all", callback=_nonempty,
              help="Comma-separated backends.")
@click.option("--model", default="resnet18", show_default=True, callback=_nonempty, help="Comma-separated models.")
@click.option("--compile", "compiles", default="none", show_default=True, callback=_nonempty,
              help="Comma-separated compile modes (see `normfast train --help`).")
@click.option("--norm", default="finetune", show_default=True,
              help="A setting, or a comma list / all: the fused step against the settings one after another.")
@click.option("--device", default=None, help="cpu | cuda (default: cuda when present).")
@click.option("--amp", default="auto", show_default=True, type=Names(AMP), help="Mixed precision.")
@click.option("--batch-size", default=256, show_default=True)
@click.option("--steps", default=20, show_default=True, help="Timed steps per repeat.")
@click.option("--warmup", default=5, show_default=True, help="Untimed steps first.")
@click.option("--repeats", default=3, show_default=True)
@click.option("--num-workers", default=2, show_default=True, type=WORKERS, help=f"Per loader ({WORKERS_HELP}).")
@click.option("--chunk-batches", "chunks", default="auto", show_default=True, callback=_nonempty,
              help="dali/ffcv: training batches prepared at once, comma-separated to compare "
                   "(auto: about 8 MB of input on CUDA, 1 on the CPU).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write the records as JSON.")
def bench_train_cmd(data, backend, model, compiles, norm, device, amp, batch_size, steps, warmup, repeats,
                    num_workers, chunks, json_path):
    """Training images/s per backend x model x compile mode beside the model-bound ceiling
    (the same step on a batch already on the device); prints a markdown table."""
    from normfast.bench import bench_train, format_train_table
    _check_output_file("--json", json_path)
    records = bench_train(data, backend, model, compiles, norm, device, amp, batch_size, steps, warmup,
                          repeats, num_workers, chunks, echo=click.echo)
    click.echo(format_train_table(records))
    _write_bench_json(json_path, records)


@main.command()
@click.option("--out", default="demo-out", show_default=True, type=click.Path(path_type=Path),
              help="Where the data, runs, benchmarks and report go.")
@click.option("--device", default=None, help="cpu | cuda (default: cuda when present).")
def demo(out, device):
    """Run the main job on the built-in synthetic dataset: convert, stats, a short training
    run per normalization setting, throughput benchmarks, and the report (configs/demo.yaml).
    Finished steps are reused, so running it again is fast."""
    from normfast.demo import run_demo
    run_demo(out, device, echo=click.echo)


@main.command()
@click.argument("runs_dir", type=click.Path(path_type=Path))
@click.option("--out", default="report", show_default=True, type=click.Path(path_type=Path),
              help="Directory for the report (created if missing; files in it are replaced).")
def report(runs_dir, out):
    """Tables 1-3, Figure 1 and throughput from RUNS_DIR (the seed's study beside ours).

    Reads RUNS_DIR/<dataset>/<run>/ as `normfast train` writes them and writes OUT/index.md,
    table1.md, table2.md, table3.md, figure1.png, throughput.md, results.csv and summary.csv.
    Several seeds of one configuration are shown as mean ± std (n); each backend and each kind
    of initial weights gets its own tables.
    """
    from normfast.report import make_report
    _check_output_dir("--out", out)
    paths = make_report(runs_dir, out, echo=lambda note: click.echo(note, err=True))
    click.echo(f"wrote {len(paths)} files to {out}: {', '.join(p.name for p in paths)}")
    click.echo(f"start at {out / 'index.md'}")


if __name__ == "__main__":
    main()
