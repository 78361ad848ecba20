"""The CLI and the Prefect forms come from the same parameter models; bad input fails fast and
quietly (exit 2, one message, nothing started, nothing written); success is quiet too."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest

import gmm_dask_cli
from gmm_dask.app import params
from gmm_dask.demo import DemoSpec, write_demo_dataset
from gmm_dask_cli import build_parser

from .pipeline_helpers import flow_schema, make_config

REPO = Path(__file__).resolve().parents[1]
SPEC = DemoSpec(n_users=1500, n_snapshots=2, seed=5, block_users=1500)
HEAVY = ("dask", "distributed", "prefect")
#: What neither ``--help`` nor a config error may import: arguments, parameter models and the
#: config need only pydantic and YAML.
NOT_FOR_CONFIG = ("pandas", "pyarrow", "fsspec", "scipy", "numba", "matplotlib", *HEAVY)

_PROBE = r"""
import sys, time
t = time.perf_counter()
from gmm_dask_cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as e:  # argparse: --help, usage errors
    rc = e.code
loaded = sorted(m for m in %r if m in sys.modules)
print(f"PROBE rc={rc} loaded={','.join(loaded)} seconds={time.perf_counter() - t:.3f}", file=sys.stderr)
sys.exit(rc)
""".replace("%r", repr(NOT_FOR_CONFIG))


def _probe(*argv: str, env=None) -> tuple[int, str, str, float]:
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv], cwd=REPO, capture_output=True, text=True, timeout=120, env=env
    )
    return out.returncode, out.stdout, out.stderr, time.perf_counter() - t0


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    write_demo_dataset(tmp / "data", SPEC)
    return tmp, make_config(tmp, tmp / "data")


def test_version_and_help_load_neither_dask_nor_prefect_nor_the_data_libraries():
    for argv in (["--version"], ["--help"], ["select-k", "--help"], ["segment", "--help"]):
        rc, _, err, seconds = _probe(*argv)
        assert rc == 0, err
        assert "PROBE rc=0 loaded= " in err, err  # none of NOT_FOR_CONFIG imported
        print(f"{' '.join(argv)}: {seconds:.2f} s")
    assert "gmm-dask " in _probe("--version")[1]


COMMANDS = [
    ("train", params.TrainParams),
    ("score", params.ScoreParams),
    ("segment", params.SegmentParams),
    ("backfill", params.BackfillParams),
    ("select-k", params.SelectKParams),
    ("fluidity", params.FluidityParams),
    ("serve", params.ServeParams),
    ("promote", params.PromoteParams),
]


def _subparser(name):
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices[name]


@pytest.mark.parametrize(("command", "model"), COMMANDS)
def test_every_parameter_is_an_option_with_its_help_and_default(command, model):
    sp = _subparser(command)
    by_dest = {a.dest: a for a in sp._actions}
    for name, f in model.model_fields.items():
        nested = typing.get_args(f.annotation)[0] if typing.get_args(f.annotation) else f.annotation
        if inspect.isclass(nested) and issubclass(nested, params.ModelOverride):
            for sub, sf in nested.model_fields.items():
                assert by_dest[f"{name}.{sub}"].help.startswith(sf.description.replace("%", "%%"))
            continue
        action = by_dest[name]
        assert f.description, name
        assert action.help.startswith(f.description.replace("%", "%%")), name
        assert action.required == f.is_required(), name
        if not f.is_required() and f.default not in (None, [], ()):
            assert "[default:" in action.help, name
    assert by_dest["config"].required  # never silently the demo's config


@pytest.mark.parametrize("flow_name", ["segment", "train", "score", "backfill", "select_k", "fluidity"])
def test_every_flow_parameter_is_described_bounded_and_defaulted(flow_name):
    schema, model = flow_schema(flow_name)
    props = schema["properties"]
    assert list(props) == list(model.model_fields)
    for name, f in model.model_fields.items():
        assert props[name].get("description") == f.description, name
        if not f.is_required():
            default = f.get_default(call_default_factory=True)
            if hasattr(default, "model_dump"):  # the model override: no field set
                default = default.model_dump(mode="json", exclude_none=True)
            assert props[name]["default"] == (default if not hasattr(default, "isoformat") else str(default))
    assert schema["required"] == [n for n, f in model.model_fields.items() if f.is_required()]
    if "max_concurrency" in props:
        assert props["max_concurrency"]["minimum"] == 1  # the form refuses 0
    if flow_name == "select_k":
        assert props["k_min"]["minimum"] == 1
        assert props["covariance_types"]["default"] == ["full"]


def _bad_inputs(tmp: Path, cfg: Path) -> list[tuple[list[str], list[str]]]:
    bad_cfg = tmp / "bad.yaml"
    bad_cfg.write_text(cfg.read_text().replace("n_components: 5", "n_components: yes"))
    imputing = tmp / "imputing.yaml"
    imputing.write_text(cfg.read_text().replace("missing: error", "missing: impute_mean"))
    d = SPEC.dates
    return [
        (["train", "--config", str(bad_cfg)], ["model.n_components", "boolean"]),
        (["train", "--config", str(cfg), "--snapshot", "2031-01-01"], ["Snapshot 2031-01-01 not found"]),
        (["score", "--config", str(cfg), "--model-version", "v0042"], ["v0042"]),
        (["segment", "--config", str(tmp / "nope.yaml")], ["nope.yaml", "does not exist"]),
        (
            ["segment", "--config", str(cfg), "--n-components", "0"],
            ["--n-components", "greater than or equal to 1"],
        ),
        (["backfill", "--config", str(cfg), "--start", d[1], "--end", d[0]], ["end (", "before start"]),
        (
            ["backfill", "--config", str(cfg), "--start", d[0], "--end", d[1], "--max-concurrency", "0"],
            ["--max-concurrency"],
        ),
        (
            ["backfill", "--config", str(cfg), "--start", d[0], "--end", d[1]],
            ["Model alias 'latest' does not exist"],
        ),
        (
            ["select-k", "--config", str(cfg), "--k-min", "5", "--k-max", "3"],
            ["k_min (5) must be <= k_max (3)"],
        ),
        (["select-k", "--config", str(cfg), "--k-min", "0"], ["--k-min"]),
        (
            ["select-k", "--config", str(imputing), "--families", "gaussian", "behaviour"],
            ["families: 'behaviour' cannot run", "input.missing"],
        ),
        (
            ["fluidity", "--config", str(cfg), "--from-date", d[0], "--to-date", d[1]],
            ["from_date", "no memberships"],
        ),
        (["serve", "--config", str(bad_cfg)], ["model.n_components"]),
        (["promote", "--config", str(cfg), "--run-id", "nope"], ["run_id: no candidate run 'nope'"]),
        (["demo", "--config", str(bad_cfg)], ["model.n_components"]),
    ]


_BATCH = r"""
import contextlib, io, json, sys
from gmm_dask_cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
    heavy = sorted(m for m in json.loads(sys.argv[2]) if m in sys.modules)
    results.append({"argv": argv, "rc": rc, "err": err.getvalue(), "heavy": heavy})
