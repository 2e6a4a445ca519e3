"""Reward-hacking guards: an agent optimising val_bpb is an adversary of the metric too.

Two kinds of evidence:

- the evaluation's inputs (validation tokens, their byte lengths, the tokenizer) are fingerprinted when
  the run starts and checked before and after every trial; a change is a hard fault;
- every trial's training script is read as a syntax tree (`scan_source`), the new one against its parent,
  for constructs a training recipe has no business with: the evaluation and its result, the validation
  data, the environment, files, the network, processes, dynamic code and lookups by computed names,
  interpreter internals, changes to the harness's or other modules' attributes, and text that names
  any of these (folded from concatenations, joins and f-strings where that can be done statically).
  What the parent already did is not reported again (findings are compared as a multiset of keys, the
  rule and the normalised statement), so the starting script has no findings against itself.

A finding is one sentence for the person: the rule, why it matters, the line and the offending source.
The executor never keeps a trial with a finding (it is held for review). A static scan is evidence, not
proof: the trial also runs sandboxed, and its number comes from a trusted evaluation.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import re
import textwrap
import tokenize
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# Manifest keys of the cache files that decide val_bpb, and of the audit split its keeps are scored on (a trial that
# changed it would void the audit as surely as a changed val.bin voids the number). Training data is not here on
# purpose: a trial may read train.bin however it likes (through the harness's dataloader).
EVAL_MANIFEST_KEYS = ("val_tokens", "token_bytes", "tokenizer", "audit_tokens")

SEGMENT_CHARS = 160

# ---- the rules -------------------------------------------------------------------------------------------
EVALUATION = "evaluation"
VALIDATION = "validation data"
ENVIRONMENT = "environment"
FILES = "files outside"
NETWORK = "network"
PROCESSES = "subprocess"
TIMING = "timing"
DYNAMIC = "dynamic code"
OBFUSCATION = "obfuscation"
HARNESS = "harness"
MONKEYPATCH = "monkeypatch"
INTROSPECTION = "introspection"
UNPARSED = "unparsed"
BUDGET = "budget"

WHY = {
    EVALUATION: "touches the evaluation or its result (val_bpb must come from the harness as it is)",
    VALIDATION: "names or reads the validation data, the audit split or the evaluation's inputs",
    ENVIRONMENT: "reads or changes the environment (the budget, the seed and the paths come from it)",
    FILES: "opens, writes, removes or locates files (the workspace, the cache and the run folder are not "
           "the recipe's to touch)",
    NETWORK: "uses the network",
    PROCESSES: "starts processes, sends signals or changes the process",
    TIMING: "changes how time is measured",
    DYNAMIC: "runs, imports or looks up code by a computed name, which hides what it does",
    OBFUSCATION: "decodes or assembles text at run time, which hides what it names",
    HARNESS: "reaches into the harness (prepare) beyond its training API, or changes it",
    MONKEYPATCH: "replaces an attribute of a module, code the harness runs too",
    INTROSPECTION: "reaches interpreter internals (namespaces, frames, the import system)",
    UNPARSED: "the supervisor could not parse the training script, so it could not check it",
    BUDGET: "grows the budget the harness gives it (a trial trains on its time or token budget, no more)",
}

# Modules a training recipe never imports, by what they are for (the top-level package decides).
FORBIDDEN_MODULES: dict[str, str] = {
    **dict.fromkeys(("socket", "ssl", "urllib", "urllib3", "requests", "http", "httpx", "aiohttp", "ftplib",
                     "smtplib", "telnetlib", "xmlrpc", "asyncio", "websocket", "websockets", "paramiko",
                     "grpc", "zmq"), NETWORK),
    **dict.fromkeys(("subprocess", "multiprocessing", "pty", "signal", "resource", "pexpect", "sh"), PROCESSES),
    **dict.fromkeys(("shutil", "tempfile", "glob", "sqlite3", "mmap", "zipfile", "tarfile", "fcntl",
                     "filelock"), FILES),
    **dict.fromkeys(("importlib", "runpy", "code", "codeop", "imp", "pkgutil", "ctypes", "cffi", "marshal",
                     "pickle", "dill", "cloudpickle", "shelve", "zipimport"), DYNAMIC),
    **dict.fromkeys(("base64", "codecs", "binascii", "zlib", "lzma", "bz2", "gzip"), OBFUSCATION),
    **dict.fromkeys(("inspect", "gc", "builtins", "__builtin__", "atexit", "dis", "sysconfig", "site",
                     "__main__"), INTROSPECTION),
    **dict.fromkeys(("pyarrow", "pandas", "polars", "datasets", "tokenizers", "huggingface_hub"), VALIDATION),
    "corpus": HARNESS,  # the harness's other half (trainer/corpus.py)
}
HARNESS_MODULES = frozenset({"prepare"})
# What train.py may use of the harness: the constants, the training dataloader, the budget, the peak FLOP/s.
PREPARE_API = frozenset({"MAX_SEQ_LEN", "PROFILE", "VOCAB_SIZE", "TIME_BUDGET", "BOS_TOKEN", "DEFAULT_PROFILE",
                         "make_dataloader", "peak_flops", "time_budget", "token_budget", "PrepareError",
                         "CacheNotReadyError", "HandOverError"})
# The harness's budgets, and arithmetic that makes a number larger: `token_budget() * 3`, `budget += 60`.
BUDGET_FUNCTIONS = frozenset({"prepare.time_budget", "prepare.token_budget"})
GROWING_OPERATORS = (ast.Mult, ast.Add, ast.Pow, ast.LShift)
# The evaluation's entry points: the harness's evaluate_bpb, and hand_over (the model leaves for the trusted
# evaluator). The starting script calls one of them once; another call, or a changed one, is a finding.
EVAL_IDENTIFIERS = frozenset({"evaluate_bpb", "EVAL_TOKENS", "hand_over", "EVAL_BATCH_SIZE"})
# Statements that touch the result are the evaluation's business.
EVAL_LOCALS = frozenset({"val_bpb"})
# Where the harness's evaluate_bpb asks the model for its own loss (model(x, y, reduction="none")), what the
# model does in evaluation is the number: statements on the per-token loss mode, a model that behaves
# differently in eval mode or without gradients, and overrides of eval/train are findings. A script that
# hands its model over to a trusted evaluator (which computes the loss from logits itself) may do these.
LOSS_LOCALS = frozenset({"reduction"})
EVAL_MODE_IDENTIFIERS = frozenset({"is_grad_enabled", "is_inference_mode_enabled", "is_inference", "training"})
EVAL_METHODS = frozenset({"eval", "train", "__call__", "__getattr__", "__getattribute__", "__setattr__"})

ENV_NAMES = frozenset({"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"})
OS_ALLOWED = frozenset({"path", "sep", "linesep", "name", "cpu_count", "getpid", "_exit", "fspath", "PathLike",
                        "urandom", "sched_getaffinity", "curdir", "pardir", "extsep", "altsep", "pathsep"})
OS_PROCESS = frozenset({"system", "popen", "fork", "forkpty", "kill", "killpg", "setsid", "setpgid", "setpgrp",
                        "nice", "abort", "wait", "waitpid", "setuid", "setgid", "register_at_fork"})
SYS_ALLOWED = frozenset({"exit", "stdout", "stderr", "argv", "version", "version_info", "platform", "float_info",
                         "maxsize", "byteorder", "getrecursionlimit", "setrecursionlimit", "executable",
                         "flags", "int_info", "hexversion", "implementation", "getsizeof", "exc_info"})
# Functions of third-party modules that read or write files, or load code.
QUALIFIED_RULES: dict[str, str] = {
    **dict.fromkeys(("torch.load", "torch.save", "numpy.load", "numpy.save", "numpy.savez",
                     "numpy.savez_compressed", "numpy.fromfile", "numpy.memmap", "numpy.loadtxt",
                     "numpy.genfromtxt", "numpy.lib.format.open_memmap", "io.open", "io.FileIO",
                     "torch.from_file", "json.load", "json.dump"), FILES),
    **dict.fromkeys(("torch.utils.cpp_extension", "torch.ops.load_library", "torch.classes.load_library",
                     "torch.jit.load", "torch.package", "torch.export.load"), DYNAMIC),
    "torch.hub": NETWORK,
    "torch.multiprocessing": PROCESSES,
    "torch.distributed": PROCESSES,
}
# Methods that read, write or locate files whatever they are called on (a Path, an array, a file).
FILE_METHODS = frozenset({"write_text", "write_bytes", "read_text", "read_bytes", "unlink", "rename", "symlink_to",
                          "hardlink_to", "link_to", "chmod", "lchmod", "touch", "rmdir", "mkdir", "fromfile",
                          "tofile", "memmap", "iterdir", "glob", "rglob", "expanduser", "home", "cwd",
                          "read_parquet", "read_table", "ParquetFile"})
# Builtins that run code, reach namespaces or open files; rebinding one of these names is itself a finding.
BUILTIN_RULES = {
    "exec": DYNAMIC, "eval": DYNAMIC, "compile": DYNAMIC, "__import__": DYNAMIC, "breakpoint": DYNAMIC,
    "globals": INTROSPECTION, "locals": INTROSPECTION, "vars": INTROSPECTION, "__builtins__": INTROSPECTION,
    "__loader__": INTROSPECTION, "__spec__": INTROSPECTION, "open": FILES, "__file__": FILES,
    "chr": OBFUSCATION,
}
ATTRIBUTE_BUILTINS = frozenset({"getattr", "setattr", "delattr", "hasattr"})
# Attributes that lead from any object to code, namespaces and frames.
DUNDER_INTERNALS = frozenset({
    "__globals__", "__code__", "__closure__", "__dict__", "__builtins__", "__subclasses__", "__bases__", "__mro__",
    "__defaults__", "__kwdefaults__", "__loader__", "__spec__", "__import__", "__getattribute__", "__setattr__",
    "__delattr__", "__self__", "__func__", "__wrapped__", "__reduce__", "__reduce_ex__", "__init_subclass__",
    "f_globals", "f_locals", "f_back", "f_builtins", "f_code", "gi_frame", "cr_frame", "tb_frame", "co_code",
    "co_consts", "__traceback__",
})
# Where a trial may set module attributes: torch's switches and compiler configs.
CONFIG_PREFIXES = ("torch.backends.", "torch._dynamo.config.", "torch._inductor.config.", "torch._functorch.config.",
                   "torch.fx.experimental.", "torch.jit._state.")

_EVAL_TEXT = re.compile(r"evaluate_bpb|val_bpb|hand_over|(?<![a-z])eval(?:uate|_tokens|_record|_seconds)?(?![a-z])", re.I)
_ENV_TEXT = re.compile(r"autoresearch_|torchinductor_cache_dir|triton_cache_dir", re.I)
_DATA_TEXT = re.compile(r"(?<![a-z])val(?![a-z])|validation|(?<![a-z])audit|token_bytes|manifest|\.parquet\b|"
                        r"tokenizer\.json|\.bin\b|\.npy\b", re.I)
_PATH_TEXT = re.compile(r"^(?:/[A-Za-z_.]|~(?:[/\\]|$)|\.\.(?:[/\\]|$))|[/\\]\.\.(?:[/\\]|$)|(?<![a-z])\.git\b|"
                        r"journals|ledger|results\.tsv|sqlite|transcript\.jsonl|/proc/|/dev/|\.cache\b", re.I)
_PATH_INSIDE = re.compile(r"[/\\]\.\.(?:[/\\]|$)|(?<![a-z])\.git\b|journals|ledger|results\.tsv|sqlite|"
                          r"transcript\.jsonl|/proc/|/dev/|\.cache\b", re.I)
MAX_FOLD_CHARS = 10_000


@dataclass(frozen=True)
class Finding:
    rule: str
    line: int
    segment: str  # the offending source, on one line, at most SEGMENT_CHARS
    key: str  # what is compared with the parent: the rule and the normalised statement

    def text(self) -> str:
        return f"{self.rule}: {WHY[self.rule]} (line {self.line}): `{self.segment}`"


# ---- the public API ----------------------------------------------------------------------------------------
def scan_source(new_text: str, old_text: str = "") -> list[str]:
    """Findings in the new training script that its parent did not already have, one sentence each.

    A new script that does not parse is a finding (a trial that runs anyway must not go unchecked; one that
    crashes on it is a crash whatever this says). An old script that does not parse counts as empty.
    """
    try:
        new = _scan_tree(ast.parse(new_text), new_text)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        line = getattr(exc, "lineno", None) or 0
        return [Finding(UNPARSED, line, _one_line(f"{type(exc).__name__}: {exc}"), UNPARSED).text()]
    try:
        old = _scan_tree(ast.parse(old_text), old_text) if old_text.strip() else []
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        old = []
    return [f.text() for f in _new_findings(new, old)]


def scan_diff(diff: str) -> list[str]:
    """Findings for the added lines of a unified diff, for callers that have no whole scripts.

    The added lines are parsed as fragments (each run of added lines as one block where it parses, else
    line by line); a line that is no statement on its own is read for the names it mentions.
    """
    findings: list[Finding] = []
    for block in _added_blocks(diff):
        try:
            findings += _scan_fragment(block)
        except (RecursionError, MemoryError) as exc:
            findings.append(Finding(UNPARSED, 0, _one_line(f"{type(exc).__name__}: {exc}"), UNPARSED))
    seen: set[tuple[str, str]] = set()
    out = []
    for f in findings:
        if (f.rule, f.segment) not in seen:
            seen.add((f.rule, f.segment))
            out.append(f.text())
    return out


def _new_findings(new: list[Finding], old: list[Finding]) -> list[Finding]:
    """The findings of `new` beyond the multiset of `old`'s keys (the last occurrences count as the new ones)."""
    before = Counter(f.key for f in old)
    seen: Counter[str] = Counter()
    kept: list[Finding] = []
    for f in new:
        seen[f.key] += 1
        if seen[f.key] > before[f.key]:
            kept.append(f)
    return kept


