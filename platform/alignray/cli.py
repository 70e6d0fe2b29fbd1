"""The `alignray` command."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from alignray import logs
from alignray.config import ConfigError, PipelineConfig, load_config
from alignray.data.conversation import PromptError
from alignray.data.pairs import DatasetError
from alignray.models.registry import KNOWN, ModelError, cache_dir, merge_export, resolve
from alignray.principles import PrincipleError, builtin_names, load_principles
from alignray.rewards.judges import JudgeError
from alignray.sampling.endpoint import EndpointError
from alignray.stages import STAGES, TRAIN_KINDS, StageResult

USER_ERRORS = (ConfigError, PromptError, ModelError, PrincipleError, DatasetError, EndpointError, JudgeError)


def _items(args: argparse.Namespace) -> list[str]:
    """A stage command's `[CONFIG] [KEY=VALUE ...]`, with `--config FILE` put first."""
    if args.config is None:
        return args.items
    if args.items and "=" not in args.items[0]:
        raise ConfigError(f"two config files: --config {args.config} and {args.items[0]}; give one")
    return [args.config, *args.items]


def _load(items: list[str], address: str | None, schema, command: str, log: bool = True):
    """`[CONFIG] [key=value ...]` (the first item is the config file unless it is an override)
    plus --address, validated against `schema`; other libraries' output will go to a log file
    under its output_dir (unless --log-level debug, or `log` is false: nothing is written)."""
    path, overrides = (items[0], items[1:]) if items and "=" not in items[0] else (None, list(items))
    if address:
        overrides.append(f"address={address}")
    cfg = load_config(path, overrides, schema)
    _check_writable(cfg.output_dir)
    uri = cfg.tracking.uri or ""
    if uri.startswith("sqlite:///"):
        _check_writable(Path(uri.removeprefix("sqlite:///")).parent, "tracking.uri")
    if log:
        logs.log_to(cfg.output_dir / "logs", command)
    return cfg


def _check_writable(folder: Path, field: str = "output_dir") -> None:
    """Fail before any work if `folder` cannot be created or written (it is not created here)."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".alignray-check-", dir=existing))
    except OSError as exc:
        raise ConfigError(f"{field}: {folder} cannot be used: {exc.strerror} ({existing}); choose another"
                          f" {field}") from None


def _show(result: StageResult) -> int:
    """Print a stage's summary (its warnings to stderr)."""
    for line in result.summary():
        print(line)
    for line in result.warnings:
        print(f"warning: {line}", file=sys.stderr)
    return 0


def simulate(items: list[str], address: str | None = None) -> int:
    stage = STAGES["simulate"]
    return _show(stage.run(_load(items, address, stage.schema, "simulate")))


def train(kind: str, items: list[str], address: str | None = None) -> int:
    stage = STAGES[kind]
    cfg = _load(items, address, stage.schema, f"train-{kind}")
    from alignray.train.launch import TrainingError

    try:
        result = stage.run(cfg)
    except TrainingError as exc:
        print(f"alignray: {kind} training failed: {exc}", file=sys.stderr)
        return 1
    return _show(result)


def _pipeline(items: list[str], address: str | None, command: str, log: bool = True) -> PipelineConfig:
    """A pipeline config file (named first) with its overrides, as `alignray run` and `sweep` take it."""
    if not items or "=" in items[0]:
        raise ConfigError(f"alignray {command} needs a pipeline config file (first, or as --config FILE; see"
                          " jobs/configs/pipelines/)")
    return _load(items, address, PipelineConfig, command, log)


def run_pipeline(items: list[str], address: str | None = None, dry_run: bool = False) -> int:
    cfg = _pipeline(items, address, "run", log=not dry_run)
    if dry_run:
        from alignray.pipelines.run import preview

        print("\n".join(preview(cfg)))
        return 0
    from alignray.pipelines.run import run
    from alignray.train.launch import TrainingError

    try:
        outcomes = run(cfg)
    except TrainingError as exc:
        print(f"alignray: pipeline {cfg.label} failed: {exc}", file=sys.stderr)
        return 1
    print(f"\npipeline {cfg.label}:")
    for o in outcomes:
        state = "stopped early, resumable" if o.output is None else ("skipped" if o.skipped else "ran")
        print(f"  {o.stage:12s} {state:26s} {o.output or ''}")
    last = outcomes[-1]
    if last.output is not None and last.stage == "evaluate":
        print("\n" + (Path(last.output) / "report.md").read_text())
    return 0


