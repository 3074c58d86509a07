"""Provenance: the git revision is "-dirty" only when code changed, not when a stage rewrote results/ or logs/."""
import subprocess

from pipeline import provenance


def git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def test_dirty_means_code_changed_not_evidence(tmp_path, monkeypatch):
    for rel in ("run/stage.py", "results/m/export.json", "logs/m/export.log"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("v1\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    monkeypatch.setattr(provenance, "ROOT", tmp_path)
    clean = provenance.git_revision()
    assert clean and not clean.endswith("-dirty")
    (tmp_path / "results/m/export.json").write_text("v2\n")
    (tmp_path / "logs/m/export.log").write_text("v2\n")
    (tmp_path / "untracked.txt").write_text("x\n")
    assert provenance.git_revision() == clean
    (tmp_path / "run/stage.py").write_text("v2\n")
    assert provenance.git_revision() == clean + "-dirty"