# ---- diffs and fragments ------------------------------------------------------------------------------------
def _added_blocks(diff: str) -> list[list[str]]:
    blocks: list[list[str]] = []
    current: list[str] = []
    for line in diff.splitlines():
        if line.startswith("+") and not line.startswith("+++"):
            current.append(line[1:])
            continue
        if current:
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    return blocks


def _scan_fragment(lines: list[str]) -> list[Finding]:
    text = textwrap.dedent("\n".join(lines))
    tree = _parse_fragment(text)
    if tree is not None:
        return _scan_tree(tree, text, fragment=True)
    out: list[Finding] = []
    for line in lines:
        code = line.strip()
        if not code:
            continue
        for candidate in (code, code + " pass", code.rstrip(":,([{\\") or "pass", f"({code.rstrip(':,')})"):
            tree = _parse_fragment(candidate)
            if tree is not None:
                out += _scan_tree(tree, candidate, fragment=True)
                break
        else:
            out += _scan_words(code)
    return out


def _parse_fragment(text: str) -> ast.Module | None:
    try:
        return ast.parse(text)
    except (SyntaxError, ValueError):
        return None


def _scan_words(code: str) -> list[Finding]:
    """A line that does not parse on its own: its strings and names, outside comments."""
    words: list[str] = []
    strings: list[str] = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(code).readline):
            if tok.type == tokenize.NAME:
                words.append(tok.string)
            elif tok.type == tokenize.STRING:
                strings.append(tok.string)
    except (tokenize.TokenError, SyntaxError):
        words = re.findall(r"[A-Za-z_]\w*", code)
    rules = [r for w in words if (r := _word_rule(w))]
    for s in strings:
        try:
            value = ast.literal_eval(s)
        except (ValueError, SyntaxError):
            continue
        if isinstance(value, str | bytes) and (r := _text_rule(_as_text(value))):
            rules.append(r)
    segment = _one_line(code)
    return [Finding(r, 0, segment, f"{r}\0{segment}") for r in dict.fromkeys(rules)]


