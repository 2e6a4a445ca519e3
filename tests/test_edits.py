import os
import re
import shutil
from pathlib import Path

import pytest

from supervisor.trial import edits
from supervisor.trial.edits import (
    EditError,
    EditResult,
    apply_edit,
    check_editable,
    edit_file,
    read_file,
    read_text_in_workspace,
    resolve_in_workspace,
)

TRAIN = """\
import math

DEPTH = 8
LR = 0.04


def lr_schedule(step):
    if step < 100:
        return LR * step / 100
    return LR


def train():
    for step in range(10):
        lr = lr_schedule(step)
        print(step, lr)
"""


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    (root / "trainer").mkdir(parents=True)
    (root / "trainer" / "train.py").write_text(TRAIN)
    (root / "trainer" / "prepare.py").write_text("SEQ_LEN = 2048\n")
    (root / "program.md").write_text("# research program\n")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("[core]\n")
    return root


# --- paths ------------------------------------------------------------------------------------------


def test_resolve_relative_alias_and_absolute_inside(ws):
    train = (ws / "trainer" / "train.py").resolve()
    assert resolve_in_workspace(ws, "trainer/train.py") == train
    assert resolve_in_workspace(ws, "train.py") == train
    assert resolve_in_workspace(ws, "./trainer/train.py") == train
    assert resolve_in_workspace(ws, str(ws / "trainer" / "train.py")) == train
    assert resolve_in_workspace(ws, "prepare.py") == (ws / "trainer" / "prepare.py").resolve()
    assert resolve_in_workspace(ws, "program.md") == (ws / "program.md").resolve()


def test_bare_train_py_prefers_the_root_in_an_upstream_checkout(tmp_path):
    (tmp_path / "train.py").write_text("x = 1\n")
    assert resolve_in_workspace(tmp_path, "train.py", editable="train.py") == (tmp_path / "train.py").resolve()
    assert check_editable(tmp_path, "train.py", editable="train.py") == (tmp_path / "train.py").resolve()


@pytest.mark.parametrize("path", ["../outside.txt", "trainer/../../outside.txt", "trainer/../trainer/train.py"])
def test_dotdot_traversal_refused(ws, path):
    (ws.parent / "outside.txt").write_text("secret")
    with pytest.raises(EditError, match=r"contains '\.\.'.*e\.g\. trainer/train\.py"):
        resolve_in_workspace(ws, path)


def test_absolute_path_outside_refused(ws):
    outside = ws.parent / "outside.txt"
    outside.write_text("secret")
    with pytest.raises(EditError, match="absolute path outside the workspace; give a path relative"):
        resolve_in_workspace(ws, str(outside))
    with pytest.raises(EditError, match="absolute path outside"):
        read_file(ws, "/etc/passwd")


def test_symlink_escape_refused(ws):
    outside = ws.parent / "outside.txt"
    outside.write_text("secret")
    os.symlink(outside, ws / "link.txt")
    os.symlink(ws.parent, ws / "trainer" / "up")
    with pytest.raises(EditError, match="symlink that points outside the workspace"):
        resolve_in_workspace(ws, "link.txt")
    with pytest.raises(EditError, match="symlink that points outside"):
        read_file(ws, "trainer/up/outside.txt")


def test_symlink_inside_workspace_allowed(ws):
    os.symlink(ws / "program.md", ws / "notes.md")
    assert resolve_in_workspace(ws, "notes.md") == (ws / "program.md").resolve()


def test_symlink_into_git_refused(ws):
    os.symlink(ws / ".git" / "config", ws / "cfg")
    with pytest.raises(EditError, match=r"inside \.git"):
        read_file(ws, "cfg")


def test_git_internals_refused(ws):
    with pytest.raises(EditError, match=r"inside \.git.*off limits"):
        read_file(ws, ".git/config")


def test_missing_file_suggests(ws):
    with pytest.raises(EditError, match=r"'trainer/trian.py' does not exist.*Did you mean trainer/train\.py\?"):
        resolve_in_workspace(ws, "trainer/trian.py")
    with pytest.raises(EditError, match=r"does not exist.*Files in the workspace: program\.md"):
        resolve_in_workspace(ws, "zzz/qqq.bin")


def test_directory_and_empty_path(ws):
    with pytest.raises(EditError, match=r"is a directory.*contains: prepare\.py, train\.py"):
        read_file(ws, "trainer")
    with pytest.raises(EditError, match="path is empty"):
        read_file(ws, "  ")


