"""A small scanner for secret values in the repository's files.

Two kinds of findings: well-known token formats (Hugging Face, GitHub, AWS, Slack, private key
blocks) anywhere, and literal values given to secret-looking keys (``PASSWORD=``,
``token:``, the ``data`` of a Kubernetes Secret, credentials inside a URI) in configuration
files. Placeholders (empty values, ``<password>``, ``PASSWORD``, ``${VAR}``, ``$(VAR)``,
``...``) are not findings.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

TOKEN_PATTERNS = {
    "Hugging Face token": re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),
    "GitHub token": re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,})\b"),
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "Slack token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b"),
    "private key": re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----"),
}

# scheme://USER:PASSWORD@host, in any file.
URI_CREDENTIALS = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s:/@'\"]+:([^\s@/'\"]+)@")

# KEY=value / key: value where the key names a secret; only in configuration files.
SECRET_ASSIGNMENT = re.compile(
    r"""^\s*-?\s*["']?(?P<key>[A-Za-z0-9_.-]*(?:password|passwd|secret|token|api[_-]?key
    |access[_-]?key|private[_-]?key|credentials?)[A-Za-z0-9_.-]*)["']?\s*[:=]\s*(?P<value>.*)$""",
    re.IGNORECASE | re.VERBOSE,
)
REFERENCE_KEY = re.compile(r"(?:name|ref|file|path|dir|mode|type)$", re.IGNORECASE)
CONFIG_SUFFIXES = {".env", ".example", ".yaml", ".yml", ".ini", ".cfg", ".conf", ".properties"}

PLACEHOLDER = re.compile(
    r"""^(?:
      | <[^>]*>                       # <password>
      | \$\{[^}]*\}|\$\([^)]*\)|\$\w+  # ${VAR}, $(VAR), $VAR
      | \.\.\.|…|%[a-z]|\{\w*\}            # ..., printf and format fields
      | [A-Z][A-Z0-9_]*               # PASSWORD, YOUR_TOKEN
      | (?i:x+|\*+|changeme|change-me|replace-?me|password|secret|token|null|none|~|true|false)
    )$""",
    re.VERBOSE,
)


def is_placeholder(value: str) -> bool:
    """Whether a value is empty or obviously stands for a secret rather than being one."""
    value = value.split(" #", 1)[0].strip().strip("\"'").strip()
    return bool(PLACEHOLDER.match(value))


def _kubernetes_secret_findings(text: str) -> list[str]:
    findings = []
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError:
        return findings
    for document in documents:
        if not isinstance(document, dict) or document.get("kind") != "Secret":
            continue
        name = (document.get("metadata") or {}).get("name", "?")
        for field in ("data", "stringData"):
            for key, value in (document.get(field) or {}).items():
                if value not in (None, ""):
                    findings.append(f"Secret {name!r} has a literal {field}.{key}")
    return findings


def scan_text(text: str, path: Path) -> list[str]:
    """The secret values found in a file's text, each as ``path:line: what``."""
    findings = []
    lines = text.splitlines()
    config = path.suffix in CONFIG_SUFFIXES or path.name.endswith(".env")
    for number, line in enumerate(lines, start=1):
        where = f"{path}:{number}"
        for what, pattern in TOKEN_PATTERNS.items():
            if pattern.search(line):
                findings.append(f"{where}: {what}")
        for match in URI_CREDENTIALS.finditer(line):
            if not is_placeholder(match.group(1)):
                findings.append(f"{where}: credentials inside a URI")
        if config and not line.lstrip().startswith("#"):
            assignment = SECRET_ASSIGNMENT.match(line)
            if assignment and not _is_reference(assignment.group("key"), assignment.group("value")):
                findings.append(f"{where}: literal value for {assignment.group('key')!r}")
    if path.suffix in {".yaml", ".yml"}:
        findings.extend(f"{path}: {finding}" for finding in _kubernetes_secret_findings(text))
    return findings


def _is_reference(key: str, value: str) -> bool:
    """Whether ``key: value`` points at a secret (or stands for one) rather than holding one.

    Keys such as ``secretName``, ``secretRef`` or ``token_file`` name where a secret lives;
    structured values (``{...}``, ``[...]``, block scalars) are scanned line by line anyway.
    """
    if REFERENCE_KEY.search(key):
        return True
    value = value.strip()
    return is_placeholder(value) or value.startswith(("{", "[", "|", ">", "&", "*"))


def repository_files(root: Path) -> list[Path]:
    """Tracked files plus untracked files that are not gitignored: what a commit can hold."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return sorted({root / name for name in listed.split("\0") if name and (root / name).is_file()})


def scan_files(paths: list[Path], root: Path) -> list[str]:
    """Findings in every text file of ``paths`` (binary files are skipped)."""
    findings = []
    for path in paths:
        content = path.read_bytes()
        if b"\0" in content[:8192]:
            continue
        text = content.decode("utf-8", errors="replace")
        findings.extend(scan_text(text, path.relative_to(root)))
    return findings
