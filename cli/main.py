"""The `llmtrain` command line: one entry point for users, pods and the operator.

    llmtrain validate job.yaml          # every problem, one line each, non-zero exit
    llmtrain crd [--check]              # regenerate (or verify) crds/ and docs/api.md

Trainer commands import the trainer lazily inside their functions, so the operator
image (no torch) can run every other command.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.text import Text

from llmtrain.operator import api

if TYPE_CHECKING:
    from llmtrain.operator.layout import JobDefaults

app = typer.Typer(
    name="llmtrain",
    help="Train LLMs on Kubernetes, or on one machine: pretrain, SFT, reward, DPO, PPO, GRPO.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        try:
            out.print(f"llmtrain {version('llmtrain')}")
        except PackageNotFoundError:  # pragma: no cover - running from an unpacked tree
            out.print("llmtrain (not installed)")
        raise typer.Exit()


@app.callback()
def _root(
    _: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Train LLMs on Kubernetes, or on one machine."""


@dataclass
class Loaded:
    label: str
    job: api.LLMTrainingJob | None
    problems: list[str]


class _StrictLoader(yaml.SafeLoader):
    """A key given twice is an error, not "the last wins" (as kubectl would, silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"key {key!r} appears twice (first at line {seen[key].line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _StrictLoader.construct_mapping
)


def _kind_problem(doc: dict[str, Any]) -> str | None:
    """A document meant as a job but with the wrong kind; None for other objects (a Secret
    or a PVC next to the job) and for jobs."""
    kind, version = doc.get("kind"), doc.get("apiVersion")
    if kind == api.KIND:
        return None
    ours = isinstance(version, str) and version.split("/")[0] == api.GROUP
    looks = (
        isinstance(kind, str)
        and difflib.SequenceMatcher(None, kind.lower(), api.KIND.lower()).ratio() > 0.75
    )
    if ours or looks or not kind:
        return f"kind: must be {api.KIND}, not {kind!r}"
    return None


def load_jobs(path: Path) -> list[Loaded]:
    """Every LLMTrainingJob document in a (multi-document) YAML file, parsed or with problems.

    Documents of other kinds (a Secret next to the job, say) are skipped; one whose kind is a
    misspelt LLMTrainingJob, or another kind of our API group, is a problem.
    """
    try:
        text = path.read_text()
    except OSError as e:
        return [Loaded(str(path), None, [f"cannot read: {e.strerror}"])]
    try:
        docs = [d for d in yaml.load_all(text, Loader=_StrictLoader) if d is not None]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        return [Loaded(f"{path}{where}", None, [f"invalid YAML: {getattr(e, 'problem', e)}"])]
    results = []
    for i, doc in enumerate(docs):
        label = f"{path}" if len(docs) == 1 else f"{path}#{i + 1}"
        if isinstance(doc, dict) and doc.get("kind") != api.KIND:
            problem = _kind_problem(doc)
            if problem:
                results.append(Loaded(label, None, [problem]))
            continue
        try:
            results.append(Loaded(label, api.parse_job(doc), []))
        except api.SpecError as e:
            results.append(Loaded(label, None, [str(p) for p in e.problems]))
    if not results:
        kinds = sorted({str(d.get("kind")) for d in docs if isinstance(d, dict)})
        found = f" (found {', '.join(kinds)})" if kinds else ""
        results.append(Loaded(str(path), None, [f"no {api.KIND} document found{found}"]))
    return results


def load_one(path: Path) -> api.LLMTrainingJob:
    """The single job in `path`, or print its problems and exit 1."""
    loaded = load_jobs(path)
    if len(loaded) != 1:
        _fail([f"{path}: expected one {api.KIND}, found {len(loaded)}"])
    if loaded[0].job is None:
        _fail([f"{loaded[0].label}: {p}" for p in loaded[0].problems])
    assert loaded[0].job is not None
    return loaded[0].job


def _fail(lines: list[str]) -> None:
    for line in lines:
        err.print(Text("error ", style="red") + Text(line))
    raise typer.Exit(1)


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="Job manifests (multi-document YAML).")],
) -> None:
    """Check job manifests and print every problem with its field path."""
    problems: list[str] = []
    count = 0
    for path in files:
        for item in load_jobs(path):
            problems += [f"{item.label}: {p}" for p in item.problems]
            count += item.job is not None
    if problems:
        _fail(problems + [f"{len(problems)} problem(s) found"])
    out.print(f"{count} job(s) valid")


@app.command()
def crd(
    check: Annotated[
        bool, typer.Option("--check", help="Fail if the committed files differ.")
    ] = False,
    root: Annotated[Path, typer.Option(help="Project root to write into.")] = Path("."),
    stdout: Annotated[bool, typer.Option("--stdout", help="Print the CRD instead.")] = False,
) -> None:
    """Generate crds/llmtrainingjobs.yaml (and the chart's copy) and docs/api.md."""
    from llmtrain.operator import crd as gen

    if stdout:
        out.print(gen.crd_yaml(), end="", markup=False)
        return
    files = generated_files(root)
    stale = [p for p, text in files.items() if not p.exists() or p.read_text() != text]
    if check:
        if stale:
            _fail([f"{p}: out of date; run `llmtrain crd`" for p in stale])
        out.print("generated files are up to date")
        return
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(files[path])
        out.print(f"wrote {path}")


@app.command()
def run(
    job_file: Annotated[Path, typer.Argument(help="LLMTrainingJob manifest.")],
    workdir: Annotated[
        Path, typer.Option(help="Local storage: checkpoints, models, logs, report.")
    ] = Path("runs"),
    workers: Annotated[int, typer.Option(min=1, help="Ray Train workers per stage.")] = 1,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve the driver's Prometheus metrics on this port.")
    ] = None,
) -> None:
    """Run a whole job on this machine, stage by stage; re-run to resume."""
    job = load_one(job_file)
    from llmtrain.trainer.pipeline import RunError, run_job

    try:
        job_dir = run_job(job, job_file, workdir, workers=workers, metrics_port=metrics_port)
    except RunError as e:
        for line in e.lines:
            err.print(Text(line))
        raise typer.Exit(e.code) from None
    out.print(f"done: {job_dir}")