print(json.dumps(results))
"""


def _batch(argvs: list[list[str]], modules: list[str]) -> list[dict]:
    """Run every ``argv`` in turn in one fresh process: its exit code, stderr and which of
    ``modules`` had been imported by then."""
    import json

    out = subprocess.run(
        [sys.executable, "-c", _BATCH, json.dumps(argvs), json.dumps(modules)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_bad_input_of_every_command_exits_2_fast_before_prefect_or_dask(job):
    """One fresh process runs every bad call in turn: each exits 2 with its message and no
    traceback, and none has imported Dask, Prefect or scipy's optimizer (how long it takes is
    measured by the benchmarks, not asserted here)."""
    tmp, cfg = job
    cases = _bad_inputs(tmp, cfg)
    results = _batch([argv for argv, _ in cases], [*HEAVY, "scipy.optimize"])
    for (argv, needles), r in zip(cases, results, strict=True):
        assert r["rc"] == 2, (argv, r["err"])
        assert r["heavy"] == [], (argv, r["heavy"])  # neither Dask nor Prefect was imported
        assert "Traceback" not in r["err"], (argv, r["err"])
        for needle in needles:
            assert needle in r["err"], (argv, needle, r["err"])
    assert {argv[0] for argv, _ in cases} == {
        "train",
        "score",
        "segment",
        "backfill",
        "select-k",
        "fluidity",
        "serve",
        "demo",
        "promote",
    }
    assert not (tmp / "out").exists()  # nothing written


def test_a_config_error_of_every_command_exits_2_before_the_data_libraries_are_imported(tmp_path):
    """A config missing required keys fails in every command with exit 2 and a message naming
    each key, having imported only what reading the config needs: none of pandas, pyarrow,
    fsspec, scipy, numba, matplotlib, Dask or Prefect."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("input:\n  path: data\n  features: [sessions]\n")  # no input.id_column, no output
    d = SPEC.dates
    argvs = [
        ["train"],
        ["score", "--model-version", "v0001"],
        ["segment"],
        ["backfill", "--start", d[0], "--end", d[1]],
        ["select-k"],
        ["fluidity", "--from-date", d[0], "--to-date", d[1]],
        ["audience"],
        ["promote", "--run-id", "r1"],
        ["vacuum"],
        ["serve"],
        ["demo"],
    ]
    argvs = [[*argv, "--config", str(bad)] for argv in argvs]
    assert {argv[0] for argv in argvs} == {name for name, *_ in gmm_dask_cli._commands()}
    for argv, r in zip(argvs, _batch(argvs, list(NOT_FOR_CONFIG)), strict=True):
        assert r["rc"] == 2, (argv, r["err"])
        assert r["heavy"] == [], (argv, r["heavy"])
        assert "Traceback" not in r["err"], (argv, r["err"])
        for key in ("missing required key 'input.id_column'", "missing required key 'output'"):
            assert key in r["err"], (argv, key, r["err"])
    assert not (tmp_path / "out").exists()


