"""Bad command-line input: one ``error:`` line naming the problem and the fix, a nonzero exit, no traceback."""
import errno
import json

import numpy as np
import pytest

from DeepMorphLib.cli import build_parser, main, os_error_message
from standins import TruthPredictor, make_real_folder, use_standins


def run_cli(capsys, argv) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``deepmorph ARGV`` (argparse errors included)."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.fixture
def afile(tmp_path):
    path = tmp_path / "afile"
    path.write_text("not a folder")
    return path


@pytest.fixture
def real_folder(tmp_path, monkeypatch):
    pred = TruthPredictor("head")
    anns = make_real_folder(tmp_path / "real", {"head": pred})
    use_standins(monkeypatch, pred)
    return tmp_path / "real", anns


# ---------------------------------------------------------------------------------------------- output paths
@pytest.mark.parametrize("argv", [
    ["phantom", "--out", "{f}"],
    ["phantom", "--out", "{f}/sub"],
    ["drr", "--ct", "{f}.nrrd", "--out", "{f}/x.png"],  # the CT is not even read
    ["dataset", "--phantom", "--out", "{f}", "--n", "2", "--size", "64", "--quiet"],
    ["dataset", "--phantom", "--out", "{f}/sub", "--n", "2", "--size", "64", "--quiet"],
    ["demo", "--out", "{f}", "--quick"],
])
def test_an_output_path_blocked_by_a_file_is_refused_before_any_work(afile, capsys, argv):
    code, _, err = run_cli(capsys, [a.replace("{f}", str(afile)) for a in argv])
    assert code == 2 and f"error: --out {afile}" in err and "not a folder" in err
    assert len(err.strip().splitlines()) == 1


def test_evaluate_report_blocked_by_a_file(real_folder, afile, capsys):
    root, _ = real_folder
    code, _, err = run_cli(capsys, ["evaluate", "--task", "head", "--real", str(root), "--report", str(afile)])
    assert code == 2 and f"--report {afile} is a file, not a folder" in err


def test_any_os_error_is_one_line_naming_the_path(real_folder, capsys, monkeypatch):
    from DeepMorphLib.commands import evaluate

    root, _ = real_folder

    def full(report, *args):
        raise OSError(errno.ENOSPC, "No space left on device", str(report / "results.json"))

    monkeypatch.setattr(evaluate, "_write_report", full)
    code, _, err = run_cli(capsys, ["evaluate", "--task", "head", "--real", str(root), "--report", str(root / "r")])
    assert code == 2 and "no space left on the device while writing" in err and "results.json" in err


def test_os_error_messages(afile, tmp_path):
    under = str(afile / "x" / "y")
    assert os_error_message(NotADirectoryError(errno.ENOTDIR, "Not a directory", under)) == (
        f"cannot write {under}: {afile} is a file, not a folder; choose another output path or move the file away.")
    assert "is a file, not a folder" in os_error_message(FileExistsError(errno.EEXIST, "File exists", str(afile)))
    assert os_error_message(PermissionError(errno.EACCES, "Permission denied", "/x/y")).startswith(
        "permission denied: /x/y; choose a location you can write to")
    assert os_error_message(IsADirectoryError(errno.EISDIR, "Is a directory", str(tmp_path))) == (
        f"{tmp_path} is a folder; give a file name instead.")
    assert os_error_message(FileNotFoundError("Image file not found: a.png")) == "Image file not found: a.png"


# ---------------------------------------------------------------------------------------------- evaluate
@pytest.mark.parametrize("n", ["0", "-2"])
def test_evaluate_n_must_be_positive(real_folder, capsys, n):
    root, _ = real_folder
    for source in (["--real", str(root)], []):  # the held-out set too: 0 is not "the default 200"
        code, _, err = run_cli(capsys, ["evaluate", "--task", "head", *source, "--n", n, "--json"])
        assert code == 2 and f"--n must be >= 1, got {n}" in err


def test_evaluate_with_nothing_scored_fails(real_folder, capsys):
    root, _ = real_folder
    for png in (root / "images").glob("*.png"):
        png.unlink()
    code, out, err = run_cli(capsys, ["evaluate", "--task", "head", "--real", str(root), "--json"])
    assert code == 1 and "error: no image could be scored (3 skipped, e.g." in err and "not found" in err
    assert out == ""  # no all-null metrics