def test_only_train_py_is_editable(ws):
    train = (ws / "trainer" / "train.py").resolve()
    assert check_editable(ws, "trainer/train.py") == train
    assert check_editable(ws, "train.py") == train
    with pytest.raises(EditError) as err:
        check_editable(ws, "trainer/prepare.py")
    msg = str(err.value)
    assert msg.startswith("only trainer/train.py may be edited; prepare.py is the read-only harness")
    assert "inside trainer/train.py instead" in msg
    with pytest.raises(EditError, match="only trainer/train.py may be edited; 'program.md'"):
        check_editable(ws, "program.md")
    with pytest.raises(EditError, match="no new files can be created"):
        check_editable(ws, "trainer/new_module.py")


def test_editing_prepare_py_refused_and_unchanged(ws):
    with pytest.raises(EditError, match="read-only harness"):
        edit_file(ws, "prepare.py", "SEQ_LEN = 2048", "SEQ_LEN = 4096")
    assert (ws / "trainer" / "prepare.py").read_text() == "SEQ_LEN = 2048\n"


def test_symlink_to_prepare_cannot_be_edited(ws):
    os.symlink(ws / "trainer" / "prepare.py", ws / "trainer" / "alias.py")
    with pytest.raises(EditError, match="only trainer/train.py may be edited"):
        edit_file(ws, "trainer/alias.py", "2048", "4096")


# --- apply_edit -------------------------------------------------------------------------------------


def test_apply_edit_replaces_the_single_occurrence():
    assert apply_edit(TRAIN, "DEPTH = 8", "DEPTH = 12") == TRAIN.replace("DEPTH = 8", "DEPTH = 12")


def test_empty_search_and_no_change():
    with pytest.raises(EditError, match="search text is empty"):
        apply_edit(TRAIN, "", "x")
    with pytest.raises(EditError, match="no change"):
        apply_edit(TRAIN, "DEPTH = 8", "DEPTH = 8")


def test_missing_search_shows_nearest_lines_with_numbers():
    with pytest.raises(EditError) as err:
        apply_edit(TRAIN, "def lr_schedule(step):\n    if step < 200:\n        return LR * step / 200", "x")
    msg = str(err.value)
    assert "not found" in msg and "closest text is at lines 7-9" in msg
    assert "     7\tdef lr_schedule(step):" in msg
    assert "     8\t    if step < 100:" in msg
    assert "First difference: line 8 of the file is\n    '    if step < 100:'" in msg
    assert "'    if step < 200:'" in msg


def test_missing_search_stale_value_single_line():
    with pytest.raises(EditError) as err:
        apply_edit(TRAIN, "LR = 0.03", "LR = 0.05")
    assert "closest text is at line 4" in str(err.value)
    assert "     4\tLR = 0.04" in str(err.value)


def test_whitespace_hint():
    with pytest.raises(EditError) as err:
        apply_edit(TRAIN, "if step < 100:\n    return LR * step / 100", "x")  # indentation lost
    msg = str(err.value)
    assert "matches lines 8-9 if whitespace is ignored" in msg and "indentation or spacing" in msg
    assert "     8\t    if step < 100:" in msg
    with pytest.raises(EditError, match="tabs versus spaces"):
        apply_edit(TRAIN, "\tif step < 100:", "x")
    with pytest.raises(EditError, match="matches line 4 if whitespace is ignored"):
        apply_edit(TRAIN, "LR  =  0.04", "x")


def test_line_numbers_copied_from_read_file_are_spotted():
    with pytest.raises(EditError, match="include the line numbers shown by read_file"):
        apply_edit(TRAIN, "     3\tDEPTH = 8\n     4\tLR = 0.04", "x")


def test_ambiguous_search_reports_count_and_lines():
    with pytest.raises(EditError) as err:
        apply_edit(TRAIN, "return LR", "return 2 * LR")
    msg = str(err.value)
    assert "occurs 2 times (at lines 9, 10)" in msg
    assert "Add more surrounding lines" in msg
    with pytest.raises(EditError, match=r"occurs 2 times \(at line 1\)"):
        apply_edit("aaa\n", "aa", "b")  # overlapping occurrences are ambiguous too


def test_crlf_file_matches_lf_search():
    text = "a = 1\r\nb = 2\r\n"
    assert apply_edit(text, "a = 1\nb = 2", "a = 3\nb = 4") == "a = 3\r\nb = 4\r\n"


def test_empty_file_message():
    with pytest.raises(EditError, match="file is empty"):
        apply_edit("", "x", "y")


# --- edit_file --------------------------------------------------------------------------------------