# What the operator fills in where a job leaves it unset; `render` takes the same options, so
# it shows what the operator creates. The Helm chart sets the environment variables.
DefaultPvc = Annotated[
    str,
    typer.Option(
        envvar="LLMTRAIN_DEFAULT_PVC",
        help="PersistentVolumeClaim for jobs whose spec.storage sets neither pvc nor objectStore.",
    ),
]
DriverMetricsPort = Annotated[
    int,
    typer.Option(
        envvar="LLMTRAIN_METRICS_PORT",
        min=1024,
        max=65535,
        help="Driver /metrics port for jobs that set no spec.monitoring.metricsPort.",
    ),
]
WorkerServiceAccount = Annotated[
    str,
    typer.Option(
        envvar="LLMTRAIN_WORKER_SERVICE_ACCOUNT",
        help="ServiceAccount of job pods; empty: the namespace's default.",
    ),
]
NetworkPolicy = Annotated[
    bool,
    typer.Option(
        "--network-policy/--no-network-policy",
        envvar="LLMTRAIN_NETWORK_POLICY",
        help="A NetworkPolicy per stage attempt: the gang's pods admit only each other, and "
        "the driver's metrics port admits --metrics-from.",
    ),
]
MetricsFrom = Annotated[
    str,
    typer.Option(
        envvar="LLMTRAIN_METRICS_FROM",
        help="JSON list of NetworkPolicyPeers that may read the driver's metrics (the "
        "operator, Prometheus); used with --network-policy.",
    ),
]


