#!/usr/bin/env python3
"""Turn the Dockerfile's builder stage into a shell script, for .ci/fresh-root.sh.

    .ci/dockerfile-builder.py CONTEXT_OUT [CONTEXT_SEEN] < Dockerfile > builder.sh

Copies the build context (the committed files of the current directory that
.dockerignore lets through, with Docker's matching rules for the patterns it
uses) into CONTEXT_OUT, and prints a script that runs the first stage's ARG,
ENV, WORKDIR, COPY and RUN instructions as written, in order, with COPY
reading from that context (at CONTEXT_SEEN when the script runs, as in a
chroot; CONTEXT_OUT by default). Anything else in the stage (COPY --from, ADD, a
heredoc RUN, ...) is an error, so that the check never silently skips a step.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path


def ignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        pattern = pattern.strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        rules.append((negate, re.compile(regex + "$")))
    return rules


def excluded(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent
    directories decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for negate, regex in rules:
        if any(regex.match(p) for p in prefixes):
            result = not negate
    return result


def instructions(text: str) -> list[tuple[str, str]]:
    out = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.endswith("\\"):
            line = line[:-1]
            while i < len(lines) and lines[i].lstrip().startswith("#"):
                i += 1
            if i < len(lines):
                line += lines[i]
                i += 1
        keyword, _, rest = line.strip().partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def main() -> None:
    context = Path(sys.argv[1])
    rules = ignore_rules(Path(".dockerignore").read_text())
    files = subprocess.run(["git", "ls-files", "-z"], capture_output=True, check=True, text=True).stdout
    for name in filter(None, files.split("\0")):
        if not excluded(name, rules):
            (context / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(name, context / name, follow_symlinks=False)

    seen = sys.argv[2] if len(sys.argv) > 2 else str(context)
    script = ["set -eu", f"context={shlex.quote(seen)}", "cd /"]
    froms = 0
    for keyword, rest in instructions(sys.stdin.read()):
        if keyword == "FROM":
            froms += 1
            if froms > 1:
                break
            script.append(f"echo '== Dockerfile: FROM {rest} (here: this root and the host toolchain)'")
            continue
        if keyword == "ARG":
            name, eq, value = rest.partition("=")
            if froms and eq:
                script.append(f"{name}={shlex.quote(value)}; export {name}")
            continue
        if froms == 0:
            raise SystemExit(f"dockerfile-builder: {keyword} before the first FROM is not supported")
        script.append(f"echo {shlex.quote('== Dockerfile: ' + keyword + ' ' + ' '.join(rest.split())[:100])}")
        if keyword == "WORKDIR":
            script.append(f"mkdir -p {rest} && cd {rest}")
        elif keyword == "ENV":
            name, _, value = rest.partition("=")
            script.append(f"export {name}={value}")
        elif keyword == "COPY":
            args = shlex.split(rest)
            if any(a.startswith("--") for a in args) or len(args) < 2:
                raise SystemExit(f"dockerfile-builder: COPY {rest}: only plain COPY src... dest is supported")
            *sources, dest = args
            for src in sources:
                if not (context / src).exists():
                    raise SystemExit(f"dockerfile-builder: COPY {src}: not in the build context (.dockerignore?)")
            if len(sources) > 1 or dest.endswith("/"):
                script.append(f"mkdir -p {shlex.quote(dest)}")
                for src in sources:
                    script.append(f'cp -a "$context"/{shlex.quote(src)} {shlex.quote(dest)}')
            else:
                (src,) = sources
                if (context / src).is_dir():
                    script.append(f'mkdir -p {shlex.quote(dest)} && cp -a "$context"/{shlex.quote(src)}/. {shlex.quote(dest)}/')
                else:
                    script.append(f'cp -a "$context"/{shlex.quote(src)} {shlex.quote(dest)}')
        elif keyword == "RUN":
            if rest.startswith("[") or rest.startswith("--") or "<<" in rest:
                raise SystemExit(f"dockerfile-builder: RUN {rest}: only the shell form without flags is supported")
            script.append(f"/bin/sh -c {shlex.quote(rest)}")
        else:
            raise SystemExit(f"dockerfile-builder: {keyword} in the builder stage is not supported")
    print("\n".join(script))


if __name__ == "__main__":
    main()
