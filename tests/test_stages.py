"""The stage list (pipeline/stages.py) is the only place a stage is declared: make, the stamps, the zoo, the report
and the entry points all derive from it, and a stage declared in only some places fails here."""
import ast
import importlib
import re
import subprocess
from pathlib import Path

import pytest

from pipeline import reads, stages, stamp
from pipeline.stages import STAGES

ROOT = Path(__file__).resolve().parent.parent


def module_file(module: str) -> Path:
    p = ROOT / Path(*module.split("."))
    return p / "__main__.py" if p.is_dir() else p.with_suffix(".py")


def test_make_has_exactly_the_declared_stage_targets(tmp_path):
    out = subprocess.run(["make", "-pnq", "help", f"PIPELINE_BUILD_DIR={tmp_path}"], cwd=ROOT, capture_output=True,
                         text=True).stdout
    targets = set(re.findall(r"^([a-z][a-z0-9_-]*):", out, re.M))
    for st in STAGES:
        assert st.name in targets, f"make has no target {st.name}"
    text = (ROOT / "Makefile").read_text()
    for st in STAGES:       # no hand-written rule or recipe for a declared stage
        assert not re.search(rf"^{st.name}\s*:", text, re.M), f"Makefile declares stage {st.name} by hand"
        assert f"-m {st.module} " not in text, f"Makefile runs {st.module} by hand"


def test_generated_recipes_pass_declared_options_only():
    mk = stages.makefile()
    for st in STAGES:
        assert f"-m {st.module} " in mk or mk.rstrip().endswith(f"-m {st.module}")
        flags = re.findall(rf"-m {re.escape(st.module)} (.*)", mk)
        for line in flags:
            for flag in re.findall(r"(--[a-z-]+)", line):
                assert flag in {stages.OPTIONS[o].flag for o in st.options}, (st.name, flag)


@pytest.mark.parametrize("st", STAGES, ids=lambda s: s.name)
def test_entry_point_parses_the_declared_options(st):
    src = module_file(st.module)
    assert src.is_file(), f"stage {st.name}: {src} missing"
    tree = ast.parse(src.read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "parse"
             and isinstance(n.func.value, ast.Name) and n.func.value.id == "stages"]
    assert calls and calls[0].args and getattr(calls[0].args[0], "value", None) == st.name, \
        f"{src} must parse its arguments with stages.parse({st.name!r}, argv)"
    assert "argparse" not in src.read_text(), f"{src}: arguments come from pipeline/stages.py only"
    ap = stages.parser(st.name)
    assert {a.dest for a in ap._actions} - {"help"} == set(st.options)


@pytest.mark.parametrize("st", [s for s in STAGES if s.result], ids=lambda s: s.name)
def test_each_result_file_is_written_by_its_stage_only(st):
    writers = []
    for pkg in {s.module.split(".")[0] for s in STAGES} | {"zoo", "report"}:
        for f in (ROOT / pkg).rglob("*.py"):
            if re.search(rf'["\']{re.escape(st.result)}["\']', f.read_text()):
                writers.append(f.relative_to(ROOT).parts[0])
    own = st.module.split(".")[0]
    assert own in writers, f"{st.result} is declared for {st.name} but {st.module} never names it"


def test_every_consumer_derives_from_the_declaration():
    import report.stage as report_main
    import zoo

    assert stamp.SLICE_STAGES == tuple(s.name for s in STAGES if s.slice)
    assert set(reads.STAGES) == {s.name for s in STAGES if s.kind != "tool"}
    assert zoo.STAGES == tuple(s.name for s in STAGES if s.zoo)
    assert set(report_main.FILES) == {s.result.removesuffix(".json") for s in STAGES if s.result}


def test_argv_builds_a_command_and_refuses_undeclared_options():
    cmd = stages.argv("infer", model="m", backend="ort-cpu", fail_on_bad=True)
    assert cmd[1:] == ["-m", "run.infer", "--model", "m", "--backend", "ort-cpu", "--fail-on-bad"]
    with pytest.raises(KeyError, match="has no option 'count'"):
        stages.argv("infer", model="m", count=3)


def test_every_stage_module_imports():
    for st in STAGES:
        mod = importlib.import_module(st.module if module_file(st.module).name != "__main__.py"
                                      else st.module + ".__main__")
        assert callable(getattr(mod, "main", None)), st.module


def test_accuracy_runs_after_om_with_input_from_the_environment(monkeypatch):
    """make accuracy MODEL=<m> INPUT=<labelled set> BACKEND=<b>: a measure stage on the built target; INPUT,
    DEVICE and FAIL_ON_BAD reach it through the environment make exports."""
    mk = stages.makefile()
    assert "accuracy: $(foreach m,$(MODEL),$(B)/$(m)/om-$(BK).done) | $(ENV_STAMP)" in mk
    assert "-m dataset.accuracy --model $$m --backend $(BK) || rc=1" in mk
    for var in ("BACKEND", "DEVICE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("INPUT", "/data/val")
    monkeypatch.setenv("FAIL_ON_BAD", "1")
    assert stages.parse("accuracy", ["--model", "m"]) == {"model": "m", "backend": "auto", "input": "/data/val",
                                                          "device": 0, "fail_on_bad": True}
    assert stages.get("accuracy").result == "labeled_accuracy.json"