def _job_defaults(
    image: str | None,
    pvc: str,
    metrics_port: int,
    service_account: str,
    network_policy: bool = False,
    metrics_from: str = "",
    **initializer: Any,
) -> JobDefaults:
    import json

    from llmtrain.operator import layout

    try:
        peers = json.loads(metrics_from) if metrics_from else []
    except ValueError as e:
        _fail([f"--metrics-from: not JSON: {e}"])
    if not isinstance(peers, list) or not all(isinstance(p, dict) for p in peers):
        _fail(["--metrics-from: expected a JSON list of NetworkPolicyPeer objects"])
    return layout.JobDefaults(
        image=image or layout.DEFAULT_TRAINER_IMAGE,
        pvc=pvc or None,
        metrics_port=metrics_port,
        service_account=service_account or None,
        network_policy=network_policy,
        metrics_from=tuple(peers),
        **initializer,
    )


def _gpu_memory(value: str) -> int | None:
    from llmtrain.operator import layout

    try:
        return layout.quantity_bytes(value)
    except ValueError:
        _fail([f"--gpu-memory: {value!r} is not a memory quantity (e.g. 80Gi)"])
        return None


@app.command()
def render(
    job_file: Annotated[Path, typer.Argument(help="LLMTrainingJob manifest.")],
    stage: Annotated[str | None, typer.Option(help="Stage to render (default: the first).")] = None,
    attempt: Annotated[int, typer.Option(min=1, help="Attempt number in the names.")] = 1,
    image: Annotated[
        str | None,
        typer.Option(
            "--image",
            "--trainer-image",
            envvar="LLMTRAIN_TRAINER_IMAGE",
            help="Trainer image when the job sets none.",
        ),
    ] = None,
    default_pvc: DefaultPvc = "",
    driver_metrics_port: DriverMetricsPort = 9400,
    worker_service_account: WorkerServiceAccount = "",
    network_policy: NetworkPolicy = False,
    metrics_from: MetricsFrom = "",
) -> None:
    """Print the ConfigMap, Service, NetworkPolicy and pods the operator creates for a stage
    (YAML); fails, like the operator would, on a job that cannot run on a cluster."""
    from llmtrain.operator import layout, manifests

    job = load_one(job_file)
    names = [s.name for s in job.spec.stages]
    if stage is not None and stage not in names:
        _fail([f"{job_file}: no stage {stage!r}; stages are {', '.join(names)}"])
    if job.metadata.namespace is None:
        job.metadata.namespace = "default"
    defaults = _job_defaults(
        image,
        default_pvc,
        driver_metrics_port,
        worker_service_account,
        network_policy,
        metrics_from,
    )
    problems = layout.cluster_problems(job, defaults)
    if problems:
        _fail([f"{job_file}: {p}" for p in problems])
    objs = manifests.build_stage_objects(job, stage or names[0], attempt, defaults)
    out.print(manifests.to_yaml(objs), end="", markup=False)