def test_edit_file_writes_and_returns_diff(ws):
    result = edit_file(ws, "train.py", "LR = 0.04\n", "LR = 0.02\nWARMUP = 50\n")
    assert isinstance(result, EditResult)
    text = (ws / "trainer" / "train.py").read_text()
    assert "LR = 0.02\nWARMUP = 50\n" in text and "LR = 0.04" not in text
    assert result.path == "trainer/train.py"
    assert (result.start_line, result.end_line) == (4, 5)
    assert "--- a/trainer/train.py" in result.diff and "+++ b/trainer/train.py" in result.diff
    assert "-LR = 0.04\n" in result.diff and "+LR = 0.02\n" in result.diff and "+WARMUP = 50\n" in result.diff
    # no temporary file left beside train.py
    assert sorted(p.name for p in (ws / "trainer").iterdir()) == ["prepare.py", "train.py"]


def test_edit_file_deletion_and_mode_preserved(ws):
    path = ws / "trainer" / "train.py"
    path.chmod(0o754)
    result = edit_file(ws, "trainer/train.py", "import math\n\n", "")
    assert path.read_text().startswith("DEPTH = 8")
    assert (result.start_line, result.end_line) == (1, 1)
    assert path.stat().st_mode & 0o777 == 0o754


def test_failed_edit_leaves_file_untouched(ws):
    before = (ws / "trainer" / "train.py").read_bytes()
    with pytest.raises(EditError, match="not found"):
        edit_file(ws, "trainer/train.py", "DEPTH = 9", "DEPTH = 10")
    with pytest.raises(EditError, match="occurs 2 times"):
        edit_file(ws, "trainer/train.py", "return LR", "return 0")
    assert (ws / "trainer" / "train.py").read_bytes() == before


def test_edit_file_keeps_crlf(ws):
    path = ws / "trainer" / "train.py"
    path.write_bytes(b"a = 1\r\nb = 2\r\n")
    result = edit_file(ws, "train.py", "b = 2", "b = 3")
    assert path.read_bytes() == b"a = 1\r\nb = 3\r\n"
    assert result.start_line == result.end_line == 2


# --- read_file --------------------------------------------------------------------------------------


def test_read_whole_file_numbered_like_cat_n(ws):
    out = read_file(ws, "train.py")
    lines = out.split("\n")
    assert lines[0] == "     1\timport math"
    assert lines[2] == "     3\tDEPTH = 8"
    assert lines[-1] == "    16\t        print(step, lr)"
    assert "[" not in out  # the whole file: no note


def test_read_range(ws):
    out = read_file(ws, "trainer/train.py", start_line=3, end_line=4)
    assert out == "     3\tDEPTH = 8\n     4\tLR = 0.04\n[lines 3-4 of 16]"
    assert read_file(ws, "train.py", start_line=15).startswith("    15\t")
    assert read_file(ws, "train.py", end_line=2) == "     1\timport math\n     2\t\n[lines 1-2 of 16]"
    assert read_file(ws, "train.py", start_line=16, end_line=999).endswith("[lines 16-16 of 16]")


def test_read_range_errors(ws):
    with pytest.raises(EditError, match="has 16 lines; start_line 20 is past the end"):
        read_file(ws, "train.py", start_line=20)
    with pytest.raises(EditError, match="start_line must be a line number >= 1"):
        read_file(ws, "train.py", start_line=0)
    with pytest.raises(EditError, match="end_line 2 is before start_line 5"):
        read_file(ws, "train.py", start_line=5, end_line=2)


def test_read_truncation_with_note(ws):
    (ws / "big.txt").write_text("".join(f"line number {i}\n" for i in range(1, 1001)))
    out = read_file(ws, "big.txt", max_chars=200)
    body, note = out.rsplit("\n", 1)
    assert len(body) <= 200
    last = int(re.match(r"\s*(\d+)\t", body.split("\n")[-1]).group(1))
    assert note == (
        f"[truncated at 200 characters: showing lines 1-{last} of 1000. "
        f"Call again with start_line={last + 1} to read on.]"
    )
    nxt = read_file(ws, "big.txt", start_line=last + 1, max_chars=200)
    assert nxt.startswith(f"{last + 1:6d}\tline number {last + 1}")


def test_read_long_line_cut(ws):
    (ws / "one.txt").write_text("x" * 5000 + "\n")
    out = read_file(ws, "one.txt", max_chars=100)
    assert out.startswith("     1\txxx") and len(out) == 100
    assert "more chars" in read_file(ws, "one.txt")


def test_read_empty_and_binary(ws):
    (ws / "empty.txt").write_text("")
    assert read_file(ws, "empty.txt") == "[empty.txt is empty]"
    (ws / "shard.parquet").write_bytes(b"PAR1\x00\x01\x02")
    with pytest.raises(EditError, match="binary file"):
        read_file(ws, "shard.parquet")


def test_read_file_without_trailing_newline(ws):
    (ws / "n.txt").write_text("a\nb")
    assert read_file(ws, "n.txt") == "     1\ta\n     2\tb"