def test_evaluate_unknown_or_missing_device_fails_up_front(real_folder, capsys):
    import torch

    root, _ = real_folder
    code, _, err = run_cli(capsys, ["evaluate", "--task", "head", "--real", str(root), "--device", "foo"])
    assert code == 2 and "Unknown device 'foo'; use auto, cpu, cuda, cuda:N or mps." in err
    if not torch.cuda.is_available():
        code, _, err = run_cli(capsys, ["evaluate", "--task", "head", "--real", str(root), "--device", "cuda"])
        assert code == 2 and "CUDA is not available on this machine; use --device cpu or auto." in err


def test_evaluate_real_skips_bad_annotations_by_name(real_folder, capsys):
    root, anns = real_folder
    ann_dir = root / "annotations"
    names = sorted(p.name for p in ann_dir.glob("*.json"))
    no_circle = json.loads((ann_dir / names[0]).read_text())
    (ann_dir / names[0]).write_text(json.dumps({**no_circle, "head_circle": None}))
    (ann_dir / "zz_broken.json").write_text('{"image": "images/x.png", ')
    (ann_dir / "zz_short.json").write_text(json.dumps({**no_circle, "head_circle": [1, 2]}))
    (ann_dir / "zz_list.json").write_text("[1, 2]")
    code, out, err = run_cli(capsys, ["evaluate", "--task", "head", "--real", str(root), "--json"])
    assert code == 0
    out = json.loads(out)
    assert out["n"] == 2 and out["skipped"] == 4  # the rest go on
    assert f'skipped {ann_dir / names[0]}: no "head_circle" to score the head task against' in err
    assert f"skipped {ann_dir / 'zz_broken.json'}: not valid JSON" in err
    assert f'skipped {ann_dir / "zz_short.json"}: "head_circle" must be [cx, cy, r], got [1, 2]' in err
    assert f"skipped {ann_dir / 'zz_list.json'}: holds a JSON list, not an object" in err


def test_evaluate_real_femur_without_outline_is_skipped_by_name(tmp_path, capsys, monkeypatch):
    pred = TruthPredictor("femur")
    root = tmp_path / "real"
    make_real_folder(root, {"femur": pred})
    use_standins(monkeypatch, pred)
    first = sorted((root / "annotations").glob("*.json"))[0]
    first.write_text(json.dumps({**json.loads(first.read_text()), "femur_outline": None}))
    code, out, err = run_cli(capsys, ["evaluate", "--task", "femur", "--real", str(root), "--json"])
    assert code == 0 and json.loads(out)["n"] == 2
    assert f'skipped {first}: no "femur_outline" to score the femur task against' in err


def test_evaluate_data_skips_a_corrupt_sample_by_name(tmp_path, capsys, monkeypatch):
    from DeepMorphSimulatorLib.files import write_png
    from synthetic_hip import make_hip

    pred = TruthPredictor("head")
    samples = tmp_path / "ds" / "samples"
    samples.mkdir(parents=True)
    image, truth = make_hip(30, "bone-dark", "right")
    image = np.round(image).astype(np.uint8)
    pred.register(image.astype(float), truth)
    write_png(samples / "000000.png", image)
    (samples / "000000.json").write_text(json.dumps({"head_circle": truth["head_circle"], "polarity": "bone-dark",
                                                     "side": "right", "implants": []}))
    write_png(samples / "000001.png", image)
    (samples / "000001.json").write_text('{"head_circle": [1, ')
    use_standins(monkeypatch, pred)
    code, out, err = run_cli(capsys, ["evaluate", "--task", "head", "--data", str(tmp_path / "ds"), "--json"])
    assert code == 0 and json.loads(out)["n"] == 1
    assert f"skipped {samples / '000001.json'}: not valid JSON" in err and "re-run 'deepmorph dataset'" in err


# ---------------------------------------------------------------------------------------------- devices
def test_resolve_device_names_the_allowed_values():
    import torch

    from DeepMorphLib.inference import resolve_device

    assert resolve_device("cpu") == torch.device("cpu") and resolve_device("auto").type in ("cpu", "cuda")
    for bad in ("foo", "cuda:x", "meta"):
        with pytest.raises(ValueError, match=r"Unknown device .*; use auto, cpu, cuda, cuda:N or mps\."):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="^CUDA is not available on this machine; use --device cpu or auto.$"):
            resolve_device("cuda:0")


def test_dataset_bad_device_fails_before_the_manifest(tmp_path, capsys):
    folder = tmp_path / "d"
    code, _, err = run_cli(capsys, ["dataset", "--phantom", "--out", str(folder), "--n", "2", "--size", "64", "--quiet",
                                    "--device", "foo"])
    assert code == 2 and "Unknown device 'foo'" in err and not folder.exists()