def sweep(items: list[str], address: str | None = None) -> int:
    cfg = _pipeline(items, address, "sweep")
    from alignray.evaluate.summary import report
    from alignray.pipelines.sweep import SweepStopped, run

    try:
        result = run(cfg)
    except SweepStopped as exc:
        print(f"alignray: {exc}", file=sys.stderr)
        return 130
    failed = [t for t in result.trials if t.status != "TERMINATED"]
    for t in failed:
        print(f"trial {t.trial_id} ({t.configuration}, seed {t.overrides.get('seed', '-')}) failed: {t.error}",
              file=sys.stderr)
    from alignray import tracking

    summary = report(result.name, tracking.tracking_uri(cfg.tracking, cfg.output_dir), cfg.output_dir)
    print("\n" + summary.markdown)
    print(f"report:      {summary.folder / 'report.md'}\nMLflow run:  {result.parent_run} (the sweep's parent run)")
    return 1 if failed else 0


def _report(args: argparse.Namespace) -> int:
    from alignray.evaluate.summary import ReportError, report

    uri = args.tracking_uri or f"sqlite:///{(args.output_dir / 'mlflow.db').resolve()}"
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ConfigError(f"no MLflow store at {uri}; give --output-dir or --tracking-uri")
    logs.log_to(args.output_dir / "logs", "report")
    try:
        summary = report(args.name, uri, args.output_dir)
    except ReportError as exc:
        raise ConfigError(str(exc)) from None
    print(summary.markdown)
    print(f"report:      {summary.folder / 'report.md'} (and seeds.png)")
    return 0


def evaluate(items: list[str], address: str | None = None) -> int:
    stage = STAGES["evaluate"]
    return _show(stage.run(_load(items, address, stage.schema, "evaluate")))


def _serve(args: argparse.Namespace) -> int:
    from alignray.serve.deploy import adapt, load, run

    cfg = adapt(load(args.config), policy=args.policy, rewards=args.reward, cpu=args.cpu, host=args.host,
                port=args.port, tracking_uri=args.tracking_uri)
    return run(cfg, args.address, args.write)


def _models(args: argparse.Namespace) -> int:
    if args.models_cmd == "prepare":
        print(resolve(args.name))
    elif args.models_cmd == "merge":
        print(merge_export(args.model, args.output, args.tracking_uri))
    else:
        for name, spec in KNOWN.items():
            ready = "prepared" if (cache_dir() / "models" / name / "config.json").is_file() else "not prepared"
            print(f"{name:24s} {ready:13s} {spec.description}")
    return 0


def _principles(args: argparse.Namespace) -> int:
    for name in [args.name] if args.name else builtin_names():
        ps = load_principles(name)
        parts = {"pairs": ps.pairs, "instructions": ps.instructions, "criteria": ps.criteria, "critiques": ps.critiques,
                 "demonstrations": ps.demonstrations}
        print(f"{ps.name}: {ps.description} ({', '.join(f'{len(v)} {k}' for k, v in parts.items() if v)})")
        if args.name:
            for k, pair in enumerate(ps.pairs):
                print(f"  {k:2d}. ({pair.positive}) / ({pair.negative})")
            if ps.instructions:
                print("labelling instructions (rlaif, rlcd_rescore, rdpo's model judge):")
                for text in ps.instructions:
                    print(f"  - {text}")
            if ps.criteria:
                print("criteria (morlaif), each with its labelling questions:")
                for name, questions in ps.criteria.items():
                    print(f"  {name}: " + " | ".join(questions))
            if ps.critiques:
                print("critique and revision requests (rdpo):")
                for c in ps.critiques:
                    print(f"  - critique: {c.critique}\n    revision: {c.revision}")
            if ps.demonstrations:
                print("demonstrations (rlcd with affix_placement: demonstration), p+ reply / p- reply:")
                for d in ps.demonstrations:
                    print(f"  - {d.request}\n    +: {d.positive}\n    -: {d.negative}")
    return 0


