"""make accuracy: labelled sets (ImageFolder by index / name / id, CSV), the three runs' top-1/top-5, the differences
in points, the JSON, the ModelZoo table in REPORT.md and the model card, and one ERROR line per bad input.

One tiny timm classifier (resnet10t at 64x64, stand-in weights) is exported once for the module; its fp32 ONNX
scores each generated image on its own (batch 1, outside the stage), and the labelled sets are built from those
predictions, so every expected count is known before the stage runs."""
import csv
import hashlib
import json
import re
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import ROOT
from dataset.accuracy import MAX_DROP_POINTS, main, run_accuracy
from dataset.labeled import ClassNames, read_set
from pipeline.errors import InputError

CONFIG = """name: {name}
family: timm_image
description: tiny timm classifier for the labelled-accuracy tests (stand-in weights)
model: {{architecture: resnet10t, head: {head}}}
inputs: [{{name: image, shape: [batch, 3, 64, 64]}}]
outputs: [{{name: logits, shape: [batch, {width}]}}]
export: {{parity_cases: [{{image: [2, 3, 64, 64]}}]}}
simplify: {{enabled: false}}
infer: {{batch_size: 4, samples: 2, max_bad_share: 0.2}}
"""
N = 10


def write_config(folder: Path, name: str, head: str = "classifier", width: int = 1000) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(CONFIG.format(name=name, head=head, width=width))
    return str(path)


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """What the checks before the runs read, without `make export`: the config, build/<m>/weights.json and
    preprocess.json (the class names), and N generated images."""
    from models.timm_image.torch_model import export_artifacts
    from pipeline.atomic import write_json
    from pipeline.config import discard_reads, load_config, load_family
    from pipeline.paths import ModelPaths

    root = tmp_path_factory.mktemp("labeled")
    with pytest.MonkeyPatch.context() as mp:
        for d in ("build", "results", "logs"):
            mp.setenv(f"PIPELINE_{d.upper()}_DIR", str(root / d))
        model = write_config(root / "cfg", "tiny_cls")
        cfg, fam = load_config(model), load_family("timm_image")
        export_artifacts(None, cfg, ModelPaths("tiny_cls").build)
        write_json(ModelPaths("tiny_cls").build / "weights.json", {"kind": "stand-in", "seed": 0})
        images = fam.generate_sources(cfg, root / "images", count=N, seed=3)
        yield SimpleNamespace(root=root, model=model, cfg=cfg, family=fam, images=images, names=fam.labels(cfg, {}))
        discard_reads()


@pytest.fixture(scope="module")
def tree(host):
    """The tiny classifier exported (ort-fp16 target built) and the fp32 ONNX top-5 of each image, one at a time."""
    from convert.stage import build_targets
    from export.stage import export_model
    from pipeline.paths import ModelPaths
    from pipeline.runners import OrtRunner

    export_model(host.model)
    build_targets(host.model, "ort-fp16")
    with OrtRunner(ModelPaths("tiny_cls").onnx_sim) as ort:
        ref = [np.argsort(-ort.infer(host.family.prepare(p, host.cfg, [])[0])["logits"][0].astype(np.float64),
                          kind="stable")[:5].tolist() for p in host.images]
    return SimpleNamespace(**vars(host), ref=ref)


