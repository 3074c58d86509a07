"""make reruns only what depends on a change: the per-stage config slices and file fingerprints."""
import copy

from pipeline.config import load_config
from pipeline.paths import ModelPaths
from pipeline.stamp import fingerprint, write_section_stamps


def mtimes(paths):
    return {p.name: p.stat().st_mtime_ns for p in sorted((paths.build / "cfg").glob("*.json"))}


def test_only_the_edited_stage_slice_changes(isolated_dirs):
    cfg = load_config("convnext_base_clip_laion2b")
    paths = ModelPaths(cfg["name"])
    write_section_stamps(cfg, paths)
    before = mtimes(paths)
    assert set(before) == {"export.json", "om.json", "infer.json", "compare.json", "bench.json"}
    write_section_stamps(cfg, paths)
    assert mtimes(paths) == before                        # unchanged config: nothing rewritten
    edited = copy.deepcopy(cfg)
    edited["compare"]["gate"]["min_cosine"] = 0.99995
    write_section_stamps(edited, paths)
    after = mtimes(paths)
    assert [k for k in after if after[k] != before[k]] == ["compare.json"]
    edited["atc"]["batch_sizes"] = [1, 8]
    write_section_stamps(edited, paths)
    assert [k for k in mtimes(paths) if mtimes(paths)[k] != after[k]] == ["om.json"]


def test_fingerprint_sees_content_changes(tmp_path):
    f = tmp_path / "w" / "model.safetensors"
    f.parent.mkdir()
    f.write_bytes(b"a")
    first = fingerprint(f.parent)
    f.write_bytes(b"ab")
    assert fingerprint(f.parent) != first
    assert fingerprint(tmp_path / "missing") == [f"{tmp_path / 'missing'} missing"]