def _word_rule(word: str) -> str | None:
    if word in FORBIDDEN_MODULES:
        return FORBIDDEN_MODULES[word]
    if word in EVAL_IDENTIFIERS:
        return EVALUATION
    if word in ENV_NAMES:
        return ENVIRONMENT
    if word in BUILTIN_RULES and word != "compile":
        return BUILTIN_RULES[word]
    if word in DUNDER_INTERNALS:
        return INTROSPECTION
    return None


# ---- the scanner ---------------------------------------------------------------------------------------------
# Names a fragment of a diff may use without importing them (the script imported them above the hunk).
FRAGMENT_ALIASES = {"os": "os", "sys": "sys", "time": "time", "prepare": "prepare", "torch": "torch",
                    "np": "numpy", "numpy": "numpy", "F": "torch.nn.functional", "nn": "torch.nn",
                    "subprocess": "subprocess", "shutil": "shutil", "socket": "socket", "json": "json",
                    "evaluate_bpb": "prepare.evaluate_bpb", "make_dataloader": "prepare.make_dataloader",
                    "time_budget": "prepare.time_budget", "token_budget": "prepare.token_budget",
                    "importlib": "importlib", "builtins": "builtins"}
SIMPLE_SELF = frozenset({"self", "cls"})


def _scan_tree(tree: ast.Module, source: str, fragment: bool = False) -> list[Finding]:
    scanner = _Scanner(tree, source, fragment)
    scanner.run()
    return scanner.findings


