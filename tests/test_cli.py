"""The ``mmrec`` command line's contract (README "Command line"): failures are ``error: ...`` naming the option,
path or row, never a traceback; exit 1 failed, 2 usage error; ``--json`` prints one JSON object last, on failure
too. Every case fails before any encoder loads or model trains, so the file runs in seconds."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

import mmrec.train
import mmrec.report
from mmrec.cli import main
from mmrec.store import Store


@pytest.fixture
def store(tmp_path):
    """A two-item store written directly (no encoder): enough for everything that fails before training."""
    path = tmp_path / "store"
    s = Store(path)
    s.put_items([{"item_id": i, "title": f"item {i}", "text": f"item {i}", "image_ref": None, "text_hash": i,
                  "image_hash": None, "features": {"text": ("test-encoder", np.zeros(384, dtype=np.float32))}}
                 for i in ("1", "2")])
    s.close()
    return path


@pytest.fixture
def interactions(tmp_path):
    """One user, item 9 is not in the store."""
    path = tmp_path / "interactions.csv"
    path.write_text("user_id,item_id,timestamp\nu1,1,1\nu1,9,2\nu1,2,3\n")
    return path


@pytest.fixture
def catalog(tmp_path):
    path = tmp_path / "items.csv"
    path.write_text("item_id,title\n1,Foo\n2,Bar\n")
    return path


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _usage_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as raised:
        main([str(a) for a in argv])
    assert raised.value.code == 2
    return capsys.readouterr().err


def _no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# -- 1. no tracebacks -----------------------------------------------------------------------------------------
def test_embed_store_that_is_a_file_is_an_error_naming_the_option(tmp_path, catalog, capsys):
    afile = tmp_path / "afile"
    afile.write_text("")
    code, _, err = _run(["embed", catalog, "--store", afile], capsys)
    assert code == 1
    assert err.startswith("error: --store ") and str(afile) in err and "not a folder" in err


@pytest.mark.parametrize("command", ["embed", "train", "evaluate", "report"])
def test_cuda_device_without_cuda_is_an_error_before_any_work(command, tmp_path, catalog, store, interactions,
                                                              monkeypatch, capsys):
    _no_cuda(monkeypatch)
    reached = []
    monkeypatch.setattr(mmrec.train, "train_store", lambda *a, **k: reached.append("train"))
    monkeypatch.setattr(mmrec.report, "run_report", lambda *a, **k: reached.append("report"))
    monkeypatch.setattr(mmrec.train, "evaluate_store", lambda *a, **k: reached.append("evaluate"))
    argv = {"embed": ["embed", catalog, "--store", tmp_path / "new"],
            "train": ["train", "--store", store, "--interactions", interactions],
            "evaluate": ["evaluate", "--store", store, "--interactions", interactions],
            "report": ["report", "--store", store, "--interactions", interactions, "--out", tmp_path / "out"]}[command]
    code, _, err = _run([*argv, "--device", "cuda"], capsys)
    assert code == 1
    assert err.strip() == "error: --device cuda: no CUDA device on this machine (use --device cpu or auto)"
    assert not reached and not (tmp_path / "new").exists()


@pytest.mark.parametrize("device", ["banana", "cuda:x", "CPU", "meta"])
def test_unparseable_device_is_a_usage_error(device, tmp_path, catalog, capsys):
    err = _usage_error(["embed", catalog, "--store", tmp_path / "new", "--device", device], capsys)
    assert "argument --device" in err and repr(device) in err and "use auto, cpu, cuda" in err


@pytest.mark.parametrize("error", [RuntimeError("CUDA out of memory"), PermissionError(13, "Permission denied", "x")])
def test_runtime_and_os_errors_become_error_lines(error, store, interactions, monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(mmrec.train, "train_store", fail)
    monkeypatch.delenv("MMREC_DEBUG", raising=False)
    code, _, err = _run(["train", "--store", store, "--interactions", interactions], capsys)
    assert code == 1 and err == f"error: {error}\n"


@pytest.mark.parametrize("value, raises", [("1", True), ("0", False), ("", False), ("false", False), ("yes", True)])
def test_mmrec_debug_lets_errors_raise_with_their_traceback(value, raises, store, interactions, monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise RuntimeError("deep inside torch")

    monkeypatch.setattr(mmrec.train, "train_store", fail)
    monkeypatch.setenv("MMREC_DEBUG", value)
    argv = ["train", "--store", str(store), "--interactions", str(interactions)]
    if raises:
        with pytest.raises(RuntimeError, match="deep inside torch"):
            main(argv)
    else:
        assert _run(argv, capsys)[0] == 1


# -- 2. --json on failure -------------------------------------------------------------------------------------
def test_json_failure_prints_an_error_object_as_the_last_stdout_line(tmp_path, catalog, capsys):
    afile = tmp_path / "afile"
    afile.write_text("")
    code, out, err = _run(["embed", catalog, "--store", afile, "--json"], capsys)
    assert code == 1
    last = json.loads(out.strip().splitlines()[-1])
    assert last == {"error": f"--store {afile}: exists and is not a folder", "exit": 1}
    assert err == f"error: {last['error']}\n"


def test_json_failure_of_a_library_error(store, interactions, capsys):
    code, out, _ = _run(["train", "--store", store, "--interactions", interactions, "--json"], capsys)
    last = json.loads(out.strip().splitlines()[-1])
    assert code == 1 and last["exit"] == 1 and "item_id: 1 row(s)" in last["error"]


def test_without_json_a_failure_prints_nothing_on_stdout(tmp_path, catalog, capsys):
    afile = tmp_path / "afile"
    afile.write_text("")
    code, out, _ = _run(["embed", catalog, "--store", afile], capsys)
    assert code == 1 and out == ""


# -- 3. report checks its inputs before training --------------------------------------------------------------
@pytest.mark.parametrize("case", ["reference missing", "reference without table", "store missing",
                                  "interactions missing", "context events missing", "out is a file"])
def test_report_checks_inputs_before_training(case, tmp_path, store, interactions, monkeypatch, capsys):
    reached = []
    monkeypatch.setattr(mmrec.report, "run_report", lambda *a, **k: reached.append(1))
    no_table = tmp_path / "notes.md"
    no_table.write_text("# notes\n\nno results table here\n")
    afile = tmp_path / "afile"
    afile.write_text("")
    args = {"--store": store, "--interactions": interactions, "--out": tmp_path / "out"}
    option, path = {
        "reference missing": ("--reference", tmp_path / "nope.md"),
        "reference without table": ("--reference", no_table),
        "store missing": ("--store", tmp_path / "nostore"),
        "interactions missing": ("--interactions", tmp_path / "nope.csv"),
        "context events missing": ("--context-events", tmp_path / "tags.csv"),
        "out is a file": ("--out", afile),
    }[case]
    args[option] = path
    code, _, err = _run(["report", *[x for kv in args.items() for x in kv]], capsys)
    assert code == 1 and err.startswith(f"error: {option} {path}: ")
    assert not reached


def test_report_accepts_a_reference_table(tmp_path, store, interactions, monkeypatch, capsys):
    reference = tmp_path / "ref.md"
    reference.write_text("| Model | NDCG@10 |\n|---|---|\n| GRU4Rec | 0.05 |\n")
    seen = {}

    def fake_run_report(*args, **kwargs):
        seen.update(kwargs, config=args[3])
        raise ValueError("stop here")

    monkeypatch.setattr(mmrec.report, "run_report", fake_run_report)
    code, _, err = _run(["report", "--store", store, "--interactions", interactions, "--reference", reference,
                         "--out", tmp_path / "out", "--jobs", "4"], capsys)
    assert code == 1 and err == "error: stop here\n"
    assert seen["train"] is True and seen["config"].jobs == 4
    # a bad number is a usage error, refused while parsing: before any work
    err = _usage_error(["report", "--store", store, "--interactions", interactions, "--jobs", "0"], capsys)
    assert "argument --jobs: expected an integer >= 1" in err


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_train_and_evaluate_name_the_store_option(command, tmp_path, interactions, capsys):
    code, _, err = _run([command, "--store", tmp_path / "nostore", "--interactions", interactions], capsys)
    assert code == 1 and err.startswith(f"error: --store {tmp_path / 'nostore'}: not an mmrec store")


# -- 4. usage errors exit 2 naming the option ------------------------------------------------------------------
@pytest.mark.parametrize("argv, expected", [
    (["train", "--modalities", "text,foo"], ["argument --modalities", "'foo'", "text, image, id"]),
    (["report", "--models", "pop,foo"], ["argument --models", "'foo'", "gru4rec", "text+image+id"]),
    (["report", "--protocols", "warm"], ["argument --protocols", "'warm'", "standard, cold"]),
    (["report", "--seeds", "x"], ["argument --seeds", "expected comma-separated integers"]),
    (["report", "--ours", "pop"], ["argument --ours", "'pop'"]),
])
def test_bad_names_are_usage_errors(argv, expected, store, interactions, capsys):
    err = _usage_error([argv[0], "--store", store, "--interactions", interactions, *argv[1:]], capsys)
    for text in expected:
        assert text in err
    assert "<lambda>" not in err


def test_valid_lists_still_parse():
    from mmrec.cli import build_parser

    args = build_parser().parse_args(["report", "--store", "s", "--interactions", "i", "--models", "pop,text+id",
                                      "--seeds", "3, 4", "--protocols", "cold"])
    assert args.models == ["pop", "text+id"] and args.seeds == [3, 4] and args.protocols == ["cold"]
    args = build_parser().parse_args(["train", "--store", "s", "--interactions", "i", "--modalities", "id"])
    assert args.modalities == ["id"] and args.unknown_items == "error" and args.device == "auto"


# -- 5. --unknown-items ---------------------------------------------------------------------------------------
def test_unknown_item_error_names_the_cli_flag(store, interactions, capsys):
    code, _, err = _run(["train", "--store", store, "--interactions", interactions], capsys)
    assert code == 1
    assert f"error: {interactions}: item_id: 1 row(s) name items that are not in the catalogue" in err
    assert "'9'" in err and "pass --unknown-items drop" in err and "unknown_items=" not in err


def test_unknown_items_drop_reaches_train_store(store, interactions, monkeypatch, capsys):
    calls = []

    def fake_train_store(*args, **kwargs):
        calls.append(kwargs)
        raise ValueError("stop here")

    monkeypatch.setattr(mmrec.train, "train_store", fake_train_store)
    _run(["train", "--store", store, "--interactions", interactions, "--unknown-items", "drop"], capsys)
    assert calls and calls[0]["unknown_items"] == "drop"


def test_unknown_items_drop_skips_the_row_in_the_real_loader(store, interactions, capsys):
    # With item 9 dropped the single user has too short a history: the run fails later, not on item 9.
    code, _, err = _run(["train", "--store", store, "--interactions", interactions, "--unknown-items", "drop"],
                        capsys)
    assert code == 1 and "not in the catalogue" not in err
    warning, error = err.strip().splitlines()
    assert warning == f"warning: {interactions}: skipped 1 interaction rows naming items the store does not hold"
    assert error.startswith("error: ")


# -- 7. help lists the table formats read_table supports --------------------------------------------------------
@pytest.mark.parametrize("command, option", [("embed", "catalog"), ("train", "--interactions"),
                                             ("evaluate", "--context-events"), ("refresh", "--events"),
                                             ("report", "--interactions")])
def test_help_lists_supported_formats(command, option, capsys):
    with pytest.raises(SystemExit) as raised:
        main([command, "--help"])
    assert raised.value.code == 0
    text = re.sub(r"\s+", " ", capsys.readouterr().out)
    listing = text[text.index("positional arguments:" if option == "catalog" else "options:"):]
    described = listing[listing.index(f" {option} "):][:400]
    for suffix in (".csv", ".tsv", ".jsonl", ".ndjson", ".json ", ".parquet"):
        assert suffix in described, (suffix, described)


def test_report_no_train_does_not_need_the_device_its_runs_trained_on(tmp_path, store, interactions, monkeypatch,
                                                                    capsys):
    # combining GPU runs on a CPU machine (the README's recipe) repeats the GPU command with --no-train
    _no_cuda(monkeypatch)
    seen = {}

    def fake_run_report(*args, **kwargs):
        seen.update(kwargs)
        raise ValueError("stop here")

    monkeypatch.setattr(mmrec.report, "run_report", fake_run_report)
    code, _, err = _run(["report", "--store", store, "--interactions", interactions, "--out", tmp_path / "out",
                         "--device", "cuda", "--no-train", "--unknown-items", "drop"], capsys)
    assert code == 1 and err == "error: stop here\n"
    assert seen["train"] is False and seen["unknown_items"] == "drop"


def test_a_corrupt_store_database_is_an_error_line(tmp_path, capsys):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "mmrec.sqlite").write_bytes(b"not a database" * 100)
    code, out, err = _run(["refresh", "--store", tmp_path / "broken", "--rebuild", "--json"], capsys)
    assert code == 1 and err.startswith("error: ") and "Traceback" not in err
    assert json.loads(out.strip().splitlines()[-1])["exit"] == 1


@pytest.mark.parametrize("argv", [["train", "--device", "banana"], ["report", "--seeds", "x"],
                                  ["embed", "x.csv", "--store", "s", "--precision", "fp8"]])
@pytest.mark.parametrize("flag", ["--json", "--js"])  # argparse takes the abbreviation as --json
def test_a_usage_error_under_json_prints_the_error_object_too(argv, flag, store, interactions, capsys):
    if argv[0] != "embed":
        argv = [argv[0], "--store", str(store), "--interactions", str(interactions), *argv[1:]]
    with pytest.raises(SystemExit) as raised:
        main([*argv, flag])
    out, err = capsys.readouterr()
    assert raised.value.code == 2 and "error:" in err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["exit"] == 2 and summary["error"].startswith("argument --")


@pytest.mark.parametrize("command", ["embed", "demo"])
def test_a_missing_images_root_is_an_error_before_any_work(command, tmp_path, catalog, monkeypatch, capsys):
    import mmrec.embed

    monkeypatch.setattr(mmrec.embed, "embed_catalog", lambda *a, **k: pytest.fail("embedding started"))
    argv = ([command, catalog, "--store", tmp_path / "s"] if command == "embed"
            else [command, "--store", tmp_path / "s"])
    code, _, err = _run([*argv, "--images-root", tmp_path / "postres"], capsys)
    assert code == 1 and err == f"error: --images-root {tmp_path / 'postres'}: no such folder\n"
    assert not (tmp_path / "s").exists()


def test_new_item_exposure_reaches_the_training_config(store, interactions, monkeypatch, capsys):
    configs = []

    def fake_train_store(store, interactions, context_events, config, **kwargs):
        configs.append(config)
        raise ValueError("stop here")

    monkeypatch.setattr(mmrec.train, "train_store", fake_train_store)
    _run(["train", "--store", store, "--interactions", interactions, "--new-item-recall-ratio", "0.5",
          "--new-item-exposure", "slots", "--new-item-neighbours", "7"], capsys)
    assert configs[0].new_item_exposure == "slots" and configs[0].new_item_recall_ratio == 0.5
    assert configs[0].new_item_neighbours == 7
    err = _usage_error(["train", "--store", store, "--interactions", interactions, "--new-item-neighbours", "-1"],
                       capsys)
    assert "argument --new-item-neighbours: expected an integer >= 0" in err
    err = _usage_error(["train", "--store", store, "--interactions", interactions, "--new-item-exposure", "boost"],
                       capsys)
    assert "argument --new-item-exposure" in err and "'boost'" in err