def _config(args: argparse.Namespace) -> int:
    from alignray import configdoc

    if args.kind is None:
        if args.markdown:
            print(configdoc.tables_block())
            return 0
        for kind, (schema, command) in configdoc.KINDS.items():
            print(f"{kind:10s} {schema.__name__:16s} read by {command}")
        print("\nalignray config show KIND prints its fields.")
        return 0
    print(configdoc.markdown(args.kind) if args.markdown else configdoc.text(args.kind))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alignray",
        description="Align language models to written principles without human labels, on Ray.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level", choices=("info", "debug"), default="info",
        help="info (default): alignray's progress and results here, other libraries' output in a log file"
        " under output_dir/logs; debug: everything here")

    def stage(name: str, help: str, description: str, metavar: str = "[CONFIG] [KEY=VALUE]", kinds: tuple[str, ...] = ()):
        parser = sub.add_parser(name, help=help, description=description, parents=[common])
        if kinds:
            parser.add_argument("kind", choices=kinds)
        parser.add_argument("items", nargs="*", metavar=metavar)
        parser.add_argument("--config", metavar="FILE", help="the config file (the same as naming it first)")
        parser.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a new embedded one; auto: the one `ray start` runs on this machine)")
        return parser

    stage("simulate", "simulate preference data (rlcd, rlaif, rlcd_rescore, morlaif, rrhf, rdpo) with vLLM samplers",
          "Simulate a preference dataset. CONFIG is a YAML file (see jobs/configs/); KEY=VALUE items override"
          " its fields, e.g. sampler.temperature=0.7 data.limit=8.")
    stage("train", "train on Ray Train + DeepSpeed: preference model, sft, dpo (rDPO), rrhf, or ppo",
          "Train one model. CONFIG is a YAML file (see jobs/configs/); KEY=VALUE items override it, e.g."
          " dataset=prefs.parquet trainer.zero_stage=3. Running again with the same run_name resumes from"
          " the last checkpoint.", kinds=TRAIN_KINDS)
    run = stage("run", "run a whole pipeline (rlcd, rlcd_rescore, rlaif, context_distill, morlaif, rrhf, rdpo)",
                "Run a pipeline config (see jobs/configs/pipelines/): its stages in order, each fed by the outputs"
                " before it. Stages already done for the same inputs and config are skipped (and say so); an"
                " interrupted training stage resumes. KEY=VALUE items override the config, e.g. data.limit=16"
                " stages.ppo.ppo.iterations=4.", metavar="CONFIG [KEY=VALUE]")
    run.add_argument("--dry-run", action="store_true",
                     help="print each stage's resolved config, whether the store already holds its output (it would be"
                     " skipped) and the Ray resources it reserves; run nothing")
    stage("sweep", "run a pipeline over seeds and settings on Ray Tune; choose on dev, report on test",
          "Run the pipeline config's sweep section (grid: field -> values; random: field -> distribution) as"
          " Ray Tune trials, each a whole pipeline; stages trials share run once. With sweep.select, the"
          " configuration best on dev_data (mean over its seeds) is then evaluated once on the test split."
          " With sweep.arms (methods, each a config over the base), every arm runs at every seed and the report"
          " compares each with sweep.baseline. Running the same command again resumes the sweep. KEY=VALUE items override the config, e.g."
          " 'sweep.grid={seed: [0, 1, 2]}'. Prints the report of `alignray report` at the end.",
          metavar="CONFIG [KEY=VALUE]")
    rep = sub.add_parser(
        "report", parents=[common], help="tables and a plot across seeds for a sweep or an MLflow experiment",
        description="Read a sweep (its name) or an MLflow experiment from the store and write"
        " <output_dir>/reports/<NAME>/report.md and seeds.png: per configuration and split, each seed's"
        " headline metrics (refusal gain, over-refusal change, win rates), their mean, min-max and 95%"
        " interval over seeds, and a verdict (better / worse / inconclusive); for a sweep with arms, each"
        " arm's difference from the baseline arm (95% interval, verdict) and wall time per trial.")
    rep.add_argument("name", metavar="SWEEP_OR_EXPERIMENT")
    rep.add_argument("--output-dir", type=Path, default=Path("alignray-runs"),
                     help="the runs' output_dir: its mlflow.db is read, reports/ written (default: %(default)s)")
    rep.add_argument("--tracking-uri", help="MLflow store to read instead of <output-dir>/mlflow.db")
    stage("evaluate", "win rates of a policy against baselines (AI judge + offline classifiers), with a report",
          "Evaluate a policy on held-out prompts. CONFIG is a YAML file; KEY=VALUE items override it, e.g."
          " policy=models:/alignray-ppo/1 data.skip=64 data.limit=32.")

    serve = sub.add_parser(
        "serve", parents=[common], help="serve the policy (OpenAI-compatible) and reward model with Ray Serve",
        description="Run serving/config.yaml with `serve run`, adapted by the options below (the file itself is"
        " for GPU workers and an in-cluster MLflow). Example on a laptop: alignray serve --cpu --policy"
        " runs/models/ppo --reward runs/models/preference --tracking-uri sqlite:///runs/mlflow.db."
        " The policy answers at http://HOST:PORT/policy/v1, the reward model at /reward/v1/score.")
    serve.add_argument("--config", type=Path, default=Path("serving/config.yaml"), help="Serve config (default: %(default)s)")
    serve.add_argument("--policy", help="policy model: a folder, a known name or a models:/name@alias URI")
    serve.add_argument("--reward", action="append", metavar="MODEL", help="a preference model (repeat for several)")
    serve.add_argument("--cpu", action="store_true", help="CPU-only replicas: one each, one CPU, float32")
    serve.add_argument("--host", help="HTTP host (default: the config's)")
    serve.add_argument("--port", type=int, help="HTTP port (default: the config's)")
    serve.add_argument("--tracking-uri", help="MLflow store that models:/ URIs refer to")
    serve.add_argument("--write", type=Path, metavar="PATH", help="only write the adapted config to PATH")
    serve.add_argument("--address", help="Ray cluster to deploy to (default: RAY_ADDRESS, else a local one)")

    models = sub.add_parser("models", help="list or prepare known models; merge a LoRA adapter")
    msub = models.add_subparsers(dest="models_cmd", required=True)
    msub.add_parser("list", parents=[common], help="known model names and whether they are prepared")
    prep = msub.add_parser(
        "prepare", parents=[common], help="make a model ready: convert a known one, download a Hugging Face one",
        description="Convert a known model into a safetensors folder in alignray's cache, or download a Hugging Face"
        " model (config, tokenizer, safetensors weights) into the Hugging Face cache ($ALIGNRAY_DOWNLOADS/hub when"
        " set), then print its folder. Example: alignray models prepare HuggingFaceTB/SmolLM2-360M-Instruct")
    prep.add_argument("name", help=f"a known model ({', '.join(KNOWN)}) or a Hugging Face id org/name[@revision]")
    merge = msub.add_parser(
        "merge", parents=[common], help="write a LoRA adapter merged into its base as a full model folder",
        description="Merge a LoRA adapter (a run's registered model or checkpoint hf/ folder, trained with"
        " trainer.lora) into the base model it names, and write the full Hugging Face model to OUTPUT. Example:"
        " alignray models merge models:/alignray-dpo/3 --output ./dpo-merged")
    merge.add_argument("model", help="the adapter: a models:/name/version (or @alias) URI or a folder")
    merge.add_argument("--output", type=Path, required=True, help="a new folder for the full model")
    merge.add_argument("--tracking-uri", help="MLflow store of models:/ URIs (default: MLFLOW_TRACKING_URI)")

    from alignray.configdoc import KINDS as CONFIG_KINDS

    config = sub.add_parser("config", help="describe the config files: every field's type, default and meaning")
    csub = config.add_subparsers(dest="config_cmd", required=True)
    show = csub.add_parser(
        "show", parents=[common], help="the fields of one kind of config, or the kinds",
        description="Print every field of a config KIND (dotted path, type, default, description), or, without"
        " KIND, the kinds and the command that reads each. Kinds: " + "; ".join(
            f"{k} ({cmd})" for k, (_, cmd) in CONFIG_KINDS.items()) + ". Example: alignray config show ppo.")
    show.add_argument("kind", nargs="?", choices=list(CONFIG_KINDS), metavar="KIND",
                      help="one of: " + ", ".join(CONFIG_KINDS))
    show.add_argument("--markdown", action="store_true",
                      help="a Markdown table instead (without KIND: the documentation's tables of every kind)")

    princ = sub.add_parser("principles", parents=[common], help="list the built-in principle sets, or show one")
    princ.add_argument("name", nargs="?", help="a built-in set to show in full")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # KEY=VALUE items after an option (`run FILE --dry-run seed=1`) are items too
        if not hasattr(args, "items") or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.items += extra
    logs.setup(args.log_level)
    try:
        if args.command == "simulate":
            return simulate(_items(args), args.address)
        if args.command == "train":
            return train(args.kind, _items(args), args.address)
        if args.command == "run":
            return run_pipeline(_items(args), args.address, args.dry_run)
        if args.command == "evaluate":
            return evaluate(_items(args), args.address)
        if args.command == "sweep":
            return sweep(_items(args), args.address)
        if args.command == "report":
            return _report(args)
        if args.command == "models":
            return _models(args)
        if args.command == "serve":
            return _serve(args)
        if args.command == "config":
            return _config(args)
        return _principles(args)
    except USER_ERRORS as exc:
        print(f"alignray: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