class _Scanner:
    """One pass over a module's tree; `findings` in source order, one per rule and statement."""

    def __init__(self, tree: ast.Module, source: str, fragment: bool) -> None:
        self.tree = tree
        self._lines = re.findall(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$", source)  # lines as the parser counts them
        self.parents: dict[ast.AST, ast.AST] = {}
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                self.parents[child] = node
        # A module's name used without an import (it would come from somewhere hidden) counts as the module,
        # unless the script binds that name itself (a variable called `signal` is no module).
        implicit = {name: name for name in (*FORBIDDEN_MODULES, *HARNESS_MODULES, "os", "sys", "time")}
        if fragment:
            implicit.update(FRAGMENT_ALIASES)
        bound = _bound_names(tree)
        self.aliases: dict[str, str] = {k: v for k, v in implicit.items() if k not in bound}
        self.env: dict[str, str] = {}
        self.findings: list[Finding] = []
        # Whether the model computes the loss the evaluation reads (the script calls evaluate_bpb).
        # A fragment of a diff cannot tell: it is read as if it did.
        self.loss_evaluated = fragment or _mentions(tree, "evaluate_bpb")
        self._seen: set[tuple[str, int, str]] = set()
        self._covered: set[int] = set()
        self.budget_names: set[str] = set()

    # -- setup ---------------------------------------------------------------------------------------------
    def run(self) -> None:
        self._collect_aliases()
        self.env = _constant_env(self.tree)
        # Names bound to a budget anywhere (`budget = time_budget()`), judged wherever the name is used.
        self.budget_names = {node.targets[0].id for node in ast.walk(self.tree)
                             if isinstance(node, ast.Assign) and len(node.targets) == 1
                             and isinstance(node.targets[0], ast.Name) and self._is_budget(node.value)}
        for node in ast.walk(self.tree):
            self._visit(node)
        self.findings.sort(key=lambda f: f.line)

    def _collect_aliases(self) -> None:
        """Imported names and plain re-bindings of them (`o = os`), wherever they happen."""
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname:
                        self.aliases[alias.asname] = alias.name
                    else:
                        top = alias.name.split(".")[0]
                        self.aliases[top] = top
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    if alias.name != "*":
                        self.aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        for _ in range(3):
            for node in ast.walk(self.tree):
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    qualified = self.qualify(node.value)
                    if qualified:
                        self.aliases[node.targets[0].id] = qualified

    def qualify(self, node: ast.AST) -> str | None:
        """The dotted name an expression stands for, when it is an imported name (or an attribute of one)."""
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self.qualify(node.value)
            return f"{base}.{node.attr}" if base else None
        if isinstance(node, ast.Call) and _is_builtin_call(node, "getattr", self.aliases) and len(node.args) >= 2:
            base = self.qualify(node.args[0])
            name = _fold(node.args[1], self.env)
            return f"{base}.{name}" if base and name else None
        return None

    # -- reporting -----------------------------------------------------------------------------------------
    def report(self, rule: str, node: ast.AST, key: str | None = None) -> None:
        """A finding at `node`'s statement; `key` (else the normalised statement) is what the parent is
        compared on, and is shown instead of the source when given."""
        context = self._context(node)
        marker = (rule, id(context), key or "")
        if marker in self._seen:
            return
        self._seen.add(marker)
        segment = key or self._segment(context) or _unparse(context)
        line = getattr(context, "lineno", None) or getattr(node, "lineno", 0)
        self.findings.append(Finding(rule, line, _one_line(segment), f"{rule}\0{key or _unparse(context)}"))

    def _segment(self, node: ast.AST) -> str | None:
        """ast.get_source_segment, without splitting the whole source again for every finding."""
        start, end = getattr(node, "lineno", None), getattr(node, "end_lineno", None)
        col, end_col = getattr(node, "col_offset", None), getattr(node, "end_col_offset", None)
        if start is None or end is None or col is None or end_col is None or end > len(self._lines):
            return None
        first, last = self._lines[start - 1].encode(), self._lines[end - 1].encode()
        if start == end:
            return first[col:end_col].decode(errors="replace")
        middle = "".join(self._lines[start:end - 1])
        return first[col:].decode(errors="replace") + middle + last[:end_col].decode(errors="replace")

    def _context(self, node: ast.AST) -> ast.AST:
        """The statement a node belongs to; for a compound statement, only its header part holding the node."""
        child = node
        parent = self.parents.get(child)
        while parent is not None and not isinstance(child, ast.stmt | ast.excepthandler):
            if isinstance(parent, ast.stmt | ast.excepthandler) and _is_compound(parent):
                return child
            child, parent = parent, self.parents.get(parent)
        return child

    # -- the visit -----------------------------------------------------------------------------------------
    def _is_budget(self, node: ast.AST) -> bool:
        """A call of the harness's budget (`time_budget()`, `prepare.token_budget()`)."""
        return isinstance(node, ast.Call) and self.qualify(node.func) in BUDGET_FUNCTIONS

    def _budget_grown(self, node: ast.BinOp | ast.AugAssign) -> None:
        """A budget made larger by arithmetic: on the harness's call itself (`token_budget() * 3`), or a name
        bound to a budget bound again to more (`budget *= 3`, `budget_tokens = budget_tokens + 10**6`)."""
        if isinstance(node, ast.AugAssign):
            grown = isinstance(node.target, ast.Name) and node.target.id in self.budget_names \
                and _grows(node.op, node.value)
        else:
            parent = self.parents.get(node)
            rebound = isinstance(parent, ast.Assign) and parent.value is node and any(
                isinstance(t, ast.Name) and t.id in self.budget_names for t in parent.targets)
            grown = any((self._is_budget(x) or (rebound and isinstance(x, ast.Name)
                                                and x.id in self.budget_names)) and _grows(node.op, other)
                        for x, other in ((node.left, node.right), (node.right, node.left)))
        if grown:
            self.report(BUDGET, node)

    def _visit(self, node: ast.AST) -> None:
        if isinstance(node, ast.BinOp | ast.AugAssign):
            self._budget_grown(node)
        if isinstance(node, ast.Import | ast.ImportFrom):
            self._import(node)
        elif isinstance(node, ast.Call):
            self._call(node)
        elif isinstance(node, ast.Attribute):
            self._attribute(node)
        elif isinstance(node, ast.Name):
            self._name(node)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            self._function(node)
        elif isinstance(node, ast.arg) and (node.arg in BUILTIN_RULES or node.arg in ATTRIBUTE_BUILTINS):
            self.report(DYNAMIC, node)
        if isinstance(node, ast.expr) and id(node) not in self._covered:
            self._text(node)

    def _import(self, node: ast.Import | ast.ImportFrom) -> None:
        if isinstance(node, ast.ImportFrom) and node.level:
            self.report(HARNESS, node)  # a relative import reaches files beside the script
            return
        for alias in node.names:
            name = alias.name if isinstance(node, ast.Import) else f"{node.module}.{alias.name}"
            rule = _qualified_rule(name)
            if alias.name == "*":
                rule = rule or (HARNESS if node.module in HARNESS_MODULES else DYNAMIC)
            if rule:
                shown = f"import {alias.name}" if isinstance(node, ast.Import) else \
                    f"from {node.module} import {alias.name}"
                self.report(rule, node, key=shown + (f" as {alias.asname}" if alias.asname else ""))

    def _call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name) and func.id in ATTRIBUTE_BUILTINS and func.id not in self.aliases:
            self._attribute_builtin(node, func.id)
        qualified = self.qualify(func)
        if qualified and qualified.split(".")[0] in HARNESS_MODULES and qualified.endswith(".make_dataloader"):
            self._dataloader(node)
        if isinstance(func, ast.Attribute) and func.attr in FILE_METHODS:
            self.report(FILES, node)

    def _attribute_builtin(self, node: ast.Call, name: str) -> None:
        """getattr/setattr/delattr/hasattr: by a computed name, or into a module."""
        if len(node.args) < 2:
            self.report(DYNAMIC, node)
            return
        receiver, attr = node.args[0], node.args[1]
        literal = isinstance(attr, ast.Constant) and isinstance(attr.value, str)
        on_self = isinstance(receiver, ast.Name) and receiver.id in SIMPLE_SELF and name != "delattr"
        if not literal and not on_self:
            self.report(DYNAMIC, node)
        folded = _fold(attr, self.env)
        base = self.qualify(receiver)
        if base and folded:
            target = f"{base}.{folded}"
            if name in ("setattr", "delattr"):
                self._store(target, node)
            elif (rule := _qualified_rule(target)) is not None:
                self.report(rule, node)

    def _dataloader(self, node: ast.Call) -> None:
        """Only the "train" split of the run's own cache (no other cache, no splat that hides either)."""
        split = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "split"), None)
        if split is None or not (isinstance(split, ast.Constant) and split.value == "train"):
            self.report(VALIDATION, node)
        elif len(node.args) > 5 or any(k.arg in ("cache", None) for k in node.keywords) or \
                any(isinstance(a, ast.Starred) for a in node.args):
            self.report(VALIDATION, node)

    def _attribute(self, node: ast.Attribute) -> None:
        stored = isinstance(node.ctx, ast.Store | ast.Del)
        if node.attr in DUNDER_INTERNALS or (stored and node.attr == "__class__"):
            self.report(INTROSPECTION, node)
        if node.attr in EVAL_IDENTIFIERS:
            self.report(EVALUATION, node)
        elif self.loss_evaluated and (node.attr in EVAL_MODE_IDENTIFIERS or (stored and node.attr in EVAL_METHODS)):
            self.report(EVALUATION, node)  # behaves differently in evaluation mode, or replaces model.eval
        qualified = self.qualify(node)
        if qualified is None:
            return
        if stored:
            self._store(qualified, node)
            return
        if (rule := _qualified_rule(qualified)) is not None:
            self.report(rule, node)
        self._loader_as_value(qualified, node)

    def _loader_as_value(self, qualified: str, node: ast.AST) -> None:
        """The harness's dataloader handed around (`dl = make_dataloader`): its split is no longer visible."""
        if qualified.split(".")[0] in HARNESS_MODULES and qualified.endswith(".make_dataloader") \
                and not self._is_call_target(node):
            self.report(VALIDATION, node)

    def _store(self, qualified: str, node: ast.AST) -> None:
        """An assignment into an attribute of an imported module (or of something imported from one)."""
        top = qualified.split(".")[0]
        if top == "time":
            self.report(TIMING, node)
        elif top in HARNESS_MODULES:
            self.report(HARNESS, node)
        elif top in ("os", "sys") and qualified.split(".")[1:2] == ["environ"]:
            self.report(ENVIRONMENT, node)
        elif not qualified.startswith(CONFIG_PREFIXES):
            self.report(MONKEYPATCH, node)

    def _name(self, node: ast.Name) -> None:
        name = node.id
        if name in EVAL_IDENTIFIERS or name in EVAL_LOCALS or \
                (self.loss_evaluated and (name in LOSS_LOCALS or name in EVAL_MODE_IDENTIFIERS)):
            self.report(EVALUATION, node)
        if name in self.aliases:
            self._imported_name(node, self.aliases[name])
            return
        if name in BUILTIN_RULES:
            self.report(DYNAMIC if isinstance(node.ctx, ast.Store | ast.Del) else BUILTIN_RULES[name], node)
        elif name in ATTRIBUTE_BUILTINS and not self._is_call_target(node):
            self.report(DYNAMIC, node)  # getattr passed around as a value

    def _imported_name(self, node: ast.Name, qualified: str) -> None:
        if isinstance(node.ctx, ast.Store | ast.Del):
            return
        if (rule := _qualified_rule(qualified)) is not None:
            self.report(rule, node)
        self._loader_as_value(qualified, node)
        parent = self.parents.get(node)
        bare_module = "." not in qualified and not (isinstance(parent, ast.Attribute) and parent.value is node)
        if bare_module and (qualified in HARNESS_MODULES or qualified in ("os", "sys", "time")):
            # A module handed around as a value (`m = os`, `f(prepare)`) escapes every name-based check.
            self.report(HARNESS if qualified in HARNESS_MODULES else INTROSPECTION, node)

    def _is_call_target(self, node: ast.AST) -> bool:
        parent = self.parents.get(node)
        return isinstance(parent, ast.Call) and parent.func is node

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        if node.name in BUILTIN_RULES or node.name in ATTRIBUTE_BUILTINS:
            self.report(DYNAMIC, node, key=f"def {node.name}")
        if self.loss_evaluated and node.name in EVAL_METHODS and isinstance(self.parents.get(node), ast.ClassDef):
            self.report(EVALUATION, node, key=f"def {node.name}")

    def _text(self, node: ast.expr) -> None:
        """A string expression (folded where it can be): what it names. Docstrings say what they like."""
        if isinstance(node, ast.Name):
            return  # a constant's definition is where its text is judged
        parent = self.parents.get(node)
        if isinstance(parent, ast.Expr) and isinstance(node, ast.Constant):
            return  # a docstring or a bare string statement does nothing
        text = _fold(node, self.env)
        if text is None:
            return
        for child in ast.walk(node):
            self._covered.add(id(child))
        rule = _text_rule(text, starts=self._starts_text(node, parent))
        if rule:
            self.report(rule, node)

    @staticmethod
    def _starts_text(node: ast.expr, parent: ast.AST | None) -> bool:
        """Whether the text is the start of whatever it is part of (`f"{n}/step"` names no path "/step")."""
        if isinstance(parent, ast.JoinedStr):
            return parent.values[0] is node
        if isinstance(parent, ast.BinOp) and isinstance(parent.op, ast.Add | ast.Div):
            return parent.left is node
        return True