@app.command()
def operator(
    namespace: Annotated[
        list[str] | None,
        typer.Option("--namespace", "-n", help="Watch this namespace (repeatable)."),
    ] = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="Watch every namespace (default).")
    ] = False,
    trainer_image: Annotated[
        str | None,
        typer.Option(envvar="LLMTRAIN_TRAINER_IMAGE", help="Image for jobs that set none."),
    ] = None,
    default_pvc: DefaultPvc = "",
    driver_metrics_port: DriverMetricsPort = 9400,
    worker_service_account: WorkerServiceAccount = "",
    network_policy: NetworkPolicy = False,
    metrics_from: MetricsFrom = "",
    retry_backoff: Annotated[
        float,
        typer.Option(
            envvar="LLMTRAIN_RETRY_BACKOFF",
            min=0.0,
            help="Seconds before the first retry of a failed stage attempt; doubles per retry.",
        ),
    ] = 10.0,
    retry_backoff_max: Annotated[
        float,
        typer.Option(
            envvar="LLMTRAIN_RETRY_BACKOFF_MAX", min=0.0, help="Longest wait between two attempts."
        ),
    ] = 300.0,
    permanent_grace: Annotated[
        float,
        typer.Option(
            envvar="LLMTRAIN_PERMANENT_GRACE",
            min=0.0,
            help="Seconds a permanent exit (code 2) waits for the rest of its gang: a more "
            "retryable failure among them (an OOM-killed head) makes it a retry.",
        ),
    ] = 10.0,
    scrape_grace: Annotated[
        float,
        typer.Option(
            envvar="LLMTRAIN_SCRAPE_GRACE",
            min=0.0,
            help="Seconds a driver's /metrics may stay unreadable (start-up, data "
            "preparation) before the job says ProgressUnknown.",
        ),
    ] = 300.0,
    resync_seconds: Annotated[
        float,
        typer.Option(
            envvar="LLMTRAIN_RESYNC_SECONDS",
            min=0.1,
            help="Per-job timer: progress scrape, stall watchdog, deadline and TTL.",
        ),
    ] = 10.0,
    scrape_timeout: Annotated[
        float, typer.Option(min=0.1, help="Timeout reading a driver's /metrics.")
    ] = 2.0,
    metrics_bind: Annotated[
        str, typer.Option(help="host:port of the operator's /metrics; empty disables it.")
    ] = "0.0.0.0:8000",
    health_bind: Annotated[
        str, typer.Option(help="host:port of the liveness probe /healthz; empty disables it.")
    ] = "0.0.0.0:8080",
    peering: Annotated[
        str, typer.Option(help="kopf peering object shared by replicas; the highest priority acts.")
    ] = "llmtrain",
    standalone: Annotated[
        bool, typer.Option("--standalone", help="No peering: act even if other replicas run.")
    ] = False,
    priority: Annotated[
        int | None, typer.Option(help="Peering priority (default: random per process).")
    ] = None,
    peering_lifetime: Annotated[
        int,
        typer.Option(min=1, help="Seconds until a silent replica counts as gone (failover time)."),
    ] = 15,
    initializer: Annotated[
        bool,
        typer.Option(
            "--initializer/--no-initializer",
            envvar="LLMTRAIN_INITIALIZER",
            help="Run one CPU-only initializer pod per job before its first gang: it fetches "
            "hub and s3:// inputs to storage and runs the preflight (data, chat template, "
            "memory). Without it a broken dataset is found by the GPU pods.",
        ),
    ] = True,
    initializer_cpu: Annotated[
        str, typer.Option(envvar="LLMTRAIN_INITIALIZER_CPU", help="Initializer CPU, by default.")
    ] = "2",
    initializer_memory: Annotated[
        str,
        typer.Option(envvar="LLMTRAIN_INITIALIZER_MEMORY", help="Initializer memory, by default."),
    ] = "8Gi",
    gpu_memory: Annotated[
        str,
        typer.Option(
            envvar="LLMTRAIN_GPU_MEMORY",
            help="Memory of one GPU (e.g. 80Gi) for jobs that set no spec.initializer.gpuMemory: "
            "a stage whose estimate exceeds it fails before its gang starts. Empty: no check.",
        ),
    ] = "",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Log everything.")] = False,
) -> None:
    """Run the kopf operator: reconcile LLMTrainingJobs into gangs of worker pods."""
    import logging

    import kopf

    from llmtrain.operator import main as operator_main
    from llmtrain.operator import reconcile, status

    if namespace and all_namespaces:
        _fail(["--namespace and --all-namespaces exclude each other"])

    def bind(value: str, flag: str) -> tuple[str, int] | None:
        if not value:
            return None
        host, _, port = value.rpartition(":")
        if not port.isdigit():
            _fail([f"{flag}: expected host:port, got {value!r}"])
        return host or "0.0.0.0", int(port)

    metrics = bind(metrics_bind, "--metrics-bind")
    health = bind(health_bind, "--health-bind")
    kopf.configure(verbose=verbose, debug=debug)
    if not (verbose or debug):  # one line per handled event is too much for hundreds of jobs
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # the probes, every 10 s
    options = reconcile.Options(
        job_defaults=_job_defaults(
            trainer_image,
            default_pvc,
            driver_metrics_port,
            worker_service_account,
            network_policy,
            metrics_from,
            initializer=initializer,
            initializer_cpu=initializer_cpu,
            initializer_memory=initializer_memory,
            gpu_memory=_gpu_memory(gpu_memory),
        ),
        policy=status.Policy(
            retry_backoff=retry_backoff,
            retry_backoff_max=retry_backoff_max,
            scrape_grace=scrape_grace,
            permanent_grace=permanent_grace,
            initializer=initializer,
        ),
        resync_seconds=resync_seconds,
        scrape_timeout=scrape_timeout,
        namespaces=list(namespace or []),
    )
    operator_main.run(
        options,
        peering=None if standalone else peering,
        priority=priority,
        peering_lifetime=peering_lifetime,
        liveness=f"http://{health[0]}:{health[1]}/healthz" if health else None,
        metrics_bind=metrics,
    )