# ---------------------------------------------------------------------------------------------- --data forms
@pytest.mark.parametrize("command", ["train", "build-pdm", "build-dome-circle"])
def test_data_takes_several_folders_either_way(command):
    argv = [command, "--data", "A", "B", "--data", "C", "--out", "m"]
    argv += ["--task", "head"] if command == "train" else []
    assert build_parser(argv).parse_args(argv).data == ["A", "B", "C"]


# ---------------------------------------------------------------------------------------------- ranges
@pytest.mark.parametrize("option, value, message", [
    ("--p-bone-bright", "2", "--p-bone-bright is a share in [0, 1], got 2.0."),
    ("--workers", "0", "--workers must be >= 1, got 0."),
    ("--workers", "-2", "--workers must be >= 1, got -2."),
])
def test_dataset_range_checks(tmp_path, capsys, option, value, message):
    folder = tmp_path / "d"
    code, _, err = run_cli(capsys, ["dataset", "--phantom", "--out", str(folder), "--n", "2", "--size", "64", "--quiet",
                                    option, value])
    assert code == 2 and message in err and not folder.exists()


def test_build_pdm_max_shapes_range(tmp_path, capsys):
    code, _, err = run_cli(capsys, ["build-pdm", "--data", str(tmp_path), "--out", str(tmp_path / "p"),
                                    "--max-shapes", "-3"])
    assert code == 2 and "--max-shapes must be >= 10 (a PDM needs at least 10 shapes), got -3." in err


def test_build_pdm_names_a_corrupt_sample(tmp_path, capsys):
    samples = tmp_path / "ds" / "samples"
    samples.mkdir(parents=True)
    (samples / "000000.json").write_text('{"points": [[1, ')
    code, _, err = run_cli(capsys, ["build-pdm", "--data", str(tmp_path / "ds"), "--out", str(tmp_path / "p")])
    assert code == 2 and f"{samples / '000000.json'} is not a valid sample JSON" in err
    assert "re-run 'deepmorph dataset' with the same arguments" in err


# ---------------------------------------------------------------------------------------------- hints
def test_training_hint_is_a_command_that_works(tmp_path):
    from DeepMorphLib.training import list_samples

    with pytest.raises(FileNotFoundError) as info:
        list_samples(tmp_path, "head")
    hint = str(info.value).split("'")[1]
    assert hint == f"deepmorph dataset --phantom --out {tmp_path} --n 2000 --size 256"
    parser = build_parser(hint.split()[1:])
    parser.parse_args(hint.split()[1:])  # the hint parses (no "one of --phantom --ct is required")


def test_landmarks_of_both_femurs_name_the_side_option(tmp_path):
    from DeepMorphSimulatorLib.landmarks import femur_landmarks_from_markups, write_markups

    path = tmp_path / "both.mrk.json"
    write_markups(path, [("right_head_center", np.zeros(3), ""), ("left_head_center", np.ones(3), "")])
    with pytest.raises(ValueError, match=r"choose one with --side left\|right\.$"):
        femur_landmarks_from_markups(path)


def test_a_text_file_as_pdm_is_not_a_pdm_npz(tmp_path):
    from DeepMorphLib.pdm import PointDistributionModel

    for name in ("notes.txt", "notes.npz"):
        (tmp_path / name).write_text("hello")
        with pytest.raises(ValueError, match=f"{name} is not a PDM .npz file") as info:
            PointDistributionModel.load(tmp_path / name)
        assert "pickled" not in str(info.value)


def test_a_missing_refine_model_names_the_option(real_folder, capsys):
    root, _ = real_folder
    for option in ("--refine-model", "--head-anchor", "--region-model"):
        code, _, err = run_cli(capsys, ["evaluate", "--task", "head", "--real", str(root), option, "nope"])
        assert code == 2 and f"argument {option}: no model file nope; give a trained .safetensors file" in err


@pytest.mark.parametrize("option, value", [("--femur-min-quality", "1.5"), ("--second-opinion-below", "-1"),
                                           ("--upright-max-deg", "-10")])
def test_evaluate_refuses_femur_fit_options_out_of_range_as_fit_does(tmp_path, capsys, option, value):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--task", "femur", "--data", str(tmp_path), option, value])
    assert exc.value.code == 2 and f"argument {option}" in capsys.readouterr().err