# ---- names and text -------------------------------------------------------------------------------------------
# Modules that other modules re-export as attributes (`torch.os`, `os.path.os`): reached mid-chain, they are
# judged as if imported.
REEXPORTED_MODULES = frozenset({"os", "sys", "builtins", "subprocess", "importlib", "socket", "shutil", "pickle",
                                "ctypes", "prepare", "corpus"})


def _qualified_rule(qualified: str) -> str | None:
    """The rule a dotted name (an import, an attribute of an imported name) falls under, if any."""
    parts = qualified.split(".")
    for i in range(1, len(parts)):
        if parts[i] in REEXPORTED_MODULES and (rule := _module_rule(parts[i:])) is not None:
            return rule
    return _module_rule(parts)


def _module_rule(parts: list[str]) -> str | None:
    qualified = ".".join(parts)
    top, second = parts[0], (parts[1] if len(parts) > 1 else None)
    if top in FORBIDDEN_MODULES:
        return FORBIDDEN_MODULES[top]
    if parts[-1] in EVAL_IDENTIFIERS:
        return EVALUATION
    if top in HARNESS_MODULES:
        return None if second is None or second in PREPARE_API else HARNESS
    for prefix, rule in QUALIFIED_RULES.items():
        if qualified == prefix or qualified.startswith(prefix + "."):
            return rule
    if top == "os":
        return _os_rule(second)
    if top == "sys" and second is not None and second not in SYS_ALLOWED:
        return INTROSPECTION
    return None