@app.command()
def worker(
    stage_config: Annotated[
        Path, typer.Option("--stage-config", help="Resolved stage config (JSON) to run.")
    ],
) -> None:
    """Run one training stage on Ray Train: joins RAY_ADDRESS, else starts a local Ray."""
    from llmtrain.trainer import entry

    code, problems = entry.run_stage(stage_config)
    for line in problems:
        err.print(Text("error ", style="red") + Text(line))
    if code:
        raise typer.Exit(code)


@app.command()
def initialize(
    job_config: Annotated[
        Path, typer.Option("--job-config", help="The initializer's config (JSON): stages, fetches.")
    ],
    termination_log: Annotated[
        Path | None,
        typer.Option(help="Also write the verdict here (a pod's terminationMessagePath)."),
    ] = None,
) -> None:
    """Fetch a job's inputs to storage and run the preflight (data, template, memory)."""
    from llmtrain.trainer import initializer

    code, problems = initializer.run(job_config, termination_log)
    for line in problems:
        err.print(Text("error ", style="red") + Text(line))
    if code:
        raise typer.Exit(code)


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="Text to complete.")],
    model: Annotated[
        Path, typer.Option("--model", help="A stage's final/ or merged/ dir, or an adapter dir.")
    ],
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Tokens to generate.")] = 32,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 means greedy.")] = 0.0,
) -> None:
    """Complete a prompt with a trained model: a quick look at what it learned."""
    from llmtrain.trainer import entry

    text, problems = entry.generate_cli(str(model), prompt, max_new_tokens, temperature)
    if problems:
        _fail(problems)
    out.print(text, markup=False)


@app.command()
def cleanup(
    namespace: Annotated[
        list[str] | None,
        typer.Option(
            "--namespace", "-n", help="Only jobs in this namespace (repeatable); default: all."
        ),
    ] = None,
) -> None:
    """Remove the operator's finalizer from LLMTrainingJobs, so that they and their
    namespaces can be deleted without the operator. Run it only once the operator is
    stopped (the Helm chart runs it when uninstalled); it deletes nothing."""
    from llmtrain.operator import uninstall
    from llmtrain.operator.kube import ApiException

    try:
        result = uninstall.cleanup(namespace or [])
    except uninstall.LoginFailed as e:
        _fail([str(e)])
    except ApiException as e:
        _fail([f"cannot list LLMTrainingJobs: {e.status} {e.reason}"])
    for name in result.released:
        out.print(f"released {name}")
    if result.failed:
        _fail(result.failed + [f"{len(result.failed)} job(s) keep {uninstall.FINALIZER}"])
    out.print(f"removed {uninstall.FINALIZER} from {len(result.released)} job(s)")


def generated_files(root: Path) -> dict[Path, str]:
    from llmtrain.operator import crd as gen

    text = gen.crd_yaml()
    files = {
        root / "crds" / "llmtrainingjobs.yaml": text,
        root / "docs" / "api.md": gen.api_markdown(),
    }
    chart = root / "charts" / "llmtrain"
    if chart.is_dir():
        files[chart / "crds" / "llmtrainingjobs.yaml"] = text
    return files


def main(argv: list[str] | None = None) -> Any:
    return app(args=argv)


if __name__ == "__main__":  # pragma: no cover
    main()