def test_a_successful_train_prints_progress_lines_and_no_dask_logs(job, tmp_path):
    tmp, _ = job
    cfg = make_config(
        tmp_path,
        tmp / "data",
        cluster={"type": "local", "n_workers": 2, "threads_per_worker": 1, "processes": True},
    )
    out = subprocess.run(
        [sys.executable, "-m", "gmm_dask_cli", "train", "--config", str(cfg)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "distributed" not in out.stderr, out.stderr
    assert " INFO " not in out.stderr, out.stderr
    # not a terminal: plain progress lines for each phase, with rows and rows/s
    for phase in ("profile", "fit", "write"):
        assert f"{phase}: {SPEC.n_users:,} rows in" in out.stderr, out.stderr
    assert "EM init 1 iteration 1/" in out.stderr
    assert "Phases: profile:" in out.stdout


def test_dev_without_a_command_prints_its_usage_not_its_code():
    out = subprocess.run(["bash", str(REPO / "dev")], capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    assert "./dev test" in out.stdout
    assert "./dev demo" in out.stdout
    assert "set -euo" not in out.stdout


_ANALYTICS_PROBE = """
from gmm_dask_cli import main
main(["train", "--config", "missing.yaml"])  # exits 2: the settings are made before any check
from prefect.settings import get_current_settings
print("analytics", get_current_settings().server.analytics_enabled)
"""


@pytest.mark.parametrize(("given", "seen"), [(None, "False"), ("true", "True"), ("false", "False")])
def test_the_cli_turns_prefects_server_telemetry_off_outside_the_repo_unless_the_user_set_it(
    tmp_path, given, seen
):
    # outside the repository root pyproject.toml's [tool.prefect.server] does not apply: Prefect's
    # temporary local API logged "Failed to send telemetry" as an ERROR off the network
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    if given is not None:
        env["PREFECT_SERVER_ANALYTICS_ENABLED"] = given
    out = subprocess.run(
        [sys.executable, "-c", _ANALYTICS_PROBE],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert f"analytics {seen}" in out.stdout, out.stdout + out.stderr


def test_demo_help_says_it_backfills_the_history_then_segments_the_latest_day():
    text = " ".join(_help(["demo", "--help"]).split())
    assert "the `backfill` flow (refit, published) over every date before the one segmented" in text
    assert "the first --snapshots - 1" in text
    assert "the daily `segment` flow on --snapshot, by default the latest" in text


@pytest.mark.parametrize(
    "argv", [["--help"], ["segment", "--help"], ["demo", "--help"], ["vacuum", "--help"]]
)
def test_help_lists_every_exit_code_with_what_it_means(argv):
    text = " ".join(_help(argv).split())
    for code, meaning in ((0, "done"), (2, "bad input"), (75, "retry later"), (1, "internal failure")):
        assert f"{code} {meaning}" in text, text
    assert "store did not answer" in text
    assert "publishing the same date" in text


def _help(argv: list[str]) -> str:
    """What ``gmm-dask ARGV`` (a ``--help``) prints, as a user sees it."""
    out = subprocess.run(
        [sys.executable, "-m", "gmm_dask_cli", *argv], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_progress_lines_and_warnings_share_one_time_format(job, tmp_path):
    tmp, _ = job
    cfg = make_config(tmp_path, tmp / "data")
    argv = ["train", "--config", str(cfg), "--family", "gaussian", "--max-iter", "2"]  # warns: not converged
    out = subprocess.run(
        [sys.executable, "-m", "gmm_dask_cli", *argv], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    warning = next(line for line in lines if "EM did not converge" in line)
    progress = next(line for line in lines if f"fit: {SPEC.n_users:,} rows in" in line)
    clock = r"\d\d:\d\d:\d\d "
    assert re.match(clock + r"WARNING gmm_dask\.", warning), warning
    assert re.match(clock + "fit: ", progress), progress
    assert not any(re.match(r"\d{4}-\d\d-\d\d", line) for line in lines), out.stderr