def _os_rule(name: str | None) -> str | None:
    if name is None or name in OS_ALLOWED:
        return None
    if name in ENV_NAMES:
        return ENVIRONMENT
    if name in OS_PROCESS or name.startswith(("exec", "spawn", "posix_spawn")):
        return PROCESSES
    return FILES


def _text_rule(text: str, starts: bool = True) -> str | None:
    """What a text names; `starts`: it begins a string (else an absolute-looking start is no path)."""
    if _EVAL_TEXT.search(text):
        return EVALUATION
    if _ENV_TEXT.search(text):
        return ENVIRONMENT
    if _DATA_TEXT.search(text):
        return VALIDATION
    if (_PATH_TEXT if starts else _PATH_INSIDE).search(text):
        return FILES
    return None


def _mentions(tree: ast.Module, identifier: str) -> bool:
    """Whether a name, an attribute or an import of the module is `identifier`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == identifier or \
                isinstance(node, ast.Attribute) and node.attr == identifier or \
                isinstance(node, ast.alias) and node.name.split(".")[-1] == identifier:
            return True
    return False


def _grows(op: ast.operator, other: ast.expr) -> bool:
    """Whether `budget <op> other` can be more than the budget (a constant factor of at most 1 cannot)."""
    if not isinstance(op, GROWING_OPERATORS):
        return False
    constant = isinstance(other, ast.Constant) and type(other.value) in (int, float)
    return not (isinstance(op, ast.Mult) and constant and other.value <= 1)


def _bound_names(tree: ast.Module) -> set[str]:
    """Every name the module binds other than by an import: assignments, loops, parameters, definitions."""
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            bound.add(node.id)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return bound


def _is_builtin_call(node: ast.Call, name: str, aliases: dict[str, str]) -> bool:
    return isinstance(node.func, ast.Name) and node.func.id == name and name not in aliases


def _is_compound(stmt: ast.AST) -> bool:
    return any(isinstance(getattr(stmt, f, None), list) and getattr(stmt, f) and
               isinstance(getattr(stmt, f)[0], ast.stmt) for f in ("body", "orelse", "finalbody", "handlers"))


def _unparse(node: ast.AST) -> str:
    try:
        return ast.unparse(node)
    except Exception:  # noqa: BLE001 - a node unparse does not know (a bare `arguments`, a handler)
        return ast.dump(node)


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= SEGMENT_CHARS else flat[: SEGMENT_CHARS - 1] + "…"


def _as_text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


# ---- folding strings that can be computed statically ---------------------------------------------------------
def _constant_env(tree: ast.Module) -> dict[str, str]:
    """Names bound exactly once, to a string that folds: `A = "va"; B = A + "l"` gives B = "val"."""
    assigned: Counter[str] = Counter()
    values: dict[str, ast.expr] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    assigned[target.id] += 1
                    values[target.id] = node.value
        elif isinstance(node, ast.AnnAssign | ast.AugAssign) and isinstance(node.target, ast.Name):
            assigned[node.target.id] += 2  # an augmented or annotated binding: not a plain constant
    env: dict[str, str] = {}
    for _ in range(4):
        for name, value in values.items():
            if assigned[name] == 1 and name not in env:
                folded = _fold(value, env)
                if folded is not None:
                    env[name] = folded
    return env


def _fold(node: ast.AST, env: dict[str, str], depth: int = 0) -> str | None:
    """The text an expression always evaluates to, when that can be known without running it."""
    if depth > 30:
        return None
    if isinstance(node, ast.Constant):
        return _as_text(node.value) if isinstance(node.value, str | bytes) else None
    if isinstance(node, ast.Name):
        return env.get(node.id)
    if isinstance(node, ast.JoinedStr):
        return _fold_joined(node, env, depth)
    if isinstance(node, ast.BinOp):
        return _fold_binop(node, env, depth)
    if isinstance(node, ast.Call):
        return _fold_call(node, env, depth)
    if isinstance(node, ast.Subscript):
        return _fold_subscript(node, env, depth)
    return None


def _fold_joined(node: ast.JoinedStr, env: dict[str, str], depth: int) -> str | None:
    parts = []
    for value in node.values:
        if isinstance(value, ast.FormattedValue):
            if value.format_spec is not None:
                return None
            part = _fold(value.value, env, depth + 1)
        else:
            part = _fold(value, env, depth + 1)
        if part is None:
            return None
        parts.append(part)
    return "".join(parts)


def _fold_binop(node: ast.BinOp, env: dict[str, str], depth: int) -> str | None:
    left = _fold(node.left, env, depth + 1)
    if left is None:
        return None
    if isinstance(node.op, ast.Add):
        right = _fold(node.right, env, depth + 1)
        return None if right is None else _capped(left + right)
    if isinstance(node.op, ast.Mult) and isinstance(node.right, ast.Constant) and isinstance(node.right.value, int):
        return _capped(left * max(0, min(node.right.value, MAX_FOLD_CHARS)))
    if isinstance(node.op, ast.Mod):
        items = node.right.elts if isinstance(node.right, ast.Tuple) else [node.right]
        args = [_fold(x, env, depth + 1) for x in items]
        if any(a is None for a in args):
            return None
        try:
            return _capped(left % tuple(args))
        except (TypeError, ValueError):
            return None
    return None


_STR_METHODS = frozenset({"upper", "lower", "strip", "lstrip", "rstrip", "title", "capitalize", "casefold",
                          "swapcase", "decode", "encode"})


def _fold_call(node: ast.Call, env: dict[str, str], depth: int) -> str | None:
    func = node.func
    args = [_fold(a, env, depth + 1) for a in node.args]
    if isinstance(func, ast.Name):
        return _fold_builtin(func.id, node, args)
    if not isinstance(func, ast.Attribute):
        return None
    receiver = _fold(func.value, env, depth + 1)
    if receiver is None:
        return None
    if func.attr in _STR_METHODS:
        return receiver.lower() if func.attr in ("lower", "casefold") else \
            receiver.upper() if func.attr == "upper" else receiver
    if func.attr == "replace" and len(args) >= 2 and None not in args[:2]:
        return _capped(receiver.replace(str(args[0]), str(args[1])))
    if func.attr == "join" and len(node.args) == 1:
        items = _fold_items(node.args[0], env, depth)
        return None if items is None else _capped(receiver.join(items))
    if func.attr == "format" and None not in args and not node.keywords:
        try:
            return _capped(receiver.format(*args))
        except (IndexError, KeyError, ValueError):
            return None
    return None


def _fold_builtin(name: str, node: ast.Call, args: list[str | None]) -> str | None:
    if name == "str" and len(args) == 1:
        return args[0]
    if name == "chr" and len(node.args) == 1 and isinstance(node.args[0], ast.Constant):
        value = node.args[0].value
        return chr(value) if isinstance(value, int) and 0 <= value < 0x110000 else None
    if name in ("bytes", "bytearray") and len(node.args) == 1 and isinstance(node.args[0], ast.List | ast.Tuple):
        codes = [e.value for e in node.args[0].elts if isinstance(e, ast.Constant) and isinstance(e.value, int)]
        if len(codes) == len(node.args[0].elts) and all(0 <= c < 256 for c in codes):
            return bytes(codes).decode("latin-1")
    return None


def _fold_items(node: ast.AST, env: dict[str, str], depth: int) -> list[str] | None:
    if isinstance(node, ast.List | ast.Tuple | ast.Set):
        items = [_fold(e, env, depth + 1) for e in node.elts]
        return None if any(i is None for i in items) else [str(i) for i in items]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("reversed", "list") \
            and len(node.args) == 1:
        inner = _fold_items(node.args[0], env, depth + 1)
        if inner is None:
            return None
        return inner[::-1] if node.func.id == "reversed" else inner
    text = _fold(node, env, depth + 1)
    return None if text is None else list(text)


def _fold_subscript(node: ast.Subscript, env: dict[str, str], depth: int) -> str | None:
    value = _fold(node.value, env, depth + 1)
    if value is None:
        return None
    index = node.slice
    if isinstance(index, ast.Slice):
        bounds = [_int_constant(p) for p in (index.lower, index.upper, index.step)]
        if any(b is False for b in bounds):
            return None
        lower, upper, step = (b if b is not False else None for b in bounds)
        try:
            return value[slice(lower, upper, step)]  # type: ignore[misc]
        except ValueError:
            return None
    position = _int_constant(index)
    if isinstance(position, int) and -len(value) <= position < len(value):
        return value[position]
    return None


def _int_constant(node: ast.AST | None) -> int | None | bool:
    """An int constant, None for an absent part, False for anything else."""
    if node is None:
        return None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _int_constant(node.operand)
        return -inner if isinstance(inner, int) and not isinstance(inner, bool) else False
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return node.value
    return False


def _capped(text: str) -> str | None:
    return text if len(text) <= MAX_FOLD_CHARS else None


def finding_rules(findings: Iterable[str]) -> list[str]:
    """The rule names of findings (their text up to the first colon), in order, each once."""
    return list(dict.fromkeys(f.split(":", 1)[0] for f in findings))


# ---- the evaluation's inputs ---------------------------------------------------------------------------------
def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 1 MiB chunks (a cache's token files are gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def eval_fingerprint(cache_dir: Path) -> dict[str, str] | None:
    """sha256 of each evaluation input of a prepared cache; None when there is no manifest (upstream)."""
    manifest_path = Path(cache_dir) / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return None
    out = {}
    for key in EVAL_MANIFEST_KEYS:
        name = manifest.get(key)
        if not isinstance(name, str):
            continue
        path = Path(cache_dir) / name
        out[name] = file_sha256(path) if path.is_file() else "<missing>"
    return out or None


def fingerprint_changes(expected: dict[str, str], cache_dir: Path) -> list[str]:
    """Which evaluation inputs differ from the fingerprint taken when the run started."""
    changed = []
    for name, sha in expected.items():
        path = Path(cache_dir) / name
        actual = file_sha256(path) if path.is_file() else "<missing>"
        if actual != sha:
            changed.append(name)
    return changed