def imagefolder(dst: Path, images, folders) -> Path:
    for img, folder in zip(images, folders):
        (dst / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(img, dst / folder / img.name)
    return dst


def result(tree) -> dict:
    from pipeline.paths import ModelPaths

    return json.loads((ModelPaths("tiny_cls").results / "labeled_accuracy.json").read_text())


def log_text() -> str:
    from pipeline.paths import ModelPaths

    return (ModelPaths("tiny_cls").logs / "labeled_accuracy.log").read_text()


def unique_synonym(names: list[str], c: int) -> str | None:
    """A comma-separated synonym of class c that no other class has (case-insensitive)."""
    for syn in (s.strip() for s in names[c].split(",")[1:]):
        if sum(syn.lower() in {x.strip().lower() for x in n.split(",")} for n in names) == 1:
            return syn
    return None


@pytest.fixture(scope="module")
def scored(tree):
    """A CSV set with known counts: 4 files labelled with the reference's top-1 (by index), 3 with its third class
    (by whole name, one row unquoted), 2 with a class outside its top-5 (by a unique synonym), 1 with its fifth class;
    plus one undecodable file. ONNX fp32 must give top-1 4/10 and top-5 8/10."""
    folder = tree.root / "csv_set"
    (folder / "img").mkdir(parents=True)
    rows, labels = [], []
    for i, img in enumerate(tree.images):
        shutil.copy(img, folder / "img" / img.name)
        r = tree.ref[i]
        if i < 4:
            label, text = r[0], str(r[0])
        elif i < 7:
            label = r[2]
            text = tree.names[label]
        elif i < 9:
            label = next(c for c in range(1000) if c not in r and unique_synonym(tree.names, c))
            text = unique_synonym(tree.names, label).upper()
        else:
            label, text = r[4], str(r[4])
        labels.append(label)
        rows.append((f"img/{img.name}" if i else str(folder / "img" / img.name), text))
    (folder / "img" / "broken.jpg").write_text("not a JPEG")
    with open(folder / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label"])
        w.writerows(rows[:5])
        f.write(f"{rows[5][0]},{rows[5][1]}\n")             # an unquoted name keeps its commas
        w.writerows(rows[6:] + [("img/broken.jpg", "1")])
    rc = run_accuracy(model=tree.model, backend="ort-fp16", input=str(folder / "labels.csv"))
    return SimpleNamespace(rc=rc, doc=result(tree), labels=labels, csv=folder / "labels.csv", log=log_text())


@pytest.mark.e2e
def test_reference_labels_give_100_percent_and_three_columns(tree, tmp_path):
    labels = [r[0] for r in tree.ref]
    root = imagefolder(tmp_path / "by_index", tree.images, [str(y) for y in labels])
    rc = run_accuracy(model=tree.model, backend="ort-fp16", input=str(root))
    doc = result(tree)
    runs = doc["runs"]
    assert runs["onnx"]["top1_count"] == runs["onnx"]["top5_count"] == N and runs["onnx"]["top1_pct"] == 100.0
    preds = {Path(p["file"]).name: p for p in doc["predictions"]}
    assert [preds[p.name]["onnx"] for p in tree.images] == tree.ref        # batch 4 in the stage = batch 1 here
    assert [preds[p.name]["torch"][0] for p in tree.images] == labels      # PyTorch eager, the same weights
    t1 = sum(p["target"][0] == p["label"] for p in doc["predictions"])
    t5 = sum(p["label"] in p["target"] for p in doc["predictions"])
    assert (runs["target"]["top1_count"], runs["target"]["top5_count"]) == (t1, t5)
    d = doc["differences_points"]
    assert d["target_minus_onnx"]["top1"] == pytest.approx(100.0 * (t1 - N) / N)
    assert d["target_minus_torch"]["top5"] == pytest.approx(100.0 * (t5 - N) / N)
    assert d["onnx_minus_torch"] == {"top1": 0.0, "top5": 0.0}
    passed = min(d["target_minus_torch"].values()) >= -MAX_DROP_POINTS
    assert doc["verdict"] == ("PASSED" if passed else "FAILED") and rc == (0 if passed else 1)
    assert (runs["target"]["backend"], runs["target"]["device"], runs["target"]["device_kind"]) == \
        ("ort-fp16", "cpu", "cpu")
    rel = sorted(f"{y}/{p.name}" for y, p in zip(labels, tree.images))
    lines = "".join(f"{r}\t{r.split('/')[0]}\n" for r in rel)
    assert doc["labeled_set"]["list_sha256"] == hashlib.sha256(lines.encode()).hexdigest()
    assert doc["stage"] == "accuracy" and "onnxruntime" in doc["versions"] and doc["failed"] == []
    assert doc["config"]["sha256"] == hashlib.sha256(Path(tree.model).read_bytes()).hexdigest()
    log = log_text()
    assert f"top-1 100.00% top-5 100.00% over {N} images (onnx fp32, cpu)" in log
    assert f"top-1 100.00% top-5 100.00% over {N} images (torch eager, cpu)" in log
    assert re.search(rf"^{doc['verdict']} \| tiny_cls labelled accuracy: target ort-fp16 \(cpu\) top-1 "
                     rf"{100 * t1 / N:.2f}% vs PyTorch 100\.00% \(diff [+-]\d+\.\d\d points, limit -1\.00\)", log, re.M)


@pytest.mark.e2e
def test_csv_set_counts_names_and_bad_files(tree, scored):
    doc, runs = scored.doc, scored.doc["runs"]
    assert [p["label"] for p in doc["predictions"]] == scored.labels       # index, name, unquoted name, synonym
    assert (runs["onnx"]["top1_count"], runs["onnx"]["top5_count"]) == (4, 8)
    assert (runs["onnx"]["top1_pct"], runs["onnx"]["top5_pct"]) == (40.0, 80.0)
    for run in ("torch", "target"):
        preds = [p[run] for p in doc["predictions"]]
        assert runs[run]["top1_count"] == sum(p[0] == y for p, y in zip(preds, scored.labels))
        assert runs[run]["top5_count"] == sum(y in p for p, y in zip(preds, scored.labels))
    d = doc["differences_points"]["target_minus_onnx"]
    assert d["top1"] == pytest.approx(runs["target"]["top1_pct"] - 40.0)
    assert doc["images"] == N and doc["failed_count"] == 1 and doc["failed"][0]["file"] == "img/broken.jpg"
    assert "not an image" in doc["failed"][0]["error"]
    ls = doc["labeled_set"]
    assert ls["kind"] == "csv" and ls["labels_file"]["sha256"] == hashlib.sha256(scored.csv.read_bytes()).hexdigest()
    assert "top-1 40.00% top-5 80.00% over 10 images (onnx fp32, cpu)" in scored.log
    assert "1 file(s) failed, first:" in scored.log


@pytest.mark.e2e
def test_fail_on_bad_exits_after_a_complete_result(tree, scored, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)              # PyTorch is not what this test is about
    with pytest.raises(SystemExit) as exc:
        main(["--model", tree.model, "--backend", "ort-fp16", "--input", str(scored.csv), "--fail-on-bad"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert re.match(r"ERROR \| 1 of 11 labelled file\(s\) failed to read; first: .*broken\.jpg", err[0])
    assert result(tree)["failed_count"] == 1


@pytest.mark.e2e
def test_without_torch_the_column_says_so(tree, scored, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)              # `import torch` fails, as on an Ascend host
    run_accuracy(model=tree.model, backend="ort-cpu", input=str(scored.csv))
    doc = result(tree)
    assert doc["runs"]["torch"] == {"name": "PyTorch eager", "ran": False, "device": "cpu",
                                    "runtime": "not run: no torch on this host"}
    assert doc["differences_points"]["target_minus_torch"] is None and doc["gate"]["reference"] == "onnx"
    assert doc["differences_points"]["target_minus_onnx"] == {"top1": 0.0, "top5": 0.0}    # ort-cpu is the reference
    assert all(p["torch"] is None for p in doc["predictions"])
    log = log_text()
    assert "accuracy | tiny_cls | not run: no torch on this host (torch eager)" in log
    assert "PASSED | tiny_cls labelled accuracy: target ort-cpu (cpu) top-1 40.00% vs ONNX fp32 (no PyTorch here) " \
           "40.00% (diff +0.00 points" in log


@pytest.mark.e2e
def test_report_table_and_model_card(tree, scored, monkeypatch):
    from pipeline.paths import ModelPaths
    from report.stage import write_reports
    from report.tables import labeled_accuracy_table

    res = ModelPaths("tiny_cls").results
    (res / "labeled_accuracy.json").write_text(json.dumps(scored.doc))
    write_reports([tree.model], publish=True)
    md = (res / "REPORT.md").read_text()
    section = md.split("## Labelled accuracy (top-1 / top-5)")[1].split("## Performance")[0]
    t = scored.doc["runs"]["target"]
    row = next(ln for ln in section.splitlines() if ln.startswith("| CPU (ort-fp16"))
    assert "not an NPU" in row and "| 4 [↗](labeled_accuracy.json#/batch_size) |" in row
    assert f"{t['top1_pct']:.2f} [↗](labeled_accuracy.json#/runs/target/top1_pct)/Top1" in row
    torch_top1 = scored.doc["runs"]["torch"]["top1_pct"]
    assert f"{torch_top1:.2f} [↗](labeled_accuracy.json#/runs/torch/top1_pct)/Top1" in row
    assert "Ascend NPU" not in section and "| PyTorch eager | CPU (PyTorch eager; not an NPU) |" in section
    assert "40.00 [↗](labeled_accuracy.json#/runs/onnx/top1_pct)/Top1 80.00" in section
    assert "verdict **" + scored.doc["verdict"] + "**" in section
    card = (res / "publish" / "README.md").read_text()
    assert "## Labelled accuracy" in card and "](results/labeled_accuracy.json#/runs/target/top1_pct)" in card
    assert "evidence_device: cpu" in card
    assert json.loads((res / "publish" / "results" / "labeled_accuracy.json").read_text()) == scored.doc
    npu = json.loads(json.dumps(scored.doc))                    # the same figures as an .om run would record them
    npu["runs"]["target"].update(backend="om", device="npu:0", device_kind="npu", soc_version="Ascend310P3")
    lines = labeled_accuracy_table(npu)
    assert next(ln for ln in lines if ln.startswith("| Ascend310P3 (Ascend NPU (npu:0;"))
    assert any(ln.startswith("| ONNX fp32 (onnxruntime CPU) | CPU (ort-cpu") and "not an NPU" in ln for ln in lines)


def test_class_names_by_index_id_name_and_synonym(host, tmp_path):
    ids = [f"n{i:08d}" for i in range(1000)]
    ids[281] = "n02123045"
    names = ClassNames(1000, host.names, ids)
    assert [names.lookup(s) for s in ("281", "N02123045", "Tabby, Tabby Cat", "tabby cat", "espresso", "maillot",
                                      "1000", "no such class")] == [281, 281, 281, 281, 967, 638, None, None]
    with pytest.raises(InputError, match=r"label 'crane' names 2 classes \(134 'crane', 517 'crane'\); name the "
                                         r"class by its index or id"):
        names.lookup("crane")
    root = imagefolder(tmp_path / "tree", host.images[:4], ["tabby cat", "n02123045", "ESPRESSO", "0"])
    lset = read_set(str(root), host.cfg, host.family, names)
    assert lset.kind == "imagefolder" and sorted(lset.labels) == [0, 281, 281, 967]
    assert "class id such as 'n00000000'" in ClassNames(1000, host.names, ids).accepted()
    assert "no class names" in ClassNames(10, None, None).accepted()


def test_wordnet_folders_through_the_family_hook(host, tmp_path, monkeypatch):
    """Folders named by WordNet id map through the family's label_ids; a family without ids gets a clear line."""
    import models.timm_image as family_module
    from timm.data import ImageNetInfo

    root = imagefolder(tmp_path / "wn", host.images[:2], ["n02123045", "n07920052"])
    wnids = list(ImageNetInfo("imagenet-1k").label_names())
    monkeypatch.setattr(family_module, "label_ids", lambda cfg, meta: wnids, raising=False)
    ids = host.family.label_ids(host.cfg, {})                   # through the contract's hook
    assert read_set(str(root), host.cfg, host.family, ClassNames(1000, host.names, ids)).labels == [281, 967]
    monkeypatch.setattr(family_module, "label_ids", lambda cfg, meta: None, raising=False)
    with pytest.raises(InputError, match=r"class folder\(s\) 'n02123045', 'n07920052' .* map to no class"):
        run_accuracy(model=host.model, backend="ort-fp16", input=str(root))


@pytest.mark.parametrize("case", ["missing_files", "unknown_classes", "unmapped_folder", "ambiguous_folder",
                                  "flat_folder", "no_input", "not_a_classifier"])
def test_bad_inputs_give_one_error_line_and_no_json(host, tmp_path, monkeypatch, capsys, case):
    monkeypatch.setenv("PIPELINE_RESULTS_DIR", str(tmp_path / "results"))
    img = host.images[0]
    shutil.copy(img, tmp_path / "a.png")
    model, arg = host.model, str(tmp_path / "labels.csv")
    if case == "missing_files":
        (tmp_path / "labels.csv").write_text("nope1.png,1\na.png,2\nsub/nope2.png,3\n")
        want = r"labels file .*labels\.csv names 2 file\(s\) that do not exist: .*nope1\.png, .*nope2\.png; paths " \
               r"are relative to"
    elif case == "unknown_classes":
        (tmp_path / "labels.csv").write_text("a.png,1500\na.png,no such class\na.png,7\n")
        want = r"labels file .*: 2 label\(s\) name no class of the head: row 1 '1500', row 2 'no such class'; give " \
               r"a class index 0\.\.999, .*a class name such as 'tench, Tinca tinca'"
    elif case in ("unmapped_folder", "ambiguous_folder", "flat_folder"):
        folder = {"unmapped_folder": "weird_name", "ambiguous_folder": "Crane", "flat_folder": "."}[case]
        arg = str(imagefolder(tmp_path / "set", [img], [folder]))
        want = {"unmapped_folder": r"class folder\(s\) 'weird_name' in .* map to no class of tiny_cls; name each "
                                   r"folder by a class index 0\.\.999, .*a class name such as",
                "ambiguous_folder": r"label 'Crane' names 2 classes \(134 'crane', 517 'crane'\)",
                "flat_folder": r"INPUT .*set has files outside class folders \(sample_0000\.png\); an "
                               r"ImageFolder"}[case]
    elif case == "no_input":
        arg, want = "", r"make accuracy needs INPUT=<labelled set>"
    else:
        model = write_config(tmp_path / "cfg", "tiny_emb", head="embedding", width=512)
        want = r"tiny_emb has no class labels \(not a classifier"
    with pytest.raises(SystemExit) as exc:
        main(["--model", model, "--backend", "ort-fp16", "--input", arg])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ERROR | ") and re.search(want, err[0]), err
    assert not list((tmp_path / "results").rglob("*.json"))


PHOTOS = ROOT / "tests" / "data" / "photos"
REAL = ROOT / "configs" / "more" / "mobilenet_v2_imagenet1k.yaml"


@pytest.mark.e2e
def test_real_photos_with_real_weights(tmp_path, monkeypatch):
    """chelsea.png is a tabby cat (ImageNet 281, its neighbours 282-285), coffee.png an espresso (967): every run
    has both in its top-5 and the espresso first."""
    import yaml

    from export.stage import export_model
    from pipeline import wheel_files

    raw = yaml.safe_load(REAL.read_text())
    raw["simplify"] = {"enabled": False}                       # not what this test is about; saves seconds
    model = write_config(tmp_path / "cfg", REAL.stem)
    Path(model).write_text(yaml.safe_dump(raw))
    if wheel_files.cache_dir().is_dir():                       # the fetched weights of this checkout, if any
        shutil.copytree(wheel_files.cache_dir(), tmp_path / "build" / "_wheels")
    for d in ("build", "results", "logs"):
        monkeypatch.setenv(f"PIPELINE_{d.upper()}_DIR", str(tmp_path / d))
    (tmp_path / "labels.csv").write_text(f"{PHOTOS / 'chelsea.png'},tabby\n{PHOTOS / 'coffee.png'},espresso\n")
    export_model(model)
    run_accuracy(model=model, backend="ort-cpu", input=str(tmp_path / "labels.csv"))     # the fp16 target: above
    doc = json.loads((tmp_path / "results" / REAL.stem / "labeled_accuracy.json").read_text())
    for run in ("torch", "onnx", "target"):
        assert doc["runs"][run]["top5_count"] == 2, (run, doc["predictions"])
        assert doc["predictions"][1][run][0] == 967
        assert 281 <= doc["predictions"][0][run][0] <= 285