# --- files a trial may have left: hard links, FIFOs, swapped symlinks, huge files ------------------------


def test_hard_link_is_neither_read_nor_edited(ws, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("LR = 0.04\nprivate\n")
    os.link(secret, ws / "leak.txt")
    with pytest.raises(EditError, match="has 2 hard links"):
        read_file(ws, "leak.txt")
    train = ws / "trainer" / "train.py"
    train.unlink()
    os.link(secret, train)
    with pytest.raises(EditError, match="hard links"):
        edit_file(ws, "train.py", "LR = 0.04", "LR = 0.05")
    assert secret.read_text() == "LR = 0.04\nprivate\n"
    with pytest.raises(EditError, match="hard links"):
        read_text_in_workspace(ws, "train.py")


def test_fifo_is_refused_without_blocking(ws):
    os.mkfifo(ws / "pipe")
    with pytest.raises(EditError, match="FIFO"):
        read_file(ws, "pipe")


def test_symlink_swapped_in_after_the_check_is_not_followed(ws, tmp_path, monkeypatch):
    (ws / "data").mkdir()
    (ws / "data" / "notes.txt").write_text("inside\n")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "notes.txt").write_text("outside\n")
    real_resolve = edits._resolve_unguarded

    def resolve_then_swap(*args, **kwargs):
        result = real_resolve(*args, **kwargs)
        shutil.rmtree(ws / "data")
        os.symlink(outside, ws / "data")  # what a racing trial could do between check and open
        return result

    monkeypatch.setattr(edits, "_resolve_unguarded", resolve_then_swap)
    with pytest.raises(EditError, match="changed while it was being opened"):
        read_file(ws, "data/notes.txt")


def test_control_characters_and_long_paths_are_refused(ws):
    for path in ("train\x00.py", "a\nb", "\udcff", "x\x1b[31m"):
        with pytest.raises(EditError, match="the path contains the character"):
            read_file(ws, path)
    with pytest.raises(EditError, match="at most 1024 are accepted"):
        read_file(ws, "a/" * 1000)
    with pytest.raises(EditError, match="does not exist|cannot be opened"):
        read_file(ws, "a" * 300)  # a name longer than the file system allows
    with pytest.raises(EditError, match=r"inside \.git"):
        read_file(ws, ".GIT/config")


def test_edit_text_must_be_valid(ws):
    with pytest.raises(EditError, match="lone surrogate"):
        edit_file(ws, "train.py", "LR = 0.04", "LR = \udcff")
    with pytest.raises(EditError, match="NUL byte"):
        edit_file(ws, "train.py", "LR = 0.04", "LR = 0.05\x00")
    with pytest.raises(EditError, match="must be a string"):
        edit_file(ws, "train.py", "LR = 0.04", None)


def test_edit_may_not_grow_the_script_past_the_limit(ws, monkeypatch):
    monkeypatch.setattr(edits, "MAX_EDIT_BYTES", 1000)
    with pytest.raises(EditError, match="would be .* bytes, over the limit of 1,000 bytes"):
        edit_file(ws, "train.py", "LR = 0.04", "LR = 0.04\n" + "# pad\n" * 200)
    (ws / "trainer" / "train.py").write_text("x = 1\n" * 500)
    with pytest.raises(EditError, match="larger than 1,000 bytes"):
        edit_file(ws, "train.py", "x = 1", "x = 2")


def test_very_ambiguous_search_is_counted_up_to_a_limit():
    with pytest.raises(EditError, match="occurs at least 1000 times"):
        apply_edit("a\n" * 5000, "a", "b")


def test_read_text_in_workspace(ws):
    assert read_text_in_workspace(ws, "train.py") == TRAIN
    with pytest.raises(EditError, match="symlink that points outside"):
        os.symlink("/etc/hostname", ws / "host")
        read_text_in_workspace(ws, "host")


def test_huge_file_is_read_within_the_scan_limit(ws, monkeypatch):
    monkeypatch.setattr(edits, "MAX_SCAN_BYTES", 2**20)
    (ws / "big.txt").write_text("".join(f"line {i:06d}\n" for i in range(300_000)))  # 3.6 MB
    out = read_file(ws, "big.txt", start_line=100, end_line=101)
    assert out == ("   100\tline 000099\n   101\tline 000100\n[lines 100-101; read_file stops after the first "
                   "1 MB of a file, so the rest cannot be shown]")
    assert read_file(ws, "big.txt", start_line=80_000, end_line=80_000).startswith(" 80000\tline 079999")
    with pytest.raises(EditError, match="reads only the first 1 MB of a file, which hold 87381 whole lines, "
                                        "and start_line 200000 is beyond them"):
        read_file(ws, "big.txt", start_line=200_000)
