"""The README's promises: its Python quickstart runs as written, its command lines parse, it stays short and its
links to docs/ resolve."""

from __future__ import annotations

import re
import shlex
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest

from .conftest import REPO, write_movielens_slice

README = REPO / "README.md"
DOCS = REPO / "docs"
#: house style: the README says what mmrec is and how to start; the reference lives in docs/
README_LIMIT = 12 * 1024
#: the slice the quickstart runs on: the 150 most-rated bundled movies, users 1..60
N_ITEMS, MAX_USER = 150, 60


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def _python_quickstart() -> str:
    blocks = _blocks(README.read_text(encoding="utf-8"), "python")
    assert blocks, "README.md has no ```python block"
    return blocks[0]


def _data_folder(code: str) -> str:
    """The folder the quickstart reads items.csv, interactions.csv and tags.csv from (``data = Path("...")``)."""
    found = re.search(r'^data = Path\("([^"]+)"\)', code, flags=re.M)
    assert found, "the README's quickstart should name its data folder as data = Path(\"...\")"
    return found.group(1)


def test_python_quickstart_runs_as_written(tmp_path, monkeypatch):
    code = _python_quickstart()
    data = tmp_path / _data_folder(code)
    data.mkdir(parents=True)
    write_movielens_slice(data, n_items=N_ITEMS, max_user=MAX_USER)
    monkeypatch.chdir(tmp_path)

    namespace: dict = {"__name__": "__readme__"}
    exec(compile(code, str(README), "exec"), namespace)

    report, summary, metrics = namespace["report"], namespace["summary"], namespace["metrics"]
    assert report.embedded == N_ITEMS and not report.rejected and report.text_only == N_ITEMS
    assert 1 <= summary["best_epoch"] <= summary["epochs"] <= 5
    assert set(metrics) == {"valid", "test"}
    assert all(0 <= metrics[stage]["ndcg@10"] <= 1 for stage in metrics)

    rec, top, item = namespace["rec"], namespace["top"], namespace["item"]
    assert isinstance(top, list) and len(top) == 10
    assert all(isinstance(i, str) and isinstance(p, float) and 0 <= p <= 1 for i, p in top)
    assert len({i for i, _ in top}) == 10 and item == top[0][0]
    assert set(rec.store.item_ids()) >= {i for i, _ in top}

    # observe was folded in and persisted: the event is in user 1's log and the next score moved
    before, after = namespace["before"], namespace["after"]
    assert isinstance(before, np.float32) and 0 <= before <= 1 and 0 <= after <= 1
    assert after != before
    log = rec.store.user_events(["1"])["1"]
    assert log[-1][:3] == (1700000000, item, "interaction")
    assert rec.store.get_users(["1"])["1"].last_timestamp == 1700000000
    # "seen items left out": nothing recommended was in user 1's history before the observed event
    history = {item_id for _, item_id, event, _ in log[:-1] if event == "interaction"}
    assert history and not history & {i for i, _ in top}

    newcomer = namespace["newcomer"]
    assert newcomer.shape == (10,) and newcomer.dtype == np.float32
    assert ((newcomer >= 0) & (newcomer <= 1)).all()


def _commands(text: str) -> list[list[str]]:
    """Every ``mmrec ...`` command line of the README's ```bash blocks, continuations joined, comments dropped."""
    commands = []
    for block in _blocks(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["mmrec"]:
                commands.append(words[1:])
    return commands


def test_cli_commands_in_the_readme_parse(tmp_path, monkeypatch, capsys):
    """Each README command line is checked by the installed ``mmrec`` entry point in an empty folder: its options
    parse (a usage error would exit 2), and it then stops at its first missing input (exit 1) before any work."""
    commands = _commands(README.read_text(encoding="utf-8"))
    assert {c[0] for c in commands} >= {"embed", "train", "evaluate", "refresh", "report"}
    (mmrec,) = [e for e in entry_points(group="console_scripts") if e.name == "mmrec"]
    main = mmrec.load()
    monkeypatch.chdir(tmp_path)
    for argv in commands:
        assert argv[0] != "demo", "`mmrec demo` would run the whole demo; the README shows bash scripts/demo.sh"
        try:
            status = main(argv)
        except SystemExit as exit:  # argparse: a usage error
            pytest.fail(f"`mmrec {shlex.join(argv)}` is not a valid command line (exit {exit.code}): "
                        f"{capsys.readouterr().err}")
        err = capsys.readouterr().err
        assert status == 1 and re.search(r"no such file|not an mmrec store", err), (argv, status, err)
        assert not any(tmp_path.iterdir()), f"`mmrec {shlex.join(argv)}` wrote files before failing"


def test_readme_is_short():
    size = len(README.read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes; keep it under {README_LIMIT} and move detail to docs/"


def test_links_between_readme_and_docs_resolve():
    pages = [README, *sorted(DOCS.glob("*.md"))]
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # an external address
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            assert resolved.is_file(), f"{page.relative_to(REPO)} links to missing {target}"
            if anchor and resolved.suffix == ".md":
                assert anchor in _anchors(resolved.read_text(encoding="utf-8")), \
                    f"{page.relative_to(REPO)} links to {target}: no such heading"


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower-cased, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", markdown, flags=re.M):
        anchors.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return anchors
