"""``tether eval`` end to end: a four-case FAQ suite, a reliable and an unreliable agent version, a SQLite store."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import Result
from typer.testing import CliRunner

from tether.cli import app, main
from tether.evals import EvalStore
from tether.store import open_store

FIXTURES = Path(__file__).resolve().parents[1] / "evals" / "fixtures"
SUITE = str(FIXTURES / "faq.yaml")
RELIABLE = "tests.evals.fixtures.agents:reliable"
UNRELIABLE = "tests.evals.fixtures.agents:unreliable"
CTRL_C = "tests.evals.fixtures.agents:ctrl_c"
CASES = 4

runner = CliRunner()


def tether(database: str, *args: str) -> Result:
    return runner.invoke(app, ["eval", *args, "--database", database])


def run_eval(database: str, agent: str, *args: str, trials: int = 3, code: int = 0) -> dict[str, Any]:
    result = tether(database, "run", SUITE, "--agent", agent, "--trials", str(trials), "--json", *args)
    assert result.exit_code == code, result.output
    data: dict[str, Any] = orjson.loads(result.stdout)
    return data


def outcomes(data: dict[str, Any]) -> list[tuple[str, int, str]]:
    return sorted((t["case_id"], t["trial"], t["status"]) for t in data["trial_records"])


@pytest.fixture
def database(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'tether.db'}"


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    """One store holding an eval of each version (3 trials per case): (database, reliable id, unreliable id)."""
    database = f"sqlite:///{tmp_path_factory.mktemp('evals') / 'tether.db'}"
    good = run_eval(database, RELIABLE, "--k", "1,3")["eval"]["eval_id"]
    bad = run_eval(database, UNRELIABLE, "--k", "1,3")["eval"]["eval_id"]
    return database, good, bad


def one_line_error(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> str:
    """Run the real entry point; assert exit code 2 and a single error line, and return it."""
    monkeypatch.setattr(sys, "argv", ["tether", "eval", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    err = capsys.readouterr().err
    assert exited.value.code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


def test_a_run_stores_every_trial_and_reports_the_counts(database: str) -> None:
    data = run_eval(database, RELIABLE, "--k", "1,3")

    assert data["trials"] == CASES * 3 and data["passes"] == CASES * 3 and data["infra_errors"] == 0
    assert data["not_run"] == 0 and data["eval"]["status"] == "finished"
    assert data["pass_rate"]["estimate"] == 1.0 and set(data["pass_hat_k"]) == {"1", "3"}
    assert data["cost_usd"] == "0.048"  # 12 trials x 2 model calls x $0.002
    assert [c["case_id"] for c in data["cases"]] == ["opening-hours", "refund-window", "shipping-time", "warranty"]
    # Each trial's trace is in the store, linked by its run id.
    with open_store(database) as store:
        run_id = EvalStore(store).trials(data["eval"]["eval_id"])[0].run_id
    assert run_id is not None
    trace = runner.invoke(app, ["runs", "show", run_id, "--json", "--database", database])
    assert trace.exit_code == 0, trace.output
    spans = orjson.loads(trace.stdout)["spans"]
    assert {s["operation"] for s in spans} >= {"invoke_agent", "chat", "execute_tool"}


def test_the_summary_shows_rates_flaky_cases_and_where_to_look_next(database: str) -> None:
    result = tether(database, "run", SUITE, "--agent", UNRELIABLE, "--trials", "3", "--k", "1,3")

    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "✓ 4" in out and "✗ 8" in out  # the progress bar's live counts
    assert "pass rate" in out and "33.3%" in out and "pass@3 / pass^3" in out
    assert "flaky cases" in out and "contains x2, required_tools x2" in out
    eval_id = orjson.loads(tether(database, "list", "--json").stdout)[0]["eval_id"]
    assert f"tether eval show {eval_id} --trials" in out
    assert "tether runs show " in out and "the trace of a failing trial" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--trials", "3", "--k", "9"],
            "pass^9 needs at least 9 trials per case but --trials is 3: run with --trials 9",
        ),
        (["--k", "one"], "--k 'one' is not a list of whole numbers"),
        (["--budget", "lots"], "--budget 'lots' is not an amount of dollars"),
        (["--resume", "nope"], "no eval 'nope': `tether eval list` shows the evals in this store"),
        (["--gate", "nope"], "no eval 'nope'"),
        (["--record", "a.jsonl", "--replay", "b.jsonl"], "--record and --replay exclude each other"),
        (["--replay", "missing.jsonl"], "cassette missing.jsonl does not exist"),
        (["--judge-model", "gpt-4o"], "has no provider"),
    ],
)
def test_bad_input_is_one_line_and_exit_2_before_anything_runs(
    database: str,
    args: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    err = one_line_error(["run", SUITE, "--agent", RELIABLE, *args, "--database", database], monkeypatch, capsys)

    assert message in err
    assert orjson.loads(tether(database, "list", "--json").stdout) == []


@pytest.mark.parametrize(
    ("suite", "agent", "message"),
    [
        ("- sounds_right: true", RELIABLE, "unknown scorer"),
        ("", RELIABLE, "no checks; give it at least one"),
        ('- contains: "x"', "tests.evals.fixtures.agents:nobody", "has no 'nobody'"),
        ('- contains: "x"', "no_such_module:agent", "cannot import no_such_module"),
    ],
)
def test_a_bad_suite_or_agent_is_one_line_and_exit_2(
    tmp_path: Path,
    database: str,
    suite: str,
    agent: str,
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "bad.yaml"
    checks = f"    checks:\n      {suite}\n" if suite else "    checks: []\n"
    path.write_text(f"suite: bad\ncases:\n  - id: one\n    input: hello\n{checks}")

    err = one_line_error(["run", str(path), "--agent", agent, "--database", database], monkeypatch, capsys)

    assert message in err


def test_list_and_show_with_every_trial(two_versions: tuple[str, str, str], tmp_path: Path) -> None:
    database, good, bad = two_versions

    listed = orjson.loads(tether(database, "list", "--json").stdout)
    assert [(e["eval_id"], e["agent_version"], e["passes"], e["counted_trials"]) for e in listed] == [
        (bad, "help-desk-v2", 4, 12),
        (good, "help-desk-v1", 12, 12),
    ]
    table = tether(database, "list", "--suite", "faq")
    assert table.exit_code == 0 and good in table.stdout and "33.3%" in table.stdout

    shown = tether(database, "show", bad[:6], "--trials")
    assert shown.exit_code == 0, shown.output
    assert "12 trials" in shown.stdout and "answer lacks ['30 days']" in shown.stdout
    assert f"tether eval compare {good} {bad}" in shown.stdout

    data = orjson.loads(tether(database, "show", bad, "--trials", "--json").stdout)
    assert outcomes(data).count(("warranty", 0, "passed")) == 1 and len(data["trial_records"]) == 12


def test_compare_finds_the_unreliable_version_significantly_worse(two_versions: tuple[str, str, str]) -> None:
    database, good, bad = two_versions

    data = orjson.loads(tether(database, "compare", good, bad, "--json").stdout)

    assert data["significant_regression"] is True and data["mcnemar_p"] < 0.05
    assert data["paired"] == {"both_pass": 4, "baseline_only": 8, "candidate_only": 0, "both_fail": 0}
    assert {c["case_id"] for c in data["cases"] if c["status"] == "regressed"} == {
        "opening-hours",
        "refund-window",
        "shipping-time",
        "warranty",
    }
    table = tether(database, "compare", good, bad)
    assert table.exit_code == 0 and "significant regression" in table.stdout and "regressed cases" in table.stdout
    backwards = tether(database, "compare", bad, good, "--gate")
    assert backwards.exit_code == 0 and "gate passed: significant improvement" in backwards.stdout


def test_compare_gate_fails_with_one_line(two_versions: tuple[str, str, str], tmp_path: Path) -> None:
    database, good, bad = two_versions
    report = tmp_path / "compare.md"

    result = tether(database, "compare", good, bad, "--gate", "--markdown", str(report))

    assert result.exit_code == 1
    gate_lines = [line for line in result.stdout.splitlines() if line.startswith("gate failed:")]
    assert len(gate_lines) == 1 and "4 cases regressed" in gate_lines[0]
    text = report.read_text()
    assert "**Significant regression**" in text and "#### Regressed cases" in text


def test_run_gate_fails_a_regression_and_passes_a_steady_version(two_versions: tuple[str, str, str]) -> None:
    database, good, _ = two_versions

    worse = tether(database, "run", SUITE, "--agent", UNRELIABLE, "--trials", "3", "--gate", good)
    assert worse.exit_code == 1, worse.output
    assert [line for line in worse.stdout.splitlines() if line.startswith("gate failed: pass rate fell 1.00 -> 0.33")]

    same = run_eval(database, RELIABLE, "--gate", good[:8])
    assert same["gate"]["passed"] is True and same["gate"]["baseline"] == good
    assert same["gate"]["message"].startswith("gate passed: no significant regression")


def test_a_gate_against_another_suite_is_refused_before_running(
    two_versions: tuple[str, str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    database, good, _ = two_versions
    other = tmp_path / "other.yaml"
    other.write_text(Path(SUITE).read_text().replace("suite: faq", "suite: other"))

    err = one_line_error(
        ["run", str(other), "--agent", RELIABLE, "--gate", good, "--database", database], monkeypatch, capsys
    )

    assert "ran suite 'faq', not 'other'" in err


def test_junit_xml_parses_and_counts_every_trial(database: str, tmp_path: Path) -> None:
    path = tmp_path / "reports" / "junit.xml"

    data = run_eval(database, UNRELIABLE, "--junit", str(path))

    suite = ET.parse(path).getroot().find("testsuite")
    assert suite is not None and suite.get("name") == "tether.eval.faq"
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("12", "8", "0")
    failures = suite.findall("testcase/failure")
    assert len(failures) == data["trials"] - data["passes"]
    assert "contains: answer lacks" in (failures[0].get("message") or "")
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["eval_id"] == data["eval"]["eval_id"] and props["agent_version"] == "help-desk-v2"


def test_a_spent_budget_stops_the_eval_and_a_resume_runs_only_what_is_missing(database: str) -> None:
    stopped = tether(
        database, "run", SUITE, "--agent", RELIABLE, "--trials", "3", "--budget", "0.01", "--max-concurrency", "1"
    )
    assert stopped.exit_code == 0, stopped.output
    eval_id = orjson.loads(tether(database, "list", "--json").stdout)[0]["eval_id"]
    assert "9 trials not run: the budget of $0.01 is spent ($0.0120 spent)" in stopped.stdout
    assert f"--resume {eval_id} --budget 0.02" in stopped.stdout
    first = orjson.loads(tether(database, "show", eval_id, "--trials", "--json").stdout)
    assert first["eval"]["status"] == "over_budget" and len(first["trial_records"]) == 3

    resumed = run_eval(database, RELIABLE, "--resume", eval_id, "--budget", "1", "--trials", "3")

    assert resumed["eval"]["eval_id"] == eval_id and resumed["eval"]["status"] == "finished"
    assert resumed["trials"] == 12 and resumed["not_run"] == 0
    after = orjson.loads(tether(database, "show", eval_id, "--trials", "--json").stdout)
    kept = {t["run_id"] for t in first["trial_records"]}
    assert kept <= {t["run_id"] for t in after["trial_records"]}  # the 3 trials were not run again


def test_ctrl_c_stores_the_eval_as_interrupted_and_says_how_to_resume(database: str) -> None:
    result = tether(database, "run", SUITE, "--agent", CTRL_C, "--trials", "3", "--max-concurrency", "1")

    assert result.exit_code == 130, result.output
    (listed,) = orjson.loads(tether(database, "list", "--json").stdout)
    eval_id = listed["eval_id"]
    assert listed["status"] == "interrupted" and listed["counted_trials"] < CASES * 3
    assert f"eval {eval_id} is stored as interrupted" in result.stdout
    assert f"--resume {eval_id}" in result.stdout

    resumed = run_eval(database, RELIABLE, "--resume", eval_id)
    assert resumed["eval"]["status"] == "finished" and resumed["trials"] == CASES * 3


def test_a_recorded_cassette_replays_the_same_trial_outcomes(database: str, tmp_path: Path) -> None:
    cassette = tmp_path / "faq.cassette.jsonl"
    recorded = run_eval(database, UNRELIABLE, "--record", str(cassette))
    replayed = run_eval(database, UNRELIABLE, "--replay", str(cassette))

    def trials(eval_id: str) -> list[tuple[str, int, str]]:
        return outcomes(orjson.loads(tether(database, "show", eval_id, "--trials", "--json").stdout))

    assert cassette.is_file()
    assert trials(recorded["eval"]["eval_id"]) == trials(replayed["eval"]["eval_id"])
    assert replayed["passes"] == recorded["passes"] == 4


def test_scorecard_puts_versions_side_by_side(two_versions: tuple[str, str, str]) -> None:
    database, good, bad = two_versions

    data = orjson.loads(tether(database, "scorecard", good, bad, "--json").stdout)

    assert data["versions"] == ["help-desk-v1", "help-desk-v2"] and data["evals"]["help-desk-v2"] == bad
    hallucinated = next(r for r in data["rows"] if r["metric"] == "hallucinated_tool_calls")
    assert hallucinated["counts"] == {"help-desk-v1": [0, 12], "help-desk-v2": [0, 4]}
    table = tether(database, "scorecard", good, bad)
    assert table.exit_code == 0 and "Hallucinated tool calls" in table.stdout and "help-desk-v2" in table.stdout


def test_drift_reports_the_latest_eval_against_the_ones_before(database: str) -> None:
    first = run_eval(database, RELIABLE)["eval"]["eval_id"]
    second = run_eval(database, RELIABLE)["eval"]["eval_id"]

    result = tether(database, "drift", "faq", "--json")

    assert result.exit_code == 0, result.output
    report = orjson.loads(result.stdout)
    assert report["recent_eval"] == second and report["baseline_evals"] == [first]
    assert report["model_changed"] is False and "drifted" in report
    pass_rate = next(m for m in report["metrics"] if m["name"] == "pass_rate")
    assert pass_rate["changed"] is False
    table = tether(database, "drift", "faq", "--agent", "help-desk-v1")
    assert table.exit_code == 0 and "pass_rate" in table.stdout and "adjusted p" in table.stdout


def test_drift_without_history_exits_0_saying_there_is_no_baseline_yet(database: str) -> None:
    result = tether(database, "drift", "faq")

    assert result.exit_code == 0, result.output
    assert "no baseline yet" in result.stdout and "tether eval run" in result.stdout
    assert "Traceback" not in result.output


def test_drift_after_one_eval_exits_0_saying_there_is_no_baseline_yet(database: str) -> None:
    only = run_eval(database, RELIABLE)["eval"]["eval_id"]

    result = tether(database, "drift", "faq", "--json")

    assert result.exit_code == 0, result.output
    report = orjson.loads(result.stdout)
    assert report["recent_eval"] == only and report["baseline_evals"] == [] and report["drifted"] is False
    assert report["note"].startswith("no baseline yet")
    table = tether(database, "drift", "faq")
    assert table.exit_code == 0 and "no baseline yet" in table.stdout and only in table.stdout


def test_show_writes_markdown_for_a_pull_request(two_versions: tuple[str, str, str], tmp_path: Path) -> None:
    database, _, bad = two_versions
    path = tmp_path / "eval.md"

    result = tether(database, "show", bad, "--markdown", str(path))

    assert result.exit_code == 0
    text = path.read_text()
    assert f"### tether eval `{bad}`" in text and "| refund-window (flaky) | 1/3 |" in text


def test_a_judge_can_be_a_gateway_route(database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A simulated judge that grades every answer 9/10, behind a gateway route of tether.toml.
    (tmp_path / "judge.toml").write_text('unmatched_answer = "SCORE: 9\\nREASON: cites the knowledge base"\n')
    (tmp_path / "tether.toml").write_text(
        '[providers.sim]\nkind = "sim"\nscenario = "judge.toml"\n\n'
        '[deployments.judge-haiku]\nprovider = "sim"\nmodel = "claude-haiku-4-5"\n\n'
        '[routes.judge]\ntiers = [["judge-haiku"]]\n'
    )
    (tmp_path / "judged.yaml").write_text(
        "suite: judged\ncases:\n"
        '  - id: refund-window\n    input: "[refund-window] How long do I have to ask for a refund?"\n'
        "    checks:\n      - judge: {rubric: states the refund window, samples: 2}\n"
    )
    monkeypatch.chdir(tmp_path)
    result = tether(
        database, "run", str(tmp_path / "judged.yaml"), "--agent", RELIABLE, "--trials", "2",
        "--judge-model", "route:judge", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = orjson.loads(result.stdout)
    assert data["passes"] == 2
    assert data["judge_sd"] == 0.0

    unknown = tether(database, "run", SUITE, "--agent", RELIABLE, "--judge-model", "route:nowhere")
    # `main` turns it into one error line (exit 2), as it does every UserError.
    assert "route 'nowhere' is not defined" in str(unknown.exception)
